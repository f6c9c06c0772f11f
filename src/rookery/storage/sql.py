"""SQL storage backend: SQLite (WAL, default) or PostgreSQL (DESIGN.md "Data and durability").

Implements every store of ``rookery.storage.base`` with SQLAlchemy 2 Core on asyncio
(``sqlite+aiosqlite`` / ``postgresql+asyncpg``); no ORM.  Schema changes are Alembic migrations in
``rookery/storage/migrations``, applied by :meth:`SQLStorage.open`.

Durability and concurrency:

* SQLite runs in WAL mode with ``synchronous=FULL`` (a commit survives power loss, not just ``kill -9``),
  ``busy_timeout`` 10 s and foreign keys on, set on every new connection.  Several processes share the
  file (the server and CLI commands such as ``rookery adduser``), so every write transaction starts with
  ``BEGIN IMMEDIATE``: the write lock is taken up front (waiting up to ``busy_timeout``), and a
  transaction that read first can never fail to upgrade its lock half-way.  Reads use a plain
  (deferred) ``BEGIN`` and never block writers in WAL mode.  Within one process, SQLite writers queue
  on an ``asyncio.Lock`` instead of polling in SQLite's busy handler (sleeps of up to 100 ms), so the
  busy handler only arbitrates between processes.  Transactions are retried a few times on
  "database is locked" (SQLite) and on serialization failure / deadlock (PostgreSQL).
* Every store method is one transaction: account creation is ``INSERT .. ON CONFLICT DO NOTHING
  RETURNING`` (concurrent creators: exactly one wins), the roster version is bumped by an upsert in the
  same transaction as the item write, account deletion removes the user's rows from every table at
  once, and ``offline.pop_all`` is one ``DELETE .. RETURNING``.
* ``archive.append`` is one ``INSERT`` (no read first, no per-user lock).  Items are ordered by
  ``(ts, seq)``: the timestamp, then an autoincrement tie-breaker.  A defaulted timestamp is taken
  inside the write transaction; SQLite serializes writers, so ``(ts, seq)`` order is commit order
  (barring clock steps).  On PostgreSQL concurrent appends to one archive may commit out of that
  order, so a reader can briefly see an item before an older one commits; a client paging with
  ``after`` just then could miss the older item.  An explicit ``when`` (e.g. a delayed stanza's
  stamp) is stored as given and sorts by it.  ``archive.query`` resolves ``after``/``before`` ids and
  reads the page in one transaction.
* :meth:`SQLStorage.open` first checks, without any lock, whether the schema is at the Alembic head
  (the usual case: nothing else to do).  Otherwise the upgrade runs in one transaction holding a lock
  (SQLite ``BEGIN IMMEDIATE`` with foreign keys off, PostgreSQL ``pg_advisory_xact_lock``) and checks
  the head again under it, so processes opening a fresh database at once wait for each other and the
  later ones find the schema at head.  A failed migration leaves nothing behind (transactional DDL).

``:memory:`` SQLite databases are not supported (one shared connection cannot hold concurrent
transactions); use a file.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import logging
import random
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rookery.storage.base import AccountData, ArchiveItem, RosterItem, ScramCredential

__all__ = ["SQLStorage", "make_storage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# pg_advisory_xact_lock keys: one bigint for migrations, (namespace, hash) pairs for per-user locks.
_PG_MIGRATION_LOCK = 0x526F6F6B65727931  # b"Rookery1"
_PG_OFFLINE_LOCK_NS = 0x526F6F6B  # b"Rook"
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RETRIES = 8

# ---------------------------------------------------------------------------------------------------
# Tables.  These describe the schema at head for building queries; the schema itself is created and
# evolved only by the migrations (versions/0001_initial.py ...), which must be kept in step.
# ---------------------------------------------------------------------------------------------------

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
credentials = sa.Table(
    "credentials",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("hash_name", sa.Text, primary_key=True),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("iterations", sa.Integer, nullable=False),
    sa.Column("stored_key", sa.LargeBinary, nullable=False),
    sa.Column("server_key", sa.LargeBinary, nullable=False),
)
roster_versions = sa.Table(
    "roster_versions",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)
roster_items = sa.Table(
    "roster_items",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("contact", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("subscription", sa.Text, nullable=False),
    sa.Column("ask", sa.Boolean, nullable=False),
    sa.Column("approved", sa.Boolean, nullable=False),
    sa.Column("groups", sa.Text, nullable=False),  # JSON list of group names
)
roster_pending_in = sa.Table(
    "roster_pending_in",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("contact", sa.Text, primary_key=True),
    sa.Column("stanza", sa.Text, nullable=False),
)
kv = sa.Table(
    "kv",
    metadata,
    sa.Column("host", sa.Text, primary_key=True),
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("store", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
offline = sa.Table(
    "offline",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("stanza", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
archive = sa.Table(
    "archive",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("store", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("id", sa.Text, nullable=False, unique=True),  # opaque item id handed out to clients
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("peer", sa.Text, nullable=True),  # "with": bare or full JID as given
    sa.Column("peer_bare", sa.Text, nullable=True),  # its bare JID, for bare "with" filters
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=True),  # full-text searchable text (migration 0003)
)

# Tables holding per-user rows, in the order account deletion visits them (parents last).
_USER_TABLES = (credentials, roster_versions, roster_items, roster_pending_in, kv, offline, archive)


def _user(table: sa.Table, host: str, user: str) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.host == host, table.c.username == user)


# ---------------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------------


class SQLAccountStore:
    """``AccountStore``: accounts and their RFC 5802 §3 SCRAM credentials, one row per hash."""

    def __init__(self, db: SQLStorage) -> None:
        self._db = db

    async def create(self, host: str, user: str, creds: dict[str, ScramCredential]) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            stmt = (
                self._db._insert(accounts)
                .values(host=host, username=user, created_at=time.time())
                .on_conflict_do_nothing(index_elements=["host", "username"])
                .returning(accounts.c.host)
            )
            if (await conn.execute(stmt)).first() is None:
                return False
            await _insert_credentials(conn, host, user, creds)
            return True

        return await self._db._write(tx)

    def get_credentials_now(self, host: str, user: str) -> Any:
        """``get_credentials`` answered without waiting (SQLite's inline reads), or ``NotImplemented``
        when only the async path can answer (PostgreSQL, a busy database)."""
        rows = self._db.point_read(_SQL_CREDENTIALS, (host, user))
        if rows is not None:
            if rows:
                return {r[0]: ScramCredential(salt=bytes(r[1]), iterations=r[2], stored_key=bytes(r[3]),
                                              server_key=bytes(r[4])) for r in rows}
            exists = self._db.point_read(_SQL_ACCOUNT, (host, user))
            if exists is not None:
                return {} if exists else None
        return NotImplemented

    async def get_credentials(self, host: str, user: str) -> dict[str, ScramCredential] | None:
        rows = self._db.point_read(_SQL_CREDENTIALS, (host, user))
        if rows is not None:  # SQLite fast path (see SQLStorage.point_read)
            if rows:
                return {r[0]: ScramCredential(salt=bytes(r[1]), iterations=r[2], stored_key=bytes(r[3]),
                                              server_key=bytes(r[4])) for r in rows}
            exists = self._db.point_read(_SQL_ACCOUNT, (host, user))
            if exists is not None:
                return {} if exists else None

        async def tx(conn: AsyncConnection) -> dict[str, ScramCredential] | None:
            rows = (await conn.execute(sa.select(credentials).where(_user(credentials, host, user)))).all()
            if not rows and not await _account_exists(conn, host, user):
                return None
            return {
                r.hash_name: ScramCredential(
                    salt=bytes(r.salt),
                    iterations=r.iterations,
                    stored_key=bytes(r.stored_key),
                    server_key=bytes(r.server_key),
                )
                for r in rows
            }

        return await self._db._read(tx)

    async def set_credentials(self, host: str, user: str, creds: dict[str, ScramCredential]) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            locked = sa.select(accounts.c.host).where(_user(accounts, host, user)).with_for_update()
            if (await conn.execute(locked)).first() is None:
                return False
            await conn.execute(sa.delete(credentials).where(_user(credentials, host, user)))
            await _insert_credentials(conn, host, user, creds)
            return True

        return await self._db._write(tx)

    async def delete(self, host: str, user: str) -> bool:
        bare = f"{user}@{host}"

        async def tx(conn: AsyncConnection) -> bool:
            # RFC 6121 §2.5 / XEP-0077 §3.2: the account leaves the rosters of local contacts (their
            # versions change, so versioned clients see the removal) and their pending requests
            holders = await conn.execute(
                sa.select(roster_items.c.host, roster_items.c.username).where(roster_items.c.contact == bare)
            )
            for h, u in holders.all():
                if (h, u) == (host, user):
                    continue
                bump = self._db._insert(roster_versions).values(host=h, username=u, version=1)
                await conn.execute(bump.on_conflict_do_update(
                    index_elements=["host", "username"], set_={"version": roster_versions.c.version + 1}))
                await conn.execute(sa.delete(roster_items).where(
                    _user(roster_items, h, u), roster_items.c.contact == bare))
            await conn.execute(sa.delete(roster_pending_in).where(roster_pending_in.c.contact == bare))
            for table in _USER_TABLES:
                await conn.execute(sa.delete(table).where(_user(table, host, user)))
            stmt = sa.delete(accounts).where(_user(accounts, host, user)).returning(accounts.c.host)
            return (await conn.execute(stmt)).first() is not None

        return await self._db._write(tx)

    async def exists(self, host: str, user: str) -> bool:
        rows = self._db.point_read(_SQL_ACCOUNT, (host, user))
        if rows is not None:
            return bool(rows)
        return await self._db._read(lambda conn: _account_exists(conn, host, user))

    async def list(self, host: str | None = None) -> builtins.list[tuple[str, str]]:
        stmt = sa.select(accounts.c.host, accounts.c.username).order_by(accounts.c.host, accounts.c.username)
        if host is not None:
            stmt = stmt.where(accounts.c.host == host)

        async def tx(conn: AsyncConnection) -> builtins.list[tuple[str, str]]:
            return [(r.host, r.username) for r in await conn.execute(stmt)]

        return await self._db._read(tx)


_SQL_CREDENTIALS = (
    "SELECT hash_name, salt, iterations, stored_key, server_key FROM credentials WHERE host = ? AND username = ?"
)
_SQL_ACCOUNT = "SELECT 1 FROM accounts WHERE host = ? AND username = ?"
_SQL_ROSTER_VERSION = "SELECT version FROM roster_versions WHERE host = ? AND username = ?"
_SQL_ROSTER_ITEMS = (
    "SELECT contact, name, subscription, ask, approved, groups FROM roster_items WHERE host = ? AND username = ?"
)
_SQL_PENDING_IN = "SELECT contact, stanza FROM roster_pending_in WHERE host = ? AND username = ?"
_SQL_KV_GET = "SELECT value FROM kv WHERE host = ? AND username = ? AND store = ? AND key = ?"
_SQL_OFFLINE_ANY = "SELECT 1 FROM offline WHERE host = ? AND username = ? LIMIT 1"


async def _account_exists(conn: AsyncConnection, host: str, user: str) -> bool:
    row = (await conn.execute(sa.select(accounts.c.host).where(_user(accounts, host, user)))).first()
    return row is not None


async def _insert_credentials(
    conn: AsyncConnection, host: str, user: str, creds: dict[str, ScramCredential]
) -> None:
    if creds:
        await conn.execute(
            sa.insert(credentials),
            [
                {
                    "host": host,
                    "username": user,
                    "hash_name": name,
                    "salt": c.salt,
                    "iterations": c.iterations,
                    "stored_key": c.stored_key,
                    "server_key": c.server_key,
                }
                for name, c in creds.items()
            ],
        )


class SQLRosterStore:
    """``RosterStore``: RFC 6121 §2 roster items, §2.6 versions, §3.1.3 pending inbound requests."""

    def __init__(self, db: SQLStorage) -> None:
        self._db = db

    async def get(self, host: str, user: str) -> tuple[str, dict[str, RosterItem]]:
        got = self._db.snapshot_read([(_SQL_ROSTER_VERSION, (host, user)), (_SQL_ROSTER_ITEMS, (host, user))])
        if got is not None:  # SQLite fast path (see SQLStorage.snapshot_read): every login loads it
            ver_rows, item_rows = got
            return str(ver_rows[0][0] if ver_rows else 0), {r[0]: RosterItem(
                jid=r[0], name=r[1], subscription=r[2], ask=bool(r[3]), approved=bool(r[4]),
                groups=json.loads(r[5])) for r in item_rows}

        async def tx(conn: AsyncConnection) -> tuple[str, dict[str, RosterItem]]:
            ver = await conn.scalar(
                sa.select(roster_versions.c.version).where(_user(roster_versions, host, user))
            )
            rows = await conn.execute(sa.select(roster_items).where(_user(roster_items, host, user)))
            items = {r.contact: _item(r) for r in rows}
            return str(ver or 0), items

        return await self._db._read(tx, snapshot=True)

    async def get_item(self, host: str, user: str, contact: str) -> RosterItem | None:
        async def tx(conn: AsyncConnection) -> RosterItem | None:
            stmt = sa.select(roster_items).where(
                _user(roster_items, host, user), roster_items.c.contact == contact
            )
            row = (await conn.execute(stmt)).first()
            return None if row is None else _item(row)

        return await self._db._read(tx)

    async def set_item(self, host: str, user: str, item: RosterItem) -> str:
        values = {
            "name": item.name,
            "subscription": item.subscription,
            "ask": bool(item.ask),
            "approved": bool(item.approved),
            "groups": json.dumps(list(item.groups)),
        }

        async def tx(conn: AsyncConnection) -> str:
            version = await self._bump(conn, host, user)
            stmt = self._db._insert(roster_items).values(host=host, username=user, contact=item.jid, **values)
            stmt = stmt.on_conflict_do_update(index_elements=["host", "username", "contact"], set_=values)
            await conn.execute(stmt)
            return version

        return await self._db._write(tx)

    async def remove_item(self, host: str, user: str, contact: str) -> str:
        async def tx(conn: AsyncConnection) -> str:
            version = await self._bump(conn, host, user)
            await conn.execute(
                sa.delete(roster_items).where(
                    _user(roster_items, host, user), roster_items.c.contact == contact
                )
            )
            return version

        return await self._db._write(tx)

    async def _bump(self, conn: AsyncConnection, host: str, user: str) -> str:
        """Increment the user's roster version (first statement of the write: takes the row lock)."""
        stmt = self._db._insert(roster_versions).values(host=host, username=user, version=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=["host", "username"], set_={"version": roster_versions.c.version + 1}
        ).returning(roster_versions.c.version)
        return str((await conn.execute(stmt)).scalar_one())

    async def add_pending_in(self, host: str, user: str, contact: str, stanza: str) -> None:
        async def tx(conn: AsyncConnection) -> None:
            stmt = self._db._insert(roster_pending_in).values(
                host=host, username=user, contact=contact, stanza=stanza
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["host", "username", "contact"], set_={"stanza": stanza}
            )
            await conn.execute(stmt)

        await self._db._write(tx)

    async def remove_pending_in(self, host: str, user: str, contact: str) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                sa.delete(roster_pending_in).where(
                    _user(roster_pending_in, host, user), roster_pending_in.c.contact == contact
                )
            )

        await self._db._write(tx)

    async def get_pending_in(self, host: str, user: str) -> dict[str, str]:
        rows = self._db.point_read(_SQL_PENDING_IN, (host, user))
        if rows is not None:  # SQLite fast path: read at every initial presence, nearly always empty
            return {r[0]: r[1] for r in rows}

        async def tx(conn: AsyncConnection) -> dict[str, str]:
            stmt = sa.select(roster_pending_in.c.contact, roster_pending_in.c.stanza).where(
                _user(roster_pending_in, host, user)
            )
            return {r.contact: r.stanza for r in await conn.execute(stmt)}

        return await self._db._read(tx)


