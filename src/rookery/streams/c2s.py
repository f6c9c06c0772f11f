"""Client-to-server streams (RFC 6120 §4-§7, RFC 6121): header, features, STARTTLS, SASL, resource
binding, then stanzas handed to the router.  Transport-agnostic: it gets bytes from and writes bytes
to a transport object (``transports.tcp.StreamProtocol``), never a socket.

Each session processes its stanzas one at a time: when a stanza's handling is asynchronous (storage),
reading pauses and later stanzas wait, so a client's stanzas take effect in the order sent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element, SubElement

from ..jid import JID, InvalidJID, nodeprep, resourceprep
from ..stanza import Stanza, StanzaError
from ..xml import StreamParser, XMLStreamError, ns
from ..xml.serializer import escape_attr, escape_text, serialize
from . import sasl
from .legacy_auth import LegacyAuth

if TYPE_CHECKING:
    from ..server import Server

log = logging.getLogger(__name__)

_STREAM_TAG = "{%s}stream" % ns.STREAM
_SASL = "{%s}" % ns.SASL
_TLS = "{%s}" % ns.TLS
_BIND_TAG = "{%s}bind" % ns.BIND
_STANZA_KINDS = ("message", "presence", "iq")
MAX_AUTH_FAILURES = 5


class C2SStream:
    """One client connection.  After binding it is also the ``Session`` the router delivers to."""

    def __init__(self, server: Server, transport: Any) -> None:
        self.server = server
        self.transport = transport
        cfg = server.config.c2s
        self.cfg = cfg
        self.parser = self._new_parser()
        self.stream_id = ""
        self.host = ""
        self.lang = "en"
        self.header_sent = False
        self.closed = False
        self.authenticated = False
        self.username: str | None = None
        self.jid: JID | None = None  # full JID once bound
        self.bound = False
        # Session protocol (routing.sessions.Session)
        self.priority = 0
        self.available = False
        self.presence: Element | None = None
        self.interested = False
        self.directed: set[str] = set()
        # processing queue (per-session ordering)
        self._queue: deque[Element] | None = None
        self._sasl: sasl.ScramExchange | None = None
        self._sasl_user = ""
        self._auth_failures = 0
        self._legacy = LegacyAuth(self) if cfg.legacy_auth else None
        self._timeout = asyncio.get_running_loop().call_later(cfg.handshake_timeout, self._handshake_timeout)
        server.streams.add(self)

    # -- bytes in ----------------------------------------------------------------------------
    def _new_parser(self) -> StreamParser:
        return StreamParser(self._on_open, self._on_stanza, self._on_close,
                            max_stanza_size=self.cfg.max_stanza_size, max_depth=self.cfg.max_depth)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed(data)
        except XMLStreamError as e:
            self.stream_error(e.condition, e.text)
        except Exception:
            log.exception("error processing stream data")
            self.stream_error("internal-server-error")

    def connection_lost(self) -> None:
        self.closed = True
        self.parser.close()
        self._end()

    # -- stream header, RFC 6120 §4.7 --------------------------------------------------------
    def _on_open(self, root: Element, nsmap: dict[str, str]) -> None:
        self.stream_id = secrets.token_hex(8)
        self.lang = root.get(ns.XML_LANG) or "en"
        to = root.get("to")
        if to:
            try:
                self.host = JID.parse(to).domain
            except InvalidJID:
                self.host = ""
        peer_from = root.get("from")
        self._send_header(peer_from)
        if root.tag != _STREAM_TAG:
            self.stream_error("invalid-namespace", "the root element must be <stream:stream>")
            return None
        if nsmap.get("", ns.CLIENT) != ns.CLIENT or "" not in nsmap:
            self.stream_error("invalid-namespace", "the content namespace must be jabber:client")
            return None
        if not to:
            self.stream_error("improper-addressing", "a 'to' attribute is required")
            return None
        if self.host not in self.server.hosts:
            self.stream_error("host-unknown", "this server does not serve that domain")
            return None
        version = root.get("version")
        if version is None:
            # RFC 6120 §4.7.5: a pre-1.0 client gets no features; only XEP-0078 can log it in.
            if self._legacy is None:
                self.stream_error("unsupported-version", "XMPP 1.0 is required")
                return None
            return
        major, _, _minor = version.partition(".")
        if not major.isdigit():
            self.stream_error("unsupported-version")
            return None
        self.transport.write(serialize(self._features()).encode())

    def _send_header(self, peer_from: str | None) -> None:
        if self.header_sent:
            return
        self.header_sent = True
        host = self.host if self.host in self.server.hosts else self.server.config.domains[0]
        to = ""
        if peer_from:
            to = f" to='{escape_attr(peer_from)}'"
        self.transport.write(
            (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
             f"xmlns:stream='http://etherx.jabber.org/streams' id='{self.stream_id or secrets.token_hex(8)}' "
             f"from='{escape_attr(host)}'{to} version='1.0' xml:lang='en'>").encode())

    def _features(self) -> Element:
        f = Element("{%s}features" % ns.STREAM)
        secure = self.transport.is_secure
        if not self.authenticated:
            if not secure and self.transport.ssl_context is not None:
                st = SubElement(f, _TLS + "starttls")
                if self.cfg.require_encryption:
                    SubElement(st, _TLS + "required")
            if secure or not self.cfg.require_encryption:
                mechs = SubElement(f, _SASL + "mechanisms")
                for m in self.mechanisms():
                    SubElement(mechs, _SASL + "mechanism").text = m
                if secure and self.transport.cb_data is not None:
                    cb = SubElement(f, "{%s}sasl-channel-binding" % ns.SASL_CB)
                    SubElement(cb, "{%s}channel-binding" % ns.SASL_CB, type="tls-server-end-point")
                if self._legacy is not None:
                    SubElement(f, "{%s}auth" % ns.IQ_AUTH_FEATURE)
        else:
            SubElement(f, _BIND_TAG)
            sess = SubElement(f, "{%s}session" % ns.SESSION)
            SubElement(sess, "{%s}optional" % ns.SESSION)
            r = self.server.router.fire("stream-features", self, f)
            if r is not None:
                self.server.router.spawn(r)
        return f

    def mechanisms(self) -> list[str]:
        secure = self.transport.is_secure
        out = []
        if secure and self.transport.cb_data is not None:
            out += [m + "-PLUS" for m in sasl.SCRAM_ORDER]
        out += sasl.SCRAM_ORDER
        if self.plain_allowed():
            out.append("PLAIN")
        return out

    def plain_allowed(self) -> bool:
        """RFC 6120 §13.8: plaintext passwords only inside TLS (or a loopback test switch)."""
        return self.transport.is_secure or (self.cfg.allow_plaintext_auth and self.transport.is_loopback)

    def _on_close(self) -> None:
        """RFC 6120 §4.4: the peer closed its stream; close ours and the connection."""
        if not self.closed:
            self.transport.write(b"</stream:stream>")
            self.closed = True
            self.transport.close()
        self._end()

    # -- stanzas -----------------------------------------------------------------------------
    def _on_stanza(self, el: Element) -> None:
        if self.closed:
            return
        q = self._queue
        if q is not None:
            q.append(el)
            return
        r = self._process(el)
        if r is not None:
            self._queue = deque()
            self.transport.pause_reading()
            self.server.router.spawn(self._drain(r))

    async def _drain(self, r: Awaitable) -> None:
        try:
            while True:
                try:
                    await r
                except Exception:
                    log.exception("stanza processing failed")
                q = self._queue
                if not q or self.closed:
                    break
                r = None  # type: ignore[assignment]
                while q and r is None and not self.closed:
                    r = self._process(q.popleft())
                if r is None:
                    break
        finally:
            self._queue = None
            self.transport.resume_reading()

    def _process(self, el: Element) -> Awaitable | None:
        if self.closed:
            return None
        tag = el.tag
        if self.bound:
            if tag in _STANZA_KINDS:
                return self._route(el)
            self.stream_error("unsupported-stanza-type")
            return None
        if tag.startswith(_SASL):
            return self._sasl_element(el)
        if tag == _TLS + "starttls":
            return self._starttls()
        if self.authenticated and tag == "iq" and el.find(_BIND_TAG) is not None and el.get("type") == "set":
            return self._bind(el)
        if self.authenticated and tag == "iq" and el.find("{%s}session" % ns.SESSION) is not None:
            self._reply_iq(el)
            return None
        if tag == "iq" and self._legacy is not None and el.find("{%s}query" % ns.IQ_AUTH) is not None:
            if self.cfg.require_encryption and not self.transport.is_secure:
                self.stream_error("policy-violation", "encryption is required")
                return None
            return self._legacy.handle(el)
        if tag in _STANZA_KINDS:
            self.stream_error("not-authorized", "authenticate and bind a resource first")
            return None
        self.stream_error("unsupported-stanza-type")
        return None

    def _route(self, el: Element) -> Awaitable | None:
        """RFC 6120 §8.1.2.1: stamp 'from'; parse 'to'; hand to the router."""
        jid = self.jid
        assert jid is not None
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
                st = Stanza(el, jid, None, self)
                if st.type != "error":
                    self.send(st.error("jid-malformed"))
                return None
        st = Stanza(el, jid, to, self, no_to)
        return self.server.router.from_local(st)

    def _reply_iq(self, el: Element, *children: Element) -> None:
        r = Element("iq", type="result")
        if el.get("id") is not None:
            r.set("id", el.get("id", ""))
        for c in children:
            r.append(c)
        self.send(r)

    def _iq_error(self, el: Element, condition: str, text: str | None = None) -> None:
        r = Element("iq", type="error")
        if el.get("id") is not None:
            r.set("id", el.get("id", ""))
        r.append(StanzaError(condition, text).to_element())
        self.send(r)

    # -- STARTTLS, RFC 6120 §5 ---------------------------------------------------------------
    def _starttls(self) -> Awaitable | None:
        if self.transport.is_secure or self.authenticated or self.transport.ssl_context is None:
            self.transport.write(f"<failure xmlns='{ns.TLS}'/></stream:stream>".encode())
            self.closed = True
            self.transport.close()
            return None
        self.transport.write(f"<proceed xmlns='{ns.TLS}'/>".encode())
        # RFC 6120 §5.4.3.3: what follows the handshake is a new stream.  (Bytes decrypted before
        # start_tls() returns are held by the transport and fed after it.)
        self._restart()
        # not through the pause/drain queue: loop.start_tls takes the raw transport over itself
        self.server.router.spawn(self._do_starttls())
        return None

    async def _do_starttls(self) -> None:
        try:
            await self.transport.start_tls()
        except Exception as e:
            log.debug("TLS handshake failed: %s", e)
            self.closed = True
            self.transport.abort()
            return

    def _restart(self) -> None:
        """RFC 6120 §4.3.3: a new stream over the same connection, after TLS or SASL."""
        self.parser.close()
        self.parser = self._new_parser()
        self.header_sent = False

    # -- SASL, RFC 6120 §6 -------------------------------------------------------------------
    def _sasl_failure(self, condition: str, text: str | None = None, delay: bool = False) -> Awaitable | None:
        self._sasl = None
        t = f"<text xml:lang='en'>{escape_text(text)}</text>" if text else ""
        data = f"<failure xmlns='{ns.SASL}'><{condition}/>{t}</failure>".encode()
        if not delay:
            self.transport.write(data)
            return None
        self._auth_failures += 1
        self.server.auth_limiter.failed(self.transport.peer_ip)
        return self._delayed_failure(data)

    async def _delayed_failure(self, data: bytes) -> None:
        await asyncio.sleep(self.cfg.auth_failure_delay)
        if self.closed:
            return
        self.transport.write(data)
        if self._auth_failures >= MAX_AUTH_FAILURES:
            self.stream_error("policy-violation", "too many failed authentication attempts")

    def _sasl_element(self, el: Element) -> Awaitable | None:
        local = el.tag[len(_SASL):]
        if self.authenticated:
            self.stream_error("policy-violation", "already authenticated")
            return None
        if self.cfg.require_encryption and not self.transport.is_secure:
            return self._sasl_failure("encryption-required", "use STARTTLS first")
        text = (el.text or "").strip()
        if local == "auth":
            if self.server.auth_limiter.blocked(self.transport.peer_ip):
                return self._sasl_failure("temporary-auth-failure", "too many failed logins from your address; try later")
            mech = el.get("mechanism", "")
            if mech not in self.mechanisms():
                return self._sasl_failure("invalid-mechanism")
            if mech == "PLAIN":
                return self._plain(text)
            cb = self.transport.cb_data if self.transport.is_secure else None
            self._sasl = sasl.ScramExchange(mech, cb)
            if not text or text == "=":
                self.transport.write(f"<challenge xmlns='{ns.SASL}'/>".encode())
                return None
            return self._scram_first(text)
        if local == "response":
            ex = self._sasl
            if ex is None:
                return self._sasl_failure("malformed-request", "no exchange in progress")
            if ex.server is None:
                return self._scram_first(text)
            try:
                final = ex.final(text)
            except sasl.SASLFailure as f:
                return self._sasl_failure(f.condition, delay=f.condition == "not-authorized")
            return self._sasl_success(ex.username, final)
        if local == "abort":
            return self._sasl_failure("aborted")
        return self._sasl_failure("malformed-request")

    async def _scram_first(self, text: str) -> None:
        ex = self._sasl
        assert ex is not None
        try:
            client_first = base64.b64decode(text, validate=True).decode("utf-8")
            authzid = client_first.split(",", 2)[1] if client_first.count(",") >= 2 else ""
            user = sasl.parse_scram_username(client_first)
        except (ValueError, UnicodeDecodeError):
            return await self._as_awaitable(self._sasl_failure("incorrect-encoding"))
        except sasl.SASLFailure as f:
            return await self._as_awaitable(self._sasl_failure(f.condition))
        if authzid.startswith("a="):
            if not self._authzid_ok(user, authzid[2:]):
                return await self._as_awaitable(self._sasl_failure("invalid-authzid"))
        creds = await self.server.storage.accounts.get_credentials(self.host, user) if user else None
        cred = (creds or {}).get(ex.hash_name) or sasl.fake_credential(ex.hash_name)
        ex.username = user if creds else ""
        try:
            challenge = ex.first(text, cred)
        except sasl.SASLFailure as f:
            return await self._as_awaitable(self._sasl_failure(f.condition, delay=True))
        if not self.closed:
            self.transport.write(f"<challenge xmlns='{ns.SASL}'>{challenge}</challenge>".encode())

    @staticmethod
    async def _as_awaitable(r: Awaitable | None) -> None:
        if r is not None:
            await r

    def _authzid_ok(self, user: str, authzid: str) -> bool:
        try:
            j = JID.parse(authzid.replace("=2C", ",").replace("=3D", "="))
        except InvalidJID:
            return False
        return j.resource is None and j.local == user and j.domain == self.host

    async def _plain(self, text: str) -> None:
        try:
            authzid, authcid, password = sasl.parse_plain(text)
            user = nodeprep(authcid) if authcid else ""
        except sasl.SASLFailure as f:
            return await self._as_awaitable(self._sasl_failure(f.condition))
        except InvalidJID:
            user = ""
        if authzid and not self._authzid_ok(user, authzid):
            return await self._as_awaitable(self._sasl_failure("invalid-authzid"))
        ok = await self.check_password(user, password)
        if not ok:
            return await self._as_awaitable(self._sasl_failure("not-authorized", delay=True))
        r = self._sasl_success(user, None)
        if r is not None:
            await r

    async def check_password(self, user: str, password: str) -> bool:
        """Verify a plaintext password against the stored SCRAM-SHA-256 keys (off the event loop)."""
        if not user:
            return False
        creds = await self.server.storage.accounts.get_credentials(self.host, user)
        if not creds or "SHA-256" not in creds:
            return False
        return await asyncio.to_thread(sasl.check_password, password, creds["SHA-256"], "SHA-256")

    def _sasl_success(self, user: str, final_b64: str | None) -> Awaitable | None:
        self._sasl = None
        if not user:
            return self._sasl_failure("not-authorized", delay=True)
        self.authenticated = True
        self.username = user
        body = final_b64 or ""
        self.transport.write(f"<success xmlns='{ns.SASL}'>{body}</success>".encode())
        self._restart()
        return None

    # -- resource binding, RFC 6120 §7 -------------------------------------------------------
    def _bind(self, el: Element) -> Awaitable | None:
        b = el.find(_BIND_TAG)
        assert b is not None
        res_el = b.find("{%s}resource" % ns.BIND)
        requested = (res_el.text or "").strip() if res_el is not None else ""
        if requested:
            try:
                resource = resourceprep(requested)
            except InvalidJID:
                self._iq_error(el, "bad-request", "invalid resourcepart")
                return None
        else:
            resource = "rookery-" + secrets.token_hex(6)
        self.bind_resource(resource)
        jid_el = Element("{%s}jid" % ns.BIND)
        assert self.jid is not None
        jid_el.text = self.jid.full
        bind = Element(_BIND_TAG)
        bind.append(jid_el)
        self._reply_iq(el, bind)
        return None

    def bind_resource(self, resource: str) -> None:
        """Register the session; §7.7.2.2: an existing session with this full JID is replaced and
        gets a ``<conflict/>`` stream error."""
        assert self.username is not None
        self.jid = JID(self.username, self.host, resource, _norm=False)
        self.bound = True
        self.authenticated = True
        self._timeout.cancel()
        old = self.server.router.sessions.add(self)  # type: ignore[arg-type]
        if old is not None:
            old.close("conflict", "replaced by a new session")
        r = self.server.router.fire("session-bound", self)
        if r is not None:
            self.server.router.spawn(r)

    # -- Session protocol --------------------------------------------------------------------
    def send(self, el: Element) -> None:
        if not self.closed:
            self.transport.write(serialize(el).encode())

    def send_data(self, data: str) -> None:
        if not self.closed:
            self.transport.write(data.encode())

    def keepalive(self) -> None:
        """RFC 6120 §4.6.1 whitespace keepalive."""
        if not self.closed and self.bound:
            self.transport.write(b" ")

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        if condition:
            self.stream_error(condition, text)
        elif not self.closed:
            self.transport.write(b"</stream:stream>")
            self.closed = True
            self.transport.close()
            self._end()

    def stream_error(self, condition: str, text: str | None = None) -> None:
        """RFC 6120 §4.9: send the error, close the stream and the connection."""
        if self.closed:
            return None
        self._send_header(None)
        t = f"<text xmlns='{ns.STREAMS_ERR}' xml:lang='en'>{escape_text(text)}</text>" if text else ""
        self.transport.write(
            f"<stream:error><{condition} xmlns='{ns.STREAMS_ERR}'/>{t}</stream:error></stream:stream>".encode())
        self.closed = True
        self.parser.close()
        self.transport.close()
        self._end()
        return None

    def _handshake_timeout(self) -> None:
        if not self.bound and not self.closed:
            self.stream_error("connection-timeout", "authentication took too long")

    def _end(self) -> None:
        """Unregister once, and tell modules (presence broadcasts unavailable, RFC 6121 §4.5.3)."""
        if getattr(self, "_ended", False):
            return
        self._ended = True
        self._timeout.cancel()
        self.server.streams.discard(self)
        if self.bound:
            self.server.router.sessions.remove(self)  # type: ignore[arg-type]
            r = self.server.router.fire("session-ended", self)
            if r is not None:
                self.server.router.spawn(r)

    def __repr__(self) -> str:
        return f"<C2SStream {self.jid or self.host}>"
