"""Owner tokens: the sweep must tell a live process's temporary objects from a dead one's."""

from __future__ import annotations

import subprocess

from kegpackd.owner import current_token, is_alive, token_of
from kegpackd.packaging.markers import (
    parse_pending_reference,
    parse_temporary_comment,
    pending_reference,
    temporary_comment,
)


def test_this_process_is_alive() -> None:
    """The token this process writes on its temporary objects names a live process."""
    assert is_alive(current_token())


def test_an_exited_process_is_not_alive() -> None:
    """Once its maker has exited, a token is dead."""
    process = subprocess.Popen(["sleep", "30"])
    token = token_of(process.pid)
    assert token is not None
    assert is_alive(token)
    process.kill()
    process.wait()
    assert not is_alive(token)


def test_a_recycled_pid_is_not_the_maker() -> None:
    """A live pid with another start time is a different process."""
    boot, pid, ticks = current_token().split("/")
    assert not is_alive(f"{boot}/{pid}/{int(ticks) + 1}")


def test_a_token_from_another_boot_counts_as_gone() -> None:
    """A token from another boot or host cannot be checked, and counts as gone."""
    _boot, pid, ticks = current_token().split("/")
    assert not is_alive(f"00000000-0000-0000-0000-000000000000/{pid}/{ticks}")


def test_a_malformed_token_counts_as_gone() -> None:
    """Anything that is not boot/pid/ticks counts as gone."""
    assert not is_alive("not a token")


def test_temporary_comment_round_trips_job_and_owner() -> None:
    """A temporary image's comment gives back its job id and this process's token."""
    assert parse_temporary_comment(temporary_comment("abc123")) == ("abc123", current_token())


def test_comment_without_owner_is_temporary_with_unknown_owner() -> None:
    """The comment format of earlier versions still marks a temporary image."""
    assert parse_temporary_comment("kegpackd temporary job=abc123") == ("abc123", None)


def test_other_comments_are_not_temporary() -> None:
    """A final image's comment (or anyone else's) is not taken for a temporary one."""
    assert parse_temporary_comment("kegpackd job=abc123 container=web") is None


def test_pending_reference_round_trips_job_and_owner() -> None:
    """A pending tag gives back its job id and this process's token."""
    repository, tag = pending_reference("abc123")
    assert parse_pending_reference(f"{repository}:{tag}") == ("abc123", current_token())


def test_other_references_are_not_pending() -> None:
    """A final image's reference is not taken for a pending one."""
    assert parse_pending_reference("kegpack-test/web:v1") is None
