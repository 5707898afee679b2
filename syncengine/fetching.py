"""Records that name nothing but their Zoho id: fetched from the tenant's Zoho CRM, then synced.

    async with await open_zoho(engine.database, "school") as zoho:
        report = await fetch_and_sync(engine, zoho, "school", "enrollments", ["6284103000002402077"])

`sync_fetching` takes a batch as it arrived (full records, id-only ones, deletions, in any mix):
the id-only records (`id_only`) are fetched, 100 ids a call, and replaced by what Zoho answered;
then the whole batch goes through one `engine.sync`. The report has one result per record, in
the order given. An id Zoho answers with an error (NO_PERMISSION, NOT_FOUND, ...) is that
record's result: SKIPPED, `reason` Zoho's code, the message what happened and what to do. A
refusal of the whole call (the credentials, the module, the scope) is every id-only record's
result the same way, and full records still sync. Zoho unreachable or throttled past the client's
retries is `ZohoUnreachable` (a 503 over HTTP, with Retry-After): nothing is synced, the sender
retries. An id still holding a workflow's merge field (`${!Module.Id}`) or any text that is not a
Zoho id is refused before any call (`UnsubstitutedMergeField`, `NotZohoId`: 400s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from syncengine.engine import SyncEngine
from syncengine.exceptions import BadInput, Unavailable
from syncengine.idempotency import Answer
from syncengine.parsing import DELETED_KEY, ID_KEYS
from syncengine.report import RecordResult, SyncReport
from syncengine.zoho import ZOHO_ID, RecordError, ZohoClient, ZohoError, ZohoUnavailable
from syncengine.zoho_sites import NoZohoCredentials

Operation = Literal["insert", "update", "delete"]
#: A JSON record longer than this is a full record, never an id-only one: not decoded to look.
ID_ONLY_MAX_BYTES = 2048
_decode_members = msgspec.json.Decoder(dict[str, Any]).decode


class UnsubstitutedMergeField(BadInput):
    """An id is still a workflow's merge field (`${!Module.Id}`): the webhook is set up wrong."""

    code = "merge_field_not_substituted"


class NotZohoId(BadInput):
    """An id-only record's id cannot be a Zoho record id (1 to 20 digits)."""

    code = "invalid_zoho_id"


class ZohoUnreachable(Unavailable):
    """Zoho did not answer, or kept throttling, past the client's retries; nothing was synced.
    `retry_after` is seconds to wait (Zoho's own wish where it said one)."""

    code = "zoho_unavailable"

    def __init__(self, entity: str, error: ZohoUnavailable) -> None:
        self.retry_after = max(1, round(error.retry_after)) if error.retry_after is not None else 30
        super().__init__(
            f"could not fetch the id-only {entity} records from Zoho: {error.where} failed with {error.code} "
            f"(HTTP {error.status}) after the client's retries; nothing of this request was synced: "
            f"send it again after {self.retry_after} seconds"
        )


def id_only(record: Any) -> str | None:
    """The Zoho id of a record that holds nothing but its id (`id` or `zoho_id`) and `$` meta
    keys, as text; None for any other record (a deletion, `"$deleted": true`, is not id-only).

        >>> id_only({"zoho_id": "6284103000002402077", "$approval_state": "approved"})
        '6284103000002402077'
    """
    if isinstance(record, msgspec.Raw):
        if len(record) > ID_ONLY_MAX_BYTES:
            return None
        try:
            record = _decode_members(record)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # not an object: the pipeline says what is wrong with it
    if not isinstance(record, dict) or record.get(DELETED_KEY):
        return None
    ids = [record[key] for key in ID_KEYS if key in record]
    if len(ids) != 1 or any(not key.startswith("$") and key not in ID_KEYS for key in record):
        return None
    value = ids[0]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def check_fetchable(entity: str, zoho_id: str, position: int) -> None:
    """Refuse an id-only record's id that no Zoho record can have, saying what to fix."""
    where = f"record {position} of this {entity} request"
    if "${" in zoho_id:
        raise UnsubstitutedMergeField(
            f"{where}: the id is {zoho_id[:60]!r}, a workflow merge field that Zoho did not substitute; "
            "in the webhook's body, pick the record id from the merge-field list (it reads ${!Module.Id} "
            "with the module's name) so that Zoho sends the id itself; nothing was fetched or synced"
        )
    if not ZOHO_ID.fullmatch(zoho_id):
        raise NotZohoId(
            f"{where}: {zoho_id[:60]!r} names nothing else, so it is fetched from Zoho, but it is no Zoho "
            "record id (1 to 20 digits): send the record's Zoho id, or the whole record; nothing was fetched or synced"
        )


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
    described = engine.catalog.entity(entity)
    wanted = {position: zoho_id for position, record in enumerate(records) if (zoho_id := id_only(record))}
    if not wanted:
        return await engine.sync(tenant, entity, records, dry_run=dry_run, answer=answer)
    for position, zoho_id in wanted.items():
        check_fetchable(described.name, zoho_id, position)
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


async def _fetch(
    zoho: ZohoClient | NoZohoCredentials, entity: str, module: str, ids: Iterable[str]
) -> dict[str, dict[str, Any] | RecordResult]:
    """Each id's record from Zoho, or its result (SKIPPED, with Zoho's code as the reason)."""
    ids = list(dict.fromkeys(ids))
    if isinstance(zoho, NoZohoCredentials):
        return {i: RecordResult(i, "SKIPPED", str(zoho), reason=zoho.code) for i in ids}
    try:
        found = await zoho.get_records(module, ids)
    except ZohoUnavailable as error:
        raise ZohoUnreachable(entity, error) from None
    except ZohoError as error:  # the whole call refused: each id-only record says why
        return {i: _skipped(i, str(error), error.code) for i in ids}
    fetched: dict[str, dict[str, Any] | RecordResult] = {}
    for zoho_id, got in found.items():
        if isinstance(got, RecordError):
            message = f"Zoho answered {got.code} for {module} record {zoho_id}: {got.message}; {got.hint}"
            fetched[zoho_id] = _skipped(zoho_id, message, got.code)
        else:
            fetched[zoho_id] = got
    return fetched


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


def _merged_render(answer: Answer, skipped: Mapping[int, RecordResult]) -> Any:
    render = answer.render

    def merged(report: SyncReport) -> bytes:
        return render(_merge(report, skipped))

    return merged
