"""Records that name nothing but their Zoho id: fetched from the tenant's Zoho CRM, then synced.

    async with await open_zoho(engine.database, "school") as zoho:
        report = await fetch_and_sync(engine, zoho, "school", entity.name, zoho_ids)

`sync_fetching` takes a batch as it arrived (full records, id-only ones, deletions, in any mix):
the id-only records (`id_only`) are fetched, 100 ids a call, and replaced by what Zoho
answered; then the whole batch goes through one `engine.sync`. `sync_received` is what the HTTP
service calls: it opens the tenant's client only when a record is id-only. The report has one result per record, in
the order given. An id Zoho answers with an error (NO_PERMISSION, NOT_FOUND, ...) is that
record's result: SKIPPED, `reason` Zoho's code, the message what happened and what to do. A
refusal of the whole call (the credentials, the module, the scope) is every id-only record's
result the same way, and full records still sync. Zoho unreachable or throttled past the client's
retries is `ZohoUnreachable` (a 503 over HTTP, with Retry-After): nothing is synced, the sender
retries. An id still holding a workflow's merge field (`${!Module.Id}`), or a `module` other
than the entity's, is refused before any call (`UnsubstitutedMergeField`, `WrongModule`: 400s);
an id that is no Zoho id (1 to 20 digits) is that record's INVALID result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import httpx
import msgspec

from syncengine.descriptors import Entity
from syncengine.engine import SyncEngine
from syncengine.exceptions import BadInput, Unavailable
from syncengine.idempotency import Answer
from syncengine.parsing import DELETED_KEY, ID_KEYS, decode_json
from syncengine.report import FieldError, RecordResult, SyncReport
from syncengine.zoho import ZOHO_ID, RecordError, ZohoClient, ZohoError, ZohoUnavailable
from syncengine.zoho_sites import NoZohoCredentials, open_zoho

Operation = Literal["insert", "update", "delete"]
#: A record of a JSON array or envelope longer than this is taken as a full record, without
#: decoding it to look: Zoho caps a workflow webhook's whole body at 500 characters, and looking
#: costs a full record's decoding (about 17 us for an 870-byte enrollment) on the hot path.
ID_ONLY_MAX_BYTES = 512
#: Options of the Zoho client of an HTTP request: a sender waits for its answer, so a throttled,
#: failing or silent Zoho is a 503 with Retry-After within seconds, not after minutes of back-off.
WEBHOOK_CLIENT: dict[str, Any] = {"max_attempts": 3, "max_wait": 5.0}
WEBHOOK_TIMEOUT = 10.0  # seconds for each call to Zoho (connect, and each read)
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class UnsubstitutedMergeField(BadInput):
    """An id is still a workflow's merge field (`${!Module.Id}`): the webhook is set up wrong."""

    code = "merge_field_not_substituted"


class WrongModule(BadInput):
    """An id-only record names a Zoho module other than the endpoint's entity's."""

    code = "wrong_module"


class ZohoUnreachable(Unavailable):
    """Zoho did not answer, or kept throttling, past the client's retries; nothing was synced.
    `retry_after` is seconds to wait (Zoho's own wish where it said one)."""

    code = "zoho_unavailable"

    def __init__(self, entity: str, error: ZohoUnavailable) -> None:
        self.retry_after = max(1, round(error.retry_after)) if error.retry_after is not None else 30
        how = (
            f"answered {error.zoho_code} (HTTP {error.status})"
            if error.status
            else f"got no answer ({error.zoho_code})"
        )
        #: What went wrong, without what the sender should do (the intake queue retries by itself).
        self.reason = f"could not fetch the {entity} records from Zoho: {error.where} {how} after the client's retries"
        super().__init__(
            f"{self.reason}; nothing of this request was synced: send it again after {self.retry_after} seconds"
        )


async def fetch_and_sync(
    engine: SyncEngine,
    zoho: ZohoClient | NoZohoCredentials,
    tenant: str,
    entity: str,
    ids: Iterable[str],
    operations: Mapping[str, Operation] | None = None,
    *,
    dry_run: bool = False,
) -> SyncReport:
    """The records `ids` names, fetched from `zoho` and synced in one `engine.sync`; one result
    per id, in the order given. An id whose operation (in `operations`) is "delete" is not
    fetched: it is a deletion. Others are fetched and synced whatever their operation."""
    operations = operations or {}
    records = [{"id": i, DELETED_KEY: True} if operations.get(i) == "delete" else {"id": i} for i in ids]
    return await sync_fetching(engine, zoho, tenant, entity, records, dry_run=dry_run)


