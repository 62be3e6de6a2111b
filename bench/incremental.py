"""Incremental packaging benchmark: what a repackage costs after small changes, on both stores.

For each image store (the graph driver, dockerd 20.10, ``KEGPACK_ENGINE`` default; the
containerd store, ``KEGPACK_ENGINE=containerd``, dockerd 26.1) it brings up a private engine
and registries with ``scripts/testenv.sh`` (its own state dir and ports), and for each corpus
(bulk: a few big files; many-small; big: 1 GiB by default) packages a busybox source with the
corpus bind-mounted at ``/data`` and pushes it to the local registry, then repackages it after
each change of ``SCENARIOS``. Each repackage is measured (wall time, the engine data root's
growth, the registry's growth, the image's layers, the job result's ``mounts_layer*`` and
``delta_source``) and checked against a full package of the same state (``incremental =
false``, another repository) by comparing the two images' flattened trees, entry by entry.
The engines are torn down at the end (``scripts/testenv.sh down``).

Run from the repository, as root: ``python -m bench.incremental [--big 1G] [--rounds 1] ...``.
Writes a Markdown report (default ``BENCHMARKS-incremental.md``) with the command line used;
its tables are copied into BENCHMARKS.md ("Incremental packaging").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import (
    MIB,
    MOUNT,
    Docker,
    Interrupted,
    human,
    make_bulk,
    make_many_small,
    met,
    parse_size,
    write_random_file,
)
from kegpackd.config import parse_config
from kegpackd.errors import ConfigError
from kegpackd.packaging.delta import SMALL_FILE
from tests.dockertools import TESTENV_SCRIPT, TestEnv, parse_testenv
from tests.treetools import INIT_LAYER, Tree, differences, read_tree

REPO = Path(__file__).resolve().parent.parent
OUTSIDE_FILE = "/tmp/kbench-outside"
BULK_FILES = 4
CHANGE_SHARE = 0.01
DELETE_COUNT = 1000
# The job result's fields this bench reports (kegpackd's incremental packaging adds them).
RESULT_FIELDS = (
    "layer", "mounts_layer", "mounts_layer_bytes", "mounts_full_bytes", "delta_layers",
    "delta_source",
)  # fmt: skip
# Issue 23's targets for a 1 MiB change to the big mount.
TARGET_REGISTRY = 2 * MIB
TARGET_ENGINE_SHARE = 0.02
TARGET_TIME_RATIO = 0.35
# The fetch pair's changed files: too big for the scan to keep (kegpackd keeps changed files
# up to SMALL_FILE whole, and a delta of only those needs neither a fetch nor a re-read).
PAIR_FILE = 2 * SMALL_FILE


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str


SCENARIOS = (
    Scenario("first", "first package"),
    Scenario("nothing", "nothing changed"),
    Scenario("add", "one 1 MiB file added"),
    Scenario("change", "1 % of the files changed"),
    Scenario("delete", "1 000 files deleted (or all if fewer)"),
    Scenario("outside", "a write in the container outside the mounts"),
)
# The once-per-store pair on the many-small corpus: another 1 % of its files changed, each
# rewritten to PAIR_FILE bytes, repackaged with a delta_fetch_limit above the count (the
# changed files fetched one by one) and with 0 (one filtered re-read of the mounts).
FETCH_PAIR = (
    Scenario("change-fetch", "1 % changed to 128 KiB each, delta_fetch_limit = 100000 (fetch)"),
    Scenario("change-reread", "1 % changed to 128 KiB each, delta_fetch_limit = 0 (re-read)"),
)
PAIR_CORPUS = "many-small"
CORPORA = ("bulk", "many-small", "big")


@dataclass(frozen=True)
class Store:
    key: str
    engine: str  # KEGPACK_ENGINE
    title: str


STORES = {
    "graph": Store("graph", "graph", "graph driver (overlay2)"),
    "containerd": Store("containerd", "containerd", "containerd image store"),
}


# ---------------------------------------------------------------- corpora and changes


def corpus_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, in a stable order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def corpus_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in corpus_files(root))


def pick(paths: Sequence[Path], count: int, seed: int) -> list[Path]:
    """``count`` of ``paths`` (all of them if fewer), the same ones for the same seed."""
    return sorted(random.Random(seed).sample(list(paths), min(count, len(paths))))


def change_count(files: int) -> int:
    """How many files "1 % of the files" is: at least one."""
    return max(1, math.ceil(files * CHANGE_SHARE))


def rewrite(paths: Sequence[Path], size: int | None = None) -> None:
    """New random content in each file, of ``size`` bytes or of its own size (so its mtime
    changes too)."""
    for path in paths:
        write_random_file(path, path.stat().st_size if size is None else size)


def make_corpus(name: str, root: Path, args: argparse.Namespace) -> str:
    """Write corpus ``name`` into ``root`` (new); its description."""
    if name == "bulk":
        root.mkdir(parents=True)
        for index in range(BULK_FILES):
            write_random_file(root / f"bulk{index}.bin", args.size // BULK_FILES)
        return f"{BULK_FILES} random files of {human(args.size // BULK_FILES)}"
    if name == "many-small":
        return make_many_small(root, args.small_files)
    return make_bulk(root, args.big)


@dataclass
class Change:
    """What one scenario does to the source before its repackage (all but the first)."""

    docker: Docker
    source: str
    corpus: str
    root: Path
    seed: int

    def apply(self, key: str) -> str:
        """Make the change of scenario ``key``; what was done, for the report."""
        self.seed += 1
        files = corpus_files(self.root)
        if key == "add":
            path = self.root / f"added-{self.seed}.bin"
            write_random_file(path, MIB)
            return f"added {path.name}"
        if key == "change":
            chosen = pick(files, change_count(len(files)), self.seed)
            rewrite(chosen)
            return f"rewrote {len(chosen)} of {len(files)} files"
        if key.startswith("change-"):
            chosen = pick(files, change_count(len(files)), self.seed)
            rewrite(chosen, PAIR_FILE)
            return f"rewrote {len(chosen)} of {len(files)} files with {human(PAIR_FILE)} each"
        if key == "delete":
            chosen = pick(files, DELETE_COUNT, self.seed)
            for path in chosen:
                path.unlink()
            return f"deleted {len(chosen)} of {len(files)} files"
        if key == "outside":
            line = f"{key}-{self.seed}"
            self.docker("exec", self.source, "sh", "-c", f"echo {line} > {OUTSIDE_FILE}")
            return f"wrote {OUTSIDE_FILE} in the container"
        return "nothing"


# ---------------------------------------------------------------- image trees


def verdict(diff: Sequence[str], entries: int) -> str:
    """The table cell of a tree check."""
    if not diff:
        return f"same ({entries} entries)"
    return f"**MISMATCH** ({len(diff)}: {'; '.join(diff[:2])})"


def image_tree(docker: Docker, image: str) -> Tree:
    """The flattened filesystem of ``image``: ``docker create``, then ``docker export``
    (read as the incremental engine tests read it, ``tests/treetools.py``)."""
    cid = docker("create", "--pull", "never", "--network", "none", image, "true")
    docker.containers.append(cid)
    try:
        with subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE) as export:
            assert export.stdout is not None
            tree = read_tree(export.stdout, INIT_LAYER)
        if export.returncode != 0:
            raise RuntimeError(f"docker export of {image} failed ({export.returncode})")
        return tree
    finally:
        docker.rm(cid)


# ---------------------------------------------------------------- measuring


def du_bytes(path: Path) -> int:
    """Apparent bytes under ``path``, on its own file system only (not the containers'
    overlay mounts under a graph driver's data root)."""
    done = subprocess.run(
        ["du", "-sbx", str(path)], capture_output=True, text=True, check=False, timeout=600
    )
    # du exits 1 when a file vanished while it walked (the engine removing a temp file).
    return int(done.stdout.split()[0]) if done.stdout else 0


def settled_bytes(path: Path, tries: int = 6) -> int:
    """``du_bytes`` once two reads a second apart agree: the containerd store collects the
    content of removed images in the background, which must not fall into the next step."""
    last = du_bytes(path)
    for _ in range(tries):
        time.sleep(1)
        now = du_bytes(path)
        if now == last:
            return now
        last = now
    return last


def sync() -> None:
    subprocess.run(["sync"], check=True)


@dataclass
class Measure:
    seconds: float
    job: dict[str, Any]
    engine_bytes: int = 0
    registry_bytes: int = 0


@dataclass(frozen=True)
class Place:
    """Where a store's engine and registry keep their data, seen from this host."""

    data_root: Path
    registry: str
    registry_root: Path


def package(source: str, repository: str, tag: str, config: Path, push: bool) -> Measure:
    """One ``kegpackd package --result`` run, timed to its exit plus a ``sync``."""
    result = config.parent / f"result-{uuid.uuid4().hex[:8]}.json"
    command = [
        sys.executable, "-m", "kegpackd", "package", source, "-c", str(config),
        "--repository", repository, "--tag", tag, "--push" if push else "--no-push",
        "--result", str(result),
    ]  # fmt: skip
    sync()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    sync()
    seconds = time.monotonic() - started
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"kegpackd package {tag} failed ({done.returncode}): {said[0]}")
    job: dict[str, Any] = json.loads(result.read_text())
    result.unlink()
    return Measure(seconds, job)


