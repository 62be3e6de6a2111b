"""moby's own patternmatcher tests, run against kegpack's .dockerignore matcher.

The tables below are moby/patternmatcher's ``patternmatcher_test.go`` at commit
5a6d8429a19bb6948a372ff19e86fe83599a04b7 (2026-03-24,
https://github.com/moby/patternmatcher/blob/5a6d8429a19bb6948a372ff19e86fe83599a04b7/patternmatcher_test.go),
converted mechanically from the Go literals: 68 single-pattern cases of TestMatches (one of
them POSIX-only), its 4 multi-pattern cases, the 54 cases of matchTests (Go's filepath.Match
table, with its ErrBadPattern errors), the 21 cases of compileTests and the scalar tests
around them. Nothing is skipped or xfailed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kegpackd.archive.gopath import clean
from kegpackd.archive.ignore import _EXACT, _PREFIX, _REGEXP, _SUFFIX, ExcludeRules, _go_regexp
from kegpackd.errors import InvalidValueError
from tests.ignoretools import excluded, moby_matches

SRC = "moby table"

# TestMatches, tests: (pattern, path, pass), checked with MatchesOrParentMatches.
MATCHES: list[tuple[str, str, bool]] = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        True,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    # Appended when runtime.GOOS != "windows":
    ("a\\*b", "a*b", True),
]

# TestMatches, multiPatternTests: several patterns, MatchesOrParentMatches.
MULTI: list[tuple[list[str], str, bool]] = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        False,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
]

# matchTests (from Go's filepath.Match tests), run through Matches: (pattern, path,
# match, whether it is filepath.ErrBadPattern).
FILEPATH_MATCH: list[tuple[str, str, bool, bool]] = [
    ("abc", "abc", True, False),
    ("*", "abc", True, False),
    ("*c", "abc", True, False),
    ("a*", "a", True, False),
    ("a*", "abc", True, False),
    ("a*", "ab/c", True, False),
    ("a*/b", "abc/b", True, False),
    ("a*/b", "a/c/b", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True, False),
    ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
    ("ab[c]", "abc", True, False),
    ("ab[b-d]", "abc", True, False),
    ("ab[e-g]", "abc", False, False),
    ("ab[^c]", "abc", False, False),
    ("ab[^b-d]", "abc", False, False),
    ("ab[^e-g]", "abc", True, False),
    ("a\\*b", "a*b", True, False),
    ("a\\*b", "ab", False, False),
    ("a?b", "a☺b", True, False),
    ("a[^a]b", "a☺b", True, False),
    ("a???b", "a☺b", False, False),
    ("a[^a][^a][^a]b", "a☺b", False, False),
    ("[a-ζ]*", "\u03b1", True, False),
    ("*[a-ζ]", "A", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    ("[\\]a]", "]", True, False),
    ("[\\-]", "-", True, False),
    ("[x\\-]", "x", True, False),
    ("[x\\-]", "-", True, False),
    ("[x\\-]", "z", False, False),
    ("[\\-x]", "x", True, False),
    ("[\\-x]", "-", True, False),
    ("[\\-x]", "a", False, False),
    ("[]a]", "]", False, True),
    ("[-]", "-", False, True),
    ("[x-]", "x", False, True),
    ("[x-]", "-", False, True),
    ("[x-]", "z", False, True),
    ("[-x]", "x", False, True),
    ("[-x]", "-", False, True),
    ("[-x]", "a", False, True),
    ("\\", "a", False, True),
    ("[a-b-c]", "a", False, True),
    ("[", "a", False, True),
    ("[^", "a", False, True),
    ("[^bc", "a", False, True),
    ("a[", "a", False, True),
    ("a[", "ab", False, True),
    ("*x", "xxx", True, False),
]

# compileTests: (pattern, matchType, compiled regexp, for regexpMatch only).
COMPILE: list[tuple[str, str, str]] = [
    ("*", "regexpMatch", "^[^/]*$"),
    ("file*", "regexpMatch", "^file[^/]*$"),
    ("*file", "regexpMatch", "^[^/]*file$"),
    ("a*/b", "regexpMatch", "^a[^/]*/b$"),
    ("**", "suffixMatch", ""),
    ("**/**", "regexpMatch", "^(.*/)?.*$"),
    ("dir/**", "prefixMatch", ""),
    ("**/dir", "suffixMatch", ""),
    ("**/dir2/*", "regexpMatch", "^(.*/)?dir2/[^/]*$"),
    ("**/dir2/**", "regexpMatch", "^(.*/)?dir2/.*$"),
    ("**file", "suffixMatch", ""),
    ("**/file*txt", "regexpMatch", "^(.*/)?file[^/]*txt$"),
    ("**/**/*.txt", "regexpMatch", "^(.*/)?(.*/)?[^/]*\\.txt$"),
    ("a[b-d]e", "regexpMatch", "^a[b-d]e$"),
    (".*", "regexpMatch", "^\\.[^/]*$"),
    ("abc.def", "exactMatch", ""),
    ("abc?def", "regexpMatch", "^abc[^/]def$"),
    ("**/foo/bar", "suffixMatch", ""),
    ("a(b)c/def", "exactMatch", ""),
    ("a.|)$(}+{bc", "exactMatch", ""),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exactMatch", ""),
]


def is_root(path: str) -> bool:
    return clean(path).lstrip("/") in ("", ".")


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCHES)
def test_moby_matches(pattern: str, path: str, expected: bool) -> None:
    rules = ExcludeRules.parse([pattern], SRC)
    assert moby_matches(rules, path) is expected
    # excluded() is the same matcher, except that it never drops the root: moby's '**'
    # matches '/' (a suffix match on ""), but the mount's root must always be written.
    assert excluded(rules, path) is (expected and not is_root(path))


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI)
def test_moby_multi_pattern_matches(patterns: list[str], path: str, expected: bool) -> None:
    rules = ExcludeRules.parse(patterns, SRC)
    assert moby_matches(rules, path) is expected
    assert excluded(rules, path) is expected


@pytest.mark.parametrize(("pattern", "path", "expected", "bad_pattern"), FILEPATH_MATCH)
def test_moby_filepath_match(pattern: str, path: str, expected: bool, bad_pattern: bool) -> None:
    """moby runs these through the deprecated Matches (one parent at the pattern's depth);
    MatchesOrParentMatches, which Docker's builder uses and kegpack ports, agrees on all."""
    if bad_pattern:
        with pytest.raises(InvalidValueError):
            ExcludeRules.parse([pattern], SRC)
        return
    assert moby_matches(ExcludeRules.parse([pattern], SRC), path) is expected


_KINDS = {
    "exactMatch": _EXACT,
    "prefixMatch": _PREFIX,
    "suffixMatch": _SUFFIX,
    "regexpMatch": _REGEXP,
}


@pytest.mark.parametrize(("pattern", "kind", "regexp"), COMPILE)
def test_moby_compile(pattern: str, kind: str, regexp: str) -> None:
    compiled_kind, source = _go_regexp(clean(pattern))
    assert compiled_kind == _KINDS[kind]
    if kind == "regexpMatch":
        # kegpack writes a repeated '(.*/)?' once: the same language, less backtracking.
        assert source == regexp.replace("(.*/)?(.*/)?", "(.*/)?")


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        (["*"], "fileutils.go", True),  # TestWildcardMatches
        (["*.go"], "fileutils.go", True),  # TestPatternMatches
        (["!fileutils.go", "*.go"], "fileutils.go", True),  # ...PatternMatchesPatternBefore
        (["docs", "!docs/README.md"], "docs/README.md", False),  # ...FolderExclusions
        (["docs/", "!docs/README.md"], "docs/README.md", False),  # ...FolderWithSlashExclusions
        (["docs/*", "!docs/README.md"], "docs/README.md", False),  # ...FolderWildcardExclusions
        (["*.go", "!fileutils.go"], "fileutils.go", False),  # ...PatternMatchesPatternAfter
        (["*.go"], ".", False),  # TestExclusionPatternMatchesWholeDirectory
        ([], "/any/path/there", False),  # TestMatchesWithNoPatterns
    ],
)
def test_moby_scalar_matches(patterns: list[str], path: str, expected: bool) -> None:
    assert moby_matches(ExcludeRules.parse(patterns, SRC), path) is expected


