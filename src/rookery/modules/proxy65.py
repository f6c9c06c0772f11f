"""XEP-0065: SOCKS5 Bytestreams, the proxy (mediated connection, §6) on ``proxy.<domain>``.

* disco#info of the service: identity ``proxy/bytestreams``, feature
  ``http://jabber.org/protocol/bytestreams``; listed in its domain's disco#items.
* Streamhost discovery (§6.3, the Requester discovers the proxy's network address): an iq get with an empty
  ``<query/>`` returns ``<streamhost jid host port/>`` — ``[proxy65] public_host``/``public_port``,
  else the address the listener is bound to (the service's domain name for a wildcard address).
* The listener (``[proxy65] listen``, plain TCP, default ``127.0.0.1:7777``) speaks SOCKS5 (RFC
  1928) with the "no authentication" method only and a CONNECT to DOMAINNAME = hex SHA1(SID +
  Requester JID + Target JID), port 0 (§6.3.3; anything else: a SOCKS5 failure reply and close).
  The first connection with a hash waits, the second is paired with it (a third is refused); both
  stay paused — bytes sent before activation are not read (§7 lets a proxy ignore them).
* Activation (§6.3.5): an iq set ``<query sid><activate>target</activate></query>`` from the
  Requester.  The proxy hashes SID + the iq's ``from`` + the target and finds the pair:
  ``item-not-found`` when no connection has that hash (a non-Requester's hash never matches),
  ``not-allowed`` when only one party is connected, ``resource-constraint`` when the Requester already
  has ``max_transfers_per_user`` active transfers, ``forbidden`` for entities of other servers.
* Relay: each side's received bytes are written to the other; when a side's write buffer passes its
  high-water mark the other side stops reading until it drains (asyncio flow control), so a
  transfer holds at most a few hundred KiB in the proxy whatever its speed difference.  When one side
  closes, the other is closed after its buffered bytes are sent.
* A connection not activated within ``activation_timeout`` seconds is closed, and at most
  ``max_pending`` connections wait for activation at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any
from xml.etree.ElementTree import Element, SubElement

from pydantic import Field, field_validator

from ..config import _check_listen
from ..jid import JID, InvalidJID
from ..module import Module, ModuleContext, Options, iq_handler
from ..stanza import Stanza, StanzaError
from ..transports.tcp import parse_listen
from ..xml import ns
from .disco import info_query

NS = "http://jabber.org/protocol/bytestreams"
DISCO_INFO = ns.DISCO_INFO
DISCO_ITEMS = ns.DISCO_ITEMS
_HASH = re.compile(rb"^[0-9a-f]{40}$")
#: write buffer high-water mark of each side (the low mark is a quarter of it)
HIGH_WATER = 256 * 1024

# RFC 1928 §6 reply codes
REP_OK, REP_FAILURE, REP_NOT_ALLOWED, REP_HOST_UNREACHABLE = 0, 1, 2, 4
REP_CMD_UNSUPPORTED, REP_ATYP_UNSUPPORTED = 7, 8


class Proxy65Options(Options):
    """``[proxy65]`` (or ``[modules.proxy65]``)."""

    #: plain TCP listeners for SOCKS5 ("host:port"; "*:7777" for every interface)
    listen: list[str] = ["127.0.0.1:7777"]
    #: the host announced in <streamhost/> (default: the first listener's address)
    public_host: str | None = None
    #: the port announced in <streamhost/> (default: the first listener's port)
    public_port: int | None = Field(None, ge=1, le=65535)
    #: seconds a connection may wait for its pair and activation before it is closed
    activation_timeout: float = Field(60.0, gt=0)
    #: active transfers one user (bare JID) may have at once (0: no limit)
    max_transfers_per_user: int = Field(5, ge=0)
    #: connections waiting for activation at once, server-wide
    max_pending: int = Field(1000, ge=2)

    _v_listen = field_validator("listen")(_check_listen)


class Connection(asyncio.Protocol):
    """One SOCKS5 connection: the handshake, waiting for activation, then relaying to ``peer``."""

    def __init__(self, proxy: Proxy65) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = "greeting"  # greeting -> request -> waiting -> relaying | closed
        self.hash = ""
        self.peer: Connection | None = None
        self.owner: str | None = None  # bare JID of the Requester once activated
        self.timer: asyncio.TimerHandle | None = None
        self._peer_paused = False

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy.connections.add(self)
        transport.set_write_buffer_limits(HIGH_WATER, HIGH_WATER // 4)
        self.timer = asyncio.get_running_loop().call_later(self.proxy.options.activation_timeout, self._timeout)

    def data_received(self, data: bytes) -> None:
        if self.state == "relaying":
            peer = self.peer
            if peer is not None and peer.transport is not None:
                peer.transport.write(data)
            return
        if self.state in ("waiting", "closed"):
            return  # paused; a byte or two may still arrive: ignored before activation (§7)
        self.buf += data
        if len(self.buf) > 600:
            self.close()
            return
        if self.state == "greeting":
            self._greeting()
        if self.state == "request":
            self._request()

    def eof_received(self) -> bool | None:
        return False  # close our side; connection_lost ends the peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = "closed"
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.proxy.forget(self)
        self.proxy.connections.discard(self)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer.close()  # after what is buffered for it has been sent

    def pause_writing(self) -> None:  # our buffer is full: stop reading from the peer
        peer = self.peer
        if peer is not None and peer.transport is not None and not self._peer_paused:
            self._peer_paused = True
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and self._peer_paused:
            self._peer_paused = False
            peer.transport.resume_reading()

    # -- SOCKS5 ------------------------------------------------------------------------------------
    def _greeting(self) -> None:
        b = self.buf
        if len(b) < 2 or len(b) < 2 + b[1]:
            return
        if b[0] != 5:
            self.close()
            return
        methods, self.buf = b[2:2 + b[1]], b[2 + b[1]:]
        if 0 not in methods:
            self._write(b"\x05\xff")  # no acceptable method
            self.close()
            return
        self._write(b"\x05\x00")
        self.state = "request"

    def _request(self) -> None:
        b = self.buf
        if len(b) < 5:
            return
        if b[0] != 5:
            self.close()
            return
        if b[1] != 1:
            self._fail(REP_CMD_UNSUPPORTED, "not a CONNECT")
            return
        if b[3] != 3:
            self._fail(REP_ATYP_UNSUPPORTED, "not a DOMAINNAME")
            return
        n = b[4]
        if len(b) < 5 + n + 2:
            return
        addr, port = b[5:5 + n], b[5 + n:7 + n]
        if len(b) > 7 + n:
            self._fail(REP_FAILURE, "bytes after the request")
            return
        self.buf = b""
        if not _HASH.match(addr) or port != b"\x00\x00":
            self._fail(REP_HOST_UNREACHABLE, "DST.ADDR is not a SHA1 hash with port 0")
            return
        self.hash = addr.decode()
        why = self.proxy.register(self)
        if why:
            self._fail(REP_NOT_ALLOWED, why)
            return
        assert self.transport is not None
        self.transport.pause_reading()
        self.state = "waiting"
        # §6.3.3: BND.ADDR and BND.PORT are the DST.ADDR and DST.PORT of the request
        self._write(bytes((5, REP_OK, 0, 3, n)) + addr + port)

    def _fail(self, rep: int, why: str) -> None:
        self.proxy.log.info("SOCKS5 request from %s refused: %s", self._peername(), why)
        self._write(bytes((5, rep, 0, 1, 0, 0, 0, 0, 0, 0)))
        self.close()

    def _peername(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _timeout(self) -> None:
        self.timer = None
        if self.state != "relaying":
            self.proxy.log.info("SOCKS5 connection from %s not activated in time; closing", self._peername())
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def start_relay(self, peer: Connection, owner: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.peer, self.owner, self.state = peer, owner, "relaying"
        assert self.transport is not None
        self.transport.resume_reading()


class Proxy65(Module):
    """XEP-0065 proxy: the SOCKS5 listener and the ``proxy.<domain>`` service."""

    name = "proxy65"
    subdomain = "proxy"
    service_identity = ("proxy", "bytestreams", "SOCKS5 Bytestreams")
    Options = Proxy65Options

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        #: hash -> the connections with it (one or two), waiting for activation
        self.pending: dict[str, list[Connection]] = {}
        self.npending = 0
        #: bare JID -> its active transfers
        self.active: dict[str, int] = {}
        self.servers: list[asyncio.Server] = []
        self.connections: set[Connection] = set()  # every open SOCKS5 connection
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        if not self.ctx.primary:  # with workers, worker 0 runs the proxy (its stanzas are routed there)
            return
        loop = asyncio.get_running_loop()
        try:
            for spec in self.options.listen:
                host, port = parse_listen(spec)
                server = await loop.create_server(lambda: Connection(self), host, port, reuse_address=True)
                self.servers.append(server)
                for sock in server.sockets:
                    addr = sock.getsockname()
                    self.addresses.append((addr[0], addr[1]))
                    self.log.info("SOCKS5 proxy listening on %s:%s", addr[0], addr[1])
        except OSError as e:
            await self.stop()
            raise OSError(f"[proxy65] cannot listen on {spec}: {e.strerror or e}") from None

    async def stop(self) -> None:
        servers, self.servers = self.servers, []
        for s in servers:
            s.close()
        for c in list(self.connections):  # waiting or relaying: all end with the module
            c.close()
        for s in servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 2)
            except TimeoutError:
                pass

    # -- connections ---------------------------------------------------------------------------------
    def register(self, conn: Connection) -> str | None:
        """A connection has sent its hash: pair it, or say why not."""
        if self.npending >= self.options.max_pending:
            return "too many connections waiting for activation"
        conns = self.pending.setdefault(conn.hash, [])
        if len(conns) >= 2:
            return "two connections already use this hash"
        conns.append(conn)
        self.npending += 1
        return None

    def forget(self, conn: Connection) -> None:
        conns = self.pending.get(conn.hash)
        if conns is not None and conn in conns:
            conns.remove(conn)
            self.npending -= 1
            if not conns:
                del self.pending[conn.hash]
        if conn.owner is not None:  # the first side of an active transfer to close
            n = self.active.get(conn.owner, 0) - 1
            if n > 0:
                self.active[conn.owner] = n
            else:
                self.active.pop(conn.owner, None)
            if conn.peer is not None:
                conn.peer.owner = None
            conn.owner = None

    # -- XMPP ------------------------------------------------------------------------------------
    def _local(self, st: Stanza) -> JID:
        frm = st.from_
        if st.origin is None or frm is None or frm.domain not in self.ctx.hosts:
            raise StanzaError("forbidden", "Only local users may use this proxy")
        return frm

    @iq_handler("get", DISCO_INFO, "query", to="host", on="service")
    def service_info(self, st: Stanza) -> Element:
        if st.el[0].get("node") is not None:
            raise StanzaError("item-not-found")
        assert self.service_identity is not None
        return st.result(info_query(self.service_identity, (DISCO_INFO, DISCO_ITEMS, NS)))

    @iq_handler("get", DISCO_ITEMS, "query", to="host", on="service")
    def service_items(self, st: Stanza) -> Element:
        return st.result(Element(f"{{{DISCO_ITEMS}}}query"))

    def streamhost(self, service: str) -> tuple[str, int]:
        """(host, port) announced for ``service``."""
        o = self.options
        bound_host, bound_port = self.addresses[0] if self.addresses else ("", 0)
        host = o.public_host or (service if bound_host in ("", "0.0.0.0", "::") else bound_host)
        return host, o.public_port or bound_port

    @iq_handler("get", NS, "query", to="host", on="service")
    def discover(self, st: Stanza) -> Element:
        self._local(st)
        if not self.addresses:
            raise StanzaError("not-allowed", "The proxy is not listening")
        assert st.to is not None
        host, port = self.streamhost(st.to.domain)
        q = Element(f"{{{NS}}}query")
        SubElement(q, f"{{{NS}}}streamhost", jid=st.to.domain, host=host, port=str(port))
        return st.result(q)

    @iq_handler("set", NS, "query", to="host", on="service")
    def activate(self, st: Stanza) -> Element:
        try:
            return self._activate(st)
        except StanzaError as e:  # each refusal logged once
            self.log.info("activation from %s refused: %s", st.from_, e)
            raise

    def _activate(self, st: Stanza) -> Element:
        requester = self._local(st)
        q = st.el[0]
        sid = q.get("sid")
        target_s = (q.findtext(f"{{{NS}}}activate") or "").strip()
        if not sid or not target_s:
            raise StanzaError("bad-request", "Activation needs a sid and an <activate/> target")
        try:
            target = JID.parse(target_s)
        except InvalidJID:
            raise StanzaError("jid-malformed") from None
        digest = hashlib.sha1(f"{sid}{requester.full}{target.full}".encode()).hexdigest()
        conns = self.pending.get(digest)
        if not conns:
            raise StanzaError("item-not-found", "No connection with this stream's hash")
        if len(conns) < 2:
            raise StanzaError("not-allowed", "Only one party is connected")
        owner = requester.bare
        limit = self.options.max_transfers_per_user
        if limit and self.active.get(owner, 0) >= limit:
            raise StanzaError("resource-constraint", f"At most {limit} transfers at once")
        del self.pending[digest]
        self.npending -= 2
        a, b = conns
        self.active[owner] = self.active.get(owner, 0) + 1
        a.start_relay(b, owner)
        b.start_relay(a, owner)
        b.owner = None  # the transfer is counted once, on a
        self.log.debug("bytestream %s activated by %s", digest, requester)
        return st.result()
