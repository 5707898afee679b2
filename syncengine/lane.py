"""The lane: group commit, so that concurrent calls for one tenant's entity share transactions.

Calls of a (tenant, entity) form a lane: a call that finds its lane free starts at once;
otherwise it waits, and the calls waiting (up to `GROUP_RECORDS` records) run together as the
lane's next batch: one fetch, resolve and write, and one COMMIT, for what would have been many.
The next batch starts as soon as the one before has fetched its rows, and up to `depth` batches
are in flight (two, for batches under `LARGE_BATCH` records). A batch never starts while a batch
in flight touches any of its records: it waits for that one to end, and so do the calls behind
it. Calls are applied in the order they arrived, each getting the results of its own records,
exactly as if the calls had run one after another. No call waits for a timer. Should a shared
transaction fail, each of its calls is run again on its own, so one call's failure is never
another's (those retries may land after the batch that followed).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from syncengine.idempotency import Answer
from syncengine.parsing import Incoming
from syncengine.report import SyncReport

#: The most records of waiting calls that are joined into one batch (a larger call runs alone).
GROUP_RECORDS = 1000
#: Records of a batch that may run beside two others of its lane (see `Lane.may_start`).
LARGE_BATCH = GROUP_RECORDS // 2


class Runner(Protocol):
    """What runs a lane's batch: one transaction over `batches`, in order, one report each;
    `on_fetched` is called once their rows are fetched (the engine's `_transaction`)."""

    def __call__(
        self,
        batches: list[list[Incoming]],
        ids: set[str],
        *,
        on_fetched: Callable[[], None] | None = None,
        answers: Sequence[Answer | None] = (),
    ) -> Awaitable[list[SyncReport]]: ...


@dataclass(slots=True)
class Call:
    """A call waiting for its turn in its lane."""

    records: list[Incoming]
    ids: set[str]
    report: asyncio.Future[SyncReport]
    answer: Answer | None = None


@dataclass(slots=True)
class Lane:
    """The batches of one (tenant, entity) in flight, and the calls waiting to run."""

    run: Runner
    #: How many batches may be in flight at once (the engine's `lane_depth`).
    depth: int
    #: The ids of each batch in flight, by the token `start` gave it.
    busy: dict[object, set[str]] = field(default_factory=dict)
    #: The batch started last, until it has fetched its rows: the next may not start before.
    opening: object | None = None
    waiting: deque[Call] = field(default_factory=deque)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def may_start(self, records: int) -> bool:
        """Whether a batch of `records` may start now. Beyond two in flight, only a large one:
        small calls gain more by waiting to be joined (one COMMIT for many) than by running at
        once (single-record webhooks on PostgreSQL were slower with four in flight)."""
        if self.opening is not None or len(self.busy) >= self.depth:
            return False
        return len(self.busy) < 2 or records >= LARGE_BATCH

    def overlaps(self, ids: set[str]) -> bool:
        """Whether a batch in flight touches any of `ids`."""
        return any(not ids.isdisjoint(held) for held in self.busy.values())

    def start(self, ids: set[str]) -> object:
        self.opening = token = object()
        self.busy[token] = ids
        return token

    def finish(self, token: object) -> None:
        """A batch ended: the calls waiting may run."""
        del self.busy[token]
        if self.opening is token:
            self.opening = None
        self.start_waiting()

    async def wait(self, records: list[Incoming], answer: Answer | None) -> SyncReport:
        """Queue parsed records as a call of the lane's; they are synced when the lane gets to them."""
        call = Call(records, _ids(records), asyncio.get_running_loop().create_future(), answer)
        self.waiting.append(call)
        return await call.report

    def opener(self, token: object) -> Callable[[], None]:
        """What a batch calls once it has fetched its rows: the lane may start its next batch."""

        def fetched() -> None:
            if self.opening is token:
                self.opening = None
                self.start_waiting()

        return fetched

    def start_waiting(self) -> None:
        """Run the calls that waited, in arrival order, as the lane's next batch. A call touching
        a record of a batch in flight waits for that batch to end, and the calls behind it too."""
        while self.waiting and self.opening is None:
            group: list[Call] = []
            ids: set[str] = set()
            size = taken = 0
            for call in self.waiting:
                if not call.report.done():  # a caller that gave up is not synced
                    if (group and size + len(call.records) > GROUP_RECORDS) or self.overlaps(call.ids):
                        break
                    group.append(call)
                    ids |= call.ids
                    size += len(call.records)
                taken += 1
            if group and not self.may_start(size):
                return
            for _ in range(taken):
                self.waiting.popleft()
            if group:
                token = self.start(ids)
                self.tasks.add(task := asyncio.create_task(self._run_group(token, group)))
                task.add_done_callback(self.tasks.discard)
            elif taken == 0:
                return

    async def _run_group(self, token: object, group: list[Call]) -> None:
        try:
            try:
                batches = [call.records for call in group]
                answers = [call.answer for call in group]
                reports = await self.run(batches, self.busy[token], on_fetched=self.opener(token), answers=answers)
            except Exception as error:
                if len(group) == 1:
                    settle(group[0], error=error)
                    return
                for call in group:  # on their own, so that one call's failure is not another's
                    try:
                        (report,) = await self.run([call.records], call.ids, answers=[call.answer])
                    except Exception as alone:
                        settle(call, error=alone)
                    else:
                        settle(call, report)
            else:
                for call, report in zip(group, reports, strict=True):
                    settle(call, report)
        except BaseException:
            for call in group:
                settle(call, error=RuntimeError("the service stopped before this batch was synced; send it again"))
            raise
        finally:
            self.finish(token)


def settle(call: Call, report: SyncReport | None = None, *, error: BaseException | None = None) -> None:
    if call.report.done():  # the caller gave up waiting
        return
    if error is not None:
        call.report.set_exception(error)
    elif report is not None:
        call.report.set_result(report)


def _ids(records: Sequence[Incoming]) -> set[str]:
    return {record.zoho_id for record in records if record.zoho_id is not None}
