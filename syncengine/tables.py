"""SQL tables, derived from the descriptors, plus the engine's own fixed tables.

    metadata = build_metadata(load_catalog("entities.yaml"))   # a table per entity, and syncengine_*

Alembic's `migrations/env.py` uses `build_metadata` as its target, so a descriptor change turns
into a generated migration.
"""

from __future__ import annotations

import sqlalchemy as sa

from syncengine.descriptors import Catalog, Entity, lookup_columns
from syncengine.fieldtypes import ID_LENGTH, UtcDateTime

#: Constraint names that are the same on every database, so migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: A surrogate key that autoincrements on SQLite (INTEGER PRIMARY KEY) and PostgreSQL (BIGINT).
RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Every timestamp column: aware UTC datetimes in and out, on both databases.
Timestamp = UtcDateTime()
TENANT_LENGTH = 64
ZOHO_ID_LENGTH = ID_LENGTH
IDEMPOTENCY_KEY_LENGTH = 255

#: The engine's fixed tables, by name: code names them through these, never by a string of its own.
OUTBOX = "syncengine_outbox"
TENANTS = "syncengine_tenants"
IDEMPOTENCY_KEYS = "syncengine_idempotency_keys"
ZOHO_SITES = "syncengine_zoho_sites"
ZOHO_TOKENS = "syncengine_zoho_tokens"
ZOHO_CHANNELS = "syncengine_zoho_channels"
INTAKE = "syncengine_intake"
BACKFILLS = "syncengine_backfills"


def build_metadata(catalog: Catalog) -> sa.MetaData:
    """Every entity's table and the engine tables, in one MetaData."""
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    for entity in catalog:
        entity_table(entity, metadata)
    engine_tables(metadata)
    return metadata


def entity_table(entity: Entity, metadata: sa.MetaData) -> sa.Table:
    """One row per (tenant, Zoho record): a typed column per field, two per lookup."""
    columns: list[sa.Column[object]] = []
    for field in entity.fields:
        if field.is_lookup:
            zoho_column, local_column = lookup_columns(field.name)
            columns.append(sa.Column(zoho_column, field.type.column(field.options), comment=field.source))
            columns.append(sa.Column(local_column, RowId, comment=f"local id in {field.target}"))
        else:
            columns.append(sa.Column(field.name, field.type.column(field.options), comment=field.source))
    return sa.Table(
        entity.name,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("zoho_id", sa.String(ZOHO_ID_LENGTH), nullable=False),
        *columns,
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("source_version", Timestamp),
        sa.Column("moodle_id", sa.BigInteger),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("deleted_at", Timestamp),
        sa.UniqueConstraint("tenant_id", "zoho_id"),
        comment=f"Zoho module {entity.source}",
    )


def engine_tables(metadata: sa.MetaData) -> None:
    """The fixed tables: what the engine needs whatever the descriptors say."""
    sa.Table(
        OUTBOX,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("zoho_id", sa.String(ZOHO_ID_LENGTH), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False, comment="upsert or delete"),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Index(None, "state", "next_attempt_at"),
        comment="Changes waiting to be delivered to Moodle, written with the change itself",
    )
    sa.Table(
        TENANTS,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(TENANT_LENGTH), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True, comment="SHA-256 of the API key, hex"),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("key_created_at", Timestamp, nullable=False, comment="when the current key was issued"),
        comment="Tenants and the hashes of their API keys; a key itself is never stored",
    )
    sa.Table(
        IDEMPOTENCY_KEYS,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("key", sa.String(IDEMPOTENCY_KEY_LENGTH), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False, comment="SHA-256 of the request body and options"),
        sa.Column("status_code", sa.Integer, comment="null while the first request is processed"),
        sa.Column("response", sa.LargeBinary),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.UniqueConstraint("tenant_id", "endpoint", "key"),
        sa.Index(None, "expires_at"),
        comment="Idempotency-Key claims and the responses they replay, until they expire",
    )
    sa.Table(
        "syncengine_moodle_links",
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("zoho_id", sa.String(ZOHO_ID_LENGTH), nullable=False),
        sa.Column("target", sa.String(64), nullable=False, comment="the mapping's target name"),
        sa.Column("moodle_id", sa.BigInteger, comment="null for enrolments, which Moodle gives no id"),
        sa.Column("digest", sa.String(64), nullable=False, comment="of what was last sent (mapping.DesiredState)"),
        sa.Column("active", sa.Boolean, nullable=False, comment="false once its leave action was applied"),
        sa.Column("delivered_at", Timestamp, nullable=False),
        sa.UniqueConstraint("tenant_id", "entity", "zoho_id", "target"),
        comment="What each record's Moodle targets are in Moodle: written by delivery only, never by sync batches",
    )
    sa.Table(
        "syncengine_moodle_sites",
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False, comment="read by the delivery worker only (sites.py)"),
        sa.Column("max_input_vars", sa.Integer, nullable=False, server_default="1000"),
        sa.Column("updated_at", Timestamp, nullable=False),
        comment="Each tenant's Moodle site and web-service token",
    )

    zoho_tables(metadata)


