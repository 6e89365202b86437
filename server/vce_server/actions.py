# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Actions: every change the API accepts, kept as a row of the ledger and run by a worker.

An action is queued in `seq` order, claimed by exactly one worker of one instance, run by the
handler registered for its kind, and ends succeeded, failed or interrupted. One action per
tenant runs at a time; the rest wait in order. Claiming and submitting happen under the
ledger's "(actions)" lock, which is one lock for every instance sharing the ledger.

A restart never loses an action: a running action carries its instance's heartbeat, and an
action whose heartbeat stopped (the instance died or stopped mid-run) is queued again by any
instance, once; a second abandoned run marks it interrupted, asking the caller to retry
(declarations converge: a retry finishes what the lost run started).

Each claim is fenced by (claimed_by, attempts): a worker that outlived its claim (its action
was requeued and claimed again) cannot overwrite the newer run's progress or outcome.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    VceError,
    host_unreachable,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import actions
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, acting_as

from .errors import ApiError, from_engine, host_unavailable, invalid
from .principal import Principal
from .settings import Settings

log = logging.getLogger("vce.serve.actions")

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, INTERRUPTED)
FINAL = frozenset({SUCCEEDED, FAILED, INTERRUPTED})

LOCK_NAME = "(actions)"
# An abandoned action is run again this many times in all before it is marked interrupted.
MAX_ATTEMPTS = 2
HEARTBEAT_SECONDS = 5.0
RECOVER_SECONDS = 30.0
# Idle workers look for other instances' submissions this often (their own are signalled).
POLL_SECONDS = 0.5
# wait() looks at actions run by other instances this often.
WAIT_POLL_SECONDS = 0.25
MAX_WAIT_SECONDS = 60.0
# A handler's progress is written at most this often; the last report is always written.
PROGRESS_SECONDS = 0.5
# After an unexpected failure of the ledger, a worker waits this long before trying again.
BACKOFF_SECONDS = 1.0

Report = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Report], dict[str, Any]]


def identity(text: str) -> str:
    return text


