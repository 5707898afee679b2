"""The delivery worker: claims outbox rows, makes each record's Moodle targets what its stored state says.

    worker = Worker(catalog, database, Policy())
    counts = await worker.deliver_once()          # one claim, delivered: Counts(delivered=3, ...)
    await worker.run(stop)                        # until `stop` is set; `worker.wake()` starts a round

A round claims due rows (`claim`): one statement marks them `working` with a lease (their
`next_attempt_at`), so a killed worker's rows are due again once the lease ends; on PostgreSQL
`FOR UPDATE SKIP LOCKED` lets any number of workers share the outbox. The pending rows of one
record coalesce: its latest stored state (read from the entity table, deleted or not) is delivered
once and every row is marked done. Targets go in the catalog's order (parents first), batched per
entity and target through targets.py. A looked-up Moodle id not known yet makes a record `waiting`
(with the reason) until a parent is delivered; a Moodle error makes it `pending` again after a
back-off (exponential, with jitter), or `dead` after `Policy.attempts` (transient errors) or
`Policy.permanent_attempts` (permanent ones), keeping Moodle's errorcode and message. What Moodle
holds is recorded in `syncengine_moodle_links`, never in the entity rows that sync batches
version-check. Only tenants with a Moodle site (sites.py) are claimed: the others' rows wait, pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from syncengine import targets
from syncengine.descriptors import Catalog, Entity
from syncengine.exceptions import Unavailable
from syncengine.fieldtypes import utc_now
from syncengine.mapping import DesiredState, Record, Target, desired_state
from syncengine.moodle import MoodleClient, MoodleError
from syncengine.sites import SITES, Site, read_site
from syncengine.store import WRITES, translate
from syncengine.tables import build_metadata, engine_table

log = logging.getLogger(__name__)
#: Seconds to open the LISTEN connection: a database that does not answer is tried again next round.
LISTEN_CONNECT_TIMEOUT = 5.0

CHANNEL = "syncengine_outbox"  # the migration's trigger NOTIFYs it on every insert into the outbox
DUE = ("pending", "waiting", "working")  # `working` rows whose lease ended are due again
CLAIM_LOCK = 0x5E0D_0B0C  # the PostgreSQL advisory lock that claims take in turn
Key = tuple[str, str]  # (entity, zoho_id)


@dataclass(frozen=True)
class Policy:
    """How a worker claims and retries (see `Settings` for the environment variables)."""

    batch: int = 500  # rows claimed a round
    lease: float = 300.0  # seconds a claim holds before another worker may take it over
    retry_base: float = 5.0  # seconds before the first retry; doubled each attempt, with jitter
    retry_max: float = 3600.0
    attempts: int = 20  # transient failures (Moodle down, timeouts) before a row is dead
    permanent_attempts: int = 3  # permanent failures (Moodle refuses the values) before a row is dead
    waiting_recheck: float = 300.0  # seconds between checks of a waiting row, besides its parents' delivery
    poll: float = 5.0  # seconds between looks at the outbox when nothing wakes the worker
    #: Seconds a worker lets wake-ups gather before its next round: every commit of a record wakes
    #: it, and a round per commit would take the database and the event loop from the requests
    #: (serve's webhooks: half their rate); a round per `gather` delivers them together.
    gather: float = 0.1

    def backoff(self, attempts: int) -> float:
        ceiling: float = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter: workers do not retry in step


@dataclass
class Counts:
    delivered: int = 0
    waiting: int = 0
    retrying: int = 0
    dead: int = 0

    def __bool__(self) -> bool:
        return bool(self.delivered or self.waiting or self.retrying or self.dead)

    def __str__(self) -> str:
        return f"delivered {self.delivered}, waiting {self.waiting}, retrying {self.retrying}, dead {self.dead}"


@dataclass
class _Lease:
    """One round's claim: the rows still held and the lease time that proves it.

    The lease time is the claim's token: the worker renews it while it delivers (every third of the
    lease, and before each batch of Moodle calls), and a row whose token changed was taken over by
    another worker after the lease ran out; its record is left to that worker (no call, no link, no
    settle), whose find-before-create links whatever this one made in Moodle.
    """

    until: dt.datetime
    held: set[int]
    rows_of: dict[tuple[str, str, str], frozenset[int]]  # (tenant, entity, zoho_id) -> its claimed rows
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def holds(self, tenant: str, key: Key) -> bool:
        return self.rows_of[(tenant, *key)] <= self.held


@dataclass
class _Result:
    """What became of one record's targets in a round."""

    errors: list[MoodleError] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