@pytest.mark.parametrize(
    "patterns",
    [
        ["!"],  # TestSingleExclamationError, TestCleanPatternsErrorSingleException
        ["["],  # TestMatchesWithMalformedPatterns
        # TestMatchesOrParentMatchesMalformedPatternDoesNotPanicOnRepeatedCall: moby accepts
        # this in New and fails every match with ErrBadPattern; kegpack refuses it up front.
        ["[Local-Only]/"],
    ],
)
def test_moby_pattern_errors(patterns: list[str]) -> None:
    with pytest.raises(InvalidValueError):
        ExcludeRules.parse(patterns, SRC)


@pytest.mark.parametrize(
    ("patterns", "cleaned", "exceptions"),
    [
        (["docs", "config"], ("docs", "config"), False),  # TestCleanPatterns
        (["docs", "config", ""], ("docs", "config"), False),  # ...StripEmptyPatterns
        (["docs", "!docs/README.md"], ("docs", "!docs/README.md"), True),  # ...ExceptionFlag
        (["docs", "  !docs/README.md"], ("docs", "!docs/README.md"), True),  # ...LeadingSpace
        (["docs", "!docs/README.md  "], ("docs", "!docs/README.md"), True),  # ...TrailingSpace
    ],
)
def test_moby_clean_patterns(
    patterns: list[str], cleaned: tuple[str, ...], exceptions: bool
) -> None:
    rules = ExcludeRules.parse(patterns, SRC)
    assert rules.patterns == cleaned
    assert rules.has_exceptions is exceptions


def parse(*patterns: str) -> ExcludeRules:
    return ExcludeRules.parse(patterns, SRC)


