"""Server-to-server streams (RFC 6120 §4-§6, §8.1.1.2; XEP-0220, XEP-0178): two stream kinds on
``XMLStream`` with content namespace ``jabber:server``.

``S2SInStream`` is a connection a peer opened to us.  Its negotiators are ``StartTLS`` (required),
``SASLExternal`` (when the peer's certificate is valid for its domain) and ``Dialback``
(``<db:result/>`` to authenticate a domain pair, ``<db:verify/>`` answered at any time: the peer may
ask on a stream it has not authenticated yet).  Once a domain is authenticated, stanzas go to the host
(the router) with their 'from' checked against the authenticated domains (``<invalid-from/>``) and
their 'to' against ours (``<host-unknown/>``); stanzas before that are ``<not-authorized/>``.

``S2SOutStream`` is a connection we opened: it sends the header first, asks for TLS, then
authenticates with SASL EXTERNAL when the peer's certificate is valid and EXTERNAL is offered, else
with dialback when allowed; it tells its ``S2SOutHost`` (the pool's link) when it is ready, when it
failed and what a ``<db:verify/>`` sent on it came back with.  It carries stanzas one way only.

Neither knows the router or sockets: what they need is the host protocols below.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable
from time import monotonic
from typing import Any, ClassVar, Protocol
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID, InvalidJID
from ..stanza import Stanza
from ..xml import ns
from . import dialback as db
from .negotiator import Negotiators
from .transport import Framer, Transport
from .xmlstream import StreamLimits, XMLStream

log = logging.getLogger(__name__)

_STANZA_KINDS = frozenset(("message", "presence", "iq"))
#: dialback verifications one incoming stream may have in flight (each may open a connection)
MAX_PENDING_DIALBACK = 8
_TLS = "{%s}" % ns.TLS
_SASL = "{%s}" % ns.SASL
_FEATURES = "{%s}features" % ns.STREAM
_STREAM_ERROR = "{%s}error" % ns.STREAM


class S2SSettings(Protocol):
    #: always True: STARTTLS is <required/> (the shared ``StartTLS`` negotiator reads it)
    require_encryption: bool
    #: XEP-0220 may be used (when the certificate does not do)
    dialback: bool
    #: only peers whose certificate is valid for their domain (no dialback over a bad certificate)
    require_valid_certs: bool


class S2SInHost(Protocol):
    """What an incoming s2s stream needs of the server."""

    secret: bytes

    def serves(self, domain: str) -> bool:
        """A domain stanzas may be addressed to on this server (accounts or services)."""
        ...

    def cert_valid_for(self, transport: Transport, domain: str) -> bool:
        """The peer's TLS certificate chains to a trust anchor and names ``domain`` (RFC 6125)."""
        ...

    def verify_dialback(self, local: str, remote: str, stream_id: str, key: str) -> Awaitable[bool]:
        """XEP-0220 §2.1.3: ask ``remote``'s authoritative server (``<db:verify/>``)."""
        ...

    def route(self, st: Stanza) -> Awaitable[Any] | None: ...

    def stream_started(self, stream: S2SInStream) -> None: ...

    def stream_ended(self, stream: S2SInStream) -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> Any: ...


