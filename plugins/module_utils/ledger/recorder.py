# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One recorder of runs for every front end: a run's start, its usage changes as they come,
and its end, in each ledger the run writes to. What a ledger does not take waits in the run's
spool file and is retried at the next write and at the end (records are idempotent)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.errors import VceError
from .metering import Metering, UsageChange
from .spool import RunRecord, is_header, replay, spool, spool_path, spool_run
from .store import safe_url
from .tenants import Ledger, utcnow

Warn = Callable[[str], None]


def reason(error: BaseException) -> str:
    """An error in one line: database drivers add SQL and links on the lines after."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(error, VceError) and text:
        return text  # written for the user as it is
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Recorder:
    """One run's records in the ledgers it writes to. Each ledger gets the run's start before
    the first change written to it, and its end; what fails is spooled, never raised.

    `warn` tells the user (once per trouble), `note` is for the verbose log. Used by the
    Ansible callback (a playbook is a run) and the Pulumi provider (a provider process is)."""

    def __init__(
        self, run: RunRecord, main_url: str, spool_dir: str, warn: Warn, note: Warn
    ) -> None:
        self.run = run
        self.main_url = main_url
        self.spool_file = spool_path(spool_dir, run.run_id)
        self.spool_dir = spool_dir
        self.warn = warn
        self.note = note
        self.ledgers: dict[str, Ledger] = {}
        self.urls: list[str] = [main_url]  # every ledger of the run, in order of first use
        self.started: set[str] = set()
        self.start_spooled: set[str] = set()
        self.seen: set[tuple[str, str]] = set()  # (url, change key): written or spooled
        self.counts = {"recorded": 0, "spooled": 0, "invalid": 0}
        self.spool_warned = False
        self.finished = False
        # Callbacks may come from more than one thread; one write at a time keeps the spool
        # and the counts consistent.
        self.lock = threading.RLock()

    # -- ledgers -------------------------------------------------------------------------

    def ledger(self, url: str) -> Ledger:
        ledger = self.ledgers.get(url)
        if ledger is None:
            # A run's record is written even where nothing was registered yet (a playbook's
            # first run); a new ledger file is told as a warning, where a mistyped URL shows.
            ledger = Ledger.open(url, create=True, actor=self.run.actor, run_id=self.run.run_id)
            note = ledger.store.creation_note()
            if note:
                self.warn(note)
            self.ledgers[url] = ledger
        return ledger

    def begin(self, url: str) -> None:
        """The run's start in the ledger at `url`, once (raises when the ledger fails)."""
        if url not in self.urls:
            self.urls.append(url)
        if url in self.started:
            return
        run = self.run
        Metering(self.ledger(url)).start_run(run.run_id, run.source, run.started_at, run.detail)
        self.started.add(url)

    # -- the run's events ----------------------------------------------------------------

    def start(self) -> None:
        with self.lock:
            try:
                self.begin(self.main_url)
            except Exception as error:  # the playbook goes on; the start waits in the spool
                self.keep(self.main_url, error)

    def record(self, url: str, changes: list[UsageChange]) -> None:
        """Write the changes now (the run may die at its next task), else spool them."""
        with self.lock:
            fresh = [c for c in changes if (url, c.key) not in self.seen]
            if not fresh:
                return
            self.seen.update((url, change.key) for change in fresh)
            self.flush()
            try:
                self.begin(url)
                Metering(self.ledger(url)).record(fresh, source="run")
            except Exception as error:  # never the playbook's problem: keep them for later
                self.keep(url, error, fresh)
            else:
                # In the ledger now: written here, or found by key where the engine wrote it
                # ahead (docs/ledger.md).
                self.counts["recorded"] += len(fresh)

    def finish(self, result: str, detail: Mapping[str, Any]) -> None:
        """The run's end, once; what is still spooled is reported."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
            self.end(result, detail)
            self.report_spool()

    def end(self, result: str, detail: Mapping[str, Any]) -> None:
        """The run's end as it stands, in every ledger it wrote to: for a process that has no
        last event (the Pulumi provider is stopped by its engine), after each change."""
        with self.lock:
            self.flush()
            self.run.result = result
            self.run.ended_at = utcnow()
            self.run.end_detail = {**detail, "usage_changes": dict(self.counts)}
            for url in self.urls:
                self.end_in(url)

    def end_in(self, url: str) -> None:
        run = self.run
        try:
            self.begin(url)
            Metering(self.ledger(url)).finish_run(
                run.run_id, run.result or "failed", run.ended_at or utcnow(), run.end_detail
            )
        except Exception as error:
            self.keep(url, error, finish=True)

    def interrupted(self) -> None:
        """At exit without stats (Ctrl+C, an error of Ansible's own): best effort, silent."""
        if self.finished:
            return
        try:
            self.finish("interrupted", {"interrupted": True})
        except Exception as error:  # the process is ending: nothing left to tell but this
            self.note(f"vce.kvm.ledger: could not mark run {self.run.run_id} interrupted: {error}")

    # -- the spool -----------------------------------------------------------------------

    def keep(
        self,
        url: str,
        error: BaseException,
        changes: Sequence[UsageChange] = (),
        finish: bool = False,
    ) -> None:
        """Spool what the ledger at `url` did not take; warn once per run."""
        shown = safe_url(url)
        try:
            if url not in self.started and url not in self.start_spooled:
                spool_run(self.spool_dir, url, self.run, "start")
                self.start_spooled.add(url)
            if changes:
                spool(self.spool_dir, self.run.run_id, url, changes, self.run.actor)
                self.counts["spooled"] += len(changes)
            if finish:
                spool_run(self.spool_dir, url, self.run, "finish")
        except Exception as spool_error:  # both the ledger and the disk failed
            self.warn(
                f"vce.kvm.ledger: cannot write to the ledger at {shown} ({reason(error)}) nor "
                f"to the spool {self.spool_file} ({reason(spool_error)}): "
                f"{len(changes)} usage change(s) of run {self.run.run_id} are not recorded"
            )
            return
        if not self.spool_warned:
            self.spool_warned = True
            self.warn(
                f"vce.kvm.ledger: cannot write to the ledger at {shown} ({reason(error)}); "
                f"run {self.run.run_id} keeps its records in {self.spool_file} and retries "
                "them at its next write and at its end"
            )
        else:
            self.note(f"vce.kvm.ledger: ledger at {shown} still failing: {reason(error)}")

    def flush(self) -> None:
        """Retry what waits in the run's spool (records are idempotent: nothing twice)."""
        if not self.spool_file.exists():
            return
        try:
            written, remaining = replay(self.spool_file, self.ledger, self.note)
        except Exception as error:  # the spool stays as it is; the next flush tries again
            self.note(f"vce.kvm.ledger: could not replay {self.spool_file}: {reason(error)}")
            return
        self.counts["recorded"] += written
        if remaining == 0:
            self.started |= self.start_spooled
            self.start_spooled.clear()
            self.note(f"vce.kvm.ledger: {self.spool_file} written to the ledger")

    def report_spool(self) -> None:
        if not self.spool_file.exists():
            return
        try:
            with self.spool_file.open(encoding="utf-8") as lines:
                waiting = sum(1 for line in lines if line.strip() and not is_header(line))
        except OSError:
            waiting = 0
        self.warn(
            f"vce.kvm.ledger: {waiting} record(s) of run {self.run.run_id} are not in the "
            f"ledger yet; write them with: vce ledger record --spool {self.spool_file}"
        )
