"""Target kinds: how desired users, categories, courses and enrolments land in Moodle, idempotently.

Delivery hands each operation a client, a `max_input_vars` budget and the desired states, as
Moodle parameters keyed by its own delivery key; each key gets an `Outcome`: a Moodle id, or a
`MoodleError` (transient or permanent, with Moodle's code and message). Nothing here knows of
tenants, entities or storage.

- `deliver` finds what exists (users by idnumber, then username, then email; categories and
  courses by idnumber), creates the rest and brings the found ones to the desired state: twice is
  the same as once.
- Creates go in as few calls as the budget allows; fewer results than records sent means Moodle
  cut the POST (`max_input_vars`), so the missing ones go again in smaller calls. A failing batch
  is split to isolate the bad record; an "already exists" answer triggers a look-up, so an
  existing user with the same email is linked, not duplicated.
- `set_state` suspends or reactivates users (`suspended`), hides or shows courses (`visible`);
  `enrol` sends enrolments with their full state (`suspend=1` suspends one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from syncengine import mapping
from syncengine.moodle import WS_PARAMETERS, MoodleClient, MoodleError, encode

Params = dict[str, Any]
K = TypeVar("K", bound=Hashable)  # the caller's key of each desired record
log = logging.getLogger(__name__)


class Budget:
    """A site's `max_input_vars` as delivery knows it: the tenant's setting, lowered for the calls
    that follow once Moodle is seen cutting a POST (fewer records created than sent), so that
    enrolments and updates, whose answers cannot show a cut, are sent within the real limit.

        budget = Budget(1000)       # or pass an int: a budget for that call alone
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def lower(self, kept: int, function: str) -> None:
        if kept < self.limit:
            log.warning(
                "moodle cut a POST: max_input_vars is below the tenant's setting",
                extra={"fields": {"function": function, "setting": self.limit, "kept": kept}},
            )
            self.limit = kept

    def __repr__(self) -> str:
        return f"Budget({self.limit})"


def _budget(budget: Budget | int) -> Budget:
    return budget if isinstance(budget, Budget) else Budget(budget)


@dataclass(frozen=True)
class Kind:
    name: str
    items: str  # the list parameter: users[0][...], courses[0][...]
    find: str  # the look-up function (see `_existing`)
    create: str
    update: str
    taken: frozenset[str]  # errorcodes of a create that may mean "it already exists"
    lookups: tuple[str, ...]  # the fields to find an existing one by, in order
    update_only: frozenset[str] = frozenset()  # parameters the create function does not take
    create_extra: tuple[tuple[str, Any], ...] = ()  # parameters a create needs that the mapping does not give


def _finds_by(kind: str) -> tuple[str, ...]:
    """The parameters a kind is looked up by, in turn: `mapping.KINDS` is the one table of them."""
    return tuple(key for (key,) in mapping.KINDS[kind].finds_by)


USER = Kind(
    "user",
    "users",
    "core_user_get_users_by_field",
    "core_user_create_users",
    "core_user_update_users",
    frozenset({"invalidparameter"}),
    _finds_by("user"),
    update_only=frozenset({"suspended"}),
    create_extra=(("createpassword", 1),),  # no password is synced: Moodle makes one and mails it
)
CATEGORY = Kind(
    "category",
    "categories",
    "core_course_get_categories",
    "core_course_create_categories",
    "core_course_update_categories",
    frozenset({"categoryidnumbertaken"}),
    _finds_by("category"),
)
COURSE = Kind(
    "course",
    "courses",
    "core_course_get_courses_by_field",
    "core_course_create_courses",
    "core_course_update_courses",
    frozenset({"shortnametaken", "courseidnumbertaken"}),
    _finds_by("course"),
)
#: Finds a user by email in any letter case (`core_user_get_users`' email criterion is a case-insensitive
#: LIKE; `core_user_get_users_by_field` compares exactly on PostgreSQL while a create refuses an email
#: taken in any case): asked only after a create was refused, one email a call.
USER_SEARCH = "core_user_get_users"
ENROL = "enrol_manual_enrol_users"
UNENROL = "enrol_manual_unenrol_users"
SITE_INFO = "core_webservice_get_site_info"  # `syncengine moodle check` calls it: the service needs it too
#: The web-service functions each mapping kind calls, the one list `syncengine moodle check` holds
#: a token's service to; every call here names its function from these (`needed_functions`).
#: The kinds found before they are created, by name (enrolments are sent as they are).
BY_NAME = {kind.name: kind for kind in (USER, CATEGORY, COURSE)}
FUNCTIONS: dict[str, tuple[str, ...]] = {
    **{name: (kind.find, kind.create, kind.update) for name, kind in BY_NAME.items()},
    "user": (USER.find, USER_SEARCH, USER.create, USER.update),
    "enrolment": (ENROL,),
}