def request_hash(kind: str, target: str, payload: Mapping[str, Any]) -> str:
    canonical = json.dumps([kind, target, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment else None


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """An action as the API shows it. `error` is the inner object of the API's error shape
    ({code, message, fields, request_id}); the column holds the whole shape."""
    error = loads(row["error"])
    return {
        "id": row["id"],
        "kind": row["kind"],
        "target": row["target"],
        "status": row["status"],
        "plan": loads(row["plan"]),
        "progress": loads(row["progress"]),
        "result": loads(row["result"]),
        "error": error["error"] if error else None,
        "attempts": row["attempts"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
    }


def error_shape(error: ApiError, request_id: str) -> str:
    return json.dumps(error.body(request_id), sort_keys=True)


def interrupted_error() -> ApiError:
    return ApiError(
        409,
        "interrupted",
        f"the server running this action stopped {MAX_ATTEMPTS} times before it finished; "
        "retry the request: declarations converge, so a retry finishes what was started",
    )


@dataclass
class Claim:
    """An action this instance runs, and the fence its writes carry."""

    id: str
    kind: str
    tenant: str
    target: str
    request: dict[str, Any]
    attempt: int
    request_id: str
    token: str  # the prefix of the token that asked for it: the run's actor
    pending: str | None = None  # progress reported but not written yet
    written: float = 0.0  # monotonic time of the last progress write
    lock: threading.Lock = field(default_factory=threading.Lock)


class ActionQueue:
    def __init__(
        self, ledger: Ledger, settings: Settings, scrub: Callable[[str], str] = identity
    ) -> None:
        self.ledger = ledger
        self.store = ledger.store
        self.settings = settings
        # The column holds 64 characters; the tail keeps the pid and the random part.
        self.instance = settings.instance[-actions.c.claimed_by.type.length :]
        self.scrub = scrub
        self.handlers: dict[str, Handler] = {}
        # A live instance heartbeats well inside the time after which others count it dead.
        self.heartbeat_every = min(HEARTBEAT_SECONDS, settings.stale_after / 3)
        self.recover_every = min(RECOVER_SECONDS, settings.stale_after)
        # Keyed by (id, attempt): a run that outlived its claim is another entry than the new run.
        self.running: dict[tuple[str, int], Claim] = {}
        self.lock = threading.Lock()
        # This instance's threads take turns for the ledger here before they ask it: SQLite's
        # busy handler sleeps up to 100 ms between tries for its write lock, a thread waiting
        # here runs as soon as the one before it commits.
        self.serial = threading.Lock()
        # Workers sleep on `work`; `submitted` counts local submissions so that a worker that
        # found nothing does not sleep through one made meanwhile.
        self.work = threading.Condition(self.lock)
        self.submitted = 0
        # wait() sleeps on `ended`; `endings` counts local actions that reached a final status.
        self.ended = threading.Condition(self.lock)
        self.endings = 0
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    @contextmanager
    def locked(self) -> Iterator[Any]:
        """A transaction under the "(actions)" lock of every instance on the ledger."""
        with self.serial, self.store.locked(LOCK_NAME) as connection:
            yield connection

    @contextmanager
    def writing(self) -> Iterator[Any]:
        with self.serial, self.store.write() as connection:
            yield connection

    # -- submitting and reading -----------------------------------------------------------

    def submit(
        self,
        principal: Principal,
        kind: str,
        target: str,
        payload: dict[str, Any],
        idempotency_key: str | None = None,
        tenant: str | None = None,
        request_id: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """The action queued for this change and True; for a key given before with the same
        request, the first action and False."""
        if kind not in self.handlers:
            raise ValueError(f"no handler registered for action kind {kind!r}")
        tenant = tenant or principal.tenant
        if not tenant:
            raise invalid("tenant", "an operator's change names the tenant it acts for")
        if len(target) > actions.c.target.type.length:
            raise invalid("name", f"at most {actions.c.target.type.length} characters")
        digest = request_hash(kind, target, payload)
        with self.locked() as connection:
            if idempotency_key is not None:
                first = connection.execute(
                    sa.select(actions).where(
                        actions.c.tenant == tenant, actions.c.idempotency_key == idempotency_key
                    )
                ).first()
                if first is not None:
                    if first.request_hash != digest:
                        raise ApiError(
                            422,
                            "idempotency_mismatch",
                            "this Idempotency-Key was used for another request; "
                            "use a new key for a new request",
                            [("header.Idempotency-Key", "used for another request")],
                        )
                    return view(first._mapping), False
            seq = connection.execute(sa.select(sa.func.max(actions.c.seq))).scalar() or 0
            row = {
                "id": str(uuid.uuid4()),
                "seq": seq + 1,
                "tenant": tenant,
                "kind": kind,
                "target": target,
                "status": QUEUED,
                "request": json.dumps(payload, sort_keys=True),
                "plan": None,
                "progress": None,
                "result": None,
                "error": None,
                "idempotency_key": idempotency_key,
                "request_hash": digest,
                "token": principal.token[: actions.c.token.type.length],
                "request_id": request_id[: actions.c.request_id.type.length],
                "attempts": 0,
                "claimed_by": None,
                "created_at": self.ledger.now(),
                "started_at": None,
                "heartbeat_at": None,
                "finished_at": None,
            }
            connection.execute(sa.insert(actions).values(**row))
        with self.work:
            self.submitted += 1
            self.work.notify()
        return view(row), True

    def get(self, action_id: str, tenant: str | None) -> dict[str, Any] | None:
        """The action; None when missing or another tenant's (tenant None: an operator's
        view of every tenant)."""
        query = sa.select(actions).where(actions.c.id == action_id)
        if tenant is not None:
            query = query.where(actions.c.tenant == tenant)
        with self.store.read() as connection:
            row = connection.execute(query).first()
        return None if row is None else view(row._mapping)

    def list(
        self, tenant: str | None, limit: int = 50, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest actions first, the tenant's only (tenant None: every tenant's)."""
        if status is not None and status not in STATUSES:
            raise invalid("status", f"one of {', '.join(STATUSES)}")
        query = sa.select(actions).order_by(actions.c.seq.desc()).limit(limit)
        if tenant is not None:
            query = query.where(actions.c.tenant == tenant)
        if status is not None:
            query = query.where(actions.c.status == status)
        with self.store.read() as connection:
            return [view(row._mapping) for row in connection.execute(query)]

    def wait(self, action_id: str, tenant: str | None, seconds: float) -> dict[str, Any] | None:
        """The action once it has ended, or as it is when `seconds` (at most 60) are up."""
        deadline = time.monotonic() + min(max(seconds, 0.0), MAX_WAIT_SECONDS)
        while True:
            with self.lock:
                endings = self.endings
            action = self.get(action_id, tenant)
            left = deadline - time.monotonic()
            if action is None or action["status"] in FINAL or left <= 0:
                return action
            with self.ended:
                if self.endings == endings:
                    self.ended.wait(min(WAIT_POLL_SECONDS, left))

    # -- workers ------------------------------------------------------------------------

    def start(self) -> None:
        """Recover abandoned actions, then run the workers and the housekeeping thread."""
        self.stopping.clear()
        self.recover()
        names = [f"vce-action-worker-{n}" for n in range(self.settings.workers)]
        self.threads = [threading.Thread(target=self.work_loop, name=n, daemon=True) for n in names]
        self.threads.append(
            threading.Thread(target=self.housekeeping, name="vce-action-housekeeping", daemon=True)
        )
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float) -> None:
        """Take no more actions and let running handlers finish for up to `timeout` seconds;
        an action still running then stays running, for a later start to recover."""
        self.stopping.set()
        with self.work:
            self.work.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = [thread.name for thread in self.threads if thread.is_alive()]
        if still:
            log.warning("stopped with actions still running in %s", ", ".join(still))
        self.threads = []

    def work_loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                submitted = self.submitted
            try:
                claim = self.claim()
                if claim is not None:
                    self.run(claim)
                    continue
            except Exception:  # a worker outlives a ledger that failed for a moment
                log.exception("an action worker failed; it tries again")
                self.stopping.wait(BACKOFF_SECONDS)
                continue
            with self.work:
                if self.submitted == submitted and not self.stopping.is_set():
                    self.work.wait(POLL_SECONDS)

    def claim(self) -> Claim | None:
        """The oldest queued action whose tenant has none running, now running here."""
        # Most looks find nothing: they cost a read, not the lock every instance takes.
        with self.store.read() as connection:
            queued = sa.select(actions.c.id).where(actions.c.status == QUEUED).limit(1)
            if connection.execute(queued).first() is None:
                return None
        busy = sa.select(actions.c.tenant).where(actions.c.status == RUNNING)
        with self.locked() as connection:
            row = connection.execute(
                sa.select(actions)
                .where(actions.c.status == QUEUED, actions.c.tenant.not_in(busy))
                .order_by(actions.c.seq)
                .limit(1)
            ).first()
            if row is None:
                return None
            now = self.ledger.now()
            connection.execute(
                sa.update(actions)
                .where(actions.c.id == row.id)
                .values(
                    status=RUNNING,
                    claimed_by=self.instance,
                    attempts=row.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                )
            )
        claim = Claim(
            row.id,
            row.kind,
            row.tenant,
            row.target,
            json.loads(row.request),
            row.attempts + 1,
            row.request_id,
            row.token,
        )
        with self.lock:
            self.running[(claim.id, claim.attempt)] = claim
        return claim

    def run(self, claim: Claim) -> None:
        outcome = self.outcome(claim)
        try:
            with claim.lock:
                self.finish(claim, outcome)
        except VceError as error:
            # The action stays running without a heartbeat: recovery runs it again.
            log.error("action %s ended but its outcome was not recorded: %s", claim.id, error)
        finally:
            with self.lock:
                del self.running[(claim.id, claim.attempt)]
                self.endings += 1
                self.ended.notify_all()

    def outcome(self, claim: Claim) -> dict[str, Any]:
        """The column values that end the action: its result, or its error in the API's
        shape."""
        handler = self.handlers.get(claim.kind)
        try:
            if handler is None:
                raise RuntimeError(f"no handler for action kind {claim.kind!r} in this instance")
            # Each attempt is a run of its own in the ledger (runs, usage, intents).
            with acting_as(f"api-{claim.id}-{claim.attempt}", f"api:{claim.token}"):
                result = handler(claim.request, lambda progress: self.report(claim, progress))
            if not isinstance(result, dict):
                raise TypeError(f"handler of {claim.kind!r} returned {type(result).__name__}")
            plan = result.get("plan")
            return {"status": SUCCEEDED, "result": dumps(result), "plan": dumps(plan)}
        except ApiError as error:
            return self.failed(claim, error)
        except VceError as error:
            return self.failed(claim, from_engine(error, self.scrub))
        except Exception as error:  # a bug of ours: logged with its traceback, told without it
            if host_unreachable(error):  # a libvirt call outside the engine's mapping
                return self.failed(claim, host_unavailable(self.scrub(str(error))))
            log.exception("action %s (%s %s) failed", claim.id, claim.kind, claim.target)
            error = ApiError(
                500,
                "internal",
                f"the action failed inside the server; its log names action {claim.id}",
            )
            return self.failed(claim, error)

    @staticmethod
    def failed(claim: Claim, error: ApiError) -> dict[str, Any]:
        return {"status": FAILED, "error": error_shape(error, claim.request_id)}

    def fenced(self, claim: Claim) -> Any:
        """The update of this claim's row, void once the action is no longer this run's."""
        return sa.update(actions).where(
            actions.c.id == claim.id,
            actions.c.claimed_by == self.instance,
            actions.c.attempts == claim.attempt,
            actions.c.status == RUNNING,
        )

    def finish(self, claim: Claim, outcome: dict[str, Any]) -> None:
        values = {**outcome, "finished_at": self.ledger.now()}
        if claim.pending is not None:
            values["progress"] = claim.pending
            claim.pending = None
        with self.writing() as connection:
            connection.execute(self.fenced(claim).values(**values))

    # -- progress, heartbeats, recovery ----------------------------------------------------

    def report(self, claim: Claim, progress: dict[str, Any]) -> None:
        text = json.dumps(progress, sort_keys=True)
        with claim.lock:
            claim.pending = text
            if time.monotonic() - claim.written >= PROGRESS_SECONDS:
                try:
                    self.write_progress(claim)
                except VceError as error:
                    # Progress is a courtesy: a ledger failing for a moment does not fail the
                    # change; the report stays pending for the next write.
                    log.warning("progress of action %s not written: %s", claim.id, error)

    def write_progress(self, claim: Claim) -> None:
        """Write the pending progress; the caller holds claim.lock."""
        if claim.pending is None:
            return
        with self.writing() as connection:
            connection.execute(self.fenced(claim).values(progress=claim.pending))
        claim.pending = None
        claim.written = time.monotonic()

    def housekeeping(self) -> None:
        """Write progress held back by the throttle, heartbeat this instance's running
        actions, and recover other instances' abandoned ones."""
        beaten = recovered = time.monotonic()
        tick = min(PROGRESS_SECONDS, self.heartbeat_every)
        while not self.stopping.wait(tick):
            now = time.monotonic()
            try:
                self.flush_progress()
                if now - beaten >= self.heartbeat_every:
                    self.heartbeat()
                    beaten = now
                if now - recovered >= self.recover_every:
                    self.recover()
                    recovered = now
            except Exception:  # housekeeping outlives a ledger that failed for a moment
                log.exception("housekeeping of actions failed")

    def local_claims(self) -> tuple[Claim, ...]:
        with self.lock:
            return tuple(self.running.values())

    def flush_progress(self) -> None:
        for claim in self.local_claims():
            with claim.lock:
                if time.monotonic() - claim.written >= PROGRESS_SECONDS:
                    self.write_progress(claim)

    def heartbeat(self) -> None:
        ids = [claim.id for claim in self.local_claims()]
        if not ids:
            return
        with self.writing() as connection:
            connection.execute(
                sa.update(actions)
                .where(
                    actions.c.id.in_(ids),
                    actions.c.claimed_by == self.instance,
                    actions.c.status == RUNNING,
                )
                .values(heartbeat_at=self.ledger.now())
            )

    def recover(self) -> None:
        """Queue again, or mark interrupted, the running actions whose instance stopped
        heartbeating (any instance's, this one's from before a restart too)."""
        now = self.ledger.now()
        cutoff = now - dt.timedelta(seconds=self.settings.stale_after)
        abandoned = sa.and_(actions.c.status == RUNNING, actions.c.heartbeat_at < cutoff)
        with self.locked() as connection:
            rows = connection.execute(
                sa.select(actions.c.id, actions.c.attempts, actions.c.request_id).where(abandoned)
            ).all()
            for row in rows:
                this = sa.update(actions).where(actions.c.id == row.id, abandoned)
                if row.attempts < MAX_ATTEMPTS:
                    log.warning("action %s was abandoned by its instance: queued again", row.id)
                    connection.execute(
                        this.values(
                            status=QUEUED, claimed_by=None, started_at=None, heartbeat_at=None
                        )
                    )
                else:
                    log.warning(
                        "action %s was abandoned %d times: interrupted", row.id, row.attempts
                    )
                    error = error_shape(interrupted_error(), row.request_id)
                    connection.execute(
                        this.values(status=INTERRUPTED, error=error, finished_at=now)
                    )
        if rows:
            with self.work:
                self.submitted += 1
                self.work.notify_all()
            with self.ended:
                self.endings += 1
                self.ended.notify_all()
