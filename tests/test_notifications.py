"""Zoho notification channels and the intake queue, against the Zoho fake over real HTTP: `zoho watch`
subscribes and renews, a callback is checked and queued at once, the intake worker fetches and
syncs after the answer (also after a SIGKILL), and `GET /v1/intake` shows each outcome."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine import migrate
from syncengine.channels import renew_channels, watch_tenant
from syncengine.config import Settings
from syncengine.descriptors import Catalog
from syncengine.engine import SyncEngine
from syncengine.intake import IntakePolicy, IntakeWorker, queue_ids
from syncengine.tables import INTAKE, ZOHO_CHANNELS, engine_table
from syncengine.tenants import add_tenant
from syncengine.zoho import Credentials
from syncengine.zoho_sites import save_zoho
from tests.conftest import ENTITIES, ROOT, Databases
from tests.records import student
from tests.service import running_api
from tests.test_delivery_faults_process import until
from tests.test_serve import SYNCENGINE, environment, free_port, serving
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, serve_fake

MODULE = "BTEC_Students"
LATER = "2026-03-01T10:00:00+03:00"


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        yield running


def credentials(fake: ZohoFake) -> Credentials:
    return Credentials(CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, dc="eu", accounts_url=fake.url, api_url=fake.url)


def students(*ids: str, **fields: Any) -> list[dict[str, Any]]:
    return [student(zoho_id, **fields) for zoho_id in ids]


async def intake_rows(database: AsyncEngine) -> list[Any]:
    async with database.connect() as conn:
        return list(await conn.execute(sa.text(f"SELECT * FROM {INTAKE} ORDER BY id")))


async def all_taken_in(database: AsyncEngine, count: int) -> bool:
    rows = await intake_rows(database)
    return len(rows) == count and all(row.state in ("done", "failed") for row in rows)


async def prepared(databases: Databases, dialect: str, fake: ZohoFake) -> tuple[str, SyncEngine, str]:
    """A database made by the migrations with tenant `school` (its key) reading from the fake."""
    url = await databases.fresh_url(dialect)
    await asyncio.to_thread(migrate.upgrade, Settings(url, ENTITIES, ROOT / "migrations"))
    engine = SyncEngine.open(Settings(url, ENTITIES, ROOT / "migrations"))
    key = await add_tenant(engine.database, "school")
    await save_zoho(engine.database, "school", credentials(fake))
    return url, engine, key


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYNCENGINE, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


# 1. The whole way: `zoho watch`, Zoho's callbacks to a real `serve`, the intake, GET /v1/intake.


async def test_a_notification_of_inserts_updates_and_a_delete_ends_stored_and_visible(
    databases: Databases, dialect: str, fake: ZohoFake, tmp_path: Path, catalog: Catalog
) -> None:
    url, engine, key = await prepared(databases, dialect, fake)
    await engine.sync("school", "students", students("3004", "3005", "3006"))  # the updated two, the deleted one
    fake.load(
        MODULE, students("3001", "3002", "3003") + students("3004", "3005", First_Name="Zeynep", Modified_Time=LATER)
    )
    env = environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ENTITIES), SYNCENGINE_CHANNEL_RENEWAL="0.2")
    async with serving([], env, tmp_path) as (base, _):
        unknown = await asyncio.to_thread(run, env, "zoho", "watch")
        assert (unknown.returncode, unknown.stderr) == (2, "error: give the URL Zoho reaches this service at: "
                                                        "--url https://sync.example.edu (or SYNCENGINE_PUBLIC_URL)\n")  # fmt: skip
        watched = await asyncio.to_thread(run, env, "zoho", "watch", "--url", base)
        assert watched.returncode == 0, watched.stderr
        assert len(watched.stdout.splitlines()) == len(catalog.entities)
        assert watched.stdout.splitlines()[0].startswith("tenant 'school': programs: channel ")
        assert {e for c in fake.channels.values() for e in c["events"]} == {f"{e.source}.all" for e in catalog}
        async with engine.database.begin() as conn:  # the students' channel expires in an hour: serve renews it
            await conn.execute(
                sa.text(f"UPDATE {ZOHO_CHANNELS} SET expires_at = :soon WHERE entity = 'students'"),
                {"soon": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)},
            )
        await until(lambda: [m for m, _ in fake.watch_calls] == ["POST"] * len(catalog.entities) + ["PUT"],
                    "serve renewed the channel about to expire")  # fmt: skip
        for operation, ids in (("insert", ["3001", "3002", "3003"]), ("update", ["3004", "3005"]),
                               ("delete", ["3006"])):  # fmt: skip
            status, answer = await asyncio.to_thread(fake.callback, MODULE, operation, ids)
            assert (status, answer) == (200, {"status": "queued", "entity": "students", "queued": len(ids)})
        await until(lambda: all_taken_in(engine.database, 6), "every notified id taken in")
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
            listed = (await http.get("/v1/intake", params={"state": "done"})).json()
            stored = (await http.get("/v1/students/3004")).json()
            deleted = (await http.get("/v1/students/3006")).json()
            refused = await http.get("/v1/intake", params={"status": "done"})
    assert listed["counts"] == {"pending": 0, "working": 0, "done": 6, "failed": 0}
    outcomes = [(r["zoho_id"], r["operation"], r["state"], r["status"], r["last_error"]) for r in listed["intake"]]
    assert outcomes == [
        ("3001", "insert", "done", "NEW", None),
        ("3002", "insert", "done", "NEW", None),
        ("3003", "insert", "done", "NEW", None),
        ("3004", "update", "done", "UPDATED", None),
        ("3005", "update", "done", "UPDATED", None),
        ("3006", "delete", "done", "DELETED", None),
    ]
    assert stored["values"]["First_Name"] == "Zeynep"
    assert deleted["deleted_at"] is not None
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "unknown query parameter 'status': this route takes state, limit and after_id; nothing was changed"
    )
    listed_cli = await asyncio.to_thread(run, env, "intake", "list", "--tenant", "school", "--state", "done", "--json")
    assert msgspec.json.decode(listed_cli.stdout)["counts"] == listed["counts"]
    table = await asyncio.to_thread(run, env, "intake", "list")
    assert table.stdout.splitlines()[:2] == [
        "pending 0, working 0, done 6, failed 0",
        "ID  TENANT  ENTITY    ZOHO ID  OPERATION  STATE  STATUS   ATTEMPTS  LAST ERROR",
    ]
    by_ids = [c for c in fake.calls if "ids" in c.params]
    assert [sorted(c.params["ids"].split(",")) for c in by_ids] == [["3001", "3002", "3003"], ["3004", "3005"]]
    await engine.close()


# 2. A callback that is refused changes nothing.


async def test_a_wrong_token_is_401_an_unknown_module_400_and_neither_queues_anything(
    engine: SyncEngine, fake: ZohoFake
) -> None:
    await save_zoho(engine.database, "school", credentials(fake))
    async with running_api(engine, intake_worker=False) as api:
        await watch_tenant(engine.catalog, engine.database, "school", "http://testserver")
        (channel,) = [c for c in fake.channels.values() if c["events"] == [f"{MODULE}.all"]]
        (other,) = [c for c in fake.channels.values() if c["events"] == ["Products.all"]]

        def callback(**changes: Any) -> dict[str, Any]:
            return {"channel_id": channel["channel_id"], "token": channel["token"], "module": MODULE,
                    "operation": "insert", "ids": ["3001"], "server_time": 1770704413512} | changes  # fmt: skip

        answers = [
            await api.http.post("/v1/zoho/notifications", json=body)
            for body in (
                callback(token="not-the-token"),
                callback(token=None),
                callback(token=other["token"]),  # another channel's token
                callback(channel_id=12345),
                callback(module="Leads"),
                callback(module="Products"),
                callback(ids=["${!BTEC_Students.Id}"]),
                callback(operation="merge"),
                callback(channel_id="twelve"),
            )
        ]
        seen = [(a.status_code, a.json()["error"]) for a in answers]
        assert seen == [
            (401, "channel_refused"),
            (401, "channel_refused"),
            (401, "channel_refused"),
            (401, "channel_refused"),
            (400, "unknown_module"),
            (400, "unknown_module"),
            (400, "invalid_notification"),
            (400, "invalid_notification"),
            (400, "invalid_notification"),
        ]
        assert answers[0].json()["message"] == (
            f"the callback's channel_id {channel['channel_id']} and token match no channel of this service: a callback "
            "is taken only from a channel that `syncengine zoho watch --tenant TENANT --url PUBLIC_BASE_URL` "
            "subscribed, with the token it was given"
        )
        assert (
            answers[4]
            .json()["message"]
            .startswith("\"module\": no entity has the source 'Leads' (known: Products, BTEC_Teachers, BTEC_Students")
        )
        assert (
            answers[5]
            .json()["message"]
            .startswith(
                f"\"module\": channel {channel['channel_id']} is for module BTEC_Students, not 'Products': run "
            )
        )
        assert answers[6].json()["message"] == '"ids"[0] must be a Zoho record id (digits), got "${!BTEC_Students.Id}"'
        assert await intake_rows(engine.database) == []
        taken = await api.http.post("/v1/zoho/notifications", json=callback(ids=["3001", "3001", 3002]))
        assert taken.json() == {"status": "queued", "entity": "students", "queued": 2}
        listed = await api.http.get("/v1/intake", headers=api.auth())
        assert listed.json()["counts"]["pending"] == 2
        assert (await api.http.get("/v1/intake", headers=api.auth("other"))).json()["intake"] == []


# 3. A worker killed after the answer loses nothing, and does nothing twice.


async def test_a_worker_killed_after_the_answer_and_restarted_takes_everything_in_once(
    databases: Databases, dialect: str, fake: ZohoFake, tmp_path: Path
) -> None:
    url, engine, _ = await prepared(databases, dialect, fake)
    ids = [str(3100 + n) for n in range(5)]
    fake.load(MODULE, students(*ids))
    env = environment(SYNCENGINE_DATABASE_URL=url, SYNCENGINE_ENTITIES=str(ENTITIES), SYNCENGINE_INTAKE_LEASE="1")
    port = free_port()
    await watch_tenant(engine.catalog, engine.database, "school", f"http://127.0.0.1:{port}")
    serve = subprocess.Popen([SYNCENGINE, "serve", "--port", str(port)], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        await until(lambda: _answers(port), "serve answers")
        fake.delay = 30.0  # Zoho answers the fetch too late: the kill lands first
        status, _ = await asyncio.to_thread(fake.callback, MODULE, "insert", ids)
        assert status == 200
        await until(lambda: any("ids" in c.params for c in fake.calls), "the worker asked Zoho for the ids")
    finally:
        serve.kill()
        serve.communicate(timeout=30)
    assert serve.returncode == -signal.SIGKILL
    assert {row.state for row in await intake_rows(engine.database)} == {"working"}
    fake.delay = 0.0
    worker = subprocess.Popen([SYNCENGINE, "worker"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        await until(lambda: all_taken_in(engine.database, len(ids)), "every id taken in after the restart")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    rows = await intake_rows(engine.database)
    assert [(r.zoho_id, r.state, r.status) for r in rows] == [(z, "done", "NEW") for z in ids]
    async with engine.database.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT count(*) FROM students"))).scalar_one()
    assert stored == len(ids)
    await engine.close()


async def _answers(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/v1/health")).status_code == 200
    except httpx.TransportError:
        return False


# 4. `zoho watch` subscribes each entity; channels about to expire are renewed.


async def test_watch_subscribes_every_entity_and_renewal_keeps_callbacks_coming(
    engine: SyncEngine, fake: ZohoFake
) -> None:
    await save_zoho(engine.database, "school", credentials(fake))
    watched = await watch_tenant(engine.catalog, engine.database, "school", "https://sync.example.edu/")
    assert [(w.entity, w.action) for w in watched] == [(e.name, "subscribed") for e in engine.catalog]
    assert [m for m, _ in fake.watch_calls] == ["POST"] * len(engine.catalog.entities)
    week = dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
    assert all(w.expires_at is not None and w.expires_at > week for w in watched)  # the fake gives 1 h past a week
    assert {c["notify_url"] for c in fake.channels.values()} == {"https://sync.example.edu/v1/zoho/notifications"}
    assert all(len(c["token"]) <= 50 for c in fake.channels.values())
    assert await renew_channels(engine.catalog, engine.database) == []  # a week left: nothing to renew
    first = {c["channel_id"]: c["token"] for c in fake.channels.values()}
    async with engine.database.begin() as conn:
        await conn.execute(sa.text(f"UPDATE {ZOHO_CHANNELS} SET expires_at = :soon"),
                           {"soon": dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)})  # fmt: skip
    renewed = await renew_channels(engine.catalog, engine.database)
    assert [(w.entity, w.action) for w in renewed] == [(e.name, "renewed") for e in engine.catalog]
    assert [m for m, _ in fake.watch_calls] == ["POST"] * len(engine.catalog.entities) + ["PUT"] * len(
        engine.catalog.entities
    )
    assert all(first[c["channel_id"]] != c["token"] for c in fake.channels.values())  # a new token each
    again = await watch_tenant(engine.catalog, engine.database, "school", "https://sync.example.edu")
    assert [w.action for w in again] == ["renewed"] * len(engine.catalog.entities)  # the same channels, not new ones
    async with engine.database.connect() as conn:
        assert (await conn.execute(sa.text(f"SELECT count(*) FROM {ZOHO_CHANNELS}"))).scalar_one() == len(
            engine.catalog.entities
        )
    async with running_api(engine, intake_worker=False) as api:
        (channel,) = [c for c in fake.channels.values() if c["events"] == [f"{MODULE}.all"]]
        body = {"channel_id": channel["channel_id"], "module": MODULE, "operation": "update", "ids": ["3001"]}
        latest = await api.http.post("/v1/zoho/notifications", json=body | {"token": channel["token"]})
        crossing = await api.http.post("/v1/zoho/notifications", json=body | {"token": _second_token(fake, channel)})
        stale = await api.http.post("/v1/zoho/notifications", json=body | {"token": first[channel["channel_id"]]})
    assert (latest.status_code, crossing.status_code, stale.status_code) == (200, 200, 401)


def _second_token(fake: ZohoFake, channel: dict[str, Any]) -> str:
    """The token the channel had before its latest renewal (sent by a callback crossing it)."""
    tokens = [str(item["token"]) for _, item in fake.watch_calls if item["channel_id"] == channel["channel_id"]]
    return tokens[-2]


# 5. What the worker writes when it cannot fetch.


async def test_a_tenant_without_credentials_fails_with_how_to_configure_and_zoho_down_retries_then_fails(
    engine: SyncEngine, fake: ZohoFake
) -> None:
    async with engine.database.begin() as conn:
        await queue_ids(conn, "school", "students", "insert", ["3001"])
    worker = IntakeWorker(engine, IntakePolicy(attempts=2, retry_base=0.001, retry_max=0.001), max_attempts=1)
    assert str(await worker.intake_once()) == "intake: done 0, retrying 0, failed 1"
    (row,) = await intake_rows(engine.database)
    assert (row.state, row.attempts, row.last_error) == (
        "failed",
        1,
        "tenant 'school' has no Zoho credentials: store them with `syncengine tenant zoho school --dc DC "
        "--client-id ID --client-secret-file FILE --refresh-token-file FILE`",
    )
    await save_zoho(engine.database, "other", credentials(fake))
    fake.load(MODULE, students("3002"))
    fake.fail_next(503, "INTERNAL_ERROR", times=2)
    async with engine.database.begin() as conn:
        await queue_ids(conn, "other", "students", "update", ["3002"])
    assert str(await worker.intake_once()) == "intake: done 0, retrying 1, failed 0"
    await until(lambda: _due(engine.database), "the retry falls due")
    assert str(await worker.intake_once()) == "intake: done 0, retrying 0, failed 1"
    row = (await intake_rows(engine.database))[-1]
    assert (row.state, row.attempts) == ("failed", 2)
    assert row.last_error == (
        "could not fetch the students records from Zoho: Zoho GET /crm/v8/BTEC_Students answered "
        "INTERNAL_ERROR (HTTP 503) after the client's retries (gave up after 2 attempts)"
    )
    assert row.last_error.endswith("(gave up after 2 attempts)")
    async with engine.database.begin() as conn:
        await queue_ids(conn, "other", "students", "update", ["3002"])
    assert str(await worker.intake_once()) == "intake: done 1, retrying 0, failed 0"


async def _due(database: AsyncEngine) -> bool:
    queue = engine_table(INTAKE)
    async with database.connect() as conn:
        rows = await conn.execute(sa.select(queue.c.next_attempt_at).where(queue.c.state == "pending"))
        return all(moment <= dt.datetime.now(dt.UTC) for (moment,) in rows)


# 6. A worker whose claim was taken over writes nothing over the rows.


async def test_a_worker_whose_lease_was_taken_over_writes_no_outcome(engine: SyncEngine, fake: ZohoFake) -> None:
    await save_zoho(engine.database, "school", credentials(fake))
    fake.load(MODULE, students("3001", "3002"))
    async with engine.database.begin() as conn:
        await queue_ids(conn, "school", "students", "insert", ["3001", "3002"])
    fake.delay = 3.0  # the first worker's fetch is answered late: after the second worker is done
    first, second = IntakeWorker(engine), IntakeWorker(engine)
    slow = asyncio.create_task(first.intake_once())
    await until(lambda: any("ids" in c.params for c in fake.calls), "the first worker asked Zoho")
    async with engine.database.begin() as conn:  # as if its lease had run out (a long pause, a frozen VM)
        await conn.execute(sa.text(f"UPDATE {INTAKE} SET next_attempt_at = :past"),
                           {"past": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)})  # fmt: skip
    fake.delay = 0.0  # the second worker's fetch is answered at once
    assert str(await second.intake_once()) == "intake: done 2, retrying 0, failed 0"
    taken_over = [("3001", "done", "NEW", 1), ("3002", "done", "NEW", 1)]
    assert [(r.zoho_id, r.state, r.status, r.attempts) for r in await intake_rows(engine.database)] == taken_over
    await slow  # it synced the records too (UNCHANGED by then), but the rows are no longer its own
    assert [(r.zoho_id, r.state, r.status, r.attempts) for r in await intake_rows(engine.database)] == taken_over
