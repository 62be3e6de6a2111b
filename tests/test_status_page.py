"""The status page (``GET /``): what it renders, who may see it, and what a browser shows.

The renderer is checked without an engine; who may see the page, on a real daemon process
with no engine; what a person sees, in Debian's headless Chromium (JavaScript off) on a
daemon that ran real jobs on the test engine, one that succeeded and one that failed.
Set ``KEGPACK_STATUS_SCREENSHOT=deploy/status-page.png`` to rewrite the README's picture.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kegpackd.daemon import statuspage
from kegpackd.daemon.statuspage import Snapshot, render
from tests.daemontools import NO_PROXY, DaemonProcess, finished, write_config
from tests.dockertools import Docker, TestEnv
from tests.test_api_security import TOKEN, _no_engine_daemon, _token_file, running

NOW = 1_800_000_000.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# The page must work as a plain table: the profile turns JavaScript off for every page
# (a content setting; --blink-settings=scriptEnabled=false would stop --dump-dom too).
NO_JAVASCRIPT = '{"profile": {"default_content_setting_values": {"javascript": 2}}}'

BAD_PAUSE = "<b>maybe</b>"
IMAGE = "kegpack/web:20270115-080000"


def _job(**fields: Any) -> dict[str, Any]:
    """A job as /v1/jobs lists it, with ``fields`` over a succeeded default."""
    job: dict[str, Any] = {
        "id": "0123456789abcdef",
        "container": "f" * 64,
        "name": "web",
        "trigger": "manual",
        "state": "succeeded",
        "stage": None,
        "started": NOW - 10,
        "finished": NOW - 8,
        "bytes": 3 * 1024 * 1024,
        "layer": "new",
        "layer_bytes": 2 * 1024 * 1024,
        "images": [IMAGE],
        "error": None,
        "restored": False,
    }
    return {**job, **fields}


class _Cells(html.parser.HTMLParser):
    """The text of every table cell, row by row, and the tags the document holds."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _cells(page: str) -> _Cells:
    parser = _Cells()
    parser.feed(page)
    return parser


def _row(page: str, *wanted: str) -> list[str]:
    """The one table row whose cells include every one of ``wanted``."""
    rows = [row for row in _cells(page).rows if all(w in row for w in wanted)]
    assert len(rows) == 1, (wanted, _cells(page).rows)
    return rows[0]


# The renderer


def test_a_hostile_container_name_and_error_are_text_not_markup() -> None:
    """A name and an error carrying tags and quotes reach the page HTML-escaped."""
    name = '<script>alert("name")</script>'
    error = "label kegpack.tags: '</td><img src=x onerror=alert(1)>' is not a tag"
    page = render(Snapshot([_job(name=name, state="failed", error=error, images=[])], NOW))
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt;" in page
    row = _row(page, name)
    assert error in row


def test_a_bidi_override_in_an_error_is_shown_escaped() -> None:
    """A right-to-left override (which would reorder the row) is written as its escape."""
    page = render(Snapshot([_job(state="failed", error="disk \u202efull", images=[])], NOW))
    assert "\u202e" not in page
    assert "disk \\u202efull" in _row(page, "web")


def test_the_empty_state_says_nothing_ran_yet() -> None:
    """With no job: three sentences instead of empty tables, and the page still refreshes."""
    page = render(Snapshot([], NOW))
    assert "No job is running or queued." in page
    assert "No job has finished yet." in page
    assert "No image has been packaged yet." in page
    assert "<table" not in page
    assert f'<meta http-equiv="refresh" content="{statuspage.REFRESH_SECONDS}">' in page


def test_a_running_job_shows_its_stage_bytes_and_rate() -> None:
    """In flight: 3 MiB streamed in the 2 s since it started is 1.5 MiB/s, in stage stream."""
    job = _job(state="running", stage="stream", started=NOW - 2, finished=None, images=[])
    page = render(Snapshot([job], NOW))
    row = _row(page, "running")
    assert row[:4] == ["web", "manual", "running", "stream"]
    assert row[5:] == ["3.0 MiB", "1.5 MiB/s"]
    assert "No job has finished yet." in page


def test_recent_jobs_show_outcome_duration_size_layer_and_images() -> None:
    """A finished job's row: outcome, duration, layer size, new/reused and its images."""
    page = render(Snapshot([_job(layer="reused")], NOW))
    row = _row(page, "succeeded")[1:]
    assert row == ["web", "manual", "succeeded", "2.0 s", "2.0 MiB", "reused", IMAGE]


