# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One error shape for every failure the API answers:

    {"error": {"code", "message", "fields": [{"path", "reason"}], "request_id"}}

The engine's errors are mapped here and nowhere else; their text is scrubbed of host details
by the caller (service/fleet.py) before it reaches a customer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    OwnershipError,
    SpecError,
    VceError,
    host_unreachable,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded

# A host that cannot be reached is asked about again after this many seconds: long enough for
# an sshd or libvirtd restart, short enough that a client's bounded retries outlast it.
HOST_RETRY_AFTER = 30


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "fields": [{"path": path, "reason": reason} for path, reason in self.fields],
                "request_id": request_id,
            }
        }

    @classmethod
    def from_body(cls, status: int, body: Mapping[str, Any]) -> ApiError:
        """The error again from its stored shape (an action's error)."""
        error = body["error"]
        fields = [(item["path"], item["reason"]) for item in error.get("fields", [])]
        return cls(status, error["code"], error["message"], fields)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(what: str) -> ApiError:
    """The same answer for a missing object and another tenant's: nothing tells them apart."""
    return ApiError(404, "not_found", f"{what} not found")


def conflict(message: str) -> ApiError:
    return ApiError(409, "conflict", message)


def invalid(path: str, reason: str) -> ApiError:
    return ApiError(422, "invalid", f"{path}: {reason}", [(path, reason)])


def too_many(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"too many requests for this token: retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def host_unavailable(reason: str) -> ApiError:
    """A zone's host that cannot be reached now: an outage, told as one (503, Retry-After),
    with the engine's reason, scrubbed by the caller."""
    return ApiError(
        503,
        "host_unavailable",
        f"the zone's host cannot be reached now, retry after {HOST_RETRY_AFTER} s: {reason}",
        headers={"Retry-After": str(HOST_RETRY_AFTER)},
    )


def from_engine(error: VceError, scrub: Callable[[str], str]) -> ApiError:
    """The API's answer to an engine refusal; `scrub` removes host details from its text."""
    if host_unreachable(error):
        return host_unavailable(scrub(str(error)))
    if isinstance(error, SpecError):
        reason = scrub(error.reason)
        return ApiError(422, "invalid", f"{error.field}: {reason}", [(error.field, reason)])
    if isinstance(error, QuotaExceeded):
        return ApiError(409, "quota_exceeded", scrub(quota_message(error)))
    if isinstance(error, OwnershipError):
        return ApiError(409, "conflict", scrub(str(error)))
    return ApiError(409, "refused", scrub(str(error)))


def quota_message(error: QuotaExceeded) -> str:
    """The engine's message tells an operator which module to run; a customer files a request."""
    lines = "; ".join(breach.describe() for breach in error.breaches)
    return (
        f"Quota exceeded: {lines}. Nothing was changed. To ask for more, POST /v1/requests "
        "with kind quota_increase, or declare less."
    )