def measured(place: Place, run: Callable[[], Measure]) -> Measure:
    """``run``, with the growth of the engine's data root and of the registry's storage."""
    engine, registry = settled_bytes(place.data_root), du_bytes(place.registry_root)
    outcome = run()
    outcome.engine_bytes = settled_bytes(place.data_root) - engine
    outcome.registry_bytes = du_bytes(place.registry_root) - registry
    return outcome


# ---------------------------------------------------------------- results


@dataclass
class Row:
    store: str
    corpus: str
    step: str
    round: int
    seconds: float
    engine_bytes: int
    registry_bytes: int
    mount_bytes: int
    layers: int
    job: dict[str, Any]
    tree: str
    change: str = ""

    @property
    def tree_ok(self) -> bool:
        return self.tree.startswith("same")


@dataclass
class Summary:
    """The rows of one (store, corpus, step) over the rounds: medians, and every value."""

    rows: list[Row]

    @property
    def first(self) -> Row:
        return self.rows[0]

    def median(self, value: Callable[[Row], float | int | None]) -> float | None:
        values = [v for v in map(value, self.rows) if v is not None]
        return statistics.median(values) if values else None

    def field(self, name: str) -> str:
        """A job result field over the rounds: one value, or each distinct one."""
        values = dict.fromkeys(str(r.job.get(name) or "n/a") for r in self.rows)
        return " / ".join(values)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.rows)

    @property
    def trees_ok(self) -> bool:
        return all(r.tree_ok for r in self.rows)

    @property
    def tree(self) -> str:
        """The tree check's cell: the one round's verdict, or the first mismatch."""
        if len(self.rows) == 1:
            return self.first.tree
        if self.trees_ok:
            return f"same, all {len(self.rows)} rounds"
        return next(r.tree for r in self.rows if not r.tree_ok)

    @property
    def layers(self) -> str:
        return " / ".join(dict.fromkeys(str(r.layers) for r in self.rows))


