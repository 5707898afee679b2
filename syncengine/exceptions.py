"""The engine's exceptions: one root, a branch per kind of failure, a stable `code` on each.

    try:
        await engine.sync(tenant, entity, records)
    except NotFound as error:      # a branch: what kind of failure
        print(error.code, error)   # 'unknown_entity', "unknown entity 'studnets' (known: ...)"

A failure of the engine is a subclass of one branch with its own `code`; the edges translate
the tree, not each class: errors.py to HTTP answers (one table), cli.py to an exit status and
one line (one table). Its message (`str(error)`) says what, where, and what to do; it never
holds a secret. Nothing here knows HTTP, a command line or a database driver.

The clients of other services raise into the tree too, each family under the branches its
failures belong to: moodle.py (`MoodleError`: unavailable, misconfigured, or values refused),
zoho.py (`ZohoError`: unavailable, or refused; `InvalidZohoRequest`), sites.py (`SiteError`),
vault.py (`SecretKeyError`).

The database's failures, as the store translates its driver's (store.py's `translate`), are
here too, since the engine, the edges and the store all speak of them.
"""

from __future__ import annotations

from typing import ClassVar


class SyncEngineError(Exception):
    """The root: every failure the engine means to report, with its stable `code`."""

    code: ClassVar[str] = "engine_error"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.code


class BadInput(SyncEngineError, ValueError):
    """What was sent cannot be taken as it is: nothing of it was done."""

    code = "bad_input"


class NotFound(SyncEngineError, LookupError):
    """What was named does not exist."""

    code = "not_found"


class Conflict(SyncEngineError):
    """The request clashes with another one or with stored state."""

    code = "conflict"


class Unavailable(SyncEngineError):
    """Something the engine needs (the database, its schema) is not there right now: try again.
    `retry_after`, where set, is how many seconds to wait (over HTTP, its Retry-After)."""

    code = "unavailable"
    retry_after: float | None = None


class Misconfigured(SyncEngineError):
    """The setup (settings, descriptors, migrations) is wrong: fix it, then start again."""

    code = "misconfigured"


class LostRace(Conflict):
    """Another writer changed or inserted the transaction's rows first; it is run again as it is."""

    code = "lost_race"


class SchemaMissing(Unavailable):
    """The database has no table for what a statement needs: the migrations are not applied."""

    code = "schema_missing"


class UnstorableValue(BadInput):
    """The database (or its driver) refused a value that validation let through; `reason` is
    the driver's words, without the value (it is a record's content)."""

    code = "unstorable_value"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"a value in this request cannot be stored ({reason}); nothing was written: "
            "check the records for numbers beyond 64 bits and text with NUL characters"
        )


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached, or did not answer in time; `reason` says how, without
    any statement, parameter or password."""

    code = "database_unavailable"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the database cannot be reached: {reason}")


class DatabaseNotOpened(DatabaseUnavailable):
    """The database file cannot be opened (SQLite: its folder is missing, or not writable)."""

    code = "database_unavailable"  # the same answer: only the command line says it otherwise


class DatabaseBusy(Unavailable):
    """The database is there, but a wait (a lock, the pool, a statement) ran past its budget."""

    code = "database_busy"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the database is busy: {reason}")
