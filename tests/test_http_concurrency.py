"""50 concurrent requests from two tenants touching overlapping ids: one row per (tenant, id),
no 5xx, no deadlock."""

from __future__ import annotations

import asyncio
import random

import sqlalchemy as sa

from syncengine.engine import SyncEngine
from tests.records import student
from tests.service import running_api

REQUESTS = 50
IDS = [str(3000 + i) for i in range(40)]


async def test_concurrent_tenants_with_overlapping_ids(engine: SyncEngine) -> None:
    rng = random.Random(7)
    async with running_api(engine) as api:

        async def send(number: int) -> tuple[int, list[str], int]:
            tenant = ("school", "other")[number % 2]
            ids = rng.sample(IDS, 25)  # every request overlaps the others, in its own order
            statuses = rng.choice(["Active", "Freeze", "Passive"])
            batch = [student(zoho_id, Status=statuses) for zoho_id in ids]
            response = await api.sync("students", {"data": batch}, tenant=tenant)
            return response.status_code, ids, response.json()["summary"]["NEW"]

        responses = await asyncio.wait_for(asyncio.gather(*(send(n) for n in range(REQUESTS))), timeout=120)

    assert [code for code, _, _ in responses] == [200] * REQUESTS
    touched: dict[str, set[str]] = {tenant: set() for tenant in ("school", "other")}
    created = dict.fromkeys(touched, 0)
    for number, (_, ids, new) in enumerate(responses):
        tenant = ("school", "other")[number % 2]
        touched[tenant].update(ids)
        created[tenant] += new
    assert created == {tenant: len(ids) for tenant, ids in touched.items()}  # each row was created once
    async with engine.database.connect() as conn:
        rows = (
            await conn.execute(sa.text("SELECT tenant_id, zoho_id, count(*) FROM students GROUP BY tenant_id, zoho_id"))
        ).all()
    assert {count for _, _, count in rows} == {1}
    assert {tenant: {zoho_id for t, zoho_id, _ in rows if t == tenant} for tenant in touched} == touched
