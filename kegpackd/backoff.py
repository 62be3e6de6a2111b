"""Capped exponential backoff: the one schedule for retried pushes and engine reconnects.

stamina was weighed and not taken: the push's retry counts per job and the watcher's
"connection lost" and readiness reporting around each wait are the interesting parts, and
they are ours either way; this is the ten lines they share. Its test mode is taken from
stamina (``set_testing``): a test shortens every wait through the API rather than patching
the constants of each module that retries.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

# In test mode, the longest any delay may be (None: the real schedule).
_testing_cap: float | None = None


def set_testing(testing: bool, *, cap: float = 0.001) -> None:
    """Test mode on (every delay at most ``cap`` seconds, in every module) or off."""
    global _testing_cap  # noqa: PLW0603 -- the switch is process-wide, as stamina's is
    _testing_cap = cap if testing else None


def is_testing() -> bool:
    return _testing_cap is not None


@contextlib.contextmanager
def in_test_mode(*, cap: float = 0.001) -> Iterator[None]:
    """Test mode for the block; what was set before comes back after it."""
    before = _testing_cap
    set_testing(True, cap=cap)
    try:
        yield
    finally:
        set_testing(before is not None, cap=before or 0.0)


class Backoff:
    """``initial`` doubling up to ``cap``; with ``jitter``, each delay is drawn from its upper
    half, so a fleet of daemons does not reconnect in step."""

    def __init__(self, initial: float, cap: float, *, jitter: bool = False) -> None:
        self.initial, self.cap, self.jitter, self.attempt = initial, cap, jitter, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.attempt)
        if _testing_cap is not None:
            delay = min(delay, _testing_cap)
        self.attempt += 1
        return float(delay * random.uniform(0.5, 1.0)) if self.jitter else float(delay)

    def reset(self) -> None:
        self.attempt = 0
