"""Issue 17's benchmark: a school backfilled from the Zoho fake (its own process, loopback) into PostgreSQL.

    python -m bench.backfill                  # 100,000 enrollments and their parents: a few minutes
    python -m bench.backfill --smoke          # a tiny school, seconds: checks the harness
    python -m bench.backfill fake --port N    # the fake as the scenario runs it

One run measures:

- **backfill**: `syncengine backfill --tenant school` (every entity, parents first) in a process of
  its own, from a fresh migrated database, against tests/zoho_fake.py serving the school (20
  programs, 100 teachers, 10,000 students, 500 classes, 100,000 enrollments; the other modules
  empty) in another process. The rate is the records over the backfill's own time (the sum of its
  summary's seconds: from its first Zoho call to its last commit; the process's wall time, with
  Python's start, is in the note). The fake counts its API calls and token requests; the backfill
  process's peak RSS is its VmHWM, read from /proc while it runs;
- **pipeline**: the same records, already in memory, through `engine.sync` in batches of 1,000
  (the backfill's batch), parents first, into another fresh database: the pipeline's own rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import records
from bench.databases import TENANT, Databases, check_loopback, log
from bench.delivery import School, peak_rss_mb, school_records
from bench.http import DEFAULT_POSTGRES_URL, ROOT, SYNCENGINE, _command, _environment, free_port, fresh_database
from bench.measure import Measurement, Target, figures_table, targets_table
from bench.settings import SMOKE, Sizes
from syncengine.backfill import api_names
from syncengine.descriptors import load_catalog
from syncengine.engine import SyncEngine
from syncengine.store import open_database

SCENARIO = "backfill"
#: The modules of entities.yaml, by entity; the school fills five, the rest are empty.
MODULES = {entity.name: entity.source for entity in load_catalog(ROOT / "entities.yaml")}
FULL = School(programs=20, teachers=100, students=10_000, classes=500, enrollments=100_000)
SMOKE_SCHOOL = School(programs=2, teachers=2, students=20, classes=4, enrollments=450)
BATCH = 1_000  # records per sync: the backfill's (5 pages of 200)


def school_for(sizes: Sizes) -> School:
    return SMOKE_SCHOOL if sizes.records <= SMOKE.records else FULL


# The Zoho fake, in a process of its own


def serve_fake(argv: Sequence[str]) -> None:
    """`python -m bench.backfill fake`: tests/zoho_fake.py serving the school, its list calls
    answered from records sorted and JSON-encoded once, at start-up: the fake's own list sorts
    every row of the module on each call and encodes each page, and on this machine's two cores
    its CPU would be taken from the backfill and PostgreSQL (a real Zoho's is not). Its tokens,
    calls and errors are the fake's. `GET /bench/stats` answers its counters."""
    from tests import zoho_fake

    parser = argparse.ArgumentParser(prog="python -m bench.backfill fake")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--school", required=True, help="programs,teachers,students,classes,enrollments")
    args = parser.parse_args(argv)
    school = School(*(int(n) for n in args.school.split(",")))

    class EncodedFake(zoho_fake.ZohoFake):
        """Lists as the fake does (fields, per_page, page_token, If-Modified-Since, id descending),
        each record's JSON encoded once: a page is its records' bytes joined."""

        encoded: dict[tuple[str, str | None, str], list[bytes]]
        offsets: dict[str, int]

        def _list(self, module: str, params: dict[str, str], since: str | None) -> tuple[int, dict[str, str], Any]:
            fields = params.get("fields", "")
            rows = self.encoded.get((module, since, fields))
            if rows is None:
                rows = self.encoded[(module, since, fields)] = encode(self.records[module], since, fields)
            per_page = int(params.get("per_page", "200"))
            token = params.get("page_token")
            if token is not None and token not in self.offsets:
                return 400, {}, zoho_fake.error("INVALID_DATA", "invalid page token", param_name="page_token")
            offset = 0 if token is None else self.offsets[token]
            chunk = rows[offset : offset + per_page]
            if not chunk:
                return 204, {}, None
            more = offset + per_page < len(rows)
            next_token = secrets.token_hex(12) if more else None
            if next_token is not None:
                self.offsets[next_token] = offset + per_page
            info = {"per_page": per_page, "count": len(chunk), "page": offset // per_page + 1, "sort_by": "id",
                    "sort_order": "desc", "more_records": more, "next_page_token": next_token}  # fmt: skip
            return 200, {}, b'{"data":[' + b",".join(chunk) + b'],"info":' + json.dumps(info).encode() + b"}"

    def encode(rows: list[dict[str, Any]], since: str | None, fields: str) -> list[bytes]:
        rows = sorted(zoho_fake.modified_since(rows, since), key=lambda r: int(r["id"]), reverse=True)
        return [json.dumps(zoho_fake.pick(row, fields or None)).encode() for row in rows]

    fake = EncodedFake()
    fake.encoded, fake.offsets = {}, {}
    for module in MODULES.values():
        fake.load(module, [])
    for entity, rows in school_records(school).items():
        fake.load(MODULES[entity], rows)
    for described in load_catalog(ROOT / "entities.yaml"):  # what the backfill asks for, before it asks
        fields = ",".join(api_names(described))
        fake.encoded[(described.source, None, fields)] = encode(fake.records[described.source], None, fields)

    class StatsHandler(zoho_fake.Handler):
        def setup(self) -> None:
            """No Nagle: http.server sends an answer's headers and body in two writes, and the
            second waited for the client's delayed ACK, 40 ms a page; a real server sends both at once."""
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def answer(self, status: int, headers: dict[str, str], body: Any) -> None:
            if not isinstance(body, bytes):
                super().answer(status, headers, body)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/bench/stats":
                stats = {"api_calls": fake.api_calls, "token_requests": fake.token_requests,
                         "tokens_granted": fake.tokens_granted}  # fmt: skip
                self.answer(200, {}, stats)
            else:
                super().do_GET()

    server = zoho_fake.FakeServer(fake, args.port)
    server.RequestHandlerClass = StatsHandler
    print(f"Zoho fake on {fake.url}: {school}", flush=True)
    threading.current_thread().name = "zoho-fake"
    server.serve_forever(0.05)


@contextlib.asynccontextmanager
async def fake_zoho(school: School, workdir: Path) -> AsyncIterator[str]:
    port = free_port()
    output = open(workdir / "zoho-fake.log", "wb")
    counts = ",".join(str(n) for n in school.counts())
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.backfill", "fake", "--port", str(port), "--school", counts,
        cwd=ROOT, env=_environment(PYTHONPATH=str(ROOT)), stdout=output, stderr=output,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Zoho fake did not start: {(workdir / 'zoho-fake.log').read_text()[-2000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        output.close()


# The backfill, in a process of its own


@dataclass
class Backfilled:
    records: int
    seconds: float  # the backfill's own (its summary's)
    wall: float  # the process's, start to exit
    peak_rss_mb: float
    stats: dict[str, Any]
    counts: dict[str, int]


async def fake_stats(zoho: str) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        stats: dict[str, int] = (await client.get(zoho + "/bench/stats", timeout=60)).json()
    return stats


async def run_backfill(postgres_url: str, zoho: str, school: School, workdir: Path) -> Backfilled:
    """`syncengine backfill` of the school from the fake at `zoho` into a fresh database."""
    async with contextlib.AsyncExitStack() as stack:
        before = await fake_stats(zoho)
        url = await stack.enter_async_context(fresh_database(postgres_url, "bench_backfill"))
        env = _environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ROOT / "entities.yaml"))
        await _command(SYNCENGINE, "tenant", "add", TENANT, env=env)
        from tests import zoho_fake

        (workdir / "secret").write_text(zoho_fake.CLIENT_SECRET)
        (workdir / "refresh").write_text(zoho_fake.REFRESH_TOKEN)
        await _command(
            SYNCENGINE, "tenant", "zoho", TENANT, "--dc", "eu", "--client-id", zoho_fake.CLIENT_ID,
            "--client-secret-file", str(workdir / "secret"), "--refresh-token-file", str(workdir / "refresh"),
            "--accounts-url", zoho, "--api-url", zoho, "--no-check", env=env,
        )  # fmt: skip
        log(f"backfill: {school} records from the fake into PostgreSQL")
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            SYNCENGINE, "backfill", "--tenant", TENANT, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=open(workdir / "backfill.log", "wb"),
        )  # fmt: skip
        peak = 0.0
        output = asyncio.create_task(process.stdout.read() if process.stdout else asyncio.sleep(0, b""))
        while process.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):
                peak = max(peak, peak_rss_mb(process.pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.2)
        wall = time.monotonic() - started
        printed = (await output).decode()
        if process.returncode != 0:
            raise RuntimeError(f"the backfill failed: {(workdir / 'backfill.log').read_text()[-3000:]}")
        counts, seconds = _summary(printed)
        stats = {name: n - before[name] for name, n in (await fake_stats(zoho)).items()}
        log(f"backfill: {sum(counts.values()):,} records in {seconds:.1f} s ({wall:.1f} s wall), {stats}")
        return Backfilled(school.records, seconds, wall, peak, stats, counts)


def _summary(printed: str) -> tuple[dict[str, int], float]:
    """The statuses and the seconds of the backfill's summary table."""
    lines = printed.splitlines()
    head = lines[0].split()
    counts: dict[str, int] = {}
    seconds = 0.0
    for line in lines[1:]:
        cells = line.split()
        if len(cells) != len(head) or not cells[1].replace(",", "").isdigit():
            break
        for name, cell in zip(head[1:-2], cells[1:-2], strict=True):
            counts[name] = counts.get(name, 0) + int(cell.replace(",", ""))
        seconds += float(cells[-1])
    return {k: v for k, v in counts.items() if v}, seconds


async def run_pipeline(postgres_url: str, school: School) -> float:
    """Seconds the pipeline takes to sync the same records, in batches of `BATCH`, parents first."""
    made = school_records(school)
    async with fresh_database(postgres_url, "bench_backfill_pipeline") as url:
        engine = SyncEngine(load_catalog(ROOT / "entities.yaml"), open_database(url))
        try:
            started = time.perf_counter()
            for entity, rows in made.items():
                for chunk in records.batches(rows, BATCH):
                    report = await engine.sync(TENANT, entity, chunk)
                    if report.summary["NEW"] != len(chunk):
                        raise RuntimeError(f"pipeline: {entity}: {report.summary}")
            seconds = time.perf_counter() - started
        finally:
            await engine.close()
    log(f"backfill: the pipeline synced the same {school.records:,} records in {seconds:.1f} s")
    return seconds


async def measure(postgres_url: str, school: School, workdir: Path, repeats: int) -> list[Measurement]:
    """`repeats` runs of the backfill, each followed by the pipeline on the same records (so that a
    machine whose load drifts moves both alike); the counts of the last backfill."""
    backfills: list[Backfilled] = []
    pipelines: list[float] = []
    async with fake_zoho(school, workdir) as zoho:
        for _ in range(repeats):
            done = await run_backfill(postgres_url, zoho, school, workdir)
            if done.counts != {"NEW": school.records}:
                raise RuntimeError(f"backfill: expected {school.records:,} NEW, got {done.counts}")
            backfills.append(done)
            pipelines.append(await run_pipeline(postgres_url, school))
    done = backfills[-1]
    calls = done.stats["api_calls"]
    walls = ", ".join(f"{b.wall:.1f}" for b in backfills)
    return [
        Measurement(
            SCENARIO, "postgresql", f"backfill, {school}", BATCH, school.records,
            seconds=[b.seconds for b in backfills],
            note=f"syncengine backfill, its own time; {walls} s wall with Python's start",
        ),
        Measurement(
            SCENARIO, "postgresql", "pipeline, same records", BATCH, school.records, seconds=pipelines,
            note="engine.sync of the records in memory, parents first, right after each backfill",
        ),
        Measurement(
            SCENARIO, "postgresql", "Zoho API calls per 1,000 records", None, school.records,
            value=calls / school.records * 1000, unit="calls", note=f"{calls:,} calls (200 records a page)",
        ),
        Measurement(
            SCENARIO, "postgresql", "access tokens requested", None, school.records,
            value=done.stats["token_requests"], unit="tokens", note="token endpoint calls the fake counted, a backfill",
        ),
        Measurement(
            SCENARIO, "postgresql", "backfill peak RSS", None, school.records,
            value=max(b.peak_rss_mb for b in backfills), unit="MB",
            note="VmHWM of the syncengine backfill process, the highest of the runs",
        ),
    ]  # fmt: skip


def targets(measurements: Sequence[Measurement]) -> list[Target]:
    """Issue 17's benchmark targets, from figures of this run."""
    by_case = {m.case: m for m in measurements if m.scenario == SCENARIO}
    backfill = next((m for case, m in by_case.items() if case.startswith("backfill, ")), None)
    pipeline = by_case.get("pipeline, same records")
    calls, tokens, rss = (by_case.get(c) for c in ("Zoho API calls per 1,000 records", "access tokens requested",
                                                   "backfill peak RSS"))  # fmt: skip
    ratio = backfill.median / pipeline.median if backfill and pipeline and pipeline.median else None
    return [
        Target("backfill: records/s / the pipeline's, same records", ratio, 0.6),
        Target("backfill: Zoho API calls per 1,000 records", _median(calls), 6, at_most=True, unit="calls"),
        Target("backfill: access tokens requested", _median(tokens), 1, at_most=True, unit="tokens"),
        Target("backfill: peak RSS", _median(rss), 200, at_most=True, unit="MB"),
    ]


def _median(measurement: Measurement | None) -> float | None:
    return None if measurement is None else measurement.median


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    """The scenario as `python -m bench` runs it."""
    check_loopback(databases.postgres_url)
    return await measure(databases.postgres_url, school_for(sizes), databases.workdir, sizes.repeats)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake"]:
        serve_fake(argv[1:])
        return 0
    from bench.run import describe_machine

    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny school: checks the harness, not the figures")
    parser.add_argument("--enrollments", type=int, help="enrollments of the school (default 100,000)")
    parser.add_argument("--repeats", type=int, help="runs of each side (default 3; 1 with --smoke)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.smoke else 3)
    school = SMOKE_SCHOOL if args.smoke else FULL
    if args.enrollments:
        school = School(school.programs, school.teachers, school.students, school.classes, args.enrollments)
    check_loopback(args.postgres_url)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-backfill-") as workdir:
        measurements = asyncio.run(measure(args.postgres_url, school, Path(workdir), repeats))
    print(f"## Backfill figures ({'smoke run' if args.smoke else 'full run'}, {describe_machine()})\n")
    print(figures_table(measurements))
    print("\n## Targets of issue 17 (from this run)\n")
    print(targets_table(targets(measurements)))
    print(f"\ntotal time: {time.perf_counter() - started:.0f} s; load average {_load_average()}")
    return 0


def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