class Worker:
    """Delivers the outbox of every tenant with a Moodle site (or of `tenant` only)."""

    def __init__(
        self,
        catalog: Catalog,
        database: AsyncEngine,
        policy: Policy | None = None,
        *,
        tenant: str | None = None,
        on_round: Callable[[Counts], None] | None = None,
    ) -> None:
        self.catalog, self.database, self.policy, self.tenant = catalog, database, policy or Policy(), tenant
        self.on_round = on_round
        metadata = build_metadata(catalog)
        self.outbox = metadata.tables["syncengine_outbox"]
        self.links = metadata.tables["syncengine_moodle_links"]
        self.tables = metadata.tables
        self._wake = asyncio.Event()
        self._listener_driver: Any = None  # asyncpg's connection under the LISTENing one
        self._listen_database: AsyncEngine | None = None
        self._budgets: dict[str, tuple[int, targets.Budget]] = {}  # tenant -> (its setting, what Moodle takes)
        self.totals = Counts()

    def wake(self) -> None:
        """Start a round now (the engine calls it after a commit that wrote outbox rows)."""
        self._wake.set()

    # Claims.

    async def _site_tenants(self, conn: AsyncConnection) -> list[str]:
        """The tenants whose rows this worker delivers: those with a Moodle site (or `tenant`, if it has one)."""
        query = sa.select(SITES.c.tenant_id)
        if self.tenant is not None:
            query = query.where(SITES.c.tenant_id == self.tenant)
        return list((await conn.execute(query)).scalars())

    async def claim(self) -> list[Any]:
        """Due rows of tenants with a site, marked `working` until the lease ends, with every other
        pending row of the same records (coalesced). One short transaction."""
        o, now = self.outbox, utc_now()
        lease = now + dt.timedelta(seconds=self.policy.lease)
        held = o.alias("held")  # a record another worker is delivering is left to it, all its rows
        busy = sa.exists().where(
            held.c.tenant_id == o.c.tenant_id,
            held.c.entity == o.c.entity,
            held.c.zoho_id == o.c.zoho_id,
            held.c.state == "working",
            held.c.next_attempt_at > now,
        )
        async with self.database.connect() as conn:  # reads first: an idle round takes no write lock (SQLite)
            tenants = await self._site_tenants(conn)
            if not tenants:  # nothing is claimed: the outbox is not even read
                return []
            due = sa.select(o.c.id).where(
                o.c.state.in_(DUE), o.c.next_attempt_at <= now, o.c.tenant_id.in_(tenants), ~busy
            )
            if (await conn.execute(due.limit(1))).first() is None:
                return []
        due = due.order_by(o.c.id).limit(self.policy.batch).with_for_update(skip_locked=True)
        mark = {"state": "working", "next_attempt_at": lease}
        returning = (o.c.id, o.c.tenant_id, o.c.entity, o.c.zoho_id, o.c.attempts, o.c.next_attempt_at)
        async with self.database.begin() as conn:
            if conn.dialect.name == "postgresql":  # claims one at a time, so two never split one record
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK)))
            rows = list(await conn.execute(sa.update(o).where(o.c.id.in_(due)).values(mark).returning(*returning)))
            keys = {(r.tenant_id, r.entity, r.zoho_id) for r in rows}
            if keys:
                same = (
                    sa.select(o.c.id)
                    .where(
                        o.c.state.in_(("pending", "waiting")),
                        sa.tuple_(o.c.tenant_id, o.c.entity, o.c.zoho_id).in_(keys),
                    )
                    .with_for_update(skip_locked=True)
                )
                rows += list(
                    await conn.execute(sa.update(o).where(o.c.id.in_(same)).values(mark).returning(*returning))
                )
        return rows

    async def _settle(self, lease: _Lease, rows: Sequence[Any], values: dict[str, Any]) -> None:
        """Set `values` on claimed rows still held by this claim (a lease taken over is left alone);
        a record delivered settles its older dead rows too: its latest state is in Moodle."""
        o = self.outbox
        async with lease.lock, self.database.begin() as conn:
            ids = [row.id for row in rows if row.id in lease.held]
            settled = await conn.execute(
                sa.update(o)
                .where(o.c.id.in_(ids), o.c.state == "working", o.c.next_attempt_at == lease.until)
                .values(values)
                .returning(o.c.id)
            )
            done = {r.id for r in settled}
            lease.held -= {row.id for row in rows}
            if values["state"] == "done" and done:
                first = rows[0]
                await conn.execute(
                    sa.update(o)
                    .where(
                        o.c.tenant_id == first.tenant_id,
                        o.c.entity == first.entity,
                        o.c.zoho_id == first.zoho_id,
                        o.c.state == "dead",
                        o.c.id < max(done),
                    )
                    .values(state="done", next_attempt_at=values["next_attempt_at"])
                )

    async def _renew(self, lease: _Lease, conn: AsyncConnection | None = None) -> None:
        """Extend the lease of the rows still held, in `conn`'s transaction if given; rows another
        worker took over (their lease had run out) are no longer held."""
        o = self.outbox
        until = utc_now() + dt.timedelta(seconds=self.policy.lease)
        renew = (
            sa.update(o)
            .where(o.c.id.in_(lease.held), o.c.state == "working", o.c.next_attempt_at == lease.until)
            .values(next_attempt_at=until)
            .returning(o.c.id)
        )
        if conn is None:
            async with lease.lock, self.database.begin() as own:
                kept = {r.id for r in await own.execute(renew)}
        else:
            kept = {r.id for r in await conn.execute(renew)}
        if lease.held - kept:
            log.warning("delivery lease lost", extra={"fields": {"rows": sorted(lease.held - kept)}})
        lease.held, lease.until = kept, until

    async def _keep(self, lease: _Lease) -> None:
        """Renew the lease every third of it until cancelled (a database error is logged and retried)."""
        while True:
            await asyncio.sleep(self.policy.lease / 3)
            try:
                await self._renew(lease)
            except Exception:
                log.exception("could not renew the delivery lease")

    # Rounds.

    async def deliver_once(self) -> Counts:
        """Claim one batch and deliver it; what became of the records."""
        rows = await self.claim()
        counts = Counts()
        by_tenant: dict[str, dict[Key, list[Any]]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant_id, {}).setdefault((row.entity, row.zoho_id), []).append(row)
        if rows:
            rows_of = {
                (tenant, *key): frozenset(r.id for r in claimed)
                for tenant, records in by_tenant.items()
                for key, claimed in records.items()
            }
            lease = _Lease(rows[0].next_attempt_at, {r.id for r in rows}, rows_of)
            keeper = asyncio.ensure_future(self._keep(lease))
            try:
                for tenant, records in by_tenant.items():
                    await self._deliver_tenant(lease, tenant, records, counts)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        for name in ("delivered", "waiting", "retrying", "dead"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))
        if counts and self.on_round is not None:
            self.on_round(counts)
        return counts

    async def _deliver_tenant(self, lease: _Lease, tenant: str, records: dict[Key, list[Any]], counts: Counts) -> None:
        async with self.database.connect() as conn:
            site = await read_site(conn, tenant)
        if site is None:  # removed since the claim: back to pending, untouched
            claimed = [r for rows in records.values() for r in rows]
            await self._settle(lease, claimed, {"state": "pending", "next_attempt_at": utc_now()})
            return
        results: dict[Key, _Result] = {key: _Result() for key in records}
        delivered_any = False
        async with MoodleClient(site.url, site.token) as client:
            for entity in self.catalog:
                keys = [key for key in records if key[0] == entity.name]
                if keys and entity.moodle:
                    delivered_any |= await self._deliver_entity(
                        lease, client, site, entity, [k[1] for k in keys], results
                    )
        for key, rows in records.items():
            if lease.holds(tenant, key):
                await self._finish(lease, tenant, rows, results[key], counts)
        if delivered_any:  # a parent may have got its Moodle id: its waiting children are due now
            o = self.outbox
            async with self.database.begin() as conn:
                waiting = sa.update(o).where(o.c.tenant_id == tenant, o.c.state == "waiting")
                await conn.execute(waiting.values(next_attempt_at=utc_now()))

    async def _finish(self, lease: _Lease, tenant: str, rows: list[Any], result: _Result, counts: Counts) -> None:
        attempts = max(row.attempts for row in rows)
        if result.errors:
            error = result.errors[0]
            attempts += 1
            limit = self.policy.attempts if all(e.transient for e in result.errors) else self.policy.permanent_attempts
            permanent = next((e for e in result.errors if not e.transient), error)
            message = f"{permanent.errorcode}: {permanent}"
            if attempts >= limit:
                counts.dead += 1
                values = {"state": "dead", "attempts": attempts, "last_error": message}
                log.warning("delivery dead", extra={"fields": {"tenant": tenant, "error": message}})
            else:
                counts.retrying += 1
                later = utc_now() + dt.timedelta(seconds=self.policy.backoff(attempts))
                values = {"state": "pending", "attempts": attempts, "last_error": message, "next_attempt_at": later}
        elif result.waiting:
            counts.waiting += 1
            later = utc_now() + dt.timedelta(seconds=self.policy.waiting_recheck)
            values = {"state": "waiting", "last_error": "; ".join(result.waiting), "next_attempt_at": later}
        else:
            counts.delivered += 1
            values = {"state": "done", "last_error": None, "next_attempt_at": utc_now()}
        await self._settle(lease, rows, values)

    async def _deliver_entity(
        self,
        lease: _Lease,
        client: MoodleClient,
        site: Site,
        entity: Entity,
        zoho_ids: list[str],
        results: dict[Key, _Result],
    ) -> bool:
        """Each target of `entity`, in the mapping's order, for the records `zoho_ids`; whether
        any Moodle object was created or changed."""
        records = await self._records(site.tenant, entity, zoho_ids)
        for zoho_id in zoho_ids:
            if zoho_id not in records:  # a delete of a record never stored: nothing is in Moodle
                records[zoho_id] = Record(zoho_id, {}, deleted=True)
        changed = False
        assert entity.moodle is not None
        for target in entity.moodle:
            states = {z: desired_state(target, r, {}) for z, r in records.items()}
            needed = {key for state in states.values() for key in state.missing}
            ids = await self._moodle_ids(site.tenant, needed)
            states = {z: desired_state(target, records[z], ids) for z in records}
            links = await self._links(site.tenant, entity.name, target.name, list(records))
            changed |= await self._deliver_target(lease, client, site, entity, target, states, links, results)
        return changed

    async def _deliver_target(
        self,
        lease: _Lease,
        client: MoodleClient,
        site: Site,
        entity: Entity,
        target: Target,
        states: dict[str, DesiredState],
        links: dict[str, Any],
        results: dict[Key, _Result],
    ) -> bool:
        send: dict[str, DesiredState] = {}
        for zoho_id, state in states.items():
            link = links.get(zoho_id)
            if link is not None and link.digest == state.digest:
                continue  # Moodle already holds this
            if not state.active and link is None:
                continue  # never reached Moodle: nothing to leave
            if state.missing and not (not state.active and state.leave == "nothing"):
                what = ", ".join(f"{e} {z}" for e, z in state.missing)
                results[(entity.name, zoho_id)].waiting.append(
                    f"{target.name}: waiting for the Moodle id of {what} (not delivered yet)"
                )
                continue
            send[zoho_id] = state
        if send:  # fenced: nothing is sent for a record whose lease another worker took over
            await self._renew(lease)
            send = {z: s for z, s in send.items() if lease.holds(site.tenant, (entity.name, z))}
        if not send:
            return False
        try:
            outcomes = await self._send(client, self._budget(site), target, send, links)
        except MoodleError as error:  # a look-up failed: nothing of this target was sent
            outcomes = {zoho_id: targets.Outcome(error=error) for zoho_id in send}
        rows = []
        for zoho_id, state in send.items():
            outcome = outcomes.get(zoho_id)
            if outcome is not None and outcome.error is not None:
                results[(entity.name, zoho_id)].errors.append(outcome.error)
                continue
            link = links.get(zoho_id)
            moodle_id = outcome.moodle_id if outcome is not None and outcome.moodle_id is not None else None
            if moodle_id is None and link is not None:
                moodle_id = link.moodle_id
            rows.append({"zoho_id": zoho_id, "moodle_id": moodle_id, "digest": state.digest, "active": state.active})
        return await self._save_links(lease, site.tenant, entity.name, target.name, rows)

    def _budget(self, site: Site) -> targets.Budget:
        """The tenant's `max_input_vars` budget, as lowered by the cuts this worker saw (until the setting changes)."""
        setting, budget = self._budgets.get(site.tenant, (None, None))
        if budget is None or setting != site.max_input_vars:
            budget = targets.Budget(site.max_input_vars)
            self._budgets[site.tenant] = (site.max_input_vars, budget)
        return budget

    async def _send(
        self,
        client: MoodleClient,
        budget: targets.Budget,
        target: Target,
        send: dict[str, DesiredState],
        links: dict[str, Any],
    ) -> dict[str, targets.Outcome]:
        """The calls of one target for the records whose state changed, by kind and leave action."""
        outcomes: dict[str, targets.Outcome] = {}
        leaving = {z: s for z, s in send.items() if not s.active}
        staying = {z: s for z, s in send.items() if s.active}
        if target.kind.name == "enrolment":
            unenrol = {z: s.params for z, s in leaving.items() if s.leave == "unenrol"}
            enrol = {z: s.params for z, s in send.items() if z not in unenrol and (s.active or s.leave != "nothing")}
            outcomes |= await targets.enrol(client, budget, enrol) if enrol else {}
            outcomes |= await targets.unenrol(client, budget, unenrol) if unenrol else {}
        else:
            kind = targets.BY_NAME[target.kind.name]
            if staying:
                known = {z: int(links[z].moodle_id) for z in staying if z in links and links[z].moodle_id is not None}
                outcomes |= await targets.deliver(
                    client, kind, budget, {z: s.params for z, s in staying.items()}, known
                )
            # Leaving sends the state change alone (suspended=1, visible=0): Moodle's update changes only
            # the fields it is given, so the rest stays as last delivered, and a value Moodle would
            # refuse now (an email taken meanwhile) cannot block a suspension.
            state = target.kind.state
            acting = {
                z: (int(links[z].moodle_id), {state.name: s.params[state.name]})
                for z, s in leaving.items()
                if state is not None and s.leave != "nothing" and links[z].moodle_id is not None
            }
            outcomes |= await targets.update(client, kind, budget, acting) if acting else {}
        return outcomes

    # Reading and writing delivery state.

    async def _records(self, tenant: str, entity: Entity, zoho_ids: list[str]) -> dict[str, Record]:
        table = self.tables[entity.name]
        columns = [table.c[f.value_column] for f in entity.fields]
        query = sa.select(table.c.zoho_id, table.c.deleted_at, *columns).where(table.c.zoho_id.in_(zoho_ids))
        records: dict[str, Record] = {}
        async with self.database.connect() as conn:
            for row in await conn.execute(query.where(table.c.tenant_id == tenant)):
                values = {
                    f.name: None if v is None else f.type.from_db(v)
                    for f, v in zip(entity.fields, row[2:], strict=True)
                }
                records[row.zoho_id] = Record(row.zoho_id, values, deleted=row.deleted_at is not None)
        return records

    async def _moodle_ids(self, tenant: str, keys: set[Key]) -> dict[Key, int]:
        """The Moodle ids of looked-up records: each entity's first target's link."""
        if not keys:
            return {}
        first = {e.name: e.moodle[0].name for e in self.catalog if e.moodle}
        links = self.links
        wanted = [(e, z, first[e]) for e, z in keys if e in first]
        query = sa.select(links.c.entity, links.c.zoho_id, links.c.moodle_id).where(
            links.c.tenant_id == tenant,
            sa.tuple_(links.c.entity, links.c.zoho_id, links.c.target).in_(wanted),
            links.c.moodle_id.is_not(None),
        )
        async with self.database.connect() as conn:
            return {(r.entity, r.zoho_id): int(r.moodle_id) for r in await conn.execute(query)}

    async def _links(self, tenant: str, entity: str, target: str, zoho_ids: list[str]) -> dict[str, Any]:
        links = self.links
        query = sa.select(links.c.zoho_id, links.c.moodle_id, links.c.digest, links.c.active).where(
            links.c.tenant_id == tenant,
            links.c.entity == entity,
            links.c.target == target,
            links.c.zoho_id.in_(zoho_ids),
        )
        async with self.database.connect() as conn:
            return {r.zoho_id: r for r in await conn.execute(query)}

    async def _save_links(
        self, lease: _Lease, tenant: str, entity: str, target: str, rows: list[dict[str, Any]]
    ) -> bool:
        """Record what Moodle now holds, for the records whose lease this worker still holds (checked
        in the same transaction); whether anything was recorded."""
        if not rows:
            return False
        async with lease.lock:
            before = (set(lease.held), lease.until)
            try:
                async with self.database.begin() as conn:
                    await self._renew(lease, conn)
                    rows = [r for r in rows if lease.holds(tenant, (entity, r["zoho_id"]))]
                    if not rows:
                        return False
                    values = [
                        {"tenant_id": tenant, "entity": entity, "target": target, "delivered_at": utc_now(), **r}
                        for r in rows
                    ]
                    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(self.links)
                    statement = insert.on_conflict_do_update(
                        index_elements=["tenant_id", "entity", "zoho_id", "target"],
                        set_={
                            name: insert.excluded[name] for name in ("moodle_id", "digest", "active", "delivered_at")
                        },
                    )
                    await conn.execute(statement, values)
            except BaseException:  # rolled back: the lease stands as it was
                lease.held, lease.until = before
                raise
        return True

    # The loop.

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set: a round whenever woken, when rows fall due, or every `poll`."""
        listener: AsyncConnection | None = None
        try:
            while not stop.is_set():
                listener = await self._listening(listener)
                self._wake.clear()
                try:
                    counts = await self.deliver_once()
                except Exception as error:  # tried again after the poll interval
                    trouble = translate(error)
                    if isinstance(trouble, Unavailable):  # a known state of the database: one line
                        log.warning("delivery round failed (%s); trying again", trouble)
                    else:
                        log.exception("delivery round failed")
                    counts = Counts()
                if counts and await self._more_due():
                    continue
                await self._sleep(stop, await self._next_due())
                await self._sleep(stop, self.policy.gather, woken=False)  # later wake-ups join the round
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
            if self._listen_database is not None:
                await self._listen_database.dispose()

    async def _more_due(self) -> bool:
        wait = await self._next_due()
        return wait is not None and wait <= 0

    async def _next_due(self) -> float | None:
        """Seconds until the next row that a round would claim falls due (negative: due now), or
        None. Rows of tenants without a Moodle site are never claimed, so they are not counted
        (they would make the worker loop without a pause)."""
        o = self.outbox
        try:
            async with self.database.connect() as conn:
                tenants = await self._site_tenants(conn)
                if not tenants:
                    return None
                query = sa.select(sa.func.min(o.c.next_attempt_at)).where(
                    o.c.state.in_(DUE), o.c.tenant_id.in_(tenants)
                )
                first = (await conn.execute(query)).scalar()
        except Exception:
            return None
        if first is None:
            return None
        return float((first - utc_now()).total_seconds())

    async def _sleep(self, stop: asyncio.Event, due_in: float | None, *, woken: bool = True) -> None:
        """Until `due_in` seconds (at most `poll`) have passed, `stop` is set or (`woken`) a wake-up."""
        timeout = self.policy.poll if due_in is None else max(0.0, min(self.policy.poll, due_in))
        waits = [asyncio.ensure_future(stop.wait())]
        if woken:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _listening(self, listener: AsyncConnection | None) -> AsyncConnection | None:
        """On PostgreSQL, a connection LISTENing on the outbox channel that wakes this worker: the one
        given while it is open, else a new one. None on SQLite, or while the database cannot be
        reached (the poll covers the gap, and the next round tries again)."""
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
            log.warning("could not LISTEN for outbox rows (%s); polling every %s s", error, self.policy.poll)
            return None
        try:
            raw = await conn.get_raw_connection()
            self._listener_driver = raw.driver_connection
            await self._listener_driver.add_listener(CHANNEL, lambda *_: self.wake())
        except Exception:
            await conn.close()
            log.warning("could not LISTEN for outbox rows; polling every %s s", self.policy.poll)
            return None
        return conn


# Looking at the outbox and sending again (`syncengine deliveries`, `/v1/deliveries`, reads).

#: Every state of an outbox row: `working` is claimed by a worker right now.
STATES = ("pending", "working", "waiting", "done", "dead")
_OUTBOX = engine_table("syncengine_outbox")
_LINKS = engine_table("syncengine_moodle_links")


@dataclass(frozen=True)
class Delivery:
    """One outbox row as `deliveries list` and `GET /v1/deliveries` show it."""

    id: int
    tenant: str
    entity: str
    zoho_id: str
    operation: str
    state: str
    attempts: int
    last_error: str | None
    moodle_id: int | None  # of the record's own Moodle object (its mapping's first target), once known
    next_attempt_at: dt.datetime | None  # pending, waiting and working rows only
    created_at: dt.datetime

    def to_builtins(self, *, tenant: bool = True) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if not tenant:
            del values["tenant"]
        return values


@dataclass(frozen=True)
class Page:
    """Counts per state (of the tenant, or of every tenant) and one page of rows, by id."""

    counts: dict[str, int]
    deliveries: list[Delivery]
    next_after_id: int | None  # pass as `after_id` for the next page; None: this was the last


async def list_deliveries(
    catalog: Catalog,
    database: AsyncEngine,
    *,
    tenant: str | None = None,
    state: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> Page:
    """The outbox rows of `tenant` (or every tenant) in `state` (or any), oldest first, `limit` at a time."""
    o = _OUTBOX
    counting = sa.select(o.c.state, sa.func.count()).group_by(o.c.state)
    query = sa.select(o).order_by(o.c.id).limit(limit + 1)
    if tenant is not None:
        counting, query = counting.where(o.c.tenant_id == tenant), query.where(o.c.tenant_id == tenant)
    if state is not None:
        query = query.where(o.c.state == state)
    if after_id is not None:
        query = query.where(o.c.id > after_id)
    async with database.connect() as conn:
        counts = dict.fromkeys(STATES, 0) | {row[0]: int(row[1]) for row in await conn.execute(counting)}
        rows = list(await conn.execute(query))
        more = len(rows) > limit
        rows = rows[:limit]
        ids = await _own_moodle_ids(catalog, conn, {(r.tenant_id, r.entity, r.zoho_id) for r in rows})
    deliveries = [
        Delivery(
            id=int(r.id),
            tenant=r.tenant_id,
            entity=r.entity,
            zoho_id=r.zoho_id,
            operation=r.operation,
            state=r.state,
            attempts=int(r.attempts),
            last_error=r.last_error,
            moodle_id=ids.get((r.tenant_id, r.entity, r.zoho_id)),
            next_attempt_at=r.next_attempt_at if r.state in DUE else None,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return Page(counts, deliveries, deliveries[-1].id if more and deliveries else None)


async def _own_moodle_ids(
    catalog: Catalog, conn: AsyncConnection, keys: set[tuple[str, str, str]]
) -> dict[tuple[str, str, str], int]:
    """(tenant, entity, zoho_id) -> the Moodle id of the record's first target, where known."""
    first = {e.name: e.moodle[0].name for e in catalog if e.moodle}
    wanted = [(t, e, z, first[e]) for t, e, z in keys if e in first]
    if not wanted:
        return {}
    links = _LINKS
    query = sa.select(links.c.tenant_id, links.c.entity, links.c.zoho_id, links.c.moodle_id).where(
        sa.tuple_(links.c.tenant_id, links.c.entity, links.c.zoho_id, links.c.target).in_(wanted),
        links.c.moodle_id.is_not(None),
    )
    return {(r.tenant_id, r.entity, r.zoho_id): int(r.moodle_id) for r in await conn.execute(query)}