# --- parsing, beyond moby's tables -------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern", ["../x", "/../x", "a/../../b", "!../x", "..", "./../x", "! /../etc", "/ ../a"]
)
def test_pattern_escaping_the_root_raises(pattern: str) -> None:
    """Patterns that climb above the mount are refused, naming the pattern and its source."""
    with pytest.raises(InvalidValueError) as info:
        parse("ok", pattern)
    assert info.value.value == pattern
    assert info.value.source == SRC
    assert repr(pattern) in str(info.value)


@pytest.mark.parametrize(
    "pattern", ["[", "a[", "[^", "[^bc", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "x\\", "!"]
)
def test_invalid_glob_raises(pattern: str) -> None:
    """Patterns Go's filepath.Match rejects are refused, as Docker refuses them."""
    with pytest.raises(InvalidValueError) as info:
        parse(pattern)
    assert info.value.value == pattern


def test_pattern_docker_fails_on_at_match_time_raises_at_parse() -> None:
    """'[Local-Only]' passes Match's check but is a bad regexp range; we refuse it up front."""
    with pytest.raises(InvalidValueError):
        parse("[Local-Only]/")


def test_regexp_only_escapes_are_refused() -> None:
    """Escapes that Docker's matcher reads as regexp syntax are not silently reinterpreted."""
    for pattern in ("a\\pL", "\\x41", "\\b"):
        with pytest.raises(InvalidValueError):
            parse(pattern)


def test_blank_and_comment_lines_are_ignored() -> None:
    """The parser reads a .kegpackignore file's lines as Docker reads .dockerignore."""
    lines = [
        "\ufefftest1",
        "/test2",
        "/a/file/here",
        "",
        "   ",
        "lastfile",
        "# this is a comment",
        "! /inverted/abs/path",
        "  #not-a-comment",
        "dir/\r",
        "/ /",
    ]
    parsed = ExcludeRules.parse(lines, ".kegpackignore in /data")
    assert parsed.patterns == (
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "#not-a-comment",
        "dir",
    )


def test_empty_rules_are_falsy() -> None:
    """Rules with no patterns are false, so callers can skip filtering."""
    assert not ExcludeRules.parse(["", "# nothing"], SRC)
    assert ExcludeRules.parse(["x"], SRC)


# --- ExcludeRules matching beyond moby's tables (those are in tests/test_ignore.py) ---------


def test_unescaped_bar_is_an_alternation_as_in_docker() -> None:
    """patternmatcher fails to escape '|', so '*.log|tmp' is '^[^/]*\\.log' or 'tmp$'."""
    rule_set = parse("*.log|tmp")
    assert excluded(rule_set, "a.logger")
    assert excluded(rule_set, "x/ytmp")
    assert not excluded(rule_set, "b.txt")


def test_braces_repeat_or_stay_literal_as_in_docker() -> None:
    """'{2}' repeats the previous atom; '{js,css}' is not a repetition and stays literal."""
    assert excluded(parse("a?{2}"), "abb")
    assert not excluded(parse("a?{2}"), "ab")
    assert excluded(parse("*.{js,css}"), "a.{js,css}")
    assert not excluded(parse("*.{js,css}"), "a.js")


def test_regexp_classes_behave_as_in_docker() -> None:
    """Go-only syntax Docker lets through (\\d, POSIX classes) means what Go makes of it."""
    assert excluded(parse("file\\d"), "file7")
    assert not excluded(parse("file\\d"), "filed")
    assert excluded(parse("[[:^digit:]]"), "a")
    assert not excluded(parse("[[:^digit:]]"), "7")
    assert excluded(parse("[\\d_]"), "_")
    assert excluded(parse("[\\d-z]"), "-")


@pytest.mark.parametrize("pattern", ["[[:nope:]]", "*{2}", "a?{1001}", "a?{3,2}", "a?|{2}"])
def test_patterns_go_regexp_rejects_raise(pattern: str) -> None:
    """Where Go's regexp would fail Docker's build, parsing fails with the pattern named."""
    with pytest.raises(InvalidValueError) as info:
        parse(pattern)
    assert info.value.value == pattern


def test_many_directories_match_the_same_after_cache_eviction() -> None:
    """The bounded parent-directory cache never changes an answer."""
    patterns = ("d1*", "!d12*/sub/keep")
    paths = [f"d{i}/sub/{name}" for i in range(5000) for name in ("keep", "x")]
    forward = [excluded(parse(*patterns), p) for p in paths]
    shared = parse(*patterns)
    assert forward == [excluded(shared, p) for p in paths]
    assert excluded(shared, "d12/sub/x")
    assert not excluded(shared, "d12/sub/keep")
    assert not excluded(shared, "d2/sub/x")


@settings(max_examples=300, deadline=1000)
@given(st.lists(st.text(max_size=20), max_size=6), st.text(max_size=30))
def test_arbitrary_patterns_parse_or_raise_invalid_value(patterns: list[str], path: str) -> None:
    """Any pattern text gives rules or InvalidValueError, and the rules can always be applied."""
    try:
        parsed = ExcludeRules.parse(patterns, SRC)
    except InvalidValueError:
        return
    assert excluded(parsed, path or "x") in (True, False)
