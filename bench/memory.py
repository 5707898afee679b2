"""Item 7: peak RSS of a load of a large JSON-lines file, measured in a fresh process.

The parent writes the file and seeds the parents; the child (`python -m bench.memory`) reads the
file a line at a time, hands the engine batches of 1,000 decoded records, drops each report, and
prints its peak RSS (after imports, and at the end) as JSON.

The peak is the kernel's high-water mark of the child's own memory (`VmHWM` in
/proc/self/status). `ru_maxrss` is printed too, but it is not the figure: Linux carries the
peak of the forking parent across `exec`, so a child of the benchmark (which holds 100,000-record
lists) starts with the parent's ~600 MB already in its `ru_maxrss`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from bench import records
from bench.databases import ENTITY, TENANT, Databases, log
from bench.measure import Measurement
from bench.settings import Sizes

ROOT = Path(__file__).resolve().parent.parent


def write_file(path: Path, sizes: Sizes) -> None:
    encode = msgspec.json.Encoder().encode
    with path.open("wb") as out:
        for record in records.iter_enrollments(sizes.world, sizes.memory_records):
            out.write(encode(record))
            out.write(b"\n")


def peak_rss_mb() -> float:
    """This process's own peak resident memory, in MB (VmHWM; ru_maxrss where there is no /proc)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return ru_maxrss_mb()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """getrusage's ru_maxrss (KiB on Linux), which includes the peak inherited across exec."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    engine = await databases.engine("postgresql", "memory", seed=sizes.world)
    path = databases.workdir / "enrollments.jsonl"
    log(f"memory: writing {sizes.memory_records:,} records to {path.name}")
    write_file(path, sizes)
    log(f"memory: {path.stat().st_size / 2**20:,.0f} MB written; loading it in a child process")
    url, options = databases.engine_url("postgresql", "memory")
    try:
        child = subprocess.run(
            [sys.executable, "-m", "bench.memory", str(path), url, json.dumps(options), str(sizes.memory_batch)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            timeout=sizes.timeout,
            check=False,
        )
    finally:
        path.unlink(missing_ok=True)
    if child.returncode != 0:
        raise RuntimeError(f"the memory child failed with exit code {child.returncode} (its error is above)")
    figures = json.loads(child.stdout)
    if figures["counts"] != {"NEW": sizes.memory_records}:
        raise RuntimeError(f"memory load: unexpected statuses {figures['counts']}")
    await engine.close()
    return [
        Measurement(
            "memory",
            "postgresql",
            "file load",
            sizes.memory_batch,
            sizes.memory_records,
            value=figures["peak_rss_mb"],
            unit="MB peak RSS",
            note=f"{figures['records_per_second']:,.0f} rec/s; {figures['baseline_rss_mb']:.0f} MB after imports; "
            f"ru_maxrss {figures['ru_maxrss_mb']:.0f} MB (includes the parent's peak)",
        )
    ]


async def load_file(path: Path, url: str, options: dict[str, Any], batch: int) -> dict[str, object]:
    from syncengine.descriptors import load_catalog
    from syncengine.engine import SyncEngine
    from syncengine.store import open_database

    engine = SyncEngine(load_catalog(ROOT / "entities.yaml"), open_database(url, **options))
    baseline = peak_rss_mb()
    decode = msgspec.json.Decoder().decode
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    chunk = []
    with path.open("rb") as lines:
        for line in lines:
            chunk.append(decode(line))
            if len(chunk) == batch:
                counts.update((await engine.sync(TENANT, ENTITY, chunk)).summary)
                chunk = []
                loaded = sum(counts.values())
                if loaded % 100_000 == 0:
                    rate = loaded / (time.perf_counter() - start)
                    log(f"memory: {loaded:,} loaded, {rate:,.0f} rec/s, peak RSS {peak_rss_mb():.0f} MB")
        if chunk:
            counts.update((await engine.sync(TENANT, ENTITY, chunk)).summary)
    seconds = time.perf_counter() - start
    await engine.close()
    total = sum(counts.values())
    return {
        "counts": {status: n for status, n in counts.items() if n},
        "seconds": seconds,
        "records_per_second": total / seconds if seconds else 0.0,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": ru_maxrss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description="load a JSON-lines file, print peak RSS"
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("url")
    parser.add_argument("options", help="engine options as JSON")
    parser.add_argument("batch", type=int)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(load_file(args.file, args.url, json.loads(args.options), args.batch))))


if __name__ == "__main__":
    main()
