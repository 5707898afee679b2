"""Issue 16's benchmark: a school delivered from the outbox to a Moodle fake on loopback, on PostgreSQL.

    python -m bench.delivery                  # about 3 minutes; also in `python -m bench`
    python -m bench.delivery --smoke          # a tiny school, seconds: checks the harness
    python -m bench.delivery fake --port N    # the fake as the scenario runs it (calls counted)

One run measures, against a Moodle fake in a process of its own that answers each call after
`latency` (45 ms, what a real site took) and keeps PHP's `max_input_vars` of 1,000:

- **worker**: the school (20 programs, 100 teachers, 5,000 students, 200 classes with their
  teacher, 20,000 enrollments) is synced into a fresh migrated database while its tenant has no
  Moodle site, so every delivery waits in the outbox; `syncengine serve` starts (its in-process
  worker), the site is stored and the worker woken (NOTIFY): the figure is the records delivered
  a second until no outbox row is due, and the Moodle calls per 1,000 records the fake counted;
- **minimum**: the fewest calls the `max_input_vars` budget allows for the same records: for each
  write function, the records' parameters (as the mapping renders them) packed into calls of
  `budget - 3` (the ws* parameters), no look-up at all;
- **naive**: per record, look up by idnumber (`core_user_get_users_by_field`,
  `core_course_get_courses_by_field`, `core_course_get_categories`), then create or update, one
  call each, one record at a time, through the same MoodleClient and the same mapping, on a
  1/`naive_share` sample of the school (same mix); an enrolment is one call (its user's and
  course's Moodle ids are remembered, as the worker's links are). It runs right after the worker;
- **latency**: on that serve, new students posted one a request at a steady 50 a second (open
  loop): from each request's 200 to the moment the fake has handled the `core_user_create_users`
  call carrying the student's idnumber (both clocks CLOCK_MONOTONIC, one machine);
- **memory**: the serve process's peak RSS (VmHWM) once it has delivered a school of half the size,
  and, in a second serve, the whole school.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import asyncpg  # type: ignore[import-untyped]
import httpx
import msgspec
import sqlalchemy as sa

from bench import records
from bench.databases import TENANT, Databases, check_loopback, log
from bench.http import (
    DEFAULT_POSTGRES_URL,
    ROOT,
    SYNCENGINE,
    Server,
    _command,
    _environment,
    free_port,
    fresh_database,
    started,
)
from bench.measure import Measurement, Target, figures_table, targets_table
from bench.records import World
from bench.settings import SMOKE, Sizes
from syncengine import targets as kinds
from syncengine.delivery import CHANNEL, Policy
from syncengine.descriptors import Catalog, Entity, load_catalog
from syncengine.engine import SyncEngine
from syncengine.mapping import Record, desired_state
from syncengine.moodle import WS_PARAMETERS, MoodleClient, encode
from syncengine.sites import save_site
from syncengine.store import open_database
from syncengine.tables import build_metadata

SCENARIO = "delivery"
TOKEN = "bench-token-0123456789abcdef"
TEACHER_BASE = 6284103000050000000
WEBHOOK_STUDENTS = 1_000_000  # index of the first student sent by webhook, far from the school's
#: Moodle functions that write; the fake notes when it handled each idnumber they carry.
WRITES = frozenset({f for kind in kinds.BY_NAME.values() for f in (kind.create, kind.update)} | {kinds.ENROL})
META = {"$approval_state": "approved", "$editable": True, "$state": "save", "$process_flow": False}


@dataclass(frozen=True)
class School:
    programs: int = 20
    teachers: int = 100
    students: int = 5_000
    classes: int = 200
    enrollments: int = 20_000

    @property
    def records(self) -> int:
        return self.programs + self.teachers + self.students + self.classes + self.enrollments

    def share(self, divisor: int) -> School:
        """The same mix, 1/divisor of it (at least one of each)."""
        return School(*(max(1, round(n / divisor)) for n in self.counts()))

    def counts(self) -> tuple[int, int, int, int, int]:
        return (self.programs, self.teachers, self.students, self.classes, self.enrollments)

    def __str__(self) -> str:
        return f"school of {self.records:,}"


@dataclass(frozen=True)
class DeliverySizes:
    school: School = field(default_factory=School)
    half: School = field(default_factory=lambda: School(10, 50, 2_500, 100, 10_000))
    naive_share: int = 50  # the naive baseline delivers 1/50 of the school: ~17 records a second
    latency: float = 0.045  # seconds the fake takes to answer a call
    budget: int = 1_000  # the tenant's max_input_vars, and the fake's
    webhook_rate: float = 50.0
    webhook_seconds: float = 20.0
    deadline: float = 900.0  # seconds a delivery may take before the run fails


FULL = DeliverySizes()
SMOKE_DELIVERY = DeliverySizes(
    school=School(2, 2, 20, 4, 40),
    half=School(1, 1, 10, 2, 20),
    naive_share=2,
    latency=0.005,
    webhook_seconds=1.0,
    deadline=60.0,
)


def delivery_sizes(sizes: Sizes) -> DeliverySizes:
    return SMOKE_DELIVERY if sizes.records <= SMOKE.records else FULL


# The school, as Zoho's API returns it


def school_records(school: School) -> dict[str, list[dict[str, Any]]]:
    """Every record of the school, by entity, parents first. Each class has a teacher; each
    student's enrollments are in distinct classes."""
    world = World(students=school.students, classes=school.classes, programs=school.programs)
    teachers = [
        {
            "id": str(TEACHER_BASE + i),
            "Name": f"Elif Kaya {i}",
            "Email": f"elif.{i}@example.com",
            "Academic_Email": f"t{i}@school.edu",
            "Phone_Number": "+90 212 555 0100",
            "Owner": records.OWNER,
            "Modified_Time": records.MODIFIED.isoformat(),
            **META,
        }
        for i in range(school.teachers)
    ]
    classes = [
        record
        | {"Teacher": {"name": f"Elif Kaya {i % school.teachers}", "id": str(TEACHER_BASE + i % school.teachers)}}
        for i, record in enumerate(records.classes(world))
    ]
    per_student = math.ceil(school.enrollments / school.students)
    step = max(1, school.classes // per_student)
    enrollments = []
    for i in range(school.enrollments):
        student, round_ = i % school.students, i // school.students
        klass = (student * 7 + round_ * step) % school.classes
        enrollment = records.enrollment(world, i)
        enrollment["Classes"] = {"name": f"CLS-{klass:05d}", "id": str(records.CLASS_BASE + klass)}
        enrollments.append(enrollment)
    return {
        "programs": records.programs(world),
        "teachers": teachers,
        "students": records.students(world),
        "classes": classes,
        "enrollments": enrollments,
    }


def new_students(school: School, count: int) -> list[dict[str, Any]]:
    """`count` students who are not in the school, for the webhooks."""
    made = []
    for record in records.students(World(students=count, programs=school.programs)):
        i = WEBHOOK_STUDENTS + int(record["id"]) - records.STUDENT_BASE
        made.append(
            record
            | {
                "id": str(records.STUDENT_BASE + i),
                "Name": f"STU-{i:07d}",
                "Academic_Email": f"s{i}@school.edu",
                "Email": f"ayse.{i}@example.com",
            }
        )
    return made


async def load_school(engine: SyncEngine, school: School) -> int:
    """Sync the school through the engine, 1,000 records a call; the records written."""
    written = 0
    for entity, rows in school_records(school).items():
        for chunk in records.batches(rows, 1_000):
            report = await engine.sync(TENANT, entity, chunk)
            if report.summary["NEW"] != len(chunk):
                raise RuntimeError(f"loading {entity} failed: {report.summary}")
            written += len(chunk)
    return written


async def read_records(database: Any, catalog: Catalog, entity: Entity) -> list[Record]:
    """An entity's stored records as the worker reads them (values in their field types)."""
    table = build_metadata(catalog).tables[entity.name]
    columns = [table.c[f.value_column] for f in entity.fields]
    query = sa.select(table.c.zoho_id, table.c.deleted_at, *columns).where(table.c.tenant_id == TENANT)
    async with database.connect() as conn:
        rows = list(await conn.execute(query.order_by(table.c.zoho_id)))
    return [
        Record(
            row.zoho_id,
            {f.name: None if v is None else f.type.from_db(v) for f, v in zip(entity.fields, row[2:], strict=True)},
            deleted=row.deleted_at is not None,
        )
        for row in rows
    ]


# The Moodle fake, in a process of its own


def serve_fake(argv: Sequence[str]) -> None:
    """`python -m bench.delivery fake`: tests/moodle_fake.py, plus a count of calls and variables
    per function, the seconds it spent on each function (latency aside), and the monotonic time
    at which it had handled the first write carrying each idnumber; `GET /bench/stats` answers them."""
    from tests import moodle_fake

    parser = argparse.ArgumentParser(prog="python -m bench.delivery fake")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.045)
    parser.add_argument("--max-input-vars", type=int, default=1000)
    args = parser.parse_args(argv)

    class CountingFake(moodle_fake.MoodleFake):
        calls_by_function: ClassVar[Counter[str]] = Counter()
        variables_by_function: ClassVar[Counter[str]] = Counter()
        seconds_by_function: ClassVar[dict[str, float]] = defaultdict(float)
        handled: ClassVar[dict[str, float]] = {}
        counting: ClassVar[threading.Lock] = threading.Lock()

        def answer(self, query: str, body: str) -> tuple[Any, Any, str]:
            started = time.perf_counter()
            result = super().answer(query, body)
            done, spent = time.monotonic(), time.perf_counter() - started
            pairs = parse_qsl(body, keep_blank_values=True)
            function = next((value for name, value in pairs if name == "wsfunction"), "")
            with self.counting:
                self.calls_by_function[function] += 1
                self.variables_by_function[function] += len(pairs)
                self.seconds_by_function[function] += spent
                if function in WRITES:
                    for name, value in pairs:
                        if name.endswith("[idnumber]"):
                            self.handled.setdefault(value, done)
            return result

        def stats(self) -> dict[str, Any]:
            with self.counting, self._lock:
                return {
                    "calls": dict(self.calls_by_function),
                    "variables": dict(self.variables_by_function),
                    "seconds": dict(self.seconds_by_function),
                    "handled": dict(self.handled),
                    "held": {
                        "users": len(self.users),
                        "categories": len(self.categories),
                        "courses": len(self.courses),
                        "enrolments": len(self.enrolments),
                    },
                }

    fake = CountingFake(token=TOKEN, max_input_vars=args.max_input_vars, latency=args.latency)
    handler = moodle_fake.handler_for(fake)

    class StatsHandler(handler):  # type: ignore[valid-type,misc]
        def do_GET(self) -> None:
            if self.path == "/bench/stats":
                self.send(json.dumps(fake.stats()), 200, "application/json")
            else:
                self.do_POST()

    server = moodle_fake.Server(("127.0.0.1", args.port), StatsHandler)
    print(f"Moodle fake on 127.0.0.1:{args.port}, {args.latency * 1000:g} ms a call", flush=True)
    server.serve_forever(0.05)