def zoho_tables(metadata: sa.MetaData) -> None:
    """What Zoho intake keeps: credentials, the shared access token, channels, queued ids, backfill cursors."""
    sa.Table(
        ZOHO_SITES,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False, unique=True),
        sa.Column("dc", sa.String(8), nullable=False, comment="Zoho data centre: us, eu, in, au, jp, cn, sa, uk, ca"),
        sa.Column("accounts_url", sa.Text, comment="overrides the data centre's accounts host"),
        sa.Column("api_url", sa.Text, comment="overrides the API host Zoho names with each token"),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("client_secret", sa.Text, nullable=False, comment="sealed (vault.py); read by zoho_sites.py only"),
        sa.Column("refresh_token", sa.Text, nullable=False, comment="sealed (vault.py); read by zoho_sites.py only"),
        sa.Column("updated_at", Timestamp, nullable=False),
        comment="Each tenant's Zoho CRM client credentials",
    )
    sa.Table(
        ZOHO_TOKENS,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("cache_key", sa.String(255), nullable=False, unique=True, comment="accounts|client id|digest"),
        sa.Column("access_token", sa.Text, comment="sealed (vault.py); null until the first refresh"),
        sa.Column("api_domain", sa.Text),
        sa.Column("expires_at", Timestamp),
        sa.Column("refreshing_until", Timestamp, comment="a process refreshes the token until then; others wait"),
        sa.Column("updated_at", Timestamp, nullable=False),
        comment="Zoho access tokens shared by every process (10 new tokens per 10 minutes per refresh token)",
    )
    sa.Table(
        ZOHO_CHANNELS,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("channel_id", sa.BigInteger, nullable=False, unique=True, comment="Zoho's channel_id, ours to pick"),
        sa.Column("token_hash", sa.String(64), nullable=False, comment="SHA-256 of the token Zoho echoes, hex"),
        sa.Column("previous_token_hash", sa.String(64), comment="the token before the last renewal, still taken"),
        sa.Column("notify_url", sa.Text, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.UniqueConstraint("tenant_id", "entity"),
        comment="Zoho notification channels: one per tenant and entity, renewed before it expires",
    )
    sa.Table(
        INTAKE,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("zoho_id", sa.String(ZOHO_ID_LENGTH), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False, comment="insert, update or delete"),
        sa.Column(
            "state", sa.String(16), nullable=False, server_default="pending", comment="pending, working, done or failed"
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("status", sa.String(16), comment="the record's outcome once synced: NEW, UPDATED, INVALID..."),
        sa.Column("last_error", sa.Text),
        sa.Column("channel_id", sa.BigInteger, comment="the notification channel it came from"),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Index(None, "state", "next_attempt_at"),
        sa.Index(None, "tenant_id", "state"),
        comment="Ids Zoho notified, queued at once and fetched and synced after the answer",
    )
    sa.Table(
        BACKFILLS,
        metadata,
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(TENANT_LENGTH), nullable=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("since", Timestamp, comment="If-Modified-Since of the pull, null for everything"),
        sa.Column("page_token", sa.Text, comment="where the pull resumes; null before the first page"),
        sa.Column("pages", sa.Integer, nullable=False, server_default="0"),
        sa.Column("counts", sa.Text, nullable=False, server_default="{}", comment="records per status, JSON"),
        sa.Column("state", sa.String(16), nullable=False, comment="running or done"),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.UniqueConstraint("tenant_id", "entity"),
        comment="Each entity's backfill cursor, so an interrupted backfill resumes where it stopped",
    )


_ENGINE_METADATA = sa.MetaData(naming_convention=NAMING_CONVENTION)
engine_tables(_ENGINE_METADATA)


def engine_table(name: str) -> sa.Table:
    """One fixed table, for code that needs it without loading the descriptors."""
    return _ENGINE_METADATA.tables[name]
