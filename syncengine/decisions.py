"""The decision rules: what each record of a batch does to its row, in input order.

A record is decided against the state the record before it left (`Stored`):

- INVALID: a parse error, a required field missing once merged, a broken rule (`Rule`), or a
  version further ahead of the clock than `version_skew`;
- SKIPPED `stale_update`: the stored row is newer (`Decisions._stale`); a deletion wins a tie,
  and one without a version in the record cannot be shown to be newer than a deletion;
- DELETED: a live row is soft-deleted, keeping the later version; a delete of a row deleted
  already, or never stored, is SKIPPED `not_found`, and its version is kept as a tombstone so
  that an older create or update is then stale;
- UNCHANGED: the merged values have the stored fingerprint (a later version is still kept);
- SKIPPED `<singular>_not_synced_yet`: a required lookup's target is not stored for the tenant;
- NEW (or restored, after a deletion) and UPDATED: the row is written; a delivery is queued for
  a NEW record, and for an UPDATED one when a field its Moodle mapping reads changed
  (`CompiledEntity.moodle_reads`): Moodle would get nothing new from the others.

Records are patches: a field absent from a record keeps its stored value; a field sent as null
(or "", or Zoho's "-None-") is cleared, or set to its default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from syncengine.compiled import OUTBOX_COLUMNS, CompiledEntity
from syncengine.descriptors import Entity
from syncengine.parsing import Incoming
from syncengine.report import FieldError, RecordResult
from syncengine.store import Rows, Write


class Stored:
    """A row's state: what the database holds, then what the batch has made of it.

    A fetched row's values are read out of it only when a decision needs them: an unchanged
    record is decided on the fingerprint alone, so an UNCHANGED batch builds no value dicts.
    """

    __slots__ = ("_links", "_values", "compiled", "deleted", "fingerprint", "row", "version")

    def __init__(
        self,
        values: dict[str, Any] | None,
        links: dict[str, int | None] | None,
        fingerprint: str,
        version: dt.datetime | None,
        deleted: bool,
        row: Sequence[Any] = (),
        compiled: CompiledEntity | None = None,
    ) -> None:
        #: The fetched row (`CompiledEntity.fetch_columns`, then its version), if it was fetched.
        self._values, self._links, self.row, self.compiled = values, links, row, compiled
        self.fingerprint, self.version, self.deleted = fingerprint, version, deleted

    @property
    def values(self) -> dict[str, Any]:
        if self._values is None:
            compiled = self.compiled
            assert compiled is not None
            values = dict(zip(compiled.names, self.row[compiled.layout.values], strict=True))
            for name, convert in compiled.converters:
                if values[name] is not None:
                    values[name] = convert(values[name])
            self._values = values
        return self._values

    @property
    def links(self) -> dict[str, int | None]:
        if self._links is None:
            compiled = self.compiled
            assert compiled is not None
            self._links = dict(zip(compiled.links, self.row[compiled.layout.links], strict=True))
        return self._links


class Decisions:
    """Decides each record of a batch in order, keeping the state every decision leaves."""

    def __init__(
        self,
        compiled: CompiledEntity,
        state: dict[str, Stored],
        resolved: dict[str, dict[str, int]],
        tenant: str,
        now: dt.datetime,
        version_skew: dt.timedelta | None = None,
    ) -> None:
        self.compiled = compiled
        self.tenant = tenant
        self.now = now
        #: Versions later than this are refused: a clock far ahead would freeze a record for good.
        self.horizon = None if version_skew is None else now + version_skew
        self.entity = compiled.entity
        #: The ids the batch found stored (deleted or not), with each row's version (`Store.fetch`):
        #: every other row it writes is new.
        at = compiled.layout.row_version
        self.found = {zoho_id: stored.row[at] for zoho_id, stored in state.items()}
        self.fingerprint = compiled.fingerprint
        self.singulars = compiled.singulars
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
        for name in self.compiled.required:
            if values[name] is None:
                return self._invalid(record, live, values)
        broken = _broken_rules(self.entity, values)
        if broken:
            return self._invalid(record, live, values, broken)
        fprint = self.fingerprint(values)
        version = _newest(record.version, previous.version if previous else None)
        if live is not None and fprint == live.fingerprint:
            if version != live.version:
                live.version = version
                self.dirty[record.zoho_id] = None
            return RecordResult(record.zoho_id, "UNCHANGED", "no change")
        links: dict[str, int | None] = {}
        for fld, target in self.entity.lookup_targets:
            zoho_id = values[fld.name]
            links[fld.name] = None if zoho_id is None else self.resolved[target].get(zoho_id)
            if fld.required and links[fld.name] is None:
                singular = self.singulars[target]
                return RecordResult(
                    record.zoho_id,
                    "SKIPPED",
                    f"{fld.source} points to {singular} {zoho_id}, which is not synced yet for this tenant; "
                    f"sync that {singular} first, then send this record again",
                    reason=f"{singular}_not_synced_yet",
                )
        self.state[record.zoho_id] = Stored(values, links, fprint, version, deleted=False)
        self.dirty[record.zoho_id] = None
        if live is None:
            self.deliveries[record.zoho_id] = "upsert"
            message = "restored: it had been deleted" if previous is not None else "created"
            return RecordResult(record.zoho_id, "NEW", message)
        changed = [f for f in self.entity.fields if live.values[f.name] != values[f.name]]
        if not changed:  # the stored values, fingerprinted before they were normalised: no delivery
            return RecordResult(record.zoho_id, "UNCHANGED", "no change")
        if any(f.name in self.compiled.moodle_reads for f in changed):
            self.deliveries[record.zoho_id] = "upsert"
        changes = {f.source: [live.values[f.name], values[f.name]] for f in changed}
        return RecordResult(record.zoho_id, "UPDATED", f"updated {', '.join(changes)}", changes=changes)

    def take(self, last_part: dict[str, int] | None, index: int) -> list[Rows]:
        """What to write after part `index` of the batch: every row touched so far whose id
        appears in no later part (see `pipeline._last_part`), as rows new to the table and rows
        that exist (at the version fetched), then their outbox rows."""
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
        table, names = self.compiled.table, self.compiled.row_names
        return [
            Rows(Write.INSERT, table, names, new),
            Rows(Write.UPDATE, table, names, changed, versions),
            Rows(Write.INSERT, self.compiled.outbox, OUTBOX_COLUMNS, queued),
        ]

    def row(self, zoho_id: str) -> tuple[Any, ...]:
        """The final state of a touched row, in the order of `CompiledEntity.row_names`."""
        stored, now = self.state[zoho_id], self.now
        row: list[Any] = [self.tenant, zoho_id]
        values, links = stored.values, stored.links
        for name, _, local_column in self.compiled.columns:
            row.append(values[name])
            if local_column is not None:
                row.append(links[name])
        row += (stored.fingerprint, stored.version, now, now, now if stored.deleted else None)
        return tuple(row)

    def _merge(self, record: Incoming, live: Stored | None) -> dict[str, Any]:
        compiled = self.compiled
        if len(record.values) == len(compiled.names):  # a whole record: nothing stored to keep
            values = record.values  # taken as it is: defaults only fill what is null, so a retry sees the same
        else:
            values = dict(live.values) if live is not None else dict.fromkeys(compiled.names)
            values.update(record.values)
        for name, default in compiled.defaults:
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
                    compiled = self.compiled
                    tombstone = Stored(
                        dict.fromkeys(compiled.names), dict.fromkeys(compiled.links), "", record.version, True
                    )
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