def test_each_containers_images_are_listed_newest_first() -> None:
    """Per container, its images over time, newest first; failed jobs add none."""
    jobs = [
        _job(finished=NOW - 5, images=["kegpack/web:two"]),
        _job(state="failed", error="boom", images=[]),
        _job(finished=NOW - 500, images=["kegpack/web:one"]),
        _job(name="db", images=["kegpack/db:one"]),
    ]
    row = _row(render(Snapshot(jobs, NOW)), "web", "2")
    assert re.fullmatch(r"\S+ \S+ kegpack/web:two \S+ \S+ kegpack/web:one", row[2]), row


def test_a_journal_line_with_wrong_types_renders_without_a_crash() -> None:
    """Numbers as strings, images not a list, a non-dict job: shown as unknown, no crash."""
    bad = _job(started="yesterday", finished=10**30, bytes="many", images="x", name=7)
    page = render(Snapshot([bad, "not a job", _job(restored=True)], NOW))  # type: ignore[list-item]
    assert _row(page, "succeeded (before restart)")


def test_the_page_allows_only_its_own_style_block() -> None:
    """The CSP names the style block's hash and nothing else; the page has no script."""
    page = render(Snapshot([_job()], NOW))
    style = re.search(r"<style>(.*?)</style>", page)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    policy = statuspage.HEADERS["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; ")
    assert f"style-src 'sha256-{digest}';" in policy
    assert "unsafe" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script" not in page


# Who may see it (a real daemon process, no engine)


def _basic(password: str, user: str = "anyone") -> dict[str, str]:
    credential = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credential}"}


def _page(daemon: DaemonProcess, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    """GET / with ``headers``: status, body and the answer's headers."""
    request = urllib.request.Request(daemon.url + "/", headers=headers)
    try:
        with NO_PROXY.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode(), dict(refused.headers)


def test_the_status_page_without_credentials_is_a_basic_challenge(tmp_path: Path) -> None:
    """No Authorization: 401 with WWW-Authenticate Basic realm="kegpackd", no page."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        status, body, headers = _page(daemon, {})
    assert status == 401, body
    assert headers["WWW-Authenticate"].startswith('Basic realm="kegpackd"')
    assert "kegpackd status" not in body


def test_the_status_page_with_a_wrong_token_is_refused(tmp_path: Path) -> None:
    """A wrong Basic password: 401 and the challenge again, and a log line saying why."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        status, body, headers = _page(daemon, _basic("not-the-token-" + "x" * 32))
        daemon.wait_for(lambda r: "invalid token" in r.get("message", ""), 10)
    assert status == 401, body
    assert "WWW-Authenticate" in headers
    assert "kegpackd status" not in body


def test_the_local_token_as_a_basic_password_opens_the_page(tmp_path: Path) -> None:
    """Any user name with the local token as the password: 200, HTML, strict headers."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        status, body, headers = _page(daemon, _basic(daemon.local_token, user=""))
    assert status == 200, body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == statuspage.CONTENT_SECURITY_POLICY
    assert headers["Cache-Control"] == "no-store"
    assert "<title>kegpackd status</title>" in body


def test_the_configured_token_opens_the_page_too(tmp_path: Path) -> None:
    """http.token, which may read /v1/jobs, may read the page that shows the same jobs."""
    with running(_no_engine_daemon(tmp_path, _token_file(tmp_path))) as daemon:
        status, body, _ = _page(daemon, _basic(TOKEN))
    assert status == 200, body


def test_basic_credentials_open_no_v1_route(tmp_path: Path) -> None:
    """The local token as a Basic password on GET /v1/jobs: 401 (a browser's cached
    credentials must reach nothing but the read-only page)."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        status, body = daemon.http(
            "GET", "/v1/jobs", auth=False, headers=_basic(daemon.local_token)
        )
    assert status == 401, body


