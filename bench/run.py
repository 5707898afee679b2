"""`python -m bench`: run the scenarios of issue 4 and print the figures and the targets.

    python -m bench                    # the full run (13-25 minutes on 2 cores)
    python -m bench --smoke            # tiny sizes, well under a minute: what CI runs
    python -m bench --only pipeline,limit --records 20000 --repeats 5

Progress goes to stderr; the tables (Markdown) go to stdout, and with `--json FILE` the raw
figures too. Each scenario gets its own PostgreSQL schema (or SQLite file), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench import backfill, baseline, delivery, flood, http, limit, memory, peer, pipeline, scale
from bench.databases import Databases, log
from bench.measure import Measurement, figures_table, targets, targets_table
from bench.settings import FULL, SMOKE, Sizes, sized
from syncengine.descriptors import load_catalog

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

Scenario = Callable[[Databases, Sizes], Awaitable[list[Measurement]]]

#: Scenarios in the order they run. `http` is items 2 and 3 of issue 4 (HTTP batches through
#: `syncengine serve` and single-record webhooks, against a minimal litestar endpoint); it also
#: runs on its own as `python -m bench.http`.
SCENARIOS: dict[str, Scenario] = {
    "pipeline": pipeline.run,
    "http": http.run,
    "baseline": baseline.run,
    "limit": limit.run,
    "scale": scale.run,
    "memory": memory.run,
    "peer": peer.run,
    "flood": flood.run,  # item 13 of issue 13: one tenant's flood against another's writes
    "delivery": delivery.run,  # issue 16: a school from the outbox to a Moodle fake, against the naive way
    "backfill": backfill.run,  # issue 17: a school from the Zoho fake into PostgreSQL, against the pipeline
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks the harness, not speed")
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})")
    parser.add_argument("--repeats", type=int, help="runs per figure; the table shows median, min and max")
    parser.add_argument("--records", type=int, help="records per pipeline run with batches >= 100, and per raw run")
    parser.add_argument("--single", type=int, help="records per pipeline run with batches of 1")
    parser.add_argument("--naive", type=int, help="records per naive-baseline run")
    parser.add_argument("--batches", help="comma-separated pipeline batch sizes (default 1,100,1000,5000)")
    parser.add_argument("--dialects", help="comma-separated: postgresql,sqlite")
    parser.add_argument("--scale-existing", help="comma-separated row counts already in the table")
    parser.add_argument("--scale-records", type=int, help="records added in the scale scenario")
    parser.add_argument("--memory-records", type=int, help="records in the file of the memory scenario")
    parser.add_argument("--dlt-records", type=int, help="records per dlt merge run")
    parser.add_argument("--dlt-loads", type=int, help="how many 100-record dlt loads")
    parser.add_argument("--timeout", type=float, help="seconds a scenario may take before it is abandoned")
    parser.add_argument("--postgres-url", default=os.environ.get("SYNCENGINE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    unknown = set(_split(args.only)) - set(SCENARIOS) if args.only else set()
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    return sized(
        SMOKE if args.smoke else FULL,
        repeats=args.repeats,
        records=args.records,
        single=args.single,
        naive=args.naive,
        batches=tuple(int(b) for b in _split(args.batches)) if args.batches else None,
        dialects=tuple(_split(args.dialects)) if args.dialects else None,
        scale_existing=tuple(int(n) for n in _split(args.scale_existing)) if args.scale_existing else None,
        scale_records=args.scale_records,
        memory_records=args.memory_records,
        dlt_records=args.dlt_records,
        dlt_loads=args.dlt_loads,
        timeout=args.timeout,
    )


async def run(args: argparse.Namespace) -> list[Measurement]:
    sizes = sizes_from(args)
    catalog = load_catalog(ROOT / "entities.yaml")
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-") as workdir:
        databases = Databases(catalog, args.postgres_url, Path(workdir))
        try:
            for name in _split(args.only) if args.only else SCENARIOS:
                started = time.perf_counter()
                log(f"scenario {name}: start")
                try:
                    measurements += await asyncio.wait_for(SCENARIOS[name](databases, sizes), sizes.timeout)
                except TimeoutError:
                    log(f"scenario {name}: abandoned after {sizes.timeout:.0f} s")
                    measurements.append(Measurement(name, "-", "timed out", None, 0, note=f"> {sizes.timeout:.0f} s"))
                log(f"scenario {name}: done in {time.perf_counter() - started:.1f} s")
        finally:
            await databases.drop_all()
    return measurements


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    measurements = asyncio.run(run(args))
    print(f"## Figures ({'smoke run' if args.smoke else 'full run'}, {describe_machine()})\n")
    print(figures_table(measurements))
    print("\n## Targets of issue 4 (ratios of figures from this run)\n")
    everything = targets(measurements) + http.targets(measurements) + delivery.targets(measurements)
    print(targets_table(everything + backfill.targets(measurements)))
    print(f"\ntotal time: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(m) | {"median": m.median} for m in measurements], indent=2))
    return 0


def describe_machine() -> str:
    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
