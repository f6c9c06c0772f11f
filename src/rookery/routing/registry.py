"""Who is online where: the session registry (RFC 6120 §7, RFC 6121 §8).

The router and modules see sessions only as ``SessionRef``s — the full JID, priority, availability,
last presence, "interested" flag and *where the session lives* — and deliver through the registry
(``deliver(ref, element)``), never by touching a stream or a socket.  Today every session lives in
this process (``LocalSessionRegistry``, ``where == "local"``); a registry shared by worker processes or
nodes (Redis) implements the same ``SessionRegistry`` protocol and forwards ``deliver`` to where the
session is.

One dict lookup finds a full JID; one more the resources of a bare JID.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol
from xml.etree.ElementTree import Element

from ..jid import JID
from ..xml.serializer import escape_attr, serialize

#: the place of ``to`` in a template serialization (NUL never occurs in XML text or attributes)
_SLOT = "\x00"


def addressed(el: Element, to: str) -> Element:
    """A copy of ``el`` sent ``to``: its own attributes, the children shared (never mutated).  Not
    ``copy.copy``: ElementTree's C ``Element.__copy__`` shares the attribute dict with the original."""
    out = Element(el.tag, el.attrib)
    out.text = el.text
    out.extend(el)
    out.set("to", to)
    return out


class SessionRef(Protocol):
    """A bound resource as the router and modules see it."""

    @property
    def jid(self) -> JID: ...  # full JID

    @property
    def priority(self) -> int: ...  # RFC 6121 §4.7.2.3, from the last available presence

    @property
    def available(self) -> bool: ...  # initial presence sent, not gone unavailable (RFC 6121 §4.2)

    @property
    def presence(self) -> Element | None: ...  # the last available presence broadcast

    @property
    def interested(self) -> bool: ...  # requested the roster (RFC 6121 §2.1.6 "interested resource")

    @property
    def where(self) -> str: ...  # "local", or the worker/node that holds it

    @property
    def ext(self) -> dict[str, Any]: ...  # per-module state, kept where the session lives


class LocalEndpoint(SessionRef, Protocol):
    """A session in this process (``streams.session.Session``)."""

    ended: bool

    def send(self, el: Element) -> None: ...

    def send_data(self, data: str, el: Element | None = None) -> None: ...

    def close(self, condition: str | None = None, text: str | None = None) -> None: ...


class SessionRegistry(Protocol):
    def add(self, session: Any) -> SessionRef | None:
        """Register; returns the session that had this full JID (to be closed with ``<conflict/>``)."""
        ...

    def remove(self, ref: SessionRef, moved: bool = False) -> bool:
        """Unregister (only if still the registered one); True when it was.  ``moved``: the session
        continues on another worker (XEP-0198 hand-over), which announces it: nothing to tell."""
        ...

    def get(self, jid: JID) -> SessionRef | None: ...

    def resources(self, bare: str) -> dict[str, SessionRef]: ...

    def count(self) -> int: ...

    def all(self) -> list[SessionRef]: ...

    def update(self, ref: SessionRef, **state: Any) -> None:
        """Change a session's routing state (``priority``, ``available``, ``presence``, ``interested``)."""
        ...

    def publish(self, ref: SessionRef, key: str, value: Any) -> None:
        """Set ``ref.ext[key]`` (None: remove it) where every worker sees it: state other sessions'
        code reads (carbons enabled, blocking pushes wanted, entity capabilities …).  JSON values."""
        ...

    def broadcast(self, name: str, *args: Any) -> None:
        """Fire the event ``name(*args)`` on every other worker (JSON arguments): a module's cache
        of shared data is stale there (a roster or a block list changed)."""
        ...

    def local_all(self) -> list[SessionRef]:
        """The sessions this process holds (``all`` is every worker's)."""
        ...

    def peers(self) -> list[int]:
        """The other workers this one is connected to (none in one process)."""
        ...

    async def call(self, worker: int, name: str, payload: Any, timeout: float = 5.0) -> Any:
        """Run the handler ``name`` (``serve``) on ``worker`` with ``payload`` (JSON) and return its reply.
        Raises ``TimeoutError``, ``ConnectionError`` (no such worker) or ``RuntimeError`` (it failed there)."""
        ...

    def serve(self, name: str, fn: Callable[[Any], Any] | None) -> None:
        """Answer other workers' ``call(…, name, payload)`` with ``fn(payload)`` (a JSON value, or an
        awaitable of one); None: no longer."""
        ...

    def deliver(self, ref: SessionRef, el: Element) -> None: ...

    def deliver_many(self, refs: list[SessionRef], el: Element) -> None:
        """To several sessions, serialized once when no outbound filter is installed."""
        ...

    def deliver_each(self, targets: list[tuple[SessionRef, str]], el: Element) -> None:
        """``el`` to each session, addressed ``to`` the paired JID (group chat fan-out, XEP-0045): the
        element is serialized once with a slot for ``to`` when no outbound filter is installed."""
        ...

    def close(self, ref: SessionRef, condition: str | None = None, text: str | None = None) -> None: ...


