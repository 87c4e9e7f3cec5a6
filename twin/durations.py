"""Durations (`24h`, `90m`) and times (`now`, `-1h`, RFC 3339) as the API writes them."""

from __future__ import annotations

import re
from datetime import datetime

from twin.errors import InvalidRequest

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class BadDuration(InvalidRequest):
    """A duration or a time that does not parse."""


def parse_duration(text: str) -> int:
    """'24h', '90m', '2d', '30s' -> milliseconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match is None:
        raise BadDuration(f"{text!r} is not a duration like '24h', '90m' or '2d'")
    value = int(float(match.group(1)) * _UNITS_MS[match.group(2)])
    if value <= 0:
        raise BadDuration("a duration must be positive")
    return value


def parse_time(text: str, now_ms: int) -> int:
    """'now', a relative '-1h' / '-30m', or an RFC 3339 time with an offset -> epoch ms."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("-"):
        return now_ms - parse_duration(text[1:])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadDuration(
            f"{text!r} is not 'now', a relative time like '-1h', or RFC 3339"
        ) from None
    if parsed.tzinfo is None:
        raise BadDuration(f"{text!r} needs a UTC offset, e.g. 'Z'")
    return int(parsed.timestamp() * 1000)
