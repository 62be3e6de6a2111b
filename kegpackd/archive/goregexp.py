"""Go's glob and regexp syntax, for Docker's exclude patterns: RE2 source from the Go regexp
that patternmatcher compiles a pattern to, parsed with Go's rules, and ``filepath.Match``'s
syntax check.

Apart from :mod:`kegpackd.archive.ignore` (what a rule set means: Docker's cleaning, the match
kinds, parents, the last pattern wins), since this changes with Go's regexp syntax instead.
"""

from __future__ import annotations

import re
from typing import Final, Protocol, cast

import re2

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

REGEXP_MEMORY: Final = 64 * 1024
"""RE2's ``max_mem`` per regexp (program and DFA cache): a glob's DFA has few states, and a
pattern whose DFA would outgrow it is matched by RE2's NFA, still in linear time."""


class Regexp(Protocol):
    """What this module uses of a compiled ``re2`` regexp (the package ships no types)."""

    @property
    def programsize(self) -> int: ...

    def search(self, text: bytes) -> object | None: ...


def re2_compile(source: str) -> Regexp:
    """RE2 with Go's defaults for a Perl-syntax regexp, no captures and a small memory cap."""
    options = re2.Options()
    options.max_mem = REGEXP_MEMORY
    options.never_capture = True
    options.log_errors = False
    return cast(Regexp, re2.compile(source, options))


def go_text(path: str) -> bytes:
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


def glob_error(pattern: str) -> str | None:
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


def re2_source(go_source: str) -> str:
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
            atoms.append(f"(?:{re2_source(go_source[i + 1 : close])})")
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
