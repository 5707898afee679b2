"""The pipeline: parse -> validate -> fingerprint -> resolve lookups -> upsert -> outbox -> report.

One code path for every entity; the `Entity` descriptor says what to do. A batch costs a few
set-based statements, never one per record:

1. fetch the stored rows of the batch's ids, with their versions (for records not parsed yet,
   while Python parses them: see `read_ahead`);
2. resolve lookup ids that the stored rows do not already link, and that were not seen live in
   the last seconds (one statement for every target);
3. decide every record in input order, in memory, each against the state the one before left;
4. write the final state of every touched row (a plain insert for rows the fetch did not find,
   an update of the others where still at the version fetched: see store.py), and queue a
   delivery for each changed row of an entity that lands in Moodle (one statement on
   PostgreSQL, up to three on SQLite).

On PostgreSQL a large batch is decided and written in parts (the store's `part_records`): while
the server writes one part, Python decides the next (steps 3 and 4 overlap). A row is written
once, after the last part its id appears in.

Records are patches: a field absent from a record keeps its stored value; a field sent as null
(or "", or Zoho's "-None-") is cleared, or set to its default.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from msgspec import UNSET, UnsetType
from msgspec.structs import asdict

from syncengine.descriptors import Entity, Field, lookup_columns
from syncengine.fieldtypes import (
    EMPTY_VALUES,
    FIELD_TYPES,
    ID_LENGTH,
    RFC3339,
    TOO_LARGE,
    FastType,
    Options,
    TooLarge,
    check_id,
    to_utc,
)
from syncengine.report import FieldError, RecordResult, SyncReport
from syncengine.store import Rows, Store

#: A record carrying `"$deleted": true` is a deletion in the source (see payloads.py).
DELETED_KEY = "$deleted"
ID_KEYS = ("id", "zoho_id")
_DATETIME = FIELD_TYPES["datetime"]
_NO_OPTIONS = Options()
_IDENTITY = FIELD_TYPES["string"].from_db
_ABSENT = object()
#: The columns of an outbox row, in the order `sync_batch` gives their values.
OUTBOX_COLUMNS = ("tenant_id", "entity", "zoho_id", "operation", "next_attempt_at", "created_at")
#: Records parsed between two looks at the fetch running meanwhile (`_parse_while_reading`).
PARSE_STEP = 50
#: How long a process trusts a lookup target's id it has seen live (see `LookupCache`).
LOOKUP_CACHE_SECONDS = 5.0
_encode = msgspec.json.Encoder().encode
#: JSON numbers with a fraction or an exponent become Decimal, never float: 4500.1 stays exact.
_decode = msgspec.json.Decoder(float_hook=Decimal).decode
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_items = msgspec.json.Decoder(list[msgspec.Raw]).decode


class Incoming(msgspec.Struct):
    """A record after parsing and validation: what it says, and what is wrong with it.

    A Struct rather than a dataclass: it is made once per record, and msgspec makes it in C.
    """

    zoho_id: str | None
    values: dict[str, Any]
    version: dt.datetime | None = None
    delete: bool = False
    errors: dict[str, str] = msgspec.field(default_factory=dict)


class Stored:
    """A row's state: what the database holds, then what the batch has made of it.

    A fetched row's values are read out of it only when a decision needs them: an unchanged
    record is decided on the fingerprint alone, so an UNCHANGED batch builds no value dicts.
    """

    __slots__ = ("_links", "_row", "_values", "deleted", "fingerprint", "plan", "version")

    def __init__(
        self,
        values: dict[str, Any] | None,
        links: dict[str, int | None] | None,
        fingerprint: str,
        version: dt.datetime | None,
        deleted: bool,
        row: Sequence[Any] = (),
        plan: _EntityPlan | None = None,
    ) -> None:
        self._values, self._links, self._row, self.plan = values, links, row, plan
        self.fingerprint, self.version, self.deleted = fingerprint, version, deleted

    @property
    def values(self) -> dict[str, Any]:
        if self._values is None:
            plan = self.plan
            assert plan is not None
            values = dict(zip(plan.names, self._row[4 : 4 + len(plan.names)], strict=True))
            for name, convert in plan.converters:
                if values[name] is not None:
                    values[name] = convert(values[name])
            self._values = values
        return self._values

    @property
    def row_version(self) -> Any:
        """The fetched row's version (`Store.fetch`)."""
        return self._row[-1]

    @property
    def links(self) -> dict[str, int | None]:
        if self._links is None:
            plan = self.plan
            assert plan is not None
            first = 4 + len(plan.names)  # after the links comes the row's version (`Store.fetch`)
            self._links = dict(zip(plan.links, self._row[first : first + len(plan.links)], strict=True))
        return self._links


