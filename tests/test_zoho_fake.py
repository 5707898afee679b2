"""The Zoho fake over HTTP: its answers hold the shapes of the reference (zoho-crm.md §2-§5)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.zoho_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, ZohoFake, enrollments, serve_fake

MODULE = "BTEC_Enrollments"


@pytest.fixture
def fake() -> Iterator[ZohoFake]:
    with serve_fake() as running:
        running.load(MODULE, enrollments(450))
        yield running


@pytest.fixture
def http(fake: ZohoFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10) as client:
        yield client


def grant(http: httpx.Client, **overrides: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN} | overrides  # fmt: skip
    return http.post("/oauth/v2/token", data=form)


def authed(http: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Zoho-oauthtoken {grant(http).json()['access_token']}"}


def get(http: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    return http.get(path, params=params, headers=headers)


def test_a_refresh_token_grant_answers_zohos_token_shape(http: httpx.Client, fake: ZohoFake) -> None:
    answer = grant(http)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"access_token", "expires_in", "api_domain", "token_type", "scope"}
    assert (body["expires_in"], body["api_domain"], body["token_type"]) == (3600, fake.url, "Bearer")
    assert body["access_token"].startswith("1000.")
    assert (fake.token_requests, fake.tokens_granted) == (1, 1)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"client_id": "1000.OTHER"}, {"error": "invalid_client"}),
        ({"client_secret": "wrong"}, {"error": "invalid_client"}),
        ({"refresh_token": "1000.revoked"}, {"error": "invalid_code"}),
        ({"grant_type": "authorization_code"}, {"error": "unsupported_grant_type"}),
    ],
)
def test_bad_credentials_get_zohos_oauth_errors(
    http: httpx.Client, fake: ZohoFake, overrides: dict[str, str], expected: dict[str, str]
) -> None:
    answer = grant(http, **overrides)
    assert (answer.status_code, answer.json()) == (200, expected)
    assert fake.tokens_granted == 0


def test_the_eleventh_token_in_ten_minutes_is_access_denied_until_the_window_passes(
    http: httpx.Client, fake: ZohoFake
) -> None:
    now = [1000.0]
    fake.clock = lambda: now[0]
    assert all(grant(http).status_code == 200 for _ in range(10))
    refused = grant(http)
    assert refused.status_code == 400
    assert refused.json() == {
        "error_description": "You have made too many requests continuously. Please try again after some time.",
        "error": "Access Denied",
        "status": "failure",
    }
    now[0] += 600
    assert "access_token" in grant(http).json()
    assert (fake.token_requests, fake.tokens_granted) == (12, 11)


def test_the_api_checks_the_zoho_oauthtoken_header(http: httpx.Client, fake: ZohoFake) -> None:
    path, fields = f"/crm/v8/{MODULE}", "Name"
    missing = get(http, path, {}, fields=fields)
    assert (missing.status_code, missing.json()["code"]) == (401, "AUTHENTICATION_FAILURE")
    unknown = get(http, path, {"Authorization": "Zoho-oauthtoken 1000.nope"}, fields=fields)
    assert (unknown.status_code, unknown.json()) == (
        401,
        {"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"},
    )
    headers = authed(http)
    assert (
        get(
            http, path, {"Authorization": headers["Authorization"].replace("Zoho-oauthtoken", "Bearer")}, fields=fields
        ).status_code
        == 401
    )
    assert get(http, path, headers, fields=fields).status_code == 200
    fake.expire_tokens()
    assert get(http, path, headers, fields=fields).json()["code"] == "INVALID_TOKEN"


def test_listing_pages_with_page_token_returns_every_record_once(http: httpx.Client, fake: ZohoFake) -> None:
    headers, seen, token, infos = authed(http), [], None, []
    while True:
        params = {"fields": "Name,Modified_Time", "per_page": 200, "sort_by": "id", "sort_order": "asc"}
        answer = get(http, f"/crm/v8/{MODULE}", headers, **params, **({"page_token": token} if token else {}))
        body = answer.json()
        assert set(body) == {"data", "info"}
        assert all(set(record) == {"id", "Name", "Modified_Time"} for record in body["data"])
        seen += [record["id"] for record in body["data"]]
        infos.append(body["info"])
        token = body["info"]["next_page_token"]
        if not body["info"]["more_records"]:
            break
    assert [(i["count"], i["more_records"], i["next_page_token"] is None) for i in infos] == [
        (200, True, False), (200, True, False), (50, False, True)
    ]  # fmt: skip
    assert seen == [r["id"] for r in enrollments(450)]
    assert fake.api_calls == 3


def test_list_rules_fields_page_limits_and_bound_tokens(http: httpx.Client) -> None:
    headers, path = authed(http), f"/crm/v8/{MODULE}"
    missing = get(http, path, headers)
    assert (missing.status_code, missing.json()) == (400, {
        "code": "REQUIRED_PARAM_MISSING", "details": {"param_name": "fields"},
        "message": "One of the expected parameter is missing", "status": "error"})  # fmt: skip
    old = get(http, f"/crm/v2/{MODULE}", headers, per_page=1).json()["data"][0]
    assert "$approval_state" in old and "Owner" in old  # no fields: the full record, `$` keys and all
    assert get(http, path, headers, fields="Name", page=11).json()["code"] == "DISCRETE_PAGINATION_LIMIT_EXCEEDED"
    assert get(http, path, headers, fields="Name", per_page=201).json()["code"] == "INVALID_DATA"
    token = get(http, path, headers, fields="Name").json()["info"]["next_page_token"]
    other = get(http, path, headers, fields="Name,Start_Date", page_token=token)
    assert (other.status_code, other.json()["code"]) == (400, "TOKEN_BOUND_DATA_MISMATCH")


def test_if_modified_since_filters_and_nothing_newer_is_204(http: httpx.Client) -> None:
    headers = authed(http)
    newer = get(http, f"/crm/v8/{MODULE}", headers | {"If-Modified-Since": "2026-02-10T09:07:20+03:00"}, fields="Name")
    assert [r["Name"] for r in newer.json()["data"]][-1] == "ENR-00441" and newer.json()["info"]["count"] == 10
    none = get(http, f"/crm/v8/{MODULE}", headers | {"If-Modified-Since": "2027-01-01T00:00:00+00:00"}, fields="Name")
    assert (none.status_code, none.content) == (204, b"")


def test_get_by_ids_keeps_per_record_errors_and_leaves_unknown_ids_out(http: httpx.Client, fake: ZohoFake) -> None:
    headers, first, second = authed(http), enrollments(1)[0]["id"], enrollments(1, 2)[0]["id"]
    fake.record_errors[second] = ("NO_PERMISSION", "permission denied")
    body = get(http, f"/crm/v8/{MODULE}", headers, ids=f"{first},{second},999").json()
    assert body["data"][0]["id"] == first and body["data"][0]["Classes"] == {
        "name": "CLS-00457",
        "id": "6284103000002387011",
    }
    assert body["data"][1] == {
        "code": "NO_PERMISSION",
        "details": {"id": second},
        "message": "permission denied",
        "status": "error",
    }
    assert len(body["data"]) == 2
    assert get(http, f"/crm/v8/{MODULE}", headers, ids="998,999").status_code == 204
    over = get(http, f"/crm/v8/{MODULE}", headers, ids=",".join(str(n) for n in range(101)))
    assert (over.status_code, over.json()["code"], over.json()["details"]["maximum_length"]) == (
        400,
        "LIMIT_EXCEEDED",
        100,
    )


def test_deleted_records_by_type_and_204_when_none(http: httpx.Client, fake: ZohoFake) -> None:
    gone = {"id": "6284103000002409999", "display_name": "ENR-09999", "type": "recycle",
            "deleted_by": {"name": "Student Affairs", "id": "6284103000000491003"}, "created_by": None,
            "deleted_time": "2026-02-11T10:00:00+03:00"}  # fmt: skip
    fake.deleted[MODULE] = [gone, gone | {"id": "1", "type": "permanent", "display_name": None}]
    headers = authed(http)
    body = get(http, f"/crm/v8/{MODULE}/deleted", headers, type="recycle").json()
    assert body["data"] == [gone] and body["info"]["more_records"] is False
    assert len(get(http, f"/crm/v8/{MODULE}/deleted", headers, type="all").json()["data"]) == 2
    later = headers | {"If-Modified-Since": "2026-03-01T00:00:00+00:00"}
    assert get(http, f"/crm/v8/{MODULE}/deleted", later).status_code == 204


def test_failures_on_demand_and_the_rate_limit_answer_429(http: httpx.Client, fake: ZohoFake) -> None:
    headers, path = authed(http), f"/crm/v8/{MODULE}"
    fake.fail_next(500, "INTERNAL_ERROR")
    fake.fail_next(429, "TOO_MANY_REQUESTS", retry_after=7)
    assert get(http, path, headers, fields="Name").json()["code"] == "INTERNAL_ERROR"
    throttled = get(http, path, headers, fields="Name")
    assert (throttled.status_code, throttled.headers["Retry-After"], throttled.json()["code"]) == (
        429,
        "7",
        "TOO_MANY_REQUESTS",
    )
    assert get(http, path, headers, fields="Name").status_code == 200
    fake.rate_limit = (2, 60.0)
    assert [get(http, path, headers, fields="Name").status_code for _ in range(3)] == [200, 200, 429]
    limited = get(http, path, headers, fields="Name")
    assert limited.headers["X-RATELIMIT-REMAINING"] == "0" and 1 <= int(limited.headers["Retry-After"]) <= 60


def test_unknown_and_forbidden_modules(http: httpx.Client, fake: ZohoFake) -> None:
    headers = authed(http)
    unknown = get(http, "/crm/v8/BTEC_Nothing", headers, fields="Name")
    assert (unknown.status_code, unknown.json()["code"]) == (400, "INVALID_MODULE")
    fake.forbidden_modules.add(MODULE)
    forbidden = get(http, f"/crm/v8/{MODULE}", headers, fields="Name")
    assert (forbidden.status_code, forbidden.json()["code"]) == (403, "NO_PERMISSION")


def test_a_slow_answer_times_a_client_out(http: httpx.Client, fake: ZohoFake) -> None:
    headers = authed(http)
    fake.delay = 0.5
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"/crm/v8/{MODULE}", params={"fields": "Name"}, headers=headers, timeout=0.05)


def test_python_m_tests_zoho_fake_serves_on_the_given_port(tmp_path: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    page = tmp_path / "page.json"
    page.write_text((ROOT / "tests/fixtures/zoho/btec-enrollments-page.json").read_text())
    process = subprocess.Popen([sys.executable, "-m", "tests.zoho_fake", "--port", str(port), "--records", f"{MODULE}={page}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(100):
                try:
                    token = grant(http).json()["access_token"]
                    break
                except httpx.ConnectError:
                    time.sleep(0.1)
            body = http.get(f"/crm/v8/{MODULE}", params={"ids": "6284103000002402077"},
                            headers={"Authorization": f"Zoho-oauthtoken {token}"}).json()  # fmt: skip
        assert body["data"][0]["Name"] == "ENR-03381"
    finally:
        process.terminate()
        process.wait(10)