class Dialback:
    """XEP-0220 on the receiving side: ``<db:result/>`` (authenticate a pair) and ``<db:verify/>``
    (answer as the authoritative server)."""

    handles: ClassVar[tuple[str, ...]] = (db.RESULT, db.VERIFY)

    def ended(self, stream: Any) -> None:
        pass

    def offer(self, stream: Any, features: Element) -> None:
        if stream.transport.is_secure and stream.dialback_allowed():
            SubElement(SubElement(features, db.FEATURE), "{%s}errors" % db.FEATURE_NS)

    def handle(self, stream: Any, el: Element) -> Awaitable[Any] | None:
        if el.tag == db.VERIFY:
            self._verify(stream, el)
        else:
            self._result(stream, el)
        return None

    @staticmethod
    def _verify(stream: S2SInStream, el: Element) -> None:
        """§2.2.2: the receiving server asks us whether a key we (as ``to``) issued is right."""
        receiving, originating, sid = el.get("from", ""), el.get("to", ""), el.get("id", "")
        reply = Element(db.VERIFY, {"from": originating, "to": receiving, "id": sid})
        if not stream.host.serves(originating):
            reply.set("type", "error")
            SubElement(SubElement(reply, "error", type="cancel"), "{%s}item-not-found" % ns.STANZAS_ERR)
        else:
            ok = db.check_key(stream.host.secret, receiving, originating, sid, el.text or "")
            reply.set("type", "valid" if ok else "invalid")
        stream.send(reply)

    @staticmethod
    def _result(stream: S2SInStream, el: Element) -> None:
        """§2.1.2: the peer claims ``from`` and wants to send to ``to``; ask its authoritative server."""
        if el.get("type"):
            stream.stream_error("unsupported-stanza-type", "a <db:result/> with a type is not a request")
            return
        remote, local, key = (el.get("from") or "").lower(), (el.get("to") or "").lower(), (el.text or "").strip()
        if not stream.transport.is_secure:
            stream.stream_error("policy-violation", "TLS is required before dialback")
            return
        try:
            remote = JID.parse(remote).domain if remote else ""
        except InvalidJID:
            remote = ""
        if not remote or stream.peer_from and remote != stream.peer_from and not stream.remote_domains:
            stream.stream_error("invalid-from", "the dialback 'from' is not the stream's")
            return
        if not stream.host.serves(local):
            stream.stream_error("host-unknown", "this server does not serve that domain")
            return
        if not stream.dialback_allowed() or not key:
            reply = Element(db.RESULT, {"from": local, "to": remote, "type": "error"})
            SubElement(SubElement(reply, "error", type="cancel"), "{%s}not-acceptable" % ns.STANZAS_ERR)
            stream.send(reply)
            return
        if stream.dialback_pending >= MAX_PENDING_DIALBACK:
            stream.stream_error("policy-violation", "too many dialback requests at once")
            return
        # not through the stream's ordering queue: the peer may need this very stream to answer our
        # own <db:verify/> meanwhile (Prosody does)
        stream.dialback_pending += 1
        stream.spawn(Dialback._check(stream, local, remote, key))

    @staticmethod
    async def _check(stream: S2SInStream, local: str, remote: str, key: str) -> None:
        try:
            ok = await stream.host.verify_dialback(local, remote, stream.stream_id, key)
        except Exception:
            log.exception("dialback verification failed")
            ok = False
        finally:
            stream.dialback_pending -= 1
        if stream.closed:
            return
        stream.send(Element(db.RESULT, {"from": local, "to": remote, "type": "valid" if ok else "invalid"}))
        if ok:
            stream.dialback_authenticated(remote, local)
        else:
            # XEP-0220 §2.2.1: the receiving server closes the stream after a failed dialback
            stream.stream_error("not-authorized", "dialback failed")