@dataclass(frozen=True)
class EntityTables:
    """An entity with its table and the outbox, as the pipeline needs them."""

    entity: Entity
    table: sa.Table
    outbox: sa.Table
    targets: dict[str, sa.Table]
    singulars: dict[str, str]

    @functools.cached_property
    def fetch_columns(self) -> tuple[sa.Column[Any], ...]:
        """What the pipeline reads of a stored row: its state, its values, then its lookups' local ids."""
        table = self.table
        system = (table.c.zoho_id, table.c.fingerprint, table.c.source_version, table.c.deleted_at)
        values = tuple(table.c[f.value_column] for f in self.entity.fields)
        return system + values + tuple(table.c[lookup_columns(f.name)[1]] for f in self.entity.lookups)


def parse_record(entity: Entity, raw: Any) -> Incoming:
    """Validate one raw Zoho record against its descriptor, collecting every field error."""
    return _parse(entity, _plan(entity), raw)


def parse_records(entity: Entity, records: Iterable[Any]) -> list[Incoming]:
    """`parse_record` for each record: the pipeline's first step, which needs no database.

    A record may also be the JSON text of one, as a `msgspec.Raw` (see `payloads.parse_body`):
    it is then decoded straight into the entity's Struct, and decoded as plain JSON only if
    that fails.
    """
    plan = _plan(entity)
    return [_parse(entity, plan, raw) for raw in records]


@dataclass(frozen=True, slots=True)
class Unparsed:
    """Records not parsed yet, and their ids as parsing reads them (`read_ahead`): a batch
    fetches the stored rows of these ids while Python parses the records."""

    records: Sequence[Any]
    ids: set[str]


def read_ahead(entity: Entity, records: Iterable[Any]) -> Unparsed | list[Incoming]:
    """A batch to sync: when every record is a JSON object, the records with their ids read
    ahead (`Unparsed`, parsed while the database fetches those ids); else parsed now."""
    records = records if isinstance(records, list | tuple) else list(records)
    if any(raw.__class__ is not dict for raw in records):
        return parse_records(entity, records)
    return Unparsed(records, {zoho_id for raw in records if (zoho_id := _zoho_id(raw)) is not None})


def _parse(entity: Entity, plan: _EntityPlan, raw: Any) -> Incoming:
    if plan.fast is not None:
        try:
            if raw.__class__ is dict:
                return _parse_fast(plan, msgspec.convert(raw, plan.fast, strict=True))
            if raw.__class__ is msgspec.Raw:
                return _parse_fast(plan, plan.fast_decode(raw))
        except (ValueError, OverflowError):  # msgspec's ValidationError is a ValueError
            pass
    if raw.__class__ is msgspec.Raw:
        raw = decode_json(raw)
    return _parse_slow(entity, plan, raw)


def decode_json(data: bytes | msgspec.Raw) -> Any:
    """JSON as the field types read it: a number with a fraction or an exponent as a Decimal,
    and an integer msgspec cannot read (beyond 64 bits) as `TOO_LARGE` in its place, so that the
    field holding it is refused and the rest of its record is read. Malformed JSON raises
    `msgspec.DecodeError`.

        >>> decode_json(b'{"Price": 4500.1, "Count": 100000000000000000000}')
        {'Price': Decimal('4500.1'), 'Count': an integer beyond 64 bits}
    """
    try:
        return _decode(data)
    except msgspec.ValidationError:  # only numbers fail so: the rest is read member by member
        pass
    try:
        return {key: decode_json(value) for key, value in _decode_members(data).items()}
    except msgspec.ValidationError:
        pass
    try:
        return [decode_json(item) for item in _decode_items(data)]
    except msgspec.ValidationError:
        return TOO_LARGE


def _parse_fast(plan: _EntityPlan, struct: msgspec.Struct) -> Incoming:
    """A clean record, validated by msgspec in C as the entity's Struct (`_fast_struct`).

    Whatever gets through here, `_parse_slow` reads the same way (a differential test holds them
    to it); anything else raises ValueError (or OverflowError) and goes the slow way, which says
    what is wrong. Deletions go the slow way too.
    """
    values = asdict(struct)
    if values.pop("DELETED") is True:
        raise ValueError("a deletion")
    zoho_id = values.pop("ID")
    if not zoho_id.isprintable() or zoho_id.strip() != zoho_id:
        raise ValueError("an id to strip or to refuse")
    version = values.pop("VERSION", None)
    if version is not None:
        version = None if version is UNSET else to_utc(version)
    if UNSET in values.values():
        values = {name: value for name, value in values.items() if value is not UNSET}
    for name, finish in plan.fast_finishers:
        value = values.get(name)
        if value is not None:
            values[name] = finish(value)
    return Incoming(zoho_id, values, version, False, {})


