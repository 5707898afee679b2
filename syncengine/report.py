"""What a sync reports: one result per record, in input order, and counts per status."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Status = Literal["NEW", "UPDATED", "UNCHANGED", "INVALID", "SKIPPED", "DELETED"]
STATUSES: tuple[Status, ...] = ("NEW", "UPDATED", "UNCHANGED", "INVALID", "SKIPPED", "DELETED")


class FieldError(msgspec.Struct, frozen=True):
    """One field's problem; `field` is the Zoho API name as it appears in the payload."""

    field: str
    message: str


class RecordResult(msgspec.Struct, omit_defaults=True):
    """The outcome of one record. `changes` maps a Zoho field to `[old, new]`."""

    zoho_id: str | None
    status: Status
    message: str
    changes: dict[str, list[Any]] | None = None
    errors: list[FieldError] | None = None
    reason: str | None = None


class SyncReport(msgspec.Struct):
    entity: str
    id_key: str
    results: list[RecordResult]
    dry_run: bool = False

    @property
    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for result in self.results:
            counts[result.status] += 1
        return counts

    def to_builtins(self) -> dict[str, Any]:
        """The JSON shape the HTTP endpoint and `dry-run --json` return.

        >>> report.to_builtins()["results"][0]
        {'zoho_student_id': '6284103000002010101', 'status': 'NEW', 'message': 'created'}
        """
        results = []
        for result in self.results:
            item: dict[str, Any] = {self.id_key: result.zoho_id, "status": result.status, "message": result.message}
            if result.changes is not None:
                item["changes"] = msgspec.to_builtins(result.changes)
            if result.errors is not None:
                item["errors"] = msgspec.to_builtins(result.errors)
            if result.reason is not None:
                item["reason"] = result.reason
            results.append(item)
        return {
            "status": "success",
            "entity": self.entity,
            "dry_run": self.dry_run,
            "results": results,
            "summary": self.summary,
        }
