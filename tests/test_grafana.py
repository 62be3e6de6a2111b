"""The Grafana dashboard (deploy/grafana/kegpackd.json): generated, provisioning-safe, and
every panel's query answered with data by a real Prometheus that scraped a real daemon.

There is no Grafana here: the queries are what Grafana would send, with its template
variables replaced the way Grafana replaces them, asked of Prometheus's HTTP API.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kegpackd.daemon.metrics import Metrics
from tests.daemontools import DaemonProcess, finished, free_port, wait_until, write_config
from tests.dockertools import Docker

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "kegpackd.json"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# What Grafana puts in place of its built-in variables, for a 1 h view scraped every 1 s;
# $instance takes its "All" value, the default. A variable not listed here fails the test.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "instance": ".*",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def generator() -> ModuleType:
    """deploy/grafana/build_dashboard.py, imported from its path (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows only group), including those inside collapsed rows."""
    for item in board["panels"]:
        if item["type"] == "row":
            yield from item.get("panels", [])
        else:
            yield item


def substitute(expr: str, where: str) -> str:
    """``expr`` with Grafana's variables replaced; an unknown one fails, naming ``where``."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in VARIABLES:
            pytest.fail(f"{where}: variable ${name} has no test value in VARIABLES")
        return VARIABLES[name]

    return VARIABLE.sub(value, expr)


def test_the_committed_dashboard_is_what_the_generator_writes() -> None:
    """kegpackd.json is byte for byte build_dashboard.py's output (run it after an edit)."""
    assert DASHBOARD.read_text(encoding="utf-8") == generator().render()


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    """$datasource is a Prometheus datasource variable, and every panel and target uses it;
    no __inputs placeholder, which Grafana keeps literally when provisioning from files."""
    board = dashboard()
    text = DASHBOARD.read_text(encoding="utf-8")
    assert "__inputs" not in board
    assert "${DS_" not in text
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["instance"]["datasource"] == ref
    for panel in panels(board):
        assert panel["datasource"] == ref, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ref, panel["title"]


def test_every_kegpack_metric_has_a_panel() -> None:
    """Each kegpack_* family that metrics.py exports appears in some panel's query."""
    registry = CollectorRegistry()
    Metrics(registry, process=False)
    names = {family.name for family in registry.collect() if family.name.startswith("kegpack_")}
    exprs = " ".join(t["expr"] for p in panels(dashboard()) for t in p["targets"])
    missing = sorted(
        name for name in names if not re.search(rf"\b{name}(_total|_bucket)?\b", exprs)
    )
    assert missing == []


@dataclass
class Prometheus:
    """A real Prometheus server scraping one daemon every second, with deploy/'s config."""

    root: Path
    target: str = ""
    web: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    process: subprocess.Popen[bytes] | None = None

    def start(self, daemon: DaemonProcess) -> None:
        self.target = daemon.url.removeprefix("http://")
        deploy = REPO / "deploy"
        config = (deploy / "prometheus.yml").read_text().replace("127.0.0.1:9477", self.target)
        config = re.sub(r"(scrape_interval|evaluation_interval): \S+", r"\1: 1s", config)
        config = re.sub(r"scrape_timeout: \S+", "scrape_timeout: 1s", config)
        (self.root / "prometheus.yml").write_text(config)
        (self.root / "alerts.yml").write_text((deploy / "alerts.yml").read_text())
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={self.root / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.root / 'tsdb'}", f"--web.listen-address={self.web}"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip

    @property
    def log(self) -> Path:
        return self.root / "prometheus.log"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """One GET of the HTTP API: the decoded body, also for a 400 (an invalid query)."""
        url = f"http://{self.web}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with NO_PROXY.open(url, timeout=10) as resp:
                body: dict[str, Any] = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def value(self, query: str) -> float:
        """The query's first sample (0 while Prometheus is not answering or has none)."""
        try:
            result = self.api("query", query=query)["data"]["result"]
        except OSError:
            return 0.0
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """A Prometheus server, not started yet; stopped after the test."""
    server = Prometheus(tmp_path / "prometheus")
    server.root.mkdir()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback webhook receiver answering 204: (its URL, the bodies it got)."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def manual_job(daemon: DaemonProcess, cid: str, tag: str) -> None:
    """POST /v1/jobs for ``cid`` and wait for the job to succeed."""
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": [tag]})
    assert status == 202, body
    assert daemon.job_in(body["id"], timeout=60)["state"] == "succeeded"


