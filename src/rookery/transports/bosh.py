"""BOSH carrier (XEP-0124, XEP-0206): HTTP long-polling sessions on the ``[http]`` listeners.

``BOSHEndpoint.handle`` answers every request to the endpoint; each BOSH session is a
``BOSHSession``, the ``Transport`` (``streams.transport``) its XMPP stream writes to.  The stream's
framer (``streams.framing.BOSHFramer``) reads each request ``<body/>`` (a restart, stanzas, a
terminate); this module handles everything about HTTP:

* session creation (XEP-0124 §7): ``wait``/``hold`` (capped by the settings), ``requests = hold + 1``,
  ``polling``, ``inactivity``, ``maxpause``, ``ack``; an unpredictable ``sid``;
* ``rid`` order (§14.1): requests are handed to the stream in ``rid`` order whatever order they
  arrive in; a ``rid`` seen before is answered from the cache of recent responses (§14.3), one
  beyond the window of ``requests`` (or too old to be cached) terminates with ``item-not-found``;
* request/response pairing (§7.3): at most ``hold`` requests wait; output goes to the oldest one on
  the next loop turn (so everything written in one turn travels in one response), and a request
  held for ``wait`` seconds is answered empty.  Waiting costs a future and a timer per request,
  nothing runs meanwhile;
* inactivity (§12): with no request held, a timer of ``inactivity`` seconds (or the client's
  ``pause``, up to ``maxpause``) ends the session as if its connection were lost (XEP-0198 may keep
  the XMPP session); ``pause`` answers every held request at once;
* terminate (§13): the client's ``type='terminate'`` closes the stream (the framer does it); when
  the stream ends, held requests are answered ``<body type='terminate'/>``, with
  ``condition='remote-stream-error'`` around a stream error (XEP-0206 §7);
* errors (§17): a non-legacy client (one that sent ``ver``) gets ``200`` with a terminal binding
  condition; a legacy client, and a request for an unknown ``sid``, get the HTTP code (400, 403,
  404) as well.  Bodies over ``[http] max_request_size`` are refused with 413 by the HTTP service;
  a content type other than XML (or ``text/plain``, which CORS lets a page send without preflight)
  with 415.

This module imports nothing of Rookery's but other transports (``limits``, ``websocket``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .limits import ConnectionLimiter, DrainWaiters
from .websocket import is_loopback

log = logging.getLogger(__name__)

HTTPBIND = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
STREAM_NS = "http://etherx.jabber.org/streams"
_RESTART = "{%s}restart" % XBOSH
_XMPP_VERSION = "{%s}version" % XBOSH
_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_EMPTY = f"<body xmlns='{HTTPBIND}'/>".encode()
_HTTP_CODE = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}
_CONTENT_TYPES = frozenset(("text/xml", "application/xml", "text/plain", "application/octet-stream"))
_HEADERS = {"Cache-Control": "no-store"}
MAX_RID = 9007199254740991  # XEP-0124 §14.1: 2^53 - 1


@dataclass
class BOSHSettings:
    """Limits on what a client may ask for at session creation (XEP-0124 §7.1)."""

    max_wait: int = 60
    max_hold: int = 1
    inactivity: int = 60
    max_pause: int = 300
    polling: int = 2
    max_send_buffer: int = 1 << 20


def _terminate_body(condition: str | None = None, payload: bytes = b"") -> bytes:
    cond = f" condition='{condition}'" if condition else ""
    if not payload:
        return f"<body xmlns='{HTTPBIND}' type='terminate'{cond}/>".encode()
    return (f"<body xmlns='{HTTPBIND}' xmlns:stream='{STREAM_NS}' type='terminate'{cond}>".encode()
            + payload + b"</body>")


def _xml_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="text/xml", charset="utf-8", headers=_HEADERS)


class BOSHSession:
    """One BOSH session: the ``Transport`` of one XMPP stream."""

    def __init__(self, endpoint: BOSHEndpoint, sid: str, request: web.Request, attrs: dict[str, str],
                 rid: int, is_secure: bool) -> None:
        s = endpoint.settings
        self.endpoint = endpoint
        self.sid = sid
        self.stream: Any = None
        self.peer_ip = request.remote or ""
        self.is_loopback = is_loopback(self.peer_ip)
        self.is_secure = is_secure
        self.cb_data: bytes | None = None
        self.legacy = "ver" not in attrs  # XEP-0124 §17.1: wants HTTP error codes
        self.wait = max(0, min(_int(attrs.get("wait"), s.max_wait), s.max_wait))
        self.hold = max(0, min(_int(attrs.get("hold"), 1), s.max_hold))
        if self.wait == 0:
            self.hold = 0  # nothing to wait for: a polling session (§11)
        self.requests = self.hold + 1
        self.inactivity = s.inactivity
        self.max_pause = s.max_pause
        self.acks = attrs.get("ack") == "1"
        self.lang = attrs.get(_LANG, "en")
        #: (authid, from) for the session creation response, set by whoever wires the stream
        self.header: Callable[[], dict[str, str]] = dict
        self.rid = rid - 1  # the last rid handed to the stream
        self._max_buffer = s.max_send_buffer
        self._held: deque[tuple[int, asyncio.Future[bytes], asyncio.TimerHandle | None]] = deque()
        self._waiting: dict[int, tuple[dict[str, str], bytes, asyncio.Future[bytes]]] = {}
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._out: list[bytes] = []
        self._queued = 0
        self._flush_scheduled = False
        self._created = False  # the creation response has gone
        self._paused = False
        self._backlog: deque[bytes] = deque()
        self._inactive: asyncio.TimerHandle | None = None
        self._writable = DrainWaiters()  # those waiting for write_blocked to end
        self._closing = False
        self._ended = False
        self._admission: ConnectionLimiter | None = None
        self._key: str | None = None
        self._authed = False
        self._loop = asyncio.get_running_loop()

    # requests --------------------------------------------------------------------------------
    async def request(self, attrs: dict[str, str], data: bytes) -> web.Response:
        rid = _int(attrs.get("rid"), -1)
        if rid < 0 or rid > MAX_RID:
            return self.fail("bad-request")
        if rid <= self.rid:
            cached = self._cache.get(rid)
            if cached is not None:  # §14.3: a resent request gets the same response
                return _xml_response(cached)
            for i, (hrid, fut, timer) in enumerate(self._held):
                if hrid == rid:  # resent while still held: the new connection takes its place
                    new: asyncio.Future[bytes] = self._loop.create_future()
                    self._held[i] = (hrid, new, timer)
                    if not fut.done():
                        fut.set_result(_EMPTY)
                    return await self._answer(new)
            return self.fail("item-not-found")
        if rid > self.rid + self.requests:  # §14.1: beyond the window
            return self.fail("item-not-found")
        if self._closing:  # the stream ended while no request was held: this one takes the rest
            payload = self._take()
            self.end()
            return _xml_response(_terminate_body("remote-stream-error" if b"<stream:error" in payload else None,
                                                 payload))
        fut = self._loop.create_future()
        old = self._waiting.pop(rid, None)
        if old is not None and not old[2].done():
            old[2].set_result(_EMPTY)
        self._waiting[rid] = (attrs, data, fut)
        while (nxt := self._waiting.pop(self.rid + 1, None)) is not None:
            self.rid += 1
            self._process(self.rid, *nxt)
        return await self._answer(fut)

    async def _answer(self, fut: asyncio.Future[bytes]) -> web.Response:
        body = await fut
        if body.startswith(b"\x00"):  # a binding error: (status byte) + body
            return _xml_response(body[2:], status=body[1] + 300)
        return _xml_response(body)

    def _process(self, rid: int, attrs: dict[str, str], data: bytes, fut: asyncio.Future[bytes]) -> None:
        if self._inactive is not None:
            self._inactive.cancel()
            self._inactive = None
        pause = attrs.get("pause")
        if pause is not None:  # §12: answer everything now, allow a longer silence once
            seconds = _int(pause, -1)
            if seconds < 0 or seconds > self.max_pause:
                fut.set_result(self._error_body("policy-violation"))
                self._terminate_now()
                return
            while self._held:
                self._respond_oldest(b"")
            fut.set_result(_EMPTY)  # not cached: §14.3
            self._start_inactivity(seconds)
            return
        timer = self._loop.call_later(self.wait, self._waited, fut) if self.wait and self.hold else None
        self._held.append((rid, fut, timer))
        self._deliver(data)
        self._schedule_flush()

    def _deliver(self, data: bytes) -> None:
        if self._paused or self._backlog:
            self._backlog.append(data)
        elif self.stream is not None:
            self.stream.data_received(data)

    def _waited(self, fut: asyncio.Future[bytes]) -> None:
        """``wait`` seconds without output: answer that request empty."""
        for i, (_rid, f, _t) in enumerate(self._held):
            if f is fut:
                rid = _rid
                del self._held[i]
                self._reply(rid, fut, b"")
                break
        if not self._held:
            self._start_inactivity(self.inactivity)

    # output ----------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._ended or len(data) < 3 and not data.strip():  # nothing, or a whitespace keepalive
            return
        self._out.append(data)
        self._queued += len(data)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._ended:
            return
        if self._closing:
            self._terminate_now()
            return
        # output to the oldest held request; more held than ``hold`` (or polling): answer the oldest
        while self._held and (self._out or len(self._held) > self.hold):
            self._respond_oldest(self._take())
        if not self._held and self._inactive is None:
            self._start_inactivity(self.inactivity)

    def _take(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._queued = 0
        self._writable.release()
        return out

    def _respond_oldest(self, payload: bytes) -> None:
        rid, fut, timer = self._held.popleft()
        if timer is not None:
            timer.cancel()
        self._reply(rid, fut, payload)

    def _reply(self, rid: int, fut: asyncio.Future[bytes], payload: bytes) -> None:
        attrs = ""
        if not self._created:
            self._created = True
            h = self.header()
            attrs = (f" sid='{self.sid}' wait='{self.wait}' hold='{self.hold}' requests='{self.requests}'"
                     f" polling='{self.endpoint.settings.polling}' inactivity='{self.inactivity}'"
                     f" maxpause='{self.max_pause}' ver='1.11' secure='{'true' if self.is_secure else 'false'}'"
                     f" xmpp:version='1.0' xmpp:restartlogic='true' xmlns:xmpp='{XBOSH}'")
            for k in ("authid", "from"):
                if h.get(k):
                    attrs += f" {k}='{h[k]}'"
            if self.acks:
                attrs += f" ack='{rid}'"
        elif self.acks and self.rid != rid:
            attrs = f" ack='{self.rid}'"
        if payload or attrs:
            body = (f"<body xmlns='{HTTPBIND}' xmlns:stream='{STREAM_NS}'{attrs}>".encode() + payload + b"</body>"
                    if payload else f"<body xmlns='{HTTPBIND}'{attrs}/>".encode())
        else:
            body = _EMPTY
        cache = self._cache
        cache[rid] = body
        while len(cache) > self.requests:
            cache.popitem(last=False)
        if not fut.done():
            fut.set_result(body)

    @property
    def write_blocked(self) -> bool:
        return self._queued > self._max_buffer and not self._ended

    async def writable(self) -> None:
        if not self.write_blocked:
            return
        await self._writable.wait()

    # the rest of the Transport protocol ------------------------------------------------------
    @property
    def can_starttls(self) -> bool:
        return False

    async def start_tls(self) -> None:
        raise ConnectionError("no STARTTLS over BOSH (use https://)")

    def set_admission(self, admission: ConnectionLimiter, key: str) -> None:
        self._admission = admission
        self._key = key

    def authenticated(self) -> None:
        if not self._authed:
            self._authed = True
            if self._admission is not None and self._key is not None:
                self._admission.authenticated(self._key)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        while self._backlog and not self._paused and self.stream is not None and not self._ended:
            self.stream.data_received(self._backlog.popleft())

    def close(self) -> None:
        """The stream is over: what is pending goes out in a terminate response, now if a request is
        held, else with the next request (or never, if none comes before the inactivity timeout)."""
        if self._closing or self._ended:
            return
        self._closing = True
        self._schedule_flush()

    def abort(self) -> None:
        self._out.clear()
        self._closing = True
        self._terminate_now()

    def _terminate_now(self) -> None:
        """Answer what is held with ``<body type='terminate'/>`` and end the session; with nothing held,
        wait for the next request (the inactivity timer ends it otherwise)."""
        if self._ended:
            return
        if not self._held:
            if self._inactive is None:
                self._start_inactivity(self.inactivity)
            if not self._out:
                self.end()
            return
        payload = self._take()
        cond = "remote-stream-error" if b"<stream:error" in payload else None
        while self._held:
            rid, fut, timer = self._held.popleft()
            if timer is not None:
                timer.cancel()
            body = _terminate_body(cond, payload)
            payload = b""
            self._cache[rid] = body
            if not fut.done():
                fut.set_result(body)
        self.end()

    def _start_inactivity(self, seconds: float) -> None:
        if self._inactive is not None:
            self._inactive.cancel()
        self._inactive = self._loop.call_later(seconds, self._inactivity_timeout)

    def _inactivity_timeout(self) -> None:
        self._inactive = None
        if not self._held and not self._ended:
            log.debug("BOSH session %s… from %s: inactivity timeout", self.sid[:8], self.peer_ip)
            self.end()

    def fail(self, condition: str) -> web.Response:
        """Terminate with a binding error (XEP-0124 §17.2) and answer this request with it."""
        body = self._error_body(condition)
        self._out.clear()
        self._closing = True
        self._terminate_now()
        self.end()
        return _xml_response(body[2:], status=body[1] + 300) if body.startswith(b"\x00") else _xml_response(body)

    def _error_body(self, condition: str) -> bytes:
        body = _terminate_body(condition)
        if self.legacy and condition in _HTTP_CODE:
            return b"\x00" + bytes((_HTTP_CODE[condition] - 300,)) + body
        return body

    def end(self) -> None:
        """The session is over (whatever ended it): forget it, tell the stream."""
        if self._ended:
            return
        self._ended = True
        self._closing = True
        self.endpoint.sessions.pop(self.sid, None)
        for t in (self._inactive,):
            if t is not None:
                t.cancel()
        self._inactive = None
        for _rid, fut, timer in self._held:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_result(_terminate_body())
        self._held.clear()
        for _a, _d, fut in self._waiting.values():
            if not fut.done():
                fut.set_result(_terminate_body("item-not-found"))
        self._waiting.clear()
        self._backlog.clear()
        self._writable.release()
        if self._admission is not None and self._key is not None:
            self._admission.released(self._key, self._authed)
            self._key = None
        if self.stream is not None:
            self.stream.connection_lost()


def _int(v: str | None, default: int) -> int:
    if v is None or not v.isdigit() or len(v) > 16:
        return default
    return int(v)


class BOSHEndpoint:
    """The BOSH connection manager on one path: its sessions by ``sid``.

    ``parse(data)`` returns a request ``<body/>``'s attributes (``ValueError`` when it is not one
    well-formed body: ``streams.framing.parse_body``); ``make_stream(session)`` puts a stream on a
    new session (None: refused by the connection limits); ``secure(request)`` says whether a request
    counts as encrypted."""

    def __init__(self, settings: BOSHSettings, parse: Callable[[bytes], dict[str, str]],
                 make_stream: Callable[[BOSHSession], Any], secure: Callable[[web.Request], bool]) -> None:
        self.settings = settings
        self.parse = parse
        self.make_stream = make_stream
        self.secure = secure
        self.sessions: dict[str, BOSHSession] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.Response(text="XMPP over BOSH (XEP-0206): POST <body/> elements here.\n")
        if request.headers.get("Content-Type") and request.content_type not in _CONTENT_TYPES:
            log.info("BOSH request from %s with content type %s refused", request.remote, request.content_type)
            return web.Response(status=415, text="BOSH bodies are text/xml\n")
        data = await request.read()  # over [http] max_request_size: 413 from aiohttp
        try:
            attrs = self.parse(data)
        except ValueError as e:
            log.info("BOSH request from %s refused: %s", request.remote, e)
            return _xml_response(_terminate_body("bad-request"), status=400)
        sid = attrs.get("sid")
        if sid is None:
            return await self._create(request, attrs, data)
        session = self.sessions.get(sid)
        if session is None:
            return _xml_response(_terminate_body("item-not-found"), status=404)
        return await session.request(attrs, data)

    async def _create(self, request: web.Request, attrs: dict[str, str], data: bytes) -> web.StreamResponse:
        rid = _int(attrs.get("rid"), -1)
        legacy = "ver" not in attrs
        if rid < 0 or rid > MAX_RID or not attrs.get("to"):
            return _xml_response(_terminate_body("bad-request"), status=400 if legacy else 200)
        sid = secrets.token_hex(16)
        session = BOSHSession(self, sid, request, attrs, rid, self.secure(request))
        stream = self.make_stream(session)
        if stream is None:
            return _xml_response(_terminate_body("policy-violation"), status=403 if legacy else 200)
        session.stream = stream
        self.sessions[sid] = session
        return await session.request(attrs, data)

    def close_all(self) -> None:
        for s in list(self.sessions.values()):
            s.abort()
