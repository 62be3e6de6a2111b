"""Capped exponential backoff: the one schedule for retried pushes and engine reconnects.

stamina was weighed and not taken: the push's retry counts per job and the watcher's
"connection lost" and readiness reporting around each wait are the interesting parts, and
they are ours either way; this is the ten lines they share.
"""

from __future__ import annotations

import random


class Backoff:
    """``initial`` doubling up to ``cap``; with ``jitter``, each delay is drawn from its upper
    half, so a fleet of daemons does not reconnect in step."""

    def __init__(self, initial: float, cap: float, *, jitter: bool = False) -> None:
        self.initial, self.cap, self.jitter, self.attempt = initial, cap, jitter, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        return float(delay * random.uniform(0.5, 1.0)) if self.jitter else float(delay)

    def reset(self) -> None:
        self.attempt = 0
