"""Client-to-server streams (RFC 6120 §4-§7): a stream kind on ``XMLStream`` with content namespace
``jabber:client``.

Before binding, top-level elements go to the stream's negotiators (``StartTLS``, ``SASLAuth``,
``Bind``, and XEP-0078 ``LegacyAuth`` when enabled), found by qualified name (an iq by its payload's);
an iq no negotiator takes goes to the module element handler of its payload's qualified name, if any
(XEP-0077 §3.1 registration before authentication); other stanzas are ``<not-authorized/>``.  Binding creates a ``Session`` (``streams.session``) through the
``C2SHost`` (the server) and attaches it to this stream.  After binding, stanzas get their 'from'
stamped (RFC 6120 §8.1.2.1) and go to the router; other elements go to the handlers modules registered
for their qualified name (XEP-0198 ``<enable/>``, ``<r/>`` …), else ``<unsupported-stanza-type/>``.

The stream knows neither the router nor the server: what it needs of them is the ``C2SHost``
protocol below.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import monotonic as _monotonic
from typing import Any, Protocol
from xml.etree.ElementTree import Element

from ..jid import JID, InvalidJID
from ..stanza import Stanza
from ..xml import ns
from .negotiator import Negotiators
from .session import Session
from .transport import Framer, Transport
from .xmlstream import StreamLimits, XMLStream

log = logging.getLogger(__name__)

_STANZA_KINDS = frozenset(("message", "presence", "iq"))

#: a handler of a non-stanza top-level element: ``fn(stream, element)``
ElementHandler = Callable[["C2SStream", Element], "Awaitable[Any] | None"]


class C2SSettings(Protocol):
    require_encryption: bool
    allow_plaintext_auth: bool


class C2SHost(Protocol):
    """What a c2s stream needs of the server (``server.Server`` provides it)."""

    def serves(self, domain: str) -> bool: ...

    @property
    def default_domain(self) -> str: ...

    def element_handler(self, tag: str) -> ElementHandler | None:
        """The module handler of a non-stanza element (by qualified name), if any."""
        ...

    def stream_features(self, stream: C2SStream, features: Element) -> Awaitable[Any] | None:
        """Let modules add their features: the ``stream-features`` fold once ``stream.authenticated``,
        the ``stream-features-pre-auth`` fold before (XEP-0077 §4 ``<register/>``)."""
        ...

    def bind(self, stream: C2SStream, username: str, resource: str) -> Session:
        """Create and register the session (RFC 6120 §7.7.2.2: an existing one is replaced); the
        stream attaches it after writing the bind result."""
        ...

    def route(self, st: Stanza) -> Awaitable[Any] | None:
        """A stanza from a bound session, 'from' stamped."""
        ...

    def stream_started(self, stream: C2SStream) -> None: ...

    def stream_ended(self, stream: C2SStream, session: Session | None) -> None:
        """The stream is over; ``session`` was attached to it (the host ends or keeps it)."""
        ...

    def spawn(self, coro: Awaitable[Any]) -> Any: ...


class C2SStream(XMLStream):
    """One client connection.  After binding it carries a ``Session``."""

    __slots__ = ("host", "settings", "authenticated", "username", "session", "auth_info", "sasl",
                 "accept_pre_1_0", "ext", "_pre_1_0", "_negotiators", "_in_counts", "announced")

    content_ns = ns.CLIENT

    def __init__(self, host: C2SHost, transport: Transport, framer: Framer, settings: C2SSettings,
                 limits: StreamLimits, negotiators: Negotiators, accept_pre_1_0: bool = False) -> None:
        self.host = host
        self.settings = settings
        self.authenticated = False
        self.username: str | None = None
        self.session: Session | None = None
        #: how the stream authenticated (mechanism …), for operators; set by the negotiator
        self.auth_info: dict[str, Any] | None = None
        #: the SASL negotiation in progress (``sasl_auth.SASLState``)
        self.sasl: Any = None
        self.accept_pre_1_0 = accept_pre_1_0
        #: per-module state of this stream before a session exists (e.g. a validated invite token)
        self.ext: dict[str, Any] = {}
        self._pre_1_0 = False
        #: the host was told the stream opened (``stream_opened``: the operators' "connection opened" line)
        self.announced = False
        self._negotiators = negotiators
        super().__init__(transport, framer, limits, host.spawn)
        # stanzas received and elements sent, for metrics (only when the host counts them)
        counts = getattr(host, "stanza_counts", None)
        self._in_counts: dict[str, int] | None = None
        if counts is not None:
            self._in_counts, self.out_counts = counts
        host.stream_started(self)

    @property
    def jid(self) -> JID | None:
        return self.session.jid if self.session is not None else None

    # -- header and features, RFC 6120 §4.7, §4.3.2 ------------------------------------------
    def default_domain(self) -> str:
        return self.host.default_domain

    def opened(self, root: Element) -> tuple[str, str | None] | None:
        to = root.get("to")
        if to:
            try:
                self.local_domain = JID.parse(to).domain
            except InvalidJID:
                self.local_domain = ""
        if not self.host.serves(self.local_domain):
            self.local_domain = ""
        if not to:
            return "improper-addressing", "a 'to' attribute is required"
        if not self.local_domain:
            return "host-unknown", "this server does not serve that domain"
        version = root.get("version")
        if version is None:
            # RFC 6120 §4.7.5: a pre-1.0 client gets no features; only XEP-0078 can log it in.
            if not self.accept_pre_1_0:
                return "unsupported-version", "XMPP 1.0 is required"
            self._pre_1_0 = True
        elif not version.partition(".")[0].isdigit():
            return "unsupported-version", None
        if not self.announced:  # the first stream header of the connection (not a restart)
            self.announced = True
            opened = getattr(self.host, "stream_opened", None)
            if opened is not None:
                opened(self)
        return None

    def features(self) -> Element | Awaitable[Element] | None:
        if self._pre_1_0:
            return None
        f = Element("{%s}features" % ns.STREAM)
        for n in self._negotiators.order:
            n.offer(self, f)
        r = self.host.stream_features(self, f)
        if r is None:
            return f
        return self._features_after(r, f)

    @staticmethod
    async def _features_after(r: Awaitable[Any], f: Element) -> Element:
        await r
        return f

    def plain_allowed(self) -> bool:
        """RFC 6120 §13.8: plaintext passwords only inside TLS (or a loopback test switch)."""
        t = self.transport
        return t.is_secure or (self.settings.allow_plaintext_auth and t.is_loopback)

    def negotiated(self) -> bool:
        return self.session is not None

    # -- elements ----------------------------------------------------------------------------
    def process(self, el: Element) -> Awaitable[Any] | None:
        if self.closed:
            return None
        tag = el.tag
        session = self.session
        if session is not None:
            if tag in _STANZA_KINDS:
                session.stanzas_in += 1
                session.last_active = _monotonic()
                ic = self._in_counts
                if ic is not None:
                    ic[tag] += 1
                return self._route(session, el)
            h = self.host.element_handler(tag)
            if h is not None:
                return h(self, el)
            self.stream_error("unsupported-stanza-type")
            return None
        key = tag
        if tag == "iq":
            for child in el:
                key = child.tag
                break
        n = self._negotiators.table.get(key)
        if n is not None:
            return n.handle(self, el)
        if tag in _STANZA_KINDS:
            if key is not tag:  # an iq's payload: a module may take it before binding (XEP-0077 §3.1)
                h = self.host.element_handler(key)
                if h is not None:
                    return h(self, el)
            self.stream_error("not-authorized", "authenticate and bind a resource first")
            return None
        h = self.host.element_handler(tag)
        if h is not None:
            return h(self, el)
        self.stream_error("unsupported-stanza-type")
        return None

    def _route(self, session: Session, el: Element) -> Awaitable[Any] | None:
        """RFC 6120 §8.1.2.1: stamp 'from'; parse 'to'; hand to the router."""
        jid = session.jid
        frm = el.get("from")
        if frm is not None and frm != jid.full:
            try:
                fj = JID.parse(frm)
            except InvalidJID:
                fj = None
            if fj is None or (fj.full != jid.full and fj.full != jid.bare):
                self.stream_error("invalid-from")
                return None
        el.set("from", jid.full)
        to_s = el.get("to")
        kind = el.tag
        no_to = False
        to: JID | None
        if to_s is None:
            if kind == "presence":
                to = None
            else:
                to = jid.bare_jid()
                no_to = True
                if kind == "message":
                    el.set("to", jid.bare)
        else:
            try:
                to = JID.parse(to_s)
            except InvalidJID:
                st = Stanza(el, jid, None, session)
                if st.type != "error":
                    # RFC 6120 §8.3.1: from our server, which found the error (the 'to' is unusable)
                    err = st.error("jid-malformed")
                    err.set("from", jid.domain)
                    session.send(err)
                return None
        return self.host.route(Stanza(el, jid, to, session, no_to))

    # -- binding, RFC 6120 §7 ----------------------------------------------------------------
    def bind(self, resource: str, reply: Callable[[JID], Element] | None = None) -> JID | None:
        """RFC 6120 §7: create the session, write the bind result (built by ``reply`` from the
        bound JID), then attach the session, so that what was routed to it meanwhile follows the
        result.  None when the stream closed meanwhile."""
        if self.closed or self.username is None:
            return None
        session = self.host.bind(self, self.username, resource)
        self.session = session
        self.cancel_timeout()
        if reply is not None:
            self.send(reply(session.jid))
        session.attach(self)
        return session.jid

    def resume(self, session: Session) -> None:
        """Carry an existing, detached session of the account authenticated on this stream
        (the seam of XEP-0198 §5 resumption): what was queued for it is written now."""
        if not self.authenticated or self.session is not None:
            raise ValueError("resume needs an authenticated stream without a session")
        if session.jid.local != self.username or session.jid.domain != self.local_domain:
            raise ValueError("that session belongs to another account")
        if session.stream is not None or session.ended:
            raise ValueError("that session is not detached")
        self.session = session
        self.cancel_timeout()
        session.attach(self)

    # -- keepalive, end ----------------------------------------------------------------------
    def keepalive(self) -> None:
        """RFC 6120 §4.6.1 whitespace keepalive."""
        if not self.closed and self.session is not None:
            self.transport.write(b" ")

    def ended(self) -> None:
        for n in self._negotiators.order:
            n.ended(self)
        session = self.session
        if session is not None and session.stream is not self:
            session = None  # it has moved to another stream (XEP-0198 resumption)
        self.host.stream_ended(self, session)

    def __repr__(self) -> str:
        return f"<C2SStream {self.jid or self.local_domain}>"
