"""decimals exact on sqlite

SQLite's NUMERIC is a binary float: 12345678901234.5678 read back as 12345678901234.5684. On
SQLite, decimal columns now hold their exact text (`syncengine.fieldtypes.DecimalText`);
PostgreSQL's NUMERIC(18, 4) was exact already and is left alone.

A value stored before may already have been rounded, while its row's fingerprint is that of the
value as sent, so a resend would say UNCHANGED and keep the rounded value. Such rows lose their
fingerprint here: the next time each record is sent, its values are compared instead, and a
rounded one is UPDATED to the exact value (one that was exact stays UNCHANGED).

Revision ID: 3c1d0e7a9b52
Revises: f854d54507b2
Create Date: 2026-12-04 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '3c1d0e7a9b52'
down_revision: str | None = 'f854d54507b2'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, decimal column) of entities.yaml at this revision.
DECIMALS = (('payments', 'amount'), ('programs', 'price'), ('registrations', 'price'))
EXACT = sa.Numeric(precision=18, scale=4).with_variant(sa.String(length=20), 'sqlite')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table, column in DECIMALS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column,
                   existing_type=sa.NUMERIC(precision=18, scale=4),
                   type_=EXACT,
                   existing_nullable=True)
        op.execute(f"UPDATE {table} SET fingerprint = '' WHERE {column} IS NOT NULL")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table, column in reversed(DECIMALS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column,
                   existing_type=EXACT,
                   type_=sa.NUMERIC(precision=18, scale=4),
                   existing_nullable=True)