@dataclass
class Fake:
    port: int
    process: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            answer = await client.get(self.url + "/bench/stats", timeout=60)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


@contextlib.asynccontextmanager
async def fake_moodle(sizes: DeliverySizes, workdir: Path, name: str) -> AsyncIterator[Fake]:
    port = free_port()
    output = open(workdir / f"fake-{name}.log", "wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.delivery", "fake", "--port", str(port), "--latency", str(sizes.latency),
        "--max-input-vars", str(sizes.budget), cwd=ROOT, env=_environment(PYTHONPATH=str(ROOT)),
        stdout=output, stderr=output,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Moodle fake did not start: {(workdir / f'fake-{name}.log').read_text()[-2000:]}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield Fake(port, process)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        output.close()


# The worker: a school from the outbox


@dataclass
class Delivered:
    """What one serve delivered: its school, the time, the fake's counts, the serve's peak RSS."""

    school: School
    records: int
    seconds: float
    stats: dict[str, Any]
    peak_rss_mb: float
    minimum: int = 0  # the fewest calls the budget allows for the same records
    latencies: list[float] = field(default_factory=list)  # seconds, webhook 200 -> Moodle call
    webhooks: int = 0

    @property
    def calls(self) -> int:
        return sum(self.stats["calls"].values())


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


async def outbox_drained(database: Any, deadline: float) -> None:
    """Wait until no outbox row is due any more; fail on a dead row or after the deadline."""
    query = sa.text("SELECT state, count(*) FROM syncengine_outbox GROUP BY state")
    while True:
        async with database.connect() as conn:
            counts = {state: n for state, n in await conn.execute(query)}
        if counts.get("dead"):
            async with database.connect() as conn:
                error = (
                    await conn.execute(sa.text("SELECT last_error FROM syncengine_outbox WHERE state = 'dead' LIMIT 1"))
                ).scalar()
            raise RuntimeError(f"{counts['dead']} deliveries dead, e.g.: {error}")
        if not any(counts.get(state) for state in ("pending", "waiting", "working")):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the outbox was not delivered in time: {counts}")
        await asyncio.sleep(0.05)


async def deliver_school(
    postgres_url: str, school: School, sizes: DeliverySizes, workdir: Path, name: str, *, webhooks: bool
) -> Delivered:
    """A serve delivers `school` from a full outbox to a fresh fake; then, with `webhooks`, new
    students arrive at `webhook_rate` and each one's latency to Moodle is measured."""
    catalog = load_catalog(ROOT / "entities.yaml")
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database(postgres_url, name))
        engine = SyncEngine(catalog, open_database(url))
        stack.push_async_callback(engine.close)
        env = _environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ROOT / "entities.yaml"))
        key = (await _command(SYNCENGINE, "tenant", "add", TENANT, env=env)).strip().splitlines()[-1]
        log(f"delivery: loading a {school} records into the outbox ({name})")
        count = await load_school(engine, school)
        fake = await stack.enter_async_context(fake_moodle(sizes, workdir, name))
        server = await stack.enter_async_context(serving(url, engine, env, workdir, name))
        assert server.process is not None
        log(f"delivery: {name}: site stored, worker woken; delivering {count:,} records")
        started = time.monotonic()
        await save_site(engine.database, TENANT, fake.url, TOKEN, max_input_vars=sizes.budget)
        await _notify(url)
        await outbox_drained(engine.database, started + sizes.deadline)
        seconds = time.monotonic() - started
        log(f"delivery: {name}: {count:,} records delivered in {seconds:.1f} s")
        stats = await fake.stats()
        _check_held(stats, school)
        delivered = Delivered(school, count, seconds, stats, peak_rss_mb(server.process.pid))
        delivered.minimum = await minimum_calls(engine.database, catalog, sizes.budget)
        if webhooks:
            await _webhooks(server, key, fake, engine, school, sizes, delivered)
        return delivered


