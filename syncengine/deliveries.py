"""Reads and requeues of the outbox: `deliveries list` and `retry`, `/v1/deliveries`, a record's Moodle side.

    page = await list_deliveries(catalog, database, tenant="school", state="dead")  # Page(counts, rows, ...)
    retried = await retry_deliveries(database, tenant="school", all_dead=True)     # Retried(requeued=[...], ...)
    side = await record_moodle_state(database, entity, "school", zoho_id)           # {"moodle_id": ..., ...}

None of them calls Moodle: the worker (delivery.py) does, woken by a retry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncengine.delivery import CHANNEL, DUE
from syncengine.descriptors import Catalog, Entity
from syncengine.fieldtypes import utc_now
from syncengine.queues import Listed, Page, read_page
from syncengine.store import WRITES
from syncengine.tables import engine_table

#: Every state of an outbox row: `working` is claimed by a worker right now.
STATES = ("pending", "working", "waiting", "done", "dead")
_OUTBOX = engine_table("syncengine_outbox")
_LINKS = engine_table("syncengine_moodle_links")


@dataclass(frozen=True)
class Delivery(Listed):
    """One outbox row as `deliveries list` and `GET /v1/deliveries` show it."""

    attempts: int
    last_error: str | None
    moodle_id: int | None  # of the record's own Moodle object (its mapping's first target), once known
    next_attempt_at: dt.datetime | None  # pending, waiting and working rows only
    created_at: dt.datetime


async def list_deliveries(
    catalog: Catalog,
    database: AsyncEngine,
    *,
    tenant: str | None = None,
    state: str | None = None,
    limit: int = 100,
    after_id: int | None = None,
) -> Page[Delivery]:
    """The outbox rows of `tenant` (or every tenant) in `state` (or any), oldest first, `limit` at a time."""
    async with database.connect() as conn:
        found = await read_page(conn, _OUTBOX, STATES, tenant=tenant, state=state, limit=limit, after_id=after_id)
        ids = await _own_moodle_ids(catalog, conn, {(r.tenant_id, r.entity, r.zoho_id) for r in found.rows})
    deliveries = [
        Delivery(
            **Listed.common(r),
            attempts=int(r.attempts),
            last_error=r.last_error,
            moodle_id=ids.get((r.tenant_id, r.entity, r.zoho_id)),
            next_attempt_at=r.next_attempt_at if r.state in DUE else None,
            created_at=r.created_at,
        )
        for r in found.rows
    ]
    return Page(found.counts, deliveries, found.next_after_id)


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
