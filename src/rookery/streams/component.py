"""XEP-0114 Jabber Component Protocol, ``jabber:component:accept``: a stream kind on ``XMLStream``.

An external component (a gateway such as biboumi, a bot framework …) connects, names the domain it
wants to serve in the header's ``to`` (§3: not a domain of ours → ``<host-unknown/>``), and proves
it knows the shared secret with ``<handshake/>``: the lowercase hex SHA-1 of the stream id followed
by the secret (§3, compared in constant time; a wrong one → ``<not-authorized/>``; failures count
toward the per-address limit of failed logins, and an address over it gets ``<policy-violation/>``).  The server
answers an empty ``<handshake/>`` and the ``ComponentHost`` routes the domain to this stream (a
domain already connected → ``<conflict/>``).  No stream features: the protocol predates them.

Before the handshake every other element is ``<not-authorized/>``.  After it, stanzas must carry
``from`` and ``to`` (§3; RFC 6120 §4.9.3.7 ``<improper-addressing/>`` when missing or malformed),
and the domain of ``from`` must be exactly the component's (§3: "MUST match the hostname of the
component"; any localpart and resource are allowed; anything else is ``<invalid-from/>``).  They
then enter the router like stanzas from another server (no ``pre-<kind>`` chain, no session).
Stanzas a component writes with ``xmlns='jabber:client'`` (some libraries do) are taken as if they
were in the stream's namespace.  Stanzas for the component's domain are written to it as they are.

The stream knows neither the router nor the server: what it needs of them is ``ComponentHost``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable
from typing import Any, Protocol
from xml.etree.ElementTree import Element

from ..jid import JID, InvalidJID, nameprep
from ..stanza import Stanza
from ..xml import ns
from .transport import Framer, Transport
from .xmlstream import StreamLimits, XMLStream

log = logging.getLogger(__name__)

_STANZA_KINDS = frozenset(("message", "presence", "iq"))
_CLIENT_PREFIX = "{%s}" % ns.CLIENT
_HANDSHAKE = "handshake"


class ComponentHost(Protocol):
    """What a component stream needs of the server (``components.Components`` provides it)."""

    @property
    def default_domain(self) -> str: ...

    def secret_of(self, domain: str) -> str | None:
        """The shared secret of a configured component domain (None: not one)."""
        ...

    def handshake_blocked(self, ip: str) -> bool:
        """Too many failed handshakes (or logins) from ``ip`` lately."""
        ...

    def handshake_failed(self, ip: str) -> None: ...

    def authenticated(self, stream: ComponentStream) -> tuple[str, str | None] | None:
        """The handshake succeeded: route the domain to ``stream``.  A stream error (``<conflict/>``)
        when it cannot be."""
        ...

    def route(self, st: Stanza) -> Awaitable[Any] | None:
        """A stanza from the component, its addresses checked."""
        ...

    def stream_started(self, stream: ComponentStream) -> None: ...

    def stream_ended(self, stream: ComponentStream) -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> Any: ...


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: SHA1(concat(sid, password)) in lowercase hex."""
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


def _unqualify(el: Element) -> None:
    """``{jabber:client}tag`` → ``tag`` for ``el`` and the descendants that inherit the namespace."""
    el.tag = el.tag[len(_CLIENT_PREFIX):]
    for child in el:
        if child.tag.startswith(_CLIENT_PREFIX):
            _unqualify(child)


