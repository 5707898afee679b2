"""Items 2 and 3 of issue 4: the service over HTTP, against the minimal endpoint, in the same run.

    python -m bench.http                 # both servers, batches and webhooks (about 10 minutes)
    python -m bench.http --smoke         # tiny counts, well under 30 s: checks the harness
    python -m bench.http --servers service --cases webhooks --profile /tmp/prof

Each server runs as a process of its own on a free 127.0.0.1 port, on a fresh PostgreSQL
database migrated with `syncengine db upgrade`, parents seeded, tenant `school` created with
`syncengine tenant add`:

- `service`: `syncengine serve` (one process), the real API with its API key;
- `minimal`: bench/minimal_app.py under uvicorn, one worker (no auth, no idempotency).

The load comes from bench/loadgen.py, another process (keep-alive HTTP/1.1, N connections):

- batches: every record once in batches of 100 and 1,000 (NEW), then again (UNCHANGED);
- webhooks: one record a request, as fast as 16 connections go (the max requests/s), then
  on a fixed schedule at half that rate (open loop), for p50 / p99 latency.

Statuses are counted in every answer, so a figure never measures failed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints, and there are no stubs
import msgspec

from bench import records
from bench.databases import ENTITY, TENANT, Databases, check_loopback, log, reset, seed_parents, vacuum
from bench.measure import Measurement, Target, figures_table, targets_table
from bench.records import World
from bench.settings import SMOKE, Sizes
from syncengine.descriptors import load_catalog
from syncengine.engine import SyncEngine
from syncengine.store import open_database

ROOT = Path(__file__).resolve().parent.parent
SYNCENGINE = str(Path(sys.executable).with_name("syncengine"))
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVERS = ("service", "minimal")
CASES = ("batches", "webhooks")
SCENARIO = {"service": "HTTP service", "minimal": "HTTP minimal"}
WEBHOOK = {"service": "webhook service", "minimal": "webhook minimal"}
STATUS_PATTERNS = {status: f'"status":"{status}"' for status in ("NEW", "UPDATED", "UNCHANGED", "INVALID", "SKIPPED")}
# Record index ranges, so that batches, webhooks and warm-up never touch each other's rows.
WEBHOOK_START, PACED_START, WARMUP_START = 2_000_000, 3_000_000, 5_000_000


@dataclass(frozen=True)
class HttpSizes:
    """How much load each figure gets; every loadgen run is bounded in requests and seconds."""

    records: int = 100_000  # per batch run
    batches: tuple[int, ...] = (100, 1_000)
    connections: int = 16  # webhooks
    # Batches: 16 connections, as issue 4 measured the minimal endpoint with.
    batch_connections: int = 16
    webhooks: int = 10_000  # requests of the max-rate run, at most
    webhook_seconds: float = 30.0  # the max-rate run stops after this, done or not
    paced_seconds: float = 10.0  # length of the run at half the max rate
    max_seconds: float = 60.0  # a loadgen run stops after this, done or not
    warmup: int = 200
    repeats: int = 3
    world: World = field(default_factory=World)
    servers: tuple[str, ...] = SERVERS
    cases: tuple[str, ...] = CASES


FULL = HttpSizes()
SMOKE_HTTP = HttpSizes(
    records=400,
    webhooks=100,
    paced_seconds=0.5,
    max_seconds=10.0,
    webhook_seconds=10.0,
    warmup=10,
    repeats=1,
    connections=4,
    batch_connections=2,
    world=SMOKE.world,
)


def http_sizes(sizes: Sizes) -> HttpSizes:
    """The HTTP sizes that go with a run of `python -m bench` (its smoke run gets the smoke sizes)."""
    base = SMOKE_HTTP if sizes.records <= SMOKE.records else FULL
    return replace(base, repeats=sizes.repeats, world=sizes.world)


# Databases and servers


@dataclass
class Server:
    """One server under test: its database, its process, how to call it."""

    name: str
    url: str
    engine: SyncEngine
    headers: dict[str, str]
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    #: Its rows of the figures table, in the order they are shown.
    figures: list[Measurement] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(**variables: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SYNCENGINE_", "BENCH_"))} | variables


async def _command(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({process.returncode}): {err.decode()[-2000:]}")
    return out.decode()


@contextlib.asynccontextmanager
async def fresh_database(postgres_url: str, name: str) -> AsyncIterator[str]:
    """A new PostgreSQL database, migrated; its URL. Dropped afterwards."""
    check_loopback(postgres_url)
    admin = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        env = _environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ROOT / "entities.yaml"))
        await _command(SYNCENGINE, "db", "upgrade", env=env)
        yield url
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def running(name: str, url: str, sizes: HttpSizes, workdir: Path) -> AsyncIterator[Server]:
    """The server `name` on a free port, on the database at `url` with parents and a tenant."""
    catalog = load_catalog(ROOT / "entities.yaml")
    engine = SyncEngine(catalog, open_database(url))
    await seed_parents(engine, sizes.world)
    env = _environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ROOT / "entities.yaml"))
    port = free_port()
    if name == "service":
        key = (await _command(SYNCENGINE, "tenant", "add", TENANT, env=env)).strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {key}"}
        argv = [SYNCENGINE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    else:
        headers = {}
        env |= {"BENCH_MINIMAL_DSN": url, "BENCH_MINIMAL_TENANT": TENANT, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "uvicorn", "bench.minimal_app:app_from_env", "--factory"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning"]
        argv += ["--no-access-log"]
    server = Server(name, url, engine, headers, port)
    log_file = workdir / f"{name}.log"  # the service logs a JSON line per request here
    try:
        async with started(server, argv, env, workdir, log_file):
            yield server
    except Exception:
        errors = [line for line in log_file.read_text().splitlines() if '"level":"INFO"' not in line]
        log(f"{name} server log, without the request lines (last 40):\n" + "\n".join(errors[-40:]))
        raise
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def started(
    server: Server, argv: list[str], env: dict[str, str], workdir: Path, log_file: Path
) -> AsyncIterator[None]:
    """`argv` runs as `server`'s process, its output in `log_file`, listening before the block
    starts; terminated after it (killed if it has not ended within 20 s)."""
    with open(log_file, "wb") as output:
        try:
            server.process = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=workdir, stdout=output, stderr=output
            )
            await _wait_listening(server, log_file)
            yield
        finally:
            if server.process is not None and server.process.returncode is None:
                server.process.terminate()
                try:
                    await asyncio.wait_for(server.process.wait(), 20)
                except TimeoutError:
                    server.process.kill()
                    await server.process.wait()


async def _wait_listening(server: Server, log_file: Path) -> None:
    """uvicorn listens only once the app's startup is done: a connection means ready."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.returncode is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}: {log_file.read_text()[-2000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError(f"{server.name} did not listen on port {server.port} within 60 s")