def _parse_slow(entity: Entity, plan: _EntityPlan, raw: Any) -> Incoming:
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else "null" if raw is None else type(raw).__name__
        kind = repr(raw) if isinstance(raw, TooLarge) else kind
        return Incoming(None, {}, errors={"(record)": f"expected a JSON object, got {kind}"})
    incoming = Incoming(_zoho_id(raw), {}, delete=raw.get(DELETED_KEY) is True)
    if incoming.zoho_id is None:
        incoming.errors["id"] = "missing: every record needs its Zoho record id in 'id'"
    else:
        try:
            check_id(incoming.zoho_id)
        except ValueError as error:
            incoming.zoho_id, incoming.errors["id"] = None, str(error)
    if entity.version_field is not None:
        raw_version = raw.get(entity.version_field)
        if not _is_empty(raw_version):
            try:
                incoming.version = _DATETIME.parse(raw_version, _NO_OPTIONS)
            except ValueError as error:
                incoming.errors[entity.version_field] = str(error)
    if incoming.delete:
        return incoming
    values = incoming.values
    for name, source, parse, options in plan.parsers:
        value = raw.get(source, _ABSENT)
        if value is _ABSENT:
            continue
        try:
            values[name] = None if value is None else _parsed(parse, options, value)
        except ValueError as error:
            incoming.errors[source] = str(error)
    return incoming


def _parsed(parse: Callable[[Any, Options], Any], options: Options, value: Any) -> Any:
    """A present, non-null value as its field's parser reads it; an empty one is None."""
    if value.__class__ is str and value in EMPTY_VALUES:
        return None
    parsed = parse(value, options)
    return None if parsed == "" or parsed == [] else parsed


def fingerprint(entity: Entity, values: dict[str, Any]) -> str:
    """SHA-256 of the mapped values, keyed by Zoho name; empty fields leave no trace.

    Leaving empty fields out means adding a field to a descriptor does not change the
    fingerprint of records that do not have it.
    """
    return _fingerprint(_plan(entity), {f.name: values.get(f.name) for f in entity.fields})


def _fingerprint(plan: _EntityPlan, values: dict[str, Any]) -> str:
    """`fingerprint` of values holding every field: the entity's fingerprint Struct, its fields
    in sorted Zoho-name order and null ones left out, encodes to the bytes of the sorted JSON."""
    return hashlib.sha256(_encode(plan.canonical(*plan.canonical_values(values)))).hexdigest()


def _canonical_struct(entity: Entity) -> tuple[type[msgspec.Struct], Callable[[dict[str, Any]], tuple[Any, ...]]]:
    """The fingerprint's Struct (see `_fingerprint`), and what takes its values out of a dict."""
    fields = sorted(entity.fields, key=lambda f: f.source)
    struct = msgspec.defstruct(
        f"{entity.name}_canonical",
        [(f"f{i}", Any, None) for i in range(len(fields))],
        rename={f"f{i}": f.source for i, f in enumerate(fields)},
        omit_defaults=True,
    )
    if len(fields) == 1:
        name = fields[0].name
        return struct, lambda values: (values[name],)
    return struct, operator.itemgetter(*(f.name for f in fields))


@dataclass(frozen=True, slots=True)
class _EntityPlan:
    """What the per-record loops need of an entity, looked up once instead of per record."""

    parsers: tuple[tuple[str, str, Any, Options], ...]
    #: The fast path (`_parse_fast`): the entity's Struct (None: there is none), its JSON
    #: decoder, and the function finishing each field that has one.
    fast: type[msgspec.Struct] | None
    fast_decode: Callable[[msgspec.Raw], msgspec.Struct]
    fast_finishers: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: The fingerprint's Struct and what takes its values out of a record's (`_canonical_struct`).
    canonical: type[msgspec.Struct]
    canonical_values: Callable[[dict[str, Any]], tuple[Any, ...]]
    names: tuple[str, ...]
    required: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...]
    converters: tuple[tuple[str, Any], ...]
    #: How a row is laid out: (field name, value column, local-id column of a lookup or None).
    columns: tuple[tuple[str, str, str | None], ...]
    #: The columns of a written row, in the order `_Batch.row` gives its values.
    row_names: tuple[str, ...]
    #: The lookup fields, and where a fetched row holds each one's zoho id and local id.
    links: tuple[str, ...]
    link_positions: tuple[tuple[str, int, int], ...]  # (target entity, zoho id's position, local id's)