def summarize(rows: Sequence[Row]) -> dict[tuple[str, str, str], Summary]:
    """Rows grouped by (store, corpus, step), in the order they first came."""
    groups: dict[tuple[str, str, str], Summary] = {}
    for row in rows:
        groups.setdefault((row.store, row.corpus, row.step), Summary([])).rows.append(row)
    return groups


def size_cell(count: float | None) -> str:
    if count is None:
        return "n/a"
    return ("-" if count < 0 else "") + human(abs(count))


def job_bytes(row: Row, name: str) -> int | None:
    """A byte count of the job result; None when its mounts' layer kind is not reported (a
    package with incremental = false, or a kegpackd without the feature)."""
    if not row.job.get("mounts_layer"):
        return None
    value = row.job.get(name)
    return value if isinstance(value, int) else None


STEP_TITLES = {s.key: s.title for s in (*SCENARIOS, *FETCH_PAIR)}


def table(summaries: dict[tuple[str, str, str], Summary], steps: Sequence[str]) -> list[str]:
    """The Markdown table of the summaries whose step is in ``steps``."""
    lines = [
        "| store | corpus | repackage after | median s | all rounds s | vs first | engine data "
        "root + | registry + | layers | layer | mounts_layer | mounts_layer_bytes | delta_source"
        " | tree vs full package |",
        "|" + " --- |" * 14,
    ]
    for (store, corpus, step), summary in summaries.items():
        if step not in steps:
            continue
        first = summaries.get((store, corpus, "first"))
        ratio = f"{summary.seconds / first.seconds:.2f}x" if first else "n/a"
        lines.append(
            f"| {store} | {corpus} | {STEP_TITLES[step]} | {summary.seconds:.2f} | "
            f"{', '.join(f'{r.seconds:.2f}' for r in summary.rows)} | {ratio} | "
            f"{size_cell(summary.median(lambda r: r.engine_bytes))} | "
            f"{size_cell(summary.median(lambda r: r.registry_bytes))} | "
            f"{summary.layers} | {summary.field('layer')} | {summary.field('mounts_layer')} | "
            f"{size_cell(summary.median(lambda r: job_bytes(r, 'mounts_layer_bytes')))} | "
            f"{summary.field('delta_source')} | {summary.tree} |"
        )
    return lines