class S2SInStream(XMLStream):
    """One connection a peer server opened to us (RFC 6120 'receiving entity')."""

    __slots__ = ("host", "settings", "authenticated", "peer_from", "remote_domains", "auth_method",
                 "_negotiators", "_cert_cache", "last_active", "dialback_pending")

    content_ns = ns.SERVER
    header_ns = db.HEADER_NS

    def __init__(self, host: S2SInHost, transport: Transport, framer: Framer, settings: S2SSettings,
                 limits: StreamLimits, negotiators: Negotiators) -> None:
        self.host = host
        self.settings = settings
        #: at least one peer domain authenticated
        self.authenticated = False
        #: the 'from' of the peer's latest header (the domain it says it is)
        self.peer_from = ""
        #: authenticated peer domain -> the local domains it may send to (None: any of ours, SASL)
        self.remote_domains: dict[str, set[str] | None] = {}
        self.auth_method = ""
        self._negotiators = negotiators
        self._cert_cache: dict[str, bool] = {}
        self.last_active = 0.0
        self.dialback_pending = 0
        super().__init__(transport, framer, limits, host.spawn)
        host.stream_started(self)

    def dialback_allowed(self) -> bool:
        s = self.settings
        return s.dialback and (not s.require_valid_certs or self.cert_valid_for(self.peer_from))

    def cert_valid_for(self, domain: str) -> bool:
        if not domain or not self.transport.is_secure:
            return False
        v = self._cert_cache.get(domain)
        if v is None:
            v = self._cert_cache[domain] = self.host.cert_valid_for(self.transport, domain)
        return v

    def opened(self, root: Element) -> tuple[str, str | None] | None:
        to = (root.get("to") or "").lower()
        frm = root.get("from") or ""
        try:
            self.peer_from = JID.parse(frm).domain if frm else ""
        except InvalidJID:
            return "invalid-from", "the 'from' of the header is not a domain"
        if to and self.host.serves(to):
            self.local_domain = to
        if not to:
            return "improper-addressing", "a 'to' attribute is required"
        if not self.local_domain:
            return "host-unknown", "this server does not serve that domain"
        if root.get("version") is None:
            return "unsupported-version", "XMPP 1.0 is required"
        return None

    def default_domain(self) -> str:
        return self.local_domain or "invalid"

    def features(self) -> Element | None:
        f = Element(_FEATURES)
        for n in self._negotiators.order:
            n.offer(self, f)
        return f

    def negotiated(self) -> bool:
        return self.authenticated

    # -- authentication ------------------------------------------------------------------------
    def sasl_authenticated(self, domain: str) -> None:
        self.authenticated = True
        self.remote_domains[domain] = None
        self.auth_method = "EXTERNAL"
        self.cancel_timeout()
        self.transport.authenticated()

    def dialback_authenticated(self, remote: str, local: str) -> None:
        self.authenticated = True
        allowed = self.remote_domains.get(remote, set())
        if allowed is not None:
            allowed.add(local)
            self.remote_domains[remote] = allowed
        self.auth_method = self.auth_method or "dialback"
        self.cancel_timeout()
        self.transport.authenticated()

    # -- elements ------------------------------------------------------------------------------
    def process(self, el: Element) -> Awaitable[Any] | None:
        if self.closed:
            return None
        tag = el.tag
        if tag in _STANZA_KINDS:
            return self._stanza(el)
        n = self._negotiators.table.get(tag)
        if n is not None:
            return n.handle(self, el)
        if tag == _STREAM_ERROR:
            self.close()
            return None
        self.stream_error("unsupported-stanza-type")
        return None

    def _stanza(self, el: Element) -> Awaitable[Any] | None:
        """RFC 6120 §8.1.1.2, §13.7.1: only from an authenticated domain, only to ours."""
        if not self.authenticated:
            self.stream_error("not-authorized", "authenticate first")
            return None
        try:
            frm = JID.parse(el.get("from") or "")
        except InvalidJID:
            self.stream_error("invalid-from", "the 'from' is not a JID")
            return None
        if frm.domain not in self.remote_domains:
            self.stream_error("invalid-from", "that domain is not authenticated on this stream")
            return None
        try:
            to = JID.parse(el.get("to") or "")
        except InvalidJID:
            self.stream_error("improper-addressing", "the 'to' is not a JID")
            return None
        if not self.host.serves(to.domain):
            self.stream_error("host-unknown", "this server does not serve that domain")
            return None
        allowed = self.remote_domains[frm.domain]
        if allowed is not None and to.domain not in allowed:
            self.stream_error("not-authorized", "that domain pair is not authenticated")
            return None
        self.last_active = monotonic()
        return self.host.route(Stanza(el, frm, to))

    def ended(self) -> None:
        self.host.stream_ended(self)

    def __repr__(self) -> str:
        return f"<S2SInStream {self.peer_from or '?'} -> {self.local_domain}>"


