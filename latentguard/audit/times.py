"""Times and durations on the ``audit`` command line: ``30d``, ``12h``, ``2026-12-01T00:00Z``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["as_utc", "parse_duration", "parse_time"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """A duration such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.

    Args:
        text: The duration.

    Returns:
        The duration.

    Raises:
        ValueError: If ``text`` is not a duration.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m, 45s, 2w)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive time is taken as UTC (SQLite returns naive times)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when no offset is given), or a duration meaning that long ago.

    Args:
        text: E.g. ``2026-12-01``, ``2026-12-01T08:00:00+01:00``, ``2026-12-01T07:00Z`` or ``24h``.
        now: The current time, for durations (default: now).

    Returns:
        The time, in UTC.

    Raises:
        ValueError: If ``text`` is neither.
    """
    if _DURATION.match(text):
        return (now or datetime.now(timezone.utc)) - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, e.g. 2026-12-01T08:00Z, or 24h ago)") from None
    return as_utc(parsed)
