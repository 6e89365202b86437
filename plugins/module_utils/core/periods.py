# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reporting periods: calendar months in the provider's time zone, and interval arithmetic.

Intervals are half-open [start, end) pairs of aware datetimes; lengths are whole microseconds,
so sums are exact.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import SpecError

DEFAULT_TIME_ZONE = "Asia/Almaty"
TIME_ZONE_ENV = "VCE_TIME_ZONE"
# ASCII digits, matched whole with fullmatch: `\d` takes any Unicode digit, `$` a trailing newline.
MONTH_PATTERN = re.compile(r"([0-9]{4})-([0-9]{2})")

Interval = tuple[dt.datetime, dt.datetime]


def time_zone(name: str | None = None, field: str = "time_zone") -> ZoneInfo:
    name = name or os.environ.get(TIME_ZONE_ENV) or DEFAULT_TIME_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError(field, f"unknown time zone {name!r} (e.g. Asia/Almaty, UTC)") from None


@dataclass(frozen=True)
class Month:
    """One reporting period: [start, end) in UTC, from midnights in `zone`."""

    year: int
    month: int
    zone: ZoneInfo

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> dt.datetime:
        return dt.datetime(self.year, self.month, 1, tzinfo=self.zone).astimezone(dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.next().start

    def next(self) -> Month:
        if self.month == 12:
            return Month(self.year + 1, 1, self.zone)
        return Month(self.year, self.month + 1, self.zone)

    def contains(self, moment: dt.datetime) -> bool:
        return self.start <= moment < self.end

    @classmethod
    def of(cls, moment: dt.datetime, zone: ZoneInfo) -> Month:
        local = moment.astimezone(zone)
        return cls(local.year, local.month, zone)


def parse_month(value: object, zone: ZoneInfo, field: str = "month") -> Month:
    match = MONTH_PATTERN.fullmatch(str(value or ""))
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise SpecError(field, f"must be a month as YYYY-MM (e.g. 2026-11), got {value!r}")
    return Month(int(match.group(1)), int(match.group(2)), zone)


def clip(
    start: dt.datetime, end: dt.datetime | None, low: dt.datetime, high: dt.datetime
) -> Interval | None:
    """[start, end) within [low, high), or None when they do not overlap (open end: high)."""
    begin = max(start, low)
    finish = min(end or high, high)
    return (begin, finish) if begin < finish else None


def union(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The overlap of two sets of intervals (each merged first)."""
    left, right = union(a), union(b)
    result = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start < end:
            result.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return result


def subtract(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """What of `a` lies outside `b`."""
    result = []
    cuts = union(b)
    for start, end in union(a):
        cursor = start
        for cut_start, cut_end in cuts:
            if cut_end <= cursor or cut_start >= end:
                continue
            if cut_start > cursor:
                result.append((cursor, cut_start))
            cursor = max(cursor, cut_end)
        if cursor < end:
            result.append((cursor, end))
    return result


MICROSECOND = dt.timedelta(microseconds=1)


def micros(start: dt.datetime, end: dt.datetime) -> int:
    """Exact length of [start, end) in microseconds: sums of them never round."""
    return (end - start) // MICROSECOND


def total_micros(intervals: Iterable[Interval]) -> int:
    return sum(micros(start, end) for start, end in union(intervals))


def overlap_micros(start: dt.datetime, end: dt.datetime, windows: Iterable[Interval]) -> int:
    """Microseconds of [start, end) inside `windows` (merged, not overlapping each other)."""
    total = 0
    for low, high in windows:
        begin, finish = max(start, low), min(end, high)
        if begin < finish:
            total += micros(begin, finish)
    return total
