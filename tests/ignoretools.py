"""Exclude rules asked the way moby's tests and the scanner ask them.

``ExcludeRules.matches_clean`` takes the clean relative path the tar scanner has; moby's
tables spell paths raw ('/', 'dir/file/', '.'), so the tests clean them first, here once.
"""

from __future__ import annotations

from kegpackd.archive.gopath import clean
from kegpackd.archive.ignore import ExcludeRules


def moby_matches(rules: ExcludeRules, path: str) -> bool:
    """Docker's ``MatchesOrParentMatches`` for ``path`` once Go-cleaned, the root included."""
    return rules.matches_clean(clean(path).lstrip("/"))


def excluded(rules: ExcludeRules, path: str) -> bool:
    """Whether the scanner leaves the member at ``path`` out: as moby, but never the root."""
    rel = clean(path).lstrip("/")
    return rel not in ("", ".") and rules.matches_clean(rel)
