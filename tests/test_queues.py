"""What the database-queued workers share (queues.py): the back-off of both policies, the lease
keeper, and the NOTIFY wake-up on each queue's own channel (the intake's, beside the outbox's in
test_delivery_faults.py), on a database made by the migrations."""

from __future__ import annotations

import asyncio
import logging

import pytest
import sqlalchemy as sa

from syncengine import migrate
from syncengine.config import Settings
from syncengine.delivery import Policy
from syncengine.engine import SyncEngine
from syncengine.intake import IntakePolicy, IntakeWorker, queue_ids
from syncengine.queues import Backoff, keeping
from syncengine.tables import INTAKE
from syncengine.tenants import add_tenant
from tests.conftest import ENTITIES, ROOT, Databases
from tests.test_delivery_faults_process import until


@pytest.mark.parametrize(
    ("policy", "attempts", "low", "high"),
    [
        (Policy(), 1, 2.5, 5.0),  # retry_base, the upper half of it
        (Policy(), 3, 10.0, 20.0),  # doubled each attempt
        (Policy(), 30, 1800.0, 3600.0),  # up to retry_max
        (IntakePolicy(), 1, 2.5, 5.0),
        (IntakePolicy(), 30, 300.0, 600.0),  # the intake's own retry_max
        (IntakePolicy(retry_base=0.001, retry_max=0.001), 5, 0.0005, 0.001),
    ],
)
def test_the_back_off_doubles_up_to_the_ceiling_with_jitter(
    policy: Backoff, attempts: int, low: float, high: float
) -> None:
    waits = [policy.backoff(attempts) for _ in range(200)]
    assert all(low <= wait <= high for wait in waits)
    assert len(set(waits)) > 1  # jitter: two workers do not retry in step


async def test_the_lease_keeper_renews_until_the_work_ends_and_retries_after_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    renewals: list[int] = []

    async def renew() -> None:
        renewals.append(len(renewals))
        if len(renewals) == 1:
            raise ConnectionError("the database went away")

    with caplog.at_level(logging.ERROR, logger="syncengine.queues"):
        async with keeping(renew, 0.03, "test"):
            await until(lambda: len(renewals) >= 3, "a failed renewal tried again")
    ended = len(renewals)
    await asyncio.sleep(0.1)  # several thirds of the lease: a keeper left running would renew again
    assert len(renewals) == ended
    assert [r.getMessage() for r in caplog.records] == ["could not renew the test lease"]


async def test_a_notify_on_the_intake_channel_wakes_the_intake_worker(databases: Databases) -> None:
    url = await databases.fresh_url("postgresql")
    settings = Settings(url, ENTITIES, ROOT / "migrations")
    await asyncio.to_thread(migrate.upgrade, settings)
    engine = SyncEngine.open(settings)
    await add_tenant(engine.database, "school")
    rounds: list[int] = []
    worker = IntakeWorker(engine, IntakePolicy(poll=3600), on_round=lambda counts: rounds.append(counts.done))
    async with engine.database.begin() as conn:  # deletes of records never stored: taken in without Zoho
        await queue_ids(conn, "school", "students", "delete", ["3001"])
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await until(lambda: rounds == [1], "the first round: LISTENing since before it")
        async with engine.database.begin() as conn:  # the migration's trigger NOTIFYs; nothing calls wake()
            await queue_ids(conn, "school", "students", "delete", ["3002"])
        await until(lambda: len(rounds) == 2, "a round woken by the NOTIFY alone (the poll is an hour)")
        assert rounds == [1, 1]
        async with engine.database.connect() as conn:
            taken_in = await conn.execute(sa.text(f"SELECT zoho_id, state, status FROM {INTAKE} ORDER BY id"))
            assert [tuple(row) for row in taken_in] == [("3001", "done", "SKIPPED"), ("3002", "done", "SKIPPED")]
    finally:
        stop.set()
        await task
        await engine.close()
