"""What every database-queued worker shares: its run loop, retry back-off, lease keeper and paged listing.

    rounds = Rounds(database, "syncengine_outbox", "delivery", "outbox", one_round, next_due, poll=5.0)
    await rounds.run(stop)            # one_round() whenever woken, when rows fall due, or every `poll`
    rounds.wake()                     # a round now (a commit that queued rows)
    async with keeping(renew, 300.0, "delivery"):   # renew() every third of the lease while it works
        ...
    page = await read_page(conn, table, STATES, tenant="school", limit=100)   # Page(counts, rows, next_after_id)

The delivery outbox (delivery.py) and the Zoho intake queue (intake.py) are such queues: their
rows are claimed with a lease, retried with back-off, woken by NOTIFY on PostgreSQL (a LISTEN
connection of the worker's own, reconnected when lost, a poll while it cannot be) or by `wake()`
in the process that queued them (SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from syncengine.exceptions import Unavailable
from syncengine.store import translate

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Seconds to open the LISTEN connection: a database that does not answer is tried again next round.
LISTEN_CONNECT_TIMEOUT = 5.0


class Backoff:
    """The retry policy's back-off, for a policy dataclass with `retry_base` and `retry_max` (seconds)."""

    retry_base: float
    retry_max: float

    def backoff(self, attempts: int) -> float:
        """Seconds before try `attempts + 1`: `retry_base` doubled each attempt up to `retry_max`,
        the upper half of it at random (jitter: workers do not retry in step)."""
        ceiling: float = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Rounds:
    """A worker's loop: `one_round()` (whether it did anything) whenever woken, when a row falls
    due (`next_due()`: seconds until then, negative when due now, None when nothing is queued), or
    every `poll` seconds; again at once while it did something and rows are due. After a sleep it
    lets wake-ups gather for `gather` seconds, so that a burst of commits makes one round. `what`
    names the worker in the log (`delivery round failed`), `rows` its queue (`outbox rows`)."""

    def __init__(
        self,
        database: AsyncEngine,
        channel: str,
        what: str,
        rows: str,
        one_round: Callable[[], Awaitable[bool]],
        next_due: Callable[[], Awaitable[float | None]],
        *,
        poll: float,
        gather: float = 0.0,
    ) -> None:
        self.database, self.channel, self.what, self.rows = database, channel, what, rows
        self.one_round, self.next_due, self.poll, self.gather = one_round, next_due, poll, gather
        self._wake = asyncio.Event()
        self._listener_driver: Any = None  # asyncpg's connection under the LISTENing one
        self._listen_database: AsyncEngine | None = None

    def wake(self) -> None:
        """Start a round now."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set."""
        listener: AsyncConnection | None = None
        try:
            while not stop.is_set():
                listener = await self._listening(listener)
                self._wake.clear()
                try:
                    worked = await self.one_round()
                except Exception as error:  # tried again after the poll interval
                    trouble = translate(error)
                    if isinstance(trouble, Unavailable):  # a known state of the database: one line
                        log.warning("%s round failed (%s); trying again", self.what, trouble)
                    else:
                        log.exception("%s round failed", self.what)
                    worked = False
                wait = await self.next_due()
                if worked and wait is not None and wait <= 0:
                    continue
                await self._sleep(stop, wait)
                if self.gather > 0:
                    await self._sleep(stop, self.gather, woken=False)  # later wake-ups join the round
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
            if self._listen_database is not None:
                await self._listen_database.dispose()

    async def _sleep(self, stop: asyncio.Event, due_in: float | None, *, woken: bool = True) -> None:
        """Until `due_in` seconds (at most `poll`) have passed, `stop` is set or (`woken`) a wake-up."""
        timeout = self.poll if due_in is None else max(0.0, min(self.poll, due_in))
        waits = [asyncio.ensure_future(stop.wait())]
        if woken:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _listening(self, listener: AsyncConnection | None) -> AsyncConnection | None:
        """On PostgreSQL, a connection LISTENing on the channel that wakes this worker: the one given
        while it is open, else a new one. None on SQLite (the process that queues rows wakes its
        worker), or while the database cannot be reached (the poll covers the gap, and the next
        round tries again)."""
        if self.database.dialect.name != "postgresql":
            return None
        if listener is not None:
            if not listener.closed and not self._listener_driver.is_closed():
                return listener
            with contextlib.suppress(Exception):
                await listener.close()
        if self._listen_database is None:  # its own connection: not one of the pool that serves requests
            self._listen_database = create_async_engine(
                self.database.url, poolclass=sa.pool.NullPool, connect_args={"timeout": LISTEN_CONNECT_TIMEOUT}
            )
        try:
            conn = await self._listen_database.connect()
        except Exception as error:
            log.warning("could not LISTEN for %s rows (%s); polling every %s s", self.rows, error, self.poll)
            return None
        try:
            raw = await conn.get_raw_connection()
            self._listener_driver = raw.driver_connection
            await self._listener_driver.add_listener(self.channel, lambda *_: self.wake())
        except Exception:
            await conn.close()
            log.warning("could not LISTEN for %s rows; polling every %s s", self.rows, self.poll)
            return None
        return conn


@contextlib.asynccontextmanager
async def keeping(renew: Callable[[], Awaitable[None]], lease: float, what: str) -> AsyncIterator[None]:
    """While the block runs, `renew()` the claim's lease every third of `lease` seconds (a database
    error is logged and tried again a third later); stopped when the block ends."""

    async def keep() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await renew()
            except Exception:
                log.exception("could not renew the %s lease", what)

    keeper = asyncio.ensure_future(keep())
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


@dataclass(frozen=True)
class Listed:
    """A queue row as a listing shows it: what every queue's rows have (each queue adds its own fields)."""

    id: int
    tenant: str
    entity: str
    zoho_id: str
    operation: str
    state: str

    @staticmethod
    def common(row: Any) -> dict[str, Any]:
        """The fields above from a queue table's row: `Intake(**Listed.common(row), status=...)`."""
        return {"id": int(row.id), "tenant": row.tenant_id, "entity": row.entity, "zoho_id": row.zoho_id,
                "operation": row.operation, "state": row.state}  # fmt: skip

    def to_builtins(self, *, tenant: bool = True) -> dict[str, Any]:
        """Its fields by name; without `tenant` when the caller is that tenant."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not tenant:
            del values["tenant"]
        return values


@dataclass(frozen=True)
class Page(Generic[T]):
    """Counts per state (of the tenant, or of every tenant) and one page of rows, by id."""

    counts: dict[str, int]
    rows: list[T]
    next_after_id: int | None  # pass as `after_id` for the next page; None: this was the last


async def read_page(
    conn: AsyncConnection,
    table: sa.Table,
    states: Sequence[str],
    *,
    tenant: str | None = None,
    state: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> Page[Any]:
    """The rows of queue `table` of `tenant` (or every tenant) in `state` (or any), by id after
    `after_id`, `limit` of them, with the counts per state (each of `states`, 0 if none)."""
    t = table
    counting = sa.select(t.c.state, sa.func.count()).group_by(t.c.state)
    query = sa.select(t).order_by(t.c.id).limit(limit + 1)
    if tenant is not None:
        counting, query = counting.where(t.c.tenant_id == tenant), query.where(t.c.tenant_id == tenant)
    if state is not None:
        query = query.where(t.c.state == state)
    if after_id is not None:
        query = query.where(t.c.id > after_id)
    counts = dict.fromkeys(states, 0) | {row[0]: int(row[1]) for row in await conn.execute(counting)}
    rows = list(await conn.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(counts, rows, int(rows[-1].id) if more and rows else None)
