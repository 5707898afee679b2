"""Payload shapes: turn what Zoho (or a person) sends into a list of raw records.

Accepted, as JSON:
- Zoho's envelope `{"data": [records], "info": {...}}`;
- a JSON array of records, or one record object;
- a Notifications API callback `{"ids": [...], "operation": "insert|update|delete", "module": ...}`:
  deletions become delete records, updates become patches of their `affected_values`.
As a form (`application/x-www-form-urlencoded`): one record, as a workflow webhook sends it;
`zoho_id` names the record and `event=delete` makes it a deletion. A form's keys match the
entity's Zoho names and their aliases in any case (`modified_time` is `Modified_Time`): a
webhook's keys are typed by hand. JSON keys are Zoho's API names, exactly.

The records of an array or an envelope stay JSON text (`msgspec.Raw`) until the pipeline decodes
each straight into its entity's Struct (`parsing.Parser`). So a JSON body's nesting is
checked once, on its bytes, before any decoding (`check_depth`): every record is a slice of it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from syncengine.descriptors import FORM_WEBHOOK_KEYS, Entity
from syncengine.exceptions import BadInput
from syncengine.parsing import DELETED_KEY, ID_KEYS, decode_json

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_decode_array = msgspec.json.Decoder(list[msgspec.Raw]).decode
_FIRST_BYTE = re.compile(rb"\s*(.)", re.DOTALL)


class _Envelope(msgspec.Struct):
    data: list[msgspec.Raw]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_SHAPES = '{"data": [records]}, [records] or one record object'
_BYTE = re.compile(r"\(byte (\d+)\)")


#: How deeply a JSON body may nest arrays and objects, its envelope included. Zoho's deepest shape
#: (an envelope, a record, a subform row, a lookup in it) is 5 levels; 1,000 would exhaust the stack.
MAX_JSON_DEPTH = 64
_NOT_QUOTE_OR_BRACKET = bytes(b for b in range(256) if b not in b'"[]{}')
_TO_PARENTHESES = bytes.maketrans(b"[{]}", b"(())")
_QUOTED = re.compile(rb'"[^"]*"')
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
#: A \\u escape of a UTF-16 surrogate without its pair: a high one not followed by a low one, or
#: a low one on its own (the escape itself is group 1; an even run of backslashes may precede it).
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|"
    rb"(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)


class PayloadError(BadInput):
    """The body is not one of the accepted shapes; the message says what and where."""

    code = "invalid_body"


class MalformedJson(PayloadError):
    """The body is not JSON (or not UTF-8); the message gives the line and column."""

    code = "malformed_json"


class TooDeep(PayloadError):
    """The body nests arrays and objects deeper than MAX_JSON_DEPTH."""

    code = "json_too_deep"


def check_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit`, from its bytes, before any decoder recurses into it.

    Brackets inside strings do not count. The common body costs a few C passes over its bytes;
    only a refused one is walked token by token, to say where.
    """
    data = body
    if b"\\" in data:  # an escaped quote must not end its string (other escapes hold no quote)
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    reduced = data.translate(None, _NOT_QUOTE_OR_BRACKET)
    brackets = reduced.replace(b'""', b"")  # strings without brackets in them, the usual kind
    if b'"' in brackets:
        brackets = _QUOTED.sub(b"", reduced)
    brackets = brackets.translate(_TO_PARENTHESES)
    if len(brackets) <= 2 * limit:
        return
    # Each pass removes the innermost pairs, one level; what is left after `limit` passes is deeper.
    deep = b"(" * (limit + 1) in brackets
    for _ in range(limit):
        if deep or not brackets:
            break
        brackets = brackets.replace(b"()", b"")
    if deep or b"()" in brackets:
        raise TooDeep(f"{_too_deep_where(body, limit)}: send records nested at most {limit} arrays and objects deep")


def _too_deep_where(body: bytes, limit: int) -> str:
    depth = 0
    for token in _TOKEN.finditer(body):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > limit:
                line, column = _line_column(body, token.start())
                return f"JSON nested deeper than {limit} levels at line {line}, column {column}"
        elif bracket in (b"]", b"}"):
            depth -= 1
    return f"JSON nested deeper than {limit} levels"


