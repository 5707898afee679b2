"""Shared fixtures: real databases (a SQLite file, and PostgreSQL through asyncpg).

PostgreSQL is never skipped: if it is down the PostgreSQL tests fail, so CI cannot pass without
running them. Each PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.descriptors import Catalog, load_catalog
from syncengine.engine import SyncEngine
from syncengine.store import open_database
from syncengine.tables import build_metadata

ROOT = Path(__file__).resolve().parent.parent
ENTITIES = ROOT / "entities.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "zoho"  # copies of ../shared/fixtures/zoho, so a clone tests alone
POSTGRES_URL = os.environ.get("SYNCENGINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(ENTITIES)


class Databases:
    """Makes empty databases of either dialect and cleans them up."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.schemas: list[str] = []
        self.databases: list[str] = []
        self.engines: list[AsyncEngine] = []

    async def fresh_url(self, dialect: str) -> str:
        """The URL of a whole new database, for code that opens its own connections (Alembic, serve)."""
        if dialect == "sqlite":
            return f"sqlite:///{self.tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        name = f"test_{uuid.uuid4().hex[:12]}"
        admin = open_database(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        await admin.dispose()
        self.databases.append(name)
        return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"

    def url(self, dialect: str) -> tuple[str, dict[str, Any]]:
        """A URL for a fresh database, and the engine options that keep it apart."""
        if dialect == "sqlite":
            return f"sqlite:///{self.tmp_path / f'{uuid.uuid4().hex[:8]}.db'}", {}
        schema = f"test_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        return POSTGRES_URL, {"connect_args": {"server_settings": {"search_path": schema}}}

    async def create(self, dialect: str, catalog: Catalog | None = None) -> AsyncEngine:
        """An engine on a fresh database; with a catalog, its tables are created."""
        url, options = self.url(dialect)
        if dialect == "postgresql":
            admin = open_database(POSTGRES_URL)
            async with admin.begin() as conn:
                await conn.exec_driver_sql(f'CREATE SCHEMA "{self.schemas[-1]}"')
            await admin.dispose()
        database = open_database(url, **options)
        self.engines.append(database)
        if catalog is not None:
            async with database.begin() as conn:
                await conn.run_sync(build_metadata(catalog).create_all)
        return database

    async def close(self) -> None:
        for database in self.engines:
            await database.dispose()
        if self.schemas or self.databases:
            admin = open_database(POSTGRES_URL, isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                for schema in self.schemas:
                    await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                for name in self.databases:
                    await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.dispose()


@pytest.fixture
async def databases(tmp_path: Path) -> AsyncIterator[Databases]:
    dbs = Databases(tmp_path)
    yield dbs
    await dbs.close()


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def engine(databases: Databases, dialect: str, catalog: Catalog) -> SyncEngine:
    """The engine on an empty database of each dialect, with the tables of entities.yaml."""
    return SyncEngine(catalog, await databases.create(dialect, catalog))


@pytest.fixture
def project_copy(tmp_path: Path) -> Callable[[], Path]:
    """A copy of entities.yaml and migrations/ to edit; returns the copied entities file."""

    def copy() -> Path:
        target = tmp_path / "project"
        shutil.copytree(ROOT / "migrations", target / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ENTITIES, target / "entities.yaml")
        return target / "entities.yaml"

    return copy


async def count_rows(database: AsyncEngine, table: str, tenant: str | None = None) -> int:
    query = f"SELECT count(*) FROM {table}" + (" WHERE tenant_id = :tenant" if tenant else "")
    async with database.connect() as conn:
        return int((await conn.execute(sa.text(query), {"tenant": tenant})).scalar_one())