class ComponentStream(XMLStream):
    """One external component connection (XEP-0114 ``jabber:component:accept``)."""

    __slots__ = ("host", "domain", "authenticated", "peer_ip", "stanzas_in", "stanzas_out", "since")

    content_ns = ns.COMPONENT

    def __init__(self, host: ComponentHost, transport: Transport, framer: Framer, limits: StreamLimits) -> None:
        self.host = host
        #: the component's domain, once the header named a configured one
        self.domain = ""
        self.authenticated = False
        self.peer_ip = transport.peer_ip
        self.stanzas_in = 0
        self.stanzas_out = 0
        self.since = 0.0  # time.time() of the handshake
        super().__init__(transport, framer, limits, host.spawn)
        host.stream_started(self)

    # -- header, XEP-0114 §3 -----------------------------------------------------------------
    def default_domain(self) -> str:
        return self.host.default_domain

    def opened(self, root: Element) -> tuple[str, str | None] | None:
        to = root.get("to")
        if not to:
            return "improper-addressing", "a 'to' attribute naming the component is required"
        try:
            domain = nameprep(to)
        except InvalidJID:
            return "host-unknown", "not a component domain of this server"
        if self.host.secret_of(domain) is None:
            return "host-unknown", "not a component domain of this server"
        self.domain = domain
        self.local_domain = domain  # our header's 'from' is the component name (§3)
        return None

    def negotiated(self) -> bool:
        return self.authenticated

    # -- elements ----------------------------------------------------------------------------
    def process(self, el: Element) -> Awaitable[Any] | None:
        if self.closed:
            return None
        tag = el.tag
        if tag.startswith(_CLIENT_PREFIX):
            _unqualify(el)
            tag = el.tag
        if not self.authenticated:
            if tag == _HANDSHAKE:
                self._handshake(el)
            else:
                self.stream_error("not-authorized", "send the <handshake/> first")
            return None
        if tag in _STANZA_KINDS:
            return self._route(el)
        self.stream_error("unsupported-stanza-type")
        return None

    def _handshake(self, el: Element) -> None:
        """XEP-0114 §3: check the digest; answer an empty ``<handshake/>``."""
        host = self.host
        if host.handshake_blocked(self.peer_ip):
            log.info("component %s from %s: refused, too many failed handshakes", self.domain, self.peer_ip)
            self.stream_error("policy-violation", "too many failed attempts from this address; try later")
            return
        secret = host.secret_of(self.domain) if self.domain else None
        given = (el.text or "").strip().lower()
        if secret is None or len(el) or not hmac.compare_digest(given.encode(),
                                                               handshake_digest(self.stream_id, secret).encode()):
            host.handshake_failed(self.peer_ip)
            log.info("component %s from %s: handshake failed", self.domain or "?", self.peer_ip)
            self.stream_error("not-authorized", "the handshake does not match the shared secret")
            return
        err = host.authenticated(self)
        if err is not None:
            self.stream_error(*err)
            return
        self.authenticated = True
        self.cancel_timeout()
        self.transport.authenticated()
        self.send(Element(_HANDSHAKE))

    def _route(self, el: Element) -> Awaitable[Any] | None:
        frm_s, to_s = el.get("from"), el.get("to")
        if not frm_s or not to_s:
            self.stream_error("improper-addressing", "stanzas from a component need 'from' and 'to'")
            return None
        try:
            frm = JID.parse(frm_s)
            to = JID.parse(to_s)
        except InvalidJID:
            self.stream_error("improper-addressing", "a 'from' or 'to' is not a valid JID")
            return None
        if frm.domain != self.domain:
            self.stream_error("invalid-from", f"a component may only send from addresses at {self.domain}")
            return None
        self.stanzas_in += 1
        return self.host.route(Stanza(el, frm, to))

    # -- out ---------------------------------------------------------------------------------
    def forward(self, st: Stanza) -> None:
        """The route's ``forward``: a stanza for the component's domain, written as it is."""
        self.stanzas_out += 1
        self.send(st.el)

    def keepalive(self) -> None:
        """RFC 6120 §4.6.1 whitespace keepalive."""
        if not self.closed and self.authenticated:
            self.transport.write(b" ")

    def ended(self) -> None:
        self.host.stream_ended(self)

    def __repr__(self) -> str:
        return f"<ComponentStream {self.domain or '?'}{'' if self.authenticated else ' unauthenticated'}>"
