"""The Python API that the HTTP service and the CLI share.

engine = SyncEngine.open(Settings.from_env())
report = await engine.sync("default", entity_name, records, dry_run=True)
print(report.summary)
await engine.close()
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.config import Settings
from syncengine.descriptors import Catalog, load_catalog
from syncengine.pipeline import EntityTables, sync_batch
from syncengine.report import SyncReport
from syncengine.store import open_database, store_for
from syncengine.tables import TENANT_LENGTH, build_metadata

OUTBOX = "syncengine_outbox"


class SchemaError(RuntimeError):
    """The database has no tables for the descriptors (yet)."""


class SyncEngine:
    """The pipeline bound to a catalog and a database."""

    def __init__(self, catalog: Catalog, database: AsyncEngine) -> None:
        self.catalog = catalog
        self.database = database
        self.metadata = build_metadata(catalog)
        self.store = store_for(database)
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
        """Run the pipeline on `records` as one transaction; with `dry_run`, roll it back."""
        tables = self._tables.get(entity) or self._tables[self.catalog.entity(entity).name]
        if not tenant or len(tenant) > TENANT_LENGTH:
            raise ValueError(f"a tenant name is 1 to {TENANT_LENGTH} characters, got {tenant!r}")
        try:
            async with self.database.connect() as conn, conn.begin() as transaction:
                report = await sync_batch(conn, self.store, tables, tenant, records)
                if dry_run:
                    await transaction.rollback()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as error:
            if _is_missing_table(error):
                raise SchemaError(
                    f"the database has no table for '{entity}': run `syncengine db upgrade` first"
                ) from None
            raise
        report.dry_run = dry_run
        return report

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
        await self.database.dispose()


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def _is_missing_table(error: sa.exc.DBAPIError) -> bool:
    text = str(error.orig).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)