async def sync_fetching(
    engine: SyncEngine,
    zoho: ZohoClient | NoZohoCredentials,
    tenant: str,
    entity: str,
    records: Sequence[Any],
    *,
    dry_run: bool = False,
    answer: Answer | None = None,
) -> SyncReport:
    """Sync `records`, fetching the id-only ones from `zoho` first (see the module's docstring).
    `zoho` is the tenant's client, or why it has none: then each id-only record is SKIPPED with
    that message. `answer` is stored with the batch, rendered from the whole report."""
    wanted = _id_only_positions(records)
    return await _sync(engine, zoho, tenant, entity, records, wanted, dry_run, answer)


async def sync_received(
    engine: SyncEngine,
    tenant: str,
    entity: str,
    records: Sequence[Any],
    *,
    dry_run: bool = False,
    answer: Answer | None = None,
    http: httpx.AsyncClient | None = None,
) -> SyncReport:
    """What the HTTP service syncs: `records` as they arrived. The tenant's Zoho client is opened
    (`open_zoho`, with `WEBHOOK_CLIENT`) only when some record is id-only, on `http` where given
    (`webhook_http()`: the service shares one, since making one costs ~100 ms of CPU)."""
    wanted = _id_only_positions(records)
    if not wanted:
        return await engine.sync(tenant, entity, records, dry_run=dry_run, answer=answer)
    own = http is None
    http = http or webhook_http()
    try:
        try:
            zoho: ZohoClient | NoZohoCredentials = await open_zoho(engine.database, tenant, http=http, **WEBHOOK_CLIENT)
        except NoZohoCredentials as missing:
            zoho = missing
        return await _sync(engine, zoho, tenant, entity, records, wanted, dry_run, answer)
    finally:
        if own:
            await http.aclose()


def webhook_http() -> httpx.AsyncClient:
    """An HTTP client for the Zoho calls of requests: `WEBHOOK_TIMEOUT` a call. Making one loads
    the CA certificates (~100 ms of CPU), so a service makes one and shares it."""
    return httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)


def id_only(record: Any) -> str | None:
    """The Zoho id of a record that holds nothing but its id (`id` or `zoho_id`), `$` meta keys and
    a webhook's `module`, as text; None for any other record (a deletion, `"$deleted": true`, is
    not id-only; nor is a record with any field, which is a patch).

        >>> id_only({"zoho_id": "6284103000002402077", "module": entity.source})
        '6284103000002402077'
    """
    members = _members(record)
    if members is None or DELETED_KEY in members:
        return None
    value = None
    for key in members:  # a full record's first field ends the look
        if key in ID_KEYS:
            if value is not None:
                return None  # `id` and `zoho_id` both: which one is meant is no guess to make
            value = members[key]
        elif key != "module" and not key.startswith("$"):
            return None
    value = decode_json(value) if isinstance(value, msgspec.Raw) else value
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def _members(record: Any) -> dict[str, Any] | None:
    """A record's keys and values (a JSON one's values left undecoded); None if it is no object."""
    if isinstance(record, msgspec.Raw):
        if len(record) > ID_ONLY_MAX_BYTES:
            return None
        try:
            return _decode_members(record)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # not an object: the pipeline says what is wrong with it
    return record if isinstance(record, dict) else None


def check_fetchable(entity: Entity, record: Any, zoho_id: str, position: int) -> None:
    """Refuse an id-only record that cannot be fetched for `entity`, saying what to fix."""
    where = f"record {position} of this {entity.name} request"
    if "${" in zoho_id:
        raise UnsubstitutedMergeField(
            f"{where}: the id is {zoho_id[:60]!r}, a workflow merge field that Zoho did not substitute; "
            f"in the webhook's body, insert the record id from the merge-field list (${{!{entity.source}.Id}}) "
            "so that Zoho sends the id itself; nothing was fetched or synced"
        )
    module = (_members(record) or {}).get("module")
    module = decode_json(module) if isinstance(module, msgspec.Raw) else module
    if module is not None and (not isinstance(module, str) or module.lower() != entity.source.lower()):
        raise WrongModule(
            f"{where}: its module is {str(module)[:60]!r}, but /v1/sync/{entity.name} takes Zoho module "
            f"{entity.source}: point this webhook at the endpoint of its module's entity (GET /v1/entities lists "
            "them), or fix its `module`; nothing was fetched or synced"
        )


