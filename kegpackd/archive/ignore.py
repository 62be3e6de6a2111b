"""Exclude rules in .dockerignore syntax, matched the way Docker matches them.

Docker's ``patternmatcher`` compiles each pattern to a Go regexp and lets regexp syntax leak
through ('*.log|tmp' is an alternation, 'a?{2}' a repetition, '[[:alpha:]]' a class), so this
module ports that compilation and re-emits the Go regexp, parsed with Go's rules, for RE2
(``google-re2``). It is kept over a per-segment fnmatch matcher such as docker-py's
``PatternMatcher``: that one folds case, reads '[^...]' and '\\' differently and reports no
bad patterns, failing 28 of the 126 match cases of moby's own tests (tests/test_ignore.py),
and cannot give those leaks their Docker meaning at all.

Patterns come from whoever starts a container (a label, a ``.kegpackignore`` the container
writes), and matching runs on the daemon's event loop, so its cost is bounded: RE2 matches in
time linear in the name (Python's ``re`` backtracks: '*a*a*a*a*a*a*a*a*c' took seconds per
name), each regexp gets a small memory budget, and a rule set has at most ``MAX_PATTERNS``
patterns of at most ``MAX_PATTERN_CHARS`` characters, ``MAX_PROGRAM`` RE2 instructions in
all. The per-directory cache keeps one integer per directory and is bounded in bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol, cast

import re2

from kegpackd.archive.gopath import clean, escapes_root
from kegpackd.errors import InvalidValueError

_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BOM: Final = "\ufeff"

_EXACT, _PREFIX, _SUFFIX, _REGEXP = range(4)

_Ranges = list[tuple[int, int]]

_DIGIT: Final[_Ranges] = [(0x30, 0x39)]
_UPPER: Final[_Ranges] = [(0x41, 0x5A)]
_LOWER: Final[_Ranges] = [(0x61, 0x7A)]
_WORD: Final[_Ranges] = [*_DIGIT, *_UPPER, (0x5F, 0x5F), *_LOWER]
_PERL_CLASSES: Final[dict[str, _Ranges]] = {
    "d": _DIGIT,
    "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    "w": _WORD,
}
_POSIX_CLASSES: Final[dict[str, _Ranges]] = {
    "alnum": [*_DIGIT, *_UPPER, *_LOWER],
    "alpha": [*_UPPER, *_LOWER],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": _DIGIT,
    "graph": [(0x21, 0x7E)],
    "lower": _LOWER,
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": _UPPER,
    "word": _WORD,
    "xdigit": [*_DIGIT, (0x41, 0x46), (0x61, 0x66)],
}
_CONTROL_ESCAPES: Final = {"a": 0x07, "f": 0x0C, "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_MAX_RUNE: Final = 0x10FFFF

MAX_PATTERNS: Final = 1000
"""Patterns in one mount's rules (config or label, plus its ``.kegpackignore``)."""
MAX_PATTERN_CHARS: Final = 4096
"""Characters in one pattern line: PATH_MAX, longer than any name a pattern could mean."""
MAX_PROGRAM: Final = 25_000
"""RE2 instructions over all of a rule set's regexps: bounds the work per byte of a name
even where RE2 leaves its DFA for its NFA (about 1.5 ns per instruction and byte); a glob
compiles to 10-30, so a thousand ordinary patterns fit."""
REGEXP_MEMORY: Final = 64 * 1024
"""RE2's ``max_mem`` per regexp (program and DFA cache): a glob's DFA has few states, and a
pattern whose DFA would outgrow it is matched by RE2's NFA, still in linear time."""
_PARENT_CACHE_ENTRIES: Final = 4096
_PARENT_CACHE_CHARS: Final = 1 << 20
_NO_MATCH: Final = -1


class _Regexp(Protocol):
    """What this module uses of a compiled ``re2`` regexp (the package ships no types)."""

    @property
    def programsize(self) -> int: ...

    def search(self, text: bytes) -> object | None: ...


def _re2_compile(source: str) -> _Regexp:
    """RE2 with Go's defaults for a Perl-syntax regexp, no captures and a small memory cap."""
    options = re2.Options()
    options.max_mem = REGEXP_MEMORY
    options.never_capture = True
    options.log_errors = False
    return cast(_Regexp, re2.compile(source, options))