def _item(row: sa.Row[Any]) -> RosterItem:
    return RosterItem(
        jid=row.contact,
        name=row.name,
        subscription=row.subscription,
        ask=bool(row.ask),
        approved=bool(row.approved),
        groups=json.loads(row.groups),
    )


class SQLKeyValueStore:
    """``KeyValueStore``: small per-user (or host-wide, ``user == ""``) documents."""

    def __init__(self, db: SQLStorage) -> None:
        self._db = db

    @staticmethod
    def _where(store: str, host: str, user: str) -> sa.ColumnElement[bool]:
        return sa.and_(kv.c.host == host, kv.c.username == user, kv.c.store == store)

    async def get(self, store: str, host: str, user: str, key: str) -> str | None:
        rows = self._db.point_read(_SQL_KV_GET, (host, user, store, key))
        if rows is not None:  # SQLite fast path: modules read their per-user documents at every login
            # one loop turn, as the async path gave: a burst of requests for large documents is then
            # answered one flush at a time, so that [limits] max_send_buffer stops reading in time
            await asyncio.sleep(0)
            return rows[0][0] if rows else None
        stmt = sa.select(kv.c.value).where(self._where(store, host, user), kv.c.key == key)

        async def tx(conn: AsyncConnection) -> str | None:
            return await conn.scalar(stmt)

        return await self._db._read(tx)

    async def set(self, store: str, host: str, user: str, key: str, value: str) -> None:
        stmt = self._db._insert(kv).values(host=host, username=user, store=store, key=key, value=value)
        stmt = stmt.on_conflict_do_update(
            index_elements=["host", "username", "store", "key"], set_={"value": value}
        )

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self._db._write(tx)

    async def delete(self, store: str, host: str, user: str, key: str) -> None:
        stmt = sa.delete(kv).where(self._where(store, host, user), kv.c.key == key)

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(stmt)

        await self._db._write(tx)

    async def keys(self, store: str, host: str, user: str) -> list[str]:
        stmt = sa.select(kv.c.key).where(self._where(store, host, user)).order_by(kv.c.key)

        async def tx(conn: AsyncConnection) -> list[str]:
            return list((await conn.scalars(stmt)).all())

        return await self._db._read(tx)


