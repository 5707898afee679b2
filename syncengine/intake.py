"""The intake queue: ids Zoho notified, queued before the answer, then fetched and synced by a worker.

    await queue_ids(conn, "school", entity.name, "update", zoho_ids, channel_id=channel.id)  # caller's transaction
    worker = IntakeWorker(engine, IntakePolicy())
    counts = await worker.intake_once()     # one claim, fetched and synced: Counts(done=3, ...)
    await worker.run(stop)                  # until `stop` is set; `worker.wake()` starts a round
    page = await list_intake(database, tenant="school", state="failed")

A round claims due rows in one statement: they become `working` with a lease (their
`next_attempt_at`), so the rows of a worker killed after the callback was answered are due again
once the lease ends; on PostgreSQL `FOR UPDATE SKIP LOCKED` lets any number of workers share the
queue, on SQLite claims take turns (BEGIN IMMEDIATE). The lease time is the claim's token: the
worker renews it while it works, and writes an outcome only on rows that still carry it, so a
worker that lost its rows to another writes nothing over them. Rows of one record coalesce to its
latest operation. Per tenant and entity: `delete` ids become DELETED (no fetch); inserted and
updated ids are fetched from the tenant's Zoho in calls of at most 100 and synced
(`fetching.fetch_and_sync`). Each row ends `done` with its record's status (NEW, UPDATED, SKIPPED
with Zoho's reason...), or `failed` with the error: at once for a tenant without Zoho
credentials (the message says how to configure them) or credentials Zoho refuses, after
`IntakePolicy.attempts` tries with back-off while Zoho (or the database) is unavailable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine.engine import SyncEngine
from syncengine.exceptions import SyncEngineError, Unavailable
from syncengine.fetching import ZohoUnreachable, fetch_and_sync
from syncengine.fieldtypes import utc_now
from syncengine.parsing import DELETED_KEY
from syncengine.queues import Backoff, Listed, Page, Rounds, keeping, read_page
from syncengine.report import RecordResult
from syncengine.store import WRITES, translate
from syncengine.tables import INTAKE, engine_table
from syncengine.zoho import DEFAULT_TIMEOUT as ZOHO_TIMEOUT
from syncengine.zoho import MAX_IDS
from syncengine.zoho_sites import NoZohoCredentials, open_zoho

log = logging.getLogger(__name__)

CHANNEL = "syncengine_intake"  # the migration's trigger NOTIFYs it on every insert into the queue
OPERATIONS = ("insert", "update", "delete")
#: Every state of an intake row: `working` is claimed by a worker right now.
STATES = ("pending", "working", "done", "failed")
DUE = ("pending", "working")  # `working` rows whose lease ended are due again
#: Statuses that say all went well: no message is kept with them.
FINE = ("NEW", "UPDATED", "UNCHANGED", "DELETED")
_INTAKE = engine_table(INTAKE)


@dataclass(frozen=True)
class IntakePolicy(Backoff):
    """How an intake worker claims and retries (see `Settings` for the environment variables)."""

    batch: int = 1000  # rows claimed a round
    lease: float = 300.0  # seconds a claim holds before another worker may take it over
    retry_base: float = 5.0  # seconds before the first retry; doubled each attempt, with jitter
    retry_max: float = 600.0
    attempts: int = 10  # tries while Zoho or the database is unavailable before a row is failed
    poll: float = 5.0  # seconds between looks at the queue when nothing wakes the worker


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    retrying: int = 0

    def __bool__(self) -> bool:
        return bool(self.done or self.failed or self.retrying)

    def __str__(self) -> str:
        return f"intake: done {self.done}, retrying {self.retrying}, failed {self.failed}"


async def queue_ids(
    conn: AsyncConnection,
    tenant: str,
    entity: str,
    operation: str,
    ids: Iterable[str],
    *,
    channel_id: int | None = None,
) -> int:
    """Queue `ids` of `tenant`'s `entity` for the worker, in `conn`'s transaction; how many rows."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
    now = utc_now()
    rows = [
        {"tenant_id": tenant, "entity": entity, "zoho_id": zoho_id, "operation": operation, "state": "pending",
         "attempts": 0, "next_attempt_at": now, "channel_id": channel_id, "created_at": now, "updated_at": now}
        for zoho_id in dict.fromkeys(ids)
    ]  # fmt: skip
    if rows:
        await conn.execute(sa.insert(_INTAKE), rows)
    return len(rows)


