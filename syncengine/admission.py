"""Admission: how much work a process takes on at once, and how it is shared by tenants.

A request that reads or writes a tenant's data (a sync, a GET of a record) takes turns once its
API key is checked, and gives them back when it is answered: one turn, and one more for each
`TURN_BYTES` of body it announces (Content-Length; a body of unknown length counts as the
largest allowed), at most `tenant_active`. Turns weigh work, not requests: the CPU a request
costs the one event loop (decoding, validating, reporting) grows with its body, and a tenant's
dry runs of 5,000 records must not crowd out another tenant's single-record writes (bench/,
"Flood"). At most `active` turns are at work in a process, at most `tenant_active` of one
tenant; the defaults come from the database pool (its connections less two, kept for readiness
checks, key checks and the key purger), so that the requests at work, which take a turn each at
least, never run out of connections. A request that finds too few free turns waits, in a queue
of at most `waiting` requests, for up to `wait` seconds. Turns that come free go to the waiting
tenant that has the fewest at work, whose oldest request fits in them (first come, first served
within a tenant), so one tenant's flood cannot starve another: the other's request is next. A
request that fits in the free turns is admitted at once, ahead of larger ones of other tenants
that do not fit: small requests go first.

An API key that the process has not checked within the last second costs a database question.
Those checks take turns too, as one pseudo-tenant (`KEY_CHECKS`, a name no tenant can have), so a
flood of wrong keys waits or is refused (503 `server_busy`) among its own kind, and never takes
a tenant's turns; a key checked within the second is known without the database and goes
straight to its tenant's turn.

What is refused is answered at once, with `Retry-After`, and nothing of it is done:

- 429 `tenant_over_share`: the tenant has its share at work (`tenant_active`, or an even share
  of the process while other tenants wait) and its excess does not fit in the queue, or waited
  past `wait`;
- 503 `server_busy`: the process is full with other tenants' work.

When the queue is full, a tenant with less at work and waiting takes the place of the newest
waiting request of the tenant with the most, which is refused with 429.

    admission = Admission(active=13, tenant_active=9, waiting=52, wait=10.0)
    async with admission.turn("school", weight=4):   # a body of 1 MB
        ...                                   # raises ApiError(429 or 503) when refused
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from litestar import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine.config import Settings
from syncengine.edge import RequestBody
from syncengine.errors import ApiError
from syncengine.tenants import Tenant

#: Connections of the pool that no request at work takes (readiness, key checks, the purger).
SPARE_CONNECTIONS = 2
#: Where a pool has no size (SQLAlchemy's NullPool or StaticPool): requests at work at once.
UNPOOLED_ACTIVE = 10
#: Requests that may wait for each that may be at work: a waiting request holds no connection
#: and has not read its body yet, so waiting is cheap; refusing is for a real flood.
WAITING_PER_ACTIVE = 4
#: A request takes one more turn for each whole this many bytes of body: 2,000 Zoho records
#: (about 1 MB) take four, a single record one.
TURN_BYTES = 256 * 1024
#: The pseudo-tenant whose turns the checks of API keys that need the database take: not a
#: tenant name (tenants.TENANT_PATTERN refuses the spaces and brackets).
KEY_CHECKS = "(API key checks)"
RETRY_AFTER = "1"


class Admission:
    """Turns to work, per process and per tenant (see the module's docstring)."""

    def __init__(self, active: int, tenant_active: int, waiting: int, wait: float) -> None:
        self.active = active
        self.tenant_active = min(tenant_active, active)
        self.waiting = waiting
        self.wait = wait
        self._at_work: dict[str, int] = {}
        self._queues: dict[str, deque[tuple[int, int, asyncio.Future[None]]]] = {}
        self._queued = 0
        self._order = itertools.count()

    @classmethod
    def for_database(cls, settings: Settings, database: AsyncEngine) -> Admission:
        """The settings' limits; those not set are sized from the database's pool."""
        active = settings.max_active_requests or max(1, _pool_capacity(database) - SPARE_CONNECTIONS)
        tenant_active = settings.tenant_max_active_requests or max(1, active * 3 // 4)
        waiting = settings.max_waiting_requests or active * WAITING_PER_ACTIVE
        return cls(active, tenant_active, waiting, settings.admission_wait)

    @property
    def at_work(self) -> int:
        """Turns at work, of every tenant."""
        return sum(self._at_work.values())

    def weight(self, body_bytes: int | None, body_limit: int) -> int:
        """The turns of a request with a body of `body_bytes` (None: not known before it is read,
        counted as `body_limit`): one, and one per started `TURN_BYTES`, at most `tenant_active`.

            >>> Admission(13, 9, 52, 10.0).weight(1_041_510, 10 * 2**20)
            4
        """
        size = body_limit if body_bytes is None else body_bytes
        return min(self.tenant_active, 1 + size // TURN_BYTES)

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str, weight: int = 1) -> AsyncIterator[None]:
        """Work as `tenant` with `weight` turns, once they are free; raises ApiError (429, 503) if refused."""
        weight = max(1, min(weight, self.tenant_active))
        await self._take(tenant, weight)
        try:
            yield
        finally:
            self._give_back(tenant, weight)

    def _fits(self, tenant: str, weight: int) -> bool:
        return self.at_work + weight <= self.active and self._at_work.get(tenant, 0) + weight <= self.tenant_active

    async def _take(self, tenant: str, weight: int) -> None:
        if self._fits(tenant, weight) and not self._queues.get(tenant):  # no waiting request fits (`_hand_out`)
            self._at_work[tenant] = self._at_work.get(tenant, 0) + weight
            return
        if self._queued >= self.waiting and not self._make_room(tenant):
            raise self._refusal(tenant, "the queue of waiting requests is full")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append((next(self._order), weight, turn))
        self._queued += 1
        self._hand_out()
        try:
            await asyncio.wait_for(asyncio.shield(turn), self.wait)
        except ApiError:  # another tenant took its place in the queue
            raise
        except BaseException as error:  # the wait ended, or the caller left
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._give_back(tenant, weight)  # the turn came just as the wait ended
            else:
                turn.cancel()
                self._forget(tenant, turn)
            if isinstance(error, TimeoutError):
                raise self._refusal(tenant, f"no turn came free within {self.wait:g} s") from None
            raise

    def _give_back(self, tenant: str, weight: int) -> None:
        self._at_work[tenant] -= weight
        if not self._at_work[tenant]:
            del self._at_work[tenant]
        self._hand_out()

    def _hand_out(self) -> None:
        """Free turns to the waiting tenants with the fewest at work, oldest request first; a
        tenant whose oldest request does not fit in the free turns lets the others go first."""
        while self._queued and self.at_work < self.active:
            eligible = [
                (self._at_work.get(name, 0), queue[0][0], name)
                for name, queue in self._queues.items()
                if queue and self._fits(name, queue[0][1])
            ]
            if not eligible:
                return
            _, _, name = min(eligible)
            _, weight, turn = self._queues[name].popleft()
            self._queued -= 1
            if not self._queues[name]:
                del self._queues[name]
            if turn.done():  # its caller left
                continue
            self._at_work[name] = self._at_work.get(name, 0) + weight
            turn.set_result(None)

    def _make_room(self, tenant: str) -> bool:
        """With the queue full: refuse the newest waiting request of the tenant with the most at work
        and waiting, if that is more than `tenant` has plus this request; whether room was made."""
        load = {name: self._load(name) for name, queue in self._queues.items() if queue}
        heaviest = max(load, key=lambda name: load[name], default=None)
        if heaviest is None or heaviest == tenant:
            return False
        if load[heaviest] <= self._load(tenant) + 1:
            return False
        _, _, turn = self._queues[heaviest].pop()
        self._queued -= 1
        if not self._queues[heaviest]:
            del self._queues[heaviest]
        turn.set_exception(self._refusal(heaviest, "a tenant with less at work took its place in the queue"))
        return True

    def _load(self, tenant: str) -> int:
        """Turns at work and waiting of `tenant`."""
        return self._at_work.get(tenant, 0) + sum(weight for _, weight, _ in self._queues.get(tenant, ()))

    def _forget(self, tenant: str, turn: asyncio.Future[None]) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            return
        for entry in queue:
            if entry[2] is turn:
                queue.remove(entry)
                self._queued -= 1
                break
        if not queue:
            del self._queues[tenant]

    def _share(self) -> int:
        """An even share of the process among the tenants at work or waiting (at most `tenant_active`)."""
        tenants = len(set(self._at_work) | {name for name, queue in self._queues.items() if queue})
        return min(self.tenant_active, max(1, self.active // max(1, tenants)))

    def _refusal(self, tenant: str, why: str) -> ApiError:
        mine = self._at_work.get(tenant, 0)
        headers = {"Retry-After": RETRY_AFTER}
        if tenant == KEY_CHECKS:
            return ApiError(
                503,
                "server_busy",
                f"this server is checking {mine} API keys with the database, its limit, and {why}; "
                "nothing of this request was done: send it again after Retry-After seconds",
                headers,
            )
        if mine >= self._share() or self._queues.get(tenant):  # its own requests fill its share, or wait
            return ApiError(
                429,
                "tenant_over_share",
                f"tenant '{tenant}' has {mine} turns at work, its share of this server "
                f"(at most {self.tenant_active}, SYNCENGINE_TENANT_MAX_ACTIVE_REQUESTS; a request takes "
                f"one turn, and one more per {TURN_BYTES // 1024} KiB of body), and {why}; "
                "nothing of this request was done: send it again after Retry-After seconds, "
                "or send fewer or smaller requests at once",
                headers,
            )
        return ApiError(
            503,
            "server_busy",
            f"this server has {self.at_work} turns at work, its limit (SYNCENGINE_MAX_ACTIVE_REQUESTS), "
            f"and {why}; nothing of this request was done: send it again after Retry-After seconds",
            headers,
        )


def admitted(
    authenticate: Callable[[Request[Any, Any, Any]], Awaitable[Tenant]],
    known_without_database: Callable[[Request[Any, Any, Any]], bool],
) -> Callable[[Request[Any, Any, Any]], AsyncGenerator[Tenant, None]]:
    """A litestar dependency: the tenant `authenticate` finds, once its request has its turns,
    which it keeps until the request is answered. Where the key is not `known_without_database`,
    its check takes a turn of `KEY_CHECKS` first."""

    async def admitted_tenant(request: Request[Any, Any, Any]) -> AsyncGenerator[Tenant, None]:
        admission = admission_of(request)
        if known_without_database(request):
            tenant = await authenticate(request)
        else:
            async with admission.turn(KEY_CHECKS):
                tenant = await authenticate(request)
        body: RequestBody | None = request.scope["state"].get("body")
        weight = 1 if body is None else admission.weight(body.announced, body.limit)
        async with admission.turn(tenant.name, weight):
            yield tenant

    return admitted_tenant


def admission_of(request: Request[Any, Any, Any]) -> Admission:
    """The app's Admission, made on first use from its service's settings and database."""
    state = request.app.state
    admission: Admission | None = state.get("admission")
    if admission is None:
        service = state.service
        admission = state["admission"] = Admission.for_database(service.settings, service.engine.database)
    return admission


def _pool_capacity(database: AsyncEngine) -> int:
    """Connections the pool lends at most: its size plus its overflow."""
    pool = database.pool
    size = getattr(pool, "size", None)
    if not callable(size):
        return UNPOOLED_ACTIVE + SPARE_CONNECTIONS
    overflow = getattr(pool, "_max_overflow", 0)
    return int(size()) + max(0, int(overflow))
