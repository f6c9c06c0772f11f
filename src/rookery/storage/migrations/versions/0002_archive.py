"""Archive store: time-ordered items per user (XEP-0313 message archives, modules' own archives).

One table for every archive, told apart by ``store``.  ``seq`` (autoincrement) breaks ties between
items with the same timestamp ``ts`` so that they keep insertion order; ``id`` is the opaque, random
item id handed out to clients (XEP-0313: unpredictable and unique within the archive), unique across
the whole table.  ``peer`` is the other party as given (bare or full JID) and ``peer_bare`` its bare
JID, so that a bare "with" filter matching every full JID of it is an index lookup, not a LIKE.
Indexes lead with ``(host, username)`` so that account deletion finds the rows too.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "archive",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("store", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("peer", sa.Text(), nullable=True),
        sa.Column("peer_bare", sa.Text(), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_index("ux_archive_id", "archive", ["id"], unique=True)
    op.create_index("ix_archive_user_time", "archive", ["host", "username", "store", "ts", "seq"])
    op.create_index(
        "ix_archive_user_peer", "archive", ["host", "username", "store", "peer_bare", "ts", "seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_archive_user_peer", table_name="archive")
    op.drop_index("ix_archive_user_time", table_name="archive")
    op.drop_index("ux_archive_id", table_name="archive")
    op.drop_table("archive")