def needed_functions(kind: str, leave: str | None) -> tuple[str, ...]:
    """The functions a target of `kind` calls; `leave: unenrol` adds the unenrol function.

    >>> needed_functions("enrolment", "unenrol")
    ('enrol_manual_enrol_users', 'enrol_manual_unenrol_users')
    """
    return FUNCTIONS[kind] + ((UNENROL,) if leave == "unenrol" else ())


@dataclass(frozen=True)
class Outcome:
    moodle_id: int | None = None  # None for enrolments, which Moodle gives no id
    error: MoodleError | None = None
    created: bool = False


def batches(items: list[tuple[K, Params]], budget: Budget) -> Iterator[list[tuple[K, Params]]]:
    """Consecutive runs of records whose parameters, with the ws* ones, stay within the budget."""
    batch: list[tuple[K, Params]] = []
    used = WS_PARAMETERS
    for key, params in items:
        size = len(encode(params))
        if batch and used + size > budget.limit:
            yield batch
            batch, used = [], WS_PARAMETERS
        batch.append((key, params))
        used += size
    if batch:
        yield batch


async def find(client: MoodleClient, kind: Kind, budget: Budget | int, desired: Mapping[K, Params]) -> dict[K, int]:
    """The Moodle ids of the desired records that already exist, by the kind's look-up fields in order:
    the first (idnumber) alone, then the others, at once, for the records it did not find (a user
    found by username and by email is the one found by username)."""
    budget = _budget(budget)
    first, *others = kind.lookups
    found = await _found_by(client, kind, first, desired, budget)
    rest = {key: p for key, p in desired.items() if key not in found}
    for by_field in await asyncio.gather(*(_found_by(client, kind, name, rest, budget) for name in others)):
        found |= {key: moodle_id for key, moodle_id in by_field.items() if key not in found}
    return found


async def _found_by(
    client: MoodleClient, kind: Kind, name: str, desired: Mapping[K, Params], budget: Budget
) -> dict[K, int]:
    """The Moodle ids of the desired records that exist with the same value of `name`."""
    wanted = {key: str(p[name]) for key, p in desired.items() if p.get(name)}
    if kind is USER and name == "username":  # Moodle rejects the whole look-up for one upper-case username
        wanted = {key: value for key, value in wanted.items() if value == value.lower()}
    if not wanted:
        return {}
    existing = await _existing(client, kind, name, sorted(set(wanted.values())), desired, budget)
    return {key: existing[_norm(name, value)] for key, value in wanted.items() if _norm(name, value) in existing}


def _norm(name: str, value: str) -> str:
    return value.lower() if name == "email" else value  # Moodle compares emails in any case


async def _existing(
    client: MoodleClient, kind: Kind, name: str, values: list[str], desired: Mapping[K, Params], budget: Budget
) -> dict[str, int]:
    """value (emails lower-cased) -> id of the existing record, the lowest id where Moodle holds several."""
    rows: list[Params] = []
    if kind is USER:
        step = max(1, budget.limit - WS_PARAMETERS - 1)
        for start in range(0, len(values), step):
            rows += await client.call(kind.find, {"field": name, "values": values[start : start + step]})
    elif kind is CATEGORY:
        rows = await client.call(kind.find, {})  # one call: schools have few categories
    else:  # courses: list each desired category once, then ask for the ones not seen there
        listed: list[Params] = []
        for category in sorted({p["categoryid"] for p in desired.values() if "categoryid" in p}):
            listed += (await client.call(kind.find, {"field": "category", "value": category}))["courses"]
        seen = {str(row.get(name) or "") for row in listed}
        rows = listed
        for value in values if len(desired) == 1 else []:  # a single record: an "already exists" look-up
            if value not in seen:
                rows += (await client.call(kind.find, {"field": name, "value": value}))["courses"]
    existing: dict[str, int] = {}
    for row in sorted(rows, key=lambda row: int(row["id"]), reverse=True):
        if row.get(name):
            existing[_norm(name, str(row[name]))] = int(row["id"])
    return existing


