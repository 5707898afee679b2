"""syncengine.moodle against the Moodle fake over real HTTP: encoding, answers, and every failure as MoodleError."""

from __future__ import annotations

import logging
import pickle
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from syncengine.moodle import MoodleClient, MoodleError, count_parameters, encode
from tests.moodle_fake import MoodleFake, running

TOKEN = "s3cret-token-9f8e7d6c5b4a"
USER = {"username": "ana", "firstname": "Ana", "lastname": "Lee", "email": "ana@school.test", "createpassword": True}


@pytest.fixture
def moodle() -> Iterator[MoodleFake]:
    with running(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def client(moodle: MoodleFake) -> AsyncIterator[MoodleClient]:
    async with MoodleClient(moodle.url, TOKEN, timeout=0.5) as client:
        yield client


@contextmanager
def fixed_answer(status: int, body: bytes, headers: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """A server that answers every request the same way, and the paths it was asked for."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            paths.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()


def test_nested_parameters_are_encoded_as_php_reads_them() -> None:
    params = {
        "users": [{"username": "ana", "suspended": False, "customfields": [{"type": "zoho", "value": 7}]}],
        "skip": None,
        "field": "id",
    }
    assert encode(params) == [
        ("users[0][username]", "ana"),
        ("users[0][suspended]", "0"),
        ("users[0][customfields][0][type]", "zoho"),
        ("users[0][customfields][0][value]", "7"),
        ("field", "id"),
    ]
    assert count_parameters(params) == 5 + 3


async def test_a_call_sends_nested_parameters_and_parses_the_answer(client: MoodleClient, moodle: MoodleFake) -> None:
    assert await client.call("core_user_create_users", {"users": [USER]}) == [{"id": 3, "username": "ana"}]
    assert moodle.calls[-1].params["users"]["0"]["createpassword"] == "1"
    assert moodle.calls[-1].variables == count_parameters({"users": [USER]})


async def test_a_null_answer_is_none(client: MoodleClient, moodle: MoodleFake) -> None:
    await client.call("core_user_create_users", {"users": [USER]})
    await client.call("core_course_create_courses", {"courses": [{"fullname": "M", "shortname": "M", "categoryid": 1}]})
    assert (
        await client.call("enrol_manual_enrol_users", {"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2}]})
        is None
    )


async def test_site_info_gives_the_release_and_the_functions(moodle: MoodleFake) -> None:
    moodle.functions = frozenset({"core_webservice_get_site_info", "core_user_create_users"})
    async with MoodleClient(moodle.url + "/", TOKEN) as client:
        info = await client.site_info()
    assert (info.release, info.functions) == ("4.5.11+ (Build: 20260501)", moodle.functions)


@pytest.mark.parametrize(
    ("fault", "errorcode", "transient"),
    [
        ({"kind": "status", "status": 503}, "http503", True),
        ({"kind": "status", "status": 500}, "http500", True),
        ({"kind": "reset"}, "network", True),
        ({"kind": "slow", "seconds": 2.0}, "timeout", True),
        ({"kind": "error", "errorcode": "sitemaintenance"}, "sitemaintenance", True),
        ({"kind": "error", "errorcode": "nopermissions"}, "nopermissions", False),
    ],
)
async def test_failures_become_one_error_type(
    client: MoodleClient, moodle: MoodleFake, fault: dict[str, Any], errorcode: str, transient: bool
) -> None:
    moodle.fail(**fault)
    with pytest.raises(MoodleError) as caught:
        await client.call("core_webservice_get_site_info")
    assert (caught.value.function, caught.value.errorcode, caught.value.transient) == (
        "core_webservice_get_site_info",
        errorcode,
        transient,
    )


async def test_moodle_exceptions_are_permanent_with_moodles_code_and_message(
    client: MoodleClient, moodle: MoodleFake
) -> None:
    await client.call("core_user_create_users", {"users": [USER]})
    with pytest.raises(MoodleError) as caught:
        await client.call("core_user_create_users", {"users": [USER]})
    assert (caught.value.errorcode, caught.value.message, caught.value.transient) == (
        "invalidparameter",
        "Invalid parameter value detected",
        False,
    )
    assert str(caught.value) == (
        "core_user_create_users: invalidparameter: Invalid parameter value detected: fix the "
        "record's values (a taken username or email, an upper-case username, a missing "
        "field), then retry"
    )
    moodle.functions = {"core_webservice_get_site_info"}
    with pytest.raises(MoodleError, match="add core_user_create_users to the token's external service") as missing:
        await client.call("core_user_create_users", {"users": [USER]})
    assert (missing.value.errorcode, missing.value.transient) == ("accessexception", False)
    assert pickle.loads(pickle.dumps(missing.value)).errorcode == "accessexception"


async def test_a_redirect_is_not_followed_and_names_the_url_to_use() -> None:
    with fixed_answer(303, b"", {"Location": "https://moodle.school.test/webservice/rest/server.php"}) as (url, paths):
        async with MoodleClient(url, TOKEN) as client:
            with pytest.raises(MoodleError, match=r"redirecting to https://moodle\.school\.test/") as caught:
                await client.call("core_webservice_get_site_info")
    assert (caught.value.errorcode, caught.value.transient, paths) == (
        "redirect",
        False,
        ["/webservice/rest/server.php"],
    )


@pytest.mark.parametrize(
    ("status", "body", "errorcode", "transient"),
    [
        (200, b"", "emptyanswer", False),
        (200, b"<html>login</html>", "notjson", False),
        (404, b"<html>no</html>", "http404", False),
        (502, b"<html>bad gateway</html>", "http502", True),
    ],
)
async def test_answers_that_are_not_moodle_json(status: int, body: bytes, errorcode: str, transient: bool) -> None:
    with fixed_answer(status, body, {"Content-Type": "text/html"}) as (url, _):
        async with MoodleClient(url, TOKEN) as client:
            with pytest.raises(MoodleError) as caught:
                await client.call("core_webservice_get_site_info")
    assert (caught.value.errorcode, caught.value.transient) == (errorcode, transient)


async def test_the_token_appears_in_no_error_log_or_repr(moodle: MoodleFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ours = logging.getLogger("syncengine")  # other tests may have configured it not to propagate
    ours.addHandler(caplog.handler)
    level, ours.level = ours.level, logging.DEBUG
    try:
        await _fail_every_way(moodle, caplog)
    finally:
        ours.removeHandler(caplog.handler)
        ours.setLevel(level)


async def _fail_every_way(moodle: MoodleFake, caplog: pytest.LogCaptureFixture) -> None:
    texts: list[str] = []
    async with MoodleClient(moodle.url, TOKEN, timeout=0.5) as client:
        texts.append(repr(client))
        await client.call("core_user_create_users", {"users": [USER]})
        for fault in ({"kind": "status"}, {"kind": "reset"}, {"kind": "slow", "seconds": 2.0}, {"kind": "error"}, None):
            if fault:
                moodle.fail(**fault)
            with pytest.raises(MoodleError) as caught:
                await client.call("core_user_create_users", {"users": [USER]})
            texts += [str(caught.value), repr(caught.value), "".join(traceback.format_exception(caught.value))]
    async with MoodleClient(moodle.url, "wrong-" + TOKEN) as bad:
        with pytest.raises(MoodleError) as caught:
            await bad.call("core_webservice_get_site_info")
        texts += [str(caught.value), "".join(traceback.format_exception(caught.value))]
    assert caught.value.errorcode == "invalidtoken"
    assert "moodle call" in caplog.text and "HTTP Request" in caplog.text  # the logs were captured
    assert [text for text in [*texts, caplog.text] if TOKEN in text] == []
