"""Scan and filter a tar stream on its way from one container to another.

The bytes of ``GET /containers/{src}/archive`` flow through a :class:`TarScanner`
before they reach ``PUT /containers/{helper}/archive``. The scanner checks that
every member stays inside the archived path, counts what it sees and, given
:class:`ExcludeRules`, drops members, all in memory that does not grow with the
archive: member data is never held, only header groups (bounded) and the tail of
one input chunk.

Framing follows Go's ``archive/tar`` reader, because the engine that extracts the
stream is written with it: what this module calls a member is what the engine
will create.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from kegpackd.errors import InvalidValueError, TarFormatError

BLOCK: Final = 512
DEFAULT_MAX_HEADER_BYTES: Final = 1 << 20

_ZERO_BLOCK: Final = bytes(BLOCK)
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))
_OCTAL: Final = re.compile(rb"[0-7]+")
_DECIMAL: Final = re.compile(rb"[+-]?[0-9]+")
_INT64_MAX: Final = (1 << 63) - 1

_USTAR_MAGIC: Final = b"ustar\x00"
_GNU_MAGIC: Final = b"ustar "
_GNU_VERSION: Final = b" \x00"
_STAR_TRAILER: Final = b"tar\x00"

_REGA: Final = 0
_LINK: Final = ord("1")
_DIR: Final = ord("5")
_SPARSE: Final = ord("S")
_PAX_GLOBAL: Final = ord("g")
_LONG_NAME: Final = ord("L")
_LONG_LINK: Final = ord("K")
_META_TYPES: Final = frozenset(b"xXgLK")
_HEADER_ONLY_TYPES: Final = frozenset(b"123456")

_S_HEADER, _S_META, _S_SPARSE, _S_DATA, _S_END, _S_TRAILER = range(6)


# --- Go's path rules ----------------------------------------------------------------------------


def _clean(path: str) -> str:
    """Go's ``path.Clean``: the names and patterns we compare must be spelled as Docker spells them.

    Unlike ``posixpath.normpath`` it folds a leading ``//`` too.
    """
    if not path:
        return "."
    rooted = path[0] == "/"
    parts: list[str] = []
    for part in path.split("/"):
        if part in {"", "."}:
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def _escapes_root(path: str) -> bool:
    """Whether a '..' climbs above the start, judged before cleaning hides it ('/../x' -> '/x')."""
    depth = 0
    for part in path.split("/"):
        if part in {"", "."}:
            continue
        if part == "..":
            if depth == 0:
                return True
            depth -= 1
        else:
            depth += 1
    return False


# --- .dockerignore patterns ---------------------------------------------------------------------

# Go's strings.TrimSpace (unicode.IsSpace), which is not quite str.strip()'s set.
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
_PARENT_CACHE_LIMIT: Final = 4096


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


def _emit_ranges(ranges: _Ranges, *, negate: bool = False) -> str:
    if not negate and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return re.escape(chr(ranges[0][0]))
    items = [
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in ranges
    ]
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


def _python_regexp(go_source: str) -> re.Pattern[str]:
    """Translate the Go regexp that ``_go_regexp`` produces into an equivalent Python one.

    ``compile``'s own constructs (``[^/]``, ``.*``, ``(.*/)?``, ``^``, ``$``) come through
    as they are. So do '|', '{' and '}', which patternmatcher means to escape but does not
    (its escape bitmap loses characters above 63), so in Docker '*.log|tmp' is an
    alternation and 'a?{2}' a repetition: they are parsed with Go's rules here too. A user's
    '[...]' class is parsed with Go's rules (POSIX classes, no nesting) and re-emitted as
    explicit ranges. Go's MatchString searches, so the result is used with ``search``.
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
            inner = _python_regexp(go_source[i + 1 : close]).pattern
            atoms.append(f"(?:{inner})")
            i = close + 1
            continue
        if ch == "|":
            atoms.append("|")
            can_repeat = False
        elif ch == "$":
            atoms.append(r"\Z")
        elif ch in "^.":
            atoms.append(ch)
        else:
            atoms.append(re.escape(ch))
        i += 1
    return re.compile("".join(atoms))


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
        if _escapes_root(text):
            raise ValueError("the pattern climbs above the mount's root")
        text = _clean(text)
        if len(text) > 1 and text[0] == "/":
            text = text[1:]
    if invert:
        text = "!" + text
    text = text.strip(_GO_SPACE)
    if not text:
        return None
    text = _clean(text)
    exclusion = text[0] == "!"
    if exclusion:
        if len(text) == 1:
            raise ValueError("'!' must be followed by a pattern")
        text = text[1:]
    if _escapes_root(text):
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
    regexp: re.Pattern[str] | None

    @classmethod
    def build(cls, text: str, exclusion: bool) -> _Pattern:
        kind, go_source = _go_regexp(text)
        regexp = _python_regexp(go_source) if kind == _REGEXP else None
        literal = {_EXACT: text, _PREFIX: text[:-2], _SUFFIX: text[2:]}.get(kind, "")
        return cls(text, exclusion, kind, literal, regexp)

    def match(self, path: str) -> bool:
        kind = self.kind
        if kind == _EXACT:
            return path == self.literal
        if kind == _PREFIX:
            return path.startswith(self.literal)
        if kind == _SUFFIX:
            suffix = self.literal
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.search(path) is not None


