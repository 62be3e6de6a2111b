"""Exclude rules in .dockerignore syntax, matched the way Docker matches them.

Docker's ``patternmatcher`` compiles each pattern to a Go regexp and lets regexp syntax leak
through ('*.log|tmp' is an alternation, 'a?{2}' a repetition, '[[:alpha:]]' a class), so this
module ports that compilation and :mod:`kegpackd.archive.goregexp` re-emits the Go regexp,
parsed with Go's rules, for RE2 (``google-re2``). It is kept over a per-segment fnmatch
matcher such as docker-py's ``PatternMatcher``: that one folds case, reads '[^...]' and '\\'
differently and reports no bad patterns, failing 28 of the 126 match cases of moby's own
tests (tests/test_ignore.py), and cannot give those leaks their Docker meaning at all.

Patterns come from whoever starts a container (a label, a ``.kegpackignore`` the container
writes), and matching runs on the daemon's event loop, so its cost is bounded: RE2 matches in
time linear in the name (Python's ``re`` backtracks: '*a*a*a*a*a*a*a*a*c' took seconds per
name), each regexp gets a small memory budget, and a rule set has at most ``MAX_PATTERNS``
patterns of at most ``MAX_PATTERN_CHARS`` characters, ``MAX_PROGRAM`` RE2 instructions in
all. The per-directory cache keeps one integer per directory and is bounded in bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import re2

from kegpackd.archive.gopath import clean, escapes_root
from kegpackd.archive.goregexp import (
    REGEXP_MEMORY,
    Regexp,
    glob_error,
    go_text,
    re2_compile,
    re2_source,
)
from kegpackd.errors import InvalidValueError

_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BOM: Final = "\ufeff"

_EXACT, _PREFIX, _SUFFIX, _REGEXP = range(4)

MAX_PATTERNS: Final = 1000
"""Patterns in one mount's rules (config or label, plus its ``.kegpackignore``)."""
MAX_PATTERN_CHARS: Final = 4096
"""Characters in one pattern line: PATH_MAX, longer than any name a pattern could mean."""
MAX_PROGRAM: Final = 25_000
"""RE2 instructions over all of a rule set's regexps: bounds the work per byte of a name
even where RE2 leaves its DFA for its NFA (about 1.5 ns per instruction and byte); a glob
compiles to 10-30, so a thousand ordinary patterns fit."""
_PARENT_CACHE_ENTRIES: Final = 4096
_PARENT_CACHE_CHARS: Final = 1 << 20
_NO_MATCH: Final = -1


def _go_regexp(pattern: str) -> tuple[int, str]:
    """Port of patternmatcher's ``Pattern.compile``: the match kind and the Go regexp source.

    A repeated ``(.*/)?`` or ``[^/]*`` (from '**/**' or '***') is written once: the language
    is the same, even inside a '[...]' class, and stacked '**' no longer multiply Python's
    backtracking.
    """
    out = ["^"]
    kind = _EXACT
    i, n = 0, len(pattern)
    first = True
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i >= n:
                    if kind == _EXACT:
                        kind = _PREFIX
                    else:
                        out.append(".*")
                        kind = _REGEXP
                else:
                    if out[-1] != "(.*/)?":
                        out.append("(.*/)?")
                    kind = _REGEXP
                if first:
                    kind = _SUFFIX
            else:
                if out[-1] != "[^/]*":
                    out.append("[^/]*")
                kind = _REGEXP
        elif ch == "?":
            out.append("[^/]")
            kind = _REGEXP
        elif ch in ".+()$":
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + pattern[i])
                i += 1
                kind = _REGEXP
            else:
                out.append("\\")
        elif ch in "[]":
            out.append(ch)
            kind = _REGEXP
        else:
            out.append(ch)
        first = False
    out.append("$")
    return kind, "".join(out)


def _docker_pattern(line: str) -> tuple[str, bool] | None:
    """One line through ``ignorefile.ReadAll`` then ``patternmatcher.New``: (pattern, is '!').

    None for blank and comment lines; ValueError says why a pattern is refused. Both of
    Docker's trim-and-clean passes are kept, since the second can change the first's result
    ('a/ /' -> 'a/ ' -> 'a').
    """
    if line.startswith("#"):
        return None
    text = line.strip(_GO_SPACE)
    if not text:
        return None
    invert = text[0] == "!"
    if invert:
        text = text[1:].strip(_GO_SPACE)
    if text:
        if escapes_root(text):
            raise ValueError("the pattern climbs above the mount's root")
        text = clean(text)
        if len(text) > 1 and text[0] == "/":
            text = text[1:]
    if invert:
        text = "!" + text
    text = text.strip(_GO_SPACE)
    if not text:
        return None
    text = clean(text)
    exclusion = text[0] == "!"
    if exclusion:
        if len(text) == 1:
            raise ValueError("'!' must be followed by a pattern")
        text = text[1:]
    if escapes_root(text):
        raise ValueError("the pattern climbs above the mount's root")
    problem = glob_error(text)
    if problem is not None:
        raise ValueError(problem)
    return text, exclusion