@dataclass
class _Lease:
    """One round's claim: the rows still held, and the lease time that proves it (see the module)."""

    until: dt.datetime
    held: set[int]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class IntakeWorker:
    """Fetches and syncs the queued ids of every tenant (or of `tenant` only) through `engine`.

    `zoho_options` go to each tenant's ZohoClient (`max_attempts`, `sleep`...). Every client shares
    the worker's one HTTP connection pool (making one costs ~100 ms of CPU), closed by `aclose`."""

    def __init__(
        self,
        engine: SyncEngine,
        policy: IntakePolicy | None = None,
        *,
        tenant: str | None = None,
        on_round: Callable[[Counts], None] | None = None,
        **zoho_options: Any,
    ) -> None:
        self.engine, self.database = engine, engine.database
        self.policy, self.tenant, self.on_round = policy or IntakePolicy(), tenant, on_round
        self.zoho_options = zoho_options
        self._http: httpx.AsyncClient | None = None
        self.totals = Counts()
        self._rounds = Rounds(
            self.database, CHANNEL, "intake", "intake", self._round, self._next_due, poll=self.policy.poll
        )

    def wake(self) -> None:
        """Start a round now (the notification endpoint calls it after queuing ids)."""
        self._rounds.wake()

    # Claims.

    def _due(self, now: dt.datetime) -> sa.Select[Any]:
        i = _INTAKE
        due = sa.select(i.c.id).where(i.c.state.in_(DUE), i.c.next_attempt_at <= now)
        return due if self.tenant is None else due.where(i.c.tenant_id == self.tenant)

    async def claim(self) -> list[Any]:
        """Due rows, marked `working` until the lease ends. One short transaction."""
        i, now = _INTAKE, utc_now()
        async with self.database.connect() as conn:  # reads first: an idle round takes no write lock
            if (await conn.execute(self._due(now).limit(1))).first() is None:
                return []
        due = self._due(now).order_by(i.c.id).limit(self.policy.batch).with_for_update(skip_locked=True)
        mark = {"state": "working", "next_attempt_at": now + dt.timedelta(seconds=self.policy.lease), "updated_at": now}
        returning = (i.c.id, i.c.tenant_id, i.c.entity, i.c.zoho_id, i.c.operation, i.c.attempts, i.c.next_attempt_at)
        async with self.database.connect() as conn:
            await conn.execution_options(**{WRITES: True})  # SQLite: claims take turns (BEGIN IMMEDIATE)
            async with conn.begin():
                claimed = await conn.execute(sa.update(i).where(i.c.id.in_(due)).values(mark).returning(*returning))
                return list(claimed)

    async def _renew(self, lease: _Lease) -> None:
        """Extend the lease of the rows still held; rows another worker took over are let go."""
        i = _INTAKE
        until = utc_now() + dt.timedelta(seconds=self.policy.lease)
        async with lease.lock, self.database.begin() as conn:
            kept = await conn.execute(
                sa.update(i)
                .where(i.c.id.in_(lease.held), i.c.state == "working", i.c.next_attempt_at == lease.until)
                .values(next_attempt_at=until)
                .returning(i.c.id)
            )
            held = {r.id for r in kept}
        if lease.held - held:
            log.warning("intake lease lost", extra={"fields": {"rows": sorted(lease.held - held)}})
        lease.held, lease.until = held, until

    async def _settle(self, lease: _Lease, rows: Sequence[Any], values: Callable[[Any], dict[str, Any]]) -> None:
        """Write each row's outcome (`values(row)`) where this claim still holds it."""
        i = _INTAKE
        now = utc_now()
        async with lease.lock:
            mine = [row for row in rows if row.id in lease.held]
            if not mine:
                return
            statement = (
                sa.update(i)
                .where(i.c.id == sa.bindparam("row_id"), i.c.state == "working", i.c.next_attempt_at == lease.until)
                .values(
                    state=sa.bindparam("new_state"),
                    status=sa.bindparam("new_status"),
                    last_error=sa.bindparam("error"),
                    attempts=sa.bindparam("tries"),
                    next_attempt_at=sa.bindparam("next_at"),
                    updated_at=now,
                )
            )
            async with self.database.begin() as conn:
                await conn.execute(statement, [{"row_id": row.id, **values(row)} for row in mine])
            lease.held -= {row.id for row in mine}

    # Rounds.

    async def intake_once(self) -> Counts:
        """Claim one batch and take it in; what became of the rows."""
        rows = await self.claim()
        counts = Counts()
        if rows:
            lease = _Lease(rows[0].next_attempt_at, {r.id for r in rows})
            async with keeping(lambda: self._renew(lease), self.policy.lease, "intake"):
                groups: dict[tuple[str, str], list[Any]] = {}
                for row in rows:
                    groups.setdefault((row.tenant_id, row.entity), []).append(row)
                for (tenant, entity), claimed in groups.items():
                    await self._take_in(lease, tenant, entity, claimed, counts)
        for name in ("done", "failed", "retrying"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))
        if counts and self.on_round is not None:
            self.on_round(counts)
        return counts

    async def _take_in(self, lease: _Lease, tenant: str, entity: str, rows: list[Any], counts: Counts) -> None:
        """One tenant's entity: deletions applied, the rest fetched in calls of 100 and synced."""
        rows_of: dict[str, list[Any]] = {}
        for row in sorted(rows, key=lambda r: r.id):
            rows_of.setdefault(row.zoho_id, []).append(row)
        latest = {zoho_id: claimed[-1].operation for zoho_id, claimed in rows_of.items()}
        deletes = [zoho_id for zoho_id, operation in latest.items() if operation == "delete"]
        fetches = [zoho_id for zoho_id, operation in latest.items() if operation != "delete"]
        if entity not in self.engine.catalog.entities:
            known = ", ".join(self.engine.catalog.entities)
            gone = f"entity '{entity}' is no longer in the descriptors (known: {known}); nothing was fetched"
            await self._fail(lease, rows, gone, counts)
            return
        try:
            if deletes:
                records = [{"id": zoho_id, DELETED_KEY: True} for zoho_id in deletes]
                report = await self.engine.sync(tenant, entity, records)
                await self._done(lease, rows_of, report.results, counts)
            if fetches:
                self._http = self._http or httpx.AsyncClient(timeout=ZOHO_TIMEOUT)
                zoho = await open_zoho(self.database, tenant, http=self._http, **self.zoho_options)
                for start in range(0, len(fetches), MAX_IDS):
                    chunk = fetches[start : start + MAX_IDS]
                    report = await fetch_and_sync(self.engine, zoho, tenant, entity, chunk)
                    await self._done(lease, rows_of, report.results, counts)
        except NoZohoCredentials as error:  # a person must act: retrying would change nothing
            await self._fail(lease, self._left(lease, rows), str(error), counts)
        except Exception as error:  # Zoho unreachable or throttled past the client's retries, the database away
            failure = error if isinstance(error, SyncEngineError) else translate(error)
            if not isinstance(failure, Unavailable):
                raise  # a bug: logged by the loop; the rows are due again when the lease ends
            why = failure.reason if isinstance(failure, ZohoUnreachable) else str(failure)
            await self._retry(lease, self._left(lease, rows), why, counts)

    @staticmethod
    def _left(lease: _Lease, rows: list[Any]) -> list[Any]:
        return [row for row in rows if row.id in lease.held]

    async def _done(
        self, lease: _Lease, rows_of: dict[str, list[Any]], results: list[RecordResult], counts: Counts
    ) -> None:
        outcome = {result.zoho_id: result for result in results if result.zoho_id is not None}
        rows = [row for zoho_id in outcome for row in rows_of.get(zoho_id, ())]
        now = utc_now()

        def values(row: Any) -> dict[str, Any]:
            result = outcome[row.zoho_id]
            return {"new_state": "done", "new_status": result.status, "error": _problem(result),
                    "tries": row.attempts + 1, "next_at": now}  # fmt: skip

        await self._settle(lease, rows, values)
        counts.done += len(rows)

    async def _fail(self, lease: _Lease, rows: list[Any], error: str, counts: Counts) -> None:
        now = utc_now()
        await self._settle(lease, rows, lambda row: {"new_state": "failed", "new_status": None, "error": error,
                                                      "tries": row.attempts + 1, "next_at": now})  # fmt: skip
        counts.failed += len(rows)

    async def _retry(self, lease: _Lease, rows: list[Any], error: str, counts: Counts) -> None:
        """Pending again after a back-off, or failed once a row has had its attempts."""
        now = utc_now()

        def values(row: Any) -> dict[str, Any]:
            tries = row.attempts + 1
            if tries >= self.policy.attempts:
                return {"new_state": "failed", "new_status": None, "tries": tries, "next_at": now,
                        "error": f"{error} (gave up after {tries} attempts)"}  # fmt: skip
            wait = dt.timedelta(seconds=self.policy.backoff(tries))
            return {"new_state": "pending", "new_status": None, "error": error, "tries": tries, "next_at": now + wait}

        await self._settle(lease, rows, values)
        for row in rows:
            if row.attempts + 1 >= self.policy.attempts:
                counts.failed += 1
            else:
                counts.retrying += 1

    # The loop.

    async def run(self, stop: asyncio.Event) -> None:
        """Take in until `stop` is set: a round whenever woken, when rows fall due, or every `poll`."""
        try:
            await self._rounds.run(stop)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections to Zoho (a later round opens new ones)."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def _round(self) -> bool:
        return bool(await self.intake_once())

    async def _next_due(self) -> float | None:
        """Seconds until the next row falls due (negative: due now), or None."""
        i = _INTAKE
        query = sa.select(sa.func.min(i.c.next_attempt_at)).where(i.c.state.in_(DUE))
        if self.tenant is not None:
            query = query.where(i.c.tenant_id == self.tenant)
        try:
            async with self.database.connect() as conn:
                first = (await conn.execute(query)).scalar()
        except Exception:
            return None
        return None if first is None else float((first - utc_now()).total_seconds())