async def create(
    client: MoodleClient, kind: Kind, budget: Budget | int, desired: Mapping[K, Params]
) -> dict[K, Outcome]:
    """Create each desired record, or link the existing one an "already exists" answer points to."""
    budget = _budget(budget)
    outcomes: dict[K, Outcome] = {}
    items = [
        (key, {**dict(kind.create_extra), **{k: v for k, v in p.items() if k not in kind.update_only}})
        for key, p in desired.items()
    ]
    for batch in batches(items, budget):
        await _create_batch(client, kind, budget, batch, outcomes)
    return outcomes


async def _create_batch(
    client: MoodleClient, kind: Kind, budget: Budget, batch: list[tuple[K, Params]], outcomes: dict[K, Outcome]
) -> None:
    try:
        answer = await client.call(kind.create, {kind.items: [params for _, params in batch]})
    except MoodleError as error:
        if error.transient or len(batch) == 1:
            await _failed(client, kind, budget, batch, error, outcomes)
        else:  # one bad record rolls back the batch: halve until it stands alone
            half = len(batch) // 2
            await _create_batch(client, kind, budget, batch[:half], outcomes)
            await _create_batch(client, kind, budget, batch[half:], outcomes)
        return
    ids = [int(row["id"]) for row in answer]
    outcomes |= {key: Outcome(moodle_id, created=True) for (key, _), moodle_id in zip(batch, ids, strict=False)}
    missing = batch[len(ids) :]
    if not missing:
        return
    if ids:  # Moodle cut the POST: the last record it kept may have lost its trailing fields
        budget.lower(WS_PARAMETERS + sum(len(encode(params)) for _, params in batch[: len(ids)]), kind.create)
        last_key, last_params = batch[len(ids) - 1]
        await update(client, kind, budget, {last_key: (ids[-1], last_params)})
    if not ids and len(missing) == 1:
        cut = MoodleError(
            kind.create,
            "truncated",
            f"Moodle kept no record of {len(batch)}: its max_input_vars is "
            "below the budget; lower the tenant's max_input_vars setting",
            transient=False,
        )
        await _failed(client, kind, budget, missing, cut, outcomes)
        return
    size = max(1, len(ids) or len(missing) // 2)
    for start in range(0, len(missing), size):
        await _create_batch(client, kind, budget, missing[start : start + size], outcomes)


async def _failed(
    client: MoodleClient,
    kind: Kind,
    budget: Budget,
    batch: list[tuple[K, Params]],
    error: MoodleError,
    outcomes: dict[K, Outcome],
) -> None:
    found: dict[K, int] = {}
    if error.errorcode in kind.taken and len(batch) == 1:
        found = await find(client, kind, budget, dict(batch))
        (key, params), *_ = batch
        if not found and kind is USER and params.get("email"):
            moodle_id = await _user_by_email_any_case(client, str(params["email"]))
            found = {} if moodle_id is None else {key: moodle_id}
    outcomes |= {key: Outcome(found[key]) if key in found else Outcome(error=error) for key, _ in batch}


async def _user_by_email_any_case(client: MoodleClient, email: str) -> int | None:
    """The lowest id of the users whose email is `email` in any letter case (`_` and `%` are LIKE
    wildcards there, so the answer is filtered again here)."""
    answer = await client.call(USER_SEARCH, {"criteria": [{"key": "email", "value": email}]})
    ids = [int(u["id"]) for u in (answer or {}).get("users", []) if str(u.get("email", "")).lower() == email.lower()]
    return min(ids, default=None)


async def update(
    client: MoodleClient, kind: Kind, budget: Budget | int, items: Mapping[K, tuple[int, Params]]
) -> dict[K, Outcome]:
    """Bring existing records to their desired parameters; Moodle's per-item warnings become errors."""
    budget = _budget(budget)
    outcomes: dict[K, Outcome] = {}
    records = [(key, {**params, "id": moodle_id}) for key, (moodle_id, params) in items.items()]
    for batch in batches(records, budget):
        await _update_batch(client, kind, budget, batch, outcomes)
    return outcomes


async def _update_batch(
    client: MoodleClient, kind: Kind, budget: Budget, batch: list[tuple[K, Params]], outcomes: dict[K, Outcome]
) -> None:
    try:
        answer = await client.call(kind.update, {kind.items: [params for _, params in batch]})
    except MoodleError as error:  # categories answer null or throw for the whole batch
        if error.transient or len(batch) == 1:
            outcomes |= {key: Outcome(error=error) for key, _ in batch}
        else:
            half = len(batch) // 2
            await _update_batch(client, kind, budget, batch[:half], outcomes)
            await _update_batch(client, kind, budget, batch[half:], outcomes)
        return
    warnings = {int(w["itemid"]): w for w in (answer or {}).get("warnings", []) if "itemid" in w}
    for key, params in batch:
        warning = warnings.get(int(params["id"]))
        outcomes[key] = (
            Outcome(int(params["id"]))
            if warning is None
            else Outcome(
                error=MoodleError(
                    kind.update, str(warning.get("warningcode")), str(warning.get("message")), transient=False
                )
            )
        )


async def deliver(
    client: MoodleClient,
    kind: Kind,
    budget: Budget | int,
    desired: Mapping[K, Params],
    known: Mapping[K, int] | None = None,
) -> dict[K, Outcome]:
    """Make Moodle hold the desired records: find (unless the id is known), create the missing, update the rest."""
    budget = _budget(budget)
    ids = dict(known or {})
    ids |= await find(client, kind, budget, {k: p for k, p in desired.items() if k not in ids})
    created = await create(client, kind, budget, {k: p for k, p in desired.items() if k not in ids})
    linked = {k: o.moodle_id for k, o in created.items() if o.moodle_id is not None and not o.created}
    updated = await update(
        client, kind, budget, {k: (i, desired[k]) for k, i in (ids | linked).items() if k in desired}
    )
    return created | updated


async def set_state(
    client: MoodleClient, kind: Kind, budget: Budget | int, ids: Mapping[K, int], state: str
) -> dict[K, Outcome]:
    """`suspend` / `reactivate` users, `hide` / `show` courses; nothing is deleted. The parameter
    and its values are the kind's state parameter in `mapping.KINDS`."""
    param = mapping.KINDS[kind.name].state
    assert param is not None, f"a {kind.name} has no state to set"
    value = param.left if state in ("suspend", "hide") else param.active
    changes = {key: (moodle_id, {param.name: value}) for key, moodle_id in ids.items()}
    return await update(client, kind, _budget(budget), changes)


async def enrol(client: MoodleClient, budget: Budget | int, desired: Mapping[K, Params]) -> dict[K, Outcome]:
    """Manual enrolments with their full state (roleid, userid, courseid, timestart, timeend, suspend).

    Moodle updates an existing enrolment in place, so sending one twice changes nothing more.
    """
    budget = _budget(budget)
    outcomes: dict[K, Outcome] = {}
    for batch in batches(
        [(key, {"timestart": 0, "timeend": 0, "suspend": 0, **p}) for key, p in desired.items()], budget
    ):
        await _enrol_batch(client, batch, outcomes)
    return outcomes


async def _enrol_batch(client: MoodleClient, batch: list[tuple[K, Params]], outcomes: dict[K, Outcome]) -> None:
    try:
        await client.call(ENROL, {"enrolments": [params for _, params in batch]})
    except MoodleError as error:
        if error.transient or len(batch) == 1:
            outcomes |= {key: Outcome(error=error) for key, _ in batch}
        else:
            half = len(batch) // 2
            await _enrol_batch(client, batch[:half], outcomes)
            await _enrol_batch(client, batch[half:], outcomes)
        return
    outcomes |= {key: Outcome() for key, _ in batch}


async def unenrol(client: MoodleClient, budget: Budget | int, desired: Mapping[K, Params]) -> dict[K, Outcome]:
    """Remove manual enrolments (userid, courseid); only where a mapping says `leave: unenrol`."""
    budget = _budget(budget)
    outcomes: dict[K, Outcome] = {}
    items = [(key, {"userid": p["userid"], "courseid": p["courseid"]}) for key, p in desired.items()]
    for batch in batches(items, budget):
        try:
            await client.call(UNENROL, {"enrolments": [params for _, params in batch]})
        except MoodleError as error:
            outcomes |= {key: Outcome(error=error) for key, _ in batch}
        else:
            outcomes |= {key: Outcome() for key, _ in batch}
    return outcomes
