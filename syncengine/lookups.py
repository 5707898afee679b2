"""Lookups: the local row ids of the records a batch's lookup fields point to, and a short memory of them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from syncengine.compiled import CompiledEntity
from syncengine.parsing import Incoming
from syncengine.store import Conn, Store

#: How long a process trusts a lookup target's id it has seen live (see `LookupCache`).
LOOKUP_CACHE_SECONDS = 5.0


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


async def resolve_lookups(
    conn: Conn,
    store: Store[Conn],
    compiled: CompiledEntity,
    tenant: str,
    incoming: Sequence[Incoming],
    known: dict[str, dict[str, int]],
    lookups: LookupCache | None,
) -> dict[str, dict[str, int]]:
    """Local row ids of the lookup targets, per target entity: {target: {zoho_id: id}}.

    The links stored rows already hold (`known`, which this adds to) are reused, so an unchanged
    batch queries nothing here; so are the ids `lookups` remembers.
    """
    remembered = {target: lookups.ids(tenant, target) if lookups else {} for target in compiled.targets}
    resolved = known
    wanted: dict[str, set[str]] = {target: set() for target in compiled.targets}
    for fld in compiled.entity.lookups:
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
        query = {target: (compiled.targets[target], zoho_ids) for target, zoho_ids in wanted.items()}
        for target, found in (await store.resolve(conn, query, tenant)).items():
            resolved[target].update(found)
            remembered[target].update(found)
    return resolved