def _go_text(path: str) -> bytes:
    """``path`` as Go's regexp reads it: each byte that is not UTF-8 (a surrogate escape
    here) is one U+FFFD, which '?' and '[^/]' match."""
    try:
        return path.encode("utf-8")
    except UnicodeEncodeError:
        fixed = "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in path)
        return fixed.encode("utf-8", "replace")


def _complement(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    nxt = 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _glob_error(pattern: str) -> str | None:
    """Why Go's ``filepath.Match`` would reject ``pattern`` (Docker's syntax check), or None."""
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                return "it ends with a lone backslash"
            i += 2
        elif ch == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            ranges = 0
            while not (i < n and pattern[i] == "]" and ranges):
                i = _class_end(pattern, i)
                if i < 0:
                    return "it has a malformed or unterminated '[...]' character class"
                if pattern[i] == "-":
                    i = _class_end(pattern, i + 1)
                    if i < 0:
                        return "it has a malformed or unterminated '[...]' character class"
                ranges += 1
            i += 1
        else:
            i += 1
    return None


def _class_end(pattern: str, i: int) -> int:
    """Go's ``getEsc``: index after one class character, or -1 where Match reports ErrBadPattern."""
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        return -1
    if pattern[i] == "\\":
        i += 1
        if i >= n:
            return -1
    if "\udc80" <= pattern[i] <= "\udcff":
        return -1
    i += 1
    return i if i < n else -1


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


def _escape_ranges(src: str, i: int, *, in_class: bool) -> tuple[_Ranges, int]:
    """One ``\\x`` escape of the Go regexp as code-point ranges; ValueError where we differ from Go.

    Go gives letters after a backslash regexp meanings (``\\d``, ``\\pL``, ``\\x41``, ``\\b``...);
    the few that are plain classes or control characters are kept, the rest refused rather than
    matched differently from Docker.
    """
    if i >= len(src):
        raise ValueError("it ends with a lone backslash")
    ch = src[i]
    if ch in "dDsSwW":
        ranges = _PERL_CLASSES[ch.lower()]
        return (_complement(ranges) if ch.isupper() else list(ranges)), i + 1
    if ch in _CONTROL_ESCAPES:
        code = _CONTROL_ESCAPES[ch]
        return [(code, code)], i + 1
    if ord(ch) < 0x80 and not ch.isalnum():
        return [(ord(ch), ord(ch))], i + 1
    where = " inside '[...]'" if in_class else ""
    raise ValueError(
        f"Docker's matcher reads '\\{ch}'{where} as a regular-expression escape, "
        "which kegpack does not support"
    )


def _literal(code: int) -> str:
    """One code point as RE2 source: ASCII letters and digits as they are, others as
    ``\\x{...}``, which needs no escaping rules and survives any surrogate."""
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:X}}}"


def _emit_ranges(ranges: _Ranges, *, negate: bool = False) -> str:
    if not negate and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _literal(ranges[0][0])
    items = [_literal(lo) if lo == hi else f"{_literal(lo)}-{_literal(hi)}" for lo, hi in ranges]
    return "[" + ("^" if negate else "") + "".join(items) + "]"


def _parse_class(src: str, i: int) -> tuple[str, int]:
    """Go ``regexp/syntax`` class parsing (Perl flags) from just after '['; gives Python source."""
    n = len(src)
    negate = i < n and src[i] == "^"
    if negate:
        i += 1
    ranges: _Ranges = []
    first = True
    while first or i >= n or src[i] != "]":
        if i >= n:
            raise ValueError("it has an unterminated '[...]' character class")
        first = False
        if src.startswith("[:", i):
            end = src.find(":]", i + 2)
            if end >= 0:
                name = src[i + 2 : end]
                posix = _POSIX_CLASSES.get(name.removeprefix("^"))
                if posix is None:
                    raise ValueError(f"'[{name}:]' is not a POSIX character class")
                ranges += _complement(posix) if name.startswith("^") else posix
                i = end + 2
                continue
        if src[i] == "\\" and i + 1 < n and src[i + 1] in "dDsSwW":
            escaped, i = _escape_ranges(src, i + 1, in_class=True)
            ranges += escaped
            continue
        lo, i = _class_char(src, i)
        hi = lo
        if i + 1 < n and src[i] == "-" and src[i + 1] != "]":
            hi, i = _class_char(src, i + 1)
            if hi < lo:
                raise ValueError(f"the range {chr(lo)!r}-{chr(hi)!r} is backwards")
        ranges.append((lo, hi))
    return _emit_ranges(ranges, negate=negate), i + 1


