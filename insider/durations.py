"""Durations as the settings write them (``500ms``, ``30s``, ``2m``, ``1h``, ``7d``): read and written."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``120``, ``0.5``, ``500ms``, ``30s``, ``2m``, ``1h`` or ``7d``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected seconds (120, 0.5) or a duration (500ms, 30s, 2m, 1h), got {text!r}")
    value = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(value):
        raise ValueError(f"duration out of range: {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """A duration the way the settings write it: ``2m``, ``30s``, ``1h``, ``500ms``, ``1.5s``."""
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and round(seconds / size, 9).is_integer():
            return f"{round(seconds / size)}{unit}"
    if seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"