def run_jobs(daemon: DaemonProcess, docker: Docker, tmp_path: Path) -> None:
    """Two jobs of one container, paused for its copy (the second prunes the first's image),
    and a failed one."""
    keg = tmp_path / "keg"
    keg.mkdir()
    (keg / "data").write_bytes(b"x" * 100_000)
    label = ("-l", "kegpack.package=true")
    cid = docker.container(
        *label, "-l", "kegpack.trigger=manual", "-l", "kegpack.quiesce=pause", "-v", f"{keg}:/keg"
    )
    manual_job(daemon, cid, "one")
    (keg / "more").write_bytes(b"y" * 100_000)
    manual_job(daemon, cid, "two")
    bad = docker.container(*label, "-l", "kegpack.paths=/not-a-mount", "-v", f"{keg}:/keg")
    assert daemon.wait_for(finished(bad), 60)["outcome"] == "failed"


def unanswered(prometheus: Prometheus, title: str, expr: str) -> str | None:
    """Why ``expr`` gives Grafana nothing to draw (an error, no series, only NaN), or None."""
    query = substitute(expr, f"panel {title!r}")
    body = prometheus.api("query", query=query)
    if body.get("status") != "success":
        return f"panel {title!r}: {query} is invalid: {body.get('error')}"
    result = body["data"]["result"]
    samples = [result] if body["data"]["resultType"] == "scalar" else [s["value"] for s in result]
    if not any(not math.isnan(float(value)) for _at, value in samples):
        return f"panel {title!r}: {query} returned no data: {result}"
    return None


@pytest.mark.engine
def test_every_panel_query_returns_data_from_a_real_prometheus(
    docker: Docker,
    daemon: DaemonProcess,
    prometheus: Prometheus,
    webhook: tuple[str, list[bytes]],
    tmp_path: Path,
) -> None:
    """After real jobs (two succeeded and paused, one pruned, one failed, webhooks sent), each
    query of each panel is valid PromQL and returns at least one number; so does $instance's
    query."""
    hook, posts = webhook
    write_config(daemon.config, extra=f'[retention]\nkeep = 1\n[notify]\nwebhook_url = "{hook}"\n')
    daemon.start()
    prometheus.start(daemon)
    wait_until(lambda: prometheus.value("up") == 1, 60, "Prometheus scrapes the daemon")
    run_jobs(daemon, docker, tmp_path)
    # The engine is shared: the daemon may also see other tests' labelled containers.
    wait_until(lambda: len(posts) >= 3, 30, "three webhook POSTs")
    seen = " and ".join(
        f"sum({series}) >= {least}"
        for series, least in (
            ('kegpack_jobs_total{outcome="succeeded"}', 2),
            ('kegpack_jobs_total{outcome="failed"}', 1),
            ('kegpack_notifications_total{result="sent"}', 3),
            ("kegpack_images_pruned_total", 1),
            ('kegpack_source_quiesced_seconds_count{mode="pause"}', 2),
        )
    )
    wait_until(lambda: prometheus.value(f"count({seen})") == 1, 30, "Prometheus sees the jobs")
    problems = [
        problem
        for panel in panels(dashboard())
        for target in panel["targets"]
        if (problem := unanswered(prometheus, panel["title"], target["expr"])) is not None
    ]
    assert problems == [], "\n".join(problems)
    instances = prometheus.api("label/instance/values", **{"match[]": "kegpack_jobs_total"})
    assert instances["data"] == [prometheus.target]