def test_the_status_page_refuses_a_foreign_host(tmp_path: Path) -> None:
    """Host: evil.example (DNS rebinding) gets 403 even with the right credentials."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        headers = {**_basic(daemon.local_token), "Host": "evil.example:9477"}
        status, body, _ = _page(daemon, headers)
    assert status == 403, body


# What a person sees: headless Chromium on a daemon that ran real jobs


@dataclass
class Served:
    daemon: DaemonProcess
    good: str
    bad: str
    good_name: str
    bad_name: str


@pytest.fixture(scope="module")
def served(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A daemon that packaged a container twice (layer new, then reused) and failed a
    job of another (a bad label, found by the job that its start triggered)."""
    tmp = tmp_path_factory.mktemp("status")
    data = tmp / "site"
    data.mkdir()
    (data / "index.html").write_text("<h1>hello</h1>\n")
    docker = Docker(testenv, tmp)
    daemon = DaemonProcess(write_config(tmp / "kegpackd.toml"), tmp / "kegpackd.log")
    try:
        daemon.start()
        manual = ("-l", "kegpack.package=true", "-l", "kegpack.trigger=manual")
        good = docker.container(*manual, "-v", f"{data}:/srv/site", name=docker.name("-web"))
        for _ in range(2):
            status, body = daemon.http("POST", "/v1/jobs", {"container": good})
            assert status == 202, body
            daemon.job_in(body["id"], timeout=60)
        start = ("-l", "kegpack.package=true", "-l", "kegpack.trigger=start")
        bad = docker.container(*start, "-l", f"kegpack.pause={BAD_PAUSE}", name=docker.name("-db"))
        daemon.wait_for(finished(bad), 60)
        yield Served(daemon, good, bad, docker.name("-web"), docker.name("-db"))
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop()
        docker.cleanup()


def _chromium(url: str, profile: Path, *action: str) -> str:
    """Run headless Chromium (a new profile, JavaScript off) on ``url``; its stdout."""
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: run scripts/testenv.sh install"
    (profile / "Default").mkdir(parents=True)
    (profile / "Default" / "Preferences").write_text(NO_JAVASCRIPT)
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _with_credentials(daemon: DaemonProcess, password: str) -> str:
    return daemon.url.replace("http://", f"http://viewer:{password}@") + "/"


@pytest.mark.engine
def test_a_browser_with_the_token_sees_the_job_rows_and_the_failed_jobs_error(
    served: Served, tmp_path: Path
) -> None:
    """Chromium, JavaScript off, the token as the URL's password: both jobs' rows, the
    failed one's error as text (its label value's tags are not markup), images per container."""
    daemon = served.daemon
    dom = _chromium(_with_credentials(daemon, daemon.local_token), tmp_path / "p", "--dump-dom")
    seen = _cells(dom)
    failed = _row(dom, served.bad_name, "failed")
    assert failed[2] == "start"
    assert f"label kegpack.pause: invalid value '{BAD_PAUSE}': expected true or false" in failed
    assert "b" not in seen.tags
    rows = [row for row in seen.rows if served.good_name in row and "succeeded" in row]
    assert [row[2] for row in rows] == ["manual", "manual"]
    assert sorted(row[6] for row in rows) == ["new", "reused"]
    assert all(row[7].startswith(f"kegpack-test/{served.good_name}:") for row in rows)
    history = _row(dom, served.good_name, "2")
    assert all(row[7] in history[2] for row in rows)


@pytest.mark.engine
def test_a_browser_without_credentials_sees_no_job(served: Served, tmp_path: Path) -> None:
    """No credentials: the daemon challenges (401, Basic) and Chromium shows no job row."""
    daemon = served.daemon
    dom = _chromium(daemon.url + "/", tmp_path / "p", "--dump-dom")
    assert served.good_name not in dom
    assert served.bad_name not in dom
    status, _, headers = _page(daemon, {})
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.engine
def test_a_browser_with_a_wrong_token_sees_no_job(served: Served, tmp_path: Path) -> None:
    """A wrong token as the URL's password: refused (401 and a log line), no job row shown."""
    daemon = served.daemon
    wrong = "W" * 43
    dom = _chromium(_with_credentials(daemon, wrong), tmp_path / "p", "--dump-dom")
    assert served.good_name not in dom
    assert served.bad_name not in dom
    daemon.wait_for(lambda r: bool(re.match(r"refused GET '/' .*invalid token", r["message"])), 10)
    assert _page(daemon, _basic(wrong))[0] == 401


@pytest.mark.engine
def test_a_screenshot_of_the_status_page_is_a_png(served: Served, tmp_path: Path) -> None:
    """Chromium's screenshot of the page is a PNG (copied to $KEGPACK_STATUS_SCREENSHOT)."""
    daemon = served.daemon
    shot = tmp_path / "status-page.png"
    url = _with_credentials(daemon, daemon.local_token)
    _chromium(url, tmp_path / "p", f"--screenshot={shot}", "--window-size=1280,720")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    target = os.environ.get("KEGPACK_STATUS_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
