"""Admission: a process works on a bounded number of requests, shares them fairly among tenants,
and refuses the excess at once with 429 or 503 and Retry-After (item 13 of issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from litestar import Request

from syncengine.admission import Admission, admission_of
from syncengine.config import Settings
from syncengine.engine import SyncEngine
from syncengine.errors import ApiError
from tests.records import student
from tests.service import running_api


@contextlib.asynccontextmanager
async def holding(admission: Admission, *tenants: str) -> AsyncIterator[None]:
    """Hold one turn for each of `tenants` until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        for tenant in tenants:
            await stack.enter_async_context(admission.turn(tenant))
        yield


async def refused(admission: Admission, tenant: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        async with admission.turn(tenant):
            pass
    return caught.value


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("held", "tenant", "status", "error"),
    [
        # The tenant has its share at work and the queue is full: its excess is 429.
        (("a", "a"), "a", 429, "tenant_over_share"),
        # The process is full with other tenants' work: 503.
        (("a", "b", "c"), "d", 503, "server_busy"),
    ],
)
async def test_the_excess_is_refused_at_once_with_retry_after(
    held: tuple[str, ...], tenant: str, status: int, error: str
) -> None:
    admission = Admission(active=3, tenant_active=2, waiting=0, wait=5.0)
    async with holding(admission, *held):
        refusal = await refused(admission, tenant)
    assert (refusal.status_code, refusal.error, refusal.headers) == (status, error, {"Retry-After": "1"})
    assert admission.at_work == 0


async def test_a_freed_turn_goes_to_the_tenant_with_the_fewest_at_work() -> None:
    admission = Admission(active=2, tenant_active=2, waiting=10, wait=5.0)
    order: list[str] = []

    async def request(tenant: str) -> None:
        async with admission.turn(tenant):
            order.append(tenant)

    async with holding(admission, "flood", "flood"):
        flood = [asyncio.create_task(request("flood")) for _ in range(3)]
        await settle()
        other = asyncio.create_task(request("other"))  # arrives after three of the flood's
        await settle()
        assert order == []
    await asyncio.gather(*flood, other)
    assert order[0] == "other"


async def test_a_tenant_at_its_share_waits_while_another_is_admitted_at_once() -> None:
    admission = Admission(active=3, tenant_active=2, waiting=10, wait=5.0)
    async with holding(admission, "flood", "flood"):
        waiting = asyncio.create_task(admission.turn("flood").__aenter__())
        await settle()
        assert not waiting.done()  # the flood's third waits: it has its share at work
        async with admission.turn("other"):  # the other tenant's is admitted at once
            assert admission.at_work == 3
        waiting.cancel()  # a caller that leaves gives up its place
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert admission.at_work == 0


async def test_a_full_queue_makes_room_for_a_tenant_with_less() -> None:
    admission = Admission(active=1, tenant_active=1, waiting=2, wait=5.0)
    async with holding(admission, "flood"):
        first = asyncio.create_task(admission.turn("flood").__aenter__())
        newest = asyncio.create_task(refused(admission, "flood"))
        await settle()
        other = asyncio.create_task(admission.turn("other").__aenter__())
        await settle()
        refusal = await newest  # the flood's newest waiting request gave its place to "other"
        assert (refusal.status_code, refusal.error) == (429, "tenant_over_share")
        assert "a tenant with less at work took its place in the queue" in refusal.message
        assert not first.done() and not other.done()
    await first  # both have none at work now: the older request is next
    assert not other.done()
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other


async def test_a_wait_past_its_bound_is_refused() -> None:
    admission = Admission(active=1, tenant_active=1, waiting=5, wait=0.05)
    async with holding(admission, "a"):
        refusal = await refused(admission, "b")
    assert (refusal.status_code, refusal.error) == (503, "server_busy")
    assert refusal.message == (
        "this server has 1 turns at work, its limit (SYNCENGINE_MAX_ACTIVE_REQUESTS), and no turn "
        "came free within 0.05 s; nothing of this request was done: send it again after Retry-After seconds"
    )
    assert admission.at_work == 0


def test_the_limits_are_sized_from_the_pool_unless_set(engine: SyncEngine) -> None:
    sized = Admission.for_database(Settings(), engine.database)
    # A pool of 5 + 10 overflow.
    assert (sized.active, sized.tenant_active, sized.waiting, sized.wait) == (13, 9, 52, 10.0)
    given = Settings(max_active_requests=4, tenant_max_active_requests=2, max_waiting_requests=1, admission_wait=0.5)
    admission = Admission.for_database(given, engine.database)
    assert (admission.active, admission.tenant_active, admission.waiting, admission.wait) == (4, 2, 1, 0.5)


async def test_http_requests_over_the_limits_get_429_and_503(engine: SyncEngine) -> None:
    limits = {"max_active_requests": 2, "tenant_max_active_requests": 1, "max_waiting_requests": 1}
    async with running_api(engine, **limits) as api:
        assert (await api.sync("students", [student("1")])).status_code == 200
        admission = admission_of_app(api.app)
        assert admission.at_work == 0  # the turn is given back once answered
        assert (await api.sync("students", "{bad")).status_code == 400
        assert admission.at_work == 0  # also after an error
        async with holding(admission, "school"):
            waiting = asyncio.create_task(api.sync("students", [student("2")]))  # queued: school is at its share
            await settle()
            over = await api.sync("students", [student("3")])
            assert over.status_code == 429, over.text
            assert over.headers["retry-after"] == "1"
            assert over.json()["error"] == "tenant_over_share"
            read = await api.http.get("/v1/students/1", headers=api.auth())
            assert read.status_code == 429  # reads take a turn too
        assert (await waiting).status_code == 200  # its turn came when school's was given back
        admission.wait = 0.05
        async with holding(admission, "a", "b"):
            busy = await api.sync("students", [student("4")], tenant="other")
            assert (busy.status_code, busy.json()["error"]) == (503, "server_busy")
            assert busy.headers["retry-after"] == "1"
        assert (await api.http.get("/v1/health")).status_code == 200  # no turn needed
        assert admission.at_work == 0


def admission_of_app(app: object) -> Admission:
    """The app's Admission (made by the first request that took a turn)."""
    request = type("R", (), {"app": app})()
    return admission_of(cast("Request[Any, Any, Any]", request))
