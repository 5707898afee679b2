"""Backfill: every record of an entity pulled from Zoho's API, a page at a time, through the pipeline,
with a cursor stored after each committed batch so that an interrupted backfill resumes where it stopped.

    async with await open_zoho(engine.database, "school") as zoho:
        backfill = Backfill(engine, zoho, "school", since=None, listener=listener)
        cursors = await backfill.run(backfill.order([entity.name]))   # parents first when none is named

A batch is `BATCH_PAGES` pages (1,000 records) in one `engine.sync`; the next batch is fetched while
one is synced, and no more than three are held at once, so memory stays flat whatever the count.
The cursor (Zoho's `page_token` after the last committed page, the pages and the counts per
status) is written right after its batch commits: a process killed between the two syncs that
batch again on resume, where its records come back UNCHANGED (no row, no delivery twice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.descriptors import Entity
from syncengine.engine import SyncEngine
from syncengine.exceptions import Conflict, Misconfigured
from syncengine.fieldtypes import utc_now
from syncengine.parsing import DELETED_KEY
from syncengine.report import SyncReport
from syncengine.tables import BACKFILLS, engine_table
from syncengine.zoho import PER_PAGE, ZohoClient, ZohoError

TABLE = engine_table(BACKFILLS)
#: Pages of `PER_PAGE` records synced in one transaction.
BATCH_PAGES = 5
#: Zoho's limit on `fields` of a list call.
MAX_FIELDS = 50
#: How long Zoho honours a page_token; an older stored one is not tried (reference §3.1).
PAGE_TOKEN_LIFETIME = dt.timedelta(hours=24)
#: Zoho's answers to a page_token it no longer takes: expired, unknown, or issued for other
#: parameters (the descriptor's fields changed between the runs).
STALE_TOKEN_CODES = frozenset({"EXPIRED_VALUE", "TOKEN_BOUND_DATA_MISMATCH", "INVALID_DATA"})
#: Records shown per entity in a summary's problems (INVALID, SKIPPED); the rest are counted.
SHOWN_PROBLEMS = 10

RUNNING, DELETING, DONE = "running", "deleting", "done"
BAD_LINES = "bad lines"


class BackfillMismatch(Conflict):
    """An interrupted backfill of the entity was started with another --since."""

    code = "backfill_mismatch"


class TooManyFields(Misconfigured):
    """An entity maps more fields than one Zoho list call returns."""

    code = "too_many_fields"


class Listener(Protocol):
    """What a backfill or a file load tells as it goes (the CLI draws a progress bar from it)."""

    def say(self, message: str) -> None: ...

    def begin(self, entity: str, done: int, total: int | None) -> None:
        """`entity` starts with `done` records already synced; `total` is an estimate, if any."""
        ...

    def advance(self, entity: str, records: int, amount: int) -> None:
        """`records` more records were synced; the bar moves by `amount` (records, or bytes of a file)."""
        ...


class Quiet:
    """A listener that tells nothing."""

    def say(self, message: str) -> None:
        pass

    def begin(self, entity: str, done: int, total: int | None) -> None:
        pass

    def advance(self, entity: str, records: int, amount: int) -> None:
        pass


@dataclass(frozen=True)
class NotApplied:
    """A record that was not applied (INVALID or SKIPPED), where it came from (a file's line)."""

    zoho_id: str | None
    status: str
    message: str
    line: int | None = None


@dataclass
class Tally:
    """Counts per status of an entity's syncs, and the first problems."""

    entity: str
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[NotApplied] = field(default_factory=list)
    unshown: int = 0  # problems beyond SHOWN_PROBLEMS
    seconds: float = 0.0

    @property
    def records(self) -> int:
        """Records synced (a file's bad lines are not records)."""
        return sum(n for status, n in self.counts.items() if status != BAD_LINES)

    def add(self, report: SyncReport, lines: Sequence[int] | None = None) -> None:
        self.counts.update({status: n for status, n in report.summary.items() if n})
        for i, result in enumerate(report.results):
            if result.status not in ("INVALID", "SKIPPED"):
                continue
            if len(self.problems) >= SHOWN_PROBLEMS:
                self.unshown += 1
                continue
            self.problems.append(NotApplied(result.zoho_id, result.status, result.message, lines[i] if lines else None))

    def bad_line(self, line: int, message: str) -> None:
        """A line of a file that holds no record it could read: counted apart from the statuses."""
        self.counts[BAD_LINES] += 1
        if len(self.problems) >= SHOWN_PROBLEMS:
            self.unshown += 1
        else:
            self.problems.append(NotApplied(None, "BAD LINE", message, line))


@dataclass
class Cursor:
    """Where an entity's backfill is: stored in `syncengine_backfills`, one row per tenant and entity."""

    entity: str
    since: dt.datetime | None
    page_token: str | None = None
    pages: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    state: str = RUNNING
    started_at: dt.datetime = field(default_factory=utc_now)
    updated_at: dt.datetime = field(default_factory=utc_now)


async def read_cursors(database: AsyncEngine, tenant: str) -> dict[str, Cursor]:
    """The stored cursor of each entity of `tenant`."""
    async with database.connect() as conn:
        rows = await conn.execute(sa.select(TABLE).where(TABLE.c.tenant_id == tenant))
    return {
        row.entity: Cursor(
            row.entity, row.since, row.page_token, row.pages, Counter(json.loads(row.counts)), row.state,
            row.started_at, row.updated_at,
        )
        for row in rows
    }  # fmt: skip


async def save_cursor(database: AsyncEngine, tenant: str, cursor: Cursor) -> None:
    cursor.updated_at = utc_now()
    values = {
        "since": cursor.since,
        "page_token": cursor.page_token,
        "pages": cursor.pages,
        "counts": json.dumps(dict(cursor.counts)),
        "state": cursor.state,
        "started_at": cursor.started_at,
        "updated_at": cursor.updated_at,
    }
    where = (TABLE.c.tenant_id == tenant, TABLE.c.entity == cursor.entity)
    async with database.begin() as conn:
        if (await conn.execute(sa.update(TABLE).where(*where).values(values))).rowcount == 0:
            await conn.execute(sa.insert(TABLE).values(tenant_id=tenant, entity=cursor.entity, **values))


def api_names(entity: Entity) -> list[str]:
    """The `fields` of a list call: each field's Zoho API name and the version field."""
    names = list(dict.fromkeys([*(f.source for f in entity.fields), *filter(None, [entity.version_field])]))
    if len(names) > MAX_FIELDS:
        raise TooManyFields(
            f"entity '{entity.name}' maps {len(names)} Zoho fields; a Zoho list call returns at most {MAX_FIELDS}: "
            f"map fewer fields of {entity.source}, or load it from an export file (`syncengine load`)"
        )
    return names


@dataclass(frozen=True)
class Batch:
    records: list[Any]  # each record's JSON text (msgspec.Raw)
    next_page_token: str | None  # None: the listing is over
    pages: int


class Backfill:
    """Pulls entities of one tenant from Zoho into the engine, resuming from stored cursors."""

    def __init__(
        self,
        engine: SyncEngine,
        zoho: ZohoClient,
        tenant: str,
        *,
        since: dt.datetime | None = None,
        restart: bool = False,
        listener: Listener | None = None,
        batch_pages: int = BATCH_PAGES,
    ) -> None:
        self.engine, self.zoho, self.tenant, self.since, self.restart = engine, zoho, tenant, since, restart
        self.listener = listener or Quiet()
        self.batch_pages = batch_pages

    def order(self, names: Sequence[str] = ()) -> list[Entity]:
        """The named entities (every one when none is), parents first as the catalog orders them."""
        wanted = {self.engine.catalog.entity(name).name for name in names}
        return [e for e in self.engine.catalog if not wanted or e.name in wanted]

    async def run(self, entities: Sequence[Entity]) -> list[Tally]:
        """Backfill each entity in turn; a tally of each (counts across an interruption)."""
        for entity in entities:
            api_names(entity)  # every entity can be listed, before any is started
        stored = await read_cursors(self.engine.database, self.tenant)
        cursors = [self._cursor(entity, stored.get(entity.name)) for entity in entities]
        tallies = []
        for entity, cursor in zip(entities, cursors, strict=True):
            tallies.append(await self._entity(entity, cursor))
        return tallies

    def _cursor(self, entity: Entity, cursor: Cursor | None) -> Cursor:
        """Where `entity` starts: its stored cursor if it was interrupted, else the beginning."""
        fresh = Cursor(entity.name, self.since)
        if cursor is None or self.restart:
            return fresh
        if cursor.state == DONE:
            self.listener.say(
                f"{entity.name}: the backfill finished at {_when(cursor.updated_at)} "
                f"({sum(cursor.counts.values()):,} records); starting over"
            )
            return fresh
        if cursor.since != self.since:
            was = "--since " + cursor.since.isoformat() if cursor.since else "no --since"
            raise BackfillMismatch(
                f"{entity.name}: an interrupted backfill with {was} is stored; rerun with {was} to resume it, "
                "or add --restart to start it over"
            )
        if cursor.page_token is not None and utc_now() - cursor.updated_at > PAGE_TOKEN_LIFETIME:
            self.listener.say(
                f"{entity.name}: the backfill stopped at {_when(cursor.updated_at)}, and Zoho's page tokens "
                "last 24 hours: starting it over (records synced before come back UNCHANGED)"
            )
            return fresh
        if cursor.pages or cursor.state == DELETING:
            self.listener.say(
                f"{entity.name}: resuming the backfill stopped at {_when(cursor.updated_at)}, after "
                f"{cursor.pages:,} pages ({sum(cursor.counts.values()):,} records)"
            )
        return cursor

    async def _entity(self, entity: Entity, cursor: Cursor) -> Tally:
        tally = Tally(entity.name, cursor.counts)  # one Counter: the tally's counts are the cursor's
        started = asyncio.get_running_loop().time()
        estimate = await self._estimate(entity) if cursor.since is None else None
        self.listener.begin(entity.name, tally.records, estimate)
        await save_cursor(self.engine.database, self.tenant, cursor)
        if cursor.state == RUNNING:
            try:
                await self._pull(entity, cursor, tally)
            except ZohoError as error:
                if cursor.page_token is None or error.zoho_code not in STALE_TOKEN_CODES:
                    raise
                self.listener.say(
                    f"{entity.name}: Zoho no longer takes the stored page token ({error.zoho_code}): starting the "
                    "backfill over (records synced before come back UNCHANGED)"
                )
                cursor = Cursor(entity.name, self.since, started_at=cursor.started_at)
                tally = Tally(entity.name, cursor.counts)
                self.listener.begin(entity.name, 0, estimate)
                await self._pull(entity, cursor, tally)
        if cursor.state == DELETING:
            await self._deletions(entity, cursor, tally)
        tally.seconds = asyncio.get_running_loop().time() - started
        return tally

    async def _estimate(self, entity: Entity) -> int | None:
        """Records of `entity` this tenant has live: what a full backfill will likely list (the
        progress bar's total; Zoho tells none up front). None when it has none."""
        table = self.engine.metadata.tables[entity.name]
        query = sa.select(sa.func.count()).where(table.c.tenant_id == self.tenant, table.c.deleted_at.is_(None))
        async with self.engine.database.connect() as conn:
            count = int((await conn.execute(query)).scalar_one())
        return count or None

    async def _pull(self, entity: Entity, cursor: Cursor, tally: Tally) -> None:
        """Sync the listing from the cursor on, a batch a transaction. The cursor is stored after
        each batch commits, while the next one is synced (its COMMIT waits for the disk too)."""
        saving: asyncio.Task[None] | None = None
        try:
            async for batch in self._batches(entity, cursor.page_token):
                if batch.records:
                    tally.add(await self.engine.sync(self.tenant, entity.name, batch.records))
                cursor.page_token, cursor.pages = batch.next_page_token, cursor.pages + batch.pages
                if batch.next_page_token is None:
                    cursor.state = DELETING if self.since is not None else DONE
                if saving is not None:
                    await saving  # cursors are stored in order
                saving = asyncio.create_task(self._save(dataclasses.replace(cursor, counts=Counter(cursor.counts))))
                self.listener.advance(entity.name, len(batch.records), len(batch.records))
        finally:
            if saving is not None:
                await saving

    async def _save(self, cursor: Cursor) -> None:
        await save_cursor(self.engine.database, self.tenant, cursor)

    async def _batches(self, entity: Entity, page_token: str | None) -> AsyncIterator[Batch]:
        """The listing in batches of `batch_pages` pages, the next one fetched while one is synced."""
        queue: asyncio.Queue[Batch | BaseException] = asyncio.Queue(maxsize=1)
        fields = api_names(entity)

        async def fetch() -> None:
            try:
                records: list[Any] = []
                pages, last = 0, False
                listing = self.zoho.pages(
                    entity.source, fields, modified_since=self.since, page_token=page_token, raw=True
                )
                async for page in listing:
                    records.extend(page.records)
                    pages += 1
                    last = page.next_page_token is None
                    if pages == self.batch_pages or last:
                        await queue.put(Batch(records, page.next_page_token, pages))
                        records, pages = [], 0
                if not last:  # Zoho answered 204: nothing (more) to list
                    await queue.put(Batch(records, None, pages))
            except BaseException as error:  # handed to the consumer, which raises it
                await queue.put(error)

        task = asyncio.create_task(fetch())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.next_page_token is None:
                    return
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _deletions(self, entity: Entity, cursor: Cursor, tally: Tally) -> None:
        """Records deleted in Zoho since `since` (its recycle bin and permanent deletions) are
        synced as deletions, with their deletion time as their version."""
        assert self.since is not None
        batch: list[dict[str, Any]] = []
        async for page in self.zoho.deleted(entity.source, modified_since=self.since):
            batch.extend(self._deletion(entity, item) for item in page)
            if len(batch) >= self.batch_pages * PER_PAGE:
                await self._sync_deletions(entity, batch, cursor, tally)
                batch = []
        await self._sync_deletions(entity, batch, cursor, tally)
        cursor.state = DONE
        await save_cursor(self.engine.database, self.tenant, cursor)

    @staticmethod
    def _deletion(entity: Entity, item: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"id": str(item["id"]), DELETED_KEY: True}
        if entity.version_field is not None and item.get("deleted_time"):
            record[entity.version_field] = item["deleted_time"]
        return record

    async def _sync_deletions(self, entity: Entity, batch: list[dict[str, Any]], cursor: Cursor, tally: Tally) -> None:
        if not batch:
            return
        report = await self.engine.sync(self.tenant, entity.name, batch)
        tally.add(report)
        await save_cursor(self.engine.database, self.tenant, cursor)
        self.listener.advance(entity.name, len(batch), len(batch))


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
