"""Versions, deletes and the order of events, on SQLite and PostgreSQL.

A record's version is its `Modified_Time`. Anything older than what is stored is `SKIPPED
stale_update`; a delete keeps its version (a tombstone, also for a record never stored), so no
late, older create or update brings a deleted record back. Whatever order a history arrives in,
with repeats, the stored state is the same (the convergence property at the end).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncengine.engine import SyncEngine
from syncengine.report import SyncReport
from tests.conftest import Databases
from tests.records import class_, program

T = "2026-02-{:02d}T10:00:00Z".format


def statuses(report: SyncReport) -> list[str]:
    return [result.status for result in report.results]


def result(report: SyncReport, index: int = 0) -> dict[str, Any]:
    return cast(dict[str, Any], report.to_builtins()["results"][index])


async def stored(engine: SyncEngine, entity: str, zoho_id: str, tenant: str = "school") -> dict[str, Any] | None:
    return await engine.fetch_record(tenant, entity, zoho_id)


def deleted(version: int) -> dict[str, Any]:
    return {"id": "1001", "$deleted": True, "Modified_Time": T(version)}


async def sync(engine: SyncEngine, *records: dict[str, Any]) -> list[str]:
    return statuses(await engine.sync("school", "programs", list(records)))


async def test_a_second_delete_keeps_its_version_so_an_older_update_cannot_restore(engine: SyncEngine) -> None:
    """NEW at 1, DELETED at 10, a second delete at 20, then an update at 15: still deleted."""
    assert await sync(engine, program(Modified_Time=T(1))) == ["NEW"]
    assert await sync(engine, deleted(10)) == ["DELETED"]
    assert await sync(engine, deleted(20)) == ["SKIPPED"]
    late = await engine.sync("school", "programs", [program(Status="Sent", Modified_Time=T(15))])
    assert result(late) == {
        "zoho_program_id": "1001",
        "status": "SKIPPED",
        "reason": "stale_update",
        "message": "Modified_Time 2026-02-15T10:00:00+00:00 is not later than the deletion's "
        "2026-02-20T10:00:00+00:00; the deletion is kept",
    }
    record = await stored(engine, "programs", "1001")
    assert record is not None and record["deleted_at"] is not None
    assert record["source_version"] == dt.datetime(2026, 2, 20, 10, tzinfo=dt.UTC)
    restored = await engine.sync("school", "programs", [program(Modified_Time=T(21))])
    assert result(restored)["message"] == "restored: it had been deleted"


async def test_a_delete_of_a_record_not_stored_yet_is_kept_as_a_tombstone(engine: SyncEngine) -> None:
    """A delete at 20 of a record never stored, then its create at 5: not created."""
    gone = await engine.sync("school", "programs", [deleted(20)])
    assert result(gone) == {
        "zoho_program_id": "1001",
        "status": "SKIPPED",
        "reason": "not_found",
        "message": "not stored for this tenant; nothing to delete; the deletion is kept, so that an older "
        "Modified_Time is skipped",
    }
    assert await sync(engine, program(Modified_Time=T(5))) == ["SKIPPED"]
    assert await sync(engine, program(Modified_Time=T(20))) == ["SKIPPED"]  # a delete wins a tie
    record = await stored(engine, "programs", "1001")
    assert record is not None and record["deleted_at"] is not None
    assert await sync(engine, program(Modified_Time=T(25))) == ["NEW"]


async def test_the_same_history_in_one_batch_ends_the_same(engine: SyncEngine) -> None:
    report = await engine.sync(
        "school",
        "programs",
        [
            deleted(20),
            program(Modified_Time=T(5)),
            program(Modified_Time=T(1)),
            deleted(10),
            program(Modified_Time=T(15)),
        ],
    )
    assert statuses(report) == ["SKIPPED"] * 5
    record = await stored(engine, "programs", "1001")
    assert record is not None and record["deleted_at"] is not None
    assert record["source_version"] == dt.datetime(2026, 2, 20, 10, tzinfo=dt.UTC)


async def test_a_delete_without_a_version_of_a_record_never_stored_leaves_nothing(engine: SyncEngine) -> None:
    assert await sync(engine, {"id": "1001", "$deleted": True}) == ["SKIPPED"]
    assert await stored(engine, "programs", "1001") is None
    assert await sync(engine, program(Modified_Time=T(1))) == ["NEW"]


async def test_records_without_a_version(engine: SyncEngine) -> None:
    """A record without a version is applied and keeps the stored version; it cannot restore a
    record deleted with a version, since nothing shows it is newer than the delete."""
    assert await sync(engine, program(Modified_Time=T(10))) == ["NEW"]
    patch = await engine.sync("school", "programs", [{"id": "1001", "Status": "Sent"}])
    assert result(patch)["changes"] == {"Status": ["Approved", "Sent"]}
    record = await stored(engine, "programs", "1001")
    assert record is not None and record["source_version"] == dt.datetime(2026, 2, 10, 10, tzinfo=dt.UTC)
    assert await sync(engine, {"id": "1001", "$deleted": True}) == ["DELETED"]  # a delete needs no version
    revival = await engine.sync("school", "programs", [{"id": "1001", "Status": "Draft", "Product_Name": "X"}])
    assert result(revival) == {
        "zoho_program_id": "1001",
        "status": "SKIPPED",
        "reason": "stale_update",
        "message": "it has no Modified_Time, and the record was deleted at Modified_Time "
        "2026-02-10T10:00:00+00:00: only a record with a later Modified_Time brings it back",
    }
    assert await sync(engine, program(Modified_Time=T(11))) == ["NEW"]


@pytest.mark.parametrize(
    ("version", "message"),
    [
        pytest.param(
            "9999-12-31T00:00:00Z",
            "9999-12-31T00:00:00+00:00 is more than 300 seconds ahead of this server's clock",
            id="year 9999",
        ),
        pytest.param(None, "is more than 300 seconds ahead of this server's clock", id="an hour ahead"),
    ],
)
async def test_a_version_far_ahead_of_the_clock_is_invalid(
    engine: SyncEngine, version: str | None, message: str
) -> None:
    ahead = version or (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    report = await engine.sync("school", "programs", [program("1001", Modified_Time=ahead), program("1002")])
    assert statuses(report) == ["INVALID", "NEW"]
    (error,) = result(report)["errors"]
    assert error["field"] == "Modified_Time"
    assert message in error["message"]
    assert error["message"].endswith("check the sender's clock (the limit is SYNCENGINE_MAX_VERSION_SKEW)")
    assert await stored(engine, "programs", "1001") is None
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)).isoformat()
    assert await sync(engine, program("1001", Modified_Time=soon)) == ["NEW"]  # within the skew


async def test_the_allowed_skew_is_configurable(databases: Databases, dialect: str, engine: SyncEngine) -> None:
    strict = SyncEngine(engine.catalog, engine.database, max_version_skew=5)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)).isoformat()
    report = await strict.sync("school", "programs", [program(Modified_Time=soon)])
    assert "is more than 5 seconds ahead" in result(report)["errors"][0]["message"]


# Rules between fields (entities.yaml: a class may not end before it starts)


async def test_a_broken_rule_makes_the_record_invalid_naming_the_field(engine: SyncEngine) -> None:
    assert await sync(engine, program()) == ["NEW"]
    report = await engine.sync(
        "school", "classes", [class_("4001", Start_Date="2026-03-01", End_Date="2026-02-01"), class_("4002")]
    )
    assert statuses(report) == ["INVALID", "NEW"]
    assert result(report)["errors"] == [
        {"field": "End_Date", "message": "is 2026-02-01, before Start_Date (2026-03-01); it may not be before it"}
    ]
    same_day = await engine.sync("school", "classes", [class_("4003", Start_Date="2026-03-01", End_Date="2026-03-01")])
    assert statuses(same_day) == ["NEW"]


async def test_a_rule_holds_on_the_record_as_merged_with_what_is_stored(engine: SyncEngine) -> None:
    """A patch of the start date alone is checked against the stored end date; nothing is written."""
    assert await sync(engine, program()) == ["NEW"]
    assert statuses(await engine.sync("school", "classes", [class_("4001")])) == ["NEW"]
    patch = await engine.sync("school", "classes", [{"id": "4001", "Start_Date": "2026-06-01"}])
    assert statuses(patch) == ["INVALID"]
    assert result(patch)["errors"][0]["field"] == "End_Date"
    record = await stored(engine, "classes", "4001")
    assert record is not None and record["values"]["Start_Date"] == dt.date(2026, 2, 16)
    cleared = await engine.sync("school", "classes", [{"id": "4001", "Start_Date": "2026-06-01", "End_Date": None}])
    assert statuses(cleared) == ["UPDATED"]  # with one side empty, the rule holds


# Convergence: any order of a history, with repeats, ends in the same state.

IDS = ("1001", "1002", "1003")
NAMES = ("Level 3", "Level 5", "Diploma")
PRICES = ("0", "4500", "12.5", "99.9999")  # each in the one spelling it reads back in
STATES = ("Draft", "Approved", "Sent")


@dataclass(frozen=True)
class Event:
    """One change of one record in Zoho: a whole record as the API returns it, or its deletion."""

    zoho_id: str
    version: int
    values: tuple[str, str, str] | None  # None: deleted

    def record(self) -> dict[str, Any]:
        modified = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=self.version)).isoformat()
        if self.values is None:
            return {"id": self.zoho_id, "$deleted": True, "Modified_Time": modified}
        name, price, status = self.values
        return {
            "id": self.zoho_id,
            "Product_Name": name,
            "Program_Price": price,
            "Status": status,
            "Modified_Time": modified,
        }


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Changes of a few records, each at a later Modified_Time than the one before."""
    values = st.none() | st.tuples(st.sampled_from(NAMES), st.sampled_from(PRICES), st.sampled_from(STATES))
    steps = draw(st.lists(st.tuples(st.sampled_from(IDS), values), min_size=1, max_size=12))
    return [Event(zoho_id, version, change) for version, (zoho_id, change) in enumerate(steps, start=1)]


