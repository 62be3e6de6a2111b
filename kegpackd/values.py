"""Parsers for the scalar values that labels and the config share (booleans, durations).

Each names its source in the error, because the same text can come from a label
that a stranger set or from the operator's config file.
"""

from __future__ import annotations

import re

from kegpackd.errors import InvalidValueError

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
# ASCII digits only (\d is Unicode-aware), and every part is matched where the last one ended:
# finditer() would rescan a long run of digits from each position, in quadratic time.
_DURATION_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION_SECONDS = 7 * 24 * 3600.0
# Ages (retention) run longer than timeouts: up to ten years.
MAX_AGE_SECONDS = 3650 * 24 * 3600.0


def parse_bool(text: str, source: str) -> bool:
    """Accept the usual spellings of a boolean, and nothing else."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidValueError(source, text, "expected true or false")


def parse_duration(text: str, source: str, limit: float = MAX_DURATION_SECONDS) -> float:
    """Parse ``90``, ``30s``, ``1m30s``, ``250ms``, ``2h``, ``30d`` into seconds (at most
    ``limit``: a week unless said otherwise)."""
    value = text.strip()
    if not value:
        raise InvalidValueError(source, text, "expected a duration such as 30s, 5m or 1h")
    if _DURATION_NUMBER.fullmatch(value):
        seconds = float(value)
    else:
        pos = 0
        seconds = 0.0
        while pos < len(value):
            match = _DURATION_PART.match(value, pos)
            if match is None:
                raise InvalidValueError(source, text, "expected a duration such as 30s, 5m or 1h")
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
    if seconds > limit:
        raise InvalidValueError(source, text, f"longer than {span_words(limit)}")
    return seconds


def span_words(seconds: float) -> str:
    """A duration limit as the messages say it: "a week", "3650 days"."""
    return "a week" if seconds == MAX_DURATION_SECONDS else f"{seconds / 86400:.0f} days"
