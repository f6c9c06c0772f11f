"""Stores a module opens by name and kind (module API ``ctx.open_store(name, kind)``), each bound to
its owner so modules never see each other's data.  All are SQL-backed through the ``Storage`` stores:

* ``"keyval"`` — one document (a string) per user: ``get(host, user)`` / ``set`` / ``delete``;
* ``"map"`` — several keys per user: ``get(host, user, key)`` / ``set`` / ``delete`` / ``keys``;
* ``"archive"`` — time-ordered items per user (``ArchiveStore``, e.g. XEP-0313 archives).

``user`` may be "" for host-wide data.  Account deletion removes a user's data in every store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ArchiveItem, Storage

KINDS = ("keyval", "map", "archive")


class KeyValView:
    __slots__ = ("_kv", "_store")

    def __init__(self, storage: Storage, store: str) -> None:
        self._kv = storage.kv
        self._store = store

    async def get(self, host: str, user: str) -> str | None:
        return await self._kv.get(self._store, host, user, "")

    async def set(self, host: str, user: str, value: str) -> None:
        await self._kv.set(self._store, host, user, "", value)

    async def delete(self, host: str, user: str) -> None:
        await self._kv.delete(self._store, host, user, "")


class MapView:
    __slots__ = ("_kv", "_store")

    def __init__(self, storage: Storage, store: str) -> None:
        self._kv = storage.kv
        self._store = store

    async def get(self, host: str, user: str, key: str) -> str | None:
        return await self._kv.get(self._store, host, user, key)

    async def set(self, host: str, user: str, key: str, value: str) -> None:
        await self._kv.set(self._store, host, user, key, value)

    async def delete(self, host: str, user: str, key: str) -> None:
        await self._kv.delete(self._store, host, user, key)

    async def keys(self, host: str, user: str) -> list[str]:
        return await self._kv.keys(self._store, host, user)


class ArchiveView:
    __slots__ = ("_a", "_store")

    def __init__(self, storage: Storage, store: str) -> None:
        self._a = storage.archive
        self._store = store

    async def append(self, host: str, user: str, value: str, *, with_: str | None = None,
                     when: float | None = None) -> str:
        return await self._a.append(self._store, host, user, value, with_=with_, when=when)

    async def query(self, host: str, user: str, **filters: Any) -> list[ArchiveItem]:
        return await self._a.query(self._store, host, user, **filters)

    async def append_many(self, items: Sequence[tuple[str, str, ArchiveItem]]) -> None:
        """``(host, user, item)`` triples in one transaction; the caller picks ids (``ArchiveStore``)."""
        await self._a.append_many(self._store, items)

    async def get(self, host: str, user: str, id: str) -> ArchiveItem | None:
        return await self._a.get(self._store, host, user, id)

    async def delete(self, host: str, user: str, *, before: float | None = None) -> int:
        return await self._a.delete(self._store, host, user, before=before)

    async def prune(self, before: float, *, host: str | None = None) -> int:
        """Delete every user's items older than ``before`` (of one domain when ``host`` is given)."""
        return await self._a.prune(self._store, before, host=host)

    async def count(self, host: str, user: str) -> int:
        return await self._a.count(self._store, host, user)

    async def trim(self, host: str, user: str, keep: int) -> int:
        """Delete the user's oldest items so that at most ``keep`` remain; returns how many went."""
        return await self._a.trim(self._store, host, user, keep)


class ModuleStores:
    """``open_store`` for the module manager: the SQL name of a module's store is ``owner/name``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def open_store(self, owner: str, name: str, kind: str) -> Any:
        if kind not in KINDS:
            raise ValueError(f"unknown store kind {kind!r} (one of {', '.join(KINDS)})")
        if not name or "/" in name:
            raise ValueError(f"bad store name {name!r}")
        store = f"{owner}/{name}"
        if kind == "keyval":
            return KeyValView(self.storage, store)
        if kind == "map":
            return MapView(self.storage, store)
        return ArchiveView(self.storage, store)
