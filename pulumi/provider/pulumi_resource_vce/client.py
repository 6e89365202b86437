# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane's API as the provider calls it: the token in the Authorization header
and nowhere else, bounded retries, changes submitted as actions with an Idempotency-Key and
waited for with long polls."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import VERSION
from .config import ProviderConfig

# 429 and 503 are retried after the server's Retry-After (at most this long each), this many
# times in all.
RETRY_STATUSES = frozenset({429, 503})
RETRY_TRIES = 5
RETRY_AFTER_MAX = 30.0
# A server restart (connection refused, reset) is waited out this long, with this back-off.
OUTAGE_SECONDS = 120.0
BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0)
# One long poll of an action, in seconds (the server answers at the latest after 60).
POLL_SECONDS = 30
FINAL = frozenset({"succeeded", "failed", "interrupted"})
# A key replaying an action that has already ended names the next key; bounded.
KEY_HOPS = 8
REQUEST_TIMEOUT = httpx.Timeout(30.0, read=POLL_SECONDS + 30.0)

Progress = Callable[[str], Awaitable[None]]


@dataclass
class ApiFailure(Exception):
    """An error answer of the API (or none at all): its status, code, message and fields."""

    status: int
    code: str
    message: str
    fields: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


class Client:
    def __init__(self, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.http = httpx.AsyncClient(
            base_url=config.endpoint,
            headers={
                "Authorization": f"Bearer {config.token}",
                "User-Agent": f"pulumi-resource-vce/{VERSION}",
            },
            timeout=REQUEST_TIMEOUT,
            transport=transport,
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    # -- requests -----------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request, retried while the server asks to wait (429, 503) or cannot be reached:
        every request the provider makes is safe to repeat (reads, checks, and changes under
        an Idempotency-Key). Raises ApiFailure for an error answer."""
        tries = 0
        outage_since: float | None = None
        query = {k: v for k, v in (params or {}).items() if v is not None}
        while True:
            try:
                reply = await self.http.request(
                    method, path, json=body, params=query, headers=headers
                )
            except httpx.TransportError as error:
                outage_since = outage_since or time.monotonic()
                waited = time.monotonic() - outage_since
                if waited >= OUTAGE_SECONDS:
                    raise unreachable(self.config.endpoint, error) from None
                await asyncio.sleep(BACKOFF[min(tries, len(BACKOFF) - 1)])
                tries += 1
                continue
            outage_since = None
            if reply.status_code in RETRY_STATUSES and tries < RETRY_TRIES:
                tries += 1
                await asyncio.sleep(retry_after(reply, tries))
                continue
            if reply.status_code >= 400:
                raise failure_of(reply)
            return reply

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        return (await self.call("GET", path, params=params)).json()

    async def post(self, path: str, body: Any) -> dict[str, Any]:
        return (await self.call("POST", path, body=body)).json()

    # -- actions ------------------------------------------------------------------------------

    async def submit(
        self,
        method: str,
        path: str,
        key: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The action of a change. A key the server has seen answers the action it made then:
        one still running is this change's (a retried operation waits for it); one that has
        ended belongs to an earlier operation, and the change goes in again under the next
        key (a declaration made true twice changes nothing the second time)."""
        for _hop in range(KEY_HOPS):
            reply = await self.call(
                method, path, body=body, params=params, headers={"Idempotency-Key": key}
            )
            action = reply.json()["action"]
            replayed = reply.headers.get("Idempotent-Replayed") == "true"
            if not replayed or action["status"] not in FINAL:
                return action
            key = next_key(key, action["id"])
        raise ApiFailure(
            0, "idempotency", f"{method} {path}: too many earlier actions under one key"
        )

    async def wait(
        self, action: dict[str, Any], deadline: float, progress: Progress | None = None
    ) -> dict[str, Any]:
        """The action once it has ended; ApiFailure when it has not by `deadline` (monotonic)."""
        shown = None
        while action["status"] not in FINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiFailure(
                    0,
                    "timeout",
                    f"action {action['id']} ({action['target']}) is still {action['status']}: "
                    "it goes on in the control plane; run `pulumi refresh` or `pulumi up` later",
                )
            seconds = max(1, min(POLL_SECONDS, int(left)))
            action = (await self.get(f"/v1/actions/{action['id']}", wait=seconds))["action"]
            step = describe(action)
            if progress is not None and step != shown:
                shown = step
                await progress(step)
        return action


def key_of(operation: str, urn: str, body: Any) -> str:
    """The Idempotency-Key of a Pulumi operation: the same operation on the same resource with
    the same declaration gives the same key, so a retried `pulumi up` finds its action."""
    text = json.dumps([operation, urn, body], sort_keys=True, separators=(",", ":"))
    return "pulumi-" + hashlib.sha256(text.encode()).hexdigest()[:48]


def next_key(key: str, action_id: str) -> str:
    return "pulumi-" + hashlib.sha256(f"{key}|{action_id}".encode()).hexdigest()[:48]


def describe(action: Mapping[str, Any]) -> str:
    progress = action.get("progress") or {}
    step = progress.get("step") if isinstance(progress, Mapping) else None
    return f"{action['target']}: {action['status']}" + (f" ({step})" if step else "")


def retry_after(reply: httpx.Response, tries: int) -> float:
    """The server's Retry-After in seconds (bounded), else a growing back-off."""
    value = reply.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = BACKOFF[min(tries, len(BACKOFF) - 1)]
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def failure_of(reply: httpx.Response) -> ApiFailure:
    """The API's error object (`{"error": {code, message, fields}}`), or the status alone."""
    try:
        error = reply.json().get("error") or {}
    except ValueError:
        error = {}
    if not isinstance(error, Mapping):
        error = {}
    fields = [
        (str(item.get("path", "")), str(item.get("reason", "")))
        for item in error.get("fields") or []
        if isinstance(item, Mapping)
    ]
    code = str(error.get("code") or reply.reason_phrase or reply.status_code)
    message = str(error.get("message") or f"{reply.status_code} {reply.reason_phrase}")
    if reply.status_code == 401:
        message = f"the control plane refused the token ({message}): check vce:token"
    return ApiFailure(reply.status_code, code, message, fields)


def unreachable(endpoint: str, error: Exception) -> ApiFailure:
    return ApiFailure(
        0,
        "unreachable",
        f"the control plane at {endpoint} did not answer for {OUTAGE_SECONDS:.0f} s "
        f"({type(error).__name__})",
    )
