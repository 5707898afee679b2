"""The delivery worker: claims outbox rows, makes each record's Moodle targets what its stored state says.

    worker = Worker(catalog, database, Policy())
    counts = await worker.deliver_once()          # one claim, delivered: Counts(delivered=3, ...)
    await worker.run(stop)                        # until `stop` is set; `worker.wake()` starts a round
    await worker.aclose()                         # its Moodle clients (run() closes them when it ends)

A round claims due rows (`claim`): one statement marks them `working` with a lease (their
`next_attempt_at`), so a killed worker's rows are due again once the lease ends; on PostgreSQL
`FOR UPDATE SKIP LOCKED` lets any number of workers share the outbox. A claim takes the oldest due
rows and, beside them, the newest few, so a fresh change does not wait behind a backlog. The
pending rows of one record coalesce: its latest stored state (read from the entity table, deleted
or not) is delivered once and every row is marked done. Targets go in stages that follow the data
(`delivery_stages`: a target after the targets whose Moodle ids it uses); within a stage, the
targets of one kind share their calls, whatever their entity (two entities mapped to users are
looked up and created together), through targets.py. A looked-up Moodle id not known yet makes a
record `waiting` (with the reason) until a parent is delivered; a Moodle error makes it `pending`
again after a back-off (exponential, with jitter), or `dead` after `Policy.attempts` (transient
errors) or `Policy.permanent_attempts` (permanent ones), keeping Moodle's errorcode and message. A
round's results are settled in one transaction. What Moodle holds is recorded in
`syncengine_moodle_links`, never in the entity rows that sync batches version-check. Only tenants
with a Moodle site (sites.py) are claimed: the others' rows wait, pending. Each site's Moodle
client (its connection pool) is kept from round to round, and made anew when the site's URL or
token changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine import mapping, targets
from syncengine.descriptors import Catalog, Entity
from syncengine.fieldtypes import utc_now
from syncengine.mapping import DesiredState, Record, Target, desired_state
from syncengine.moodle import MoodleClient, MoodleError
from syncengine.queues import Backoff, Rounds, keeping
from syncengine.sites import SITES, Site, read_site
from syncengine.tables import build_metadata

log = logging.getLogger(__name__)

CHANNEL = "syncengine_outbox"  # the migration's trigger NOTIFYs it on every insert into the outbox
DUE = ("pending", "waiting", "working")  # `working` rows whose lease ended are due again
CLAIM_LOCK = 0x5E0D_0B0C  # the PostgreSQL advisory lock that claims take in turn
Key = tuple[str, str]  # (entity, zoho_id)
Slot = tuple[str, str, str]  # (entity, target, zoho_id): one Moodle object of one record
Stage = list[tuple[Entity, Target]]


def delivery_stages(catalog: Catalog) -> list[Stage]:
    """The mapped targets in the order the data needs: a target comes a stage after each entity
    whose Moodle id its parameters use (`{lookup.moodle_id}`, its own `{moodle_id}`), and not
    before the target that precedes it in its mapping. Targets of one stage need nothing of each
    other, so those of one kind may share calls. A cycle of Moodle ids (two optional lookups
    pointing at each other) ends in the last stage; its records wait for each other as before.

    A mapping of categories, users, courses in a category and enrolments of users in courses gives
    three stages: the categories and users; the courses; the enrolments.
    """
    mapped = [(entity, target) for entity in catalog if entity.moodle for target in entity.moodle]
    uses: dict[tuple[str, str], set[str]] = {}
    for entity, target in mapped:
        uses[(entity.name, target.name)] = {
            part.entity
            for value in target.params.values()
            if not isinstance(value, int)
            for part in value
            if not isinstance(part, str) and part.entity is not None
        }
    first = {entity.name: entity.moodle[0].name for entity in catalog if entity.moodle}
    stage = {(entity.name, target.name): 0 for entity, target in mapped}
    for _ in range(len(mapped)):  # longest paths; a cycle stops growing at the last stage
        changed = False
        previous: tuple[str, str] | None = None
        for entity, target in mapped:
            here = (entity.name, target.name)
            after = [stage[(name, first[name])] + 1 for name in uses[here] if name in first]
            if previous is not None and previous[0] == entity.name:
                after.append(stage[previous])
            level = min(len(mapped) - 1, max(after, default=0))
            if level > stage[here]:
                stage[here], changed = level, True
            previous = here
        if not changed:
            break
    levels = sorted(set(stage.values()))
    return [[(e, t) for e, t in mapped if stage[(e.name, t.name)] == level] for level in levels]


@dataclass(frozen=True)
class Policy(Backoff):
    """How a worker claims and retries (see `Settings` for the environment variables)."""

    #: Rows claimed a round, oldest first: large enough that a round's calls come near the fewest the
    #: `max_input_vars` budget allows (a call carries 166 users or enrolments at 1,000).
    batch: int = 2000
    #: Of those, up to `newest` (and a twentieth at most) are the newest due: a fresh change does not
    #: wait behind a backlog.
    newest: int = 100
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
    lease, and before a stage's Moodle calls once a third of it has passed), and a row whose token
    changed was taken over by another worker after the lease ran out; its record is left to that
    worker (no call, no link, no settle), whose find-before-create links whatever this one made in
    Moodle.
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
        self.stages = delivery_stages(catalog)
        self._mapped = {entity.name: entity for entity in catalog if entity.moodle}
        self._first = {entity.name: entity.moodle[0].name for entity in catalog if entity.moodle}
        self._rounds = Rounds(
            database, CHANNEL, "delivery", "outbox", self._round, self._next_due,
            poll=self.policy.poll, gather=self.policy.gather,
        )  # fmt: skip
        self._budgets: dict[str, tuple[int, targets.Budget]] = {}  # tenant -> (its setting, what Moodle takes)
        self._clients: dict[str, tuple[Site, MoodleClient]] = {}  # tenant -> the site as last read, its client
        self.totals = Counts()

    def wake(self) -> None:
        """Start a round now (the engine calls it after a commit that wrote outbox rows)."""
        self._rounds.wake()

    async def aclose(self) -> None:
        """Close the Moodle clients kept between rounds (`run` does it when it ends)."""
        clients, self._clients = self._clients, {}
        for _, client in clients.values():
            await client.aclose()

    async def _client(self, site: Site) -> MoodleClient:
        """The tenant's Moodle client, kept from round to round; a new one when its URL or token changed."""
        kept = self._clients.get(site.tenant)
        if kept is not None:
            if (kept[0].url, kept[0].token) == (site.url, site.token):
                return kept[1]
            del self._clients[site.tenant]
            await kept[1].aclose()
        client = MoodleClient(site.url, site.token)
        self._clients[site.tenant] = (site, client)
        return client

    # Claims.

    async def _site_tenants(self, conn: AsyncConnection) -> list[str]:
        """The tenants whose rows this worker delivers: those with a Moodle site (or `tenant`, if it has one)."""
        query = sa.select(SITES.c.tenant_id)
        if self.tenant is not None:
            query = query.where(SITES.c.tenant_id == self.tenant)
        return list((await conn.execute(query)).scalars())

    async def claim(self) -> list[Any]:
        """Due rows of tenants with a site (`batch` of them: the oldest, and a few of the newest),
        marked `working` until the lease ends, with every other pending row of the same records
        (coalesced). One short transaction."""
        o, now = self.outbox, utc_now()
        lease = now + dt.timedelta(seconds=self.policy.lease)
        held = o.alias("held")  # a record another worker is delivering is left to it, all its rows
        # NOT IN a subquery, not a correlated NOT EXISTS: PostgreSQL hashes the held records once,
        # where a NOT EXISTS planned on the stale statistics of a freshly filled outbox probed them
        # once per due row (27 s for a claim among 20,000 due rows).
        busy = sa.tuple_(o.c.tenant_id, o.c.entity, o.c.zoho_id).in_(
            sa.select(held.c.tenant_id, held.c.entity, held.c.zoho_id).where(
                held.c.state == "working", held.c.next_attempt_at > now
            )
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
        fresh = min(self.policy.newest, self.policy.batch // 20)
        oldest = due.order_by(o.c.id).limit(self.policy.batch - fresh).with_for_update(skip_locked=True)
        newest = due.order_by(o.c.id.desc()).limit(fresh).with_for_update(skip_locked=True)
        mark = {"state": "working", "next_attempt_at": lease}
        returning = (o.c.id, o.c.tenant_id, o.c.entity, o.c.zoho_id, o.c.attempts, o.c.next_attempt_at)
        async with self.database.begin() as conn:
            if conn.dialect.name == "postgresql":  # claims one at a time, so two never split one record
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(CLAIM_LOCK)))
            rows = list(await conn.execute(sa.update(o).where(o.c.id.in_(oldest)).values(mark).returning(*returning)))
            if fresh > 0:  # the rows claimed just above are no longer due: none is claimed twice
                rows += list(
                    await conn.execute(sa.update(o).where(o.c.id.in_(newest)).values(mark).returning(*returning))
                )
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

    async def _settle(
        self, lease: _Lease, tenant: str, settled: Sequence[tuple[Sequence[Any], dict[str, Any]]], wake_waiting: bool
    ) -> None:
        """Set each record's `values` on its claimed rows still held by this claim (a lease taken
        over is left alone), all in one transaction; a record delivered settles its older dead rows
        too (its latest state is in Moodle). With `wake_waiting`, the tenant's waiting rows are due
        now: a parent may have got its Moodle id."""
        o = self.outbox
        groups: dict[tuple[tuple[str, Any], ...], list[Any]] = {}  # the same values: one statement
        for rows, values in settled:
            groups.setdefault(tuple(sorted(values.items())), []).extend(r for r in rows if r.id in lease.held)
        async with lease.lock, self.database.begin() as conn:
            done: dict[tuple[str, str], int] = {}  # (entity, zoho_id) -> the highest row settled done
            for items, rows in groups.items():
                if not rows:
                    continue
                values = dict(items)
                changed = await conn.execute(
                    sa.update(o)
                    .where(o.c.id.in_([r.id for r in rows]), o.c.state == "working", o.c.next_attempt_at == lease.until)
                    .values(values)
                    .returning(o.c.id, o.c.entity, o.c.zoho_id)
                )
                if values["state"] == "done":
                    for r in changed:
                        done[(r.entity, r.zoho_id)] = max(int(r.id), done.get((r.entity, r.zoho_id), 0))
            lease.held -= {r.id for rows, _ in settled for r in rows}
            if done:
                dead = sa.select(o.c.id, o.c.entity, o.c.zoho_id).where(
                    o.c.tenant_id == tenant, o.c.state == "dead", sa.tuple_(o.c.entity, o.c.zoho_id).in_(list(done))
                )
                older = [r.id for r in await conn.execute(dead) if r.id < done[(r.entity, r.zoho_id)]]
                if older:
                    await conn.execute(
                        sa.update(o).where(o.c.id.in_(older)).values(state="done", next_attempt_at=utc_now())
                    )
            if wake_waiting:
                waiting = sa.update(o).where(o.c.tenant_id == tenant, o.c.state == "waiting")
                await conn.execute(waiting.values(next_attempt_at=utc_now()))

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

    async def _fence(self, lease: _Lease) -> None:
        """Before calls: renew the lease unless it was taken or renewed within a third of it (no
        other worker can have taken over a lease with two thirds left; a worker frozen past that
        renews here, and learns which rows it lost)."""
        if (lease.until - utc_now()).total_seconds() < self.policy.lease * 2 / 3:
            await self._renew(lease)

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
            async with keeping(lambda: self._renew(lease), self.policy.lease, "delivery"):
                for tenant, records in by_tenant.items():
                    await self._deliver_tenant(lease, tenant, records, counts)
        for name in ("delivered", "waiting", "retrying", "dead"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(counts, name))
        if counts and self.on_round is not None:
            self.on_round(counts)
        return counts

    async def _deliver_tenant(self, lease: _Lease, tenant: str, records: dict[Key, list[Any]], counts: Counts) -> None:
        async with self.database.connect() as conn:
            site = await read_site(conn, tenant)
        if site is None:  # removed since the claim: back to pending, untouched
            kept = self._clients.pop(tenant, None)
            if kept is not None:
                await kept[1].aclose()
            claimed = [r for rows in records.values() for r in rows]
            await self._settle(lease, tenant, [(claimed, {"state": "pending", "next_attempt_at": utc_now()})], False)
            return
        client = await self._client(site)
        results: dict[Key, _Result] = {key: _Result() for key in records}
        stored: dict[str, dict[str, Record]] = {}
        for name in sorted({entity for entity, _ in records} & set(self._mapped)):
            zoho_ids = [zoho_id for entity, zoho_id in records if entity == name]
            found = await self._records(tenant, self._mapped[name], zoho_ids)
            # a delete of a record never stored: nothing is in Moodle
            stored[name] = {z: found.get(z) or Record(z, {}, deleted=True) for z in zoho_ids}
        delivered_any = False
        for stage in self.stages:
            wanted = [(entity, target) for entity, target in stage if entity.name in stored]
            if wanted:
                delivered_any |= await self._deliver_stage(lease, client, site, wanted, stored, results)
        now = utc_now()
        done = {"state": "done", "last_error": None, "next_attempt_at": now}
        settled = [
            (rows, self._outcome(tenant, rows, results[key], counts, done))
            for key, rows in records.items()
            if lease.holds(tenant, key)
        ]
        await self._settle(lease, tenant, settled, delivered_any)

    def _outcome(
        self, tenant: str, rows: list[Any], result: _Result, counts: Counts, done: dict[str, Any]
    ) -> dict[str, Any]:
        """What a record's rows become: done, waiting, pending again after a back-off, or dead."""
        attempts = max(row.attempts for row in rows)
        if result.errors:
            error = result.errors[0]
            attempts += 1
            limit = self.policy.attempts if all(e.transient for e in result.errors) else self.policy.permanent_attempts
            permanent = next((e for e in result.errors if not e.transient), error)
            message = f"{permanent.errorcode}: {permanent}"
            if attempts >= limit:
                counts.dead += 1
                log.warning("delivery dead", extra={"fields": {"tenant": tenant, "error": message}})
                return {"state": "dead", "attempts": attempts, "last_error": message}
            counts.retrying += 1
            later = utc_now() + dt.timedelta(seconds=self.policy.backoff(attempts))
            return {"state": "pending", "attempts": attempts, "last_error": message, "next_attempt_at": later}
        if result.waiting:
            counts.waiting += 1
            later = utc_now() + dt.timedelta(seconds=self.policy.waiting_recheck)
            return {"state": "waiting", "last_error": "; ".join(result.waiting), "next_attempt_at": later}
        counts.delivered += 1
        return done

    async def _deliver_stage(
        self,
        lease: _Lease,
        client: MoodleClient,
        site: Site,
        wanted: Stage,
        stored: dict[str, dict[str, Record]],
        results: dict[Key, _Result],
    ) -> bool:
        """One stage's targets for the claimed records: what changed is sent, the targets of one
        kind in shared calls; whether any Moodle object was created or changed."""
        tenant = site.tenant
        needed = {
            key
            for entity, target in wanted
            for record in stored[entity.name].values()
            for key in desired_state(target, record, {}).missing
        }
        ids = await self._moodle_ids(tenant, needed)
        send: dict[str, dict[Slot, DesiredState]] = {}  # kind -> what its calls carry
        links: dict[Slot, Any] = {}
        for entity, target in wanted:
            records = stored[entity.name]
            linked = await self._links(tenant, entity.name, target.name, list(records))
            for zoho_id, record in records.items():
                state = desired_state(target, record, ids)
                link = linked.get(zoho_id)
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
                slot = (entity.name, target.name, zoho_id)
                send.setdefault(target.kind.name, {})[slot] = state
                if link is not None:
                    links[slot] = link
        if send:  # fenced: nothing is sent for a record whose lease another worker took over
            await self._fence(lease)
            send = {
                kind: {slot: s for slot, s in states.items() if lease.holds(tenant, (slot[0], slot[2]))}
                for kind, states in send.items()
            }
        outcomes: dict[Slot, targets.Outcome] = {}
        for kind, states in send.items():
            if not states:
                continue
            try:
                outcomes |= await self._send(client, self._budget(site), kind, states, links)
            except MoodleError as error:  # a look-up failed: nothing of this kind was sent
                outcomes |= {slot: targets.Outcome(error=error) for slot in states}
        rows = []
        for states in send.values():
            for slot, state in states.items():
                outcome = outcomes.get(slot)
                if outcome is not None and outcome.error is not None:
                    results[(slot[0], slot[2])].errors.append(outcome.error)
                    continue
                moodle_id = outcome.moodle_id if outcome is not None else None
                if moodle_id is None and slot in links:
                    moodle_id = links[slot].moodle_id
                rows.append(
                    {
                        "entity": slot[0],
                        "target": slot[1],
                        "zoho_id": slot[2],
                        "moodle_id": moodle_id,
                        "digest": state.digest,
                        "active": state.active,
                    }
                )
        return await self._save_links(lease, tenant, rows)

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
        kind_name: str,
        send: dict[Slot, DesiredState],
        links: dict[Slot, Any],
    ) -> dict[Slot, targets.Outcome]:
        """The calls for the records of one kind whose state changed, by leave action."""
        outcomes: dict[Slot, targets.Outcome] = {}
        leaving = {z: s for z, s in send.items() if not s.active}
        staying = {z: s for z, s in send.items() if s.active}
        if kind_name == "enrolment":
            unenrol = {z: s.params for z, s in leaving.items() if s.leave == "unenrol"}
            enrol = {z: s.params for z, s in send.items() if z not in unenrol and (s.active or s.leave != "nothing")}
            outcomes |= await targets.enrol(client, budget, enrol) if enrol else {}
            outcomes |= await targets.unenrol(client, budget, unenrol) if unenrol else {}
            return outcomes
        kind = targets.BY_NAME[kind_name]
        if staying:
            known = {z: int(links[z].moodle_id) for z in staying if z in links and links[z].moodle_id is not None}
            outcomes |= await targets.deliver(client, kind, budget, {z: s.params for z, s in staying.items()}, known)
        # Leaving sends the state change alone (suspended=1, visible=0): Moodle's update changes only
        # the fields it is given, so the rest stays as last delivered, and a value Moodle would
        # refuse now (an email taken meanwhile) cannot block a suspension.
        state = mapping.KINDS[kind_name].state
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
        wanted = [(e, z, self._first[e]) for e, z in keys if e in self._first]
        if not wanted:
            return {}
        links = self.links
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

    async def _save_links(self, lease: _Lease, tenant: str, rows: list[dict[str, Any]]) -> bool:
        """Record what Moodle now holds (`rows` of entity, target, zoho_id, moodle_id, digest,
        active), for the records whose lease this worker still holds (checked in the same
        transaction); whether anything was recorded."""
        if not rows:
            return False
        async with lease.lock:
            before = (set(lease.held), lease.until)
            try:
                async with self.database.begin() as conn:
                    await self._renew(lease, conn)
                    rows = [r for r in rows if lease.holds(tenant, (r["entity"], r["zoho_id"]))]
                    if not rows:
                        return False
                    now = utc_now()
                    values = [{"tenant_id": tenant, "delivered_at": now, **r} for r in rows]
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
        try:
            await self._rounds.run(stop)
        finally:
            await self.aclose()

    async def _round(self) -> bool:
        return bool(await self.deliver_once())

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
