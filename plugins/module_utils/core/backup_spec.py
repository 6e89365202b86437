# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup schedules as declared: calendar, retention, disks, target (terms 3.9).

A schedule's frequency is not a free label: it is read from its calendar expression (the
shortest gap between the next elapses systemd computes) and must be one the tenant's plan
allows. Retention is scoped to the schedule: its rules count only that schedule's backups.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import fields
from .errors import SpecError
from .validation import (
    as_list,
    as_mapping,
    at,
    check_absolute_path,
    check_int,
    check_name,
    check_pool,
    reject_unknown,
)

# From most to least frequent: the shortest gap between two runs each one allows.
FREQUENCIES: dict[str, dt.timedelta] = {
    "hourly": dt.timedelta(hours=1),
    "daily": dt.timedelta(days=1),
    "weekly": dt.timedelta(days=7),
    "monthly": dt.timedelta(days=28),
}
DEFAULT_FREQUENCIES = ("daily", "weekly", "monthly")
RETENTION_RULES = tuple(rule.name for rule in fields.RETENTION)
MAX_KEEP = 10_000
DEFAULT_BACKUP_ROOT = "/var/lib/vce-kvm/backups"
CALENDAR_ITERATIONS = 100
# systemd tolerates a little slack (DST shifts move an elapse by an hour at most).
GAP_SLACK = dt.timedelta(hours=1)


def check_frequencies(raw: Any, path: str) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_FREQUENCIES
    values = as_list(raw, path)
    if not values:
        raise SpecError(
            path, "allow at least one backup frequency (or leave it out for the default)"
        )
    for i, value in enumerate(values):
        if value not in FREQUENCIES:
            raise SpecError(
                f"{path}[{i}]", f"must be one of {', '.join(FREQUENCIES)}, got {value!r}"
            )
    return tuple(f for f in FREQUENCIES if f in values)


@dataclass(frozen=True)
class Retention:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None

    def as_dict(self) -> dict[str, int]:
        return {rule: getattr(self, rule) for rule in RETENTION_RULES if getattr(self, rule)}


def parse_retention(raw: Any, path: str) -> Retention:
    raw = as_mapping(raw, path)
    reject_unknown(raw, set(RETENTION_RULES), path)
    values = {}
    for rule in RETENTION_RULES:
        value = raw.get(rule)
        if value is None:
            continue
        if value == 0 and not isinstance(value, bool):
            raise SpecError(
                at(path, rule),
                "must be at least 1: a rule keeping 0 backups would delete them all "
                "(leave the rule out instead)",
            )
        values[rule] = check_int(value, at(path, rule), 1, MAX_KEEP)
    if not values:
        raise SpecError(path, f"give at least one rule: {', '.join(RETENTION_RULES)}")
    return Retention(**values)


@dataclass(frozen=True)
class ScheduleSpec:
    vm: str
    name: str
    calendar: str
    retention: Retention
    disks: tuple[str, ...]  # declared disk names ("boot" for the boot disk); () = all
    target: str | None  # a directory on the host
    pool: str | None  # or a directory storage pool whose path is the target
    timeout_s: int = 6 * 3600