_STATE = frozenset(("priority", "available", "presence", "interested"))
#: ``ext`` key: the names of the ``ext`` entries set with ``publish`` (replicated to other workers)
PUBLISHED = "registry.published"


class LocalSessionRegistry:
    """bare JID string -> resource -> session, all in this process."""

    __slots__ = ("_by_bare", "_filters", "on_detached_close")

    def __init__(self, filters: list[Any] | None = None) -> None:
        self._by_bare: dict[str, dict[str, Any]] = {}
        self._filters: list[Any] = filters if filters is not None else []
        #: called for ``close`` of a session no stream carries (the server ends it)
        self.on_detached_close: Callable[[Any], None] | None = None

    @property
    def filtering(self) -> bool:
        """Whether an outbound filter is installed (then every element goes through ``send``)."""
        return bool(self._filters)

    def add(self, session: Any) -> SessionRef | None:
        jid: JID = session.jid
        assert jid.resource is not None
        res = self._by_bare.setdefault(jid.bare, {})
        old = res.get(jid.resource)
        res[jid.resource] = session
        return old if old is not session else None

    def remove(self, ref: SessionRef, moved: bool = False) -> bool:
        jid = ref.jid
        res = self._by_bare.get(jid.bare)
        if res is None or res.get(jid.resource or "") is not ref:
            return False
        del res[jid.resource or ""]
        if not res:
            del self._by_bare[jid.bare]
        return True

    def get(self, jid: JID) -> SessionRef | None:
        res = self._by_bare.get(jid.bare)
        if res is None or jid.resource is None:
            return None
        return res.get(jid.resource)

    def resources(self, bare: str) -> dict[str, SessionRef]:
        return self._by_bare.get(bare) or {}

    def all(self) -> list[SessionRef]:
        return [s for res in self._by_bare.values() for s in res.values()]

    def count(self) -> int:
        return sum(len(r) for r in self._by_bare.values())

    def update(self, ref: SessionRef, **state: Any) -> None:
        for k, v in state.items():
            if k not in _STATE:
                raise AttributeError(f"not a session routing attribute: {k}")
            setattr(ref, k, v)

    def local_all(self) -> list[SessionRef]:
        return self.all()

    def publish(self, ref: SessionRef, key: str, value: Any) -> None:
        ext = ref.ext
        if value is None:
            ext.pop(key, None)
        else:
            ext[key] = value
        keys = ext.get(PUBLISHED)
        if keys is None:
            keys = ext[PUBLISHED] = set()
        keys.add(key)

    def broadcast(self, name: str, *args: Any) -> None:
        return None  # one process: nobody else to tell

    def peers(self) -> list[int]:
        return []

    async def call(self, worker: int, name: str, payload: Any, timeout: float = 5.0) -> Any:
        raise ConnectionError("one process: no other worker")

    def serve(self, name: str, fn: Callable[[Any], Any] | None) -> None:
        return None

    def deliver(self, ref: SessionRef, el: Element) -> None:
        ref.send(el)  # type: ignore[attr-defined]

    def deliver_many(self, refs: list[SessionRef], el: Element) -> None:
        if len(refs) == 1 or self._filters:
            for r in refs:
                r.send(el)  # type: ignore[attr-defined]
            return
        data = serialize(el)
        for r in refs:
            r.send_data(data, el)  # type: ignore[attr-defined]

    def deliver_each(self, targets: list[tuple[SessionRef, str]], el: Element) -> None:
        if len(targets) == 1 or self._filters:
            for r, to in targets:
                r.send(addressed(el, to))  # type: ignore[attr-defined]
            return
        head, _, tail = serialize(addressed(el, _SLOT)).partition(_SLOT)
        for r, to in targets:
            s: Any = r
            if s.attached:
                s.send_data(head + escape_attr(to) + tail)
            else:  # queued as an element (XEP-0198 resumption, re-routing at the session's end)
                s.send(addressed(el, to))

    def close(self, ref: SessionRef, condition: str | None = None, text: str | None = None) -> None:
        s: Any = ref
        if s.stream is not None:
            s.close(condition, text)
        elif self.on_detached_close is not None:
            self.on_detached_close(s)
