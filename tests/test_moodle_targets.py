"""syncengine.targets against the Moodle fake: what Moodle ends up holding, and in how many calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, cast

import pytest

from syncengine.moodle import MoodleClient
from syncengine.targets import CATEGORY, COURSE, USER, Outcome, create, deliver, enrol, set_state, update
from tests.moodle_fake import MoodleFake, running

BUDGET = 1000


@pytest.fixture
def moodle() -> Iterator[MoodleFake]:
    with running() as fake:
        yield fake


@pytest.fixture
async def client(moodle: MoodleFake) -> AsyncIterator[MoodleClient]:
    async with MoodleClient(moodle.url, moodle.token, timeout=2.0) as client:
        yield client


def student(i: int, **fields: Any) -> dict[str, Any]:
    """Six parameters, createpassword before idnumber: a cut after five loses only the idnumber."""
    return {
        "username": f"s{i}",
        "firstname": "Ana",
        "lastname": f"Lee{i}",
        "email": f"s{i}@school.test",
        "createpassword": 1,
        "idnumber": f"Z{i}",
        **fields,
    }


def students(n: int) -> dict[str, dict[str, Any]]:
    return {f"k{i}": student(i) for i in range(n)}


def held(moodle: MoodleFake) -> list[tuple[str, str]]:
    return sorted((u["username"], u["idnumber"]) for u in moodle.users.values() if u["id"] != 2)


def ids(outcomes: dict[str, Outcome]) -> dict[str, int | None]:
    return {key: outcome.moodle_id for key, outcome in outcomes.items()}


async def test_users_are_created_in_one_call_and_a_second_delivery_creates_nothing(
    client: MoodleClient, moodle: MoodleFake
) -> None:
    first = await deliver(client, USER, BUDGET, students(3))
    assert ids(first) == {"k0": 3, "k1": 4, "k2": 5}
    assert len(moodle.called("core_user_create_users")) == 1
    again = await deliver(client, USER, BUDGET, {**students(3), "k1": student(1, lastname="Renamed")})
    assert ids(again) == {"k0": 3, "k1": 4, "k2": 5}
    assert len(moodle.called("core_user_create_users")) == 1
    assert held(moodle) == [("s0", "Z0"), ("s1", "Z1"), ("s2", "Z2")]
    assert moodle.users[4]["lastname"] == "Renamed"


async def test_creates_stay_within_the_budget(client: MoodleClient, moodle: MoodleFake) -> None:
    await create(client, USER, 3 + 2 * 6, students(5))  # two users of six parameters a call
    assert [len(c.params["users"]) for c in moodle.called("core_user_create_users")] == [2, 2, 1]
    assert max(c.variables for c in moodle.calls) <= 15


async def test_a_cut_post_is_detected_and_the_missing_ones_sent_again() -> None:
    with running(max_input_vars=3 + 6 * 2 + 5) as moodle:  # two users, and the third without its idnumber
        async with MoodleClient(moodle.url, moodle.token) as client:
            outcomes = await create(client, USER, BUDGET, students(5))
    assert sorted(cast("Iterable[int]", ids(outcomes).values())) == [3, 4, 5, 6, 7]
    assert [o.error for o in outcomes.values()] == [None] * 5
    assert [len(c.params["users"]) for c in moodle.called("core_user_create_users")] == [3, 2]  # cut, then the rest
    assert held(moodle) == [("s0", "Z0"), ("s1", "Z1"), ("s2", "Z2"), ("s3", "Z3"), ("s4", "Z4")]


async def test_a_record_alone_past_the_site_limit_is_a_permanent_error() -> None:
    with running(max_input_vars=3 + 3) as moodle:
        async with MoodleClient(moodle.url, moodle.token) as client:
            outcome = (await create(client, USER, BUDGET, students(1)))["k0"]
    assert outcome.error is not None and (outcome.error.errorcode, outcome.error.transient) == (
        "invalidparameter",
        False,
    )
    assert held(moodle) == []


async def test_a_failing_batch_is_split_to_isolate_the_bad_record(client: MoodleClient, moodle: MoodleFake) -> None:
    desired = {**students(4), "k2": student(2, email="not-an-email")}
    outcomes = await create(client, USER, BUDGET, desired)
    error = outcomes["k2"].error
    assert error is not None and (error.errorcode, error.message, error.transient) == (
        "invalidparameter",
        "Invalid parameter value detected",
        False,
    )
    assert [outcomes[k].moodle_id is not None for k in ("k0", "k1", "k3")] == [True, True, True]
    assert held(moodle) == [("s0", "Z0"), ("s1", "Z1"), ("s3", "Z3")]


async def test_users_found_by_idnumber_are_not_looked_up_by_username_or_email(
    client: MoodleClient, moodle: MoodleFake
) -> None:
    await deliver(client, USER, BUDGET, students(3))
    looked_up = len(moodle.called("core_user_get_users_by_field"))
    again = await deliver(client, USER, BUDGET, {**students(3), "k3": student(3)})
    calls = moodle.called("core_user_get_users_by_field")[looked_up:]
    # one call a field: idnumber for all, then username and email (at once) for those it did not find
    assert calls[0].params == {"field": "idnumber", "values": {str(i): f"Z{i}" for i in range(4)}}
    assert sorted((c.params["field"], c.params["values"]) for c in calls[1:]) == [
        ("email", {"0": "s3@school.test"}),
        ("username", {"0": "s3"}),
    ]
    assert ids(again) == {"k0": 3, "k1": 4, "k2": 5, "k3": 6}


async def test_an_existing_user_whose_email_differs_in_case_is_linked(client: MoodleClient, moodle: MoodleFake) -> None:
    existing = moodle.add_user(username="ana.old", email="S0@School.TEST")
    outcomes = await deliver(client, USER, BUDGET, students(2))
    assert ids(outcomes) == {"k0": existing, "k1": 4}
    assert held(moodle) == [("s0", "Z0"), ("s1", "Z1")]
    assert moodle.called("core_user_get_users")[0].params == {
        "criteria": {"0": {"key": "email", "value": "s0@school.test"}}
    }


async def test_an_existing_user_with_the_same_email_is_linked_not_duplicated(
    client: MoodleClient, moodle: MoodleFake
) -> None:
    existing = moodle.add_user(username="ana.old", email="s0@school.test")
    outcomes = await deliver(client, USER, BUDGET, students(1))
    assert ids(outcomes) == {"k0": existing}
    assert held(moodle) == [("s0", "Z0")]  # linked, then brought to the desired state


async def test_an_already_exists_answer_triggers_a_look_up(client: MoodleClient, moodle: MoodleFake) -> None:
    existing = moodle.add_user(username="s0", email="elsewhere@school.test")
    outcomes = await create(client, USER, BUDGET, students(2))
    assert (outcomes["k0"], outcomes["k1"].created) == (Outcome(existing), True)
    assert len(held(moodle)) == 2


async def test_a_transient_failure_marks_the_batch_without_splitting(client: MoodleClient, moodle: MoodleFake) -> None:
    moodle.fail("status", status=503)
    outcomes = await create(client, USER, BUDGET, students(4))
    assert {(o.error.errorcode, o.error.transient) for o in outcomes.values() if o.error} == {("http503", True)}
    assert len(moodle.calls) == 1 and held(moodle) == []


async def test_categories_and_courses_are_found_by_idnumber(client: MoodleClient, moodle: MoodleFake) -> None:
    programs = {"p1": {"name": "BTEC IT", "idnumber": "P1"}, "p2": {"name": "BTEC Art", "idnumber": "P2"}}
    categories = ids(await deliver(client, CATEGORY, BUDGET, programs))
    assert ids(await deliver(client, CATEGORY, BUDGET, programs)) == categories
    classes = {
        f"c{i}": {"fullname": f"Class {i}", "shortname": f"C{i}", "categoryid": categories["p1"], "idnumber": f"CL{i}"}
        for i in range(3)
    }
    courses = ids(await deliver(client, COURSE, BUDGET, classes))
    assert ids(await deliver(client, COURSE, BUDGET, classes)) == courses
    assert sorted(c["idnumber"] for c in moodle.courses.values()) == ["", "CL0", "CL1", "CL2"]
    assert sorted(c["idnumber"] for c in moodle.categories.values()) == ["", "P1", "P2"]
    assert len(moodle.called("core_course_create_courses")) == 1


async def test_a_course_moved_to_another_category_is_linked(client: MoodleClient, moodle: MoodleFake) -> None:
    categories = ids(await deliver(client, CATEGORY, BUDGET, {"a": {"name": "A"}, "b": {"name": "B"}}))
    course = {"fullname": "Maths", "shortname": "M1", "idnumber": "CL1"}
    first = await deliver(client, COURSE, BUDGET, {"c": {**course, "categoryid": categories["a"]}})
    moved = await deliver(client, COURSE, BUDGET, {"c": {**course, "categoryid": categories["b"]}})
    assert ids(moved) == ids(first)
    assert [c["categoryid"] for c in moodle.courses.values() if c["id"] != 1] == [categories["b"]]


async def test_users_are_suspended_and_reactivated_courses_hidden(client: MoodleClient, moodle: MoodleFake) -> None:
    users = {k: o.moodle_id for k, o in (await deliver(client, USER, BUDGET, students(2))).items() if o.moodle_id}
    await set_state(client, USER, BUDGET, users, "suspend")
    assert [u["suspended"] for u in moodle.users.values() if u["id"] != 2] == [True, True]
    await set_state(client, USER, BUDGET, {"k0": users["k0"]}, "reactivate")
    assert [u["suspended"] for u in moodle.users.values() if u["id"] != 2] == [False, True]
    course = await deliver(client, COURSE, BUDGET, {"c": {"fullname": "M", "shortname": "M", "categoryid": 1}})
    await set_state(client, COURSE, BUDGET, {"c": course["c"].moodle_id or 0}, "hide")
    assert moodle.courses[2]["visible"] == 0


async def test_update_warnings_become_errors_of_their_item(client: MoodleClient, moodle: MoodleFake) -> None:
    outcomes = await update(client, USER, BUDGET, {"gone": (99, {"lastname": "X"}), "admin": (2, {"lastname": "Y"})})
    error = outcomes["gone"].error
    assert error is not None and (error.errorcode, error.message) == ("invaliduserid", "Invalid user ID")
    assert outcomes["admin"] == Outcome(2) and moodle.users[2]["lastname"] == "Y"


async def test_enrolments_carry_their_full_state_and_are_idempotent(client: MoodleClient, moodle: MoodleFake) -> None:
    users = ids(await deliver(client, USER, BUDGET, students(2)))
    course = ids(await deliver(client, COURSE, BUDGET, {"c": {"fullname": "M", "shortname": "M", "categoryid": 1}}))[
        "c"
    ]
    desired = {
        f"e{k}": {"roleid": 5, "userid": u, "courseid": course, "timestart": 1735689600} for k, u in users.items()
    }
    desired["bad"] = {"roleid": 5, "userid": 3, "courseid": 999}
    outcomes = await enrol(client, BUDGET, desired)
    assert outcomes["bad"].error is not None and outcomes["bad"].error.errorcode == "invalidparameter"
    assert outcomes["ek0"] == outcomes["ek1"] == Outcome()
    await enrol(client, BUDGET, {"ek1": {**desired["ek1"], "suspend": 1}})
    await enrol(client, BUDGET, {"ek1": {**desired["ek1"], "suspend": 1}})
    assert moodle.enrolments == {
        (course, 3): {"roles": {5}, "timestart": 1735689600, "timeend": 0, "suspended": False},
        (course, 4): {"roles": {5}, "timestart": 1735689600, "timeend": 0, "suspended": True},
    }
    active = await client.call(
        "core_enrol_get_enrolled_users", {"courseid": course, "options": [{"name": "onlyactive", "value": 1}]}
    )
    assert [u["id"] for u in active] == [3]
