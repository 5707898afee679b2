"""Fingerprints: a SHA-256 of a record's mapped values, to tell an unchanged record at a glance."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from typing import Any

import msgspec

from syncengine.descriptors import Entity

_encode = msgspec.json.Encoder().encode


def fingerprint(entity: Entity, values: dict[str, Any]) -> str:
    """SHA-256 of the mapped values, keyed by Zoho name; empty fields leave no trace.

    Leaving empty fields out means adding a field to a descriptor does not change the
    fingerprint of records that do not have it. (Builds the entity's fingerprinter each call:
    the engine keeps one per entity, see `fingerprinter`.)
    """
    return fingerprinter(entity)({f.name: values.get(f.name) for f in entity.fields})


def fingerprinter(entity: Entity) -> Callable[[dict[str, Any]], str]:
    """`fingerprint` for values that hold every field of `entity`: the entity's fingerprint
    Struct, its fields in sorted Zoho-name order and null ones left out, encodes to the bytes
    of the sorted JSON."""
    fields = sorted(entity.fields, key=lambda f: f.source)
    struct = msgspec.defstruct(
        f"{entity.name}_canonical",
        [(f"f{i}", Any, None) for i in range(len(fields))],
        rename={f"f{i}": f.source for i, f in enumerate(fields)},
        omit_defaults=True,
    )
    values_of: Callable[[dict[str, Any]], Any]
    if len(fields) == 1:
        name = fields[0].name
        values_of = lambda values: (values[name],)  # noqa: E731
    else:
        values_of = operator.itemgetter(*(f.name for f in fields))
    encode, sha256 = _encode, hashlib.sha256

    def fingerprint_of(values: dict[str, Any]) -> str:
        return sha256(encode(struct(*values_of(values)))).hexdigest()

    return fingerprint_of
