"""Who is online where: bound resources per account (RFC 6120 §7, RFC 6121 §8).

The router and modules see sessions only through the ``Session`` protocol; the registry never touches
sockets.  One dict lookup finds a full JID; one more the resources of a bare JID.
"""

from __future__ import annotations

from typing import Protocol
from xml.etree.ElementTree import Element

from ..jid import JID


class Session(Protocol):
    """A bound client session as the router sees it (implemented by ``streams.c2s.C2SStream``)."""

    jid: JID  # full JID
    priority: int  # RFC 6121 §4.7.2.3, from the last available presence
    available: bool  # has sent initial presence and not gone unavailable (RFC 6121 §4.2)
    presence: Element | None  # last available presence broadcast
    interested: bool  # has requested the roster (RFC 6121 §2.1.6 "interested resource")

    def send(self, el: Element) -> None: ...

    def send_data(self, data: str) -> None: ...

    def close(self, condition: str | None = None, text: str | None = None) -> None: ...


class SessionRegistry:
    """bare JID string -> resource -> session."""

    __slots__ = ("_by_bare",)

    def __init__(self) -> None:
        self._by_bare: dict[str, dict[str, Session]] = {}

    def add(self, session: Session) -> Session | None:
        """Register; returns the session that had this full JID (to be closed with ``<conflict/>``)."""
        res = self._by_bare.setdefault(session.jid.bare, {})
        assert session.jid.resource is not None
        old = res.get(session.jid.resource)
        res[session.jid.resource] = session
        return old if old is not session else None

    def remove(self, session: Session) -> bool:
        """Unregister (only if still the registered one); True when it was."""
        res = self._by_bare.get(session.jid.bare)
        if res is None or res.get(session.jid.resource or "") is not session:
            return False
        del res[session.jid.resource or ""]
        if not res:
            del self._by_bare[session.jid.bare]
        return True

    def get(self, jid: JID) -> Session | None:
        res = self._by_bare.get(jid.bare)
        if res is None or jid.resource is None:
            return None
        return res.get(jid.resource)

    def resources(self, bare: str) -> dict[str, Session]:
        return self._by_bare.get(bare) or {}

    def has_resource(self, bare: str, resource: str) -> bool:
        res = self._by_bare.get(bare)
        return res is not None and resource in res

    def all(self) -> list[Session]:
        return [s for res in self._by_bare.values() for s in res.values()]

    def count(self) -> int:
        return sum(len(r) for r in self._by_bare.values())