def pair_table(summaries: dict[tuple[str, str, str], Summary]) -> list[str]:
    """Fetch against re-read: times, where they went, and what each sent."""
    lines = [
        "| store | delta_fetch_limit | delta_source | median s | measure s | stream s | push s |"
        " mounts_layer_bytes | tree vs full package |",
        "|" + " --- |" * 9,
    ]
    for (store, _corpus, step), summary in summaries.items():
        if step not in {s.key for s in FETCH_PAIR}:
            continue

        def stage(name: str, summary: Summary = summary) -> str:
            value = summary.median(lambda r: r.job.get("stages", {}).get(name))
            return "n/a" if value is None else f"{value:.2f}"

        limit = "0 (re-read)" if step == "change-reread" else "default (fetch)"
        lines.append(
            f"| {store} | {limit} | {summary.field('delta_source')} | {summary.seconds:.2f} | "
            f"{stage('measure')} | {stage('stream')} | {stage('push')} | "
            f"{size_cell(summary.median(lambda r: job_bytes(r, 'mounts_layer_bytes')))} | "
            f"{summary.tree} |"
        )
    return lines


def pair_verdicts(
    summaries: dict[tuple[str, str, str], Summary], stores: Sequence[str]
) -> list[str]:
    """Which of fetch and re-read was faster, per store (medians of the whole runs)."""
    lines: list[str] = []
    for store in stores:
        fetch = summaries.get((store, PAIR_CORPUS, "change-fetch"))
        reread = summaries.get((store, PAIR_CORPUS, "change-reread"))
        if fetch is None or reread is None:
            continue
        faster, slower = ("fetch", "re-read")[:: 1 if fetch.seconds <= reread.seconds else -1]
        ratio = max(fetch.seconds, reread.seconds) / min(fetch.seconds, reread.seconds)
        lines.append(
            f"- {store}: {faster} was faster, {fetch.seconds:.2f} s (fetch) against "
            f"{reread.seconds:.2f} s (re-read): {slower} took {ratio:.2f}x as long."
        )
        sources = (fetch.field("delta_source"), reread.field("delta_source"))
        if sources != ("fetch", "reread"):
            lines.append(
                f"  **Not a comparison of fetch with re-read**: their delta_source was "
                f"{sources[0]} and {sources[1]}."
            )
    return [*lines, ""] if lines else []


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    ok: bool


def targets(summaries: dict[tuple[str, str, str], Summary], stores: Sequence[str]) -> list[Target]:
    """Issue 23's targets, per store."""
    found: list[Target] = []
    for store in stores:
        found += _big_targets(summaries, store)
        for (where, corpus, step), summary in summaries.items():
            if where == store and step == "outside":
                sent = summary.median(lambda r: job_bytes(r, "mounts_layer_bytes"))
                found.append(Target(
                    f"{store}, {corpus}: write outside the mounts, mounts_layer_bytes == 0",
                    size_cell(sent), sent == 0,
                ))  # fmt: skip
        mine = [r for (s, _c, _t), g in summaries.items() if s == store for r in g.rows]
        same = sum(r.tree_ok for r in mine)
        if mine:
            found.append(Target(
                f"{store}: every image's tree equals a full package's", f"{same} of {len(mine)}",
                same == len(mine),
            ))  # fmt: skip
    return found