@dataclass(frozen=True)
class Retried:
    """What a retry did: the rows requeued, the ids no row of the tenant has, the rows a worker holds."""

    requeued: list[int] = field(default_factory=list)
    not_found: list[int] = field(default_factory=list)
    working: list[int] = field(default_factory=list)

    def to_builtins(self) -> dict[str, list[int]]:
        return {"requeued": self.requeued, "not_found": self.not_found, "working": self.working}


async def retry_deliveries(
    database: AsyncEngine, *, tenant: str | None = None, ids: Sequence[int] = (), all_dead: bool = False
) -> Retried:
    """Make rows due now with no attempts made: the rows `ids` (of `tenant`, if given) or, with
    `all_dead`, every dead row. A done row is sent again in full (what its record's Moodle targets
    were last sent is forgotten); a row a worker holds (`working`) is left alone. On PostgreSQL
    the workers are woken by NOTIFY; in-process, call the engine's `on_commit` afterwards."""
    o, links = _OUTBOX, _LINKS
    found = sa.select(o.c.id, o.c.tenant_id, o.c.entity, o.c.zoho_id, o.c.state)
    found = found.where(o.c.state == "dead") if all_dead else found.where(o.c.id.in_(list(ids)))
    if tenant is not None:
        found = found.where(o.c.tenant_id == tenant)
    async with database.connect() as conn, _writing(conn):
        rows = list(await conn.execute(found.order_by(o.c.id)))
        requeue = [r for r in rows if r.state != "working"]
        if requeue:
            await conn.execute(
                sa.update(o)
                .where(o.c.id.in_([r.id for r in requeue]), o.c.state != "working")
                .values(state="pending", attempts=0, next_attempt_at=utc_now(), last_error=None)
            )
        for r in requeue:
            if r.state == "done":
                await conn.execute(
                    sa.update(links)
                    .where(links.c.tenant_id == r.tenant_id, links.c.entity == r.entity, links.c.zoho_id == r.zoho_id)
                    .values(digest="")
                )
        if requeue and conn.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))
    seen = {int(r.id) for r in rows}
    return Retried(
        requeued=[int(r.id) for r in requeue],
        not_found=[] if all_dead else sorted(set(ids) - seen),
        working=[int(r.id) for r in rows if r.state == "working"],
    )