_PLANS: dict[int, tuple[Entity, _EntityPlan]] = {}


def _plan(entity: Entity) -> _EntityPlan:
    cached = _PLANS.get(id(entity))
    if cached is not None and cached[0] is entity:
        return cached[1]
    fields = entity.fields
    fast = tuple((f, _fast_type(f)) for f in fields)
    canonical = _canonical_struct(entity)
    struct = _fast_struct(entity, tuple((f, kind) for f, (kind, _) in fast))
    plan = _EntityPlan(
        parsers=tuple((f.name, f.source, f.type.parse, f.options) for f in fields),
        fast=struct,
        fast_decode=msgspec.json.Decoder(struct, float_hook=Decimal).decode if struct is not None else _decode,
        fast_finishers=tuple((f.name, finish) for f, (_, finish) in fast if finish is not None),
        canonical=canonical[0],
        canonical_values=canonical[1],
        names=tuple(f.name for f in fields),
        required=tuple(f.name for f in fields if f.required),
        defaults=tuple((f.name, f.default) for f in fields if f.default is not None),
        converters=tuple((f.name, f.type.from_db) for f in fields if f.type.from_db is not _IDENTITY),
        columns=tuple((f.name, *lookup_columns(f.name)) if f.is_lookup else (f.name, f.name, None) for f in fields),
        row_names=(
            "tenant_id",
            "zoho_id",
            *(name for f in fields for name in (lookup_columns(f.name) if f.is_lookup else (f.name,))),
            *("fingerprint", "source_version", "created_at", "updated_at", "deleted_at"),
        ),
        links=tuple(f.name for f in entity.lookups),
        link_positions=tuple(
            (f.target or "", 4 + fields.index(f), 4 + len(fields) + i) for i, f in enumerate(entity.lookups)
        ),
    )
    _PLANS[id(entity)] = (entity, plan)
    return plan


def _fast_type(field: Field) -> FastType:
    """The field type's fast type; for a type without one, any JSON value, which its parser finishes."""
    return field.type.fast(field.options) or (Any, functools.partial(_parsed, field.type.parse, field.options))


def _fast_struct(entity: Entity, fields: tuple[tuple[Field, Any], ...]) -> type[msgspec.Struct] | None:
    """The Struct `_parse_fast` takes a record as: its id (as `ID`), `$deleted` (as `DELETED`),
    its version (as `VERSION`, where the entity has one), then each field (with its msgspec type)
    under its own name, which is lower case; each but the id is absent (UNSET) or null as the
    record says."""
    keys = [
        "id",
        DELETED_KEY,
        *([entity.version_field] if entity.version_field else []),
        *(f.source for f, _ in fields),
    ]
    if len(set(keys)) != len(keys):
        return None  # a descriptor naming the same key twice: parse the slow way only
    optional = [
        ("DELETED", DELETED_KEY, bool),
        *([("VERSION", entity.version_field, RFC3339)] if entity.version_field else []),
        *((f.name, f.source, kind) for f, kind in fields),
    ]
    return msgspec.defstruct(
        f"{entity.name}_fast",
        [
            ("ID", Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH)]),
            *((name, kind | None | UnsetType, UNSET) for name, _, kind in optional),
        ],
        rename={"ID": "id", **{name: source for name, source, _ in optional}},
    )


class LookupCache:
    """Local ids of live lookup targets, per tenant and target entity, remembered for `ttl` seconds.

    A batch of new children whose parents were seen in the last seconds then resolves its
    lookups without a statement. Only ids found live are remembered: a parent that is not
    synced yet is asked for every time, so it counts as soon as it lands. This process forgets
    an entity's ids whenever it deletes one of its records; a delete made by another process is
    seen at the latest `ttl` seconds later (until then a new child may link to the deleted row,
    as a stored child already does).
    """

    def __init__(self, ttl: float = LOOKUP_CACHE_SECONDS, limit: int = 200_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._blocks: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}

    def ids(self, tenant: str, target: str) -> dict[str, int]:
        """The remembered {zoho_id: local id} of one tenant's target; the caller may add to it."""
        now = time.monotonic()
        block = self._blocks.get((tenant, target))
        if block is None or block[0] <= now or len(block[1]) > self.limit:
            block = self._blocks[(tenant, target)] = (now + self.ttl, {})
        return block[1]

    def forget(self, tenant: str, target: str) -> None:
        self._blocks.pop((tenant, target), None)