def _big_targets(summaries: dict[tuple[str, str, str], Summary], store: str) -> list[Target]:
    added, first = summaries.get((store, "big", "add")), summaries.get((store, "big", "first"))
    if added is None or first is None:
        return []
    registry = added.median(lambda r: r.registry_bytes) or 0.0
    engine = added.median(lambda r: r.engine_bytes) or 0.0
    mount = added.median(lambda r: r.mount_bytes) or 1.0
    ratio = added.seconds / first.seconds
    return [
        Target(f"{store}, big: 1 MiB added, registry growth <= 2 MiB", size_cell(registry),
               registry <= TARGET_REGISTRY),
        Target(f"{store}, big: 1 MiB added, engine data root growth <= 2 % of the mount",
               f"{size_cell(engine)} = {engine / mount:.2%} of {size_cell(mount)}",
               engine <= TARGET_ENGINE_SHARE * mount),
        Target(f"{store}, big: 1 MiB added, time <= 0.35x the first package",
               f"{added.seconds:.2f} s / {first.seconds:.2f} s = {ratio:.2f}x",
               ratio <= TARGET_TIME_RATIO),
    ]  # fmt: skip


@dataclass
class Run:
    """Everything the report needs."""

    argv: list[str]
    rows: list[Row] = field(default_factory=list)
    corpora: dict[str, str] = field(default_factory=dict)
    machine: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # "incremental", "baseline" (--baseline: incremental = false everywhere) or "absent".
    mode: str = "incremental"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def report(run: Run) -> str:
    summaries = summarize(run.rows)
    stores = list(dict.fromkeys(r.store for r in run.rows))
    found = targets(summaries, stores)
    lines = [
        "## Incremental packaging",
        "",
        f"Generated by `python -m bench.incremental` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
        f" Every number below comes from that run, which took {run.seconds / 60:.1f} min.",
        "",
        "```sh",
        " ".join(["python -m bench.incremental", *map(shlex.quote, run.argv)]),
        "```",
        "",
        *_machine_lines(run),
        *_method_lines(run),
        "",
        *table(summaries, [s.key for s in SCENARIOS]),
        "",
        "Fetch against re-read, once per store: the many-small corpus, after its sequence, "
        "gets two more changes of 1 % of its files, each file rewritten with "
        f"{human(PAIR_FILE)} of new data (more than the {human(SMALL_FILE)} up to which the "
        "scan keeps a changed file, so the delta's bytes must come from the engine), each "
        "repackaged against the image before it, one with `delta_fetch_limit = 100000` "
        "(the changed files fetched one by one through the archive API) and one with "
        "`delta_fetch_limit = 0` (the mounts re-read once, filtered), in alternating order "
        "from round to round.",
        "",
        *pair_table(summaries),
        "",
        *pair_verdicts(summaries, stores),
        "### Targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        *[f"| {t.name} | {t.measured} | {met(t.ok)} |" for t in found],
        "",
        "### Problems during the run",
        "",
        *([f"- {note}" for note in run.notes] or ["- none"]),
        "",
    ]
    return "\n".join(lines)


def _machine_lines(run: Run) -> list[str]:
    lines = ["| store | dockerd | storage driver | data root (host path) |", "|" + " --- |" * 4]
    for store, facts in run.machine.items():
        values = dict(facts)
        lines.append(
            f"| {store} | {values.get('dockerd', '?')} | {values.get('driver', '?')} | "
            f"`{values.get('data root', '?')}` |"
        )
    return [
        f"Machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, python "
        f"{sys.version.split()[0]}.",
        "",
        *lines,
        "",
        "Corpora (each a fresh temp dir per store and round, bind-mounted at "
        f"`{MOUNT}` into a running busybox container, `--network none`):",
        "",
        *[f"- **{name}**: {text}" for name, text in run.corpora.items()],
        "",
        "What the changes did, in the first round of the first store:",
        "",
        *[
            f"- {r.corpus}, {STEP_TITLES[r.step]}: {r.change}"
            for r in run.rows
            if r.store == run.rows[0].store and r.round == 0 and r.step != "first"
        ],
        "",
    ]


