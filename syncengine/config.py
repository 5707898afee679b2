"""Settings: every `SYNCENGINE_*` variable of the environment, read and checked in one place.

| variable                         | default                                            |
|----------------------------------|----------------------------------------------------|
| SYNCENGINE_DATABASE_URL          | sqlite:///syncengine.db (in the working directory) |
| SYNCENGINE_ENTITIES              | ./entities.yaml                                    |
| SYNCENGINE_MIGRATIONS            | the `migrations/` folder beside the entities file  |
| SYNCENGINE_MAX_BODY_BYTES        | 10485760 (10 MiB): a larger request body is 413    |
| SYNCENGINE_MAX_RECORDS           | 5000: a request with more records is 413           |
| SYNCENGINE_IDEMPOTENCY_TTL       | 3600 seconds: how long an Idempotency-Key replays  |
| SYNCENGINE_IDEMPOTENCY_WAIT      | 30 seconds: how long a repeat waits for the first request with its key before 409 |
| SYNCENGINE_MAX_VERSION_SKEW      | 300 seconds: a Modified_Time further ahead of the clock is INVALID |
| SYNCENGINE_BODY_TIMEOUT          | 30 seconds: a body not all sent this long after its request began is 408 |
| SYNCENGINE_HEADER_TIMEOUT        | 10 seconds: request line and headers not all sent by then are 408 |
| SYNCENGINE_KEEP_ALIVE_TIMEOUT    | 5 seconds: how long `serve` keeps an idle keep-alive connection open |
| SYNCENGINE_DB_CONNECT_TIMEOUT    | 5 seconds: opening a connection, or waiting for a pooled one |
| SYNCENGINE_DB_STATEMENT_TIMEOUT  | 30 seconds: one statement (PostgreSQL)             |
| SYNCENGINE_DB_LOCK_TIMEOUT       | 10 seconds: waiting for a lock (PostgreSQL's lock_timeout, SQLite's busy_timeout) |
| SYNCENGINE_MAX_ACTIVE_REQUESTS   | the pool's connections less 2: turns at work in a process (admission.py) |
| SYNCENGINE_TENANT_MAX_ACTIVE_REQUESTS | 3/4 of the above: turns at work of one tenant |
| SYNCENGINE_MAX_WAITING_REQUESTS  | 4 x the above but one: requests waiting for a turn before 503/429 |
| SYNCENGINE_ADMISSION_WAIT        | 10 seconds: how long a request waits for its turn  |
| SYNCENGINE_LOG_LEVEL             | INFO                                               |
| SYNCENGINE_DELIVERY_WORKER       | 1: `serve` runs a delivery worker (0: none, as `serve --no-worker`) |
| SYNCENGINE_DELIVERY_ATTEMPTS     | 20: transient failures (Moodle down, timeouts) before a delivery is dead |
| SYNCENGINE_DELIVERY_PERMANENT_ATTEMPTS | 3: permanent failures (Moodle refuses the values) before dead |
| SYNCENGINE_DELIVERY_RETRY_BASE   | 5 seconds: the first retry's delay, doubled each attempt, with jitter |
| SYNCENGINE_DELIVERY_RETRY_MAX    | 3600 seconds: the longest delay between retries    |
| SYNCENGINE_DELIVERY_LEASE        | 300 seconds: a claim a killed worker left is taken over after this |
| SYNCENGINE_INTAKE_WORKER         | 1: `serve` takes in Zoho's notifications and renews channels (0: neither) |
| SYNCENGINE_INTAKE_ATTEMPTS       | 10: tries while Zoho is unavailable before an intake row is failed |
| SYNCENGINE_INTAKE_RETRY_BASE     | 5 seconds: the first retry's delay, doubled each attempt, with jitter |
| SYNCENGINE_INTAKE_RETRY_MAX      | 600 seconds: the longest delay between retries     |
| SYNCENGINE_INTAKE_LEASE          | 300 seconds: intake rows a killed worker claimed are taken over after this |
| SYNCENGINE_CHANNEL_RENEWAL       | 3600 seconds: how often `serve` renews Zoho channels that expire within a day |
| SYNCENGINE_PUBLIC_URL            | none: the base URL Zoho reaches the service at (`zoho watch --url`) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from syncengine.exceptions import Misconfigured

if TYPE_CHECKING:
    from syncengine.delivery import Policy
    from syncengine.intake import IntakePolicy
    from syncengine.store import Timeouts

DEFAULT_DATABASE_URL = "sqlite:///syncengine.db"


class ConfigError(Misconfigured):
    """An environment variable has a value syncengine cannot use."""

    code = "invalid_setting"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    entities: Path = Path("entities.yaml")
    migrations: Path | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    max_records: int = 5000
    idempotency_ttl: float = 3600.0
    idempotency_wait: float = 30.0
    max_version_skew: float = 300.0
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    db_connect_timeout: float = 5.0
    db_statement_timeout: float = 30.0
    db_lock_timeout: float = 10.0
    #: None: sized from the database pool (see syncengine/admission.py).
    max_active_requests: int | None = None
    tenant_max_active_requests: int | None = None
    max_waiting_requests: int | None = None
    admission_wait: float = 10.0
    log_level: str = "INFO"
    delivery_worker: bool = True
    delivery_attempts: int = 20
    delivery_permanent_attempts: int = 3
    delivery_retry_base: float = 5.0
    delivery_retry_max: float = 3600.0
    delivery_lease: float = 300.0
    intake_worker: bool = True
    intake_attempts: int = 10
    intake_retry_base: float = 5.0
    intake_retry_max: float = 600.0
    intake_lease: float = 300.0
    channel_renewal: float = 3600.0
    public_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        migrations = environ.get("SYNCENGINE_MIGRATIONS")
        return cls(
            database_url=environ.get("SYNCENGINE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            entities=Path(environ.get("SYNCENGINE_ENTITIES") or "entities.yaml"),
            migrations=Path(migrations) if migrations else None,
            max_body_bytes=int(_number(environ, "SYNCENGINE_MAX_BODY_BYTES", cls.max_body_bytes, integer=True)),
            max_records=int(_number(environ, "SYNCENGINE_MAX_RECORDS", cls.max_records, integer=True)),
            idempotency_ttl=_number(environ, "SYNCENGINE_IDEMPOTENCY_TTL", cls.idempotency_ttl),
            idempotency_wait=_number(environ, "SYNCENGINE_IDEMPOTENCY_WAIT", cls.idempotency_wait),
            max_version_skew=_number(environ, "SYNCENGINE_MAX_VERSION_SKEW", cls.max_version_skew),
            body_timeout=_number(environ, "SYNCENGINE_BODY_TIMEOUT", cls.body_timeout),
            header_timeout=_number(environ, "SYNCENGINE_HEADER_TIMEOUT", cls.header_timeout),
            keep_alive_timeout=int(
                _number(environ, "SYNCENGINE_KEEP_ALIVE_TIMEOUT", cls.keep_alive_timeout, integer=True)
            ),
            db_connect_timeout=_number(environ, "SYNCENGINE_DB_CONNECT_TIMEOUT", cls.db_connect_timeout),
            db_statement_timeout=_number(environ, "SYNCENGINE_DB_STATEMENT_TIMEOUT", cls.db_statement_timeout),
            db_lock_timeout=_number(environ, "SYNCENGINE_DB_LOCK_TIMEOUT", cls.db_lock_timeout),
            max_active_requests=_count(environ, "SYNCENGINE_MAX_ACTIVE_REQUESTS"),
            tenant_max_active_requests=_count(environ, "SYNCENGINE_TENANT_MAX_ACTIVE_REQUESTS"),
            max_waiting_requests=_count(environ, "SYNCENGINE_MAX_WAITING_REQUESTS"),
            admission_wait=_number(environ, "SYNCENGINE_ADMISSION_WAIT", cls.admission_wait),
            log_level=(environ.get("SYNCENGINE_LOG_LEVEL") or cls.log_level).upper(),
            delivery_worker=environ.get("SYNCENGINE_DELIVERY_WORKER", "1").strip() not in ("0", "false", "no"),
            delivery_attempts=int(
                _number(environ, "SYNCENGINE_DELIVERY_ATTEMPTS", cls.delivery_attempts, integer=True)
            ),
            delivery_permanent_attempts=int(
                _number(
                    environ, "SYNCENGINE_DELIVERY_PERMANENT_ATTEMPTS", cls.delivery_permanent_attempts, integer=True
                )
            ),
            delivery_retry_base=_number(environ, "SYNCENGINE_DELIVERY_RETRY_BASE", cls.delivery_retry_base),
            delivery_retry_max=_number(environ, "SYNCENGINE_DELIVERY_RETRY_MAX", cls.delivery_retry_max),
            delivery_lease=_number(environ, "SYNCENGINE_DELIVERY_LEASE", cls.delivery_lease),
            intake_worker=environ.get("SYNCENGINE_INTAKE_WORKER", "1").strip() not in ("0", "false", "no"),
            intake_attempts=int(_number(environ, "SYNCENGINE_INTAKE_ATTEMPTS", cls.intake_attempts, integer=True)),
            intake_retry_base=_number(environ, "SYNCENGINE_INTAKE_RETRY_BASE", cls.intake_retry_base),
            intake_retry_max=_number(environ, "SYNCENGINE_INTAKE_RETRY_MAX", cls.intake_retry_max),
            intake_lease=_number(environ, "SYNCENGINE_INTAKE_LEASE", cls.intake_lease),
            channel_renewal=_number(environ, "SYNCENGINE_CHANNEL_RENEWAL", cls.channel_renewal),
            public_url=environ.get("SYNCENGINE_PUBLIC_URL") or None,
        )

    @property
    def database_timeouts(self) -> Timeouts:
        from syncengine.store import Timeouts

        return Timeouts(self.db_connect_timeout, self.db_statement_timeout, self.db_lock_timeout)

    @property
    def delivery_policy(self) -> Policy:
        from syncengine.delivery import Policy

        return Policy(
            lease=self.delivery_lease,
            retry_base=self.delivery_retry_base,
            retry_max=self.delivery_retry_max,
            attempts=self.delivery_attempts,
            permanent_attempts=self.delivery_permanent_attempts,
        )

    @property
    def intake_policy(self) -> IntakePolicy:
        from syncengine.intake import IntakePolicy

        return IntakePolicy(
            lease=self.intake_lease,
            retry_base=self.intake_retry_base,
            retry_max=self.intake_retry_max,
            attempts=self.intake_attempts,
        )

    @property
    def migrations_dir(self) -> Path:
        return self.migrations or self.entities.parent / "migrations"


def _number(environ: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        kind = "a positive whole number" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}")
    return value


def _count(environ: Mapping[str, str], name: str) -> int | None:
    """A positive whole number, or None where the variable is not set."""
    if not environ.get(name):
        return None
    return int(_number(environ, name, 0, integer=True))