async def sync_batch(
    conn: Any,
    store: Store,
    tables: EntityTables,
    tenant: str,
    incoming: Sequence[Incoming] | Unparsed,
    lookups: LookupCache | None = None,
    on_fetched: Callable[[set[str]], None] | None = None,
    part_records: int | None = None,
    hold: bool = False,
    ids: set[str] | None = None,
    version_skew: dt.timedelta | None = None,
) -> SyncReport:
    """Run the rest of the pipeline on one batch of parsed records (`parse_records`) inside the
    caller's transaction (`conn`, from `store.transaction`). Records not parsed yet
    (`read_ahead`) are parsed while the database fetches their ids.

    `on_fetched` is called with the batch's ids once it has read their rows (the engine's lanes
    start a batch of other records then, and keep one that shares records waiting). A batch of
    at least twice `part_records` records is decided and written in parts of about that many
    (see `_parts`); each part costs one statement more. With `hold`, no other writer of the
    table and tenant runs beside the transaction (`Store.fetch`). `ids` are the parsed
    records' ids, when the caller has them already. A version more than `version_skew` ahead of
    the clock is INVALID.
    """
    if isinstance(incoming, Unparsed):
        incoming, ids, state, known = await _parse_while_reading(conn, store, tables, tenant, incoming, hold)
    else:
        if ids is None:
            ids = {record.zoho_id for record in incoming if record.zoho_id is not None}
        state, known = await _fetch_state(conn, store, tables, tenant, ids, hold)
    if on_fetched is not None:
        on_fetched(ids)
    resolved = await _resolve_lookups(conn, store, tables, tenant, incoming, known, lookups)
    batch = _Batch(tables, state, resolved, tenant, dt.datetime.now(dt.UTC), version_skew)
    results: list[RecordResult] = []
    parts = _parts(incoming, part_records)
    last_part = _last_part(parts)
    writing: asyncio.Task[None] | None = None
    try:
        for index, part in enumerate(parts):
            results += map(batch.apply, part)
            new, changed, deliveries = batch.take(last_part, index)
            if lookups is not None and batch.deleted:
                lookups.forget(tenant, tables.entity.name)  # a record may no longer point to it
            if writing is not None:
                await writing
                writing = None
            if not (new.values or changed.values):
                continue
            if index + 1 == len(parts):
                await store.write(conn, new, changed, deliveries)
            else:
                writing = asyncio.create_task(store.write(conn, new, changed, deliveries))
                await asyncio.sleep(0)  # the statement goes out; the next part is decided while it runs
    finally:
        if writing is not None:  # something failed while a part was being written
            await _abandon(writing)
    return SyncReport(tables.entity.name, tables.entity.id_key, results)


async def _abandon(statement: asyncio.Task[Any]) -> None:
    """Wait for a statement in flight to end, so that the transaction can roll back on its
    connection; the failure that got here is the one reported, not this one's."""
    await asyncio.wait([statement])
    if not statement.cancelled():
        statement.exception()


