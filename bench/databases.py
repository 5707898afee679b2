"""Where the benchmark writes: a PostgreSQL schema or a SQLite file per scenario, dropped afterwards.

Every schema of one run is named `bench_<run id>_<scenario>`, so `drop_all` can remove whatever a
scenario (or dlt, which adds `<dataset>_staging`) left behind, even after a failure.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints, and there are no stubs
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import records
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.store import open_database
from syncengine.tables import OUTBOX, build_metadata

TENANT = "school"
ENTITY = "enrollments"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"the benchmark only talks to a database on this machine; {url!r} names host {host!r}")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class Databases:
    """Makes the scenario databases of one run and removes them."""

    def __init__(self, catalog: Catalog, postgres_url: str, workdir: Path) -> None:
        check_loopback(postgres_url)
        self.catalog = catalog
        self.postgres_url = postgres_url
        self.workdir = workdir
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.engines: list[SyncEngine] = []

    def schema(self, scenario: str) -> str:
        return f"{self.prefix}_{scenario}"

    def dsn(self) -> str:
        """The PostgreSQL URL as asyncpg and psycopg2 take it."""
        return self.postgres_url.replace("postgresql+asyncpg://", "postgresql://")

    async def connect(self, scenario: str) -> asyncpg.Connection:
        """A raw asyncpg connection; it plans each statement for its parameters, as the engine does."""
        settings = {"search_path": self.schema(scenario), "plan_cache_mode": "force_custom_plan"}
        return await asyncpg.connect(self.dsn(), server_settings=settings)

    async def engine(
        self, dialect: str, scenario: str, *, seed: records.World | None = None, settings: dict[str, str] | None = None
    ) -> SyncEngine:
        """A SyncEngine on a fresh database with the tables of the catalog (and, with `seed`, the parents).

        `settings` are PostgreSQL server settings for its connections.
        """
        database = await self._database(dialect, scenario, settings or {})
        async with database.begin() as conn:
            await conn.run_sync(build_metadata(self.catalog).create_all)
        engine = SyncEngine(self.catalog, database)
        self.engines.append(engine)
        if seed is not None:
            await seed_parents(engine, seed)
        return engine

    async def _database(self, dialect: str, scenario: str, settings: dict[str, str]) -> AsyncEngine:
        if dialect == "sqlite":
            path = self.workdir / f"{scenario}.db"
            for leftover in (path, path.with_suffix(".db-wal"), path.with_suffix(".db-shm")):
                leftover.unlink(missing_ok=True)
            return open_database(f"sqlite:///{path}")
        schema = self.schema(scenario)
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; CREATE SCHEMA "{schema}"')
        finally:
            await conn.close()
        return open_database(self.postgres_url, connect_args={"server_settings": {"search_path": schema, **settings}})

    def engine_url(self, dialect: str, scenario: str) -> tuple[str, dict[str, Any]]:
        """The URL and options another process needs to open the database `engine()` made."""
        if dialect == "sqlite":
            return f"sqlite:///{self.workdir / f'{scenario}.db'}", {}
        return self.postgres_url, {"connect_args": {"server_settings": {"search_path": self.schema(scenario)}}}

    async def drop_all(self) -> None:
        for engine in self.engines:
            await engine.close()
        self.engines.clear()
        conn = await asyncpg.connect(self.dsn())
        try:
            rows = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", self.prefix.replace("_", r"\_") + "%"
            )
            for row in rows:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
        finally:
            await conn.close()
        for path in self.workdir.glob("*.db*"):
            path.unlink(missing_ok=True)


async def seed_parents(engine: SyncEngine, world: records.World) -> None:
    """Programs, students and classes through the engine, so every enrollment lookup resolves."""
    for entity, rows in (
        ("programs", records.programs(world)),
        ("students", records.students(world)),
        ("classes", records.classes(world)),
    ):
        for chunk in records.batches(rows, 1_000):
            report = await engine.sync(TENANT, entity, chunk)
            if report.summary["NEW"] != len(chunk):
                raise RuntimeError(f"seeding {entity} failed: {report.summary}")


async def reset(engine: SyncEngine) -> None:
    """Empty the enrollments table and the outbox (parents stay)."""
    async with engine.database.begin() as conn:
        if engine.database.dialect.name == "postgresql":
            await conn.execute(sa.text(f"TRUNCATE {ENTITY}, {OUTBOX}"))
        else:
            await conn.execute(sa.text(f"DELETE FROM {ENTITY}"))
            await conn.execute(sa.text(f"DELETE FROM {OUTBOX}"))


async def vacuum(engine: SyncEngine) -> None:
    """VACUUM ANALYZE outside a transaction, so later runs do not pay for earlier ones' dead rows."""
    if engine.database.dialect.name != "postgresql":
        return
    async with engine.database.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.text(f"VACUUM ANALYZE {ENTITY}, {OUTBOX}"))
