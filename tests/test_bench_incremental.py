"""The incremental benchmark's pure parts: scenarios, changes, tree comparison, report."""

from __future__ import annotations

import io
import tarfile
import tomllib
from pathlib import Path

import pytest

from bench.incremental import (
    FETCH_PAIR,
    SCENARIOS,
    Change,
    Row,
    Run,
    change_count,
    corpus_files,
    pair_verdicts,
    parse_args,
    pick,
    report,
    summarize,
    table,
    targets,
    verdict,
    write_configs,
)
from bench.run import MIB, Docker
from kegpackd.config import parse_config

Spec = tuple[str, bytes | None, dict[str, object]]


def archive(*entries: Spec) -> io.BytesIO:
    """A tar of (name, content or None for a directory, header fields) entries."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, fields in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode = len(content), 0o644
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, None if content is None else io.BytesIO(content))
    buffer.seek(0)
    return buffer


def row(step: str, seconds: float, **fields: object) -> Row:
    values: dict[str, object] = {
        "store": "graph", "corpus": "big", "step": step, "round": 0, "seconds": seconds,
        "engine_bytes": MIB, "registry_bytes": MIB, "mount_bytes": 1024 * MIB, "layers": 4,
        "job": {"mounts_layer": "delta", "mounts_layer_bytes": MIB, "delta_source": "fetch"},
        "tree": "same (10 entries)", "change": "nothing",
    }  # fmt: skip
    values.update(fields)
    return Row(**values)  # type: ignore[arg-type]


def test_the_scenarios_are_the_issues_repackages_in_order() -> None:
    """The first package, then the five changes issue 23 names, each with its own key."""
    assert [s.key for s in SCENARIOS] == ["first", "nothing", "add", "change", "delete", "outside"]
    keys = [s.key for s in (*SCENARIOS, *FETCH_PAIR)]
    assert len(set(keys)) == len(keys)


def test_same_trees_say_so_in_their_cell() -> None:
    """The table cell of a passed check says the trees are the same, and how big."""
    assert verdict([], 3) == "same (3 entries)"


def test_a_mismatch_is_loud_in_its_cell() -> None:
    """The table cell of a failed check says MISMATCH in bold and shows the first lines."""
    cell = verdict(["data/a: mode 420 != 384", "data/b: only in the full image", "x"], 9)
    assert cell.startswith("**MISMATCH** (3: data/a: mode 420 != 384; data/b:")


def test_changes_pick_the_same_files_for_the_same_seed(tmp_path: Path) -> None:
    """1 % is at least one file; the picks repeat; 1 000 deletions take all when fewer."""
    for index in range(50):
        (tmp_path / f"f{index:02d}").write_bytes(b"x" * 10)
    files = corpus_files(tmp_path)
    assert change_count(50) == 1
    assert change_count(15_000) == 150
    assert pick(files, 5, 1) == pick(files, 5, 1)
    assert len(pick(files, 1000, 1)) == 50


def test_change_applies_each_scenario_to_the_corpus(tmp_path: Path) -> None:
    """Add writes 1 MiB, change rewrites in place, delete removes files (no engine needed)."""
    for index in range(200):
        (tmp_path / f"f{index:03d}").write_bytes(b"\0" * 100)
    change = Change(Docker("t"), "src", "many-small", tmp_path, seed=0)
    assert change.apply("nothing") == "nothing"
    assert change.apply("add").startswith("added ")
    assert len(corpus_files(tmp_path)) == 201
    assert sum(p.stat().st_size for p in corpus_files(tmp_path)) == 200 * 100 + MIB
    before = {p: p.read_bytes() for p in corpus_files(tmp_path)}
    assert change.apply("change") == "rewrote 3 of 201 files"
    rewritten = [p for p, content in before.items() if p.read_bytes() != content]
    assert len(rewritten) == 3
    assert all(p.stat().st_size == len(before[p]) for p in rewritten)
    assert change.apply("change-fetch") == "rewrote 3 of 201 files with 128.0 KiB each"
    assert sorted(p.stat().st_size for p in corpus_files(tmp_path))[-4:-1] == [128 << 10] * 3
    assert change.apply("delete") == "deleted 201 of 201 files"
    assert corpus_files(tmp_path) == []


def test_table_has_a_line_per_step_with_medians_and_the_ratio_to_the_first() -> None:
    """Medians over the rounds, every round's time, and the step against the first package."""
    rows = [row("first", 10.0), row("add", 2.0), row("add", 4.0, round=1), row("add", 3.0)]
    lines = table(summarize(rows), ["first", "add"])
    assert len(lines) == 4
    added = lines[3].split(" | ")
    assert added[2:6] == ["one 1 MiB file added", "3.00", "2.00, 4.00, 3.00", "0.30x"]
    assert lines[3].endswith("| 4 | n/a | delta | 1.0 MiB | fetch | same, all 3 rounds |")


