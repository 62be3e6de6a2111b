"""Markers: how kegpackd names and labels what it makes, so a sweep can tell whose it is.

One home for the vocabulary that the pipeline writes and the sweep reads: the temporary
commit's label and comment, the final image's comment, the pending tag, the run-key
labels, and the helper containers that versions before 0.2 made.
"""

from __future__ import annotations

import re

from kegpackd.engine.models import ContainerSummary
from kegpackd.labels import SOURCE_ID_LABEL, SOURCE_STARTED_AT_LABEL
from kegpackd.owner import current_token

TEMP_COMMENT = "kegpackd temporary job="
FINAL_COMMENT = "kegpackd job="
PENDING_REPOSITORY = "kegpack-pending"
_TEMP_COMMENT_FORMAT = re.compile(re.escape(TEMP_COMMENT) + r"(\S+)(?: owner=(\S+))?")
_FINAL_COMMENT_FORMAT = re.compile(re.escape(FINAL_COMMENT) + r"(\S+) container=(\S*)")
_PENDING_FORMAT = re.compile(re.escape(PENDING_REPOSITORY) + r"/(\S+):([0-9a-zA-Z-]+\.\d+\.\d+)")
# Helper containers were made by kegpackd before 0.2; the sweep still removes them. The
# name alone is anybody's (a Compose project "kegpack" with a service "helper-x"): a helper
# was only ever created, never started, with this command, from an image marked by its job.
HELPER_PREFIX = "kegpack-helper-"
HELPER_COMMAND = "/kegpackd-helper-is-never-started"


def pending_reference(job_id: str) -> tuple[str, str]:
    """The tag a final image is born with, until its real tags are on.

    The engine may complete a commit whose caller never hears back (the engine or
    kegpackd killed mid-call). Such an image carries only this tag, which names its
    job and maker, so the sweep can tell it from a finished image and remove it.
    """
    return f"{PENDING_REPOSITORY}/{job_id}", current_token().replace("/", ".")


def parse_pending_reference(reference: str) -> tuple[str, str] | None:
    """(job id, owner token) of a pending tag; None for any other reference."""
    match = _PENDING_FORMAT.fullmatch(reference)
    if match is None:
        return None
    return match.group(1), match.group(2).replace(".", "/")


def final_comment(job_id: str, container_name: str) -> str:
    return f"{FINAL_COMMENT}{job_id} container={container_name}"


def parse_final_comment(comment: str) -> str | None:
    """The job id in a final image's comment; None for any other image."""
    match = _FINAL_COMMENT_FORMAT.match(comment)
    return None if match is None else match.group(1)


def final_comment_container(comment: str) -> str | None:
    """The container name in a final image's comment; None for any other image."""
    match = _FINAL_COMMENT_FORMAT.fullmatch(comment)
    return None if match is None else match.group(2)


def helper_job(entry: ContainerSummary) -> str | None:
    """The job of a helper container (an entry of a container listing) that kegpackd made
    before 0.2, judged by what it can see of the container itself; None for any other.

    The caller still checks that the helper's image carries that job's temporary marker.
    """
    if entry.state != "created" or entry.command != HELPER_COMMAND:
        return None
    names = entry.names
    jobs = [n[len(HELPER_PREFIX) :] for n in names if n.startswith(HELPER_PREFIX)]
    return jobs[0] if len(jobs) == 1 and len(names) == 1 and jobs[0] else None


def temporary_comment(job_id: str) -> str:
    """The comment that marks a temporary image: its job, and the process that made it."""
    return f"{TEMP_COMMENT}{job_id} owner={current_token()}"


def parse_temporary_comment(comment: str) -> tuple[str, str | None] | None:
    """(job id, owner token or None) of a temporary image's comment; None for any other image."""
    match = _TEMP_COMMENT_FORMAT.fullmatch(comment)
    return None if match is None else (match.group(1), match.group(2))


def run_key_labels(container_id: str, started_at: str) -> list[str]:
    """The labels that tie an image to one run of one container."""
    return [f"{SOURCE_ID_LABEL}={container_id}", f"{SOURCE_STARTED_AT_LABEL}={started_at}"]
