"""Admission weighs work, not requests: a request takes one turn and one more per TURN_BYTES of
body, so one tenant's flood of large batches cannot crowd another tenant's small writes out of
the process (item 13 of issue 13, bench/ "Flood")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest

from syncengine.admission import KEY_CHECKS, TURN_BYTES, Admission
from syncengine.engine import SyncEngine
from tests.records import student
from tests.service import running_api
from tests.test_admission import admission_of_app, refused, settle

LIMIT = 10 * 1024 * 1024
JSON = "application/json"


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until `condition` holds (a state to reach, not a time to measure)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the state was never reached")


@pytest.mark.parametrize(
    ("body_bytes", "turns"),
    [
        (0, 1),  # no body (a GET)
        (275, 1),  # one record
        (TURN_BYTES - 1, 1),
        (TURN_BYTES, 2),
        (1_041_510, 4),  # 2,000 enrollments
        (2_600_000, 9),  # 5,000 records: the tenant's whole share, no more
        (None, 9),  # a chunked body, of a size not known before it is read: as large as allowed
    ],
)
def test_a_request_takes_a_turn_per_quarter_mebibyte_of_body(body_bytes: int | None, turns: int) -> None:
    assert Admission(active=13, tenant_active=9, waiting=52, wait=10.0).weight(body_bytes, LIMIT) == turns


async def test_a_tenant_at_its_share_of_turns_waits_whatever_its_count_of_requests() -> None:
    admission = Admission(active=8, tenant_active=4, waiting=0, wait=5.0)
    async with admission.turn("flood", weight=4):  # one large request is the tenant's whole share
        refusal = await refused(admission, "flood")  # a small one more does not fit, and cannot wait
        assert (refusal.status_code, refusal.error) == (429, "tenant_over_share")
        assert "tenant 'flood' has 4 turns at work" in refusal.message
        async with admission.turn("other"):  # another tenant's is admitted at once
            assert admission.at_work == 5
    assert admission.at_work == 0


async def test_a_large_request_that_does_not_fit_lets_a_small_one_of_another_tenant_go_first() -> None:
    admission = Admission(active=4, tenant_active=4, waiting=10, wait=5.0)
    order: list[str] = []

    async def request(tenant: str, weight: int) -> None:
        async with admission.turn(tenant, weight):
            order.append(tenant)
            await asyncio.sleep(0)

    async with admission.turn("flood", weight=3):
        large = asyncio.create_task(request("flood", 2))  # 3 + 2 > 4: waits, first in the queue
        await settle()
        small = asyncio.create_task(request("other", 1))  # fits in the free turn: goes ahead of it
        await settle()
        assert order == ["other"]
        assert not large.done()
    await asyncio.gather(large, small)
    assert order == ["other", "flood"]
    assert admission.at_work == 0


async def test_an_api_key_check_takes_a_turn_of_its_own_not_a_tenants() -> None:
    admission = Admission(active=3, tenant_active=2, waiting=0, wait=5.0)
    async with admission.turn(KEY_CHECKS), admission.turn(KEY_CHECKS):
        refusal = await refused(admission, KEY_CHECKS)
        assert (refusal.status_code, refusal.error) == (503, "server_busy")
        assert refusal.message.startswith("this server is checking 2 API keys with the database, its limit")
        async with admission.turn("school"):  # the tenants' turns are untouched
            assert admission.at_work == 3


class Gate:
    """A request body that is sent once the gate opens: the request holds its turns meanwhile."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    def body(self, content: bytes) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            await self.open.wait()
            yield content

        return chunks()


def large_body(size: int) -> bytes:
    """One valid student, padded with JSON whitespace to `size` bytes: large, but quick to parse."""
    record = msgspec.json.encode([student("big")])
    return record + b" " * (size - len(record))


async def test_a_flood_of_large_requests_does_not_take_another_tenants_turns(engine: SyncEngine) -> None:
    limits = {"max_active_requests": 4, "tenant_max_active_requests": 3, "max_waiting_requests": 2}
    async with running_api(engine, **limits) as api:
        gate, body = Gate(), large_body(2 * TURN_BYTES + 1)  # three turns each

        def post_large() -> asyncio.Task[object]:
            headers = api.auth("school") | {"Content-Length": str(len(body)), "Content-Type": "application/json"}
            return asyncio.create_task(
                api.http.post("/v1/sync/students?dry_run=true", content=gate.body(body), headers=headers)
            )

        assert (await api.sync("students", [student("warm")], tenant="other")).status_code == 200
        admission = admission_of_app(api.app)
        first = post_large()
        await until(lambda: "school" in admission._at_work)
        assert admission.at_work == 3  # the first large request holds school's whole share
        waiting = [post_large(), post_large()]  # they wait: school has its share at work
        await until(lambda: admission._queued == 2)
        assert admission.at_work == 3
        over = await api.http.post(
            "/v1/sync/students?dry_run=true", content=body, headers=api.auth("school") | {"Content-Type": JSON}
        )
        assert (over.status_code, over.json()["error"]) == (429, "tenant_over_share"), over.text
        assert over.headers["retry-after"] == "1"
        answered = await api.sync("students", [student("7")], tenant="other")  # admitted at once, ahead
        assert answered.status_code == 200, answered.text
        assert not first.done() and not any(task.done() for task in waiting)
        gate.open.set()
        for task in (first, *waiting):
            response = await task
            assert response.status_code == 200, response.text  # type: ignore[attr-defined]
        assert admission.at_work == 0


async def test_a_key_not_checked_lately_waits_among_key_checks_not_in_a_tenants_turns(engine: SyncEngine) -> None:
    limits = {"max_active_requests": 3, "tenant_max_active_requests": 2, "max_waiting_requests": 1}
    async with running_api(engine, **limits) as api:
        api.app.state.service.api_keys.ttl = 600.0  # school's key stays known through the test
        assert (await api.sync("students", [student("1")])).status_code == 200  # school's key is known now
        admission = admission_of_app(api.app)
        admission.wait = 0.05
        async with admission.turn(KEY_CHECKS), admission.turn(KEY_CHECKS):  # key checks at their share
            wrong = await api.http.post("/v1/sync/students", json=[student("2")], headers={"X-API-Key": "sk_wrong"})
            assert (wrong.status_code, wrong.json()["error"]) == (503, "server_busy"), wrong.text
            assert "API keys" in wrong.json()["message"]
            known = await api.sync("students", [student("3")])  # a key checked within the second: no wait
            assert known.status_code == 200, known.text
        wrong = await api.http.post("/v1/sync/students", json=[student("2")], headers={"X-API-Key": "sk_wrong"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_api_key")
        assert admission.at_work == 0