def _parts(incoming: Sequence[Incoming], size: int | None) -> list[Sequence[Incoming]]:
    """A batch split for writing: each part is written while the next is decided."""
    if size is None or len(incoming) < 2 * size:
        return [incoming]
    count = len(incoming) // size
    size = -(-len(incoming) // count)
    return [incoming[start : start + size] for start in range(0, len(incoming), size)]


def _last_part(parts: list[Sequence[Incoming]]) -> dict[str, int] | None:
    """The last part each id appears in: a row is written once, with the state its last record left."""
    if len(parts) == 1:
        return None
    return {record.zoho_id: index for index, part in enumerate(parts) for record in part if record.zoho_id is not None}


async def _parse_while_reading(
    conn: Any, store: Store, tables: EntityTables, tenant: str, unparsed: Unparsed, hold: bool
) -> tuple[list[Incoming], set[str], dict[str, Stored], dict[str, dict[str, int]]]:
    """Parse the records while the database fetches the ids read ahead; the records, their
    ids, and what `_fetch_state` gives."""
    reading = asyncio.create_task(_fetch_state(conn, store, tables, tenant, unparsed.ids, hold))
    records = unparsed.records
    incoming: list[Incoming] = []
    try:
        for start in range(0, len(records), PARSE_STEP):
            if not reading.done():
                await asyncio.sleep(0)  # BEGIN, then the fetch, go out as soon as they can
            incoming += parse_records(tables.entity, records[start : start + PARSE_STEP])
    except BaseException:
        await _abandon(reading)
        raise
    state, known = await reading
    ids = {record.zoho_id for record in incoming if record.zoho_id is not None}
    missing = ids - unparsed.ids
    if missing:  # ids read ahead otherwise than the parser reads them: those are fetched now
        more_state, more_known = await _fetch_state(conn, store, tables, tenant, missing, hold)
        state.update(more_state)
        for target, links in more_known.items():
            known[target].update(links)
    return incoming, ids | unparsed.ids, state, known


async def _fetch_state(
    conn: Any, store: Store, tables: EntityTables, tenant: str, ids: set[str], hold: bool = False
) -> tuple[dict[str, Stored], dict[str, dict[str, int]]]:
    """The stored rows of `ids` (`Stored`, with their versions: `Store.fetch`), and the local ids
    of the lookup targets they link to, per target entity: {target: {zoho_id: id}}."""
    known: dict[str, dict[str, int]] = {target: {} for target in tables.targets}
    if not ids:
        return {}, known
    rows = await store.fetch(conn, tables.fetch_columns, tenant, ids, hold=hold)
    plan = _plan(tables.entity)
    from_db = _DATETIME.from_db
    state = {}
    for row in rows:
        zoho_id, fprint, version, deleted_at = row[0], row[1], row[2], row[3]
        version = None if version is None else from_db(version)
        state[zoho_id] = Stored(None, None, fprint, version, deleted_at is not None, row, plan)
    for target, value, link in plan.link_positions:  # one pass per lookup, with its dict at hand
        links = known[target]
        for row in rows:
            target_id, local_id = row[value], row[link]
            if target_id is not None and local_id is not None:
                links[target_id] = local_id
    return state, known


async def _resolve_lookups(
    conn: Any,
    store: Store,
    tables: EntityTables,
    tenant: str,
    incoming: Sequence[Incoming],
    known: dict[str, dict[str, int]],
    lookups: LookupCache | None,
) -> dict[str, dict[str, int]]:
    """Local row ids of the lookup targets, per target entity: {target: {zoho_id: id}}.

    The links stored rows already hold (`known`, which this adds to) are reused, so an unchanged
    batch queries nothing here; so are the ids `lookups` remembers.
    """
    remembered = {target: lookups.ids(tenant, target) if lookups else {} for target in tables.targets}
    resolved = known
    wanted: dict[str, set[str]] = {target: set() for target in tables.targets}
    for fld in tables.entity.lookups:
        name, target = fld.name, fld.target
        assert target is not None
        have, memory, want = resolved[target], remembered[target], wanted[target]
        for record in incoming:
            zoho_id = record.values.get(name)
            if zoho_id is None or zoho_id in have:
                continue
            local_id = memory.get(zoho_id)
            if local_id is not None:
                have[zoho_id] = local_id
            else:
                want.add(zoho_id)
    if any(wanted.values()):
        query = {target: (tables.targets[target], zoho_ids) for target, zoho_ids in wanted.items()}
        for target, found in (await store.resolve(conn, query, tenant)).items():
            resolved[target].update(found)
            remembered[target].update(found)
    return resolved


class _Batch:
    """Decides each record of a batch in order, keeping the state every decision leaves."""

    def __init__(
        self,
        tables: EntityTables,
        state: dict[str, Stored],
        resolved: dict[str, dict[str, int]],
        tenant: str,
        now: dt.datetime,
        version_skew: dt.timedelta | None = None,
    ) -> None:
        self.tables = tables
        self.tenant = tenant
        self.now = now
        #: Versions later than this are refused: a clock far ahead would freeze a record for good.
        self.horizon = None if version_skew is None else now + version_skew
        self.entity = tables.entity
        #: The ids the batch found stored (deleted or not), with each row's version (`Store.fetch`):
        #: every other row it writes is new.
        self.found = {zoho_id: stored.row_version for zoho_id, stored in state.items()}
        self.plan = _plan(tables.entity)
        self.singulars = tables.singulars
        self.state = state
        self.resolved = resolved
        self.dirty: dict[str, None] = {}
        self.deliveries: dict[str, str] = {}
        #: Whether a record of the batch was deleted so far.
        self.deleted = False

    def apply(self, record: Incoming) -> RecordResult:
        previous = self.state.get(record.zoho_id) if record.zoho_id is not None else None
        live = previous if previous is not None and not previous.deleted else None
        if record.errors or record.zoho_id is None:
            return self._invalid(record, live)
        if record.version is not None and self.horizon is not None and record.version > self.horizon:
            return self._invalid(record, live, problems={self.entity.version_field or "": self._too_late(record)})
        if previous is not None:
            stale = self._stale(record, previous)
            if stale is not None:
                return stale
        if record.delete:
            return self._delete(record, previous, live)
        values = self._merge(record, live)
        for name in self.plan.required:
            if values[name] is None:
                return self._invalid(record, live, values)
        broken = _broken_rules(self.entity, values)
        if broken:
            return self._invalid(record, live, values, broken)
        fprint = _fingerprint(self.plan, values)
        version = _newest(record.version, previous.version if previous else None)
        if live is not None and fprint == live.fingerprint:
            if version != live.version:
                live.version = version
                self.dirty[record.zoho_id] = None
            return RecordResult(record.zoho_id, "UNCHANGED", "no change")
        links: dict[str, int | None] = {}
        for fld in self.entity.lookups:
            zoho_id = values[fld.name]
            links[fld.name] = None if zoho_id is None else self.resolved[fld.target].get(zoho_id)  # type: ignore[index]
            if fld.required and links[fld.name] is None:
                singular = self.singulars[fld.target]  # type: ignore[index]
                return RecordResult(
                    record.zoho_id,
                    "SKIPPED",
                    f"{fld.source} points to {singular} {zoho_id}, which is not synced yet for this tenant; "
                    f"sync that {singular} first, then send this record again",
                    reason=f"{singular}_not_synced_yet",
                )
        self.state[record.zoho_id] = Stored(values, links, fprint, version, deleted=False)
        self.dirty[record.zoho_id] = None
        self.deliveries[record.zoho_id] = "upsert"
        if live is None:
            message = "restored: it had been deleted" if previous is not None else "created"
            return RecordResult(record.zoho_id, "NEW", message)
        changes = {
            f.source: [live.values[f.name], values[f.name]]
            for f in self.entity.fields
            if live.values[f.name] != values[f.name]
        }
        if not changes:  # the stored values, fingerprinted before they were normalised: no delivery
            del self.deliveries[record.zoho_id]
            return RecordResult(record.zoho_id, "UNCHANGED", "no change")
        return RecordResult(record.zoho_id, "UPDATED", f"updated {', '.join(changes)}", changes=changes)

    def take(self, last_part: dict[str, int] | None, index: int) -> tuple[Rows, Rows, Rows]:
        """What to write after part `index` of the batch: every row touched so far whose id
        appears in no later part (see `_last_part`), as rows new to the table and rows that
        exist, and their outbox rows."""
        if last_part is None:
            ready = list(self.dirty)
            self.dirty.clear()
        else:
            ready = [zoho_id for zoho_id in self.dirty if last_part[zoho_id] == index]
            for zoho_id in ready:
                del self.dirty[zoho_id]
        tenant, now, name, found = self.tenant, self.now, self.entity.name, self.found
        lands_in_moodle = self.entity.moodle is not None
        new: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        versions: list[Any] = []
        queued: list[tuple[Any, ...]] = []
        for zoho_id in ready:
            if zoho_id in found:
                changed.append(self.row(zoho_id))
                versions.append(found[zoho_id])
            else:
                new.append(self.row(zoho_id))
            operation = self.deliveries.pop(zoho_id, None)
            if operation is not None and lands_in_moodle:
                queued.append((tenant, name, zoho_id, operation, now, now))
        table, names = self.tables.table, self.plan.row_names
        return (
            Rows(table, names, new),
            Rows(table, names, changed, versions),
            Rows(self.tables.outbox, OUTBOX_COLUMNS, queued),
        )

    def row(self, zoho_id: str) -> tuple[Any, ...]:
        """The final state of a touched row, in the order of the plan's `row_names`."""
        stored, now = self.state[zoho_id], self.now
        row: list[Any] = [self.tenant, zoho_id]
        values, links = stored.values, stored.links
        for name, _, local_column in self.plan.columns:
            row.append(values[name])
            if local_column is not None:
                row.append(links[name])
        row += (stored.fingerprint, stored.version, now, now, now if stored.deleted else None)
        return tuple(row)

    def _merge(self, record: Incoming, live: Stored | None) -> dict[str, Any]:
        plan = self.plan
        if len(record.values) == len(plan.names):  # a whole record: nothing stored to keep
            values = record.values  # taken as it is: defaults only fill what is null, so a retry sees the same
        else:
            values = dict(live.values) if live is not None else dict.fromkeys(plan.names)
            values.update(record.values)
        for name, default in plan.defaults:
            if values[name] is None:
                values[name] = default
        return values

    def _stale(self, record: Incoming, previous: Stored) -> RecordResult | None:
        """SKIPPED `stale_update` when the stored row is newer than the record: its version is
        later, or the row is a deletion with a version as late (a delete wins a tie) or one the
        record, having no version, cannot be shown to be newer than."""
        assert record.zoho_id is not None
        stored, incoming = previous.version, record.version
        if stored is None:
            return None
        name = self.entity.version_field
        if incoming is None:
            if not previous.deleted or record.delete:
                return None  # a record without a version is applied, and the stored version kept
            message = (
                f"it has no {name}, and the record was deleted at {name} {stored.isoformat()}: "
                f"only a record with a later {name} brings it back"
            )
        elif incoming < stored or (incoming == stored and previous.deleted and not record.delete):
            if previous.deleted:
                message = f"{name} {incoming.isoformat()} is not later than the deletion's {stored.isoformat()}; "
                message += "the deletion is kept"
            else:
                message = f"{name} {incoming.isoformat()} is older than the stored {stored.isoformat()}; "
                message += "the newer version is kept"
        else:
            return None
        return RecordResult(record.zoho_id, "SKIPPED", message, reason="stale_update")

    def _too_late(self, record: Incoming) -> str:
        assert record.version is not None and self.horizon is not None
        skew = int((self.horizon - self.now).total_seconds())
        return (
            f"{record.version.isoformat()} is more than {skew} seconds ahead of this server's clock "
            f"({self.now.isoformat(timespec='seconds')}); check the sender's clock (the limit is "
            "SYNCENGINE_MAX_VERSION_SKEW)"
        )

    def _delete(self, record: Incoming, previous: Stored | None, live: Stored | None) -> RecordResult:
        """Soft-delete a live row, keeping the delete's version. A delete of a row deleted
        already, or never stored, keeps its version as a tombstone, so that an older create or
        update of it is `stale_update` (a row of no values, not delivered anywhere)."""
        assert record.zoho_id is not None
        if live is None:
            if previous is None:
                message = "not stored for this tenant; nothing to delete"
                if record.version is not None:
                    plan = self.plan
                    tombstone = Stored(dict.fromkeys(plan.names), dict.fromkeys(plan.links), "", record.version, True)
                    self.state[record.zoho_id] = tombstone
                    self.dirty[record.zoho_id] = None
                    message += f"; the deletion is kept, so that an older {self.entity.version_field} is skipped"
            else:
                message = "already deleted"
                if record.version is not None and (previous.version is None or record.version > previous.version):
                    previous.version = record.version
                    self.dirty[record.zoho_id] = None
            return RecordResult(record.zoho_id, "SKIPPED", message, reason="not_found")
        live.deleted = True
        live.version = _newest(record.version, live.version)
        self.dirty[record.zoho_id] = None
        self.deliveries[record.zoho_id] = "delete"
        self.deleted = True
        return RecordResult(record.zoho_id, "DELETED", "deleted")

    def _invalid(
        self,
        record: Incoming,
        live: Stored | None,
        values: dict[str, Any] | None = None,
        problems: dict[str, str] | None = None,
    ) -> RecordResult:
        """Every problem of the record (its parse errors and `problems`, by Zoho name), in field
        order; required fields count once merged."""
        if values is None and not record.delete and "(record)" not in record.errors:
            values = self._merge(record, live)
        found = record.errors | problems if problems else record.errors
        errors = [FieldError(name, message) for name, message in found.items() if name in ("(record)", "id")]
        for fld in self.entity.fields:
            if fld.source in found:
                errors.append(FieldError(fld.source, found[fld.source]))
            elif fld.required and values is not None and values[fld.name] is None:
                errors.append(FieldError(fld.source, "is required"))
        if self.entity.version_field in found:
            errors.append(FieldError(self.entity.version_field, found[self.entity.version_field]))
        count = f"{len(errors)} field error{'s' if len(errors) != 1 else ''}"
        details = "; ".join(f"{e.field} {e.message}" for e in errors)
        return RecordResult(record.zoho_id, "INVALID", f"{count}: {details}", errors=errors)


def _zoho_id(raw: dict[str, Any]) -> str | None:
    """The record's id as sent (checked by `parse_record`), or None when it has none."""
    for key in ID_KEYS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value in EMPTY_VALUES)


def _broken_rules(entity: Entity, values: dict[str, Any]) -> dict[str, str]:
    """The entity's rules (`Rule`) that `values` break, as problems by Zoho name."""
    broken: dict[str, str] = {}
    for rule in entity.rules:
        message = rule.broken(values)
        if message is not None:
            source = rule.field.source
            broken[source] = f"{broken[source]}; {message}" if source in broken else message
    return broken


def _newest(incoming: dt.datetime | None, stored: dt.datetime | None) -> dt.datetime | None:
    if incoming is None or stored is None:
        return incoming or stored
    return max(incoming, stored)