def expected_state(history: list[Event]) -> dict[str, tuple[Any, ...]]:
    """What the last change of each record leaves: deleted or its values, and its version."""
    last = {event.zoho_id: event for event in history}
    return {
        zoho_id: ("deleted", event.version) if event.values is None else ("live", event.version, *event.values)
        for zoho_id, event in last.items()
    }


async def stored_state(engine: SyncEngine, tenant: str) -> dict[str, tuple[Any, ...]]:
    """Each stored record of the tenant as `expected_state` describes it; values only while live."""
    state: dict[str, tuple[Any, ...]] = {}
    for zoho_id in IDS:
        record = await engine.fetch_record(tenant, "programs", zoho_id)
        if record is None:
            continue
        version = round((record["source_version"] - dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).total_seconds() / 60)
        if record["deleted_at"] is not None:
            state[zoho_id] = ("deleted", version)
        else:
            values = record["values"]
            price = values["Program_Price"]
            state[zoho_id] = ("live", version, values["Product_Name"], str(price), values["Status"])
    return state


def deliveries(history: list[Event], seed: int) -> dict[str, list[list[Event]]]:
    """The history in order, shuffled, and shuffled with repeats, each cut into batches at random."""
    rng = random.Random(seed)
    shuffled = rng.sample(history, len(history))
    repeated = rng.sample(history * 2, 2 * len(history))

    def batches(events: list[Event]) -> list[list[Event]]:
        cuts = sorted(rng.sample(range(1, len(events)), rng.randint(0, len(events) - 1))) if len(events) > 1 else []
        return [events[start:end] for start, end in itertools.pairwise([0, *cuts, len(events)])]

    return {"in order": [[e] for e in history], "shuffled": batches(shuffled), "repeated": batches(repeated)}


async def test_any_order_of_a_history_ends_in_the_same_state(engine: SyncEngine) -> None:
    loop = asyncio.get_running_loop()
    tenants = itertools.count()

    async def deliver(batches: list[list[Event]]) -> dict[str, tuple[Any, ...]]:
        tenant = f"t{next(tenants)}"
        for batch in batches:
            await engine.sync(tenant, "programs", [event.record() for event in batch])
        return await stored_state(engine, tenant)

    @settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(history=histories(), seed=st.integers(0, 2**16))
    def check(history: list[Event], seed: int) -> None:
        expected = expected_state(history)
        for name, batches in deliveries(history, seed).items():
            state = asyncio.run_coroutine_threadsafe(deliver(batches), loop).result(timeout=60)
            assert state == expected, f"{name}: {[[(e.zoho_id, e.version, e.values) for e in b] for b in batches]}"

    await asyncio.wait_for(asyncio.to_thread(check), timeout=300)