# -- outgoing --------------------------------------------------------------------------------
class S2SOutHost(Protocol):
    """What an outgoing s2s stream needs of its link in the pool."""

    secret: bytes

    def cert_valid_for(self, transport: Transport, domain: str) -> bool: ...

    def secured(self, stream: S2SOutStream) -> None:
        """TLS is up and the peer's features are in: ``<db:verify/>`` may be sent now."""
        ...

    def ready(self, stream: S2SOutStream) -> None:
        """Authenticated: stanzas may flow."""
        ...

    def failed(self, stream: S2SOutStream, reason: str) -> None:
        """Authentication or negotiation failed (the stream is being closed)."""
        ...

    def verify_answer(self, stream: S2SOutStream, sid: str, valid: bool) -> None: ...

    def stream_ended(self, stream: S2SOutStream) -> None: ...

    def spawn(self, coro: Awaitable[Any]) -> Any: ...


class S2SOutStream(XMLStream):
    """One connection we opened to a peer server (RFC 6120 'initiating entity')."""

    __slots__ = ("host", "settings", "remote_domain", "peer_stream_id", "authenticated", "auth_method",
                 "is_ready", "_cert_ok", "_tried_external", "_features_seen", "_peer_db", "guests")

    content_ns = ns.SERVER
    header_ns = db.HEADER_NS

    def __init__(self, host: S2SOutHost, transport: Transport, framer: Framer, settings: S2SSettings,
                 limits: StreamLimits, local: str, remote: str) -> None:
        self.host = host
        self.settings = settings
        self.remote_domain = remote
        self.peer_stream_id = ""
        self.authenticated = False
        self.auth_method = ""
        self.is_ready = False
        self._cert_ok: bool | None = None
        self._tried_external = False
        self._features_seen = False
        self._peer_db = False
        #: further local domains piggy-backed on this stream (XEP-0220 §2.4): domain -> their host
        self.guests: dict[str, S2SOutHost] = {}
        super().__init__(transport, framer, limits, host.spawn)
        self.local_domain = local
        self.send_header(remote)

    # the peer's header --------------------------------------------------------------------------
    def opened(self, root: Element) -> tuple[str, str | None] | None:
        self.peer_stream_id = root.get("id") or ""
        frm = (root.get("from") or "").lower()
        if frm and frm != self.remote_domain:
            return "invalid-from", "we did not open a stream to that domain"
        return None

    def restart(self) -> None:
        """RFC 6120 §4.3.3: as the initiating entity we send the new header at once."""
        super().restart()
        self._features_seen = False
        self.send_header(self.remote_domain)

    def negotiated(self) -> bool:
        return self.is_ready

    def cert_ok(self) -> bool:
        if self._cert_ok is None:
            self._cert_ok = self.host.cert_valid_for(self.transport, self.remote_domain)
        return self._cert_ok

    # elements -------------------------------------------------------------------------------------
    def process(self, el: Element) -> Awaitable[Any] | None:
        if self.closed:
            return None
        tag = el.tag
        if tag == _FEATURES:
            self._features(el)
        elif tag == _TLS + "proceed":
            self.restart_after_tls()
        elif tag == _TLS + "failure":
            self._fail("the peer refused STARTTLS")
        elif tag == _SASL + "success":
            self.authenticated = True
            self.auth_method = "EXTERNAL"
            self.restart()
        elif tag == _SASL + "failure":
            if not self._dialback():
                self._fail("SASL EXTERNAL failed and dialback is not possible")
        elif tag == db.RESULT:
            t = el.get("type")
            guest = self.guests.get((el.get("to") or "").lower())
            if guest is not None and (el.get("from") or "").lower() == self.remote_domain:
                if t == "valid":
                    guest.ready(self)
                elif t in ("invalid", "error"):
                    del self.guests[(el.get("to") or "").lower()]
                    guest.failed(self, f"dialback {t}")
            elif t == "valid" and (el.get("from") or "").lower() == self.remote_domain:
                self.authenticated = True
                self.auth_method = "dialback"
                self._ready()
            elif t in ("invalid", "error"):
                self._fail(f"dialback {t}")
        elif tag == db.VERIFY:
            self.host.verify_answer(self, el.get("id", ""), el.get("type") == "valid")
        elif tag == _STREAM_ERROR:
            cond = next((c.tag.rpartition("}")[2] for c in el if c.tag.startswith("{%s}" % ns.STREAMS_ERR)
                         and not c.tag.endswith("}text")), "undefined-condition")
            self.host.failed(self, f"stream error <{cond}/>")
            self.close()
        else:
            # RFC 6120 §2.5: the stream we opened carries our stanzas only
            self.stream_error("unsupported-stanza-type", "this stream carries stanzas one way")
        return None

    def _features(self, f: Element) -> None:
        self._features_seen = True
        t = self.transport
        if not t.is_secure:
            if f.find(_TLS + "starttls") is not None and t.can_starttls:
                self.send(Element(_TLS + "starttls"))
            else:
                self._fail("the peer offers no TLS")
            return
        if self.authenticated:  # after the SASL restart
            self._ready()
            return
        self.host.secured(self)
        self._peer_db = self._peer_db or f.find(db.FEATURE) is not None
        mechs = [m.text for m in f.iterfind(f"{_SASL}mechanisms/{_SASL}mechanism")]
        if "EXTERNAL" in mechs and self.cert_ok():
            self._tried_external = True
            auth = Element(_SASL + "auth", mechanism="EXTERNAL")
            auth.text = base64.b64encode(self.local_domain.encode()).decode()
            self.send(auth)
            return
        if not self._dialback():
            self._fail("no authentication method in common" if self.cert_ok() else
                       "the peer's certificate is not valid and dialback is not allowed")

    def can_piggyback(self) -> bool:
        """Another local domain may authenticate on this stream with dialback (XEP-0220 §2.4)."""
        s = self.settings
        return (self.is_ready and not self.closed and s.dialback and self._peer_db
                and (not s.require_valid_certs or self.cert_ok()))

    def piggyback(self, local: str, host: S2SOutHost) -> None:
        """Authenticate ``local`` too on this stream; ``host`` hears ``ready`` or ``failed``."""
        self.guests[local] = host
        key = db.dialback_key(self.host.secret, self.remote_domain, local, self.peer_stream_id)
        r = Element(db.RESULT, {"from": local, "to": self.remote_domain})
        r.text = key
        self.send(r)

    def _dialback(self) -> bool:
        s = self.settings
        if not s.dialback or (s.require_valid_certs and not self.cert_ok()):
            return False
        key = db.dialback_key(self.host.secret, self.remote_domain, self.local_domain, self.peer_stream_id)
        r = Element(db.RESULT, {"from": self.local_domain, "to": self.remote_domain})
        r.text = key
        self.send(r)
        return True

    def restart_after_tls(self) -> None:
        XMLStream.restart(self)  # the new header goes once TLS is up
        self._features_seen = False
        self.spawn(self._tls())

    async def _tls(self) -> None:
        try:
            await self.transport.start_tls()
        except Exception as e:
            log.info("s2s TLS handshake with %s failed: %s", self.remote_domain, e)
            self.host.failed(self, f"TLS handshake failed: {e}")
            self.closed = True
            self.transport.abort()
            return
        self.send_header(self.remote_domain)

    def _ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.cancel_timeout()
            self.host.ready(self)

    def _fail(self, reason: str) -> None:
        log.info("s2s %s -> %s: %s", self.local_domain, self.remote_domain, reason)
        self.host.failed(self, reason)
        self.close("policy-violation" if "TLS" in reason else "not-authorized", reason)

    def ended(self) -> None:
        self.host.stream_ended(self)
        for guest in list(self.guests.values()):
            guest.stream_ended(self)

    def __repr__(self) -> str:
        return f"<S2SOutStream {self.local_domain} -> {self.remote_domain}>"