def _problem(result: RecordResult) -> str | None:
    """What a record's result says went wrong, if anything: its message and field errors."""
    if result.status in FINE:
        return None
    errors = "; ".join(f"{e.field}: {e.message}" for e in result.errors or ())
    return f"{result.message}: {errors}" if errors else result.message


# Looking at the queue (`syncengine intake list`, `GET /v1/intake`).


@dataclass(frozen=True)
class Intake(Listed):
    """One intake row as `intake list` and `GET /v1/intake` show it."""

    status: str | None  # the record's outcome once done
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None  # pending and working rows only
    created_at: dt.datetime
    updated_at: dt.datetime


async def list_intake(
    database: AsyncEngine,
    *,
    tenant: str | None = None,
    state: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> Page[Intake]:
    """The intake rows of `tenant` (or every tenant) in `state` (or any), oldest first, `limit` at a time."""
    async with database.connect() as conn:
        found = await read_page(conn, _INTAKE, STATES, tenant=tenant, state=state, limit=limit, after_id=after_id)
    rows = [
        Intake(
            **Listed.common(r),
            status=r.status,
            attempts=int(r.attempts),
            last_error=r.last_error,
            next_attempt_at=r.next_attempt_at if r.state in DUE else None,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r in found.rows
    ]
    return Page(found.counts, rows, found.next_after_id)
