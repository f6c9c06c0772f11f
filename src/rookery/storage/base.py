"""Storage interfaces (DESIGN.md "Data and durability").

Every store is an async ``typing.Protocol``; the SQL backend in ``rookery.storage.sql`` implements all
of them on SQLite (WAL, default) or PostgreSQL.  Users are always addressed by ``(host, user)``, both
already normalised by ``rookery.jid`` (PRECIS), so stores never normalise anything themselves.
Passwords never reach storage: only SCRAM salted keys (RFC 5802 §3) do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class ScramCredential:
    """RFC 5802 §3 stored credentials for one hash (``"SHA-1"``, ``"SHA-256"``, ``"SHA-512"``)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(slots=True)
class RosterItem:
    """RFC 6121 §2.1.2 roster item, plus the server-side subscription state of Appendix A.

    ``subscription``: "none" | "to" | "from" | "both".  ``ask``: True while an outbound subscribe is
    pending ("None + Pending Out" etc.).  ``approved``: a pre-approval (§3.4) given before any request.
    """

    jid: str
    name: str | None = None
    subscription: str = "none"
    ask: bool = False
    approved: bool = False
    groups: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AccountData:
    """Everything stored for one account, for export and import (``rookery export``/``import``,
    XEP-0227): credentials, roster and pending inbound requests, key-value documents (vCard, private
    XML, last activity, modules' data) keyed by ``(store, key)``, offline messages oldest first, archives
    (the XEP-0313 message archive, modules' archives)."""

    host: str
    user: str
    creds: dict[str, ScramCredential] = field(default_factory=dict)
    roster: list[RosterItem] = field(default_factory=list)
    pending_in: dict[str, str] = field(default_factory=dict)
    kv: dict[tuple[str, str], str] = field(default_factory=dict)
    offline: list[str] = field(default_factory=list)
    #: archive store name (e.g. "mam/messages") -> items, oldest first
    archive: dict[str, list[ArchiveItem]] = field(default_factory=dict)


class AccountStore(Protocol):
    async def create(self, host: str, user: str, creds: dict[str, ScramCredential]) -> bool:
        """Create the account; False when it already exists (atomic: concurrent creators, one wins)."""

    async def get_credentials(self, host: str, user: str) -> dict[str, ScramCredential] | None:
        """Credentials keyed by hash name, or None when there is no such account."""

    async def set_credentials(self, host: str, user: str, creds: dict[str, ScramCredential]) -> bool:
        """Replace the credentials; False when there is no such account."""

    async def delete(self, host: str, user: str) -> bool:
        """Delete the account and every piece of its data in every store, and remove it from the
        rosters (items and pending requests) of the other local accounts; False when missing."""

    async def exists(self, host: str, user: str) -> bool: ...

    async def list(self, host: str | None = None) -> list[tuple[str, str]]:
        """``(host, user)`` pairs sorted by host then user, optionally for one host."""


class RosterStore(Protocol):
    async def get(self, host: str, user: str) -> tuple[str, dict[str, RosterItem]]:
        """(current version string, items keyed by contact bare JID).  Version is "0" for an empty,
        never-written roster; it changes (strictly increasing integer as str) at every write."""

    async def get_item(self, host: str, user: str, contact: str) -> RosterItem | None: ...

    async def set_item(self, host: str, user: str, item: RosterItem) -> str:
        """Insert or replace the item keyed by ``item.jid``; returns the new roster version."""

    async def remove_item(self, host: str, user: str, contact: str) -> str:
        """Remove the item (no error if missing); returns the new roster version."""

    async def add_pending_in(self, host: str, user: str, contact: str, stanza: str) -> None:
        """Remember an inbound subscription request (RFC 6121 §3.1.3) with its serialized stanza."""

    async def remove_pending_in(self, host: str, user: str, contact: str) -> None: ...

    async def get_pending_in(self, host: str, user: str) -> dict[str, str]:
        """contact bare JID -> serialized subscribe stanza."""


class KeyValueStore(Protocol):
    """Small per-user documents: vcard-temp, private XML, last activity, and modules' own data.

    ``store`` names the owner (e.g. "vcard", "private", "last"); ``key`` is free-form within it;
    ``user`` may be "" for host-wide data.
    """

    async def get(self, store: str, host: str, user: str, key: str) -> str | None: ...

    async def set(self, store: str, host: str, user: str, key: str, value: str) -> None: ...

    async def delete(self, store: str, host: str, user: str, key: str) -> None: ...

    async def keys(self, store: str, host: str, user: str) -> list[str]: ...


