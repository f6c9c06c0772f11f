"""Archive full-text search and retention: the ``text`` column, its full-text index, and an index for
pruning by time across users.

``text`` holds the searchable text of an item (a message's body), only when full-text search is on
(``[mam] full_text``); NULL otherwise, and rows with NULL cost nothing in the full-text index.

* SQLite: an FTS5 table ``archive_fts`` over ``archive.text`` ("external content": it stores only the
  index; ``rowid`` is ``archive.seq``), kept in step by triggers that fire only for rows with text.
* PostgreSQL: a partial GIN index on ``to_tsvector('simple', text)`` (``simple``: no stemming, so
  every language is searched the same way).

``ix_archive_store_time`` on ``(store, ts)`` lets retention delete old items of every user with an
index range scan.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("archive", sa.Column("text", sa.Text(), nullable=True))
    op.create_index("ix_archive_store_time", "archive", ["store", "ts"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_archive_fts ON archive USING gin (to_tsvector('simple', text)) "
            "WHERE text IS NOT NULL"
        )
        return
    op.execute(
        "CREATE VIRTUAL TABLE archive_fts USING fts5(text, content='archive', content_rowid='seq')"
    )
    op.execute(
        "CREATE TRIGGER archive_fts_insert AFTER INSERT ON archive WHEN new.text IS NOT NULL BEGIN "
        "INSERT INTO archive_fts(rowid, text) VALUES (new.seq, new.text); END"
    )
    op.execute(
        "CREATE TRIGGER archive_fts_delete AFTER DELETE ON archive WHEN old.text IS NOT NULL BEGIN "
        "INSERT INTO archive_fts(archive_fts, rowid, text) VALUES ('delete', old.seq, old.text); END"
    )
    op.execute(
        "CREATE TRIGGER archive_fts_update AFTER UPDATE OF text ON archive BEGIN "
        "INSERT INTO archive_fts(archive_fts, rowid, text) SELECT 'delete', old.seq, old.text "
        "WHERE old.text IS NOT NULL; "
        "INSERT INTO archive_fts(rowid, text) SELECT new.seq, new.text WHERE new.text IS NOT NULL; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_archive_fts")
    else:
        op.execute("DROP TRIGGER IF EXISTS archive_fts_update")
        op.execute("DROP TRIGGER IF EXISTS archive_fts_delete")
        op.execute("DROP TRIGGER IF EXISTS archive_fts_insert")
        op.execute("DROP TABLE IF EXISTS archive_fts")
    op.drop_index("ix_archive_store_time", table_name="archive")
    op.drop_column("archive", "text")
