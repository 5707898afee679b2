"""The Python API that the HTTP service and the CLI share.

engine = SyncEngine.open(Settings.from_env())
report = await engine.sync("default", entity_name, records, dry_run=True)
print(report.summary)
await engine.close()

Its one job: bind the pipeline to a catalog and a database, with the engine's settings. Each
entity is compiled once, here (`compile_entity`). Concurrent syncs of one tenant's entity share
transactions (group commit, see lane.py); on PostgreSQL up to `lane_depth` batches of a lane
are in flight, each on its own connection, so that Python, the server's writing and the COMMITs
overlap. A call that must wait parses and validates its records as it arrives: that needs no
database, so it overlaps the batches in flight. A call that starts at once parses its records
while its fetch runs (`read_ahead`). A transaction that lost a race with another process for
the same records (the store's `LostRace`) is run again, and reads what the other wrote; it then runs
alone among the writers of its table and tenant (`Store.fetch`'s `hold`), so that it cannot
lose again. Dry runs always run alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.compiled import CompiledEntity, compile_entity
from syncengine.config import Settings
from syncengine.deliveries import record_moodle_state
from syncengine.descriptors import Catalog, load_catalog
from syncengine.exceptions import Conflict, LostRace, SchemaMissing
from syncengine.idempotency import Answer, ClaimLost
from syncengine.lane import Lane
from syncengine.lookups import LOOKUP_CACHE_SECONDS, LookupCache
from syncengine.parsing import Incoming
from syncengine.pipeline import Pipeline, Unparsed, read_ahead
from syncengine.report import SyncReport
from syncengine.store import Store, StoredAnswer, open_database, store_for
from syncengine.tables import OUTBOX, build_metadata
from syncengine.tenants import check_name

#: Batches of one tenant's entity in flight at once, by dialect (see lane.py). PostgreSQL: four,
#: each on its own connection, so that the server writes one while Python decides another and
#: the next one's COMMIT waits for the disk. SQLite: one, a second writer would only poll for
#: the file's lock (SQLite's busy handler sleeps).
LANE_DEPTH = {"postgresql": 4, "sqlite": 1}
#: Records per part of a large batch, by dialect (see pipeline.py; None: a batch is written
#: whole). PostgreSQL writes one part while Python decides the next. SQLite: whole, since the
#: driver's thread holds the GIL for most of a write, so parts took turns with Python rather
#: than overlapping it.
PART_RECORDS: dict[str, int | None] = {"postgresql": 200, "sqlite": None}
#: How many times a transaction is run that keeps losing races to other writers (`LostRace`).
RACE_ATTEMPTS = 5
#: Seconds a record's version may be ahead of this server's clock (`Settings.max_version_skew`).
VERSION_SKEW = 300.0

log = logging.getLogger(__name__)


class ContendedError(Conflict):
    """A batch lost the race for its records to other writers every time it ran; nothing of it
    was written."""

    code = "write_conflict"


class SyncEngine:
    """The pipeline bound to a catalog and a database."""

    def __init__(
        self,
        catalog: Catalog,
        database: AsyncEngine,
        *,
        lookup_cache_seconds: float = LOOKUP_CACHE_SECONDS,
        part_records: int | None = None,
        lane_depth: int | None = None,
        race_attempts: int = RACE_ATTEMPTS,
        max_version_skew: float = VERSION_SKEW,
    ) -> None:
        self.catalog = catalog
        self.database = database
        self.metadata = build_metadata(catalog)
        dialect = database.dialect.name
        #: The dialect's statements; which one is known only at run time.
        self.store: Store[Any] = store_for(database)
        #: How large batches are split for writing (`PART_RECORDS` unless given; see pipeline.py).
        self.part_records = part_records if part_records is not None else PART_RECORDS.get(dialect)
        #: How many batches of a lane may be in flight at once (`LANE_DEPTH` unless given).
        self.lane_depth = lane_depth if lane_depth is not None else LANE_DEPTH.get(dialect, 1)
        #: How many times a transaction that loses races to other writers is run (`LostRace`).
        self.race_attempts = race_attempts
        #: How far ahead of the clock a record's version may be; a later one is INVALID.
        self.version_skew = dt.timedelta(seconds=max_version_skew)
        self._lanes: dict[tuple[str, str], Lane] = {}
        self.lookups = LookupCache(lookup_cache_seconds)
        #: Called after a committed batch of an entity that lands in Moodle (wakes a delivery worker).
        self.on_commit: Callable[[], None] | None = None
        self.pipeline = Pipeline(
            self.store, self.lookups, part_records=self.part_records, version_skew=self.version_skew
        )
        tables, singulars = self.metadata.tables, {entity.name: entity.singular for entity in catalog}
        #: Every entity, compiled once for the pipeline.
        self.compiled = {entity.name: compile_entity(entity, tables, tables[OUTBOX], singulars) for entity in catalog}

    @classmethod
    def open(cls, settings: Settings, **database_options: Any) -> SyncEngine:
        database = open_database(settings.database_url, settings.database_timeouts, **database_options)
        return cls(load_catalog(settings.entities), database, max_version_skew=settings.max_version_skew)

    async def sync(
        self, tenant: str, entity: str, records: Iterable[Any], *, dry_run: bool = False, answer: Answer | None = None
    ) -> SyncReport:
        """Run the pipeline on `records` as one transaction; with `dry_run`, roll it back.

        The transaction may be shared with concurrent calls for the same tenant and entity
        (see the module's docstring); the report holds this call's records only. `answer` (an
        idempotency key's, see idempotency.py) is stored in the transaction that writes this
        call's records, rendered from its report: the two commit together or not at all.
        """
        compiled = self.compiled.get(entity) or self.compiled[self.catalog.entity(entity).name]
        check_name(tenant)  # a TenantError (ValueError) that says the pattern
        if dry_run and answer is not None:
            raise ValueError("a dry run is rolled back: store its answer after it, on its own")
        parser = compiled.parser
        if dry_run:
            read = read_ahead(parser, records)
            (report,) = await self._transaction(
                compiled, tenant, read if isinstance(read, Unparsed) else [read], dry_run=True
            )
            return report
        lane = self._lane(tenant, compiled)
        records = records if isinstance(records, list | tuple) else list(records)
        if lane.waiting or not lane.may_start(len(records)):
            return await lane.wait(parser.parse_all(records), answer)
        read = read_ahead(parser, records)
        ids = read.ids if isinstance(read, Unparsed) else _ids(read)
        if lane.overlaps(ids):  # a batch in flight has some of these records: this call waits for it
            return await lane.wait(parser.parse_all(read.records) if isinstance(read, Unparsed) else read, answer)
        token = lane.start(ids)
        try:
            (report,) = await self._transaction(
                compiled,
                tenant,
                read if isinstance(read, Unparsed) else [read],
                ids,
                on_fetched=lane.opener(token),
                answers=[answer],
            )
        finally:
            lane.finish(token)
        return report

    def _lane(self, tenant: str, compiled: CompiledEntity) -> Lane:
        lane = self._lanes.get((tenant, compiled.entity.name))
        if lane is None:
            run = functools.partial(self._transaction, compiled, tenant)
            lane = self._lanes[(tenant, compiled.entity.name)] = Lane(run, self.lane_depth)
        return lane

    async def _transaction(
        self,
        compiled: CompiledEntity,
        tenant: str,
        batches: list[list[Incoming]] | Unparsed,
        ids: set[str] | None = None,
        *,
        dry_run: bool = False,
        on_fetched: Callable[[set[str]], None] | None = None,
        answers: Sequence[Answer | None] = (),
    ) -> list[SyncReport]:
        """One transaction over `batches`, in order; one report per batch (one for records not
        parsed yet, see `read_ahead`). `ids` are the records' ids, where known. `answers`, one
        per batch where given, are stored in the transaction (`_store_answers`). A transaction
        that lost a race is run again. `on_fetched` is called with the ids once their rows are
        fetched (the lane may then start its next batch)."""
        records = batches if isinstance(batches, Unparsed) else list(itertools.chain.from_iterable(batches))
        pipeline = self.pipeline
        for attempt in itertools.count(1):
            try:
                async with self.store.transaction(self.database, rollback=dry_run) as conn:
                    # Having lost a race, it runs alone, not to lose again (`hold`).
                    fetched = await pipeline.fetch(conn, compiled, tenant, records, ids=ids, hold=attempt > 1)
                    if on_fetched is not None:
                        on_fetched(fetched.ids)
                    report = await pipeline.decide_and_write(conn, fetched)
                    reports = _split(report, batches, dry_run)
                    if any(answers):
                        await self._store_answers(conn, answers, reports)
                if not dry_run and self.on_commit is not None and compiled.entity.moodle:
                    self.on_commit()
                break
            except SchemaMissing:
                raise SchemaMissing(
                    f"the database has no table for '{compiled.entity.name}': run `syncengine db upgrade` first"
                ) from None
            except LostRace as error:
                if attempt >= self.race_attempts:
                    raise ContendedError(
                        f"other writers changed these {compiled.entity.name} records while this batch was being "
                        f"synced, {attempt} times; nothing of it was written: send it again"
                    ) from error
                log.info(
                    "another writer changed some of these records first; running the batch again",
                    extra={"fields": {"tenant": tenant, "entity": compiled.entity.name, "attempt": attempt + 1}},
                )
        return reports

    async def _store_answers(self, conn: object, answers: Sequence[Answer | None], reports: list[SyncReport]) -> None:
        """Each call's answer, in its claim row: should one have been taken over (its holder was
        taken for dead), the transaction fails, so that its batch is not written twice."""
        stored = [
            StoredAnswer(answer.row, 200, answer.body(report), answer.expires_at())
            for answer, report in zip(answers, reports, strict=True)
            if answer is not None
        ]
        if await self.store.write_answers(conn, stored) != len(stored):
            raise ClaimLost(
                "another request took over this request's Idempotency-Key; nothing of it was written: "
                "send it again in a few seconds (it replays that request's answer)"
            )

    async def fetch_record(self, tenant: str, entity: str, zoho_id: str) -> dict[str, Any] | None:
        """One stored record of a tenant, with its fingerprint, timestamps and Moodle delivery state.

        Values are keyed by Zoho field name, as records arrive and as reports show changes.
        """
        described = self.catalog.entity(entity)
        table = self.metadata.tables[described.name]
        fields = [(f, table.c[f.value_column]) for f in described.fields]
        system = ("fingerprint", "source_version", "created_at", "updated_at", "deleted_at")
        query = sa.select(*(column for _, column in fields), *(table.c[name] for name in system)).where(
            table.c.tenant_id == tenant, table.c.zoho_id == zoho_id
        )
        async with self.database.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        raw_values = zip(fields, row[: len(fields)], strict=True)
        values = {f.source: None if v is None else f.type.from_db(v) for (f, _), v in raw_values}
        stored = dict(zip(system, row[len(fields) :], strict=True))
        return {
            "entity": described.name,
            described.id_key: zoho_id,
            "values": values,
            "fingerprint": stored["fingerprint"],
            "source_version": stored["source_version"],
            "created_at": stored["created_at"],
            "updated_at": stored["updated_at"],
            "deleted_at": stored["deleted_at"],
            "moodle": await record_moodle_state(self.database, described, tenant, zoho_id),
        }

    async def close(self) -> None:
        """Finish the batches already started, then close the database's connections."""
        running = [task for lane in self._lanes.values() for task in lane.tasks]
        await asyncio.gather(*running, return_exceptions=True)
        await self.database.dispose()


def _split(report: SyncReport, batches: list[list[Incoming]] | Unparsed, dry_run: bool) -> list[SyncReport]:
    """The report of a transaction, as one report per batch."""
    if isinstance(batches, Unparsed) or len(batches) == 1:
        report.dry_run = dry_run
        return [report]
    reports, start = [], 0
    for batch in batches:
        reports.append(SyncReport(report.entity, report.id_key, report.results[start : start + len(batch)]))
        start += len(batch)
    return reports


def _ids(records: Iterable[Incoming]) -> set[str]:
    return {record.zoho_id for record in records if record.zoho_id is not None}