async def _sync(
    engine: SyncEngine,
    zoho: ZohoClient | NoZohoCredentials,
    tenant: str,
    entity: str,
    records: Sequence[Any],
    wanted: dict[int, str],
    dry_run: bool,
    answer: Answer | None,
) -> SyncReport:
    if not wanted:
        return await engine.sync(tenant, entity, records, dry_run=dry_run, answer=answer)
    described = engine.catalog.entity(entity)
    for position, zoho_id in wanted.items():
        check_fetchable(described, records[position], zoho_id, position)
    found = await _fetch(zoho, described.name, described.source, wanted.values())
    batch: list[Any] = []
    skipped: dict[int, RecordResult] = {}
    for position, record in enumerate(records):
        got = found[wanted[position]] if position in wanted else record
        if isinstance(got, RecordResult):
            skipped[position] = got
        else:
            batch.append(got)
    if answer is not None and skipped:
        answer = dataclasses.replace(answer, render=_merged_render(answer, skipped))
    report = await engine.sync(tenant, entity, batch, dry_run=dry_run, answer=answer)
    return _merge(report, skipped)


def _id_only_positions(records: Sequence[Any]) -> dict[int, str]:
    """The id of each id-only record, by its position in `records`."""
    return {position: zoho_id for position, record in enumerate(records) if (zoho_id := id_only(record))}


async def _fetch(
    zoho: ZohoClient | NoZohoCredentials, entity: str, module: str, ids: Iterable[str]
) -> dict[str, dict[str, Any] | RecordResult]:
    """Each id's record from Zoho, or its result (SKIPPED, with Zoho's code as the reason)."""
    ids = list(dict.fromkeys(ids))
    fetched: dict[str, dict[str, Any] | RecordResult] = {i: _not_an_id(i) for i in ids if not ZOHO_ID.fullmatch(i)}
    ids = [i for i in ids if i not in fetched]
    if isinstance(zoho, NoZohoCredentials):
        return fetched | {i: RecordResult(i, "SKIPPED", str(zoho), reason=zoho.code) for i in ids}
    if not ids:
        return fetched
    try:
        found = await zoho.get_records(module, ids)
    except ZohoUnavailable as error:
        raise ZohoUnreachable(entity, error) from None
    except ZohoError as error:  # the whole call refused: each id-only record says why
        return fetched | {i: _skipped(i, str(error), error.zoho_code) for i in ids}
    for zoho_id, got in found.items():
        if isinstance(got, RecordError):
            message = f"Zoho answered {got.code} for {module} record {zoho_id}: {got.message}; {got.hint}"
            fetched[zoho_id] = _skipped(zoho_id, message, got.code)
        else:
            fetched[zoho_id] = got
    return fetched


def _not_an_id(zoho_id: str) -> RecordResult:
    problem = (
        f"{zoho_id[:60]!r} is no Zoho record id (1 to 20 digits), and the record holds nothing else, "
        "so there is nothing to fetch or sync"
    )
    message = f"{problem}: send the record's Zoho id, or the whole record"
    return RecordResult(zoho_id, "INVALID", message, errors=[FieldError("id", problem)])


def _skipped(zoho_id: str, message: str, code: str) -> RecordResult:
    return RecordResult(zoho_id, "SKIPPED", f"not fetched from Zoho: {message}; nothing was written", reason=code)


def _merge(report: SyncReport, skipped: Mapping[int, RecordResult]) -> SyncReport:
    """`report` (of the records synced) with the skipped records' results put back in their places."""
    if not skipped:
        return report
    synced = iter(report.results)
    total = len(report.results) + len(skipped)
    results = [skipped[position] if position in skipped else next(synced) for position in range(total)]
    return SyncReport(report.entity, report.id_key, results, report.dry_run)


def _merged_render(answer: Answer, skipped: Mapping[int, RecordResult]) -> Callable[[SyncReport], bytes]:
    render = answer.render

    def merged(report: SyncReport) -> bytes:
        return render(_merge(report, skipped))

    return merged
