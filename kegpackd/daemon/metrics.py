"""Prometheus metrics, on a registry of their own so tests can use a fresh one.

Label values are bounded: outcomes and stages only, never container names.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from kegpackd.packaging.jobs import (
    OUTCOMES,
    SUCCESSES,
    EventKind,
    JobEvent,
    LayerKind,
    MountsLayer,
    Stage,
)

LAYER_RESULTS = tuple(LayerKind)
MOUNT_LAYER_KINDS = tuple(MountsLayer)
NOTIFY_RESULTS = ("sent", "failed", "dropped")
QUIESCED_MODES = ("pause", "stop")
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


class _OldestRunning(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        started = self.metrics.running_since.values()
        age = time.time() - min(started) if started else 0.0
        yield GaugeMetricFamily(
            "kegpack_job_oldest_running_seconds",
            "Age of the oldest running job (0 when none runs); a stuck job shows here.",
            value=age,
        )


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("kegpack_jobs", "Finished jobs by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)
        self.job_duration = Histogram(
            "kegpack_job_duration_seconds",
            "Wall time of finished jobs.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "kegpack_stage_duration_seconds",
            "Wall time of each job stage.",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        for stage in Stage:
            self.stage_duration.labels(stage)
        self.quiesced = Histogram(
            "kegpack_source_quiesced_seconds",
            "How long each source was paused or stopped for its copy, by mode.",
            ["mode"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        for mode in QUIESCED_MODES:
            self.quiesced.labels(mode)
        self.in_progress = Gauge("kegpack_jobs_in_progress", "Jobs running now.", registry=r)
        self.queued = Gauge("kegpack_jobs_queued", "Jobs waiting for a slot.", registry=r)
        self.streamed = Counter(
            "kegpack_streamed_bytes", "Archive bytes read from source containers.", registry=r
        )
        self.layers = Counter(
            "kegpack_layers",
            "Mount layers loaded: new, or reused because the engine had the same bytes.",
            ["result"],
            registry=r,
        )
        for kind in LAYER_RESULTS:
            self.layers.labels(kind)
        self.mount_layers = Counter(
            "kegpack_mount_layers",
            "Incremental packaging: jobs by what they made of the mounts (full, delta, none).",
            ["kind"],
            registry=r,
        )
        self.mount_layer_bytes = Counter(
            "kegpack_mount_layer_bytes",
            "Incremental packaging: bytes of the mounts' layers made, by kind.",
            ["kind"],
            registry=r,
        )
        self.mount_full_bytes = Counter(
            "kegpack_mount_full_bytes",
            "Incremental packaging: bytes a full mounts layer would have had, by the kind made.",
            ["kind"],
            registry=r,
        )
        for mounts_kind in MOUNT_LAYER_KINDS:
            self.mount_layers.labels(mounts_kind)
            self.mount_layer_bytes.labels(mounts_kind)
            self.mount_full_bytes.labels(kind)
        self.events = Counter(
            "kegpack_docker_events", "Container events received from the engine.", registry=r
        )
        self.connected = Gauge(
            "kegpack_docker_connected", "1 while the engine's event stream is live.", registry=r
        )
        self.push_retries = Counter(
            "kegpack_push_retries", "Pushes retried after a registry error.", registry=r
        )
        self.pruned = Counter(
            "kegpack_images_pruned", "Local images removed by retention.", registry=r
        )
        self.pruned_bytes = Counter(
            "kegpack_pruned_bytes",
            "Bytes of layers freed by retention (the layers kegpackd added).",
            registry=r,
        )
        self.notifications = Counter(
            "kegpack_notifications",
            "Job-end notifications: sent, failed (after retries) or dropped (queue full).",
            ["result"],
            registry=r,
        )
        for result in NOTIFY_RESULTS:
            self.notifications.labels(result)
        self.forced_owners = Counter(
            "kegpack_forced_owner_jobs",
            "Successful jobs whose image has the owners the engine forced (Podman), "
            "not the files' own.",
            registry=r,
        )
        self.last_success = Gauge(
            "kegpack_last_success_timestamp_seconds",
            "Unix time of the last successful job (0: none yet).",
            registry=r,
        )
        self.running_since: dict[str, float] = {}
        r.register(_OldestRunning(self))
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    def on_job_event(self, event: JobEvent) -> None:
        """The scheduler's lifecycle events, counted."""
        record = event.record
        job_id = record.request.job_id
        if event.kind == EventKind.STARTED:
            self.job_started(job_id)
        elif event.kind == EventKind.FINISHED:
            if job_id not in self.running_since:
                # It failed before it started (the run-key check): still one job.
                self.job_started(job_id)
            self.push_retries.inc(record.result.push_retries)
            self.pruned.inc(len(record.result.pruned))
            self.pruned_bytes.inc(record.result.pruned_bytes)
            if record.result.layer:
                self.layers.labels(record.result.layer).inc()
            kind = record.result.mounts_layer
            if kind in MOUNT_LAYER_KINDS and record.state in SUCCESSES:
                self.mount_layers.labels(kind).inc()
                self.mount_layer_bytes.labels(kind).inc(record.result.mounts_layer_bytes)
                self.mount_full_bytes.labels(kind).inc(record.result.mounts_full_bytes)
            quiesced = record.result.quiesced_seconds
            if quiesced is not None and record.result.quiesce in QUIESCED_MODES:
                self.quiesced.labels(record.result.quiesce).observe(quiesced)
            if record.result.forced_owners and record.state in SUCCESSES:
                self.forced_owners.inc()
            self.job_finished(
                job_id, record.state, record.finished - record.started, record.result.stage_seconds
            )

    def job_started(self, job_id: str) -> None:
        self.running_since[job_id] = time.time()
        self.in_progress.inc()

    def job_finished(
        self, job_id: str, outcome: str, duration: float, stages: Mapping[str, float]
    ) -> None:
        self.running_since.pop(job_id, None)
        self.in_progress.dec()
        self.jobs.labels(outcome).inc()
        self.job_duration.observe(duration)
        for stage, seconds in stages.items():
            if stage in tuple(Stage):
                self.stage_duration.labels(stage).observe(seconds)
        if outcome in SUCCESSES:
            self.last_success.set(time.time())