@contextlib.asynccontextmanager
async def serving(url: str, engine: SyncEngine, env: dict[str, str], workdir: Path, name: str) -> AsyncIterator[Server]:
    """`syncengine serve` (one process, its in-process delivery worker) on a free port."""
    port = free_port()
    server = Server("service", url, engine, {}, port)
    argv = [SYNCENGINE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    async with started(server, argv, env, workdir, workdir / f"serve-{name}.log"):
        yield server


async def _notify(url: str) -> None:
    """What the outbox trigger sends on an insert: the worker LISTENs and starts a round."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"NOTIFY {CHANNEL}")
    finally:
        await conn.close()


def _check_held(stats: dict[str, Any], school: School) -> None:
    """The fake holds the school (besides its own admin user, category and site course)."""
    expected = {
        "users": school.teachers + school.students + 1,
        "categories": school.programs + 1,
        "courses": school.classes + 1,
        "enrolments": school.enrollments + school.classes,
    }
    if stats["held"] != expected:
        raise RuntimeError(f"the fake holds {stats['held']} after the delivery, expected {expected}")


async def _webhooks(
    server: Server, key: str, fake: Fake, engine: SyncEngine, school: School, sizes: DeliverySizes, into: Delivered
) -> None:
    """New students, one a request, at a steady rate (open loop: each is sent at its scheduled
    time whatever the answers before it); the latency of each from its 200 to its Moodle create."""
    count = max(1, int(sizes.webhook_rate * sizes.webhook_seconds))
    students = new_students(school, count)
    bodies = [(s["id"], msgspec.json.encode({"data": [s]})) for s in students]
    answered: dict[str, float] = {}
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    log(f"delivery: {count:,} single-student webhooks at {sizes.webhook_rate:g}/s")
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers=headers, limits=limits) as client:
        start = time.monotonic() + 0.2

        async def send(i: int, zoho_id: str, body: bytes) -> None:
            await asyncio.sleep(max(0.0, start + i / sizes.webhook_rate - time.monotonic()))
            response = await client.post("/v1/sync/students", content=body, timeout=30)
            if response.status_code != 200 or b'"status":"NEW"' not in response.content:
                failures.append(f"{response.status_code} {response.text[:200]}")
                return
            answered[zoho_id] = time.monotonic()

        await asyncio.gather(*(send(i, zoho_id, body) for i, (zoho_id, body) in enumerate(bodies)))
    if failures:
        raise RuntimeError(f"{len(failures)} webhooks failed, e.g. {failures[0]}")
    await outbox_drained(engine.database, time.monotonic() + sizes.deadline)
    handled = (await fake.stats())["handled"]
    missing = [zoho_id for zoho_id in answered if zoho_id not in handled]
    if missing:
        raise RuntimeError(f"{len(missing)} webhook students never reached Moodle, e.g. {missing[0]}")
    into.latencies = [handled[zoho_id] - at for zoho_id, at in answered.items()]
    into.webhooks = count


# The naive way and the minimum


@dataclass
class Naive:
    records: int
    seconds: float
    calls: int


def _lookup(kind: kinds.Kind, idnumber: str) -> tuple[str, dict[str, Any]]:
    """The one call that finds an existing user, category or course by idnumber."""
    if kind is kinds.USER:
        return "core_user_get_users_by_field", {"field": "idnumber", "values": [idnumber]}
    if kind is kinds.CATEGORY:
        return "core_course_get_categories", {"criteria": [{"key": "idnumber", "value": idnumber}]}
    return "core_course_get_courses_by_field", {"field": "idnumber", "value": idnumber}


def _found(answer: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = answer["courses"] if isinstance(answer, dict) else answer
    return rows


async def naive_deliver(database: Any, catalog: Catalog, client: MoodleClient) -> int:
    """Per record and target, parents first: look it up, then create or update it, one call each
    (an enrolment: one enrol call). The records delivered."""
    ids: dict[tuple[str, str], int] = {}
    delivered = 0
    for entity in catalog:
        if not entity.moodle:
            continue
        for record in await read_records(database, catalog, entity):
            for position, target in enumerate(entity.moodle):
                state = desired_state(target, record, ids)
                if not state.active or state.missing:
                    raise RuntimeError(f"naive: {entity.name} {record.zoho_id} {target.name}: {state}")
                if target.kind.name == "enrolment":
                    await client.call(
                        kinds.ENROL, {"enrolments": [{"timestart": 0, "timeend": 0, "suspend": 0, **state.params}]}
                    )
                    continue
                kind = kinds.BY_NAME[target.kind.name]
                found = _found(await client.call(*_lookup(kind, str(state.params["idnumber"]))))
                if found:
                    moodle_id = int(found[0]["id"])
                    await client.call(kind.update, {kind.items: [{**state.params, "id": moodle_id}]})
                else:
                    params = {
                        **dict(kind.create_extra),
                        **{k: v for k, v in state.params.items() if k not in kind.update_only},
                    }
                    moodle_id = int((await client.call(kind.create, {kind.items: [params]}))[0]["id"])
                if position == 0:
                    ids[(entity.name, record.zoho_id)] = moodle_id
            delivered += 1
    return delivered


async def naive(databases: Databases, sizes: DeliverySizes, workdir: Path) -> Naive:
    sample = sizes.school.share(sizes.naive_share)
    engine = await databases.engine("postgresql", "delivery_naive")
    await load_school(engine, sample)
    log(f"delivery: naive, a {sample} records, one record at a time")
    async with fake_moodle(sizes, workdir, "naive") as fake:
        async with MoodleClient(fake.url, TOKEN) as client:
            started = time.monotonic()
            count = await naive_deliver(engine.database, databases.catalog, client)
            seconds = time.monotonic() - started
        log(f"delivery: naive: {count:,} records delivered in {seconds:.1f} s")
        stats = await fake.stats()
    _check_held(stats, sample)
    return Naive(count, seconds, sum(stats["calls"].values()))


async def minimum_calls(database: Any, catalog: Catalog, budget: int) -> int:
    """The fewest calls that carry the stored records' Moodle parameters within `budget`: for each
    write function, all its records' parameters (with what a create or enrol adds) in calls of
    `budget - 3`. Looked-up ids are stood in by 1 (the count of parameters is the same)."""
    entities = [e for e in catalog if e.moodle]
    stored = {e.name: await read_records(database, catalog, e) for e in entities}
    ids = {(name, r.zoho_id): 1 for name, rows in stored.items() for r in rows}
    parameters: Counter[str] = Counter()
    for entity in entities:
        assert entity.moodle is not None
        for target in entity.moodle:
            for record in stored[entity.name]:
                params = desired_state(target, record, ids).params
                if target.kind.name == "enrolment":
                    parameters[kinds.ENROL] += len(encode({"timestart": 0, "timeend": 0, "suspend": 0, **params}))
                else:
                    kind = kinds.BY_NAME[target.kind.name]
                    sent = {**dict(kind.create_extra), **{k: v for k, v in params.items() if k not in kind.update_only}}
                    parameters[kind.create] += len(encode(sent))
    return sum(math.ceil(n / (budget - WS_PARAMETERS)) for n in parameters.values())


# The scenario


async def measure(databases: Databases, sizes: DeliverySizes) -> list[Measurement]:
    workdir, url = databases.workdir, databases.postgres_url
    half = await deliver_school(url, sizes.half, sizes, workdir, f"{databases.prefix}_delivery_half", webhooks=False)
    full = await deliver_school(url, sizes.school, sizes, workdir, f"{databases.prefix}_delivery_full", webhooks=True)
    baseline = await naive(databases, sizes, workdir)  # right after the worker's run, on the same machine state
    return figures(sizes, half, full, baseline)


def figures(sizes: DeliverySizes, half: Delivered, full: Delivered, baseline: Naive) -> list[Measurement]:
    minimum = full.minimum
    latency = f"fake answers in {sizes.latency * 1000:g} ms, max_input_vars {sizes.budget:,}"
    calls = Counter(full.stats["calls"])
    writes = sum(n for function, n in calls.items() if function in WRITES)
    top = ", ".join(f"{function} {n}" for function, n in calls.most_common())
    rows = [
        Measurement(
            SCENARIO,
            "postgresql",
            f"worker, {full.school}",
            Policy().batch,
            full.records,
            seconds=[full.seconds],
            note=f"syncengine serve's worker; {latency}",
        ),
        Measurement(
            SCENARIO,
            "postgresql",
            "naive, per record",
            1,
            baseline.records,
            seconds=[baseline.seconds],
            note=f"look up, then create or update; 1/{sizes.naive_share} of the school; {baseline.calls:,} calls",
        ),
        Measurement(
            SCENARIO,
            "postgresql",
            "worker, calls per 1,000 records",
            None,
            full.records,
            value=1000 * full.calls / full.records,
            unit="calls",
            note=f"{full.calls:,} calls ({writes:,} writes): {top}",
        ),
        Measurement(
            SCENARIO,
            "postgresql",
            "minimum, calls per 1,000 records",
            None,
            full.records,
            value=1000 * minimum / full.records,
            unit="calls",
            note=f"{minimum:,} calls: the write functions' parameters in calls of {sizes.budget - WS_PARAMETERS:,}",
        ),
        Measurement(
            SCENARIO,
            "postgresql",
            "naive, calls per 1,000 records",
            None,
            baseline.records,
            value=1000 * baseline.calls / baseline.records,
            unit="calls",
        ),
    ]
    ordered = sorted(full.latencies)
    note = f"{full.webhooks:,} new students at {sizes.webhook_rate:g}/s, open loop, after the school; {latency}"
    for quantile, q in (("p50", 0.50), ("p99", 0.99)):
        value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
        rows.append(
            Measurement(
                SCENARIO, "postgresql", f"webhook 200 -> Moodle call {quantile}", 1, len(ordered),
                value=value, unit="ms", note=note,
            )
        )  # fmt: skip
    for delivered in (half, full):
        rows.append(
            Measurement(
                SCENARIO, "postgresql", f"serve peak RSS, {delivered.school}", None, delivered.records,
                value=delivered.peak_rss_mb, unit="MB", note="VmHWM of syncengine serve after the delivery",
            )
        )  # fmt: skip
    return rows


def targets(measurements: Sequence[Measurement]) -> list[Target]:
    """Issue 16's benchmark targets, from figures of this run."""
    mine = [m for m in measurements if m.scenario == SCENARIO]
    by_case = {m.case: m for m in mine}

    def case(prefix: str) -> list[Measurement]:
        return [m for m in mine if m.case.startswith(prefix)]

    def ratio(a: list[Measurement], b: list[Measurement]) -> float | None:
        return a[-1].median / b[-1].median if a and b and b[-1].median else None

    p99 = by_case.get("webhook 200 -> Moodle call p99")
    return [
        Target("delivery: worker / naive, records/s", ratio(case("worker, school"), case("naive, per record")), 20),
        Target(
            "delivery: worker's Moodle calls / the budget's minimum",
            ratio(case("worker, calls"), case("minimum, calls")),
            1.5,
            at_most=True,
        ),
        Target(
            "delivery: webhook 200 -> Moodle call, p99 at 50/s",
            None if p99 is None else p99.median,
            1000,
            at_most=True,
            unit="ms",
        ),
        Target(
            "delivery: serve's peak RSS, whole school / half of it",
            ratio(case("serve peak RSS")[-1:], case("serve peak RSS")[:1]),
            1.2,
            at_most=True,
        ),
    ]


async def run(databases: Databases, sizes: Sizes) -> list[Measurement]:
    """The scenario as `python -m bench` runs it."""
    check_loopback(databases.postgres_url)
    return await measure(databases, delivery_sizes(sizes))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake"]:
        serve_fake(argv[1:])
        return 0
    from bench.run import describe_machine

    parser = argparse.ArgumentParser(prog="python -m bench.delivery", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny school: checks the harness, not the figures")
    parser.add_argument("--latency", type=float, help="seconds the fake takes a call (default 0.045)")
    parser.add_argument("--webhook-seconds", type=float, help="length of the 50/s webhook run (default 20)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    args = parser.parse_args(argv)
    sizes = SMOKE_DELIVERY if args.smoke else FULL
    overrides = {"latency": args.latency, "webhook_seconds": args.webhook_seconds}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    started = time.perf_counter()

    async def go(workdir: Path) -> list[Measurement]:
        databases = Databases(load_catalog(ROOT / "entities.yaml"), args.postgres_url, workdir)
        try:
            return await measure(databases, sizes)
        finally:
            await databases.drop_all()

    with tempfile.TemporaryDirectory(prefix="syncengine-bench-delivery-") as workdir:
        measurements = asyncio.run(go(Path(workdir)))
    print(f"## Delivery figures ({'smoke run' if args.smoke else 'full run'}, {describe_machine()})\n")
    print(figures_table(measurements))
    print("\n## Targets of issue 16 (from this run)\n")
    print(targets_table(targets(measurements)))
    print(f"\ntotal time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
