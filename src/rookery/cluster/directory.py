"""The session directory: sessions held by other workers (issue 12; RFC 6121 §8 needs every resource).

Each worker announces its own sessions (bind, routing-state changes, end) over the link to every other
worker; each keeps a replica of the others' sessions here as ``RemoteSession`` refs.  A ref has what
the delivery rules read (RFC 6121 §8.5: ``priority``, ``available``; §4.2.2 the last ``presence``;
§2.1.6 ``interested``) and the per-module flags that are replicated (``ext``: carbons, blocking
pushes, entity capabilities …).  Entries are keyed by worker so that a worker that dies is forgotten
at once.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from ..jid import JID


class RemoteSession:
    """A session another worker holds (``SessionRef``; ``where`` names the worker)."""

    __slots__ = ("jid", "priority", "available", "presence", "interested", "where", "worker", "ext", "seq", "auth")

    def __init__(self, jid: JID, worker: int) -> None:
        self.jid = jid
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        self.interested = False
        self.worker = worker
        self.where = f"worker {worker}"
        #: replicated module flags (read only here: the holding worker changes them)
        self.ext: dict[str, Any] = {}
        #: the holder's bind order (conflicts between workers: the later bind wins, RFC 6120 §7.7.2.2)
        self.seq = (0.0, worker)
        #: how it authenticated (ip, mechanism, tls): shown by ``rookery sessions``
        self.auth: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<RemoteSession {self.jid} on worker {self.worker}>"


class Directory:
    """bare JID -> resource -> ``RemoteSession``, and worker -> its full JIDs."""

    __slots__ = ("by_bare", "by_worker")

    def __init__(self) -> None:
        self.by_bare: dict[str, dict[str, RemoteSession]] = {}
        self.by_worker: dict[int, dict[str, RemoteSession]] = {}

    def get(self, jid: JID) -> RemoteSession | None:
        res = self.by_bare.get(jid.bare)
        if res is None or jid.resource is None:
            return None
        return res.get(jid.resource)

    def put(self, ref: RemoteSession) -> RemoteSession | None:
        """Add or replace; returns the entry it replaced (possibly of another worker)."""
        jid = ref.jid
        res = self.by_bare.setdefault(jid.bare, {})
        old = res.get(jid.resource or "")
        if old is not None and old is not ref:
            self.by_worker.get(old.worker, {}).pop(jid.full, None)
        res[jid.resource or ""] = ref
        self.by_worker.setdefault(ref.worker, {})[jid.full] = ref
        return old if old is not ref else None

    def remove(self, jid: JID, worker: int) -> RemoteSession | None:
        """Remove ``jid`` if ``worker`` holds it."""
        res = self.by_bare.get(jid.bare)
        if res is None:
            return None
        ref = res.get(jid.resource or "")
        if ref is None or ref.worker != worker:
            return None
        del res[jid.resource or ""]
        if not res:
            del self.by_bare[jid.bare]
        self.by_worker.get(worker, {}).pop(jid.full, None)
        return ref

    def drop_worker(self, worker: int) -> list[RemoteSession]:
        """Forget every session of ``worker`` (it died or left); returns them."""
        gone = list(self.by_worker.pop(worker, {}).values())
        for ref in gone:
            res = self.by_bare.get(ref.jid.bare)
            if res is not None and res.get(ref.jid.resource or "") is ref:
                del res[ref.jid.resource or ""]
                if not res:
                    del self.by_bare[ref.jid.bare]
        return gone

    def all(self) -> list[RemoteSession]:
        return [r for res in self.by_bare.values() for r in res.values()]

    def count(self) -> int:
        return sum(len(r) for r in self.by_bare.values())
