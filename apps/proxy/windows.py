"""Calendar windows of spend limits, in the company's time zone: ISO weeks and months.

A limit "resets" at its window's boundary with no job zeroing counters: the counter keys carry
the window's id.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta

_windows: dict[str, tuple[float, float, tuple[str, str, float, float]]] = {}


def window_ids(tz: zoneinfo.ZoneInfo, now: float) -> tuple[str, str, float, float]:
    """Calendar windows in the company's zone: ISO week id, month id, and their end timestamps.

    Cached per zone until the next boundary (this runs on every request)."""
    cached = _windows.get(tz.key)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached[2]
    result = _compute_windows(tz, now)
    # Valid from now to the first boundary ahead.
    _windows[tz.key] = (now, min(result[2], result[3]), result)
    return result


def calendar_bounds(tz: zoneinfo.ZoneInfo, now: float) -> tuple[datetime, datetime, datetime, datetime]:
    """(week start, week end, month start, month end) around ``now``, on the zone's wall clock
    (built without tzinfo arithmetic, so a DST change inside the window moves no boundary)."""
    local = datetime.fromtimestamp(now, tz)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    week_start = day - timedelta(days=local.weekday())
    month_start = day.replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    week_end = week_start + timedelta(days=7)
    return (week_start.replace(tzinfo=tz), week_end.replace(tzinfo=tz), month_start.replace(tzinfo=tz),
            month_end.replace(tzinfo=tz))


def _compute_windows(tz: zoneinfo.ZoneInfo, now: float) -> tuple[str, str, float, float]:
    local = datetime.fromtimestamp(now, tz)
    year, week, _ = local.isocalendar()
    _, week_end, _, month_end = calendar_bounds(tz, now)
    return f"{year}-W{week:02d}", f"{local.year}-{local.month:02d}", week_end.timestamp(), month_end.timestamp()
