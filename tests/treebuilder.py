"""Build a directory tree full of awkward entries, and describe trees entry by entry.

The description is the yardstick of fidelity: a packaged image's copy must
describe exactly like the source.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

OLD_MTIME = 946_684_800  # 2000-01-01


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    digest: str
    link: str
    mtime: int


def build_awkward_tree(root: Path) -> None:
    """Every kind of entry the fidelity test promises to carry over."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty-dir").mkdir()
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "deep.txt").write_text("deep\n")
    (root / "zero").write_bytes(b"")
    (root / "multi-mb.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "name with spaces.txt").write_text("spaces\n")
    (root / "new\nline").write_text("newline\n")
    (root / "ünïcødé-名前.txt").write_text("unicode\n")
    long_dir = root / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 90 + ".txt")).write_text("long path\n")
    secret = root / "secret"
    secret.write_text("only owner\n")
    secret.chmod(0o600)
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    setuid = root / "setuid-bin"
    setuid.write_bytes(b"\x7fELF fake")
    setuid.chmod(0o4755)
    sticky = root / "sticky-dir"
    sticky.mkdir()
    sticky.chmod(0o1777)
    owned = root / "owned-by-1000"
    owned.write_text("app\n")
    os.chown(owned, 1000, 1000)
    other = root / "owned-by-4242"
    other.mkdir()
    os.chown(other, 4242, 4343)
    (root / "rel-link").symlink_to("a/b/c/deep.txt")
    (root / "abs-link").symlink_to("/etc/passwd")
    (root / "dangling-link").symlink_to("does/not/exist")
    os.link(root / "run.sh", root / "hard-link-to-run.sh")
    os.mkfifo(root / "fifo")
    old = root / "old-file"
    old.write_text("old\n")
    os.utime(old, (OLD_MTIME, OLD_MTIME))
    os.utime(root / "empty-dir", (OLD_MTIME, OLD_MTIME))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return "other"


def describe_dir(root: Path) -> dict[str, Entry]:
    """Entries under ``root`` (relative names; "." is the root itself)."""
    result: dict[str, Entry] = {}
    paths = [root, *sorted(root.rglob("*"))]
    for path in paths:
        st = path.lstat()
        kind = _kind(st.st_mode)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else ""
        result[str(path.relative_to(root))] = Entry(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == "file" else 0,
            digest=digest,
            link=os.readlink(path) if kind == "symlink" else "",
            mtime=int(st.st_mtime),
        )
    return result


def hard_link_groups(root: Path) -> set[frozenset[str]]:
    """Sets of names that share an inode (more than one name)."""
    by_inode: dict[int, set[str]] = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            by_inode.setdefault(st.st_ino, set()).add(str(path.relative_to(root)))
    return {frozenset(g) for g in by_inode.values() if len(g) > 1}


def describe_tar(tar: tarfile.TarFile, prefix: str) -> tuple[dict[str, Entry], set[frozenset[str]]]:
    """Entries under ``prefix`` as ``describe_dir`` would see them, and hard-link groups."""
    members = {m.name.rstrip("/"): m for m in tar.getmembers()}
    result: dict[str, Entry] = {}
    links: dict[str, set[str]] = {}
    for name, member in members.items():
        if name != prefix and not name.startswith(prefix + "/"):
            continue
        rel = "." if name == prefix else name[len(prefix) + 1 :]
        target = member
        if member.islnk():
            target_name = member.linkname.rstrip("/")
            target = members[target_name]
            key = target_name[len(prefix) + 1 :]
            links.setdefault(key, {key}).add(rel)
        kind = (
            "dir"
            if target.isdir()
            else "file"
            if target.isreg()
            else "symlink"
            if target.issym()
            else "fifo"
            if target.isfifo()
            else "other"
        )
        digest = ""
        if kind == "file":
            handle = tar.extractfile(target)
            assert handle is not None
            digest = hashlib.sha256(handle.read()).hexdigest()
        result[rel] = Entry(
            kind=kind,
            mode=target.mode & 0o7777,
            uid=target.uid,
            gid=target.gid,
            size=target.size if kind == "file" else 0,
            digest=digest,
            link=target.linkname if kind == "symlink" else "",
            mtime=int(target.mtime),
        )
    return result, {frozenset(g) for g in links.values()}