@contextlib.asynccontextmanager
async def _writing(conn: AsyncConnection) -> AsyncIterator[None]:
    """A transaction that reads, then writes: on SQLite it takes the write lock at BEGIN
    (store.WRITES), so it queues behind another writer instead of failing to upgrade its lock."""
    await conn.execution_options(**{WRITES: True})
    async with conn.begin():
        yield


async def record_moodle_state(database: AsyncEngine, entity: Entity, tenant: str, zoho_id: str) -> dict[str, Any]:
    """A stored record's Moodle side, for `GET /v1/{entity}/{zoho_id}`: the Moodle id of its own
    object, each target of its mapping (Moodle id, `active` / `left` / `not_delivered`, when it was
    delivered), and its latest outbox row."""
    links, o = _LINKS, _OUTBOX
    linked = sa.select(links.c.target, links.c.moodle_id, links.c.active, links.c.delivered_at).where(
        links.c.tenant_id == tenant, links.c.entity == entity.name, links.c.zoho_id == zoho_id
    )
    latest = (
        sa.select(o.c.id, o.c.operation, o.c.state, o.c.attempts, o.c.next_attempt_at, o.c.last_error)
        .where(o.c.tenant_id == tenant, o.c.entity == entity.name, o.c.zoho_id == zoho_id)
        .order_by(o.c.id.desc())
        .limit(1)
    )
    async with database.connect() as conn:
        by_target = {r.target: r for r in await conn.execute(linked)}
        last = (await conn.execute(latest)).first()
    targets_ = []
    for target in entity.moodle or ():
        link = by_target.get(target.name)
        targets_.append(
            {
                "target": target.name,
                "kind": target.kind.name,
                "moodle_id": None if link is None or link.moodle_id is None else int(link.moodle_id),
                "state": "not_delivered" if link is None else "active" if link.active else "left",
                "delivered_at": None if link is None else link.delivered_at,
            }
        )
    delivery = None
    if last is not None:
        delivery = {
            "id": int(last.id),
            "operation": last.operation,
            "state": last.state,
            "attempts": int(last.attempts),
            "next_attempt_at": last.next_attempt_at if last.state in DUE else None,
            "last_error": last.last_error,
        }
    return {"moodle_id": targets_[0]["moodle_id"] if targets_ else None, "targets": targets_, "delivery": delivery}
