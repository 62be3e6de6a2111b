"""Owner tokens of other processes, and the markers they would have written, for sweep tests.

The sweep decides by the maker's token whether a temporary object is abandoned: these
make one of a process that has exited, or of one that runs, without being that process.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from kegpackd.owner import current_token, token_of
from kegpackd.packaging.markers import PENDING_REPOSITORY, temporary_comment


def dead_token() -> str:
    """The owner token of a process that has exited."""
    process = subprocess.Popen(["sleep", "30"])
    token = token_of(process.pid)
    process.kill()
    process.wait()
    assert token is not None
    return token


@contextlib.contextmanager
def live_token() -> Iterator[str]:
    """The owner token of another process that runs for the block (a second kegpackd, say)."""
    process = subprocess.Popen(["sleep", "30"])
    token = token_of(process.pid)
    assert token is not None
    try:
        yield token
    finally:
        process.kill()
        process.wait()


def comment_of(job: str, owner: str) -> str:
    """A temporary image's comment, as ``owner`` (not this process) would have written it."""
    return temporary_comment(job).replace(current_token(), owner)


def pending_tag(job: str, owner: str) -> str:
    """The pending tag ``owner`` gives the final image of ``job``."""
    return f"{PENDING_REPOSITORY}/{job}:{owner.replace('/', '.')}"
