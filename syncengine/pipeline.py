"""The pipeline's order: fetch the stored rows, resolve lookups, decide each record, write.

One code path for every entity; its `CompiledEntity` says what to do. A batch costs a few
set-based statements, never one per record:

1. fetch the stored rows of the batch's ids, with their versions: `Pipeline.fetch`;
2. resolve lookup ids that the stored rows do not already link, and that were not seen live in
   the last seconds (one statement for every target): `lookups.resolve_lookups`;
3. decide every record in input order, in memory, each against the state the one before left:
   `decisions.Decisions` (the rules are on its page);
4. write the final state of every touched row (a plain insert for rows the fetch did not find,
   an update of the others where still at the version fetched: see store.py), and queue a
   delivery for each changed row of an entity that lands in Moodle (one statement on
   PostgreSQL, up to three on SQLite).

With `part_records`, a large batch is decided and written in parts: while the server writes
one part, Python decides the next (steps 3 and 4 overlap). A row is written once, after the
last part its id appears in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic

from syncengine.compiled import CompiledEntity
from syncengine.decisions import Decisions, Stored
from syncengine.fieldtypes import FIELD_TYPES
from syncengine.lookups import LookupCache, resolve_lookups
from syncengine.parsing import Incoming
from syncengine.report import RecordResult, SyncReport
from syncengine.store import Conn, Store

_DATETIME = FIELD_TYPES["datetime"]


@dataclass(slots=True)
class Fetched:
    """A batch after step 1: its parsed records, the stored rows of their ids (`Stored`), and
    the local ids of the lookup targets those rows link to, per target entity."""

    compiled: CompiledEntity
    tenant: str
    incoming: Sequence[Incoming]
    state: dict[str, Stored]
    known: dict[str, dict[str, int]]


class Pipeline(Generic[Conn]):
    """One engine's pipeline: its store, its lookup cache, and how it writes large batches."""

    def __init__(
        self,
        store: Store[Conn],
        lookups: LookupCache | None = None,
        *,
        part_records: int | None = None,
        version_skew: dt.timedelta | None = None,
    ) -> None:
        self.store = store
        self.lookups = lookups
        #: Records per part of a large batch (a batch of at least twice as many is written in
        #: parts, each costing one statement more: `_parts`), or None: a batch is written whole.
        self.part_records = part_records
        #: How far ahead of the clock a record's version may be; a later one is INVALID.
        self.version_skew = version_skew

    async def fetch(
        self,
        conn: Conn,
        compiled: CompiledEntity,
        tenant: str,
        records: Sequence[Incoming],
        *,
        ids: set[str] | None = None,
        hold: bool = False,
    ) -> Fetched:
        """Step 1, in the caller's transaction (`conn`, from `store.transaction`): the stored rows
        of the records' ids (`ids`, when the caller has them already). With `hold`, no other writer
        of the table and tenant runs beside the transaction (`Store.fetch`)."""
        if ids is None:
            ids = {record.zoho_id for record in records if record.zoho_id is not None}
        state, known = await self._fetch_state(conn, compiled, tenant, ids, hold)
        return Fetched(compiled, tenant, records, state, known)

    async def decide_and_write(self, conn: Conn, fetched: Fetched) -> SyncReport:
        """Steps 2 to 4 on a fetched batch, in the same transaction; its report."""
        compiled, tenant, incoming, lookups = fetched.compiled, fetched.tenant, fetched.incoming, self.lookups
        resolved = await resolve_lookups(conn, self.store, compiled, tenant, incoming, fetched.known, lookups)
        now = dt.datetime.now(dt.UTC)
        decisions = Decisions(compiled, fetched.state, resolved, tenant, now, self.version_skew)
        results: list[RecordResult] = []
        parts = _parts(incoming, self.part_records)
        last_part = _last_part(parts)
        writing: asyncio.Task[None] | None = None
        try:
            for index, part in enumerate(parts):
                results += map(decisions.apply, part)
                row_sets = decisions.take(last_part, index)
                if lookups is not None and decisions.deleted:
                    lookups.forget(tenant, compiled.entity.name)  # a record may no longer point to it
                if writing is not None:
                    await writing
                    writing = None
                if not any(rows.values for rows in row_sets):
                    continue
                if index + 1 == len(parts):
                    await self.store.write(conn, row_sets)
                else:
                    writing = asyncio.create_task(self.store.write(conn, row_sets))
                    await asyncio.sleep(0)  # the statement goes out; the next part is decided while it runs
        finally:
            if writing is not None:  # something failed while a part was being written
                await _abandon(writing)
        return SyncReport(compiled.entity.name, compiled.entity.id_key, results)

    async def _fetch_state(
        self, conn: Conn, compiled: CompiledEntity, tenant: str, ids: set[str], hold: bool
    ) -> tuple[dict[str, Stored], dict[str, dict[str, int]]]:
        """The stored rows of `ids` (`Stored`, with their versions: `Store.fetch`), and the local
        ids of the lookup targets they link to, per target entity: {target: {zoho_id: id}}."""
        known: dict[str, dict[str, int]] = {target: {} for target in compiled.targets}
        if not ids:
            return {}, known
        rows = await self.store.fetch(conn, compiled.fetch_columns, tenant, ids, hold=hold)
        state_of = compiled.layout.state
        from_db = _DATETIME.from_db
        state = {}
        for row in rows:
            zoho_id, fprint, version, deleted_at = state_of(row)
            version = None if version is None else from_db(version)
            state[zoho_id] = Stored(None, None, fprint, version, deleted_at is not None, row, compiled)
        for target, value, link in compiled.link_positions:  # one pass per lookup, with its dict at hand
            links = known[target]
            for row in rows:
                target_id, local_id = row[value], row[link]
                if target_id is not None and local_id is not None:
                    links[target_id] = local_id
        return state, known


async def sync_batch(
    conn: Conn,
    store: Store[Conn],
    compiled: CompiledEntity,
    tenant: str,
    records: Sequence[Incoming],
    lookups: LookupCache | None = None,
) -> SyncReport:
    """The whole pipeline on one batch, in the caller's transaction, with no settings of an
    engine's (one part, no bound on versions); the engine runs the steps itself."""
    pipeline = Pipeline(store, lookups)
    return await pipeline.decide_and_write(conn, await pipeline.fetch(conn, compiled, tenant, records))


async def _abandon(statement: asyncio.Task[Any]) -> None:
    """Wait for a statement in flight to end, so that the transaction can roll back on its
    connection; the failure that got here is the one reported, not this one's."""
    await asyncio.wait([statement])
    if not statement.cancelled():
        statement.exception()


def _parts(incoming: Sequence[Incoming], size: int | None) -> list[Sequence[Incoming]]:
    """A batch split for writing: each part is written while the next is decided."""
    if size is None or len(incoming) < 2 * size:
        return [incoming]
    count = len(incoming) // size
    size = -(-len(incoming) // count)
    return [incoming[start : start + size] for start in range(0, len(incoming), size)]


def _last_part(parts: list[Sequence[Incoming]]) -> dict[str, int] | None:
    """The last part each id appears in: a row is written once, with the state its last record left."""
    if len(parts) == 1:
        return None
    return {record.zoho_id: index for index, part in enumerate(parts) for record in part if record.zoho_id is not None}
