"""A client session (RFC 6120 §7: a bound resource), apart from the connection that carries it.

A ``Session`` is created when a resource is bound and **attached** to the c2s stream that bound it.
It can be detached (the connection is gone, the session lives on: XEP-0198 §5 "resumption") and
attached again to another stream without losing its state or its place in the session registry.
While detached, what is sent to it waits in its outbound queue and is written, in order, when a
stream attaches.

``send`` is the one outbound choke point: the outbound filter chain (module API ``@filter`` hooks:
privacy lists, XEP-0352 CSI, XEP-0198 counting, carbons' copies …) runs here, then the element goes
to the stream or the queue.  The router reaches a session only through the session registry
(``routing.registry``); modules never hold one (they get ``SessionRef`` views of it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any, Protocol
from xml.etree.ElementTree import Element, fromstring

from ..jid import JID


class Carrier(Protocol):
    """What a session needs of the stream it is attached to."""

    closed: bool

    def send(self, el: Element) -> None: ...

    def send_data(self, data: str) -> None: ...

    def close(self, condition: str | None = None, text: str | None = None) -> None: ...


#: ``filter(session, element) -> element`` (possibly another one) or None to drop it
OutboundFilter = Callable[["Session", Element], "Element | None"]


class Session:
    """RFC 6120 §7 bound resource with the RFC 6121 state the router's delivery rules need.

    Attributes read by the router and modules (the ``SessionRef`` protocol of ``routing.registry``):
    ``jid`` (full), ``priority`` (RFC 6121 §4.7.2.3), ``available`` (§4.2), ``presence`` (the last
    available presence broadcast), ``interested`` (§2.2), ``where`` ("local": in this process), and
    ``ext``: per-module extension slots (a module keeps its per-session state under its name)."""

    __slots__ = ("jid", "priority", "available", "presence", "interested", "where", "ext", "auth",
                 "stanzas_in", "last_active", "_stream", "_queue", "_filters", "ended", "__weakref__")

    def __init__(self, jid: JID, filters: list[OutboundFilter], auth: dict[str, Any] | None = None) -> None:
        self.jid = jid
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        self.interested = False
        self.where = "local"
        self.ext: dict[str, Any] = {}
        #: how the session authenticated (mechanism, peer address …), for operators
        self.auth: dict[str, Any] = auth or {}
        #: stanzas received from the client on any stream carrying this session (XEP-0198 §4 counts)
        self.stanzas_in = 0
        #: time.monotonic() of the last stanza from the client (``rookery sessions``: idle time)
        self.last_active = _monotonic()
        self._stream: Carrier | None = None
        self._queue: deque[Element] | None = None  # made when first needed (detached)
        self._filters = filters  # shared with the event bus: hooks added later apply at once
        self.ended = False

    # -- streams -----------------------------------------------------------------------------
    @property
    def stream(self) -> Carrier | None:
        return self._stream

    @property
    def attached(self) -> bool:
        return self._stream is not None

    def attach(self, stream: Carrier) -> None:
        """Carry this session on ``stream``; what was queued while detached is written first, in order."""
        self._stream = stream
        q = self._queue
        while q and not stream.closed:
            stream.send(q.popleft())
        if not q:
            self._queue = None

    def detach(self) -> Carrier | None:
        """Stop using the current stream (it is not closed); later output is queued."""
        s, self._stream = self._stream, None
        return s

    def take_queue(self) -> list[Element]:
        """Remove and return what waits for a stream (at the session's end: re-routed, stored or bounced)."""
        out = list(self._queue or ())
        self._queue = None
        return out

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def _enqueue(self, el: Element) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(el)

    # -- out ---------------------------------------------------------------------------------
    def send(self, el: Element) -> None:
        """The one outbound choke point: filters, then the stream (or the queue while detached)."""
        if self._filters:
            for f in self._filters:
                r = f(self, el)
                if r is None:
                    return
                el = r
        s = self._stream
        if s is not None:
            s.send(el)
        elif not self.ended:
            self._enqueue(el)

    def send_data(self, data: str, el: Element | None = None) -> None:
        """Send an element already serialized (one serialization for many sessions).  When filters
        are installed, ``el`` (the same element) goes through them instead."""
        if self._filters:
            if el is None:
                raise ValueError("send_data with filters installed needs the element")
            self.send(el)
            return
        s = self._stream
        if s is not None:
            s.send_data(data)
        elif not self.ended:
            self._enqueue(el if el is not None else fromstring(data))

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream carrying the session (a stream error with ``condition``).  A detached
        session has no stream: the session registry ends it."""
        s = self._stream
        if s is not None:
            s.close(condition, text)

    def __repr__(self) -> str:
        return f"<Session {self.jid}{'' if self._stream is not None else ' detached'}>"
