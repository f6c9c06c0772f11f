"""Alembic environment for Rookery's SQL storage (DESIGN.md "Data and durability").

Migrations are run only through ``rookery.storage.sql.SQLStorage.open()``, which passes an open,
already-locked connection in ``config.attributes["connection"]`` and owns the transaction: the whole
upgrade commits or rolls back as one unit, and concurrent openers wait on the lock instead of racing.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Rookery migrations run through rookery.storage.sql.SQLStorage.open() (e.g. `rookery check`), "
        "not the alembic command line"
    )

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
