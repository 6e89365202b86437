# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger's spool: what a run could not write to its ledger, kept to be written later.

The ledger callback appends here when the ledger is unreachable, and replays the file at its
next write and at the end of the run; `vce ledger record --spool FILE` replays what is left.
A spool file holds one run's records: a header line, then one JSON object per line, each
naming the ledger it belongs to (docs/billing.md, "The spool file", has the format):

    {"vce_spool": 1}
    {"v": 1, "type": "usage", "url": ..., "run_id": ..., "actor": ..., "change": {...}}
    {"v": 1, "type": "run", "event": "start" | "finish", "url": ..., "run_id": ..., ...}

A replay only ever touches a spool file: a regular file, not a link, whose first line is the
header (a file of older versions, without it, when every line is a spool line). Anything else
is refused untouched: `vce ledger record --spool FILE` may run as root on whatever it is given.

Usage changes are idempotent in the ledger (one key per change) and so are run records, so a
line replayed twice never counts twice. What is written leaves the file; the file goes when
nothing is left. Lines are appended and replayed under an exclusive lock on the file, and a
writer that finds the file replaced while it waited opens the new one, so none is lost.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..core.errors import SpecError
from .metering import Metering, UsageChange
from .store import safe_url
from .tenants import Ledger, parse_moment, utcnow

VERSION = 1
HEADER = {"vce_spool": VERSION}  # the first line of every spool file
HEADER_LINE = json.dumps(HEADER)
ENTRY_TYPES = ("usage", "run")
RUN_EVENTS = ("start", "finish")
# A run id becomes a file name as it is when it is plain; anything else is replaced.
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

LedgerFactory = Callable[[str], Ledger]
Report = Callable[[str], None]


class Replayed(NamedTuple):
    """New usage records written, and spool lines still waiting (unwritable or invalid)."""

    written: int
    remaining: int


def spool_path(spool_dir: str | os.PathLike[str], run_id: str) -> Path:
    name = UNSAFE_NAME.sub("_", run_id)[:128] or "run"
    return Path(spool_dir).expanduser() / f"{name}.jsonl"


def spool(
    spool_dir: str | os.PathLike[str],
    run_id: str,
    url: str,
    changes: Iterable[UsageChange | Mapping[str, Any]],
    actor: str = "",
) -> Path:
    """Keep usage changes meant for the ledger at `url`; returns the spool file."""
    entries = [
        {
            "v": VERSION, "type": "usage", "url": url, "run_id": run_id, "actor": actor,
            "change": change.as_dict() if isinstance(change, UsageChange) else dict(change),
        }
        for change in changes
    ]  # fmt: skip
    return append(spool_path(spool_dir, run_id), entries)


def spool_run(
    spool_dir: str | os.PathLike[str],
    url: str,
    run: RunRecord,
    event: str,
) -> Path:
    """Keep a run's start, or its finish (which carries the start too, so a ledger that never
    saw the start still gets the whole run)."""
    if event not in RUN_EVENTS:
        raise SpecError("event", f"must be one of {', '.join(RUN_EVENTS)}, got {event!r}")
    entry = {"v": VERSION, "type": "run", "event": event, "url": url, **run.as_dict()}
    return append(spool_path(spool_dir, run.run_id), [entry])


@dataclass
class RunRecord:
    """What the ledger's `runs` table holds of one run, as it is spooled."""

    run_id: str
    actor: str
    source: str
    started_at: dt.datetime
    detail: dict[str, Any] = field(default_factory=dict)
    result: str | None = None
    ended_at: dt.datetime | None = None
    end_detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "actor": self.actor, "source": self.source,
            "started_at": self.started_at.isoformat(), "detail": self.detail,
            "result": self.result,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "end_detail": self.end_detail,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], finished: bool) -> RunRecord:
        run_id, actor, source = (text_field(raw, name) for name in ("run_id", "actor", "source"))
        started_at = parse_moment(raw.get("started_at"), "started_at")
        if started_at is None:
            raise SpecError("started_at", "is required")
        detail, end_detail = raw.get("detail") or {}, raw.get("end_detail") or {}
        if not isinstance(detail, Mapping) or not isinstance(end_detail, Mapping):
            raise SpecError("detail", "must be a mapping")
        record = cls(run_id, actor, source, started_at, dict(detail))
        if finished:
            record.result = text_field(raw, "result")
            record.ended_at = parse_moment(raw.get("ended_at"), "ended_at") or utcnow()
            record.end_detail = dict(end_detail)
        return record