class SQLOfflineStore:
    """``OfflineStore``: XEP-0160 offline messages in arrival order, at most ``limit`` per user.

    A ``limit`` of 0 or less stores nothing (every push reports a full queue).
    """

    def __init__(self, db: SQLStorage, limit: int) -> None:
        self._db = db
        self.limit = limit
        #: (host, user) -> pushes of this process not committed yet (``_surely_empty`` must see them)
        self._pushing: dict[tuple[str, str], int] = {}

    def _surely_empty(self, host: str, user: str) -> bool:
        """True when the user's queue is empty for certain, known without a transaction: no push of this
        process is in flight for the user and a read of the committed state (inline, SQLite's read-only
        connection, ~20 µs) finds nothing.  Every login asks (``peek``), and nearly every queue is empty:
        this spares each login a write transaction and a hop to the database thread (issue 12)."""
        if self._pushing.get((host, user)):
            return False
        rows = self._db.point_read(_SQL_OFFLINE_ANY, (host, user))
        return rows is not None and not rows

    async def push(self, host: str, user: str, stanza: str) -> bool:
        key = (host, user)
        self._pushing[key] = self._pushing.get(key, 0) + 1
        try:
            return await self._push(host, user, stanza)
        finally:
            n = self._pushing.pop(key) - 1
            if n:
                self._pushing[key] = n

    async def _push(self, host: str, user: str, stanza: str) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            if self._db.is_postgresql:
                # Serialize pushes per user so that concurrent pushes cannot overshoot the limit
                # (SQLite's BEGIN IMMEDIATE already serializes all writers).
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:ns, :key)"),
                    {"ns": _PG_OFFLINE_LOCK_NS, "key": _hash32(host, user)},
                )
            count = await conn.scalar(
                sa.select(sa.func.count()).select_from(offline).where(_user(offline, host, user))
            )
            if (count or 0) >= self.limit:
                return False
            await conn.execute(
                sa.insert(offline).values(host=host, username=user, stanza=stanza, created_at=time.time())
            )
            return True

        return await self._db._write(tx)

    async def pop_all(self, host: str, user: str) -> list[str]:
        if self._surely_empty(host, user):
            return []
        stmt = sa.delete(offline).where(_user(offline, host, user)).returning(offline.c.id, offline.c.stanza)

        async def tx(conn: AsyncConnection) -> list[str]:
            rows = (await conn.execute(stmt)).all()
            return [r.stanza for r in sorted(rows, key=lambda r: r.id)]

        return await self._db._write(tx)

    async def peek(self, host: str, user: str, limit: int | None = None) -> list[tuple[int, str]]:
        if self._surely_empty(host, user):
            return []
        stmt = sa.select(offline.c.id, offline.c.stanza).where(_user(offline, host, user)).order_by(offline.c.id)
        if limit is not None:
            stmt = stmt.limit(limit)

        async def tx(conn: AsyncConnection) -> list[tuple[int, str]]:
            return [(int(r.id), r.stanza) for r in (await conn.execute(stmt)).all()]

        # in line with the writes (not on the read pool): pushes queued before this peek are seen,
        # as they were by the single DELETE .. RETURNING of pop_all
        return await self._db._write(tx)

    async def remove(self, host: str, user: str, ids: list[int]) -> int:
        if not ids:
            return 0
        stmt = sa.delete(offline).where(_user(offline, host, user), offline.c.id.in_(ids))

        async def tx(conn: AsyncConnection) -> int:
            return int((await conn.execute(stmt)).rowcount or 0)

        return await self._db._write(tx)

    async def count(self, host: str, user: str) -> int:
        stmt = sa.select(sa.func.count()).select_from(offline).where(_user(offline, host, user))

        async def tx(conn: AsyncConnection) -> int:
            return int(await conn.scalar(stmt) or 0)

        return await self._db._read(tx)


