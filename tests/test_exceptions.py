"""The engine's exception tree, the store's translation of driver errors into it, and the UTC
column type, on both databases."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from syncengine import cli
from syncengine.errors import to_api_error
from syncengine.exceptions import LostRace, SchemaMissing, SyncEngineError, UnstorableValue
from syncengine.fieldtypes import UtcDateTime
from syncengine.moodle import MoodleError, MoodleMisconfigured, MoodleRejected, MoodleUnavailable
from syncengine.sites import SiteError
from syncengine.store import translate
from syncengine.vault import SecretKeyError
from syncengine.zoho import InvalidZohoRequest, ZohoAuthError, ZohoRefused, ZohoUnavailable
from tests.conftest import Databases

ROWS = sa.Table(
    "stamps",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(20), unique=True),
    sa.Column("at", UtcDateTime()),
)
PLUS_THREE = dt.timezone(dt.timedelta(hours=3))


async def test_datetimes_come_back_aware_in_utc_whatever_offset_went_in(databases: Databases, dialect: str) -> None:
    database = await databases.create(dialect)
    async with database.begin() as conn:
        await conn.run_sync(ROWS.metadata.create_all)
        await conn.execute(ROWS.insert().values(id=1, at=dt.datetime(2026, 2, 10, 9, 15, 42, tzinfo=PLUS_THREE)))
        await conn.execute(ROWS.insert().values(id=2, at=dt.datetime(2026, 2, 10, 6, 15, 42)))  # naive: UTC
        got = (await conn.execute(sa.select(ROWS.c.at).order_by(ROWS.c.id))).scalars().all()
    utc = dt.datetime(2026, 2, 10, 6, 15, 42, tzinfo=dt.UTC)
    assert [(value, value.utcoffset()) for value in got] == [(utc, dt.timedelta(0))] * 2


async def failure_of(database: AsyncEngine, *statements: sa.Executable) -> SyncEngineError | None:
    """What the store makes of the error of the last of `statements`, run in one transaction."""
    with pytest.raises(Exception) as caught:
        async with database.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
    return translate(caught.value)


async def test_a_missing_table_is_schema_missing(databases: Databases, dialect: str) -> None:
    failure = await failure_of(await databases.create(dialect), sa.select(ROWS.c.id))
    assert isinstance(failure, SchemaMissing)
    error = to_api_error(failure)
    assert (error.status_code, error.error) == (503, "schema_missing")


async def test_a_value_the_database_refuses_is_unstorable(databases: Databases, dialect: str) -> None:
    database = await databases.create(dialect)
    async with database.begin() as conn:
        await conn.run_sync(ROWS.metadata.create_all)
    refused = 2**70 if dialect == "sqlite" else 1, "nul\x00"  # beyond 64 bits (SQLite); NUL in text (PostgreSQL)
    failure = await failure_of(database, ROWS.insert().values(id=refused[0], name=refused[1]))
    assert isinstance(failure, UnstorableValue)
    assert "nul" not in failure.reason and str(2**70) not in failure.reason  # no record contents
    error = to_api_error(failure)
    assert (error.status_code, error.error) == (400, "unstorable_value")


async def test_a_unique_row_another_writer_inserted_first_is_a_lost_race_on_postgresql(databases: Databases) -> None:
    database = await databases.create("postgresql")
    async with database.begin() as conn:
        await conn.run_sync(ROWS.metadata.create_all)
        await conn.execute(ROWS.insert().values(id=1, name="a"))
    assert isinstance(await failure_of(database, ROWS.insert().values(id=2, name="a")), LostRace)


def test_every_failure_states_its_own_code() -> None:
    """A new class that forgot its code would answer with its parent's: the code is what clients
    and scripts match on, so each class says its own."""
    kinds, missing = [SyncEngineError], []
    while kinds:
        kind = kinds.pop()
        kinds.extend(kind.__subclasses__())
        if "code" not in vars(kind):
            missing.append(kind.__name__)
    assert missing == []


@pytest.mark.parametrize(
    ("failure", "kind", "http", "exit_status"),
    [
        (MoodleError("f", "timeout", "no answer", transient=True), MoodleUnavailable, (503, "moodle_unavailable"), 5),
        (MoodleError("f", "sitemaintenance", "", transient=True), MoodleUnavailable, (503, "moodle_unavailable"), 5),
        (MoodleError("f", "invalidtoken", "", transient=False), MoodleMisconfigured, (502, "moodle_misconfigured"), 6),
        (MoodleError("f", "accessexception", "", transient=False), MoodleMisconfigured, (502, "moodle_misconfigured"), 6),
        (MoodleError("f", "http404", "", transient=False), MoodleMisconfigured, (502, "moodle_misconfigured"), 6),
        (MoodleError("f", "invalidparameter", "", transient=False), MoodleRejected, (502, "moodle_rejected"), 2),
        (ZohoUnavailable("Zoho GET", 503, "HTTP_ERROR", "down"), ZohoUnavailable, (503, "zoho_retries_exhausted"), 5),
        (ZohoRefused("Zoho GET", 403, "NO_PERMISSION", "no"), ZohoRefused, (502, "zoho_refused"), 6),
        (ZohoAuthError("Zoho POST", 401, "invalid_code", "no"), ZohoAuthError, (502, "zoho_credentials_refused"), 6),
        (InvalidZohoRequest("Zoho ids are 1-20 digits"), InvalidZohoRequest, (400, "invalid_zoho_request"), 2),
        (SiteError("the Moodle URL is not http(s)"), SiteError, (400, "invalid_moodle_site"), 2),
        (SecretKeyError("SYNCENGINE_SECRET_KEY is not a key"), SecretKeyError, (500, "internal_error"), 6),
    ],
)  # fmt: skip
def test_moodle_zoho_and_site_failures_are_in_the_tree_and_both_tables(
    failure: SyncEngineError, kind: type[SyncEngineError], http: tuple[int, str], exit_status: int
) -> None:
    """Each is a failure of the engine, of the branch its answer says (a Moodle failure is built
    as the branch its errorcode gives), with the message it had and its own attributes."""
    assert type(failure) is kind and isinstance(failure, SyncEngineError)
    error = to_api_error(failure)
    assert (error.status_code, error.error) == http
    assert error.message == (str(failure) if http[0] != 500 else "internal error")
    assert cli.exit_status(kind) == exit_status


def test_a_moodle_failure_keeps_its_attributes_and_message_through_pickling() -> None:
    failure = MoodleError("core_user_create_users", "invalidparameter", "Invalid parameter value detected",
                          transient=False, debuginfo="users")  # fmt: skip
    again = pickle.loads(pickle.dumps(failure))
    assert type(again) is MoodleRejected and str(again) == str(failure) == (
        "core_user_create_users: invalidparameter: Invalid parameter value detected (users): fix the record's "
        "values (a taken username or email, an upper-case username, a missing field), then retry"
    )
    assert (again.function, again.errorcode, again.message, again.transient, again.debuginfo) == (
        "core_user_create_users",
        "invalidparameter",
        "Invalid parameter value detected",
        False,
        "users",
    )