def text_field(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise SpecError(name, "must be a non-empty string")
    return value


def append(path: Path, entries: list[dict[str, Any]]) -> Path:
    """Add lines to the spool file, on disk before this returns (the run may die next)."""
    if not entries:
        return path
    text = "".join(json.dumps(entry, sort_keys=True, default=str) + "\n" for entry in entries)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked(path, create=True) as handle:
        if handle is not None:
            if os.fstat(handle.fileno()).st_size == 0:
                text = HEADER_LINE + "\n" + text
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return path


@contextmanager
def locked(path: Path, create: bool) -> Iterator[IO[str] | None]:
    """The spool file, open for appending under an exclusive lock (None if it is gone and
    `create` is false). The file may hold a ledger URL with its password: owner only.
    Links are never followed, and only a regular file is opened (see `check_file`)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    while True:
        try:
            check_file(path)
        except FileNotFoundError:
            if not create:
                yield None
                return
        try:
            descriptor = os.open(path, flags, 0o600)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        except OSError as error:  # ELOOP: a link put in its place since check_file
            raise SpecError("spool", f"{path} cannot be opened as a spool file: {error}") from None
        handle = os.fdopen(descriptor, "a+", encoding="utf-8")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        if same_file(path, handle):
            break
        handle.close()  # replaced or removed by a replay while we waited: open it anew
    try:
        yield handle
    finally:
        handle.close()


def check_file(path: Path) -> None:
    """Refuse what a replay must not rewrite: a symbolic link (its target would be replaced
    by a new file: links broken, and as root any file reachable), a file with other hard
    links (they would keep the old content), anything but a regular file (a device or a
    FIFO would be read). A missing file raises FileNotFoundError."""
    found = os.lstat(path)
    if stat.S_ISLNK(found.st_mode):
        raise SpecError(
            "spool", f"{path} is a symbolic link; name the spool file itself, not a link to it"
        )
    if not stat.S_ISREG(found.st_mode):
        raise SpecError("spool", f"{path} is not a regular file")
    if found.st_nlink > 1:
        raise SpecError("spool", f"{path} has other hard links; a replay would break them")


def same_file(path: Path, handle: IO[str]) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


# -- replay --------------------------------------------------------------------------------


@dataclass
class Line:
    number: int
    text: str
    entry: dict[str, Any] | None = None


def replay(
    path: str | os.PathLike[str], ledger_factory: LedgerFactory, report: Report | None = None
) -> Replayed:
    """Write what the spool file holds to the ledgers it names (`ledger_factory(url)` opens
    one); what is written leaves the file, which is removed once empty. A line that cannot be
    read or written stays and is reported (`report`, one message each), never raised.

    A file that is not a spool file (see `check_file` and `read_lines`) raises SpecError
    before anything is written, and is left as it was."""
    tell = report or (lambda _message: None)
    spool_file = Path(path)
    with locked(spool_file, create=False) as handle:
        if handle is None:
            return Replayed(0, 0)
        handle.seek(0)
        lines = read_lines(read_text(handle, spool_file), spool_file, tell)
        if not lines:  # a header alone: nothing to write, nothing to rewrite
            return Replayed(0, 0)
        written, kept = replay_lines(lines, ledger_factory, tell)
        rewrite(spool_file, kept, os.fstat(handle.fileno()))
    return Replayed(written, len(kept))


def read_text(handle: IO[str], path: Path) -> str:
    try:
        return handle.read()
    except UnicodeDecodeError:  # spool files are JSON in UTF-8; this is something else
        raise SpecError("spool", f"{path} is not a spool file (not UTF-8 text)") from None


def is_header(raw: str) -> bool:
    try:
        return json.loads(raw) == HEADER
    except ValueError:
        return False


def is_entry(raw: str) -> bool:
    """A line as the spool writer writes it: a JSON object of a known type naming its ledger."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return False
    return (
        isinstance(entry, dict)
        and entry.get("v") == VERSION
        and entry.get("type") in ENTRY_TYPES
        and isinstance(entry.get("url"), str)
        and bool(entry["url"])
    )


def read_lines(text: str, path: Path, tell: Report) -> list[Line]:
    """The spool lines after the header. Without the header (files of older versions) every
    line must be a spool line; else the file is not a spool file and SpecError is raised."""
    numbered = [(number, raw) for number, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if numbered and is_header(numbered[0][1]):
        numbered = numbered[1:]
    elif not numbered or not all(is_entry(raw) for _number, raw in numbered):
        raise SpecError(
            "spool", f"{path} is not a spool file (its first line is not {HEADER_LINE})"
        )
    lines = []
    for number, raw in numbered:
        line = Line(number, raw)
        try:
            entry = json.loads(raw)
        except ValueError as error:
            tell(f"{path}:{number}: not a JSON line ({error}); kept in the spool")
        else:
            if isinstance(entry, dict) and isinstance(entry.get("url"), str) and entry["url"]:
                line.entry = entry
            else:
                tell(f"{path}:{number}: a spool line names its ledger (url); kept in the spool")
        lines.append(line)
    return lines


def replay_lines(
    lines: list[Line], ledger_factory: LedgerFactory, tell: Report
) -> tuple[int, list[Line]]:
    """Each ledger's lines in their order; after a ledger fails, its later lines wait too (a
    run's finish never lands before its usage)."""
    by_url: dict[str, list[Line]] = {}
    kept = [line for line in lines if line.entry is None]
    for line in lines:
        if line.entry is not None:
            by_url.setdefault(line.entry["url"], []).append(line)
    written = 0
    for url, group in by_url.items():
        count, waiting = replay_ledger(url, group, ledger_factory, tell)
        written += count
        kept.extend(waiting)
    kept.sort(key=lambda line: line.number)
    return written, kept


def replay_ledger(
    url: str, lines: list[Line], ledger_factory: LedgerFactory, tell: Report
) -> tuple[int, list[Line]]:
    shown = safe_url(url)
    try:
        base = ledger_factory(url)
    except Exception as error:  # whatever the database says, the lines must survive it
        tell(f"the ledger at {shown} cannot be opened: {error}; {len(lines)} line(s) kept")
        return 0, lines
    written, kept = 0, []
    for index, line in enumerate(lines):
        try:
            written += replay_entry(base, line.entry or {})
        except SpecError as error:
            tell(f"line {line.number}: {error}; kept in the spool")
            kept.append(line)
        except Exception as error:  # the ledger failed: keep this line and every later one
            tell(f"the ledger at {shown} failed: {error}; {len(lines) - index} line(s) kept")
            return written, kept + lines[index:]
    return written, kept


def replay_entry(base: Ledger, entry: Mapping[str, Any]) -> int:
    """Write one spool line; returns how many usage records were new."""
    kind = entry.get("type")
    if kind == "usage":
        change = UsageChange.from_dict(entry.get("change"), "change")
        ledger = Ledger(base.store, actor=entry.get("actor") or None, run_id=run_id_of(entry))
        return Metering(ledger).record([change], source="run")
    if kind == "run":
        event = entry.get("event")
        if event not in RUN_EVENTS:
            raise SpecError("event", f"must be one of {', '.join(RUN_EVENTS)}, got {event!r}")
        run = RunRecord.from_dict(entry, finished=event == "finish")
        write_run(Ledger(base.store, actor=run.actor, run_id=run.run_id), run)
        return 0
    raise SpecError("type", f"must be usage or run, got {kind!r}")


def run_id_of(entry: Mapping[str, Any]) -> str:
    return text_field(entry, "run_id")


def write_run(ledger: Ledger, run: RunRecord) -> None:
    """Start the run (nothing if the ledger has it), then finish it if the record says so."""
    metering = Metering(ledger)
    metering.start_run(run.run_id, run.source, run.started_at, run.detail)
    if run.result is not None:
        metering.finish_run(run.run_id, run.result, run.ended_at or utcnow(), run.end_detail)


def rewrite(path: Path, kept: list[Line], old: os.stat_result) -> None:
    """Leave only the kept lines after the header: a new file with the old one's mode and
    owner, put in place at once (a crash keeps the old one, whose lines are idempotent), or no
    file at all. `path` is a regular file with no other link (`check_file`)."""
    if not kept:
        path.unlink(missing_ok=True)
        return
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            keep_owner_and_mode(handle.fileno(), old)
            handle.write("".join([HEADER_LINE + "\n"] + [line.text + "\n" for line in kept]))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def keep_owner_and_mode(descriptor: int, old: os.stat_result) -> None:
    """The new file as the old one was: who may read a spool (it may hold a ledger password)
    is its owner's choice, not the replay's. Changing the owner needs root; a user replays
    only their own files, whose owner is already theirs."""
    new = os.fstat(descriptor)
    if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
        os.fchown(descriptor, old.st_uid, old.st_gid)
    os.fchmod(descriptor, stat.S_IMODE(old.st_mode))
