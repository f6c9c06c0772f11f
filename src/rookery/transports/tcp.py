"""TCP transport: one ``asyncio.Protocol`` per connection, no task per connection (DESIGN.md hot path).

Writes are buffered and flushed once per event-loop turn for all connections together.  STARTTLS
(RFC 6120 §5) upgrades in place with ``loop.start_tls``; direct TLS (XEP-0368) listeners get TLS from
the first byte.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from .limits import ConnectionLimiter, DrainWaiters, address_key

log = logging.getLogger(__name__)


@lru_cache(maxsize=4096)
def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


class RateLimit:
    """Bytes per second a connection may send us, and how many it may send at once (``burst``)."""

    __slots__ = ("rate", "burst")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst


CLOSE_GRACE = 5.0  # seconds a closed connection may take to send what is left


class SendLimit:
    """What may wait to be sent to one peer (``max_buffer`` bytes), and for how long it may not read
    (``timeout`` seconds) before it is cut."""

    __slots__ = ("max_buffer", "timeout")

    def __init__(self, max_buffer: int, timeout: float) -> None:
        self.max_buffer = max_buffer
        self.timeout = timeout


class Flusher:
    """Collects transports with pending output and writes them all once per loop turn.

    One per server (so per event loop): tests run several servers in one process."""

    __slots__ = ("_dirty", "_scheduled", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._dirty: list[StreamProtocol] = []
        self._scheduled = False
        self._loop = loop

    def add(self, proto: StreamProtocol) -> None:
        self._dirty.append(proto)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for p in dirty:
            p.flush()


class StreamProtocol(asyncio.Protocol):
    """Carries bytes between a socket and a stream state machine built by ``stream_factory``: the TCP
    ``Transport`` of ``streams.transport``."""

    __slots__ = ("transport", "stream", "_out", "_factory", "is_secure", "ssl_context", "peer_ip",
                 "is_loopback", "cb_data", "_closing", "_upgrading", "_flusher", "_held", "_limit",
                 "_tokens", "_stamp", "_throttled", "_backlog", "_admission", "_key", "_authed",
                 "_stream_paused", "_write_paused", "_reading", "_send_limit", "_send_timer", "_grace_timer",
                 "_writable", "_cb_lookup", "tls_server_name")

    def __init__(self, stream_factory: Callable[[StreamProtocol], Any], ssl_context: ssl.SSLContext | None,
                 direct_tls: bool, cb_data: bytes | None, flusher: Flusher,
                 admission: ConnectionLimiter | None = None,
                 cb_lookup: Callable[[Any], bytes | None] | None = None) -> None:
        self._factory = stream_factory
        #: the channel-binding data of the certificate a TLS connection was given (SNI: per domain)
        self._cb_lookup = cb_lookup
        self._admission = admission
        self._key: str | None = None  # the address key, once admitted
        self._authed = False
        # reading goes on unless the stream waits (ordering), the rate limit or the send buffer says stop
        self._stream_paused = False
        self._write_paused = False
        self._reading = True
        self._send_limit: SendLimit | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._writable = DrainWaiters()  # those waiting for write_blocked to end
        self._flusher = flusher
        self.ssl_context = ssl_context
        self.is_secure = direct_tls
        self.cb_data = cb_data
        self.transport: asyncio.Transport | None = None
        self.stream: Any = None
        self._out: list[bytes] = []
        self._closing = False
        self._upgrading = False
        self._held: list[bytes] = []
        self._limit: RateLimit | None = None
        self._tokens = 0.0
        self._stamp = 0.0
        self._throttled = False
        self._backlog = bytearray()
        self.peer_ip = ""
        self.is_loopback = False
        #: set on connections we open (outgoing s2s): TLS as the client, for this server name
        self.tls_server_name: str | None = None

    # asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.is_secure and self._cb_lookup is not None:
            self.cb_data = self._cb_lookup(transport.get_extra_info("ssl_object"))
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0]
            self.is_loopback = _is_loopback(self.peer_ip)
        adm = self._admission
        if adm is not None:
            key = address_key(self.peer_ip)
            if adm.admit(key) is not None:  # over a limit: closed at once, nothing read (F1)
                self._closing = True
                transport.abort()  # type: ignore[attr-defined]
                return
            self._key = key
        self.stream = self._factory(self)

    def set_send_limit(self, limit: SendLimit | None) -> None:
        """Bound what waits to be sent to this peer (issue F2, see ``SendLimit``)."""
        self._send_limit = limit
        if limit is not None and self.transport is not None:
            self.transport.set_write_buffer_limits(high=limit.max_buffer)

    # asyncio flow control: the peer does not read what we send
    def pause_writing(self) -> None:
        """Over ``max_send_buffer``: take no more work from this peer, and give it ``send_timeout`` to
        read before it is cut."""
        self._write_paused = True
        self._update_reading()
        limit = self._send_limit
        if limit is not None and self._send_timer is None and not self._closing:
            self._send_timer = asyncio.get_running_loop().call_later(limit.timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._update_reading()
        self._writable.release()

    @property
    def write_blocked(self) -> bool:
        return self._write_paused and not self._closing

    async def writable(self) -> None:
        if not self.write_blocked:
            return
        await self._writable.wait()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self._write_paused:
            log.info("closing a connection from %s that did not read for %s s", self.peer_ip,
                     self._send_limit.timeout if self._send_limit else "?")
            self.abort()

    def _update_reading(self) -> None:
        want = not (self._stream_paused or self._throttled or self._write_paused)
        if want != self._reading and self.transport is not None and not self._closing:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def set_rate_limit(self, limit: RateLimit | None) -> None:
        self._limit = limit
        if limit is not None:
            self._tokens = float(limit.burst)
            self._stamp = asyncio.get_running_loop().time()

    def _refill(self, limit: RateLimit) -> None:
        now = asyncio.get_running_loop().time()
        self._tokens = min(float(limit.burst), self._tokens + (now - self._stamp) * limit.rate)
        self._stamp = now

    def _drain_backlog(self) -> None:
        """Token bucket on received bytes: what is over the rate waits in the backlog and reading
        stops until it has been fed to the stream (the peer is slowed down by TCP flow control, not
        disconnected; like Prosody's mod_limits)."""
        limit = self._limit
        assert limit is not None
        self._refill(limit)
        backlog = self._backlog
        n = min(len(backlog), int(self._tokens))
        if n > 0:
            chunk = bytes(backlog[:n])
            del backlog[:n]
            self._tokens -= n
            self._deliver(chunk)
        if backlog and not self._closing:
            if not self._throttled:
                self._throttled = True
                self._update_reading()
            wait = (min(len(backlog), limit.burst) - self._tokens) / limit.rate
            asyncio.get_running_loop().call_later(max(wait, 0.005), self._drain_backlog)
        elif self._throttled:
            self._throttled = False
            self._update_reading()

    def data_received(self, data: bytes) -> None:
        limit = self._limit
        if limit is not None:
            if not self._backlog:  # fast path: under the rate, no copy
                self._refill(limit)
                if self._tokens >= len(data):
                    self._tokens -= len(data)
                    self._deliver(data)
                    return
            self._backlog += data
            if not self._throttled:
                self._drain_backlog()
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if self._upgrading:
            # decrypted bytes can arrive with the end of the handshake, before start_tls() returns
            self._held.append(data)
        elif not self._closing:
            self.stream.data_received(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._out.clear()
        for t in (self._send_timer, self._grace_timer):
            if t is not None:
                t.cancel()
        self._send_timer = self._grace_timer = None
        self._writable.release()  # whoever waits to write learns the connection is gone
        if self._key is not None and self._admission is not None:
            self._admission.released(self._key, self._authed)
            self._key = None
        if self.stream is not None:
            self.stream.connection_lost()

    # the Transport protocol (streams.transport) ---------------------------------------------
    @property
    def can_starttls(self) -> bool:
        return self.ssl_context is not None and not self.is_secure

    def authenticated(self) -> None:
        """The peer authenticated: it leaves the unauthenticated-per-address count."""
        if not self._authed:
            self._authed = True
            if self._key is not None and self._admission is not None:
                self._admission.authenticated(self._key)

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._out:
            self._flusher.add(self)
        self._out.append(data)

    def flush(self) -> None:
        if self._out and self.transport is not None and not self._closing:
            out = self._out
            self._out = []
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Flush what is pending, then close the socket; a peer that does not read what is left gets
        ``CLOSE_GRACE`` seconds before the connection is cut (issue F2)."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        t = self.transport
        if t is not None:
            try:
                pending = t.get_write_buffer_size()
            except (AttributeError, RuntimeError):  # an SSL transport already torn down
                pending = 0
            t.close()
            if pending > 0:
                self._grace_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, t.abort)

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        self._stream_paused = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._stream_paused = False
        self._update_reading()

    async def start_tls(self) -> None:
        """RFC 6120 §5.4.3.3: after <proceed/>, the TLS handshake on the same connection."""
        assert self.ssl_context is not None and self.transport is not None
        self.flush()
        loop = asyncio.get_running_loop()
        self._upgrading = True
        try:
            client = self.tls_server_name is not None
            new = await loop.start_tls(self.transport, self, self.ssl_context, server_side=not client,
                                       server_hostname=self.tls_server_name, ssl_handshake_timeout=30)
        finally:
            self._upgrading = False
        if new is None:
            raise ConnectionError("TLS upgrade failed")
        self.transport = new  # type: ignore[assignment]
        self.is_secure = True
        if self._cb_lookup is not None:
            self.cb_data = self._cb_lookup(new.get_extra_info("ssl_object"))
        if self._send_limit is not None:
            new.set_write_buffer_limits(high=self._send_limit.max_buffer)
        held, self._held = self._held, []
        for data in held:
            self._deliver(data)


    @property
    def ssl_object(self) -> Any:
        """The TLS connection (``ssl.SSLObject``: peer certificate, version), None before TLS."""
        t = self.transport
        return t.get_extra_info("ssl_object") if t is not None and self.is_secure else None

    @property
    def tls_version(self) -> str:
        o = self.ssl_object
        return (o.version() or "") if o is not None else ""


def parse_listen(spec: str) -> tuple[str | None, int]:
    host, _, port = spec.rpartition(":")
    if host in ("*", ""):
        return None, int(port)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def listen(spec: str, factory: Callable[[], asyncio.Protocol], ssl_ctx: ssl.SSLContext | None = None) -> asyncio.Server:
    host, port = parse_listen(spec)
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host, port, ssl=ssl_ctx, reuse_address=True, backlog=4096,
                                    ssl_handshake_timeout=30 if ssl_ctx else None)