class ExcludeRules:
    """Exclude patterns in .dockerignore syntax, relative to a mount's root.

    Parsing follows Docker's ``ignorefile.ReadAll`` then ``patternmatcher.New``, and
    :meth:`excludes` its ``MatchesOrParentMatches``, so a pattern means here what it means in
    a ``.dockerignore``, quirks included ('*.log|tmp' is a regexp alternation there, so it is
    here). Stricter than Docker in two ways, both raising InvalidValueError: patterns whose
    '..' climb above the root (Docker silently matches nothing, or for '/../x' cleans the
    climb away) and regexp escapes like ``\\d`` that Docker's matcher happens to honour.
    Patterns Docker fails on only once it matches (``[Local-Only]``) fail here at parse.
    """

    __slots__ = ("_cache", "_none", "_patterns", "source")

    def __init__(self) -> None:
        self.source = ""
        self._patterns: tuple[_Pattern, ...] = ()
        self._none: tuple[bool, ...] = ()
        self._cache: dict[str, tuple[bool, ...]] = {}

    @classmethod
    def parse(cls, patterns: Iterable[str], source: str) -> ExcludeRules:
        """Read patterns (label values or a file's lines); ``source`` names them in errors."""
        built: list[_Pattern] = []
        for index, raw in enumerate(patterns):
            line = raw.removeprefix(_BOM) if index == 0 else raw
            try:
                pattern = _docker_pattern(line)
                if pattern is not None:
                    built.append(_Pattern.build(*pattern))
            except (ValueError, re.error) as exc:
                raise InvalidValueError(source, raw, str(exc)) from None
        rules = cls()
        rules.source = source
        rules._patterns = tuple(built)
        rules._none = (False,) * len(built)
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
        rel = _clean(relpath).lstrip("/")
        if rel in ("", ".") or rel == ".." or rel.startswith("../"):
            return False
        return self._excluded(rel)

    def _excluded(self, rel: str) -> bool:
        """``MatchesOrParentMatches`` for an already clean, relative, non-root path."""
        patterns = self._patterns
        if not patterns:
            return False
        parent = rel.rpartition("/")[0]
        above = self._dir_hits(parent) if parent else self._none
        matched = False
        for pattern, hit_above in zip(patterns, above, strict=True):
            if pattern.exclusion != matched:
                continue
            if hit_above or pattern.match(rel):
                matched = not pattern.exclusion
        return matched

    def _dir_hits(self, directory: str) -> tuple[bool, ...]:
        """Per pattern: does it match ``directory`` or one of its parents (cached, bounded)."""
        cached = self._cache.get(directory)
        if cached is not None:
            return cached
        chain = [directory]
        base = self._none
        while True:
            up = chain[-1].rpartition("/")[0]
            if not up:
                break
            hit = self._cache.get(up)
            if hit is not None:
                base = hit
                break
            chain.append(up)
        if len(self._cache) + len(chain) > _PARENT_CACHE_LIMIT:
            self._cache.clear()
        for path in reversed(chain):
            base = tuple(
                seen or p.match(path) for seen, p in zip(base, self._patterns, strict=True)
            )
            self._cache[path] = base
        return base

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def __repr__(self) -> str:
        return f"ExcludeRules({list(self.patterns)!r}, source={self.source!r})"


# --- tar headers --------------------------------------------------------------------------------


