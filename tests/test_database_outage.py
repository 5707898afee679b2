"""A database that is not there, goes away, stalls or stays locked: 503 with Retry-After, never
500, and the service recovers by itself (items 14, 15 and 16 of issue 13).

PostgreSQL is reached through `Proxy`, a TCP proxy on 127.0.0.1 that forwards to the test
server and can cut every connection or stop forwarding (a stall), then be restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine import migrate
from syncengine.app import create_app
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.logs import JsonFormatter
from syncengine.store import Timeouts, open_database
from syncengine.tables import build_metadata
from syncengine.tenants import hash_key
from tests.conftest import POSTGRES_URL, Databases
from tests.records import student
from tests.service import SETTINGS, Api, asgi_client, lifespan, running_api

#: Small budgets, so that each wait of these tests ends soon.
QUICK = Timeouts(connect=1.0, statement=1.0, lock=0.3)
#: A guard against a hang, not a timing assertion: every request here answers well within it.
GUARD = 60


class Proxy:
    """Forwards 127.0.0.1:`port` to PostgreSQL; `cut()`, `stall()` and `restore()` it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "forward"
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.transports: set[asyncio.BaseTransport] = set()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.restore()
        self._drop_all()
        self.server.close()
        await self.server.wait_closed()

    def cut(self) -> None:
        """Close every connection, and each new one at once."""
        self.mode = "cut"
        self._drop_all()

    def stall(self) -> None:
        """Keep the connections open (and accept new ones) but forward nothing."""
        self.mode = "stall"
        self.flowing.clear()

    def restore(self) -> None:
        self.mode = "forward"
        self.flowing.set()

    def _drop_all(self) -> None:
        for transport in list(self.transports):
            transport.abort()  # type: ignore[attr-defined]
        self.transports.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            self.transports.discard(writer.transport)


@contextlib.asynccontextmanager
async def proxied_engine(databases: Databases, catalog: Catalog) -> AsyncIterator[tuple[Proxy, SyncEngine]]:
    """An engine on a fresh PostgreSQL schema, through a proxy, with small timeouts."""
    direct = await databases.create("postgresql", catalog)  # the schema and its tables, made directly
    await stamp(direct)
    schema = databases.schemas[-1]
    server = urlsplit(POSTGRES_URL)
    proxy = Proxy((server.hostname or "127.0.0.1", server.port or 5432))
    await proxy.start()
    url = POSTGRES_URL.replace(f"{server.hostname}:{server.port or 5432}", f"127.0.0.1:{proxy.port}")
    database = open_database(url, QUICK, connect_args={"server_settings": {"search_path": schema}})
    engine = SyncEngine(catalog, database)
    try:
        yield proxy, engine
    finally:
        await proxy.close()
        await engine.close()


async def stamp(database: AsyncEngine) -> None:
    """Mark tables made by `create_all` as at the latest migration, as /v1/ready wants them."""
    async with database.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO alembic_version VALUES (:head)"), {"head": migrate.head(SETTINGS)})


def log_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(JsonFormatter().format(record)) for record in caplog.records if record.name.startswith("sync")]


async def expect_unavailable(api: Api, *, error: str = "database_unavailable") -> None:
    """A sync, a read and the readiness check each answer 503 `error` with Retry-After."""
    sync = await asyncio.wait_for(api.sync("students", [student("2")]), GUARD)
    read = await asyncio.wait_for(api.http.get("/v1/students/1", headers=api.auth()), GUARD)
    ready = await asyncio.wait_for(api.http.get("/v1/ready"), GUARD)
    for response in (sync, read):
        assert (response.status_code, response.json()["error"]) == (503, error), response.text
        assert response.headers["retry-after"].isdigit()
    assert (ready.status_code, ready.json()["error"]) == (503, "database_unavailable"), ready.text


async def expect_working(api: Api) -> None:
    assert (await asyncio.wait_for(api.sync("students", [student("1")]), GUARD)).status_code == 200
    assert (await asyncio.wait_for(api.http.get("/v1/students/1", headers=api.auth()), GUARD)).status_code == 200
    assert (await asyncio.wait_for(api.http.get("/v1/ready"), GUARD)).status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("trouble", ["cut", "stall"])
