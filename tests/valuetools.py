"""Helpers for tests of values read from outside (labels, config, templates): the result
of a call or the ``InvalidValueError`` it raised, as one value a property can examine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from kegpackd.errors import InvalidValueError

T = TypeVar("T")


def outcome(call: Callable[[], T]) -> T | InvalidValueError:
    """The call's result, or the InvalidValueError it raised; anything else propagates."""
    try:
        return call()
    except InvalidValueError as err:
        return err


def refusal(call: Callable[[], object]) -> str:
    """The message of the InvalidValueError that ``call`` raises."""
    with pytest.raises(InvalidValueError) as info:
        call()
    return str(info.value)
