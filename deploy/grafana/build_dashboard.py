"""Build deploy/grafana/kegpackd.json, the Grafana dashboard of kegpackd's metrics.

Run ``python deploy/grafana/build_dashboard.py`` after changing a panel and commit both
files: the JSON is what people import or provision, and tests/test_grafana.py checks that it
is exactly what this script writes (so it cannot drift) and that every query returns data
from a real Prometheus that scraped a real daemon.

Built with Grafana's own typed builders (``grafana-foundation-sdk``, the ``dev`` extra of
pyproject.toml), so field names and panel options are the ones Grafana 11 reads.

Provisioning-safe: the data source is the template variable ``${datasource}`` (type
datasource, plugin prometheus), not an ``__inputs`` placeholder, which Grafana keeps
literally in dashboards provisioned from files (grafana/grafana#10786). A fleet picks its
daemons with ``$instance`` (all of them by default).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent / "kegpackd.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every query selects the daemons chosen in $instance.
ON = '{instance=~"$instance"}'
RATE = "[$__rate_interval]"
RANGE = "[$__range]"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = "__auto"


@dataclass(frozen=True)
class Chart:
    """One panel: a time series unless ``single`` (a stat of the latest values)."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    single: bool = False
    width: int = 8


def quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{ON}{RATE})))"


ROWS: tuple[tuple[str, tuple[Chart, ...]], ...] = (
    (
        "Jobs",
        (
            Chart(
                "Jobs in the time range",
                "Finished jobs by outcome over the dashboard's time range.",
                (
                    Query(
                        f"sum by (outcome) (increase(kegpack_jobs_total{ON}{RANGE}))", "{{outcome}}"
                    ),
                ),
                single=True,
            ),
            Chart(
                "Finished jobs by outcome",
                "succeeded, unchanged (skip-unchanged found the same content), failed, cancelled.",
                (
                    Query(
                        f"sum by (outcome) (increase(kegpack_jobs_total{ON}{RATE}))", "{{outcome}}"
                    ),
                ),
            ),
            Chart(
                "Since the last successful job",
                "Per daemon; no value: no success since that daemon started.",
                (
                    Query(
                        "time() - max by (instance) "
                        f"(kegpack_last_success_timestamp_seconds{ON} > 0)",
                        "{{instance}}",
                    ),
                ),
                unit="s",
                single=True,
            ),
        ),
    ),
    (
        "Duration",
        (
            Chart(
                "Job duration quantiles",
                "Wall time of finished jobs, from the histogram's buckets.",
                tuple(
                    Query(quantile(q, "kegpack_job_duration_seconds"), f"p{round(q * 100)}")
                    for q in (0.5, 0.9, 0.99)
                ),
                unit="s",
            ),
            Chart(
                "Stage duration, 90th percentile",
                "commit, measure, stream, finalize, push, prune, cleanup.",
                (Query(quantile(0.9, "kegpack_stage_duration_seconds", "le, stage"), "{{stage}}"),),
                unit="s",
            ),
            Chart(
                "Oldest running job",
                "Age of the oldest running job (0 when none runs); a stuck job climbs here.",
                (
                    Query(
                        f"max by (instance) (kegpack_job_oldest_running_seconds{ON})",
                        "{{instance}}",
                    ),
                ),
                unit="s",
            ),
        ),
    ),
    (
        "Bytes",
        (
            Chart(
                "Streamed from containers",
                "Archive bytes read from the source containers' mounts, per second.",
                (
                    Query(
                        f"sum by (instance) (rate(kegpack_streamed_bytes_total{ON}{RATE}))",
                        "{{instance}}",
                    ),
                ),
                unit="Bps",
            ),
            Chart(
                "Streamed in the time range",
                "Archive bytes read over the dashboard's time range.",
                (Query(f"sum(increase(kegpack_streamed_bytes_total{ON}{RANGE}))", "bytes"),),
                unit="bytes",
                single=True,
            ),
            Chart(
                "Mount layers: new or reused",
                "reused: the engine had the same layer, so no layer data was sent.",
                (
                    Query(
                        f"sum by (result) (increase(kegpack_layers_total{ON}{RATE}))", "{{result}}"
                    ),
                ),
            ),
            Chart(
                "Incremental packaging: mounts layers by kind",
                "full: the whole mounts; delta: only what changed since the previous image; "
                "none: the previous image's mount layers kept (packaging.incremental).",
                (
                    Query(
                        f"sum by (kind) (increase(kegpack_mount_layers_total{ON}{RATE}))",
                        "{{kind}}",
                    ),
                ),
            ),
            Chart(
                "Incremental packaging: bytes made against full",
                "Mount layer bytes written over the time range, against what full layers "
                "would have been for the same jobs.",
                (
                    Query(f"sum(increase(kegpack_mount_layer_bytes_total{ON}{RANGE}))", "made"),
                    Query(f"sum(increase(kegpack_mount_full_bytes_total{ON}{RANGE}))", "full"),
                ),
                unit="bytes",
            ),
            Chart(
                "Source downtime per job (p90)",
                "How long each source was paused or stopped for its copy (kegpack.quiesce).",
                (Query(quantile(0.9, "kegpack_source_quiesced_seconds", "le, mode"), "{{mode}}"),),
                unit="s",
            ),
            Chart(
                "Images with forced owners",
                "Podman reports every owner in a mount as the container user's; jobs allowed "
                "to package so (kegpack.allow-forced-owners) make images that are not exact.",
                (Query(f"sum(increase(kegpack_forced_owner_jobs_total{ON}{RANGE}))", "jobs"),),
                single=True,
            ),
        ),
    ),
    (
        "Queue and engine",
        (
            Chart(
                "Jobs running and queued",
                "Queued jobs wait for a slot (packaging.concurrency).",
                (
                    Query(f"sum(kegpack_jobs_in_progress{ON})", "running"),
                    Query(f"sum(kegpack_jobs_queued{ON})", "queued"),
                ),
            ),
            Chart(
                "Engine event stream",
                "1 while the daemon's event stream from the Docker engine is live.",
                (Query(f"min by (instance) (kegpack_docker_connected{ON})", "{{instance}}"),),
                single=True,
            ),
            Chart(
                "Engine events and push retries",
                "Container events received; pushes retried after a registry error.",
                (
                    Query(f"sum(rate(kegpack_docker_events_total{ON}{RATE}))", "events/s"),
                    Query(f"sum(increase(kegpack_push_retries_total{ON}{RATE}))", "push retries"),
                ),
            ),
        ),
    ),
    (
        "Notifications and retention",
        (
            Chart(
                "Webhook notifications",
                "sent, failed (after its retries) or dropped (queue full).",
                (
                    Query(
                        f"sum by (result) (increase(kegpack_notifications_total{ON}{RATE}))",
                        "{{result}}",
                    ),
                ),
            ),
            Chart(
                "Images pruned",
                "Local images removed by [retention].",
                (Query(f"sum(increase(kegpack_images_pruned_total{ON}{RATE}))", "images"),),
            ),
            Chart(
                "Bytes freed by retention",
                "Bytes of the layers kegpackd added, freed by pruning.",
                (Query(f"sum(increase(kegpack_pruned_bytes_total{ON}{RATE}))", "bytes"),),
                unit="bytes",
            ),
        ),
    ),
)

