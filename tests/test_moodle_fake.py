"""The Moodle fake answers as a real Moodle 4.5 site did (../shared/reference/moodle-ws.md, section 0b).

Raw form POSTs over a real socket, so these pin the wire answers the client and targets rely on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.moodle_fake import MoodleFake, running

INVALID = {
    "exception": "invalid_parameter_exception",
    "errorcode": "invalidparameter",
    "message": "Invalid parameter value detected",
}


@pytest.fixture
def moodle() -> Iterator[MoodleFake]:
    with running() as fake:
        yield fake


def post(moodle: MoodleFake, function: str, token: str | None = None, **params: Any) -> httpx.Response:
    data = {"wstoken": token or moodle.token, "wsfunction": function, "moodlewsrestformat": "json", **params}
    return httpx.post(f"{moodle.url}/webservice/rest/server.php", data=data, timeout=10)


def user(i: int, username: str | None = None, email: str | None = None, idnumber: str = "") -> dict[str, str]:
    fields = {
        "username": username or f"s{i}",
        "firstname": "Ana",
        "lastname": "Lee",
        "email": email or f"s{i}@school.test",
        "createpassword": "1",
    }
    if idnumber:
        fields["idnumber"] = idnumber
    return {f"users[{i}][{k}]": v for k, v in fields.items()}


def test_nested_form_parameters_create_users_in_order(moodle: MoodleFake) -> None:
    answer = post(moodle, "core_user_create_users", **user(0), **user(1))
    assert (answer.status_code, answer.json()) == (200, [{"id": 3, "username": "s0"}, {"id": 4, "username": "s1"}])
    assert moodle.users[4]["email"] == "s1@school.test"


def test_a_bad_token_is_invalidtoken_with_200(moodle: MoodleFake) -> None:
    answer = post(moodle, "core_webservice_get_site_info", token="wrong")
    assert (answer.status_code, answer.json()) == (
        200,
        {"exception": "moodle_exception", "errorcode": "invalidtoken", "message": "Invalid token - token not found"},
    )


def test_a_function_missing_from_the_service_is_accessexception() -> None:
    with running(functions={"core_webservice_get_site_info"}) as moodle:
        answer = post(moodle, "core_user_create_users", **user(0))
        assert answer.json() == {
            "exception": "webservice_access_exception",
            "errorcode": "accessexception",
            "message": "Access control exception",
        }
        info = post(moodle, "core_webservice_get_site_info").json()
        assert (info["release"], info["functions"]) == (
            "4.5.11+ (Build: 20260501)",
            [{"name": "core_webservice_get_site_info", "version": "2024100711.00"}],
        )
        assert moodle.users.keys() == {2}


def test_null_bodies_for_enrolments(moodle: MoodleFake) -> None:
    post(moodle, "core_user_create_users", **user(0))
    post(
        moodle,
        "core_course_create_courses",
        **{"courses[0][fullname]": "Maths", "courses[0][shortname]": "M1", "courses[0][categoryid]": "1"},
    )
    answer = post(
        moodle,
        "enrol_manual_enrol_users",
        **{"enrolments[0][roleid]": "5", "enrolments[0][userid]": "3", "enrolments[0][courseid]": "2"},
    )
    assert (answer.status_code, answer.text) == (200, "null")
    assert moodle.enrolments == {(2, 3): {"roles": {5}, "timestart": 0, "timeend": 0, "suspended": False}}


@pytest.mark.parametrize(
    "clash",
    [
        pytest.param(user(1, username="s0"), id="taken-username"),
        pytest.param(user(1, email="S0@school.test"), id="taken-email-any-case"),
        pytest.param(user(1, username="Upper"), id="upper-case-username"),
    ],
)
def test_user_clashes_are_the_same_bare_invalidparameter_and_roll_back_the_batch(
    moodle: MoodleFake, clash: dict[str, str]
) -> None:
    post(moodle, "core_user_create_users", **user(0))
    answer = post(moodle, "core_user_create_users", **user(2, email="new@school.test"), **clash)
    assert (answer.status_code, answer.json()) == (200, INVALID)
    assert [u["username"] for u in moodle.users.values()] == ["admin", "s0"]  # s2 was not kept either


def test_a_username_twice_in_one_batch_creates_neither(moodle: MoodleFake) -> None:
    answer = post(moodle, "core_user_create_users", **user(0), **user(1, username="s0"))
    assert answer.json() == INVALID
    assert moodle.users.keys() == {2}


def test_debuginfo_only_with_debugging_on() -> None:
    with running(debug=True) as moodle:
        post(moodle, "core_user_create_users", **user(0))
        answer = post(moodle, "core_user_create_users", **user(1, username="s0"))
        assert answer.json() == {**INVALID, "debuginfo": "Username already exists: s0"}


def test_emails_are_found_exactly_by_field_and_in_any_case_by_get_users(moodle: MoodleFake) -> None:
    """get_users_by_field compares exactly (PostgreSQL), get_users' email is a case-insensitive LIKE,
    while a create refuses an email taken in any case (user/externallib.php)."""
    post(
        moodle, "core_user_create_users", **user(0, email="Ana.Lee@School.test"), **user(1, email="anaxlee@school.test")
    )
    exact = post(moodle, "core_user_get_users_by_field", field="email", **{"values[0]": "ana.lee@school.test"})
    assert exact.json() == []
    criteria = {"criteria[0][key]": "email", "criteria[0][value]": "ana_lee@school.test"}
    found = post(moodle, "core_user_get_users", **criteria).json()
    assert [u["email"] for u in found["users"]] == ["Ana.Lee@School.test", "anaxlee@school.test"]  # `_`: any one
    assert found["warnings"] == []
    unknown = post(moodle, "core_user_get_users", **{"criteria[0][key]": "city", "criteria[0][value]": "x"}).json()
    assert unknown["warnings"][0]["warningcode"] == "invalidfieldparameter"


def test_duplicate_user_idnumbers_are_accepted(moodle: MoodleFake) -> None:
    post(moodle, "core_user_create_users", **user(0, idnumber="Z1"), **user(1, idnumber="Z1"))
    found = post(moodle, "core_user_get_users_by_field", field="idnumber", **{"values[0]": "Z1"}).json()
    assert [u["username"] for u in found] == ["s0", "s1"]
    assert found[0]["suspended"] is False


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (
            {"courses[0][shortname]": "M1"},
            {"errorcode": "shortnametaken", "message": "Short name is already used for another course (M1)"},
        ),
        (
            {"courses[0][shortname]": "M2", "courses[0][idnumber]": "C1"},
            {"errorcode": "courseidnumbertaken", "message": "ID number is already used for another course (C1)"},
        ),
    ],
)
def test_course_shortname_and_idnumber_are_unique(
    moodle: MoodleFake, second: dict[str, str], expected: dict[str, str]
) -> None:
    course = {
        "courses[0][fullname]": "Maths",
        "courses[0][shortname]": "M1",
        "courses[0][categoryid]": "1",
        "courses[0][idnumber]": "C1",
    }
    assert post(moodle, "core_course_create_courses", **course).json() == [{"id": 2, "shortname": "M1"}]
    answer = post(moodle, "core_course_create_courses", **{**course, **second})
    assert answer.json() == {"exception": "moodle_exception", **expected}


def test_category_idnumber_is_unique_and_null_when_empty(moodle: MoodleFake) -> None:
    category = {"categories[0][name]": "BTEC", "categories[0][idnumber]": "P1"}
    assert post(moodle, "core_course_create_categories", **category).json() == [{"id": 2, "name": "BTEC"}]
    assert post(moodle, "core_course_create_categories", **category).json() == {
        "exception": "moodle_exception",
        "errorcode": "categoryidnumbertaken",
        "message": "ID number is already used for another category",
    }
    listed = post(moodle, "core_course_get_categories").json()
    assert [(c["id"], c["idnumber"]) for c in listed] == [(1, None), (2, "P1")]
    found = post(moodle, "core_course_get_categories", **{"criteria[0][key]": "idnumber", "criteria[0][value]": "P1"})
    assert [c["id"] for c in found.json()] == [2]


def test_past_max_input_vars_the_rest_is_dropped_silently() -> None:
    with running(max_input_vars=3 + 5 * 3) as moodle:  # the 3 ws* parameters, then 3 users of 5 fields
        answer = post(moodle, "core_user_create_users", **{k: v for i in range(5) for k, v in user(i).items()})
        assert (answer.status_code, [u["username"] for u in answer.json()]) == (200, ["s0", "s1", "s2"])
        assert moodle.calls[-1].variables == 18


def test_a_record_cut_in_half_by_the_limit_rolls_back_the_batch() -> None:
    with running(max_input_vars=3 + 5 + 2) as moodle:
        answer = post(moodle, "core_user_create_users", **user(0), **user(1))
        assert answer.json() == INVALID
        assert moodle.users.keys() == {2}


def test_suspended_enrolments_are_listed_unless_onlyactive(moodle: MoodleFake) -> None:
    post(moodle, "core_user_create_users", **user(0), **user(1))
    post(
        moodle,
        "core_course_create_courses",
        **{"courses[0][fullname]": "Maths", "courses[0][shortname]": "M1", "courses[0][categoryid]": "1"},
    )
    enrol = {
        "enrolments[0][roleid]": "5",
        "enrolments[0][userid]": "3",
        "enrolments[0][courseid]": "2",
        "enrolments[1][roleid]": "5",
        "enrolments[1][userid]": "4",
        "enrolments[1][courseid]": "2",
        "enrolments[1][suspend]": "1",
    }
    post(moodle, "enrol_manual_enrol_users", **enrol)
    everyone = post(moodle, "core_enrol_get_enrolled_users", courseid="2").json()
    assert [(u["id"], u["roles"]) for u in everyone] == [
        (3, [{"roleid": 5, "name": "", "shortname": "student", "sortorder": 0}]),
        (4, [{"roleid": 5, "name": "", "shortname": "student", "sortorder": 0}]),
    ]
    active = post(
        moodle,
        "core_enrol_get_enrolled_users",
        courseid="2",
        **{"options[0][name]": "onlyactive", "options[0][value]": "1"},
    ).json()
    assert [u["id"] for u in active] == [3]


def test_updates_answer_warnings(moodle: MoodleFake) -> None:
    post(moodle, "core_user_create_users", **user(0))
    answer = post(
        moodle, "core_user_update_users", **{"users[0][id]": "3", "users[0][suspended]": "1", "users[1][id]": "99"}
    )
    assert answer.json() == {
        "warnings": [{"item": "user", "itemid": 99, "warningcode": "invaliduserid", "message": "Invalid user ID"}]
    }
    assert moodle.users[3]["suspended"] is True
    hidden = post(moodle, "core_course_update_courses", **{"courses[0][id]": "42", "courses[0][visible]": "0"})
    assert hidden.json()["warnings"][0]["warningcode"] == "invalidrecord"


def test_an_unknown_function_and_a_missing_parameter(moodle: MoodleFake) -> None:
    assert post(moodle, "core_nope").json()["errorcode"] == "invalidrecord"
    assert post(moodle, "core_user_create_users").json() == INVALID


@pytest.mark.parametrize("status", [500, 503])
def test_fail_on_demand_with_a_5xx(moodle: MoodleFake, status: int) -> None:
    moodle.fail("status", status=status)
    answer = post(moodle, "core_user_create_users", **user(0))
    assert answer.status_code == status
    assert moodle.users.keys() == {2}
    assert post(moodle, "core_user_create_users", **user(0)).status_code == 200


def test_fail_on_demand_with_a_reset_connection(moodle: MoodleFake) -> None:
    moodle.fail("reset", function="core_user_create_users")
    with pytest.raises(httpx.TransportError):
        post(moodle, "core_user_create_users", **user(0))
    assert [c.outcome for c in moodle.calls] == ["fault:reset"]


def test_a_slow_answer_times_out_after_the_call_took_effect(moodle: MoodleFake) -> None:
    moodle.fail("slow", seconds=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{moodle.url}/webservice/rest/server.php",
            timeout=0.2,
            data={
                "wstoken": moodle.token,
                "wsfunction": "core_user_create_users",
                "moodlewsrestformat": "json",
                **user(0),
            },
        )
    assert [u["username"] for u in moodle.users.values()] == ["admin", "s0"]


def test_a_transient_moodle_error_on_demand(moodle: MoodleFake) -> None:
    moodle.fail("error", errorcode="sitemaintenance")
    assert post(moodle, "core_webservice_get_site_info").json() == {
        "exception": "moodle_exception",
        "errorcode": "sitemaintenance",
        "message": "error/sitemaintenance",
    }


def test_the_call_log(moodle: MoodleFake) -> None:
    post(moodle, "core_user_get_users_by_field", field="email", **{"values[0]": "a@b.c"})
    post(moodle, "core_webservice_get_site_info", token="bad")
    assert [(c.function, c.params, c.variables, c.outcome) for c in moodle.calls] == [
        ("core_user_get_users_by_field", {"field": "email", "values": {"0": "a@b.c"}}, 5, "ok"),
        ("core_webservice_get_site_info", {}, 3, "invalidtoken"),
    ]
