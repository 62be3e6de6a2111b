"""Go's ``path`` rules, shared by the exclude rules and the tar scanner.

Docker cleans both .dockerignore patterns and the tar member names it extracts with Go's
``path.Clean``; comparing them means spelling them the same way.
"""

from __future__ import annotations


def clean(path: str) -> str:
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


def escapes_root(path: str) -> bool:
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
