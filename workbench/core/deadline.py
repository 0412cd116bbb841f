"""Experiment deadlines: parsing what a researcher types, and reading what a manifest holds.

A deadline is an instant in UTC, written in a manifest as ``YYYY-MM-DDTHH:MM:SSZ``. At
launch it may be given as an ISO-8601 timestamp with a zone (``2026-12-01T18:00:00Z``,
``2026-12-01T19:00:00+01:00``) or as a duration from now (``2h``, ``30m``, ``1h30m``,
``90s``, ``2d``); "now" is the hub's clock, never the caller's.

Who decides with which clock (docs/faults.md, "Deadlines and clocks"): the hub refuses a
result it *received* after the deadline, by its own clock. A spoke cannot read the hub's
clock, so it skips a case only when the hub's clock has certainly passed the deadline: the
manifest's ``created_at`` (hub time) plus the time the spoke itself has measured since it
stored the order is a lower bound of the hub's time, whatever the spoke's clock says.

>>> parse_deadline("90m", now=parse_utc("2026-01-01T00:00:00Z"))
datetime.datetime(2026, 1, 1, 1, 30, tzinfo=datetime.timezone.utc)
>>> format_utc(parse_utc("2026-01-01T01:00:00+01:00"))
'2026-01-01T00:00:00Z'
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_MAX_AHEAD = timedelta(days=366)


class DeadlineError(ValueError):
    """Text that is not a usable deadline: malformed, without a zone, past, or too far."""


def parse_utc(text: str) -> datetime:
    """An ISO-8601 timestamp with a zone (``Z`` or an offset) as an aware UTC ``datetime``.

    Raises:
        DeadlineError: not ISO-8601, or without a zone (a naive time is ambiguous).
    """
    try:
        found = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise DeadlineError(f"not an ISO-8601 timestamp: {text[:60]!r}") from e
    if found.tzinfo is None or found.utcoffset() is None:
        raise DeadlineError(f"{text[:60]!r} has no time zone: add Z (UTC) or an offset")
    return found.astimezone(UTC)


def format_utc(moment: datetime) -> str:
    """An aware ``datetime`` as the manifest writes it: ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str) -> timedelta | None:
    """``2h``, ``30m``, ``1h30m``, ``90s``, ``2d`` as a ``timedelta``; ``None`` if not one."""
    match = _DURATION.match(text.strip().lower())
    if match is None or not any(match.groups()):
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_deadline(text: str, now: datetime) -> datetime:
    """A deadline typed at launch (timestamp or duration from ``now``), checked.

    Raises:
        DeadlineError: malformed, without a zone, not after ``now``, or more than a year
            ahead (almost certainly a typo).
    """
    duration = parse_duration(text)
    moment = now + duration if duration is not None else parse_utc(text)
    moment = moment.replace(microsecond=0)
    if moment <= now:
        raise DeadlineError(
            f"the deadline {format_utc(moment)} is not in the future (hub time {format_utc(now)})"
        )
    if moment - now > _MAX_AHEAD:
        raise DeadlineError(f"the deadline {format_utc(moment)} is more than a year ahead")
    return moment
