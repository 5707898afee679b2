"""Alembic, driven from the CLI: the migrations folder and the database come from Settings."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.config import Settings
from syncengine.exceptions import Misconfigured


class MigrationsNotFound(Misconfigured):
    """The migrations folder is not where syncengine looks for it; the message says where."""

    code = "migrations_not_found"


def alembic_config(settings: Settings) -> Config:
    """An Alembic Config for `settings`; `migrations/env.py` reads `settings` from it."""
    folder = settings.migrations_dir
    if not (folder / "env.py").is_file():
        raise MigrationsNotFound(
            f"no Alembic migrations in {folder}: keep migrations/ beside the entities file, "
            "or set SYNCENGINE_MIGRATIONS"
        )
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(folder / "versions"))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> list[Script]:
    """Bring the database to `revision`; the migrations applied, oldest first (none: it was there)."""
    import asyncio

    from syncengine.store import open_database

    async def at() -> str | None:
        database = open_database(settings.database_url, settings.database_timeouts)
        try:
            return await current(database)
        finally:
            await database.dispose()

    config = alembic_config(settings)
    before = asyncio.run(at())
    command.upgrade(config, revision)
    after = asyncio.run(at())
    if after == before or after is None:
        return []
    applied = ScriptDirectory.from_config(config).iterate_revisions(after, before)
    return [script for script in reversed(list(applied)) if script is not None]


def revision(settings: Settings, message: str) -> Path | None:
    """Autogenerate a migration from the difference between the descriptors and the database.

    None, and no file written, when there is no difference: `migrations/env.py` drops an empty
    revision, whoever asks for it (this, or `alembic revision --autogenerate`).
    """
    script = command.revision(alembic_config(settings), message=message, autogenerate=True)
    if isinstance(script, list):
        script = script[0] if script else None
    return Path(script.path) if script is not None else None


def head(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


async def current(database: AsyncEngine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    async with database.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