@dataclass(frozen=True, slots=True)
class _Pattern:
    """One cleaned pattern; ``literal`` is the text exact/prefix/suffix kinds compare with."""

    text: str
    exclusion: bool
    kind: int
    literal: str
    regexp: Regexp | None

    @classmethod
    def build(cls, text: str, exclusion: bool) -> _Pattern:
        kind, go_source = _go_regexp(text)
        regexp = None
        if kind == _REGEXP:
            try:
                regexp = re2_compile(re2_source(go_source))
            except re2.error:
                raise ValueError(
                    f"its regular expression does not fit RE2's budget of {REGEXP_MEMORY} bytes"
                ) from None
        literal = {_EXACT: text, _PREFIX: text[:-2], _SUFFIX: text[2:]}.get(kind, "")
        return cls(text, exclusion, kind, literal, regexp)

    @property
    def program(self) -> int:
        """RE2 instructions of its regexp (0 for a literal kind): what a match costs per byte."""
        return self.regexp.programsize if self.regexp is not None else 0

    def match(self, path: str, text: bytes) -> bool:
        """Whether it matches ``path``; ``text`` is ``path`` as Go's regexp reads it."""
        kind = self.kind
        if kind == _EXACT:
            return path == self.literal
        if kind == _PREFIX:
            return path.startswith(self.literal)
        if kind == _SUFFIX:
            suffix = self.literal
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.search(text) is not None


class ExcludeRules:
    """Exclude patterns in .dockerignore syntax, relative to a mount's root.

    Parsing follows Docker's ``ignorefile.ReadAll`` then ``patternmatcher.New``, and
    :meth:`matches_clean` its ``MatchesOrParentMatches``, so a pattern means here what it means in
    a ``.dockerignore``, quirks included ('*.log|tmp' is a regexp alternation there, so it is
    here). Stricter than Docker, each raising InvalidValueError: patterns whose '..' climb
    above the root (Docker silently matches nothing, or for '/../x' cleans the climb away),
    regexp escapes like ``\\d`` that Docker's matcher happens to honour, and the limits on
    count, length and RE2 program size (see the module). Patterns Docker fails on only once
    it matches (``[Local-Only]``) fail here at parse.

    The last pattern that matches a path or one of its parents decides (that is what
    Docker's loop with its skips computes), so the cache keeps, per directory, only the index
    of the last pattern matching it or a parent.
    """

    __slots__ = ("_cache", "_cache_chars", "_patterns", "source")

    def __init__(self) -> None:
        self.source = ""
        self._patterns: tuple[_Pattern, ...] = ()
        self._cache: dict[str, int] = {}
        self._cache_chars = 0

    @classmethod
    def parse(cls, patterns: Iterable[str], source: str) -> ExcludeRules:
        """Read patterns (label values or a file's lines); ``source`` names them in errors."""
        built: list[_Pattern] = []
        program = 0
        for index, raw in enumerate(patterns):
            if len(raw) > MAX_PATTERN_CHARS:
                raise InvalidValueError(
                    source, raw, f"a pattern may have at most {MAX_PATTERN_CHARS} characters"
                )
            line = raw.removeprefix(_BOM) if index == 0 else raw
            try:
                pattern = _docker_pattern(line)
                if pattern is not None:
                    built.append(_Pattern.build(*pattern))
            except ValueError as exc:
                raise InvalidValueError(source, raw, str(exc)) from None
            if len(built) > MAX_PATTERNS:
                raise InvalidValueError(
                    source, raw, f"this is pattern {len(built)}; at most {MAX_PATTERNS} are read"
                )
            program += built[-1].program if pattern is not None else 0
            if program > MAX_PROGRAM:
                raise InvalidValueError(
                    source,
                    raw,
                    f"the patterns up to this one compile to {program} RE2 instructions; "
                    f"at most {MAX_PROGRAM} are allowed",
                )
        rules = cls()
        rules.source = source
        rules._patterns = tuple(built)
        return rules

    @property
    def patterns(self) -> tuple[str, ...]:
        """The cleaned patterns as Docker keeps them ('!' marks an exception)."""
        return tuple(("!" if p.exclusion else "") + p.text for p in self._patterns)

    @property
    def has_exceptions(self) -> bool:
        """Whether a '!' pattern can bring back something below an excluded directory."""
        return any(p.exclusion for p in self._patterns)

    def matches_clean(self, rel: str) -> bool:
        """``MatchesOrParentMatches`` for a path already clean and relative (as the scanner's)."""
        if not self._patterns:
            return False
        parent = rel.rpartition("/")[0]
        above = self._dir_last(parent) if parent else _NO_MATCH
        last = self._last_match(rel, above)
        return last != _NO_MATCH and not self._patterns[last].exclusion

    def _last_match(self, path: str, floor: int) -> int:
        """The index of the last pattern after ``floor`` that matches ``path``, else ``floor``.

        Walking back from the end stops at the first hit, and never tries a pattern that a
        parent's answer already outranks.
        """
        text = go_text(path)
        patterns = self._patterns
        for index in range(len(patterns) - 1, floor, -1):
            if patterns[index].match(path, text):
                return index
        return floor

    def _dir_last(self, directory: str) -> int:
        """The last pattern matching ``directory`` or a parent (cached, bounded in bytes)."""
        cached = self._cache.get(directory)
        if cached is not None:
            return cached
        chain = [directory]
        last = _NO_MATCH
        while True:
            up = chain[-1].rpartition("/")[0]
            if not up:
                break
            hit = self._cache.get(up)
            if hit is not None:
                last = hit
                break
            chain.append(up)
        chars = sum(len(path) for path in chain)
        if (
            len(self._cache) + len(chain) > _PARENT_CACHE_ENTRIES
            or self._cache_chars + chars > _PARENT_CACHE_CHARS
        ):
            self._cache.clear()
            self._cache_chars = 0
        for path in reversed(chain):
            last = self._last_match(path, last)
            self._cache[path] = last
        self._cache_chars += chars
        return last

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def __repr__(self) -> str:
        return f"ExcludeRules({list(self.patterns)!r}, source={self.source!r})"
