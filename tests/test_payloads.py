"""Payload shapes, and Zoho's own sample payloads through the whole pipeline."""

from __future__ import annotations

import msgspec
import pytest

from syncengine.engine import SyncEngine
from syncengine.payloads import PayloadError, parse_body
from tests.conftest import FIXTURES
from tests.records import student


@pytest.mark.parametrize(
    ("body", "records"),
    [
        (b'{"data": [{"id": "1"}, {"id": "2"}], "info": {"more_records": false}}', [{"id": "1"}, {"id": "2"}]),
        (b'[{"id": "1"}]', [{"id": "1"}]),
        (b'{"id": "1", "Name": "x"}', [{"id": "1", "Name": "x"}]),
        (
            b'{"module": "BTEC_Students", "ids": ["1", "2"], "operation": "delete", "token": null}',
            [{"id": "1", "$deleted": True}, {"id": "2", "$deleted": True}],
        ),
        (
            b'{"module": "BTEC_Students", "ids": ["1", "2"], "operation": "update",'
            b' "affected_values": [{"record_id": "1", "values": {"Status": "Freeze"}}]}',
            [{"Status": "Freeze", "id": "1"}, {"id": "2"}],
        ),
    ],
)
def test_json_shapes(body: bytes, records: list[object]) -> None:
    assert [decoded(record) for record in parse_body(body)] == records


def test_the_records_of_an_array_or_an_envelope_stay_json_text() -> None:
    """The pipeline decodes each into its entity's Struct; other shapes arrive decoded."""
    for body in (b' [{"id": "1"}, 2]', b'{"info": {}, "data": [{"id": "1"}, 2]}'):
        records = parse_body(body)
        assert all(isinstance(record, msgspec.Raw) for record in records)
        assert [decoded(record) for record in records] == [{"id": "1"}, 2]
    assert parse_body(b'{"id": "1", "note": "data"}') == [{"id": "1", "note": "data"}]


def decoded(record: object) -> object:
    return msgspec.json.decode(record) if isinstance(record, msgspec.Raw) else record


def test_a_workflow_form_body_is_one_record() -> None:
    body = (FIXTURES / "webhook-form-body.txt").read_text().split("\n\n", 1)[1].strip().encode()
    assert parse_body(body, "application/x-www-form-urlencoded; charset=utf-8") == [
        {"zoho_id": "6284103000002402077", "modified_time": "2026-02-10T09:20:13+0300", "module": "BTEC_Enrollments"}
    ]
    assert parse_body(b"zoho_id=7&event=delete", "application/x-www-form-urlencoded") == [
        {"zoho_id": "7", "$deleted": True}
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"data": [\n  {"id": "1"\n]}', "malformed JSON at line 3, column 1: expected ',' or '}'"),
        (b" \n", 'the body is empty: send {"data": [records]}, [records] or one record object'),
        (b'{"id": "1"', "malformed JSON: input data was truncated"),
        (
            b"42",
            'expected a JSON object or array of records, got int; send {"data": [records]}, [records] or one record object',
        ),
        (b'{"data": "x"}', '"data" must be a list of records'),
        (b'[{"id": "1"}, {"id": 2]', "malformed JSON at line 1, column 23: expected ',' or '}'"),
        (b'{"data": [{"id": "1"}, ]}', "malformed JSON at line 1, column 24: trailing comma in array"),
    ],
)
def test_bad_bodies_say_what_and_where(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert str(caught.value) == message


async def test_zoho_samples_sync_in_dependency_order(engine: SyncEngine) -> None:
    def records(name: str) -> list[object]:
        return parse_body((FIXTURES / name).read_bytes())

    program = await engine.sync("school", "programs", records("products-record.json"))
    assert [r.status for r in program.results] == ["NEW"]
    # The class also links a unit and a teacher that are not synced: optional lookups, stored by id.
    klass = await engine.sync("school", "classes", records("btec-classes-record.json"))
    assert [r.status for r in klass.results] == ["NEW"]
    await engine.sync("school", "students", [student("6284103000002010101")])
    enrollments = await engine.sync("school", "enrollments", records("btec-enrollments-page.json"))
    assert [r.status for r in enrollments.results] == ["NEW"]

    # A notification callback that Moodle fields changed touches no mapped field.
    callback = await engine.sync("school", "enrollments", records("notification-callback.json"))
    assert [(r.zoho_id, r.status) for r in callback.results] == [("6284103000002402077", "UNCHANGED")]
    # An id-only webhook for a record we have is a patch with nothing in it.
    webhook = await engine.sync("school", "enrollments", records("webhook-json-id-only.json"))
    assert [r.status for r in webhook.results] == ["UNCHANGED"]
    form = await engine.sync(
        "school",
        "enrollments",
        parse_body(b"zoho_id=6284103000002402077&event=delete", "application/x-www-form-urlencoded"),
    )
    assert [r.status for r in form.results] == ["DELETED"]
