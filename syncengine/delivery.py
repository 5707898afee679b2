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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine import targets
from syncengine.descriptors import Catalog, Entity
from syncengine.mapping import DesiredState, Record, Target, desired_state
from syncengine.moodle import MoodleClient, MoodleError
from syncengine.sites import SITES, Site, read_site
from syncengine.tables import build_metadata

log = logging.getLogger(__name__)

CHANNEL = "syncengine_outbox"  # the migration's trigger NOTIFYs it on every insert into the outbox
DUE = ("pending", "waiting", "working")  # `working` rows whose lease ended are due again
CLAIM_LOCK = 0x5E0D_0B0C  # the PostgreSQL advisory lock that claims take in turn
KINDS = {"user": targets.USER, "category": targets.CATEGORY, "course": targets.COURSE}
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
        self._budgets: dict[str, tuple[int, targets.Budget]] = {}  # tenant -> (its setting, what Moodle takes)
        self.totals = Counts()

    def wake(self) -> None:
        """Start a round now (the engine calls it after a commit that wrote outbox rows)."""
        self._wake.set()

    # Claims.

    async def claim(self) -> list[Any]:
        """Due rows of tenants with a site, marked `working` until the lease ends, with every other
        pending row of the same records (coalesced). One short transaction."""
        o, now = self.outbox, _now()
        lease = now + dt.timedelta(seconds=self.policy.lease)
        held = o.alias("held")  # a record another worker is delivering is left to it, all its rows
        busy = sa.exists().where(
            held.c.tenant_id == o.c.tenant_id,
            held.c.entity == o.c.entity,
            held.c.zoho_id == o.c.zoho_id,
            held.c.state == "working",
            held.c.next_attempt_at > now,
        )
        due = sa.select(o.c.id).where(
            o.c.state.in_(DUE),
            o.c.next_attempt_at <= now,
            o.c.tenant_id.in_(sa.select(SITES.c.tenant_id)),
            ~busy,
        )
        if self.tenant is not None:
            due = due.where(o.c.tenant_id == self.tenant)
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
        until = _now() + dt.timedelta(seconds=self.policy.lease)
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
            await self._settle(
                lease, [r for rows in records.values() for r in rows], {"state": "pending", "next_attempt_at": _now()}
            )
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
                await conn.execute(
                    sa.update(o).where(o.c.tenant_id == tenant, o.c.state == "waiting").values(next_attempt_at=_now())
                )

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
                later = _now() + dt.timedelta(seconds=self.policy.backoff(attempts))
                values = {"state": "pending", "attempts": attempts, "last_error": message, "next_attempt_at": later}
        elif result.waiting:
            counts.waiting += 1
            later = _now() + dt.timedelta(seconds=self.policy.waiting_recheck)
            values = {"state": "waiting", "last_error": "; ".join(result.waiting), "next_attempt_at": later}
        else:
            counts.delivered += 1
            values = {"state": "done", "last_error": None, "next_attempt_at": _now()}
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
            kind = KINDS[target.kind.name]
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
                        {"tenant_id": tenant, "entity": entity, "target": target, "delivered_at": _now(), **r}
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
                except Exception:  # a database or bug: logged, and tried again after the poll interval
                    log.exception("delivery round failed")
                    counts = Counts()
                if counts and await self._more_due():
                    continue
                await self._sleep(stop, await self._next_due())
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()

    async def _more_due(self) -> bool:
        wait = await self._next_due()
        return wait is not None and wait <= 0

    async def _next_due(self) -> float | None:
        """Seconds until the next row falls due (negative: due now), or None."""
        o = self.outbox
        query = sa.select(sa.func.min(o.c.next_attempt_at)).where(o.c.state.in_(DUE))
        if self.tenant is not None:
            query = query.where(o.c.tenant_id == self.tenant)
        try:
            async with self.database.connect() as conn:
                first = (await conn.execute(query)).scalar()
        except Exception:
            return None
        if first is None:
            return None
        first = first if first.tzinfo is not None else first.replace(tzinfo=dt.UTC)
        return float((first - _now()).total_seconds())

    async def _sleep(self, stop: asyncio.Event, due_in: float | None) -> None:
        timeout = self.policy.poll if due_in is None else max(0.0, min(self.policy.poll, due_in))
        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
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
        try:
            conn = await self.database.connect()
        except Exception:
            log.warning("could not LISTEN for outbox rows; polling every %s s", self.policy.poll)
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
