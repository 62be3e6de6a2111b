"""Triggers: one table of what starts a job, so a new one is a new row.

Each row says which engine event starts it, how the watcher checks at (re)connection that
it would have fired for the container's current run, whether the daemon starts it on its
own (such a job is skipped when its run already has an image), whether ``kegpack.delay``
applies, and whether the ``kegpack.trigger`` label may name it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kegpackd.engine.models import ContainerInfo


@dataclass(frozen=True)
class TriggerKind:
    name: str
    event: str | None
    holds: Callable[[ContainerInfo], bool]
    automatic: bool = True
    delayable: bool = False
    label: bool = True


def has_run(info: ContainerInfo) -> bool:
    return bool(info.started_at) and not info.started_at.startswith("0001-")


def _never(_info: ContainerInfo) -> bool:
    return False


TRIGGERS: Mapping[str, TriggerKind] = {
    kind.name: kind
    for kind in (
        TriggerKind("start", "start", lambda i: i.running, delayable=True),
        TriggerKind(
            "healthy", "health_status: healthy", lambda i: i.running and i.health == "healthy"
        ),
        TriggerKind("stop", "die", lambda i: not (i.running or i.auto_remove) and has_run(i)),
        TriggerKind("manual", None, _never, automatic=False),
        TriggerKind("cli", None, _never, automatic=False, label=False),
        # One service of a Compose project (kegpackd package --project, POST /v1/jobs).
        TriggerKind("project", None, _never, automatic=False, label=False),
    )
}
LABEL_TRIGGERS = tuple(name for name, kind in TRIGGERS.items() if kind.label)
