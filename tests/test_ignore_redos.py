"""Exclude patterns from a container owner cannot make matching slow or memory-hungry (F1).

The patterns below are the security review's: on Python's backtracking ``re`` the first took
1.4-9.9 s per name of 40-50 'a's, the second 50 s on a 119-character path.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from kegpackd.archive import ignore
from kegpackd.archive.ignore import ExcludeRules
from kegpackd.config import Config
from kegpackd.errors import InvalidValueError
from kegpackd.labels import LABEL_EXCLUDE
from kegpackd.packaging.options import resolve_options
from tests.ignoretools import moby_matches

SOURCE = "label kegpack.exclude"
STARS = "*a*a*a*a*a*a*a*a*c"
NESTED = "**/x/**/x/**/x/**/x/**/x/**/x/**/y"


def timed_match(rules: ExcludeRules, path: str) -> tuple[bool, float]:
    started = time.perf_counter()
    result = moby_matches(rules, path)
    return result, time.perf_counter() - started


def test_stacked_stars_match_a_name_of_48_as_in_linear_time() -> None:
    """'*a*a*a*a*a*a*a*a*c' against 48 'a's answers in milliseconds, not seconds."""
    rules = ExcludeRules.parse([STARS], SOURCE)
    result, elapsed = timed_match(rules, "a" * 48)
    assert result is False
    assert elapsed < 0.05


def test_stacked_stars_still_match_what_docker_matches() -> None:
    """The same pattern excludes 'aaaaaaaac' and a long name that ends in 'c'."""
    rules = ExcludeRules.parse([STARS], SOURCE)
    assert moby_matches(rules, "aaaaaaaac")
    assert moby_matches(rules, "a" * 4000 + "c")


def test_stacked_double_stars_match_a_119_character_path_in_linear_time() -> None:
    """'**/x/**/x/…/**/y' against 'x/x/…' (119 characters) answers in milliseconds."""
    rules = ExcludeRules.parse([NESTED], SOURCE)
    result, elapsed = timed_match(rules, ("x/" * 60)[:119])
    assert result is False
    assert elapsed < 0.05


def test_the_largest_hostile_rule_set_allowed_matches_a_long_name_within_a_second() -> None:
    """As many hostile patterns as the RE2 budget allows, on a 2000-character name: bounded."""
    rules = ExcludeRules.parse([STARS] * 140 + [NESTED] * 140, SOURCE)
    result, elapsed = timed_match(rules, "x/" * 500 + "a" * 1000)
    assert result is False
    assert elapsed < 1.0


def test_more_patterns_than_the_limit_are_refused_naming_the_source() -> None:
    """MAX_PATTERNS + 1 patterns fail with an error naming where they came from."""
    with pytest.raises(InvalidValueError, match=f"^{SOURCE}: .*at most {ignore.MAX_PATTERNS}"):
        ExcludeRules.parse([f"file{n}" for n in range(ignore.MAX_PATTERNS + 1)], SOURCE)


def test_a_pattern_longer_than_the_limit_is_refused_and_shown_cut() -> None:
    """A 100,000-character pattern fails; the message names the limit and not the whole value."""
    with pytest.raises(InvalidValueError) as caught:
        ExcludeRules.parse(["a" * 100_000], SOURCE)
    message = str(caught.value)
    assert message.startswith(SOURCE)
    assert str(ignore.MAX_PATTERN_CHARS) in message
    assert len(message) < 1000


def test_patterns_whose_regexps_are_too_large_together_are_refused() -> None:
    """Many complex regexps (each allowed alone) fail once their RE2 programs add up too big."""
    with pytest.raises(InvalidValueError, match="RE2 instructions"):
        ExcludeRules.parse([NESTED + str(n) for n in range(ignore.MAX_PATTERNS)], SOURCE)


def test_a_repetition_that_compiles_too_large_is_refused() -> None:
    """'a?{1000}' (Docker lets '{n}' through as a regexp repetition) is refused, not matched."""
    with pytest.raises(InvalidValueError, match=r"a\?\{1000\}"):
        ExcludeRules.parse(["a?{1000}"], SOURCE)


def test_an_exclude_label_over_64_kib_is_refused_naming_the_label() -> None:
    """A 100k-pattern kegpack.exclude label fails before it is split into patterns."""
    labels = {LABEL_EXCLUDE: ",".join(f"p{n}" for n in range(100_000))}
    with pytest.raises(InvalidValueError, match=f"^label {LABEL_EXCLUDE}: "):
        resolve_options(labels, Config())


def test_parent_cache_memory_stays_small_over_many_directories() -> None:
    """1000 patterns over 4,500 directories keep the cache to a few MiB, not a tuple per pattern."""
    rules = ExcludeRules.parse([f"dir{n}/file" for n in range(ignore.MAX_PATTERNS)], SOURCE)
    tracemalloc.start()
    try:
        for n in range(4500):
            moby_matches(rules, f"top/sub{n}/file")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_last_matching_pattern_decides_across_a_parent_and_the_name() -> None:
    """'logs' excludes below it, '!logs/keep*' brings one back, '*/keep2' excludes it again."""
    rules = ExcludeRules.parse(["logs", "!logs/keep*", "*/keep2"], SOURCE)
    assert moby_matches(rules, "logs/x")
    assert not moby_matches(rules, "logs/keep1")
    assert moby_matches(rules, "logs/keep2")


def test_a_byte_that_is_not_utf8_is_one_character_as_in_go() -> None:
    """'?' matches a name made of one invalid UTF-8 byte (Go reads it as one U+FFFD)."""
    name = b"\xff".decode("utf-8", "surrogateescape")
    rules = ExcludeRules.parse(["?"], SOURCE)
    assert moby_matches(rules, name)
    assert not moby_matches(rules, name + name)
