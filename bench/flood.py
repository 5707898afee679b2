"""Item 13 of issue 13: what one tenant's flood does to another tenant's single-record writes.

    python -m bench.flood                # about a minute
    python -m bench.flood --smoke        # tiny counts, a few seconds: checks the harness

`syncengine serve` (one process) runs on a fresh PostgreSQL database with two tenants:

- the victim, `other`, sends single-record writes (one program a request, each a new record) on a
  fixed schedule (open loop, `victim_rate` a second), first alone, then during the flood;
- the flooder, `school`, sends dry runs of `flood_batch` enrollments as fast as
  `flood_connections` connections go (closed loop), the same bodies over and over, for
  `flood_seconds`, ignoring every 429, 503 and `Retry-After` it gets.

The figures are the victim's p50 and p99 latency (counted from each request's scheduled time,
so a slow answer is not hidden by a client that waits for it) alone and during the flood, the
HTTP statuses both tenants got, and the flood's throughput: records of its dry runs answered
200, a second. Traffic goes to 127.0.0.1 only, bounded in requests and
seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

from bench import records
from bench.databases import ENTITY, Databases, log
from bench.http import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    SYNCENGINE,
    HttpSizes,
    Server,
    _command,
    _environment,
    fresh_database,
    running,
)
from bench.measure import Measurement, figures_table
from bench.records import World
from bench.settings import SMOKE, Sizes

VICTIM = "other"
SCENARIO = "flood"


@dataclass(frozen=True)
class FloodSizes:
    flood_connections: int = 64
    flood_batch: int = 2_000
    flood_seconds: float = 20.0
    victim_rate: float = 20.0
    victim_seconds: float = 15.0
    victim_connections: int = 8
    world: World = field(default_factory=World)


FULL = FloodSizes()
SMOKE_FLOOD = FloodSizes(
    flood_connections=8,
    flood_batch=100,
    flood_seconds=3.0,
    victim_rate=20.0,
    victim_seconds=1.5,
    victim_connections=2,
    world=SMOKE.world,
)


def flood_sizes(sizes: Sizes) -> FloodSizes:
    return SMOKE_FLOOD if sizes.records <= SMOKE.records else replace(FULL, world=sizes.world)


async def _loadgen(server: Server, spec: dict[str, Any], bodies: Sequence[bytes], workdir: Path) -> dict[str, Any]:
    """Run bench/loadgen.py with `spec`; its result, whatever the statuses (they are the figures)."""
    stamp = uuid.uuid4().hex[:8]
    body_file, spec_file = workdir / f"flood-bodies-{stamp}.jsonl", workdir / f"flood-spec-{stamp}.json"
    body_file.write_bytes(b"".join(body + b"\n" for body in bodies))
    given: dict[str, Any] = {"port": server.port, "bodies": str(body_file), "grace": 30.0}
    spec = given | spec
    spec_file.write_text(json.dumps(spec))
    try:
        out = await _command(
            sys.executable, "-m", "bench.loadgen", str(spec_file),
            env=_environment(PYTHONPATH=str(ROOT)), timeout=spec["max_seconds"] + 90,
        )  # fmt: skip
    finally:
        body_file.unlink(missing_ok=True)
        spec_file.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(out)
    return result


def _victim_bodies(start: int, count: int) -> list[bytes]:
    programs = records.programs(World(programs=start + count))[start:]
    return [msgspec.json.encode({"data": [program]}) for program in programs]


async def _victim(server: Server, key: str, sizes: FloodSizes, workdir: Path, start: int) -> dict[str, Any]:
    count = max(1, int(sizes.victim_rate * sizes.victim_seconds))
    spec = {
        "path": "/v1/sync/programs",
        "headers": {"Authorization": f"Bearer {key}"},
        "connections": sizes.victim_connections,
        "mode": "open",
        "rate": sizes.victim_rate,
        "max_requests": count,
        "max_seconds": sizes.victim_seconds,
        "count": {"NEW": '"status":"NEW"'},
    }
    return await _loadgen(server, spec, _victim_bodies(start, count), workdir)


async def _flood(server: Server, sizes: FloodSizes, workdir: Path) -> dict[str, Any]:
    rows = records.enrollments(sizes.world, sizes.flood_batch * 4)
    bodies = [msgspec.json.encode({"data": chunk}) for chunk in records.batches(rows, sizes.flood_batch)]
    spec = {
        "path": f"/v1/sync/{ENTITY}?dry_run=true",
        "headers": server.headers,
        "connections": sizes.flood_connections,
        "mode": "closed",
        "repeat": True,
        "max_requests": 1_000_000,
        "max_seconds": sizes.flood_seconds,
    }
    return await _loadgen(server, spec, bodies, workdir)


def _statuses(result: dict[str, Any]) -> str:
    parts = [f"{status}: {count:,}" for status, count in result["statuses"].items()]
    if result["errors"]:
        parts.append(f"connection errors: {result['errors']}")
    return ", ".join(parts) or "none"


async def measure(postgres_url: str, sizes: FloodSizes, workdir: Path, prefix: str) -> list[Measurement]:
    http_sizes = HttpSizes(world=sizes.world, servers=("service",))
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database(postgres_url, f"{prefix}_flood"))
        server = await stack.enter_async_context(running("service", url, http_sizes, workdir))
        env = _environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ROOT / "entities.yaml"))
        key = (await _command(SYNCENGINE, "tenant", "add", VICTIM, env=env)).strip().splitlines()[-1]
        count = max(1, int(sizes.victim_rate * sizes.victim_seconds))
        log(f"flood: {VICTIM} alone, {sizes.victim_rate:g} single-record writes/s for {sizes.victim_seconds:g} s")
        await _victim(server, key, sizes, workdir, 0)  # warm-up: imports, prepared statements, pool
        alone = await _victim(server, key, sizes, workdir, count)
        log(
            f"flood: {sizes.flood_connections} connections of dry runs of {sizes.flood_batch:,} records for "
            f"{sizes.flood_seconds:g} s, {VICTIM}'s writes from the second second"
        )
        flood = asyncio.create_task(_flood(server, sizes, workdir))
        await asyncio.sleep(min(1.0, sizes.flood_seconds / 3))
        during = await _victim(server, key, sizes, workdir, 2 * count)
        flooded = await flood
    figures = []
    for case, result in (("alone", alone), ("during the flood", during)):
        note = f"{sizes.victim_rate:g} req/s open loop; {VICTIM}: {_statuses(result)}"
        if result is during:
            note += f"; flood by school: {_statuses(flooded)}"
        for quantile in ("p50", "p99"):
            figures.append(
                Measurement(
                    SCENARIO, "postgresql", f"{VICTIM}'s writes {quantile}, {case}", 1, result["completed"],
                    value=result["latency_ms"][quantile], unit="ms", note=note,
                )
            )  # fmt: skip
    done = flooded["statuses"].get("200", 0) * sizes.flood_batch
    figures.append(
        Measurement(
            SCENARIO, "postgresql", "school's flood, records dry-run (200s only)", sizes.flood_batch, done,
            seconds=[flooded["seconds"]], note=f"{sizes.flood_connections} connections, closed loop",
        )
    )  # fmt: skip
    return figures


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    """The scenario as `python -m bench` runs it."""
    return await measure(databases.postgres_url, flood_sizes(sizes), databases.workdir, databases.prefix)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import describe_machine

    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness, not the figures")
    parser.add_argument("--flood-connections", type=int)
    parser.add_argument("--flood-batch", type=int)
    parser.add_argument("--flood-seconds", type=float)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)
    sizes = SMOKE_FLOOD if args.smoke else FULL
    overrides = {
        "flood_connections": args.flood_connections,
        "flood_batch": args.flood_batch,
        "flood_seconds": args.flood_seconds,
    }
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-flood-") as workdir:
        prefix = f"bench_{uuid.uuid4().hex[:8]}"
        measurements = asyncio.run(measure(args.postgres_url, sizes, Path(workdir), prefix))
    print(f"## Flood figures ({'smoke run' if args.smoke else 'full run'}, {describe_machine()})\n")
    print(figures_table(measurements))
    print(f"\ntotal time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
