"""Id-only webhooks end to end with real processes: `syncengine tenant zoho` stores the fake's
credentials, `syncengine serve` fetches the records a workflow names by id, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from syncengine import migrate
from syncengine.config import Settings
from syncengine.store import open_database
from syncengine.tenants import add_tenant
from tests.conftest import ENTITIES, ROOT, Databases
from tests.records import program
from tests.test_serve import SYNCENGINE, environment, serving
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, serve_fake

IDS = [str(6284103000001700000 + n) for n in range(1, 4)]


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        running.load("Products", [program(zoho_id) for zoho_id in IDS])
        yield running


async def test_serve_fetches_what_a_workflow_names_by_id(
    databases: Databases, dialect: str, fake: ZohoFake, tmp_path: Path
) -> None:
    url = await databases.fresh_url(dialect)
    await asyncio.to_thread(migrate.upgrade, Settings(url, ENTITIES, ROOT / "migrations"))
    database = open_database(url)
    key = await add_tenant(database, "school")
    await database.dispose()
    env = environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ENTITIES))
    (tmp_path / "secret").write_text(CLIENT_SECRET)
    (tmp_path / "refresh").write_text(REFRESH_TOKEN)
    stored = await asyncio.create_subprocess_exec(
        SYNCENGINE, "tenant", "zoho", "school", "--dc", "eu", "--client-id", CLIENT_ID,
        "--client-secret-file", str(tmp_path / "secret"), "--refresh-token-file", str(tmp_path / "refresh"),
        "--accounts-url", fake.url, "--api-url", fake.url, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert await asyncio.wait_for(stored.wait(), 60) == 0

    async with serving(["--no-worker"], env, tmp_path) as (base, _):
        async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=30) as http:
            json_hook = await http.post("/v1/sync/programs", json={"zoho_id": IDS[0], "module": "Products"})
            form_hook = await http.post("/v1/sync/programs", data={"zoho_id": IDS[1]})
            assert [json_hook.status_code, form_hook.status_code] == [200, 200], json_hook.text + form_hook.text
            assert [r.json()["results"][0]["status"] for r in (json_hook, form_hook)] == ["NEW", "NEW"]
            read = await http.get(f"/v1/programs/{IDS[1]}")
            assert read.json()["values"]["Product_Name"] == f"Program {IDS[1]}"
    assert fake.tokens_granted == 1  # the one `tenant zoho` got: the service reuses it from the database