def _cstr(field: bytes) -> bytes:
    """Go's ``parseString``: a field ends at its first NUL."""
    end = field.find(0)
    return field if end < 0 else field[:end]


def _octal(field: bytes) -> int | None:
    """Go's ``parseOctal``: NUL/space padding on either side; None when it is not a number."""
    digits = _cstr(field.strip(b" \x00"))
    if not digits:
        return 0
    if _OCTAL.fullmatch(digits) is None:
        return None
    return int(digits, 8)


def _numeric(field: bytes) -> int | None:
    """Go's ``parseNumeric``: octal, or GNU base-256 when the top bit is set; None if invalid."""
    if field and field[0] & 0x80:
        if field[0] & 0x40:
            inverted = bytes(0xFF ^ b for b in field)
            value = -int.from_bytes(bytes([inverted[0] & 0x7F]) + inverted[1:], "big") - 1
            return value if value >= -_INT64_MAX - 1 else None
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value if value <= _INT64_MAX else None
    return _octal(field)


def _checksum_ok(block: bytes) -> bool:
    """Go's check: the stored sum equals the unsigned or the signed byte sum (field as spaces)."""
    field = block[148:156]
    stored = _octal(field)
    if stored is None:
        return False
    unsigned = sum(block) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return True
    high = (BLOCK - len(block.translate(None, _HIGH_BYTES))) - (
        8 - len(field.translate(None, _HIGH_BYTES))
    )
    return stored == unsigned - 0x100 * high


_PAX_NO_NUL_VALUES: Final = frozenset((b"path", b"linkpath", b"uname", b"gname"))
_PAX_SPARSE_OFFSET: Final = b"GNU.sparse.offset"
_PAX_SPARSE_NUMBYTES: Final = b"GNU.sparse.numbytes"
_PAX_SPARSE_MAP: Final = b"GNU.sparse.map"
_PAX_SPARSE_NAME: Final = b"GNU.sparse.name"
_PAX_SPARSE_VERSIONS: Final = frozenset(((b"0", b"0"), (b"0", b"1"), (b"1", b"0")))


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Go's ``parsePAX``: the records, or ValueError where Go reports ErrHeader."""
    records: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        space = data.find(b" ", pos)
        length_text = data[pos:space] if space >= 0 else b""
        if _DECIMAL.fullmatch(length_text) is None:
            raise ValueError("bad record length")
        length = int(length_text)
        end = pos + length
        if length < 5 or length > n - pos or end <= space + 1 or data[end - 1] != 0x0A:
            raise ValueError("bad record framing")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key or b"\x00" in (value if key in _PAX_NO_NUL_VALUES else key):
            raise ValueError("bad record")
        if key in (_PAX_SPARSE_OFFSET, _PAX_SPARSE_NUMBYTES):
            expected = _PAX_SPARSE_OFFSET if len(sparse) % 2 == 0 else _PAX_SPARSE_NUMBYTES
            if key != expected or b"," in value:
                raise ValueError("bad GNU sparse record")
            sparse.append(value)
        else:
            records[key] = value
        pos = end
    if sparse:
        records[_PAX_SPARSE_MAP] = b",".join(sparse)
    return records


def _pax_sparse_name(records: dict[bytes, bytes]) -> bytes:
    """Go's ``readGNUSparsePAXHeaders``: the GNU.sparse.name that renames the member, or b""."""
    major = records.get(b"GNU.sparse.major", b"")
    minor = records.get(b"GNU.sparse.minor", b"")
    if major or minor:
        sparse = (major, minor) in _PAX_SPARSE_VERSIONS
    else:
        sparse = bool(records.get(_PAX_SPARSE_MAP))
    return records.get(_PAX_SPARSE_NAME, b"") if sparse else b""


_OPAQUE_WHITEOUT: Final = ".wh..wh..opq"


def _set_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def _pax_records(records: dict[bytes, bytes]) -> bytes:
    out = []
    for key, value in records.items():
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out.append(str(length).encode() + body)
    return b"".join(out)


def _pax_header(records: dict[bytes, bytes]) -> bytes:
    """A PAX extended header ('x') carrying ``records``, with its padded payload."""
    payload = _pax_records(records)
    header = bytearray(BLOCK)
    header[0:100] = b"././@PaxHeader".ljust(100, b"\0")
    for start, width in ((100, 8), (108, 8), (116, 8), (136, 12)):
        header[start : start + width] = b"0" * (width - 1) + b"\0"
    header[124:136] = b"%011o\0" % len(payload)
    header[156] = ord("x")
    header[257:265] = _USTAR_MAGIC + b"00"
    _set_checksum(header)
    return bytes(header) + payload + bytes(_padded(len(payload)) - len(payload))


