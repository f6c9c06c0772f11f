"""XEP-0352: Client State Indication (urn:xmpp:csi:0).

§5.1 "Discovering support": ``<csi xmlns='urn:xmpp:csi:0'/>`` in the stream features after
authentication.  §5.2 "Indicating state": ``<inactive/>``/``<active/>`` top-level elements, no reply;
they need a bound resource (before binding: the ``<not-authorized/>`` stream error, as for stanzas:
RFC 6120 §4.9.3.12).  A stream begins active (§6), and so does a resumed one.

§4 "Server behaviour" (what this server does while a client is inactive): presence updates
(available/unavailable) are held back and coalesced, keeping the latest per sender full JID, and so
are messages whose only content is XEP-0085 chat states (also when carbon-copied, XEP-0280), keeping
the latest per sender.  Anything else — a message with a body or any other payload, an iq, a
subscription request, an error — is urgent: the held stanzas are sent first, in order, then it.
``<active/>`` sends the held stanzas (§6.1 "In-order processing": before anything the client sends
after it is processed).  At most ``[modules.csi] max_queue`` stanzas are held per session; one more
sends them all.  A session that moves to another stream (XEP-0198 resumption) or loses its stream
is active again and gets what was held.  The filter keeps its state in ``session.ext["csi"]`` and lets its own flushes
through unfiltered; it is installed only while some session is inactive, so that active clients'
stanzas pay nothing for it.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from pydantic import Field

from ..module import Module, Options, element_handler, fold, hook
from ._switch import Switch
from .offline import is_chat_state_only

NS = "urn:xmpp:csi:0"
_CARBONS = ("{urn:xmpp:carbons:2}sent", "{urn:xmpp:carbons:2}received")
_FORWARDED = "{urn:xmpp:forward:0}forwarded"


class CSIOptions(Options):
    #: most stanzas held back per inactive session; one more flushes them all
    max_queue: int = Field(100, ge=1)


class _State:
    __slots__ = ("inactive", "flushing", "held", "stream")

    def __init__(self) -> None:
        self.inactive = False
        #: the stream that said <inactive/>: another one (XEP-0198 resumption) starts active (§6.2)
        self.stream: Any = None
        self.flushing = False
        #: key -> element, in the order they were (last) held
        self.held: dict[Any, Element] = {}


def _hold_key(el: Element) -> Any:
    """The coalescing key of a stanza that may wait while the client is inactive, or None (urgent)."""
    tag = el.tag
    frm = el.get("from", "")
    if tag == "presence":
        if el.get("type") in (None, "unavailable"):
            return ("p", frm)
        return None
    if tag == "message" and el.get("type") not in ("error", "groupchat"):
        if is_chat_state_only(el):
            return ("cs", frm)
        if len(el) == 1 and el[0].tag in _CARBONS:  # a carbon copy of a chat state (XEP-0280)
            inner = el[0].find(f"{_FORWARDED}/message")
            if inner is None:
                inner = el[0].find(f"{_FORWARDED}/{{jabber:client}}message")
            if inner is not None and is_chat_state_only(inner):
                return ("cs", el[0].tag, inner.get("from", ""), inner.get("to", ""))
    return None


class CSI(Module):
    """XEP-0352 Client State Indication: hold back presence and chat states while inactive."""

    name = "csi"
    Options = CSIOptions

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        #: sessions that said <inactive/>; the outbound filter is installed only while there is one
        self.inactive_sessions: set[Any] = set()
        self._filter = Switch(ctx, lambda c: [c.filter(self.filter, priority=50)])

    def _set_inactive(self, session: Any, state: _State, inactive: bool, toggle: bool = True) -> None:
        """``toggle=False`` from inside the filter: the filter list must not change while
        ``Session.send`` walks it (the filter is removed at the next change)."""
        state.inactive = inactive
        if inactive:
            self.inactive_sessions.add(session)
        else:
            self.inactive_sessions.discard(session)
        if not toggle:
            return
        self._filter.set(bool(self.inactive_sessions))

    @hook("session-ended")
    @hook("session-handed-over")  # resumed on another worker (issue 12)
    def session_ended(self, session: Any) -> None:
        state = session.ext.get("csi")
        if state is not None:
            self._set_inactive(session, state, False)

    @fold("stream-features")
    def stream_feature(self, features: Element, stream: Any) -> Element:
        """§5.1: advertised after authentication."""
        features.append(Element(f"{{{NS}}}csi"))
        return features

    def _session(self, stream: Any) -> Any:
        session = getattr(stream, "session", None)
        if session is None:
            stream.stream_error("not-authorized", "bind a resource first")
        return session

    @element_handler(f"{{{NS}}}inactive")
    def inactive(self, stream: Any, el: Element) -> None:
        session = self._session(stream)
        if session is not None:
            state = session.ext.get("csi")
            if state is None:
                state = session.ext["csi"] = _State()
            state.stream = stream
            self._set_inactive(session, state, True)

    @element_handler(f"{{{NS}}}active")
    def active(self, stream: Any, el: Element) -> None:
        session = self._session(stream)
        if session is not None:
            state = session.ext.get("csi")
            if state is not None:
                self._set_inactive(session, state, False)
                self._flush(session, state)

    def _flush(self, session: Any, state: _State) -> None:
        """Send what was held, in order, past this filter."""
        if not state.held:
            return
        held = list(state.held.values())
        state.held.clear()
        state.flushing = True
        try:
            for el in held:
                session.send(el)
        finally:
            state.flushing = False

    def filter(self, session: Any, el: Element) -> Element | None:
        state = session.ext.get("csi")
        if state is None or not state.inactive or state.flushing:
            return el
        if session.stream is not state.stream:
            # resumed on another stream, or detached: that stream is active (§6.2)
            self._set_inactive(session, state, False, toggle=False)
            self._flush(session, state)
            return el
        key = _hold_key(el)
        if key is None:
            self._flush(session, state)
            return el
        state.held.pop(key, None)  # coalesce: the latest goes to the end
        state.held[key] = el
        if len(state.held) > self.ctx.options_for(session.jid.domain).max_queue:
            self._flush(session, state)
        return None
