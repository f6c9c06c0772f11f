"""Initial schema: accounts, SCRAM credentials, rosters, pending subscriptions, key-value, offline.

DESIGN.md "Data and durability": SCRAM keys only (RFC 5802 §3), RFC 6121 rosters with per-user
versions (§2.6), XEP-0160 offline queue in arrival order.  Users are ``(host, username)``; the column
is not called ``user`` because that is a reserved word in PostgreSQL.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", name="pk_accounts"),
    )
    op.create_table(
        "credentials",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("hash_name", sa.Text(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("stored_key", sa.LargeBinary(), nullable=False),
        sa.Column("server_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "hash_name", name="pk_credentials"),
        sa.ForeignKeyConstraint(
            ["host", "username"],
            ["accounts.host", "accounts.username"],
            name="fk_credentials_accounts",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "roster_versions",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", name="pk_roster_versions"),
    )
    op.create_table(
        "roster_items",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("subscription", sa.Text(), nullable=False),
        sa.Column("ask", sa.Boolean(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "contact", name="pk_roster_items"),
    )
    op.create_table(
        "roster_pending_in",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "contact", name="pk_roster_pending_in"),
    )
    op.create_table(
        "kv",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "store", "key", name="pk_kv"),
    )
    op.create_table(
        "offline",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_offline_user", "offline", ["host", "username", "id"])


def downgrade() -> None:
    op.drop_index("ix_offline_user", table_name="offline")
    for table in ("offline", "kv", "roster_pending_in", "roster_items", "roster_versions", "credentials"):
        op.drop_table(table)
    op.drop_table("accounts")
