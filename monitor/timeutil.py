"""UTC timestamps for the wire and the database: ISO 8601 with an explicit +00:00 offset."""
from __future__ import annotations

import datetime as _dt
import time

UTC = _dt.timezone.utc


def utcnow_iso() -> str:
    return _dt.datetime.now(UTC).isoformat()


def iso_from_epoch(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return _dt.datetime.fromtimestamp(seconds, UTC).isoformat()


def iso_from_epoch_ms(ms: float | None) -> str | None:
    return None if ms is None else iso_from_epoch(ms / 1000.0)


def epoch_from_iso(value: str | None) -> float | None:
    if not value:
        return None
    parsed = _dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:  # never written by us; treat as UTC rather than local time
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def now() -> float:
    return time.time()
