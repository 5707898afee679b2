"""Each tenant's Zoho credentials in the database, sealed, and one access token shared by every task
and every process of a tenant (Zoho grants 10 per 10 minutes): against the Zoho fake over HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine import migrate
from syncengine.config import Settings
from syncengine.store import open_database
from syncengine.tables import ZOHO_SITES, ZOHO_TOKENS, engine_table
from syncengine.tenants import add_tenant
from syncengine.zoho import Credentials
from syncengine.zoho_sites import NoZohoCredentials, open_zoho, read_zoho, save_zoho
from tests.conftest import ENTITIES, ROOT, Databases
from tests.test_serve import SYNCENGINE, environment
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, enrollments, serve_fake

MODULE = "BTEC_Enrollments"


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        running.load(MODULE, enrollments(20))
        yield running


def credentials(fake: ZohoFake) -> Credentials:
    return Credentials(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, dc="eu", accounts_url=fake.url, api_url=fake.url)


async def test_credentials_are_stored_sealed_and_read_back(
    databases: Databases, dialect: str, fake: ZohoFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNCENGINE_SECRET_KEY", Fernet.generate_key().decode())
    database = await databases.create(dialect)
    async with database.begin() as conn:
        await conn.run_sync(engine_table(ZOHO_SITES).metadata.create_all)
    await save_zoho(database, "school", credentials(fake))
    async with database.connect() as conn:
        stored = (await conn.execute(sa.select(engine_table(ZOHO_SITES)))).one()
        assert await read_zoho(conn, "school") == credentials(fake)
        assert await read_zoho(conn, "other") is None
    assert CLIENT_SECRET not in str(stored) and REFRESH_TOKEN not in str(stored)
    assert CLIENT_SECRET not in repr(credentials(fake)) and REFRESH_TOKEN not in repr(credentials(fake))
    with pytest.raises(NoZohoCredentials) as missing:
        await open_zoho(database, "other")
    assert str(missing.value) == (
        "tenant 'other' has no Zoho credentials: store them with `syncengine tenant zoho other --dc DC "
        "--client-id ID --client-secret-file FILE --refresh-token-file FILE`"
    )


async def test_concurrent_clients_of_a_tenant_request_one_token(
    databases: Databases, dialect: str, fake: ZohoFake
) -> None:
    database = await databases.create(dialect)
    async with database.begin() as conn:
        await conn.run_sync(engine_table(ZOHO_TOKENS).metadata.create_all)
    await save_zoho(database, "school", credentials(fake))
    clients = [await open_zoho(database, "school") for _ in range(4)]  # each its own cache object
    ids = [record["id"] for record in enrollments(20)]
    try:
        found = await asyncio.gather(*(c.get_records(MODULE, ids[i : i + 1]) for i in range(20) for c in clients))
    finally:
        for client in clients:
            await client.http.aclose()
    assert all(len(f) == 1 for f in found)
    assert fake.tokens_granted == 1
    async with database.connect() as conn:
        row = (await conn.execute(sa.select(engine_table(ZOHO_TOKENS)))).one()
    assert row.refreshing_until is None and row.access_token not in (None, "")


async def test_an_expired_token_is_refreshed_once_for_all(databases: Databases, dialect: str, fake: ZohoFake) -> None:
    database = await databases.create(dialect)
    async with database.begin() as conn:
        await conn.run_sync(engine_table(ZOHO_TOKENS).metadata.create_all)
    await save_zoho(database, "school", credentials(fake))
    async with await open_zoho(database, "school") as zoho:
        await zoho.get_records(MODULE, ["1"])
    fake.expire_tokens()  # Zoho answers INVALID_TOKEN: one forced refresh, shared by both clients
    first, second = await open_zoho(database, "school"), await open_zoho(database, "school")
    async with first, second:
        await asyncio.gather(first.get_records(MODULE, ["2"]), second.get_records(MODULE, ["3"]))
    assert fake.tokens_granted == 2


PROCESS = """
import asyncio, sys
from syncengine.store import open_database
from syncengine.zoho_sites import open_zoho

async def main(url):
    database = open_database(url)
    async with await open_zoho(database, "school") as zoho:
        print(len(await zoho.get_records("BTEC_Enrollments", ["1", "2"])))
    await database.dispose()

asyncio.run(main(sys.argv[1]))
"""


async def prepared(databases: Databases, dialect: str, fake: ZohoFake) -> tuple[str, AsyncEngine]:
    url = await databases.fresh_url(dialect)
    await asyncio.to_thread(migrate.upgrade, Settings(url, ENTITIES, ROOT / "migrations"))
    database = open_database(url)
    await add_tenant(database, "school")
    await save_zoho(database, "school", credentials(fake))
    return url, database


async def test_processes_needing_a_token_at_once_request_one(
    databases: Databases, dialect: str, fake: ZohoFake
) -> None:
    url, database = await prepared(databases, dialect, fake)
    await database.dispose()
    fake.delay = 0.3  # the token endpoint is slow too: every process asks while the first refreshes
    processes = [
        subprocess.Popen([sys.executable, "-c", PROCESS, url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0]
    assert outputs == ["2\n"] * 4
    assert fake.tokens_granted == 1


async def test_the_tenant_zoho_command_checks_then_stores_and_never_prints_a_secret(
    databases: Databases, fake: ZohoFake, tmp_path: Path
) -> None:
    url, database = await prepared(databases, "sqlite", fake)
    await database.dispose()
    secret, refresh = tmp_path / "secret", tmp_path / "refresh"
    secret.write_text(CLIENT_SECRET + "\n")
    refresh.write_text(REFRESH_TOKEN + "\n")
    env = environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ENTITIES))
    base = [SYNCENGINE, "tenant", "zoho", "school", "--dc", "eu", "--client-id", CLIENT_ID,
            "--accounts-url", fake.url, "--api-url", fake.url]  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)

    stored = run("--client-secret-file", str(secret), "--refresh-token-file", str(refresh))
    assert stored.returncode == 0, stored.stderr
    assert stored.stderr == f"tenant 'school' reads Zoho CRM (eu); Zoho granted a token for {fake.url}\n"
    assert fake.tokens_granted == 1
    wrong = tmp_path / "wrong"
    wrong.write_text("1000.not-the-refresh-token")
    refused = run("--client-secret-file", str(secret), "--refresh-token-file", str(wrong))
    assert refused.returncode == 6  # misconfigured: Zoho refused the credentials (README, "Exit statuses")
    assert refused.stderr.startswith("error: Zoho refused the credentials, nothing was stored: ")
    assert "invalid_code" in refused.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = run("--client-secret-file", str(empty), "--refresh-token-file", str(refresh))
    assert blank.returncode == 2 and blank.stderr == (
        f"error: the client secret file {empty} holds no client secret (or one with spaces inside): "
        "put the client secret alone in it\n"
    )
    for result in (stored, refused, blank):
        assert CLIENT_SECRET not in result.stdout + result.stderr
        assert REFRESH_TOKEN not in result.stdout + result.stderr
    database = open_database(url)
    async with database.connect() as conn:
        assert await read_zoho(conn, "school") == credentials(fake)  # the refused ones were not stored
    await database.dispose()