def _method_lines(run: Run) -> list[str]:
    modes = {
        "incremental": [],
        "baseline": [
            "**Baseline run (`--baseline`): every package below, the measured ones too, has "
            "`incremental = false`**: the layout before incremental packaging, for comparison. "
            "There is no fetch against re-read pair.",
            "",
        ],
        "absent": [
            "**This kegpackd has no incremental packaging** (its config refuses "
            "`packaging.incremental`): every package below is a full one, and the job result "
            "has no `mounts_layer*` or `delta_source` (n/a).",
            "",
        ],
    }
    return [
        *modes[run.mode],
        "Each row is one `kegpackd package --result FILE` run, pushed to the store's local "
        "registry, after the change it names (the changes accumulate, in this order, on one "
        "source container and one repository; the previous images stay). Columns:",
        "",
        "- **median s**: wall time from the process's start to its exit, plus a `sync` (a "
        "`sync` also ends the change before it); median over the rounds. **vs first**: against "
        "the first package of the same corpus and store.",
        "- **engine data root +**: growth of `du -sbx` of the engine's data root across the "
        "run (read again each second until two reads agree, as the containerd store collects "
        "removed content in the background). It is what stays on the engine's disk, not what "
        "the engine wrote in passing (a load's temporary copy).",
        "- **registry +**: growth of `du -sb` of the registry's storage directory: what the "
        "push sent, blobs, manifest and links.",
        "- **layers**: `RootFS.Layers` of the image; layer (`new`: layer data was loaded, "
        "`reused`: only a config), mounts_layer, mounts_layer_bytes and delta_source come from "
        "the job result (n/a: not reported).",
        "- **tree vs full package**: both images' filesystems (`docker create` + `docker "
        "export`) compared entry by entry: type, mode, owner, size, content sha256, link "
        "target, mtime and xattrs (the mtimes of the init layer's entries, which `docker "
        "create` makes, excepted).",
    ]


# ---------------------------------------------------------------- the run


def feature_present() -> bool:
    """Whether this kegpackd knows incremental packaging (its config accepts the keys)."""
    try:
        parse_config({"packaging": {"incremental": True, "delta_fetch_limit": 0}})
    except ConfigError:
        return False
    return True


def write_configs(folder: Path, registry: str, mode: str) -> dict[str, Path]:
    """The config files of an incremental package, a full one and a re-reading one.

    ``mode``: "incremental"; "baseline" (every package full, also the measured ones); or
    "absent" (a kegpackd without the feature, whose config refuses its keys).
    """
    base = (
        f'[registries]\nallowed = ["{registry}"]\n'
        f'[daemon]\nstate_dir = "{folder / "state"}"\n[log]\nlevel = "info"\n'
    )
    packaging = {
        "incremental": "incremental = true\n",
        "full": "incremental = false\n",
        "reread": "incremental = true\ndelta_fetch_limit = 0\n",
        "fetch": "incremental = true\ndelta_fetch_limit = 100000\n",
    }
    if mode == "baseline":
        packaging = dict.fromkeys(packaging, "incremental = false\n")
    configs: dict[str, Path] = {}
    for name, keys in packaging.items():
        path = folder / f"{name}.toml"
        path.write_text(f"[packaging]\n{'' if mode == 'absent' else keys}{base}")
        configs[name] = path
    return configs