# Load


@dataclass
class Profiler:
    """py-spy on the server during each first measured run, when asked for (`--profile DIR`)."""

    folder: Path | None
    done: set[str] = field(default_factory=set)

    @contextlib.asynccontextmanager
    async def around(self, server: Server, label: str) -> AsyncIterator[None]:
        name = f"{server.name}-{label}".replace(" ", "_").replace("/", "_")
        if self.folder is None or name in self.done or server.process is None:
            yield
            return
        self.done.add(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(server.process.pid),
            "--rate", "250", "--format", "raw", "--output", str(self.folder / f"{name}.txt"), "--nonblocking",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # let it attach
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(spy.wait(), 30)
            except TimeoutError:
                spy.kill()
                await spy.wait()


async def load(
    server: Server,
    bodies: Sequence[bytes],
    workdir: Path,
    sizes: HttpSizes,
    *,
    connections: int,
    rate: float = 0.0,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Send `bodies` (each once) through bench/loadgen.py in a process of its own; its result."""
    stamp = uuid.uuid4().hex[:8]
    body_file, spec_file = workdir / f"bodies-{stamp}.jsonl", workdir / f"spec-{stamp}.json"
    body_file.write_bytes(b"".join(body + b"\n" for body in bodies))
    spec: dict[str, Any] = {
        "port": server.port,
        "path": f"/v1/sync/{ENTITY}",
        "bodies": str(body_file),
        "headers": server.headers,
        "connections": connections,
        "mode": "open" if rate else "closed",
        "rate": rate,
        "max_requests": len(bodies),
        "max_seconds": max_seconds or sizes.max_seconds,
        "grace": 20.0,
        "count": STATUS_PATTERNS,
    }
    spec_file.write_text(json.dumps(spec))
    try:
        out = await _command(
            sys.executable, "-m", "bench.loadgen", str(spec_file),
            env=_environment(PYTHONPATH=str(ROOT)), timeout=spec["max_seconds"] + 60,
        )  # fmt: skip
    finally:
        body_file.unlink(missing_ok=True)
        spec_file.unlink(missing_ok=True)
    result: dict[str, Any] = json.loads(out)
    if result["errors"] or set(result["statuses"]) - {"200"}:
        raise RuntimeError(
            f"{server.name}: failed requests {result['statuses']}, {result['errors']} errors: "
            f"{result['first_error'] or result['first_failure']}"
        )
    return result


def expect(server: Server, what: str, result: dict[str, Any], **expected: int) -> None:
    counts = {status: n for status, n in result["counts"].items() if n}
    if counts != expected:
        raise RuntimeError(f"{server.name} {what}: statuses {counts}, expected {expected}")


def encode_batches(rows: list[dict[str, Any]], size: int) -> list[bytes]:
    return [msgspec.json.encode({"data": chunk}) for chunk in records.batches(rows, size)]


def encode_singles(world: World, start: int, count: int) -> list[bytes]:
    return [msgspec.json.encode({"data": [records.enrollment(world, i)]}) for i in range(start, start + count)]


async def fresh(server: Server) -> None:
    await reset(server.engine)
    await vacuum(server.engine)


async def warm_up(server: Server, sizes: HttpSizes, workdir: Path) -> None:
    """Prepared statements, pools and imports, before anything is timed."""
    rows = records.enrollments(sizes.world, sizes.warmup * 10, start=WARMUP_START)
    await load(server, encode_batches(rows, 100), workdir, sizes, connections=sizes.connections)
    await load(server, encode_singles(sizes.world, WARMUP_START + sizes.warmup * 10, sizes.warmup), workdir, sizes,
               connections=sizes.connections)  # fmt: skip
    await fresh(server)


async def measure_batches(servers: Sequence[Server], sizes: HttpSizes, workdir: Path, profiler: Profiler) -> None:
    """NEW then UNCHANGED per batch size; each repeat runs on every server in turn (`measure`)."""
    count = sizes.records
    conns = sizes.batch_connections
    for batch in sizes.batches:
        bodies = encode_batches(records.enrollments(sizes.world, count), batch)
        rows = {
            server.name: {
                case: Measurement(SCENARIO[server.name], "postgresql", case, batch, count, note=_note(server, conns))
                for case in ("NEW", "UNCHANGED")
            }
            for server in servers
        }
        for repeat in range(sizes.repeats):
            for server in servers:
                log(f"{SCENARIO[server.name]} batch {batch}: repeat {repeat + 1}/{sizes.repeats}, {count:,} records")
                await fresh(server)
                for case in ("NEW", "UNCHANGED"):
                    async with profiler.around(server, f"batch{batch}-{case}"):
                        result = await load(server, bodies, workdir, sizes, connections=conns)
                    expect(server, f"batches of {batch} {case}", result, **{case: count})
                    rows[server.name][case].seconds.append(result["seconds"])
        for server in servers:
            server.figures += rows[server.name].values()
    for server in servers:
        await fresh(server)


def _note(server: Server, connections: int) -> str:
    return f"{'syncengine serve' if server.name == 'service' else 'litestar + asyncpg'}, {connections} conns"


@dataclass
class _WebhookRuns:
    """What the webhook runs of one server measured, run by run."""

    rates: list[float] = field(default_factory=list)
    closed_p99: list[float] = field(default_factory=list)
    completed: list[int] = field(default_factory=list)
    offered: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    paced_counts: list[int] = field(default_factory=list)


async def measure_webhooks(servers: Sequence[Server], sizes: HttpSizes, workdir: Path, profiler: Profiler) -> None:
    """Max requests/s with `connections` connections, then p50 / p99 at half of it (open loop);
    each repeat runs on every server in turn (`measure`)."""
    count = sizes.webhooks
    bodies = encode_singles(sizes.world, WEBHOOK_START, count)
    runs = {server.name: _WebhookRuns() for server in servers}
    for repeat in range(sizes.repeats):
        for server in servers:
            name, mine = WEBHOOK[server.name], runs[server.name]
            log(f"{name}: repeat {repeat + 1}/{sizes.repeats}, {count:,} requests, then paced at half the max rate")
            await fresh(server)
            async with profiler.around(server, "webhooks-max"):
                result = await load(
                    server, bodies, workdir, sizes, connections=sizes.connections, max_seconds=sizes.webhook_seconds
                )
            mine.completed.append(result["completed"])
            expect(server, "webhooks", result, NEW=result["completed"])
            mine.rates.append(result["completed"] / result["seconds"])
            mine.closed_p99.append(result["latency_ms"]["p99"])
            rate = mine.rates[-1] / 2
            paced = encode_singles(sizes.world, PACED_START, max(1, int(rate * sizes.paced_seconds)))
            async with profiler.around(server, "webhooks-paced"):
                result = await load(server, paced, workdir, sizes, connections=sizes.connections, rate=rate)
            expect(server, "paced webhooks", result, NEW=result["completed"])
            mine.paced_counts.append(result["completed"])
            mine.offered.append(rate)
            mine.p50s.append(result["latency_ms"]["p50"])
            mine.p99s.append(result["latency_ms"]["p99"])
    for server in servers:
        await fresh(server)
        server.figures += _webhook_figures(WEBHOOK[server.name], runs[server.name], sizes)


def _webhook_figures(name: str, runs: _WebhookRuns, sizes: HttpSizes) -> list[Measurement]:
    # A run ends after `webhooks` requests or `webhook_seconds`: the row shows the fewest requests
    # a run completed, and the seconds they took at each run's rate.
    done = min(runs.completed)
    maximum = Measurement(
        name, "postgresql", "max req/s", 1, done, seconds=[done / r for r in runs.rates], unit="req/s",
        note=f"{sizes.connections} conns, closed loop; p99 {statistics.median(runs.closed_p99):.1f} ms",
    )  # fmt: skip
    paced_note = f"open loop at {statistics.median(runs.offered):,.0f} req/s (half the max), {sizes.paced_seconds:g} s"
    paced = min(runs.paced_counts)
    return [
        maximum,
        _latency(name, "p50 at half max", runs.p50s, paced, paced_note),
        _latency(name, "p99 at half max", runs.p99s, paced, paced_note),
    ]


def _latency(name: str, case: str, values: list[float], requests: int, note: str) -> Measurement:
    """A latency row: the median of the runs; the note gives each run's value."""
    runs = ", ".join(f"{value:.1f}" for value in values)
    return Measurement(
        name, "postgresql", case, 1, requests, value=statistics.median(values), unit="ms", note=f"{note}; runs {runs}"
    )


async def measure(
    postgres_url: str, sizes: HttpSizes, workdir: Path, prefix: str, profiler: Profiler | None = None
) -> list[Measurement]:
    """Every figure of both servers. Both are up at once, but only one is loaded at a time (they
    would compete for the two cores), and their runs alternate repeat by repeat: on a machine
    whose speed drifts over minutes, a drift then moves both sides of a ratio alike, instead of
    landing on whichever server ran in the slower minutes."""
    profiler = profiler or Profiler(None)
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for name in sizes.servers:
            url = await stack.enter_async_context(fresh_database(postgres_url, f"{prefix}_http_{name}"))
            servers.append(await stack.enter_async_context(running(name, url, sizes, workdir)))
        for server in servers:
            await warm_up(server, sizes, workdir)
        if "batches" in sizes.cases:
            await measure_batches(servers, sizes, workdir, profiler)
        if "webhooks" in sizes.cases:
            await measure_webhooks(servers, sizes, workdir, profiler)
        return [figure for server in servers for figure in server.figures]


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    """The scenario as `python -m bench` runs it."""
    return await measure(databases.postgres_url, http_sizes(sizes), databases.workdir, databases.prefix)


# Targets


def targets(measurements: Sequence[Measurement]) -> list[Target]:
    """The HTTP targets of issue 4, from figures of this run."""
    by_key = {m.key: m.median for m in measurements}

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    out = []
    for batch in (100, 1_000):
        new = by_key.get(("HTTP service", "postgresql", "NEW", batch))
        minimal = by_key.get(("HTTP minimal", "postgresql", "NEW", batch))
        out.append(Target(f"HTTP service NEW, batches of {batch:,}", new, 15_000, unit="rec/s"))
        out.append(Target(f"HTTP service / minimal endpoint, NEW, batches of {batch:,}", ratio(new, minimal), 0.7))
    service = by_key.get(("webhook service", "postgresql", "max req/s", 1))
    minimal = by_key.get(("webhook minimal", "postgresql", "max req/s", 1))
    out.append(Target("webhooks: service / minimal endpoint, max req/s", ratio(service, minimal), 0.7))
    out.append(
        Target(
            "webhooks: service p99 at half its max rate",
            by_key.get(("webhook service", "postgresql", "p99 at half max", 1)),
            25,
            at_most=True,
            unit="ms",
        )
    )
    return out


# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, one repeat: checks the harness, not speed")
    parser.add_argument("--servers", help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--cases", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, help="runs per figure; the table shows median, min and max")
    parser.add_argument("--records", type=int, help="records per batch run")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 100,1000)")
    parser.add_argument("--webhooks", type=int, help="requests of the max-rate webhook run")
    parser.add_argument("--webhook-seconds", type=float, help="longest max-rate webhook run (default 30)")
    parser.add_argument("--paced-seconds", type=float, help="length of the webhook run at half the max rate")
    parser.add_argument("--connections", type=int, help="client connections of the webhook runs (default 16)")
    parser.add_argument("--batch-connections", type=int, help="client connections of the batch runs (default 16)")
    parser.add_argument("--profile", type=Path, help="py-spy the server in each first run; raw stacks to this folder")
    parser.add_argument("--postgres-url", default=os.environ.get("SYNCENGINE_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    for option, known in (("servers", SERVERS), ("cases", CASES)):
        unknown = set(_split(getattr(args, option) or "")) - set(known)
        if unknown:
            parser.error(f"unknown {option} {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return args


def sizes_from(args: argparse.Namespace) -> HttpSizes:
    overrides = {
        "servers": tuple(_split(args.servers)) if args.servers else None,
        "cases": tuple(_split(args.cases)) if args.cases else None,
        "repeats": args.repeats,
        "records": args.records,
        "batches": tuple(int(b) for b in _split(args.batches)) if args.batches else None,
        "webhooks": args.webhooks,
        "paced_seconds": args.paced_seconds,
        "webhook_seconds": args.webhook_seconds,
        "connections": args.connections,
        "batch_connections": args.batch_connections,
    }
    return replace(SMOKE_HTTP if args.smoke else FULL, **{k: v for k, v in overrides.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import describe_machine

    args = parse_args(argv)
    sizes = sizes_from(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="syncengine-bench-http-") as workdir:
        prefix = f"bench_{uuid.uuid4().hex[:8]}"
        measurements = asyncio.run(measure(args.postgres_url, sizes, Path(workdir), prefix, Profiler(args.profile)))
    print(f"## HTTP figures ({'smoke run' if args.smoke else 'full run'}, {describe_machine()})\n")
    print(figures_table(measurements))
    print("\n## HTTP targets of issue 4 (ratios of figures from this run)\n")
    print(targets_table(targets(measurements)))
    print(f"\ntotal time: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps([m.__dict__ | {"median": m.median} for m in measurements], indent=2, default=str)
        )
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
