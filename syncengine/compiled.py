"""An entity compiled for the pipeline: everything its per-record loops need, built once when
the engine is made (tables, parser, fingerprint, the fetched row's layout, the written row's)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from syncengine.descriptors import Entity, lookup_columns
from syncengine.fieldtypes import FIELD_TYPES
from syncengine.fingerprints import fingerprinter
from syncengine.mapping import fields_read
from syncengine.parsing import Parser

#: The columns of an outbox row, in the order `Decisions.take` gives their values.
OUTBOX_COLUMNS = ("tenant_id", "entity", "zoho_id", "operation", "next_attempt_at", "created_at")
_IDENTITY = FIELD_TYPES["string"].from_db


@dataclass(frozen=True, slots=True)
class RowLayout:
    """Where a fetched row (`CompiledEntity.fetch_columns`, then the row's version, see
    `Store.fetch`) holds each thing: its state, its values, its lookups' local ids."""

    zoho_id: int
    fingerprint: int
    version: int
    deleted_at: int
    values: slice
    links: slice
    #: The row's version, which `Store.fetch` adds after the columns asked for.
    row_version: int = -1

    @property
    def state(self) -> Callable[[Any], tuple[Any, Any, Any, Any]]:
        """What takes (zoho_id, fingerprint, version, deleted_at) out of a fetched row."""
        return operator.itemgetter(self.zoho_id, self.fingerprint, self.version, self.deleted_at)


@dataclass(frozen=True, slots=True)
class CompiledEntity:
    """An entity with its tables, and what the per-record loops need of it, looked up once."""

    entity: Entity
    table: sa.Table
    outbox: sa.Table
    #: The tables of the entities its lookups point to, and each one's singular (for messages).
    targets: dict[str, sa.Table]
    singulars: dict[str, str]
    parser: Parser
    #: `fingerprints.fingerprint` of values holding every field.
    fingerprint: Callable[[dict[str, Any]], str]
    #: What the pipeline reads of a stored row, and where the row holds each of them.
    fetch_columns: tuple[sa.Column[Any], ...]
    layout: RowLayout
    names: tuple[str, ...]
    required: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...]
    #: (field name, conversion) of each field whose stored value is converted when read.
    converters: tuple[tuple[str, Callable[[Any], Any]], ...]
    #: How a written row is laid out: (field name, value column, local-id column of a lookup or None).
    columns: tuple[tuple[str, str, str | None], ...]
    #: The columns of a written row, in the order `Decisions.row` gives its values.
    row_names: tuple[str, ...]
    #: The lookup fields, and where a fetched row holds each one's zoho id and local id.
    links: tuple[str, ...]
    link_positions: tuple[tuple[str, int, int], ...]  # (target entity, zoho id's position, local id's)
    #: The fields its Moodle mapping reads (`mapping.fields_read`): an update that changes one of
    #: them queues a delivery; empty for an entity that lands nowhere.
    moodle_reads: frozenset[str]


def compile_entity(
    entity: Entity, tables: Mapping[str, sa.Table], outbox: sa.Table, singulars: Mapping[str, str]
) -> CompiledEntity:
    """Everything the pipeline needs of `entity`; `tables` by entity name, `singulars` too."""
    table, fields, lookups = tables[entity.name], entity.fields, entity.lookups
    system = (table.c.zoho_id, table.c.fingerprint, table.c.source_version, table.c.deleted_at)
    values = tuple(table.c[f.value_column] for f in fields)
    links = tuple(table.c[lookup_columns(f.name)[1]] for f in lookups)
    first_value, first_link = len(system), len(system) + len(values)
    layout = RowLayout(
        zoho_id=0,
        fingerprint=1,
        version=2,
        deleted_at=3,
        values=slice(first_value, first_link),
        links=slice(first_link, first_link + len(links)),
    )
    targets = {f.target for f in lookups if f.target}
    return CompiledEntity(
        entity=entity,
        table=table,
        outbox=outbox,
        targets={target: tables[target] for target in targets},
        singulars={target: singulars[target] for target in targets},
        parser=Parser(entity),
        fingerprint=fingerprinter(entity),
        fetch_columns=system + values + links,
        layout=layout,
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
        links=tuple(f.name for f in lookups),
        link_positions=tuple(
            (f.target or "", first_value + fields.index(f), first_link + i) for i, f in enumerate(lookups)
        ),
        moodle_reads=fields_read(entity.moodle or ()),
    )
