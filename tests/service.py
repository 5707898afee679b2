"""Helpers for tests of the HTTP service: the real app on a real database, tenants with keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx

from syncengine.app import create_app
from syncengine.config import Settings
from syncengine.engine import SyncEngine
from syncengine.tenants import add_tenant
from tests.conftest import ENTITIES, ROOT

SETTINGS = Settings(database_url="sqlite:///unused.db", entities=ENTITIES, migrations=ROOT / "migrations")


@dataclass
class Api:
    """A client of the app, the app, its engine, and the API keys of two tenants."""

    http: httpx.AsyncClient
    app: Any
    engine: SyncEngine
    keys: dict[str, str]

    def auth(self, tenant: str = "school") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    async def sync(self, entity: str, body: Any, tenant: str = "school", **options: Any) -> Any:
        headers = self.auth(tenant) | options.pop("headers", {})
        return await self.http.post(f"/v1/sync/{entity}", json=body, headers=headers, **options)


@asynccontextmanager
async def running_api(engine: SyncEngine, **settings: Any) -> AsyncIterator[Api]:
    keys = {name: await add_tenant(engine.database, name) for name in ("school", "other")}
    app = create_app(replace(SETTINGS, **settings), engine=engine)
    async with lifespan(app), asgi_client(app) as http:
        yield Api(http, app, engine, keys)


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan in a task of its own, as a server does."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(outbox.get(), 10)
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(outbox.get(), 10)
        await task


def asgi_client(app: Any) -> httpx.AsyncClient:
    """A client of the real ASGI app, in the test's own event loop (so requests can overlap).

    litestar's AsyncTestClient runs the app in a thread of its own and handles one request at a
    time, which would hide exactly what the concurrency tests are about.
    """
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def statuses(response: Any) -> list[str]:
    return [result["status"] for result in response.json()["results"]]