def _padded(size: int) -> int:
    return (size + BLOCK - 1) & ~(BLOCK - 1)


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


@dataclass(slots=True)
class _Member:
    """What the scanner decided about the member whose header group it is reading."""

    name: str
    rel: str
    keep: bool
    is_dir: bool
    data_size: int
    typeflag: int = _REGA
    link_rel: str | None = None
    pax: dict[bytes, bytes] | None = None


class TarScanner:
    """Feed it chunks of a tar stream; it returns the bytes to pass on.

    Every member's name (after PAX ``path``, GNU long names, ``GNU.sparse.name`` and the ustar
    prefix, resolved the way Go's reader does) must clean to ``root`` or lie below ``root/``;
    so must hard-link targets, and so must every other name or link target that the member's
    header group (or a PAX global header) carries, which another reader could pick instead.
    Symlink targets are content and are not checked; PAX global headers are passed on as they
    are (Go's reader hands them back apart and the engine ignores them). Anything else
    malformed, and input that ends before the two zero blocks of the end-of-archive
    marker, raise TarFormatError; once raised the scanner keeps raising it.

    With ``exclude``, a member whose path relative to ``root`` is excluded is dropped with
    its whole header group, data and padding. Two consequences are handled here:

    * A hard link whose target is excluded is dropped too (and counted as excluded): the
      engine would fail to create a link to a file that is not there, and the data cannot
      be recovered from a stream that has already dropped it.
    * When the rules have '!' exceptions, an excluded directory is held back (header only,
      within ``max_header_bytes`` in all) instead of dropped, and written after all if a
      member below it is kept: the re-included member then keeps its directory's owner and
      mode, as BuildKit keeps parents of re-included files. It is dropped once the stream
      leaves it; if the held-back headers outgrow the limit the outermost is dropped, and the
      engine creates that directory with default ownership.

    Zero bytes after the end-of-archive marker are passed on; anything else there is an error.
    When nothing is excluded the output is byte-for-byte the input.

    With ``layer_prefix`` the output is instead a run of image-layer entries, ready to be
    concatenated with others: every kept member is renamed ``layer_prefix + name`` (hard-link
    targets too), a directory root is followed by its opaque whiteout (so the layer hides what
    lower layers hold below it, as the mount does), and the end-of-archive marker, any zeros
    after it and PAX global headers are dropped.
    """

    def __init__(
        self,
        root: str,
        exclude: ExcludeRules | None = None,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        layer_prefix: str | None = None,
    ) -> None:
        clean_root = _clean(root)
        if clean_root in (".", "..") or clean_root.startswith(("/", "../")):
            raise InvalidValueError(
                "tar stream root", root, "must be a relative name inside the archive"
            )
        if max_header_bytes < 3 * BLOCK:
            raise InvalidValueError(
                "tar header limit", max_header_bytes, f"must be at least {3 * BLOCK} bytes"
            )
        self.root = clean_root
        self._root_prefix = clean_root + "/"
        self._rules = exclude if exclude else None
        self._hold_dirs = self._rules is not None and self._rules.has_exceptions
        self._max_header_bytes = max_header_bytes
        if layer_prefix and not layer_prefix.endswith("/"):
            raise InvalidValueError("layer prefix", layer_prefix, "must end with '/'")
        self._layer_prefix = layer_prefix

        self.entries = 0
        self.excluded = 0
        self.content_bytes = 0
        self.input_bytes = 0
        self.output_bytes = 0

        self._state = _S_HEADER
        self._need = BLOCK
        self._carry = bytearray()
        self._remaining = 0
        self._keep = True
        self._member: _Member | None = None

        self._saved: list[bytes] = []
        self._group_start = -1
        self._group_end = -1
        self._group_size = 0
        self._pax: dict[bytes, bytes] | None = None
        self._long_name = b""
        self._long_link = b""
        self._alt_names: list[bytes] = []
        self._alt_links: list[bytes] = []
        self._meta_type = 0
        self._meta_size = 0

        self._held: list[tuple[str, bytes]] = []
        self._held_bytes = 0

        self._error: TarFormatError | None = None
        self._finished = False

        self._view = memoryview(b"")
        self._base = 0
        self._out: list[bytes | memoryview] = []
        self._run_start = -1
        self._run_end = -1

    @property
    def buffered_bytes(self) -> int:
        """Bytes held between calls: a partial unit, an unfinished header group, held-back dirs."""
        return len(self._carry) + sum(map(len, self._saved)) + self._held_bytes

    def feed(self, data: bytes) -> bytes:
        """Scan the next chunk; returns the bytes to pass on now (possibly ``b""``)."""
        self._check_usable()
        view = memoryview(data).cast("B")
        size = view.nbytes
        if not size:
            return b""
        self._view = view
        self._base = self.input_bytes
        self.input_bytes += size
        self._out = []
        self._run_start = self._run_end = -1
        try:
            self._scan(view, size)
            self._save_group_tail()
            if self._run_start == 0 and self._run_end == size and not self._out:
                result = data if type(data) is bytes else view.tobytes()
            else:
                self._flush_run()
                result = b"".join(self._out)
        except TarFormatError as exc:
            self._error = exc
            raise
        finally:
            self._out = []
            self._view = memoryview(b"")
            view.release()
        self.output_bytes += len(result)
        return result

    def finish(self) -> bytes:
        """Declare the end of input; raises TarFormatError unless the archive ended properly."""
        self._check_usable()
        self._finished = True
        state = self._state
        if state == _S_TRAILER:
            return b""
        if state == _S_END:
            problem = "ends after a single zero block; the end-of-archive marker needs two"
        elif state == _S_DATA and self._member is not None:
            problem = (
                f"ends inside the data of entry {self._member.name!r} "
                f"({self._remaining} more bytes expected)"
            )
        elif self._carry or self._group_size:
            problem = "ends inside a header"
        else:
            problem = "ends without the end-of-archive marker (two zero blocks)"
        self._error = TarFormatError(f"tar stream of {self.root!r} {problem}.")
        raise self._error

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise RuntimeError("TarScanner used after finish()")

    def _fail(self, problem: str, offset: int) -> TarFormatError:
        return TarFormatError(f"tar stream of {self.root!r}: {problem} (at byte {offset}).")

    # --- the scan loop ---------------------------------------------------------------------

    def _scan(self, view: memoryview, size: int) -> None:
        pos = 0
        carry = self._carry
        while pos < size:
            state = self._state
            if state == _S_DATA:
                take = min(self._remaining, size - pos)
                if self._keep:
                    self._pass(pos, pos + take)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _S_HEADER
                    self._need = BLOCK
                continue
            if state == _S_TRAILER:
                tail = view[pos:size]
                if tail.tobytes().count(0) != size - pos:
                    raise self._fail(
                        "non-zero data after the end-of-archive marker", self._base + pos
                    )
                if self._layer_prefix is None:
                    self._pass(pos, size)
                return
            need = self._need
            if carry:
                take = min(need - len(carry), size - pos)
                carry += view[pos : pos + take]
                pos += take
                if len(carry) < need:
                    return
                unit = bytes(carry)
                carry.clear()
                start = -1
            elif size - pos >= need:
                start = pos
                pos += need
                unit = view[start:pos].tobytes()
            else:
                carry += view[pos:size]
                return
            self._unit(unit, start, pos)

    def _unit(self, unit: bytes, start: int, end: int) -> None:
        """Handle one whole header block or meta-header payload (``start`` < 0: from carry)."""
        state = self._state
        offset = self._base + end - len(unit)
        if state == _S_HEADER:
            self._header(unit, start, end, offset)
        elif state == _S_META:
            self._group_add(unit, start, end)
            self._meta_payload(unit[: self._meta_size], end, offset)
        elif state == _S_SPARSE:
            self._sparse_extension(unit, start, end, offset)
        else:
            if unit != _ZERO_BLOCK:
                raise self._fail(
                    "a lone zero block is followed by data; the end-of-archive marker "
                    "needs two zero blocks",
                    offset,
                )
            if self._layer_prefix is None:
                self._pass_unit(unit, start, end)
            self._state = _S_TRAILER

    def _header(self, block: bytes, start: int, end: int, offset: int) -> None:
        if block == _ZERO_BLOCK:
            if self._group_size:
                raise self._fail(
                    "a PAX or GNU long-name header is not followed by a member", offset
                )
            self._drop_held(len(self._held))
            if self._layer_prefix is None:
                self._pass_unit(block, start, end)
            self._state = _S_END
            return
        if not _checksum_ok(block):
            raise self._fail("header checksum mismatch", offset)
        typeflag = block[156]
        if typeflag in _META_TYPES:
            self._meta_header(block, typeflag, start, end, offset)
            return
        self._group_add(block, start, end)
        self._member = member = self._resolve(block, typeflag, offset)
        if typeflag == _SPARSE and block[482]:
            if block[257:263] != _GNU_MAGIC or block[263:265] != _GNU_VERSION:
                raise self._fail(f"sparse entry {member.name!r} is not in GNU format", offset)
            self._state = _S_SPARSE
            self._need = BLOCK
            return
        self._settle(end)

    def _meta_header(self, block: bytes, typeflag: int, start: int, end: int, offset: int) -> None:
        size = _numeric(block[124:136])
        if size is None or size < 0:
            raise self._fail("invalid size field in a PAX or GNU long-name header", offset)
        if typeflag == _PAX_GLOBAL and self._group_size:
            raise self._fail("a PAX global header interrupts the headers of a member", offset)
        member_block = 0 if typeflag == _PAX_GLOBAL else BLOCK
        if self._group_size + BLOCK + _padded(size) + member_block > self._max_header_bytes:
            raise self._fail(
                f"a PAX or GNU long-name header of {size} bytes exceeds the "
                f"{self._max_header_bytes}-byte limit for one member's headers",
                offset,
            )
        self._group_add(block, start, end)
        self._meta_type = typeflag
        self._meta_size = size
        if size:
            self._state = _S_META
            self._need = _padded(size)
        else:
            self._meta_payload(b"", end, offset)

    def _meta_payload(self, payload: bytes, end: int, offset: int) -> None:
        typeflag = self._meta_type
        self._state = _S_HEADER
        self._need = BLOCK
        if typeflag == _LONG_NAME:
            self._long_name = _cstr(payload)
            self._alt_names.append(self._long_name)
        elif typeflag == _LONG_LINK:
            self._long_link = _cstr(payload)
            self._alt_links.append(self._long_link)
        else:
            try:
                records = _parse_pax(payload)
            except ValueError:
                raise self._fail("malformed PAX extended header", offset) from None
            # Present but empty still counts: Go then keeps the header's name, Python uses "".
            names = [records[key] for key in (b"path", _PAX_SPARSE_NAME) if key in records]
            links = [records[b"linkpath"]] if b"linkpath" in records else []
            if typeflag == _PAX_GLOBAL:
                # Go and the engine ignore a global header; other readers apply its names to
                # later members, so they must not lead outside the root either.
                for name in names + links:
                    self._relative(
                        _decode(name), f"PAX global header name {_decode(name)!r}", offset
                    )
                if self._layer_prefix is None:
                    self._emit_group(end)
                else:
                    self._drop_group()
            else:
                self._pax = records
                self._alt_names += names
                self._alt_links += links

    def _sparse_extension(self, block: bytes, start: int, end: int, offset: int) -> None:
        if self._group_size + BLOCK > self._max_header_bytes:
            raise self._fail(
                f"GNU sparse headers exceed the {self._max_header_bytes}-byte limit", offset
            )
        self._group_add(block, start, end)
        if not block[504]:
            self._settle(end)

    def _resolve(self, block: bytes, typeflag: int, offset: int) -> _Member:
        """Name, link target and data size as Go's reader resolves them; decide keep or drop."""
        name = _cstr(block[0:100])
        magic = block[257:263]
        if magic == _USTAR_MAGIC:
            prefix = _cstr(block[345:476] if block[508:512] == _STAR_TRAILER else block[345:500])
            if prefix:
                name = prefix + b"/" + name
        elif magic == _GNU_MAGIC and block[263:265] == _GNU_VERSION:
            name = self._gnu_prefix(block, name)
        link = _cstr(block[157:257])
        size = _numeric(block[124:136])
        pax = self._pax or {}
        if pax.get(b"path"):
            name = pax[b"path"]
        if pax.get(b"linkpath"):
            link = pax[b"linkpath"]
        if pax.get(b"size"):
            text = pax[b"size"]
            size = int(text) if _DECIMAL.fullmatch(text) else None
            if size is not None and size > _INT64_MAX:
                size = None
        if self._long_name:
            name = self._long_name
        if self._long_link:
            link = self._long_link
        if typeflag == _REGA and name.endswith(b"/"):
            typeflag = _DIR
        name = _pax_sparse_name(pax) or name
        alt_names, alt_links = self._alt_names, self._alt_links
        self._pax = None
        self._long_name = self._long_link = b""
        self._alt_names, self._alt_links = [], []

        shown = _decode(name)
        if size is None or size < 0:
            raise self._fail(f"invalid size for entry {shown!r}", offset)
        rel = self._relative(shown, f"entry {shown!r}", offset)
        # Readers disagree on which of several names in one header group wins (Python's
        # tarfile takes the first PAX path or GNU long name, and GNU.sparse.name always;
        # Go the last, and GNU.sparse.name only for sparse files): every one must stay inside.
        for alt in alt_names:
            if alt != name:
                also = f"entry {shown!r}, also named {_decode(alt)!r},"
                self._relative(_decode(alt), also, offset)
        target_rel = None
        if typeflag == _LINK:
            target = _decode(link)
            target_rel = self._relative(target, f"hard link {shown!r} -> {target!r}", offset)
            for alt in alt_links:
                if alt != link:
                    also = f"hard link {shown!r} -> {target!r}, also to {_decode(alt)!r},"
                    self._relative(_decode(alt), also, offset)
        self.entries += 1

        keep = True
        rules = self._rules
        if rules is not None and rel:
            keep = not rules._excluded(rel)
            if keep and target_rel:
                keep = not rules._excluded(target_rel)
        data_size = 0 if typeflag in _HEADER_ONLY_TYPES else size
        return _Member(shown, rel, keep, typeflag == _DIR, data_size, typeflag, target_rel, pax)

    @staticmethod
    def _gnu_prefix(block: bytes, name: bytes) -> bytes:
        """Go reads old Go-written GNU headers whose atime/ctime hold a ustar prefix; so do we."""
        atime, ctime = block[345:357], block[357:369]
        if (atime[0] and _numeric(atime) is None) or (ctime[0] and _numeric(ctime) is None):
            prefix = _cstr(block[345:500])
            if prefix and prefix.isascii():
                return prefix + b"/" + name
        return name

    def _relative(self, name: str, what: str, offset: int) -> str:
        cleaned = _clean(name)
        if cleaned == self.root:
            return ""
        if cleaned.startswith(self._root_prefix):
            return cleaned[len(self._root_prefix) :]
        raise self._fail(f"{what} lies outside {self.root!r}", offset)

    def _settle(self, end: int) -> None:
        """The member's header group is complete: pass it on, hold it back or drop it."""
        member = self._member
        assert member is not None
        if self._held:
            self._release_held(member.rel, member.keep)
        if member.keep and self._layer_prefix is not None:
            self._emit_bytes(self._layer_group(member, self._take_group(end)))
            if member.is_dir and not member.rel:
                self._emit_bytes(self._opaque_whiteout())
            self.content_bytes += member.data_size
        elif member.keep:
            self._emit_group(end)
            self.content_bytes += member.data_size
        elif member.is_dir and self._hold_dirs:
            group = self._take_group(end)
            if self._layer_prefix is not None:
                group = self._layer_group(member, group)
            self._hold(member.rel, group)
        else:
            self._drop_group()
            self.excluded += 1
        self._keep = member.keep
        self._remaining = _padded(member.data_size)
        self._state = _S_DATA if self._remaining else _S_HEADER
        self._need = BLOCK

    # --- layer entries -----------------------------------------------------------------------

    def _layer_name(self, rel: str, is_dir: bool) -> bytes:
        assert self._layer_prefix is not None
        name = self._layer_prefix + self.root + ("/" + rel if rel else "")
        return (name + "/" if is_dir else name).encode("utf-8", "surrogateescape")

    def _layer_group(self, member: _Member, group: bytes) -> bytes:
        """The member's header group renamed into the layer: one PAX header (when needed) + ustar.

        Long names (GNU 'L'/'K') are dropped, since Go lets them override PAX; the name and link
        go into the ustar fields when they fit, else into PAX ``path``/``linkpath``.
        """
        if member.typeflag == _SPARSE or any(
            key.startswith(b"GNU.sparse.") for key in member.pax or ()
        ):
            raise TarFormatError(
                f"tar stream of {self.root!r}: sparse entry {member.name!r} cannot go in a layer."
            )
        main = bytearray(group[-BLOCK:])
        records = {k: v for k, v in (member.pax or {}).items() if k not in (b"path", b"linkpath")}
        ustar = main[257:263] == _USTAR_MAGIC
        name = self._layer_name(member.rel, member.is_dir)
        if len(name) > 100 or not name.isascii() or not ustar:
            records[b"path"] = name
        main[0:100] = name[:100].ljust(100, b"\0")
        if ustar:
            main[345:500] = bytes(155)
        if member.link_rel is not None:
            link = self._layer_name(member.link_rel, False)
            if len(link) > 100 or not link.isascii() or not ustar:
                records[b"linkpath"] = link
            main[157:257] = link[:100].ljust(100, b"\0")
        _set_checksum(main)
        return (_pax_header(records) if records else b"") + bytes(main)

    def _opaque_whiteout(self) -> bytes:
        name = self._layer_name(_OPAQUE_WHITEOUT, False)
        header = bytearray(BLOCK)
        records: dict[bytes, bytes] = {}
        if len(name) > 100 or not name.isascii():
            records[b"path"] = name
        header[0:100] = name[:100].ljust(100, b"\0")
        for start, width in ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12)):
            header[start : start + width] = b"0" * (width - 1) + b"\0"
        header[156] = ord("0")
        header[257:265] = _USTAR_MAGIC + b"00"
        _set_checksum(header)
        return (_pax_header(records) if records else b"") + bytes(header)

    # --- held-back directories -------------------------------------------------------------

    def _release_held(self, rel: str, keep: bool) -> None:
        held = self._held
        keep_count = len(held)
        while keep_count and not rel.startswith(held[keep_count - 1][0] + "/"):
            keep_count -= 1
        self._drop_held(len(held) - keep_count)
        if keep and held:
            for _, group in held:
                self._emit_bytes(group)
            held.clear()
            self._held_bytes = 0

    def _hold(self, rel: str, group: bytes) -> None:
        self._held.append((rel, group))
        self._held_bytes += len(group)
        while self._held_bytes > self._max_header_bytes:
            self._held_bytes -= len(self._held.pop(0)[1])
            self.excluded += 1

    def _drop_held(self, count: int) -> None:
        for _ in range(count):
            self._held_bytes -= len(self._held.pop()[1])
            self.excluded += 1

    # --- header groups and output ------------------------------------------------------------

    def _group_add(self, unit: bytes, start: int, end: int) -> None:
        if start < 0:
            self._saved.append(unit)
        else:
            if self._group_start < 0:
                self._group_start = start
            self._group_end = end
        self._group_size += len(unit)

    def _save_group_tail(self) -> None:
        """At the end of a chunk, copy the unfinished group's part of it: the chunk is gone next."""
        if self._group_start >= 0:
            self._saved.append(self._view[self._group_start : self._group_end].tobytes())
            self._group_start = self._group_end = -1

    def _emit_group(self, end: int) -> None:
        for piece in self._saved:
            self._emit_bytes(piece)
        if self._group_start >= 0:
            self._pass(self._group_start, end)
        self._drop_group()

    def _take_group(self, end: int) -> bytes:
        pieces = list(self._saved)
        if self._group_start >= 0:
            pieces.append(self._view[self._group_start : end].tobytes())
        self._drop_group()
        return b"".join(pieces)

    def _drop_group(self) -> None:
        self._saved = []
        self._group_start = self._group_end = -1
        self._group_size = 0

    def _pass_unit(self, unit: bytes, start: int, end: int) -> None:
        if start < 0:
            self._emit_bytes(unit)
        else:
            self._pass(start, end)

    def _pass(self, start: int, end: int) -> None:
        """Forward ``view[start:end]``; adjacent ranges merge so kept input leaves as one slice."""
        if self._run_end == start and self._run_start >= 0:
            self._run_end = end
            return
        self._flush_run()
        self._run_start = start
        self._run_end = end

    def _emit_bytes(self, data: bytes) -> None:
        self._flush_run()
        self._out.append(data)

    def _flush_run(self) -> None:
        if self._run_start >= 0:
            self._out.append(self._view[self._run_start : self._run_end])
            self._run_start = self._run_end = -1