def test_the_targets_pass_and_fail_on_their_thresholds() -> None:
    """Registry <= 2 MiB, data root <= 2 % of the mount, time <= 0.35x, nothing sent outside."""
    rows = [
        row("first", 10.0),
        row("add", 3.0),
        row("outside", 1.0, job={"mounts_layer": "none", "mounts_layer_bytes": 0}),
    ]
    found = {t.name: t.ok for t in targets(summarize(rows), ["graph"])}
    assert all(found.values()), found
    rows[1] = row("add", 4.0, registry_bytes=3 * MIB, engine_bytes=30 * MIB)
    rows[2] = row("outside", 1.0, tree="**MISMATCH** (1: x)")
    missed = [t.name for t in targets(summarize(rows), ["graph"]) if not t.ok]
    assert len(missed) == 5


def test_the_report_names_the_command_and_every_section() -> None:
    """The command line, the main table, the fetch pair's table, targets and problems."""
    run = Run(["--big", "64M"], [row("first", 10.0), row("change-reread", 1.0)])
    run.notes.append("something odd")
    text = report(run)
    assert "python -m bench.incremental --big 64M" in text
    for heading in ("| store | corpus | repackage after |", "| store | delta_fetch_limit |",
                    "### Targets", "- something odd"):  # fmt: skip
        assert heading in text
    assert "| graph | 0 (re-read) | fetch | 1.00 |" in text


def test_the_configs_parse_and_differ_only_in_the_incremental_keys(tmp_path: Path) -> None:
    """kegpackd's own loader accepts each config; baseline turns incremental off everywhere."""
    configs = write_configs(tmp_path, "127.0.0.1:5300", "incremental")
    loaded = {n: parse_config(tomllib.loads(p.read_text())) for n, p in configs.items()}
    assert loaded["incremental"].packaging.incremental
    assert not loaded["full"].packaging.incremental
    assert loaded["reread"].packaging.delta_fetch_limit == 0
    assert all(c.registries.allowed == ("127.0.0.1:5300",) for c in loaded.values())
    baseline = write_configs(tmp_path, "127.0.0.1:5300", "baseline")
    assert all("incremental = false" in p.read_text() for p in baseline.values())
    absent = write_configs(tmp_path, "127.0.0.1:5300", "absent")
    assert not any("incremental" in p.read_text() for p in absent.values())


def test_arguments_default_to_the_issues_run_and_refuse_unknown_corpora() -> None:
    """A 1 GiB big corpus, 15 000 small files, one round, both stores; a typo is an error."""
    args = parse_args([])
    assert (args.big, args.small_files, args.rounds) == (1 << 30, 15_000, 1)
    assert [s.key for s in args.stores] == ["graph", "containerd"]
    with pytest.raises(SystemExit):
        parse_args(["--corpora", "bulk,huge"])


def test_the_pair_verdict_names_the_faster_way() -> None:
    """Fetch against re-read: the faster one first, and how much longer the other took."""
    rows = [row("change-fetch", 1.0, corpus="many-small"),
            row("change-reread", 3.0, corpus="many-small",
                job={"mounts_layer": "delta", "delta_source": "reread"})]  # fmt: skip
    assert pair_verdicts(summarize(rows), ["graph"]) == [
        "- graph: fetch was faster, 1.00 s (fetch) against 3.00 s (re-read): re-read took "
        "3.00x as long.",
        "",
    ]


def test_a_pair_that_did_not_fetch_and_reread_says_so() -> None:
    """When the scan kept every byte (delta_source scan), the pair compares nothing."""
    scan = {"mounts_layer": "delta", "delta_source": "scan"}
    rows = [row("change-fetch", 1.0, corpus="many-small", job=scan),
            row("change-reread", 1.0, corpus="many-small", job=scan)]  # fmt: skip
    assert (
        "**Not a comparison of fetch with re-read**" in pair_verdicts(summarize(rows), ["graph"])[1]
    )


def test_a_package_without_a_mounts_layer_kind_sends_no_known_bytes() -> None:
    """With incremental = false the result's 0 bytes mean nothing: the target is missed, n/a."""
    rows = [row("outside", 1.0, job={"mounts_layer": None, "mounts_layer_bytes": 0})]
    (outside,) = [t for t in targets(summarize(rows), ["graph"]) if "outside" in t.name]
    assert (outside.measured, outside.ok) == ("n/a", False)
