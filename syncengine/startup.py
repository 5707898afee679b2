"""What `serve` does before it listens: make sure the schema is current, and that a tenant exists.

- SQLite (the embedded default) applies the migrations itself, so a fresh checkout just works.
- PostgreSQL is shared by many processes; it is migrated on purpose, by `syncengine db upgrade`,
  and `serve` refuses to start on a schema that is behind.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import Any

import msgspec

from syncengine import migrate
from syncengine.config import Settings
from syncengine.descriptors import Catalog, Entity
from syncengine.store import open_database
from syncengine.tenants import ensure_first_tenant

FIRST_TENANT = "default"

#: A value of each field type for the quick-start example (choices take their first choice).
_EXAMPLE_VALUES: dict[str, Any] = {
    "string": "Example",
    "text": "Example",
    "email": "someone@example.com",
    "integer": 1,
    "decimal": 1,
    "boolean": True,
    "date": "2026-01-31",
    "datetime": "2026-01-31T09:00:00+00:00",
    "lookup": "1",
}


class SchemaBehind(RuntimeError):
    pass


def dialect_of(settings: Settings) -> str:
    return open_database(settings.database_url).dialect.name


def prepare_schema(settings: Settings) -> None:
    """Upgrade an SQLite database; check that a PostgreSQL one is at the latest migration.

    Runs outside an event loop: Alembic's env.py runs its own.
    """
    if dialect_of(settings) == "sqlite":
        migrate.upgrade(settings)
        return
    head = migrate.head(settings)
    current = asyncio.run(_current(settings))
    if current != head:
        raise SchemaBehind(
            f"the database schema is at {current or 'no revision (an empty database)'}, this version needs "
            f"{head}: run `syncengine db upgrade` with the same SYNCENGINE_DATABASE_URL, then start again"
        )


async def _current(settings: Settings) -> str | None:
    database = open_database(settings.database_url, settings.database_timeouts)
    try:
        return await migrate.current(database)
    finally:
        await database.dispose()


def first_tenant_key(settings: Settings) -> str | None:
    """Create the `default` tenant on a database without tenants; its key, shown once, or None."""

    async def create() -> str | None:
        database = open_database(settings.database_url, settings.database_timeouts)
        try:
            return await ensure_first_tenant(database, FIRST_TENANT)
        finally:
            await database.dispose()

    return asyncio.run(create())


def example_record(entity: Entity) -> dict[str, Any]:
    """A record with every required field of `entity` filled in."""
    record: dict[str, Any] = {"id": "1"}
    for fld in entity.fields:
        if fld.required:
            choices = fld.options.choices
            value = choices[0] if choices else _EXAMPLE_VALUES.get(fld.type.name, "1")
            record[fld.source] = [value] if fld.type.name == "multichoice" else value
    return record


def first_run_message(catalog: Catalog, key: str, host: str, port: int) -> str:
    """The key of the first tenant, and a dry-run `curl` that works as pasted."""
    entity = next(e for e in catalog if not e.requires)
    body = msgspec.json.encode({"data": [example_record(entity)]}).decode()
    address = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    url = f"http://{address}:{port}/v1/sync/{entity.name}?dry_run=true"
    return "\n".join(
        [
            f"Created tenant '{FIRST_TENANT}'. Its API key is shown only this once; store it now:",
            "",
            f"    {key}",
            "",
            "Try it (a dry run: nothing is written):",
            "",
            f"    curl -sS -X POST {shlex.quote(url)} \\",
            f"      -H 'Authorization: Bearer {key}' \\",
            "      -H 'Content-Type: application/json' \\",
            f"      -d {shlex.quote(body)}",
            "",
            f"API documentation: http://{address}:{port}/schema",
            "More tenants: `syncengine tenant add NAME`; a new key: `syncengine tenant key NAME`.",
            "",
        ]
    )
