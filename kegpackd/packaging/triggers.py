"""Triggers: one table of what starts a job, so a new one is a new row.

Each row says which engine event starts it, how the watcher checks at (re)connection that
it would have fired for the container's current run, whether the daemon starts it on its
own (such a job is skipped when its run already has an image), whether ``kegpack.delay``
applies, and whether the ``kegpack.trigger`` label may name it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kegpackd.engine.models import ContainerInfo


class TriggerName(enum.StrEnum):
    """What started a job; a StrEnum, so the job JSON, logs and metrics keep the plain names."""

    START = "start"
    HEALTHY = "healthy"
    STOP = "stop"
    MANUAL = "manual"
    CLI = "cli"
    PROJECT = "project"


@dataclass(frozen=True)
class TriggerKind:
    name: TriggerName
    event: str | None
    holds: Callable[[ContainerInfo], bool]
    automatic: bool = True
    delayable: bool = False
    label: bool = True


def has_run(info: ContainerInfo) -> bool:
    return bool(info.started_at) and not info.started_at.startswith("0001-")


def _never(_info: ContainerInfo) -> bool:
    return False


# Keyed by TriggerName, which hashes and compares as its string: TRIGGERS["start"] works.
TRIGGERS: Mapping[str, TriggerKind] = {
    kind.name: kind
    for kind in (
        TriggerKind(TriggerName.START, "start", lambda i: i.running, delayable=True),
        TriggerKind(
            TriggerName.HEALTHY,
            "health_status: healthy",
            lambda i: i.running and i.health == "healthy",
        ),
        TriggerKind(
            TriggerName.STOP, "die", lambda i: not (i.running or i.auto_remove) and has_run(i)
        ),
        TriggerKind(TriggerName.MANUAL, None, _never, automatic=False),
        TriggerKind(TriggerName.CLI, None, _never, automatic=False, label=False),
        # One service of a Compose project (kegpackd package --project, POST /v1/jobs).
        TriggerKind(TriggerName.PROJECT, None, _never, automatic=False, label=False),
    )
}
LABEL_TRIGGERS = tuple(name for name, kind in TRIGGERS.items() if kind.label)
