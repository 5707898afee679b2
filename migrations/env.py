"""Alembic environment: the target metadata is built from entities.yaml.

Run through `syncengine db upgrade` / `syncengine db revision -m MSG`, which pass the settings in;
plain `alembic` (with alembic.ini) reads them from the environment instead.
"""

import asyncio
import dataclasses

from alembic import context
from sqlalchemy.engine import Connection

from syncengine.config import Settings
from syncengine.descriptors import load_catalog
from syncengine.fieldtypes import DecimalText, UtcDateTime
from syncengine.store import open_database
from syncengine.tables import build_metadata

config = context.config
settings: Settings = config.attributes.get("settings") or Settings.from_env()
target_metadata = build_metadata(load_catalog(settings.entities))


def include_name(name, type_, parent_names):
    """Manage our tables only; a shared database may hold others."""
    if type_ == "table":
        return name in target_metadata.tables
    return True


def render_item(type_, obj, autogen_context):
    """Our column types as the plain types they store, so a migration needs no syncengine import."""
    if type_ == "type" and isinstance(obj, DecimalText):
        return f"sa.String(length={obj.impl.length})"
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def configure(**options) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_name=include_name,
        render_item=render_item,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
        **options,
    )


def run_offline() -> None:
    configure(url=open_database(settings.database_url).url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_sync(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    # Bounded connect and lock waits; a migration's statements may take as long as they need.
    database = open_database(settings.database_url, dataclasses.replace(settings.database_timeouts, statement=None))
    async with database.connect() as connection:
        await connection.run_sync(run_sync)
        await connection.commit()
    await database.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())