class SQLArchiveStore:
    """``ArchiveStore``: time-ordered items per ``(store, host, user)``, for XEP-0313 and modules.

    Ids are 16 url-safe characters from ``secrets`` (96 random bits: XEP-0313 wants them unpredictable),
    unique across the table.  Pages are keyset scans of the ``(host, username, store, ts, seq)`` index
    (or ``(.., peer_bare, ts, seq)`` with a "with" filter), whatever their offset.
    """

    def __init__(self, db: SQLStorage) -> None:
        self._db = db

    @staticmethod
    def _where(store: str, host: str, user: str) -> sa.ColumnElement[bool]:
        return sa.and_(archive.c.host == host, archive.c.username == user, archive.c.store == store)

    async def append(
        self, store: str, host: str, user: str, value: str, *, with_: str | None = None,
        when: float | None = None,
    ) -> str:
        row = {
            "store": store,
            "host": host,
            "username": user,
            "peer": with_,
            "peer_bare": _bare(with_),
            "value": value,
        }

        async def tx(conn: AsyncConnection) -> str:
            ts = time.time() if when is None else float(when)  # inside the write lock: see module doc
            while True:  # a repeated id (odds 2**-96 per pair) just draws another
                item_id = secrets.token_urlsafe(12)
                stmt = (
                    self._db._insert(archive)
                    .values(id=item_id, ts=ts, **row)
                    .on_conflict_do_nothing(index_elements=["id"])
                    .returning(archive.c.seq)
                )
                if (await conn.execute(stmt)).first() is not None:
                    return item_id

        return await self._db._write(tx)

    async def query(
        self, store: str, host: str, user: str, *, with_: str | None = None, start: float | None = None,
        end: float | None = None, after: str | None = None, before: str | None = None,
        limit: int | None = None, reverse: bool = False, text: str | None = None,
    ) -> list[ArchiveItem]:
        where = [self._where(store, host, user)]
        if text is not None:
            where.append(self._text_match(text))
        if with_ is not None:
            # XEP-0313: a bare JID matches itself and all its full JIDs; a full JID only itself.
            where.append(archive.c.peer_bare == _bare(with_))
            if "/" in with_:
                where.append(archive.c.peer == with_)
        if start is not None:
            where.append(archive.c.ts >= start)
        if end is not None:
            where.append(archive.c.ts <= end)
        key = sa.tuple_(archive.c.ts, archive.c.seq)
        order = (archive.c.ts.desc(), archive.c.seq.desc()) if reverse else (archive.c.ts, archive.c.seq)

        async def position(conn: AsyncConnection, item_id: str) -> sa.Tuple:
            stmt = sa.select(archive.c.ts, archive.c.seq).where(
                self._where(store, host, user), archive.c.id == item_id
            )
            row = (await conn.execute(stmt)).first()
            if row is None:
                raise KeyError(item_id)
            return sa.tuple_(
                sa.literal(row.ts, archive.c.ts.type), sa.literal(row.seq, archive.c.seq.type)
            )

        async def tx(conn: AsyncConnection) -> list[ArchiveItem]:
            conds = list(where)
            if after is not None:
                conds.append(key > await position(conn, after))
            if before is not None:
                conds.append(key < await position(conn, before))
            stmt = (
                sa.select(archive.c.id, archive.c.ts, archive.c.peer, archive.c.value)
                .where(*conds)
                .order_by(*order)
            )
            if limit is not None:
                stmt = stmt.limit(max(limit, 0))
            return [_archive_item(r) for r in await conn.execute(stmt)]

        return await self._db._read(tx)

    async def append_many(self, store: str, items: Sequence[tuple[str, str, ArchiveItem]]) -> None:
        rows = [
            {
                "store": store,
                "host": host,
                "username": user,
                "id": item.id,
                "ts": float(item.when),
                "peer": item.with_,
                "peer_bare": _bare(item.with_),
                "value": item.value,
                "text": item.text,
            }
            for host, user, item in items
        ]
        if not rows:
            return
        stmt = sa.insert(archive)

        async def tx(conn: AsyncConnection) -> None:
            # executemany: SQLite runs the prepared INSERT per row inside one transaction; asyncpg
            # batches them ("insertmanyvalues").  Rows get ascending seq in list order.
            for i in range(0, len(rows), _BATCH_ROWS):
                await conn.execute(stmt, rows[i : i + _BATCH_ROWS])

        await self._db._write(tx)

    def _text_match(self, text: str) -> sa.ColumnElement[bool]:
        """Full-text condition (migration 0003): every word of ``text`` must occur."""
        words = text.split()
        if not words:
            return sa.false()
        if self._db.is_postgresql:
            return sa.and_(
                archive.c.text.is_not(None),
                sa.text("to_tsvector('simple', archive.text) @@ plainto_tsquery('simple', :fts)").bindparams(
                    fts=" ".join(words)
                ),
            )
        # FTS5 query syntax: each word a quoted string (no operators from user input), implicit AND
        query = " ".join('"' + w.replace('"', '""') + '"' for w in words)
        return archive.c.seq.in_(
            sa.text("SELECT rowid FROM archive_fts WHERE archive_fts MATCH :fts")
            .bindparams(fts=query)
            .columns(sa.column("rowid", sa.Integer))
        )

    async def get(self, store: str, host: str, user: str, id: str) -> ArchiveItem | None:
        rows = self._db.point_read(_SQL_ARCHIVE_ITEM, (id, host, user, store))
        if rows is not None:  # SQLite fast path (see SQLStorage.point_read)
            return _archive_item(rows[0]) if rows else None
        stmt = sa.select(archive.c.id, archive.c.ts, archive.c.peer, archive.c.value).where(
            self._where(store, host, user), archive.c.id == id
        )

        async def tx(conn: AsyncConnection) -> ArchiveItem | None:
            row = (await conn.execute(stmt)).first()
            return None if row is None else _archive_item(row)

        return await self._db._read(tx)

    async def delete(self, store: str, host: str, user: str, *, before: float | None = None) -> int:
        stmt = sa.delete(archive).where(self._where(store, host, user))
        if before is not None:
            stmt = stmt.where(archive.c.ts < before)

        async def tx(conn: AsyncConnection) -> int:
            return (await conn.execute(stmt)).rowcount

        return await self._db._write(tx)

    async def prune(self, store: str, before: float, *, host: str | None = None) -> int:
        stmt = sa.delete(archive).where(archive.c.store == store, archive.c.ts < before)
        if host is not None:
            stmt = stmt.where(archive.c.host == host)

        async def tx(conn: AsyncConnection) -> int:
            return (await conn.execute(stmt)).rowcount

        return await self._db._write(tx)

    async def count(self, store: str, host: str, user: str) -> int:
        stmt = sa.select(sa.func.count()).select_from(archive).where(self._where(store, host, user))

        async def tx(conn: AsyncConnection) -> int:
            return int(await conn.scalar(stmt) or 0)

        return await self._db._read(tx)

    async def trim(self, store: str, host: str, user: str, keep: int) -> int:
        key = sa.tuple_(archive.c.ts, archive.c.seq)
        # the oldest item to keep: the keep-th newest (served by the (store, host, user, ts) index)
        first_kept = (
            sa.select(archive.c.ts, archive.c.seq)
            .where(self._where(store, host, user))
            .order_by(archive.c.ts.desc(), archive.c.seq.desc())
            .offset(max(keep, 1) - 1)
            .limit(1)
        )

        async def tx(conn: AsyncConnection) -> int:
            if keep <= 0:
                return (await conn.execute(sa.delete(archive).where(self._where(store, host, user)))).rowcount
            row = (await conn.execute(first_kept)).first()
            if row is None:
                return 0
            bound = sa.tuple_(sa.literal(row.ts, archive.c.ts.type), sa.literal(row.seq, archive.c.seq.type))
            stmt = sa.delete(archive).where(self._where(store, host, user), key < bound)
            return (await conn.execute(stmt)).rowcount

        return await self._db._write(tx)


