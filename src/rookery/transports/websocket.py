"""WebSocket carrier (RFC 7395): one ``WebSocketTransport`` per connection on the ``[http]`` listeners.

``serve_websocket`` upgrades a request (sub-protocol ``xmpp`` required, RFC 7395 §3.2: a request
without it is refused with 400 before any upgrade), builds the transport and lets ``make_stream``
put a stream on it (None: refused by the connection limits, closed with 1013 "try again later").
Each message received goes to the stream's ``data_received`` whole; the framer
(``streams.framing.WebSocketFramer``) checks it is one element.  Writes are split into messages at
the NUL byte that the framer puts after every frame, and sent by one sender task per connection
that runs only while there is something to send.  aiohttp's heartbeat sends WebSocket pings and
closes a connection whose pong does not come back.

Reading pauses (``pause_reading``) while the stream processes an element asynchronously: the next
message is not read until it resumes, so WebSocket flow control slows the peer down as TCP does.

This module imports nothing of Rookery's but other transports (``limits``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .limits import ConnectionLimiter, DrainWaiters

log = logging.getLogger(__name__)

SEP = b"\x00"


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return False


class WebSocketTransport:
    """The ``Transport`` (``streams.transport``) of one WebSocket connection."""

    __slots__ = ("ws", "stream", "is_secure", "peer_ip", "is_loopback", "cb_data", "_raw", "_out", "_partial",
                 "_queued", "_sender", "_closing", "_lost", "_paused", "_resume", "_writable", "_max_buffer",
                 "_send_timeout", "_send_timer", "_admission", "_key", "_authed")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, *, is_secure: bool,
                 max_buffer: int = 1 << 20, send_timeout: float = 60.0) -> None:
        self.ws = ws
        self.stream: Any = None
        self.peer_ip = request.remote or ""
        self.is_loopback = is_loopback(self.peer_ip)
        self.is_secure = is_secure
        self.cb_data: bytes | None = None  # no channel binding over HTTP (a proxy may end the TLS)
        self._raw = request.transport
        self._out: list[bytes] = []
        self._partial = b""
        self._queued = 0
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._lost = False
        self._paused = False
        self._resume = asyncio.Event()
        self._resume.set()
        self._writable = DrainWaiters()  # those waiting for write_blocked to end
        self._max_buffer = max_buffer
        self._send_timeout = send_timeout
        self._send_timer: asyncio.TimerHandle | None = None
        self._admission: ConnectionLimiter | None = None
        self._key: str | None = None
        self._authed = False

    # connection limits -----------------------------------------------------------------------
    def set_admission(self, admission: ConnectionLimiter, key: str) -> None:
        """Counted by ``admission`` under ``key`` (released when the connection ends)."""
        self._admission = admission
        self._key = key

    def authenticated(self) -> None:
        if not self._authed:
            self._authed = True
            if self._admission is not None and self._key is not None:
                self._admission.authenticated(self._key)

    # the Transport protocol ------------------------------------------------------------------
    @property
    def can_starttls(self) -> bool:
        return False

    async def start_tls(self) -> None:
        raise ConnectionError("no STARTTLS over WebSocket (use wss://)")

    def write(self, data: bytes) -> None:
        if self._closing and self._sender is None or self._lost:
            return
        self._out.append(data)
        self._queued += len(data)
        if self._queued > self._max_buffer and self._send_timer is None:
            self._send_timer = asyncio.get_running_loop().call_later(self._send_timeout, self._send_timed_out)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    @property
    def write_blocked(self) -> bool:
        return self._queued > self._max_buffer and not self._lost

    async def writable(self) -> None:
        if not self.write_blocked:
            return
        await self._writable.wait()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self.write_blocked:
            log.info("closing a WebSocket from %s that did not read for %s s", self.peer_ip, self._send_timeout)
            self.abort()

    async def _send(self) -> None:
        ws = self.ws
        try:
            while self._out:
                data = self._partial + b"".join(self._out)
                self._out.clear()
                pieces = data.split(SEP)
                rest = pieces.pop()
                self._partial = rest if rest.strip() else b""
                for p in pieces:
                    n = len(p) + 1
                    p = p.strip()
                    if p:
                        await ws.send_str(p.decode())
                    self._queued -= n
                self._queued = max(self._queued, len(self._partial))
                if self._queued <= self._max_buffer:
                    if self._send_timer is not None:
                        self._send_timer.cancel()
                        self._send_timer = None
                    self._writable.release()
            if self._closing and not ws.closed:
                await ws.close()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self._out.clear()
            self.abort()
        finally:
            self._sender = None

    def close(self) -> None:
        """Send what is pending, then close the WebSocket (RFC 7395 §3.6: after our ``<close/>``)."""
        if self._closing:
            return
        self._closing = True
        if self._sender is None and not self._lost:
            self._sender = asyncio.get_running_loop().create_task(self._send())

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None and not self._raw.is_closing():
            self._raw.abort()
        self._resume.set()

    def pause_reading(self) -> None:
        self._paused = True
        self._resume.clear()

    def resume_reading(self) -> None:
        self._paused = False
        self._resume.set()

    # end -------------------------------------------------------------------------------------
    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._out.clear()
        self._queued = 0
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._writable.release()
        if self._admission is not None and self._key is not None:
            self._admission.released(self._key, self._authed)
            self._key = None
        if self.stream is not None:
            self.stream.connection_lost()


def offers_xmpp(request: web.Request) -> bool:
    """RFC 7395 §3.2: the client's ``Sec-WebSocket-Protocol`` list includes ``xmpp``."""
    for header in request.headers.getall("Sec-WebSocket-Protocol", []):
        if "xmpp" in (p.strip() for p in header.split(",")):
            return True
    return False


async def serve_websocket(request: web.Request, make_stream: Callable[[WebSocketTransport], Any],
                          *, secure: Callable[[web.Request], bool], heartbeat: float | None = 30.0,
                          max_msg_size: int = 1 << 20, max_buffer: int = 1 << 20,
                          send_timeout: float = 60.0) -> web.StreamResponse:
    """The handler body of an RFC 7395 endpoint: refuse, or upgrade and carry one stream until the
    connection ends.  ``secure(request)`` says whether the connection counts as encrypted."""
    if not offers_xmpp(request):
        return web.Response(status=400, text="RFC 7395: the WebSocket sub-protocol 'xmpp' is required\n")
    ws = web.WebSocketResponse(protocols=("xmpp",), heartbeat=heartbeat, max_msg_size=max_msg_size,
                               compress=False)
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, headers={"Upgrade": "websocket"},
                            text="a WebSocket upgrade request is needed here\n")
    await ws.prepare(request)
    t = WebSocketTransport(ws, request, is_secure=secure(request), max_buffer=max_buffer,
                           send_timeout=send_timeout)
    stream = make_stream(t)
    if stream is None:  # over a connection limit
        await ws.close(code=1013, message=b"too many connections")
        return ws
    t.stream = stream
    try:
        while True:
            if t._paused:
                await t._resume.wait()
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                stream.data_received(msg.data.encode())
            elif kind is WSMsgType.BINARY:
                stream.data_received(msg.data)
            else:  # CLOSE, CLOSING, CLOSED, ERROR (too big, bad frame), PING/PONG are handled inside
                if kind is WSMsgType.ERROR:
                    log.debug("WebSocket from %s: %s", t.peer_ip, ws.exception())
                break
    finally:
        t.connection_lost()
    return ws
