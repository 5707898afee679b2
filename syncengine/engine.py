"""The Python API that the HTTP service and the CLI share.

engine = SyncEngine.open(Settings.from_env())
report = await engine.sync("default", entity_name, records, dry_run=True)
print(report.summary)
await engine.close()

Concurrent syncs of one tenant's entity share transactions (group commit). Calls of a (tenant,
entity) form a lane: a call that finds its lane free starts at once; otherwise it waits, and the
calls waiting (up to `GROUP_RECORDS` records) run together as the lane's next batch: one lock,
fetch, resolve and write, and one COMMIT, for what would have been many. On PostgreSQL the next
batch starts as soon as the one before has written (the store's `lane_depth` says how many may
be in flight), so that its Python overlaps the COMMIT; the one before still holds its locks
then, so a batch touching the same records waits for it to commit. Calls are applied in the
order they arrived, each getting the results of its own records, exactly as if the calls had
run one after another. No call waits for a timer. A call that must wait parses and validates
its records as it arrives: that needs no database, so it overlaps the batch in flight. A call
that starts at once parses its records while its locks and fetch run (`read_ahead`). Should
a shared transaction fail, each of its calls is run again on its own, so one call's failure is
never another's (those retries may land after the batch that followed). Dry runs always run
alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.config import Settings
from syncengine.descriptors import Catalog, load_catalog
from syncengine.pipeline import (
    LOOKUP_CACHE_SECONDS,
    EntityTables,
    Incoming,
    LookupCache,
    Unparsed,
    parse_records,
    read_ahead,
    sync_batch,
)
from syncengine.report import SyncReport
from syncengine.store import open_database, store_for
from syncengine.tables import TENANT_LENGTH, build_metadata

OUTBOX = "syncengine_outbox"
#: The most records of waiting calls that are joined into one batch (a larger call runs alone).
GROUP_RECORDS = 1000


class SchemaError(RuntimeError):
    """The database has no tables for the descriptors (yet)."""


class SyncEngine:
    """The pipeline bound to a catalog and a database."""

    def __init__(
        self,
        catalog: Catalog,
        database: AsyncEngine,
        *,
        lookup_cache_seconds: float = LOOKUP_CACHE_SECONDS,
        part_records: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.database = database
        self.metadata = build_metadata(catalog)
        self.store = store_for(database)
        #: How large batches are split for writing (the store's choice unless given; see pipeline.py).
        self.part_records = part_records if part_records is not None else self.store.part_records
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self.lookups = LookupCache(lookup_cache_seconds)
        tables = self.metadata.tables
        self._tables = {
            entity.name: EntityTables(
                entity=entity,
                table=tables[entity.name],
                outbox=tables[OUTBOX],
                targets={f.target: tables[f.target] for f in entity.lookups if f.target},
                singulars={f.target: catalog.entity(f.target).singular for f in entity.lookups if f.target},
            )
            for entity in catalog
        }

    @classmethod
    def open(cls, settings: Settings, **database_options: Any) -> SyncEngine:
        return cls(load_catalog(settings.entities), open_database(settings.database_url, **database_options))

    async def sync(self, tenant: str, entity: str, records: Iterable[Any], *, dry_run: bool = False) -> SyncReport:
        """Run the pipeline on `records` as one transaction; with `dry_run`, roll it back.

        The transaction may be shared with concurrent calls for the same tenant and entity
        (see the module's docstring); the report holds this call's records only.
        """
        tables = self._tables.get(entity) or self._tables[self.catalog.entity(entity).name]
        if not tenant or len(tenant) > TENANT_LENGTH:
            raise ValueError(f"a tenant name is 1 to {TENANT_LENGTH} characters, got {tenant!r}")
        lane = None if dry_run else self._lane(tenant, tables)
        if lane is not None and not (lane.may_start() and not lane.waiting):
            # Parsed now, while the batch in flight waits on the database; then it waits its turn.
            call = _Call(parse_records(tables.entity, records), asyncio.get_running_loop().create_future())
            lane.waiting.append(call)
            return await call.report
        read = read_ahead(tables.entity, records)
        batches = read if isinstance(read, Unparsed) else [read]
        if lane is None:
            (report,) = await self._transaction(tables, tenant, batches, dry_run=True)
            return report
        token = lane.start()
        try:
            (report,) = await self._transaction(tables, tenant, batches, on_written=self._opener(lane, token))
        finally:
            lane.finish(token)
            self._start_waiting(lane, tables, tenant)
        return report

    def _lane(self, tenant: str, tables: EntityTables) -> _Lane:
        lane = self._lanes.get((tenant, tables.entity.name))
        if lane is None:
            lane = self._lanes[(tenant, tables.entity.name)] = _Lane((tables, tenant), self.store.lane_depth)
        return lane

    def _start_waiting(self, lane: _Lane, tables: EntityTables, tenant: str) -> None:
        """Run the calls that waited, in arrival order, as the lane's next batch."""
        while lane.waiting and lane.may_start():
            group: list[_Call] = []
            size = 0
            while lane.waiting and (not group or size + len(lane.waiting[0].records) <= GROUP_RECORDS):
                call = lane.waiting.popleft()
                if not call.report.done():  # a caller that gave up is not synced
                    group.append(call)
                    size += len(call.records)
            if group:
                token = lane.start()
                run = self._run_group(lane, token, tables, tenant, group)
                lane.tasks.add(task := asyncio.create_task(run))
                task.add_done_callback(lane.tasks.discard)

    def _opener(self, lane: _Lane, token: object) -> Callable[[], None]:
        """What a batch calls once it has written: the lane may start its next batch."""

        def written() -> None:
            if lane.opening is token:
                lane.opening = None
                self._start_waiting(lane, *lane.context)

        return written

    async def _run_group(
        self, lane: _Lane, token: object, tables: EntityTables, tenant: str, group: list[_Call]
    ) -> None:
        try:
            try:
                batches = [call.records for call in group]
                reports = await self._transaction(tables, tenant, batches, on_written=self._opener(lane, token))
            except Exception as error:
                if len(group) == 1:
                    _settle(group[0], error=error)
                    return
                for call in group:  # on their own, so that one call's failure is not another's
                    try:
                        (report,) = await self._transaction(tables, tenant, [call.records])
                    except Exception as alone:
                        _settle(call, error=alone)
                    else:
                        _settle(call, report)
            else:
                for call, report in zip(group, reports, strict=True):
                    _settle(call, report)
        except BaseException:
            for call in group:
                _settle(call, error=RuntimeError("the service stopped before this batch was synced; send it again"))
            raise
        finally:
            lane.finish(token)
            self._start_waiting(lane, tables, tenant)

    async def _transaction(
        self,
        tables: EntityTables,
        tenant: str,
        batches: list[list[Incoming]] | Unparsed,
        *,
        dry_run: bool = False,
        on_written: Callable[[], None] | None = None,
    ) -> list[SyncReport]:
        """One transaction over `batches`, in order; one report per batch (one for records not
        parsed yet, see `read_ahead`)."""
        records = batches if isinstance(batches, Unparsed) else list(itertools.chain.from_iterable(batches))
        try:
            async with self.store.transaction(self.database, rollback=dry_run) as conn:
                report = await sync_batch(
                    conn, self.store, tables, tenant, records, self.lookups, on_written, self.part_records
                )
        except Exception as error:
            if _is_missing_table(error):
                raise SchemaError(
                    f"the database has no table for '{tables.entity.name}': run `syncengine db upgrade` first"
                ) from None
            raise
        if isinstance(batches, Unparsed) or len(batches) == 1:
            report.dry_run = dry_run
            return [report]
        reports, start = [], 0
        for batch in batches:
            reports.append(SyncReport(report.entity, report.id_key, report.results[start : start + len(batch)]))
            start += len(batch)
        return reports

    async def fetch_record(self, tenant: str, entity: str, zoho_id: str) -> dict[str, Any] | None:
        """One stored record of a tenant, with its fingerprint, timestamps and Moodle delivery state.

        Values are keyed by Zoho field name, as records arrive and as reports show changes.
        """
        described = self.catalog.entity(entity)
        table, outbox = self.metadata.tables[described.name], self.metadata.tables[OUTBOX]
        fields = [(f, table.c[f.value_column]) for f in described.fields]
        system = ("fingerprint", "source_version", "moodle_id", "created_at", "updated_at", "deleted_at")
        query = sa.select(*(column for _, column in fields), *(table.c[name] for name in system)).where(
            table.c.tenant_id == tenant, table.c.zoho_id == zoho_id
        )
        delivery = (
            sa.select(
                outbox.c.operation, outbox.c.state, outbox.c.attempts, outbox.c.next_attempt_at, outbox.c.last_error
            )
            .where(outbox.c.tenant_id == tenant, outbox.c.entity == described.name, outbox.c.zoho_id == zoho_id)
            .order_by(outbox.c.id.desc())
            .limit(1)
        )
        async with self.database.connect() as conn:
            row = (await conn.execute(query)).first()
            last = (await conn.execute(delivery)).first() if row is not None else None
        if row is None:
            return None
        raw_values = zip(fields, row[: len(fields)], strict=True)
        values = {f.source: None if v is None else f.type.from_db(v) for (f, _), v in raw_values}
        stored = dict(zip(system, row[len(fields) :], strict=True))
        for name in ("source_version", "created_at", "updated_at", "deleted_at"):
            stored[name] = _utc(stored[name])
        return {
            "entity": described.name,
            described.id_key: zoho_id,
            "values": values,
            "fingerprint": stored["fingerprint"],
            "source_version": stored["source_version"],
            "created_at": stored["created_at"],
            "updated_at": stored["updated_at"],
            "deleted_at": stored["deleted_at"],
            "moodle": {
                "moodle_id": stored["moodle_id"],
                "delivery": None if last is None else {**last._asdict(), "next_attempt_at": _utc(last.next_attempt_at)},
            },
        }

    async def close(self) -> None:
        """Finish the batches already started, then close the database's connections."""
        running = [task for lane in self._lanes.values() for task in lane.tasks]
        await asyncio.gather(*running, return_exceptions=True)
        await self.database.dispose()


@dataclass(slots=True)
class _Call:
    """A call waiting for its lane's running batch to end."""

    records: list[Incoming]
    report: asyncio.Future[SyncReport]


@dataclass(slots=True)
class _Lane:
    """The batches of one (tenant, entity) in flight, and the calls waiting to run."""

    context: tuple[EntityTables, str]
    depth: int
    running: int = 0
    #: The batch started last, until it has written: the next may not start before.
    opening: object | None = None
    waiting: deque[_Call] = field(default_factory=deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def may_start(self) -> bool:
        return self.opening is None and self.running < self.depth

    def start(self) -> object:
        self.running += 1
        self.opening = token = object()
        return token

    def finish(self, token: object) -> None:
        self.running -= 1
        if self.opening is token:
            self.opening = None


def _settle(call: _Call, report: SyncReport | None = None, *, error: BaseException | None = None) -> None:
    if call.report.done():  # the caller gave up waiting
        return
    if error is not None:
        call.report.set_exception(error)
    else:
        call.report.set_result(report)  # type: ignore[arg-type]


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def _is_missing_table(error: Exception) -> bool:
    """SQLite's error through SQLAlchemy, or PostgreSQL's straight from asyncpg (SQLSTATE 42P01)."""
    if getattr(error, "sqlstate", None) == "42P01":
        return True
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    text = str(error.orig).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)