@dataclass
class Bench:
    """One store's part of the run."""

    run: Run
    store: Store
    args: argparse.Namespace
    place: Place
    docker: Docker
    configs: dict[str, Path]
    work: Path

    def corpus(self, name: str, rnd: int) -> None:
        root = self.work / f"{name}-r{rnd}"
        print(f"bench: {self.store.key}: {name} round {rnd + 1}: corpus", file=sys.stderr)
        self.run.corpora[name] = make_corpus(name, root, self.args)
        source = self.docker.container(
            f"{self.docker.repo}-{name}-r{rnd}", "--pull", "never", "-v", f"{root}:{MOUNT}"
        )
        repository = f"{self.place.registry}/{self.docker.repo}/{name}-r{rnd}"
        made: list[str] = []
        try:
            change = Change(self.docker, source, name, root, seed=rnd * 100)
            for scenario in SCENARIOS:
                made.append(self.step(change, scenario, repository, rnd))
            if name == PAIR_CORPUS and self.run.mode == "incremental":
                pair = FETCH_PAIR if rnd % 2 == 0 else FETCH_PAIR[::-1]
                for scenario in pair:
                    made.append(self.step(change, scenario, repository, rnd))
        finally:
            self.docker.rm(source)
            self.docker.rmi(*reversed(made))
            subprocess.run(["rm", "-rf", "--", str(root)], check=False)

    def step(self, change: Change, scenario: Scenario, repository: str, rnd: int) -> str:
        """Change the source, repackage it (measured), check it against a full package."""
        print(f"bench: {self.store.key}: {change.corpus}: {scenario.title}", file=sys.stderr)
        what = change.apply(scenario.key)
        sync()
        pair = {"change-reread": "reread", "change-fetch": "fetch"}
        config = self.configs[pair.get(scenario.key, "incremental")]
        image = f"{repository}:{scenario.key}"
        self.docker.images.append(image)
        outcome = measured(
            self.place,
            lambda: package(change.source, repository, scenario.key, config, True),
        )
        layers = int(self.docker("image", "inspect", "-f", "{{len .RootFS.Layers}}", image))
        tree = self.check(change.source, image, scenario.key, rnd)
        job = {k: outcome.job.get(k) for k in RESULT_FIELDS}
        job["stages"] = outcome.job.get("stages", {})
        self.run.rows.append(Row(
            self.store.key, change.corpus, scenario.key, rnd,
            outcome.seconds, outcome.engine_bytes, outcome.registry_bytes,
            corpus_bytes(change.root), layers, job, tree, what,
        ))  # fmt: skip
        if not tree.startswith("same"):
            where = f"{self.store.key}, {change.corpus} round {rnd + 1}"
            self.run.notes.append(f"{where}, {scenario.title}: {tree}")
            print(f"bench: TREE MISMATCH: {self.run.notes[-1]}", file=sys.stderr)
        return image

    def check(self, source: str, image: str, tag: str, rnd: int) -> str:
        """How ``image``'s tree compares with a full package's of the same state (made here
        with incremental = false, in another repository, not pushed, removed after). Its time
        is not reported: it runs with a warm cache and may reuse the layers of ``image``."""
        repository = f"{self.docker.repo}/full-r{rnd}"
        full = f"{repository}:{tag}"
        self.docker.images.append(full)
        try:
            package(source, repository, tag, self.configs["full"], False)
            ours, theirs = image_tree(self.docker, image), image_tree(self.docker, full)
            found = differences(ours, theirs, ("the incremental image", "the full image"))
            return verdict(found, len(ours.nodes))
        finally:
            self.docker.rmi(full)


def testenv_vars(store: Store, args: argparse.Namespace) -> dict[str, str]:
    state = args.testenv_dir if store.key == "graph" else f"{args.testenv_dir}c"
    return {
        **os.environ,
        "KEGPACK_TESTENV_DIR": state,
        "KEGPACK_ENGINE": store.engine,
        "KEGPACK_REGISTRY_PORT": str(args.registry_port),
        "KEGPACK_AUTH_REGISTRY_PORT": str(args.auth_registry_port),
        "KEGPACK_TLS_PORT": str(args.tls_port),
    }