class OfflineStore(Protocol):
    """XEP-0160 offline messages, in arrival order."""

    async def push(self, host: str, user: str, stanza: str) -> bool:
        """Store one serialized stanza; False when the user's queue is full (limit from config)."""

    async def pop_all(self, host: str, user: str) -> list[str]:
        """Return and delete every stored stanza, oldest first (atomically)."""

    async def peek(self, host: str, user: str, limit: int | None = None) -> list[tuple[int, str]]:
        """``(id, stanza)`` of the oldest stored stanzas, without removing them (crash-safe delivery:
        ``remove`` them once they are handed over)."""

    async def remove(self, host: str, user: str, ids: list[int]) -> int:
        """Delete these stored stanzas of the user; returns how many were deleted."""

    async def count(self, host: str, user: str) -> int: ...


@dataclass(slots=True)
class ArchiveItem:
    """One archived item: what XEP-0313 keeps per message (id, timestamp, remote party, stanza).

    ``id``: opaque and random (XEP-0313: a server-assigned UID, unpredictable and unique within the
    archive), unique within ``(store, host, user)`` and stable; usable as an XEP-0059 / XEP-0313 result
    id.  ``when``: UNIX time in seconds.  ``with_``: the other party, a bare or full JID string, or None.
    ``value``: the serialized payload (e.g. a stanza).  ``text``: what full-text search matches (e.g.
    the message body); only written (``append_many``), never read back, None when not searchable.
    """

    id: str
    when: float
    with_: str | None
    value: str
    text: str | None = None


class ArchiveStore(Protocol):
    """Time-ordered items per user: XEP-0313 message archives and modules' own archives.

    ``store`` names the archive (e.g. "mam"); ``user`` may be "" for host-wide archives.  Items are
    ordered by ``when``, then by insertion order (items appended with equal ``when`` keep their order).
    """

    async def append(
        self, store: str, host: str, user: str, value: str, *, with_: str | None = None,
        when: float | None = None,
    ) -> str:
        """Store one item (``when`` defaults to now); returns its id."""

    async def query(
        self, store: str, host: str, user: str, *, with_: str | None = None, start: float | None = None,
        end: float | None = None, after: str | None = None, before: str | None = None,
        limit: int | None = None, reverse: bool = False, text: str | None = None,
    ) -> list[ArchiveItem]:
        """Items in time order (oldest first; with ``reverse=True`` newest first, i.e. the last page).

        Filters, as XEP-0313 queries need them: ``with_`` matches exactly or, when it is a bare JID,
        any full JID of it ("a@b" matches "a@b" and "a@b/r"); ``start <= when <= end`` inclusive;
        ``after``/``before`` are item ids, exclusive (an unknown id raises ``KeyError``; XEP-0059 §2.2,
        §2.3).  At most ``limit`` items, counted from the start of the chosen order: with
        ``reverse=True`` that is the last page (XEP-0059 §2.5), or with ``before=id`` the page just
        before ``id`` (§2.3), newest first either way.  ``text``: only items whose ``text`` contains
        every word of it (full-text search: SQLite FTS5, PostgreSQL ``to_tsvector('simple', ..)``).
        """

    async def append_many(self, store: str, items: Sequence[tuple[str, str, ArchiveItem]]) -> None:
        """Store many ``(host, user, item)`` in one transaction (one multi-row ``INSERT``), in order:
        items with equal ``when`` keep the order given.  The caller chooses each ``item.id`` (e.g. a
        XEP-0359 stanza-id already sent out; it must be unique, like ``append``'s); ``item.when`` is
        taken as given."""

    async def get(self, store: str, host: str, user: str, id: str) -> ArchiveItem | None: ...

    async def delete(self, store: str, host: str, user: str, *, before: float | None = None) -> int:
        """Delete the user's items in that store (only those with ``when < before`` when given);
        returns how many."""

    async def prune(self, store: str, before: float, *, host: str | None = None) -> int:
        """Delete every user's items in that store with ``when < before`` (retention), only those of
        ``host`` when given; returns how many."""

    async def count(self, store: str, host: str, user: str) -> int: ...

    async def trim(self, store: str, host: str, user: str, keep: int) -> int:
        """Delete the user's oldest items in that store so that at most ``keep`` (the newest) remain;
        returns how many were deleted (a per-user quota)."""


class Storage(Protocol):
    accounts: AccountStore
    roster: RosterStore
    kv: KeyValueStore
    offline: OfflineStore
    archive: ArchiveStore

    async def open(self) -> None:
        """Connect and run migrations up to head (idempotent; safe when several processes open at once)."""

    async def close(self) -> None: ...
