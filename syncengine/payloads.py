"""Payload shapes: turn what Zoho (or a person) sends into a list of raw records.

Accepted, as JSON:
- Zoho's envelope `{"data": [records], "info": {...}}`;
- a JSON array of records, or one record object;
- a Notifications API callback `{"ids": [...], "operation": "insert|update|delete", "module": ...}`:
  deletions become delete records, updates become patches of their `affected_values`.
As a form (`application/x-www-form-urlencoded`): one record, as a workflow webhook sends it;
`zoho_id` names the record and `event=delete` makes it a deletion.

The records of an array or an envelope stay JSON text (`msgspec.Raw`) until the pipeline decodes
each straight into its entity's Struct (`pipeline.parse_records`).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from syncengine.pipeline import DELETED_KEY, decode_json

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_decode_array = msgspec.json.Decoder(list[msgspec.Raw]).decode
_FIRST_BYTE = re.compile(rb"\s*(.)", re.DOTALL)


class _Envelope(msgspec.Struct):
    data: list[msgspec.Raw]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_SHAPES = '{"data": [records]}, [records] or one record object'
_BYTE = re.compile(r"\(byte (\d+)\)")


class PayloadError(ValueError):
    """The body is not one of the accepted shapes; the message says what and where."""


def parse_json(body: bytes | str) -> Any:
    """Decode JSON; on failure say at which line and column, not at which byte."""
    data = body.encode() if isinstance(body, str) else body
    if not data.strip():
        raise PayloadError(f"the body is empty: send {_SHAPES}")
    try:
        return decode_json(data)  # numbers as Decimal, and one beyond 64 bits refused by its field
    except msgspec.DecodeError as error:
        message = str(error)
        match = _BYTE.search(message)
        if match is None:
            raise PayloadError(f"malformed JSON: {message.replace('JSON is malformed: ', '').lower()}") from None
        offset = int(match.group(1))
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        reason = _BYTE.sub("", message).replace("JSON is malformed: ", "").strip()
        raise PayloadError(f"malformed JSON at line {line}, column {column}: {reason}") from None


def _json_records(body: bytes) -> list[Any]:
    """The records of a JSON body in any accepted shape; those of an array or an envelope as
    their JSON text (`msgspec.Raw`). Anything else, or anything wrong, takes `parse_json`."""
    first = _FIRST_BYTE.match(body)
    try:
        if first is not None and first.group(1) == b"[":
            return _decode_array(body)
        if first is not None and first.group(1) == b"{" and b'"data"' in body:
            return _decode_envelope(body).data
    except (msgspec.DecodeError, msgspec.ValidationError):  # "data" not a list, say: parse_json says so
        pass
    return records_from_json(parse_json(body))


def records_from_json(document: Any) -> list[Any]:
    """The records of a decoded JSON document in any accepted shape."""
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise PayloadError(f"expected a JSON object or array of records, got {type(document).__name__}; send {_SHAPES}")
    if "data" in document:
        if not isinstance(document["data"], list):
            raise PayloadError('"data" must be a list of records')
        return document["data"]
    if isinstance(document.get("ids"), list) and "operation" in document:
        return _notification(document)
    return [document]


def records_from_form(body: bytes) -> list[Any]:
    """One record from a form body; `zoho_id` and `event` are the webhook's own keys.

    Each field is `name=value`, once, and UTF-8 once its %-escapes are decoded: `%FF%FE` is
    refused, naming its field, not read as U+FFFD.
    """
    fields: dict[str, Any] = {}
    for number, pair in enumerate(body.split(b"&") if body else (), start=1):
        raw_name, equals, raw_value = pair.partition(b"=")
        if not equals:
            raise PayloadError(f"malformed form body: field {number} has no '=': send name=value pairs joined by '&'")
        name = _form_text(raw_name, None)
        if name in fields:
            raise PayloadError(f"malformed form body: the field {name!r} appears more than once; send it once")
        fields[name] = _form_text(raw_value, name)
    if fields.pop("event", "").lower() == "delete":
        fields[DELETED_KEY] = True
    return [fields]


def _form_text(raw: bytes, name: str | None) -> str:
    """A form name (`name` None) or the value of field `name`, %-decoded, as strict UTF-8."""
    data = unquote_to_bytes(raw.replace(b"+", b" "))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = f"the field {name!r}" if name is not None else f"the field name {data.decode('utf-8', 'replace')!r}"
        raise PayloadError(
            f"malformed form body: {where} is not UTF-8 (byte 0x{data[error.start]:02X} at {error.start}, "
            "after %-decoding); send the form as UTF-8"
        ) from None


def parse_body(body: bytes, content_type: str | None = "application/json") -> list[Any]:
    """The records of an HTTP body or a file, by its content type."""
    media_type = (content_type or "application/json").split(";")[0].strip().lower()
    if media_type == FORM_CONTENT_TYPE:
        return records_from_form(body)
    return _json_records(body)


def _notification(document: dict[str, Any]) -> list[Any]:
    operation = str(document["operation"]).lower()
    for zoho_id in document["ids"]:
        if not isinstance(zoho_id, (str, int)) or isinstance(zoho_id, bool):
            item = msgspec.json.encode(zoho_id).decode()[:40]
            raise PayloadError(f'"ids" must be a list of record ids, got the item {item}')
    if operation == "delete":
        return [{"id": zoho_id, DELETED_KEY: True} for zoho_id in document["ids"]]
    values = {
        item.get("record_id"): item.get("values") or {}
        for item in document.get("affected_values") or ()
        if isinstance(item, dict)
    }
    return [{**values.get(zoho_id, {}), "id": zoho_id} for zoho_id in document["ids"]]