_BATCH_ROWS = 10_000  # rows per executemany call in append_many

_SQL_ARCHIVE_ITEM = (
    "SELECT id, ts, peer, value FROM archive WHERE id = ? AND host = ? AND username = ? AND store = ?"
)


def _bare(jid: str | None) -> str | None:
    """The bare JID of a JID string (RFC 7622 §3.1: everything before the first "/")."""
    return None if jid is None else jid.partition("/")[0]


def _archive_item(row: Any) -> ArchiveItem:
    return ArchiveItem(id=row[0], when=float(row[1]), with_=row[2], value=row[3])


def _hash32(host: str, user: str) -> int:
    digest = hashlib.blake2b(f"{host}\0{user}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


async def export_accounts(db: SQLStorage, host: str | None = None) -> builtins.list[AccountData]:
    """Every account (of ``host``) with all its data, read in one snapshot (``rookery export``)."""

    async def tx(conn: AsyncConnection) -> builtins.list[AccountData]:
        where = (lambda t: t.c.host == host) if host is not None else (lambda t: sa.true())
        out: dict[tuple[str, str], AccountData] = {}
        q = sa.select(accounts.c.host, accounts.c.username).where(where(accounts))
        for r in await conn.execute(q.order_by(accounts.c.host, accounts.c.username)):
            out[(r.host, r.username)] = AccountData(r.host, r.username)
        for r in await conn.execute(sa.select(credentials).where(where(credentials))):
            if (a := out.get((r.host, r.username))) is not None:
                a.creds[r.hash_name] = ScramCredential(bytes(r.salt), r.iterations, bytes(r.stored_key),
                                                       bytes(r.server_key))
        q = sa.select(roster_items).where(where(roster_items)).order_by(roster_items.c.contact)
        for r in await conn.execute(q):
            if (a := out.get((r.host, r.username))) is not None:
                a.roster.append(RosterItem(r.contact, r.name, r.subscription, bool(r.ask), bool(r.approved),
                                           json.loads(r.groups)))
        for r in await conn.execute(sa.select(roster_pending_in).where(where(roster_pending_in))):
            if (a := out.get((r.host, r.username))) is not None:
                a.pending_in[r.contact] = r.stanza
        q = sa.select(kv).where(where(kv)).order_by(kv.c.store, kv.c.key)
        for r in await conn.execute(q):
            if (a := out.get((r.host, r.username))) is not None:
                a.kv[(r.store, r.key)] = r.value
        for r in await conn.execute(sa.select(offline).where(where(offline)).order_by(offline.c.id)):
            if (a := out.get((r.host, r.username))) is not None:
                a.offline.append(r.stanza)
        for r in await conn.execute(sa.select(archive).where(where(archive)).order_by(archive.c.seq)):
            if (a := out.get((r.host, r.username))) is not None:
                a.archive.setdefault(r.store, []).append(ArchiveItem(r.id, r.ts, r.peer, r.value, r.text))
        return list(out.values())

    return await db._read(tx, snapshot=True)


async def offline_stats(db: SQLStorage) -> tuple[int, int, int]:
    """(messages stored, accounts with a queue, the longest queue) for metrics."""

    async def tx(conn: AsyncConnection) -> tuple[int, int, int]:
        per_user = (sa.select(sa.func.count().label("n")).select_from(offline)
                    .group_by(offline.c.host, offline.c.username).subquery())
        row = (await conn.execute(sa.select(sa.func.coalesce(sa.func.sum(per_user.c.n), 0), sa.func.count(),
                                            sa.func.coalesce(sa.func.max(per_user.c.n), 0)))).one()
        return int(row[0]), int(row[1]), int(row[2])

    return await db._read(tx)


async def import_accounts(db: SQLStorage, items: Sequence[AccountData]) -> None:
    """Create these accounts with all their data in one transaction: if one of them exists already,
    ``FileExistsError`` names it and nothing is written (``rookery import``)."""

    async def tx(conn: AsyncConnection) -> None:
        for a in items:
            stmt = (db._insert(accounts).values(host=a.host, username=a.user, created_at=time.time())
                    .on_conflict_do_nothing(index_elements=["host", "username"]).returning(accounts.c.host))
            if (await conn.execute(stmt)).first() is None:
                raise FileExistsError(f"{a.user}@{a.host}")
            await _insert_credentials(conn, a.host, a.user, a.creds)
            if a.roster:
                await conn.execute(sa.insert(roster_versions).values(host=a.host, username=a.user, version=1))
                await conn.execute(sa.insert(roster_items), [
                    {"host": a.host, "username": a.user, "contact": i.jid, "name": i.name,
                     "subscription": i.subscription, "ask": bool(i.ask), "approved": bool(i.approved),
                     "groups": json.dumps(list(i.groups))} for i in a.roster])
            if a.pending_in:
                await conn.execute(sa.insert(roster_pending_in), [
                    {"host": a.host, "username": a.user, "contact": c, "stanza": st}
                    for c, st in a.pending_in.items()])
            if a.kv:
                await conn.execute(sa.insert(kv), [
                    {"host": a.host, "username": a.user, "store": st, "key": k, "value": v}
                    for (st, k), v in a.kv.items()])
            now = time.time()
            if a.offline:
                await conn.execute(sa.insert(offline), [
                    {"host": a.host, "username": a.user, "stanza": st, "created_at": now} for st in a.offline])
            for store, entries in a.archive.items():
                if entries:
                    await conn.execute(sa.insert(archive), [
                        {"store": store, "host": a.host, "username": a.user, "id": i.id, "ts": float(i.when),
                         "peer": i.with_, "peer_bare": _bare(i.with_), "value": i.value, "text": i.text}
                        for i in entries])

    await db._write(tx)


# ---------------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------------


class SQLStorage:
    """``Storage`` on SQLite or PostgreSQL through SQLAlchemy Core (async).

    ``url``: ``sqlite+aiosqlite:///path/to/file`` or ``postgresql+asyncpg://user@host/db``; a PostgreSQL
    URL may carry ``?schema=name`` to keep all tables in that schema (created if missing; lowercase
    ``[a-z_][a-z0-9_]*``), which sets the connection's ``search_path``.  ``offline_limit`` caps each
    user's offline queue.  ``connect_args`` are passed to the driver (merged with the ones set here);
    ``engine_kwargs`` to ``create_async_engine``.  Call :meth:`open` before use and :meth:`close` after.
    """

    def __init__(
        self,
        url: str,
        *,
        offline_limit: int = 1000,
        connect_args: dict[str, Any] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        parsed = make_url(url)
        self.schema: str | None = None
        args: dict[str, Any] = dict(connect_args or {})
        if parsed.get_backend_name() == "postgresql":
            if parsed.get_driver_name() != "asyncpg":
                parsed = parsed.set(drivername="postgresql+asyncpg")
            schema = parsed.query.get("schema")
            if schema is not None:
                if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema):
                    raise ValueError(f"invalid PostgreSQL schema name {schema!r}: use [a-z_][a-z0-9_]*")
                self.schema = schema
                parsed = parsed.difference_update_query(["schema"])
                settings = dict(args.get("server_settings") or {})
                settings["search_path"] = schema
                args["server_settings"] = settings
        elif parsed.get_backend_name() == "sqlite":
            if parsed.get_driver_name() != "aiosqlite":
                parsed = parsed.set(drivername="sqlite+aiosqlite")
            if parsed.database in (None, "", ":memory:"):
                raise ValueError("SQLStorage needs a SQLite file, not an in-memory database")
        else:
            raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}")
        self.url: URL = parsed
        self.is_postgresql = parsed.get_backend_name() == "postgresql"
        self._connect_args = args
        self._engine_kwargs = dict(engine_kwargs or {})
        self._engine: AsyncEngine | None = None
        self._wengine: AsyncEngine | None = None
        self._snap_engine: AsyncEngine | None = None
        #: ``observe(kind, seconds)`` after each transaction ("read"/"write"), for metrics; None: not timed
        self.observe: Callable[[str, float], None] | None = None
        # SQLite has one writer at a time: queue this process's writers here rather than in SQLite's
        # busy handler, which polls with sleeps of up to 100 ms.
        self._write_lock: asyncio.Lock | None = None
        self._ro: sqlite3.Connection | None = None
        self._insert: Callable[[sa.Table], Any] = (
            pg_dialect.insert if self.is_postgresql else sqlite_dialect.insert
        )

        self.accounts = SQLAccountStore(self)
        self.roster = SQLRosterStore(self)
        self.kv = SQLKeyValueStore(self)
        self.offline = SQLOfflineStore(self, offline_limit)
        self.archive = SQLArchiveStore(self)

    def __repr__(self) -> str:
        return f"SQLStorage({self.url.render_as_string(hide_password=True)!r})"

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate to head; idempotent, and safe when several processes open at once."""
        if self._engine is not None:
            return
        engine = self._create_engine()
        try:
            if await self._retry(lambda: self._migrate(engine)) and not self.is_postgresql:
                # The migration ran with foreign keys off (see _sqlite_on_begin): start again with
                # fresh connections, which get every pragma from _sqlite_on_connect.
                await engine.dispose()
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._write_lock = None if self.is_postgresql else asyncio.Lock()
        self._wengine = engine.execution_options(rookery_write=True)
        self._snap_engine = (
            engine.execution_options(isolation_level="REPEATABLE READ") if self.is_postgresql else engine
        )
        if not self.is_postgresql:
            self._ro = sqlite3.connect(f"file:{self.url.database}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
            self._ro.execute("PRAGMA query_only = 1")
            self._ro.execute("PRAGMA busy_timeout = 50")

    def point_read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
        """SQLite only: run a primary- or unique-key lookup inline on a read-only connection; None
        elsewhere or when the database is busy (the caller then takes the async path).

        Why: through SQLAlchemy's async layer and aiosqlite's thread, a one-row read costs 0.6-1.3 ms of
        CPU (measured: ``bench`` login profile); inline it is ~20 µs.  In WAL mode readers never wait for
        the writer, so this does not stall the event loop.  Each statement is its own snapshot.
        """
        ro = self._ro
        if ro is None:
            return None
        try:
            return ro.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None

    def snapshot_read(self, queries: list[tuple[str, tuple[Any, ...]]]) -> list[list[tuple[Any, ...]]] | None:
        """SQLite only: like ``point_read``, several statements in one read transaction (one snapshot);
        None elsewhere or when the database is busy."""
        ro = self._ro
        if ro is None:
            return None
        try:
            ro.execute("BEGIN")
            try:
                return [ro.execute(sql, params).fetchall() for sql, params in queries]
            finally:
                ro.execute("COMMIT")
        except sqlite3.Error:
            return None

    async def close(self) -> None:
        ro, self._ro = self._ro, None
        if ro is not None:
            ro.close()
        engine, self._engine = self._engine, None
        self._wengine = self._snap_engine = None
        if engine is not None:
            await engine.dispose()

    def _create_engine(self) -> AsyncEngine:
        engine = create_async_engine(self.url, connect_args=self._connect_args, **self._engine_kwargs)
        if not self.is_postgresql:
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine

    async def _migrate(self, engine: AsyncEngine) -> bool:
        """Upgrade to head; True when this took the migration lock (whether or not it had work)."""
        # Fast path, the usual case: already at head, checked without taking any lock, so that a CLI
        # command opening the database never stalls the running server's writes.
        async with engine.connect() as conn:
            if await conn.run_sync(_at_head):
                return False
        migrate_engine = engine.execution_options(rookery_write=True, rookery_migrate=True)
        async with migrate_engine.begin() as conn:
            if self.is_postgresql:
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
                if self.schema is not None:
                    await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            if not await conn.run_sync(_at_head):  # another process may have migrated meanwhile
                await conn.run_sync(_run_alembic_upgrade)
            if not self.is_postgresql:
                problems = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if problems:
                    raise RuntimeError(f"migration left foreign key violations: {problems[:5]}")
        return True

    # -- transactions -------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[AsyncConnection], Awaitable[T]], *, snapshot: bool = False) -> T:
        engine = self._snap_engine if snapshot else self._engine
        if engine is None:
            raise RuntimeError("SQLStorage is not open")

        async def attempt() -> T:
            async with engine.connect() as conn:
                return await fn(conn)

        observe = self.observe
        if observe is None:
            return await self._retry(attempt)
        t0 = time.perf_counter()
        try:
            return await self._retry(attempt)
        finally:
            observe("read", time.perf_counter() - t0)

    async def _write(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        engine = self._wengine
        if engine is None:
            raise RuntimeError("SQLStorage is not open")

        async def attempt() -> T:
            async with engine.begin() as conn:
                return await fn(conn)

        observe = self.observe
        t0 = time.perf_counter() if observe is not None else 0.0
        try:
            if self._write_lock is None:
                return await self._retry(attempt)
            async with self._write_lock:
                return await self._retry(attempt)
        finally:
            if observe is not None:
                observe("write", time.perf_counter() - t0)

    async def _retry(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` (a whole transaction), retrying transient lock conflicts."""
        for n in range(_RETRIES):
            try:
                return await attempt()
            except sa.exc.DBAPIError as exc:
                if n == _RETRIES - 1 or not _transient(exc):
                    raise
                log.debug("retrying transaction after %s", exc.orig)
                await asyncio.sleep(random.uniform(0.005, 0.05) * (n + 1))
        raise AssertionError("unreachable")