CONNECTED = ValueMap(
    {
        "0": ValueMappingResult(text="disconnected", color="red"),
        "1": ValueMappingResult(text="connected", color="green"),
    }
)


def target(query: Query, ref: str, *, instant: bool) -> prometheus.Dataquery:
    """A stat shows the latest value: its query is instant; a graph's is a range query."""
    built = prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
    built.datasource(DATASOURCE)
    return built.instant() if instant else built.range()


def panel(chart: Chart) -> stat.Panel | timeseries.Panel:
    built: stat.Panel | timeseries.Panel = (
        stat.Panel() if chart.single else timeseries.Panel().fill_opacity(10)
    )
    built.title(chart.title).description(chart.description).datasource(DATASOURCE)
    built.unit(chart.unit).height(8).span(chart.width)
    if "kegpack_docker_connected" in chart.queries[0].expr:
        built.mappings([CONNECTED])
    for index, query in enumerate(chart.queries):
        built.with_target(target(query, chr(ord("A") + index), instant=chart.single))
    return built


def variables() -> list[dashboard.DatasourceVariable | dashboard.QueryVariable]:
    """$datasource (any Prometheus) and $instance (the daemons that datasource scrapes)."""
    source = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    instance = (
        dashboard.QueryVariable("instance")
        .label("Instance")
        .datasource(DATASOURCE)
        .query("label_values(kegpack_jobs_total, instance)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return [source, instance]


def build() -> dashboard.Dashboard:
    board = (
        dashboard.Dashboard("kegpackd")
        .uid("kegpackd")
        .description("Jobs, durations, bytes, queue, engine, notifications and retention.")
        .tags(["kegpackd", "docker"])
        .editable()
        .refresh("30s")
        .time("now-24h", "now")
        .timezone("browser")
    )
    for variable in variables():
        board.with_variable(variable)
    for title, charts in ROWS:
        board.with_row(dashboard.Row(title))
        for chart in charts:
            board.with_panel(panel(chart))
    return board


def numbered(document: dict[str, object]) -> dict[str, object]:
    """Grafana wants a unique id per panel; number them in order, rows included."""
    panels = document["panels"]
    assert isinstance(panels, list)
    for index, item in enumerate(panels, start=1):
        item["id"] = index
    return document


def render() -> str:
    """The dashboard as the committed file holds it."""
    raw = json.dumps(build().build(), cls=JSONEncoder)
    return json.dumps(numbered(json.loads(raw)), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