async def test_a_cut_or_stalled_database_is_503_and_the_service_recovers(
    trouble: str, databases: Databases, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncengine")
    async with proxied_engine(databases, catalog) as (proxy, engine), running_api(engine) as api:
        await expect_working(api)
        getattr(proxy, trouble)()
        await asyncio.sleep(1.1)  # past the key cache: the key check too needs the database
        await expect_unavailable(api)
        proxy.restore()
        await expect_working(api)  # at once: no broken connection is lent again
    lines = log_lines(caplog)
    assert not [line for line in lines if line["message"] == "unhandled error"]
    assert [line["status"] for line in lines if line["message"] == "request"].count(503) == 3


@pytest.mark.postgres
async def test_a_database_not_there_is_503(catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncengine")
    database = open_database("postgresql://postgres:secret@127.0.0.1:1/test", QUICK)
    engine = SyncEngine(catalog, database)
    app = create_app(SETTINGS, engine=engine)
    async with lifespan(app), asgi_client(app) as http:
        sync = await http.post("/v1/sync/students", json=[student()], headers={"Authorization": "Bearer sk_x"})
        ready = await http.get("/v1/ready")
    await engine.close()
    for response in (sync, ready):
        assert (response.status_code, response.json()["error"]) == (503, "database_unavailable"), response.text
        assert response.headers["retry-after"] == "5"
    assert "ConnectionRefusedError" in sync.json()["message"]
    lines = log_lines(caplog)
    assert not [line for line in lines if line["message"] == "unhandled error"]
    assert "secret" not in json.dumps(lines) + sync.text + ready.text


@pytest.mark.postgres
async def test_a_postgres_lock_wait_past_its_budget_is_503(databases: Databases, catalog: Catalog) -> None:
    async with proxied_engine(databases, catalog) as (_, engine), running_api(engine) as api:
        await expect_working(api)
        schema = databases.schemas[-1]
        blocker = open_database(POSTGRES_URL, connect_args={"server_settings": {"search_path": schema}})
        try:
            async with blocker.begin() as conn:
                await conn.execute(sa.text("LOCK TABLE students IN ACCESS EXCLUSIVE MODE"))
                sync = await asyncio.wait_for(api.sync("students", [student("1", First_Name="Changed")]), GUARD)
                assert (sync.status_code, sync.json()["error"]) == (503, "database_busy"), sync.text
                assert sync.headers["retry-after"] == "1"
                assert "lock_timeout" in sync.json()["message"]
        finally:
            await blocker.dispose()
        await expect_working(api)


async def test_sqlite_reads_take_no_write_lock(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "locked.db"
    database = open_database(f"sqlite:///{path}", QUICK)
    async with database.begin() as conn:
        await conn.run_sync(build_metadata(catalog).create_all)
    await stamp(database)
    engine = SyncEngine(catalog, database)
    async with running_api(engine) as api:
        assert (await api.sync("students", [student("1")])).status_code == 200
        await asyncio.sleep(1.1)  # past the key cache: the next key check reads the database
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            read = await asyncio.wait_for(api.http.get("/v1/students/1", headers=api.auth("other")), GUARD)
            assert read.status_code == 404, read.text  # the key check and the read both answered
            assert (await api.http.get("/v1/students/1", headers=api.auth())).status_code == 200
            assert (await api.http.get("/v1/ready")).status_code == 200
            write = await asyncio.wait_for(api.sync("students", [student("2")]), GUARD)
            assert (write.status_code, write.json()["error"]) == (503, "database_busy"), write.text
            assert write.headers["retry-after"] == "1"
            assert "busy_timeout" in write.json()["message"]
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert (await api.sync("students", [student("2")])).status_code == 200


async def test_no_statement_parameter_reaches_the_log_or_the_response(
    engine: SyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncengine")
    async with running_api(engine) as api:
        async with engine.database.begin() as conn:  # the key lookup's statement now fails
            await conn.execute(sa.text("ALTER TABLE syncengine_tenants RENAME TO tenants_gone"))
        response = await api.sync("students", [student()])
    assert response.status_code == 500
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "tenants_gone" not in response.text
    assert "syncengine_tenants" in logged  # the failed statement is in the log...
    assert "SQL parameters hidden" in logged  # ...without its parameters
    for secret in (hash_key(api.keys["school"]), api.keys["school"]):
        assert secret not in logged and secret not in response.text
