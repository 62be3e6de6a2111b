"""The status page (``GET /``): what ``/v1/jobs`` lists, as one plain HTML page.

Read-only and self-contained: no script, no font or style from anywhere but the page
itself, a table per section, so it works with JavaScript off and in a text browser. It
refreshes itself with ``<meta http-equiv="refresh">``. Every value from a job (container
names, errors, image references, even the journal's numbers) is outside text: it is cut,
its control characters are escaped (a bidi override must not reorder a row) and it is
HTML-escaped before it reaches the page. The Content-Security-Policy allows only the
page's own style block, by hash, so even a value that slipped through could run nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kegpackd.shown import MESSAGE_LIMIT, VALUE_LIMIT, cut, one_line

Job = Mapping[str, Any]

REFRESH_SECONDS = 5
# How many finished jobs the page lists (the API keeps up to 200 of each run).
RECENT = 50
# How many images per container the "over time" section lists.
IMAGES_PER_CONTAINER = 20
IN_FLIGHT = ("running", "queued")
# Outcomes that get a colour; anything else (a journal line from elsewhere) is plain.
OUTCOME_CLASSES = frozenset(
    {"succeeded", "unchanged", "failed", "cancelled", "skipped", "dropped", "running", "queued"}
)

STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}td.n{text-align:right;white-space:nowrap}"
    "td.e{max-width:40em;overflow-wrap:anywhere}"
    ".succeeded,.unchanged{color:#176f2c}.failed,.cancelled{color:#b00020;font-weight:bold}"
    ".running,.queued{color:#0b57d0}.muted{color:#666}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# Nothing but the page's own style block: no script, image, font, frame, form or base.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Snapshot:
    """What the page shows: the jobs as ``/v1/jobs`` lists them (newest first) and health."""

    jobs: Sequence[Job]
    now: float
    ready: bool = True
    not_ready_reason: str = ""
    version: str = ""


def render(snapshot: Snapshot) -> str:
    """The whole page, as one string of HTML."""
    jobs = [job for job in snapshot.jobs if isinstance(job, Mapping)]
    flying = [job for job in jobs if job.get("state") in IN_FLIGHT]
    done = [job for job in jobs if job.get("state") not in IN_FLIGHT]
    done = sorted(done, key=lambda job: _number(job, "finished") or 0.0, reverse=True)[:RECENT]
    return "".join(
        (
            _head(),
            "<body><h1>kegpackd</h1>",
            _summary(snapshot),
            "<h2>In flight</h2>",
            _in_flight(flying, snapshot.now),
            "<h2>Recent jobs</h2>",
            _recent(done),
            "<h2>Packaged images by container</h2>",
            _by_container(jobs),
            "</body></html>\n",
        )
    )


def _head() -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>kegpackd status</title><style>{STYLE}</style></head>"
    )


def _summary(snapshot: Snapshot) -> str:
    health = "ready" if snapshot.ready else f"not ready: {snapshot.not_ready_reason}"
    version = f"kegpackd {snapshot.version} · " if snapshot.version else ""
    return (
        f'<p class="muted">{_e(version)}{_e(health)} · as of {_e(_time(snapshot.now))} · '
        f"this page refreshes every {REFRESH_SECONDS} s</p>"
    )


def _in_flight(jobs: Sequence[Job], now: float) -> str:
    if not jobs:
        return "<p>No job is running or queued.</p>"
    rows = [
        [
            _cell(_container(job)),
            _cell(_text(job, "trigger")),
            _state_cell(job),
            _cell(_text(job, "stage") or "—"),
            _cell(_time(_number(job, "started")), "n"),
            _cell(_size(_number(job, "bytes")), "n"),
            _cell(_rate(job, now), "n"),
        ]
        for job in jobs
    ]
    heads = ("Container", "Trigger", "State", "Stage", "Started", "Streamed", "Rate")
    return _table(heads, rows)


def _recent(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "<p>No job has finished yet.</p>"
    rows = [
        [
            _cell(_time(_number(job, "finished")), "n"),
            _cell(_container(job)),
            _cell(_text(job, "trigger")),
            _state_cell(job),
            _cell(_duration(job), "n"),
            _cell(_size(_number(job, "layer_bytes") or _number(job, "bytes") or None), "n"),
            _cell(_text(job, "layer") or "—"),
            _outcome_detail(job),
        ]
        for job in jobs
    ]
    heads = ("Finished (UTC)", "Container", "Trigger", "Outcome", "Duration", "Size", "Layer")
    return _table((*heads, "Images or error"), rows)


def _by_container(jobs: Sequence[Job]) -> str:
    """Per container, the images its successful jobs made, newest first."""
    images: dict[str, list[tuple[float, str]]] = {}
    for job in jobs:
        if job.get("state") != "succeeded":
            continue
        made = images.setdefault(_container(job), [])
        made += [(_number(job, "finished") or 0.0, ref) for ref in _texts(job, "images")]
    if not any(images.values()):
        return "<p>No image has been packaged yet.</p>"
    rows = []
    for container, made in sorted(images.items()):
        lines = sorted(made, reverse=True)[:IMAGES_PER_CONTAINER]
        listing = "<br>".join(f"{_e(_time(when))} &nbsp; {_e(ref)}" for when, ref in lines)
        rows.append([_cell(container), _cell(str(len(made)), "n"), f"<td>{listing}</td>"])
    return _table(("Container", "Images", "Packaged (UTC), newest first"), rows)


def _outcome_detail(job: Job) -> str:
    error = _text(job, "error", MESSAGE_LIMIT)
    if error:
        return f'<td class="e failed">{_e(error)}</td>'
    images = _texts(job, "images")
    return f'<td class="e">{"<br>".join(_e(ref) for ref in images) or "—"}</td>'


def _table(heads: Iterable[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(name)}</th>" for name in heads)
    body = "".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(text: str, kind: str = "") -> str:
    attribute = f' class="{kind}"' if kind else ""
    return f"<td{attribute}>{_e(text)}</td>"


def _state_cell(job: Job) -> str:
    state = _text(job, "state")
    kind = state if state in OUTCOME_CLASSES else ""
    return _cell(state + (" (before restart)" if job.get("restored") is True else ""), kind)


def _e(text: str) -> str:
    """Outside text for HTML: control characters escaped, then every markup character."""
    return html.escape(one_line(text), quote=True)


def _text(job: Job, key: str, limit: int = VALUE_LIMIT) -> str:
    value = job.get(key)
    return cut(value, limit) if isinstance(value, str) else ""


def _texts(job: Job, key: str) -> list[str]:
    values = job.get(key)
    if not isinstance(values, list):
        return []
    return [cut(value, VALUE_LIMIT) for value in values if isinstance(value, str)]


def _number(job: Job, key: str) -> float | None:
    value = job.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _container(job: Job) -> str:
    return _text(job, "name") or _text(job, "container")[:12] or "?"


def _time(stamp: float | None) -> str:
    if not stamp:
        return "—"
    try:
        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "—"


def _duration(job: Job) -> str:
    started, finished = _number(job, "started"), _number(job, "finished")
    if not started or not finished or finished < started:
        return "—"
    return f"{finished - started:.1f} s"


def _rate(job: Job, now: float) -> str:
    started, count = _number(job, "started"), _number(job, "bytes")
    if not started or not count or now <= started:
        return "—"
    return f"{_size(count / (now - started))}/s"


def _size(count: float | None) -> str:
    if count is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