@contextmanager
def engine_up(store: Store, args: argparse.Namespace, notes: list[str]) -> Iterator[TestEnv]:
    """The store's private engine and registries, up for the block, down after it."""
    env = testenv_vars(store, args)
    print(f"bench: {store.key}: scripts/testenv.sh up", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            [str(TESTENV_SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=900,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"testenv.sh up ({store.key}) failed: {done.stderr.strip()}")
        yield parse_testenv(done.stdout)
    finally:
        if not args.keep_up:
            down = subprocess.run(
                [str(TESTENV_SCRIPT), "down"], env=env, capture_output=True, text=True,
                timeout=300, check=False,
            )  # fmt: skip
            if down.returncode != 0:
                notes.append(f"testenv.sh down ({store.key}) failed: {down.stderr.strip()}")


def forget_pushes(testenv: TestEnv, docker: Docker, notes: list[str]) -> None:
    """Remove this run's repositories from the stopped registry and collect their blobs."""
    storage = testenv.state_dir / "registry-open"
    ours = storage / "docker" / "registry" / "v2" / "repositories" / docker.repo
    subprocess.run(["rm", "-rf", "--", str(ours)], check=False)
    collect = subprocess.run(
        ["docker-registry", "garbage-collect", str(testenv.state_dir / "registry-open.yml")],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if collect.returncode != 0:
        notes.append(f"registry garbage-collect failed: {collect.stderr.strip()[-300:]}")


def bench_store(run: Run, store: Store, args: argparse.Namespace, work: Path) -> None:
    """Every round of every corpus on one store; its pushes forgotten after its engine is down."""
    docker = Docker(uuid.uuid4().hex[:8])
    testenv: TestEnv | None = None
    try:
        with engine_up(store, args, run.notes) as testenv:
            os.environ["DOCKER_HOST"] = testenv.docker_host
            try:
                bench = _bench(run, store, args, work / store.key, testenv, docker)
                for rnd in range(args.rounds):
                    turn = rnd % len(args.corpora)
                    for name in args.corpora[turn:] + args.corpora[:turn]:
                        _attempt(run, bench, name, rnd)
            finally:
                docker.cleanup()
    finally:
        if testenv is not None and not args.keep_up:
            forget_pushes(testenv, docker, run.notes)


def _bench(
    run: Run, store: Store, args: argparse.Namespace, folder: Path, testenv: TestEnv,
    docker: Docker,
) -> Bench:  # fmt: skip
    folder.mkdir()
    place = Place(testenv.state_dir / "data", testenv.registry, testenv.state_dir / "registry-open")
    run.machine[store.key] = [
        ("dockerd", docker("version", "--format", "{{.Server.Version}}")),
        ("driver", docker("info", "--format", "{{.Driver}}")),
        ("data root", str(place.data_root)),
    ]
    configs = write_configs(folder, testenv.registry, run.mode)
    return Bench(run, store, args, place, docker, configs, folder)


def _attempt(run: Run, bench: Bench, corpus: str, rnd: int) -> None:
    """One corpus's round; a failure is noted in the report, and the run goes on."""
    try:
        bench.corpus(corpus, rnd)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        where = f"{bench.store.key}, {corpus} round {rnd + 1}"
        run.notes.append(f"{where}: failed, its remaining rows are missing: {exc}")
        print(f"bench: {run.notes[-1]}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default="256M", help="bulk: 4 files")
    parser.add_argument("--small-files", type=int, default=15_000, help="many-small: files")
    parser.add_argument("--big", type=parse_size, default="1G", help="big: half 1 file, half small")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stores", default="graph,containerd")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--testenv-dir", default="/tmp/kb23", help="containerd's: this + 'c'")
    parser.add_argument("--registry-port", type=int, default=5300)
    parser.add_argument("--auth-registry-port", type=int, default=5301)
    parser.add_argument("--tls-port", type=int, default=2676)
    parser.add_argument("--keep-up", action="store_true", help="leave the engines running")
    parser.add_argument(
        "--baseline", action="store_true", help="incremental = false for every package"
    )
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS-incremental.md")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.stores = [STORES[s] for s in args.stores.split(",")]
    args.corpora = [c for c in args.corpora.split(",") if c]
    if unknown := set(args.corpora) - set(CORPORA):
        parser.error(f"unknown corpora {sorted(unknown)}; choose from {', '.join(CORPORA)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_term(signum: int, frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    run = Run(args.argv, mode="baseline" if args.baseline else "incremental")
    if not feature_present():
        run.mode = "absent"
        print("bench: this kegpackd has no incremental packaging: every package is full",
              file=sys.stderr)  # fmt: skip
    # Under /tmp: the containerd flavour's engine sees the host's /tmp, and only that.
    work = Path(tempfile.mkdtemp(prefix="kbinc-", dir="/tmp"))
    started = time.monotonic()
    try:
        for store in args.stores:
            bench_store(run, store, args, work)
    except (KeyboardInterrupt, Interrupted):
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        subprocess.run(["rm", "-rf", "--", str(work)], check=False)
    run.seconds = time.monotonic() - started
    text = report(run)
    args.output.write_text(text)
    print(text)
    print(f"bench: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
