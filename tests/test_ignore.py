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

from kegpackd.archive.gopath import clean
from kegpackd.archive.ignore import _EXACT, _PREFIX, _REGEXP, _SUFFIX, ExcludeRules, _go_regexp
from kegpackd.errors import InvalidValueError

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
    assert rules.matches(path) is expected
    # excludes() is the same matcher, except that it never drops the root: moby's '**'
    # matches '/' (a suffix match on ""), but the mount's root must always be written.
    assert rules.excludes(path, is_dir=False) is (expected and not is_root(path))


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI)
def test_moby_multi_pattern_matches(patterns: list[str], path: str, expected: bool) -> None:
    rules = ExcludeRules.parse(patterns, SRC)
    assert rules.matches(path) is expected
    assert rules.excludes(path, is_dir=False) is expected


@pytest.mark.parametrize(("pattern", "path", "expected", "bad_pattern"), FILEPATH_MATCH)
def test_moby_filepath_match(pattern: str, path: str, expected: bool, bad_pattern: bool) -> None:
    """moby runs these through the deprecated Matches (one parent at the pattern's depth);
    MatchesOrParentMatches, which Docker's builder uses and kegpack ports, agrees on all."""
    if bad_pattern:
        with pytest.raises(InvalidValueError):
            ExcludeRules.parse([pattern], SRC)
        return
    assert ExcludeRules.parse([pattern], SRC).matches(path) is expected


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
    assert ExcludeRules.parse(patterns, SRC).matches(path) is expected


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