def _transient(exc: sa.exc.DBAPIError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # serialization failure, deadlock
        return True
    msg = str(orig).lower()
    return "database is locked" in msg or "database table is locked" in msg or "database is busy" in msg


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let _sqlite_on_begin emit BEGIN (the sqlite3 module's implicit transactions cannot BEGIN
    # IMMEDIATE and do not cover SELECT or DDL).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get("rookery_migrate"):
        # SQLite ignores this pragma inside a transaction, so it must precede BEGIN.  Off while
        # migrating so that batch "move and copy" table rebuilds cannot cascade deletes; open()
        # then disposes the connection.
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("rookery_write") else "BEGIN")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def _at_head(connection: Connection) -> bool:
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    return set(MigrationContext.configure(connection).get_current_heads()) == set(heads)


def _run_alembic_upgrade(connection: Connection) -> None:
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def make_storage(spec: str, data_dir: str, *, offline_limit: int = 1000) -> SQLStorage:
    """Build the storage named by the ``storage`` setting.

    ``"sqlite"`` means ``<data_dir>/rookery.sqlite`` (``data_dir`` is created if missing); a
    ``postgresql://`` (or ``postgres://``) URL selects PostgreSQL through asyncpg; explicit
    ``sqlite+aiosqlite:///`` and ``postgresql+asyncpg://`` URLs are taken as they are.
    """
    if spec == "sqlite":
        directory = Path(data_dir).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        return SQLStorage(f"sqlite+aiosqlite:///{directory / 'rookery.sqlite'}", offline_limit=offline_limit)
    for prefix in ("postgresql://", "postgres://"):
        if spec.startswith(prefix):
            return SQLStorage("postgresql+asyncpg://" + spec[len(prefix) :], offline_limit=offline_limit)
    if spec.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite:///")):
        return SQLStorage(spec, offline_limit=offline_limit)
    raise ValueError(f"unknown storage {spec!r}: use 'sqlite' or a postgresql:// URL")
