"""The retry schedule, and its test mode (as stamina's ``set_testing``)."""

from __future__ import annotations

from kegpackd import backoff
from kegpackd.backoff import Backoff


def test_delays_double_up_to_the_cap() -> None:
    """0.5, 1, 2, 4, then the cap of 5, and again from the start after a reset."""
    schedule = Backoff(0.5, 5.0)
    assert [schedule.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    schedule.reset()
    assert schedule.next() == 0.5


def test_test_mode_caps_every_delay_for_its_block_only() -> None:
    """Inside ``in_test_mode`` no delay exceeds its cap; after it the real schedule is back."""
    schedule = Backoff(0.5, 30.0, jitter=True)
    with backoff.in_test_mode(cap=0.002):
        assert backoff.is_testing()
        assert max(schedule.next() for _ in range(10)) <= 0.002
    assert not backoff.is_testing()
    assert Backoff(0.5, 30.0).next() == 0.5
