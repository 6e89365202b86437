# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of the engine, and the one place where libvirt errors become user messages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

try:
    import libvirt
except ImportError:  # reported by connection.open_connection with an install hint
    libvirt = None


class VceError(Exception):
    """An error the user can act on; its message is shown as it is."""


class SpecError(VceError):
    """A declaration that cannot be accepted: names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class OwnershipError(VceError):
    """An object exists under the declared name but belongs to another tenant or to nobody."""


class ApplyError(VceError):
    """A change failed while being applied; earlier changes stay, a re-run converges.

    `applied` holds the changes (Change.to_dict) that were made before the failure, and `left`
    names what the failed change itself made and left in place: a front end reports the run as
    changed when either is non-empty. `unexpected` marks a failure that is a bug of ours.
    """

    def __init__(
        self,
        message: str,
        applied: Sequence[Mapping[str, Any]] = (),
        left: Sequence[str] = (),
        unexpected: bool = False,
    ) -> None:
        super().__init__(message)
        self.applied = [dict(change) for change in applied]
        self.left = list(left)
        self.unexpected = unexpected

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.left)


class HostUnreachable(VceError):
    """The host cannot be reached now: its libvirt connection cannot be opened or was lost,
    or the ssh of its host command could not connect. An outage, not a refusal: the same
    run may succeed once the host is back (declarations converge)."""


def libvirt_reason(error: Exception) -> str:
    if libvirt is not None and isinstance(error, libvirt.libvirtError):
        message = error.get_error_message() or str(error)
        return message.strip()
    return str(error).strip() or type(error).__name__


def vanished(error: Exception) -> bool:
    """True when a libvirt failure only says that the object is gone (or not yet there): another
    run on the same host deleted or is still creating it between a listing and a read."""
    cause = error.__cause__ if isinstance(error, VceError) else error
    if libvirt is None or not isinstance(cause, libvirt.libvirtError):
        return False
    return cause.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
    )


def connection_failed(error: BaseException, opening: bool = False) -> bool:
    """True when a libvirt failure says the connection to the daemon failed, not that the
    daemon refused the call. `opening`: the failure of libvirt.open, where a protocol error
    (VIR_ERR_RPC) also means no connection; on an open connection that code can be a message
    the daemon could not take, so it is a failure of the call. VIR_ERR_NO_CONNECT (no driver
    for the URI) is a wrong URI, not an outage: it stays a failure of its own."""
    if libvirt is None or not isinstance(error, libvirt.libvirtError):
        return False
    code = error.get_error_code()
    if opening and code == libvirt.VIR_ERR_RPC:
        return True
    # libvirt's RPC layer (the client's end of the connection) reports a daemon, socket or ssh
    # that cannot be reached or went away as system or internal errors: "Failed to connect
    # socket", "Cannot recv data: ssh: connect to host ...", "Cannot write data: Broken pipe",
    # "client socket is closed". A daemon that answered reports its own domain's errors.
    transport = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR)
    return error.get_error_domain() == libvirt.VIR_FROM_RPC and code in transport


# How deep an error's causes are looked through (a wrapped failure: the plan's, a move's).
CAUSE_DEPTH = 16


def host_unreachable(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says the host cannot be reached (a
    change that failed on a lost host is an ApplyError raised from a HostUnreachable)."""
    cause: BaseException | None = error
    for _depth in range(CAUSE_DEPTH):
        if cause is None:
            return False
        if isinstance(cause, HostUnreachable) or connection_failed(cause):
            return True
        cause = cause.__cause__
    return False


@contextmanager
def libvirt_action(action: str, obj: str) -> Iterator[None]:
    """Map any libvirt failure inside the block to "Failed to <action> <object>: <reason>":
    a HostUnreachable when the connection failed, else an ApplyError."""
    try:
        yield
    except VceError:
        raise
    except Exception as error:
        if connection_failed(error):
            raise HostUnreachable(f"Failed to {action} {obj}: {libvirt_reason(error)}") from error
        if libvirt is not None and isinstance(error, libvirt.libvirtError):
            raise ApplyError(f"Failed to {action} {obj}: {libvirt_reason(error)}") from error
        if isinstance(error, (OSError, ValueError)):
            raise ApplyError(f"Failed to {action} {obj}: {libvirt_reason(error)}") from error
        raise
