"""Durations as a spec writes them: seconds, or a number with a unit ('90s', '30m', '2h', '1d')."""

from __future__ import annotations

import re

Duration = float | str
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Duration) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration: use seconds or '90s', '30m', '2h', '1d'")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