CALENDAR_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\%$;`]")


def check_calendar(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(
            path, "a systemd calendar expression is required, e.g. 'daily' or '*-*-* 02:30'"
        )
    # Checked before spaces are normalised: a newline would start a new line in the unit. systemd
    # calendars are ASCII, which also keeps out C1 controls and Unicode line separators.
    if len(value) > 200 or not value.isascii() or CALENDAR_FORBIDDEN.search(value):
        raise SpecError(path, f"invalid calendar expression {value!r}")
    return " ".join(value.split())


def parse_schedule(raw: Any, path: str, vm: str | None = None) -> ScheduleSpec:
    """One schedule; `vm` is given by the module (top level), else read from the entry."""
    raw = as_mapping(raw, path)
    allowed = fields.spec_keys(fields.BACKUP_SCHEDULE)
    reject_unknown(raw, allowed if vm is None else allowed - {"vm"}, path)
    vm = vm if vm is not None else check_name(raw.get("vm"), at(path, "vm"))
    disks = tuple(
        check_name(d, f"{at(path, 'disks')}[{i}]")
        for i, d in enumerate(as_list(raw.get("disks"), at(path, "disks")))
    )
    if len(set(disks)) != len(disks):
        raise SpecError(at(path, "disks"), "lists a disk twice")
    target = raw.get("target")
    pool = raw.get("pool")
    if target is not None and pool is not None:
        raise SpecError(at(path, "pool"), "give target or pool, not both")
    timeout = raw.get("timeout_minutes")
    return ScheduleSpec(
        vm=vm,
        name=check_name(raw.get("name"), at(path, "name")),
        calendar=check_calendar(raw.get("calendar"), at(path, "calendar")),
        retention=parse_retention(raw.get("retention"), at(path, "retention")),
        disks=disks,
        target=None
        if target is None
        else posixpath.normpath(check_absolute_path(target, at(path, "target"))),
        pool=None if pool is None else check_pool(pool, at(path, "pool")),
        timeout_s=6 * 3600
        if timeout is None
        else 60 * check_int(timeout, at(path, "timeout_minutes"), 1, 7 * 24 * 60),
    )


def check_under_root(target: str, root: str, path: str) -> str:
    """`target` must be the backup root or inside it: backups never land elsewhere."""
    target = posixpath.normpath(target)
    root = posixpath.normpath(root)
    if target != root and not target.startswith(root.rstrip("/") + "/"):
        raise SpecError(path, f"{target} is outside the allowed backup root {root}")
    return target


# -- calendar expressions ------------------------------------------------------------------

ELAPSE_LINE = re.compile(
    r"^\s*(?:Next elapse|Iter\. #\d+):\s+\w{3} (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})", re.MULTILINE
)
NORMALIZED_LINE = re.compile(r"^\s*Normalized form:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Calendar:
    expression: str
    normalized: str
    next_elapses: tuple[dt.datetime, ...]

    @property
    def shortest_gap(self) -> dt.timedelta | None:
        gaps = [b - a for a, b in zip(self.next_elapses, self.next_elapses[1:], strict=False)]
        return min(gaps) if gaps else None

    @property
    def frequency(self) -> str | None:
        """The least frequent class whose gap fits (None: more often than hourly)."""
        gap = self.shortest_gap
        if gap is None:  # elapses once or never more: as rare as it gets
            return "monthly"
        found = None
        for name, minimum in FREQUENCIES.items():
            slack = GAP_SLACK if minimum >= dt.timedelta(days=1) else dt.timedelta(0)
            if gap + slack >= minimum:
                found = name
        return found


def parse_calendar_output(expression: str, output: str) -> Calendar:
    """Read `systemd-analyze calendar --iterations=N` (wall-clock times, naive)."""
    normalized = NORMALIZED_LINE.search(output)
    elapses = tuple(
        dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S") for m in ELAPSE_LINE.finditer(output)
    )
    return Calendar(expression, normalized.group(1).strip() if normalized else expression, elapses)


def check_frequency(calendar: Calendar, allowed: Sequence[str], plan: str, path: str) -> str:
    frequency = calendar.frequency
    if frequency is None:
        raise SpecError(
            path,
            f"{calendar.expression!r} runs more often than hourly (every "
            f"{calendar.shortest_gap}); plan {plan} allows {', '.join(allowed)}",
        )
    if frequency not in allowed:
        raise SpecError(
            path,
            f"{calendar.expression!r} is a {frequency} schedule, which plan {plan} does not "
            f"allow (allowed: {', '.join(allowed)}); choose a rarer calendar or ask for a plan "
            "with it",
        )
    return frequency
