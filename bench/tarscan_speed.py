"""Throughput of TarScanner on a ~200 MiB archive fed in 64 KiB chunks, in the layer mode the
pipeline runs (a mount at /srv/app).

Half the archive is one big file (the data path: chunks passed on as they are), half many
1-16 KiB files (the per-header path: each header renamed into the layer); both run without
rules and with a rule that drops some files.
Run: ``python bench/tarscan_speed.py [total MiB]``.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tarfile
import time

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.archive.tarscan import TarScanner

CHUNK = 64 * 1024
MIB = 1 << 20


def build(total: int) -> tuple[bytes, int, int]:
    """The archive, the offset where the small files begin, and how many there are."""
    rng = random.Random(1)
    big = os.urandom(total // 2)
    small: list[tuple[str, bytes]] = []
    pool = os.urandom(16 * 1024)
    left = total // 2
    while left > 0:
        size = rng.randint(1024, 16 * 1024)
        ext = ".log" if rng.random() < 0.25 else ".dat"
        small.append((f"app/d{len(small) // 100:04d}/f{len(small):06d}{ext}", pool[:size]))
        left -= size
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_dir("app"))
        info = tarfile.TarInfo("app/big.bin")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
        split = buf.tell()
        seen: set[str] = set()
        for name, data in small:
            parent = name.rpartition("/")[0]
            if parent not in seen:
                seen.add(parent)
                tar.addfile(_dir(parent))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), split, len(small)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def run(data: bytes, rules: ExcludeRules | None, *, complete: bool = True) -> tuple[float, int]:
    """Seconds to scan ``data`` and the number of output bytes."""
    view = memoryview(data)
    chunks = [view[i : i + CHUNK].tobytes() for i in range(0, len(data), CHUNK)]
    scanner = TarScanner("app", rules, layer_prefix="srv/")
    out = 0
    began = time.perf_counter()
    for chunk in chunks:
        out += len(scanner.feed(chunk))
    if complete:
        out += len(scanner.finish())
    return time.perf_counter() - began, out


def main() -> None:
    total = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 200 * MIB
    began = time.perf_counter()
    whole, split, files = build(total)
    print(
        f"archive: {len(whole) / MIB:.0f} MiB, {files} small files "
        f"(built in {time.perf_counter() - began:.1f} s)"
    )
    logs = ExcludeRules.parse(["**/*.log"], "bench")
    cases = [
        ("whole archive, no rules", whole, None, True),
        ("whole archive, exclude **/*.log", whole, logs, True),
        ("big-file half only, no rules", whole[:split], None, False),
        ("small-file half only, no rules", whole[split:], None, True),
        ("small-file half only, exclude **/*.log", whole[split:], logs, True),
    ]
    for label, data, rules, complete in cases:
        best = min((run(data, rules, complete=complete) for _ in range(3)), key=lambda r: r[0])
        seconds, out = best
        print(
            f"{label:36s} {len(data) / MIB / seconds:8.0f} MiB/s "
            f"({seconds:.3f} s, out {out / MIB:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
