# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Commands on the KVM host itself (nft, ip): what libvirt does not manage.

The host is reached the way the inventory says: directly when the module runs on it, or
through a command prefix - `ssh root@kvm1` for a remote host, `ip netns exec kvm-a` in the
multi-host lab.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import ApplyError, HostUnreachable
from ..core.validation import check_prefix

COMMAND_TIMEOUT = 60
# ssh's own exit status when it failed (no connection, a refused key, a host key that is not
# the pinned one); a remote command's status is passed through otherwise.
SSH_FAILED = 255


class HostShell:
    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = tuple(prefix)

    def run(
        self,
        argv: Sequence[str],
        action: str,
        obj: str,
        stdin: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> str:
        """Run `argv` on the host; a failure reads "Failed to <action> <object>: <stderr>"."""
        command = self.command(argv)
        try:
            proc = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ApplyError(f"Failed to {action} {obj}: {error}") from None
        if proc.returncode != 0:
            reason = proc.stderr.strip() or f"{shlex.join(command)} exited {proc.returncode}"
            self.check_reached(proc.returncode, f"Failed to {action} {obj}: {reason}")
            raise ApplyError(f"Failed to {action} {obj}: {reason}")
        return proc.stdout

    def succeeds(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> bool:
        """Whether `argv` exits 0 on the host (a question, not a change: no error raised,
        except HostUnreachable when the host could not be asked: "no" would be a guess)."""
        try:
            proc = subprocess.run(
                self.command(argv), capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        reason = proc.stderr.strip() or f"exit status {proc.returncode}"
        self.check_reached(proc.returncode, f"Failed to ask the host ({argv[0]}): {reason}")
        return proc.returncode == 0

    @property
    def through_ssh(self) -> bool:
        return bool(self.prefix) and os.path.basename(self.prefix[0]) == "ssh"

    def check_reached(self, returncode: int, message: str) -> None:
        """Raise HostUnreachable with `message` when the ssh that reaches the host failed."""
        if self.through_ssh and returncode == SSH_FAILED:
            raise HostUnreachable(message)

    def command(self, argv: Sequence[str]) -> list[str]:
        """The prefix and argv; through ssh, argv as one word quoted for the remote shell (ssh
        joins its words with spaces, so an argument with a space or a `;` would be split or
        run)."""
        if self.through_ssh:
            return [*self.prefix, shlex.join(argv)]
        return [*self.prefix, *argv]

    def json(self, argv: Sequence[str], action: str, obj: str) -> Any:
        output = self.run(argv, action, obj)
        try:
            return json.loads(output) if output.strip() else {}
        except ValueError as error:
            raise ApplyError(f"Failed to {action} {obj}: unreadable output ({error})") from None


def host_shell(params: Mapping[str, Any]) -> HostShell:
    """The host command path a run's parameters give (`host_command`; none: directly)."""
    return HostShell(check_prefix(params.get("host_command")))