def _class_char(src: str, i: int) -> tuple[int, int]:
    if src[i] != "\\":
        return ord(src[i]), i + 1
    escaped, nxt = _escape_ranges(src, i + 1, in_class=True)
    if len(escaped) != 1 or escaped[0][0] != escaped[0][1]:
        raise ValueError("a class escape cannot be the end of a range")
    return escaped[0][0], nxt


_REPEAT: Final = re.compile(r"\{(0|[1-9][0-9]*)(?:(,)(0|[1-9][0-9]*)?)?\}")
_MAX_REPEAT: Final = 1000


def _re2_source(go_source: str) -> str:
    """Re-emit the Go regexp that ``_go_regexp`` produces, parsed with Go's rules, for RE2.

    ``compile``'s own constructs (``[^/]``, ``.*``, ``(.*/)?``, ``^``, ``$``) come through
    as they are. So do '|', '{' and '}', which patternmatcher means to escape but does not
    (its escape bitmap loses characters above 63), so in Docker '*.log|tmp' is an
    alternation and 'a?{2}' a repetition: they are parsed with Go's rules here too. A user's
    '[...]' class is parsed with Go's rules (POSIX classes, no nesting) and re-emitted as
    explicit ranges; escapes Go would read as regexp syntax are refused (ValueError). Go's
    MatchString searches, so the result is used with ``search``.
    """
    atoms: list[str] = []
    i, n = 0, len(go_source)
    can_repeat = False
    just_repeated = False
    while i < n:
        ch = go_source[i]
        repeat = None
        if ch in "*?":
            repeat, i = ch, i + 1
        elif ch == "{" and (found := _REPEAT.match(go_source, i)) is not None:
            low, high = found.group(1, 3)
            if len(low) > 4 or int(low) > _MAX_REPEAT or (high and int(high) > _MAX_REPEAT):
                raise ValueError(f"the repetition {found.group()!r} is too large for Go")
            if high and int(low) > int(high):
                raise ValueError(f"the repetition {found.group()!r} is backwards")
            repeat, i = found.group(), found.end()
        if repeat is not None:
            if not can_repeat:
                raise ValueError(f"'{repeat}' has nothing to repeat in Docker's matcher")
            if just_repeated:
                raise ValueError(f"'{repeat}' repeats a repetition in Docker's matcher")
            if i < n and go_source[i] == "?":
                i += 1
            atoms[-1] = f"(?:{atoms[-1]}){repeat}"
            just_repeated = True
            continue
        just_repeated = False
        can_repeat = True
        if ch == "\\":
            escaped, i = _escape_ranges(go_source, i + 1, in_class=False)
            atoms.append(_emit_ranges(escaped))
            continue
        if ch == "[":
            piece, i = _parse_class(go_source, i + 1)
            atoms.append(piece)
            continue
        if ch == "(":
            close = go_source.index(")", i)
            atoms.append(f"(?:{_re2_source(go_source[i + 1 : close])})")
            i = close + 1
            continue
        if ch == "|":
            atoms.append("|")
            can_repeat = False
        elif ch == "$":
            atoms.append(r"\z")
        elif ch in "^.":
            atoms.append(ch)
        else:
            atoms.append(_literal(ord(ch)))
        i += 1
    return "".join(atoms)


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
    problem = _glob_error(text)
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
    regexp: _Regexp | None

    @classmethod
    def build(cls, text: str, exclusion: bool) -> _Pattern:
        kind, go_source = _go_regexp(text)
        regexp = None
        if kind == _REGEXP:
            try:
                regexp = _re2_compile(_re2_source(go_source))
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
    :meth:`excludes` its ``MatchesOrParentMatches``, so a pattern means here what it means in
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

    def excludes(self, relpath: str, is_dir: bool) -> bool:
        """Whether the member at ``relpath`` (relative to the root) is left out.

        ``is_dir`` does not change the answer: Docker cleans a pattern's trailing '/' away, so
        'cache/' also matches a file named 'cache'. The root itself is never excluded.
        """
        rel = clean(relpath).lstrip("/")
        if rel in ("", ".") or rel == ".." or rel.startswith("../"):
            return False
        return self.matches_clean(rel)

    def matches(self, path: str) -> bool:
        """Docker's ``MatchesOrParentMatches`` for ``path`` once Go-cleaned, the root included.

        Unlike :meth:`excludes` there is no guard: this is the matcher as moby tests it.
        """
        return self.matches_clean(clean(path).lstrip("/"))

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
        text = _go_text(path)
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