def _line_column(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    return line, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def parse_json(body: bytes | str) -> Any:
    """Decode JSON; on failure say at which line and column, not at which byte."""
    data = body.encode() if isinstance(body, str) else body
    if not data.strip():
        raise PayloadError(f"the body is empty: send {_SHAPES}")
    try:
        return decode_json(data)  # numbers as Decimal, and one beyond 64 bits refused by its field
    except msgspec.DecodeError as error:
        raise MalformedJson(_malformed(data, str(error))) from None


def _malformed(data: bytes, message: str) -> str:
    """What msgspec's complaint about `data` means, and where, for a person."""
    surrogate = _LONE_SURROGATE.search(data) if "surrogate" in message or "truncated" in message else None
    if surrogate is not None:
        line, column = _line_column(data, surrogate.start(1))
        escape = surrogate.group(1).decode()
        return (
            f"malformed JSON at line {line}, column {column}: a lone UTF-16 surrogate '{escape}' "
            "(a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one): text must be valid Unicode"
        )
    if "UTF-8" in message:
        try:
            data.decode()
        except UnicodeDecodeError as error:
            line, column = _line_column(data, error.start)
            byte = data[error.start]
            return f"malformed JSON at line {line}, column {column}: not UTF-8 (byte 0x{byte:02x}): send UTF-8"
    match = _BYTE.search(message)
    if match is None:
        return f"malformed JSON: {message.replace('JSON is malformed: ', '').lower()}"
    line, column = _line_column(data, int(match.group(1)))
    reason = _BYTE.sub("", message).replace("JSON is malformed: ", "").strip()
    return f"malformed JSON at line {line}, column {column}: {reason}"


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


def _looks_like_json(body: bytes) -> bool:
    """A body that starts as JSON does and is JSON, or has no `name=value` pair at all."""
    if body.lstrip()[:1] not in (b"{", b"["):
        return False
    if b"=" not in body:
        return True
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return True


def records_from_form(body: bytes, entity: Entity | None = None) -> list[Any]:
    """One record from a form body; `zoho_id` and `event` are the webhook's own keys.

    Each field is `name=value`, once, and UTF-8 once its %-escapes are decoded: `%FF%FE` is
    refused, naming its field, not read as U+FFFD. With the `entity`, each key that matches one
    of its Zoho names or aliases in any case becomes that Zoho name (`Entity.form_keys`):

        >>> records_from_form(b"zoho_id=7&modified_time=2026-02-10T09:20:13Z", entity)
        [{'zoho_id': '7', 'Modified_Time': '2026-02-10T09:20:13Z'}]
    """
    if _looks_like_json(body):  # `curl -d '{...}'` sends JSON as a form unless told
        raise PayloadError(
            f"the body looks like JSON, but its Content-Type is {FORM_CONTENT_TYPE} (what `curl -d` sends "
            "when no Content-Type is given): send it with 'Content-Type: application/json'"
        )
    form_keys = entity.form_keys if entity is not None else {}
    fields: dict[str, Any] = {}
    sent_as: dict[str, str] = {}
    for number, pair in enumerate(body.split(b"&") if body else (), start=1):
        raw_name, equals, raw_value = pair.partition(b"=")
        if not equals:
            raise PayloadError(f"malformed form body: field {number} has no '=': send name=value pairs joined by '&'")
        name = _form_text(raw_name, None)
        lower = name.lower()
        key = lower if lower in FORM_WEBHOOK_KEYS else form_keys.get(lower, name)
        if key in fields:
            if sent_as[key] == name:
                raise PayloadError(f"malformed form body: the field {name!r} appears more than once; send it once")
            raise PayloadError(
                f"malformed form body: the fields {sent_as[key]!r} and {name!r} both stand for {key!r} "
                "(form keys match in any case, and aliases too); send one of them"
            )
        sent_as[key] = name
        fields[key] = _form_text(raw_value, name)
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


def parse_body(body: bytes, content_type: str | None = "application/json", entity: Entity | None = None) -> list[Any]:
    """The records of an HTTP body or a file, by its content type; a form's keys matched to
    `entity`'s Zoho names (`records_from_form`)."""
    media_type = (content_type or "application/json").split(";")[0].strip().lower()
    if media_type == FORM_CONTENT_TYPE:
        return records_from_form(body, entity)
    check_depth(body)
    return _json_records(body)


#: A Notifications API callback's operations (Zoho's `Module.create` events arrive as "insert").
OPERATIONS = ("insert", "update", "delete")


def _notification(document: dict[str, Any]) -> list[Any]:
    """The records of a callback: deletions, or patches of the fields its `affected_values` name.

    Values keyed `$...` are Zoho's meta keys, not commands (a `"$deleted": true` there deletes
    nothing), and an `id` or `zoho_id` among them cannot make the patch land on another record.
    """
    operation = document["operation"]
    if not isinstance(operation, str) or operation.lower() not in OPERATIONS:
        raise PayloadError(f'"operation" must be one of {", ".join(OPERATIONS)}, got {_shown(operation)}')
    for zoho_id in document["ids"]:
        if not _is_id(zoho_id):
            raise PayloadError(f'"ids" must be a list of record ids, got the item {_shown(zoho_id)}')
    if operation.lower() == "delete":
        return [{"id": zoho_id, DELETED_KEY: True} for zoho_id in document["ids"]]
    values = _affected_values(document.get("affected_values"))
    return [{**values.get(str(zoho_id), {}), "id": zoho_id} for zoho_id in document["ids"]]


def _affected_values(affected: Any) -> dict[str, dict[str, Any]]:
    """`affected_values` as {record id: field values}, without meta keys and ids."""
    shape = '[{"record_id": "...", "values": {"Field": value}}]'
    if affected is None:
        return {}
    if not isinstance(affected, list):
        raise PayloadError(f'"affected_values" must be a list like {shape}, got {_shown(affected)}')
    values: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(affected):
        where = f'"affected_values"[{index}]'
        if not isinstance(item, dict):
            raise PayloadError(f"{where} must be an object like {shape[1:-1]}, got {_shown(item)}")
        record_id, fields = item.get("record_id"), item.get("values")
        if not _is_id(record_id):
            raise PayloadError(
                f"{where}.record_id must be a record id (text or a whole number), got {_shown(record_id)}"
            )
        if fields is not None and not isinstance(fields, dict):
            raise PayloadError(f"{where}.values must be an object of field values, got {_shown(fields)}")
        values[str(record_id)] = {
            key: value for key, value in (fields or {}).items() if not key.startswith("$") and key not in ID_KEYS
        }
    return values


def _is_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value as JSON, cut short: for messages."""
    return msgspec.json.encode(value).decode()[:40]
