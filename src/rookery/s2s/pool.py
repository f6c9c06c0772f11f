"""The s2s connection pool: the remote route of the route table (``RouteTable.set_remote``).

One outgoing connection per (local domain, remote domain) pair, opened on the first stanza and reused
for every later one; stanzas wait in a bounded queue while it is resolved (``s2s.dns``), secured and
authenticated (``streams.s2s.S2SOutStream``); when that fails every queued stanza bounces to its sender
with ``<remote-server-not-found/>`` (``<remote-server-timeout/>`` when it took too long), never an
error in reply to an error.  Connections unused for ``[s2s] idle_timeout`` are closed.

The pool is also the host of incoming s2s streams (``streams.s2s.S2SInHost``): it judges peer
certificates (``s2s.certs``), verifies dialback keys through the outgoing connection to the
originating domain (XEP-0220 §2.1.3), and hands authenticated stanzas to the router.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any
from xml.etree.ElementTree import Element

from ..stanza import Stanza
from ..streams import dialback as db
from ..streams.negotiator import Negotiators
from ..streams.s2s import Dialback, S2SInStream, S2SOutStream, S2SSettings
from ..streams.sasl_external import SASLExternal
from ..streams.starttls import StartTLS
from ..streams.transport import Framer, Transport
from ..streams.xmlstream import StreamLimits
from . import certs
from .dns import Target, resolve

log = logging.getLogger(__name__)

Reply = Callable[[Stanza, Element], None]
Route = Callable[[Stanza], "Awaitable[Any] | None"]


class StreamSettings:
    """What s2s streams read of the configuration."""

    __slots__ = ("dialback", "require_valid_certs", "require_encryption")

    def __init__(self, dialback: bool, require_valid_certs: bool) -> None:
        self.dialback = dialback
        self.require_valid_certs = require_valid_certs
        self.require_encryption = True


class Link:
    """The outgoing connection of one (local, remote) pair (an ``S2SOutHost``)."""

    def __init__(self, pool: S2SPool, local: str, remote: str, via: S2SOutStream | None = None) -> None:
        self.pool = pool
        self.local = local
        self.remote = remote
        self.secret = pool.secret
        self.stream: S2SOutStream | None = None
        self.ready_stream: S2SOutStream | None = None
        self.queue: deque[tuple[Stanza, str]] = deque()
        self.is_secured = False
        self.closed = False
        self.last_used = monotonic()
        self.started = monotonic()
        #: dialback keys to verify on this connection (XEP-0220 §2.1.3): stream id -> (key, waiters)
        self.verifies: dict[str, tuple[str, list[asyncio.Future[bool]]]] = {}
        self._unsent: list[str] = []
        self._attempt: asyncio.Future[str | bool] | None = None
        #: riding on another local domain's stream (XEP-0220 §2.4 piggy-backing): not ours to close
        self.guest = via is not None
        self.task: Any = None
        if via is not None:
            self.stream = via
            self.is_secured = True
            via.piggyback(local, self)
        else:
            self.task = pool.spawn(self._run())

    # -- the S2SOutHost protocol --------------------------------------------------------------
    def spawn(self, coro: Awaitable[Any]) -> Any:
        return self.pool.spawn(coro)

    def cert_valid_for(self, transport: Transport, domain: str) -> bool:
        return self.pool.cert_valid_for(transport, domain)

    def secured(self, stream: S2SOutStream) -> None:
        self.is_secured = True
        self._send_verifies()

    def ready(self, stream: S2SOutStream) -> None:
        self.ready_stream = stream
        log.info("s2s %s -> %s ready (%s)", self.local, self.remote, stream.auth_method)
        q = self.queue
        while q:
            _, data = q.popleft()
            stream.send_data(data)
        self.last_used = monotonic()
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(True)

    def _own_connection(self, reason: str) -> None:
        """Piggy-backing did not work out: a connection of our own."""
        log.info("s2s %s -> %s: piggy-backing failed (%s); connecting", self.local, self.remote, reason)
        self.guest = False
        self.stream = None
        self.is_secured = False
        self._unsent = list(self.verifies)
        self.task = self.pool.spawn(self._run())

    def failed(self, stream: S2SOutStream, reason: str) -> None:
        if self.guest and stream is self.stream and self.ready_stream is None:
            self._own_connection(reason)
            return
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(reason)

    def verify_answer(self, stream: S2SOutStream, sid: str, valid: bool) -> None:
        entry = self.verifies.pop(sid, None)
        if entry is not None:
            for f in entry[1]:
                if not f.done():
                    f.set_result(valid)

    def stream_ended(self, stream: S2SOutStream) -> None:
        if stream is not self.stream:
            return
        if self.guest and self.ready_stream is None and not self.closed:
            self._own_connection("the shared connection closed")
            return
        self.stream = None
        self.is_secured = False
        self._unsent = list(self.verifies)
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result("the connection closed")
        if self.ready_stream is stream:
            self.ready_stream = None
            self._close()  # the next stanza opens a new connection

    # -- stanzas ---------------------------------------------------------------------------------
    def send(self, st: Stanza) -> None:
        self.last_used = monotonic()
        s = self.ready_stream
        if s is not None:
            s.send(st.el)
            return
        if len(self.queue) >= self.pool.max_queue:
            self.pool.bounce(st, "resource-constraint", "too many stanzas wait for this server")
            return
        self.queue.append((st, self.pool.framer.serialize(st.el)))

    def verify(self, sid: str, key: str) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = self.verifies.get(sid)
        if entry is None:
            self.verifies[sid] = (key, [fut])
            self._unsent.append(sid)
            self._send_verifies()
        else:
            entry[1].append(fut)
        return fut

    def _send_verifies(self) -> None:
        s = self.stream
        if s is None or not self.is_secured:
            return
        for sid in self._unsent:
            entry = self.verifies.get(sid)
            if entry is not None:
                el = Element(db.VERIFY, {"from": self.local, "to": self.remote, "id": sid})
                el.text = entry[0]
                s.send(el)
        self._unsent = []

    # -- connecting ------------------------------------------------------------------------------
    async def _run(self) -> None:
        pool = self.pool
        reason = "no XMPP service for that domain"
        try:
            async with asyncio.timeout(pool.connect_timeout):
                targets = await resolve(self.remote, pool.hosts)
                for t in targets:
                    if self.closed:
                        return
                    r = await self._try(t)
                    if r is True:
                        return
                    reason = str(r)
        except TimeoutError:
            self._failed("remote-server-timeout", "timed out")
            return
        except Exception as e:
            log.exception("s2s connection to %s failed", self.remote)
            reason = str(e)
        self._failed("remote-server-not-found", reason)

    async def _try(self, t: Target) -> str | bool:
        loop = asyncio.get_running_loop()
        pool = self.pool
        self._attempt = loop.create_future()

        def make() -> Any:
            from ..transports.tcp import StreamProtocol

            p = StreamProtocol(self._new_stream, None if t.direct_tls else pool.client_ctx, t.direct_tls, None,
                               pool.flusher, None)
            p.tls_server_name = self.remote
            return p

        try:
            if t.direct_tls:
                await loop.create_connection(make, t.host, t.port, ssl=pool.direct_client_ctx,
                                             server_hostname=self.remote, ssl_handshake_timeout=pool.connect_timeout)
            else:
                await loop.create_connection(make, t.host, t.port)
        except (OSError, ssl.SSLError) as e:
            log.info("s2s %s -> %s: cannot connect to %s:%d: %s", self.local, self.remote, t.host, t.port, e)
            return f"cannot connect to {t.host}:{t.port}: {e.strerror if isinstance(e, OSError) else e}"
        r = await self._attempt
        if r is not True and self.stream is not None:
            self.stream.close()
        return r

    def _new_stream(self, proto: Any) -> S2SOutStream:
        proto.set_send_limit(self.pool.send_limit)
        s = S2SOutStream(self, proto, self.pool.framer, self.pool.settings, self.pool.limits, self.local, self.remote)
        self.stream = s
        return s

    def _failed(self, condition: str, reason: str) -> None:
        log.info("s2s %s -> %s failed: %s", self.local, self.remote, reason)
        q, self.queue = self.queue, deque()
        for st, _ in q:
            self.pool.bounce(st, condition, None)
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _, waiters in self.verifies.values():
            for f in waiters:
                if not f.done():
                    f.set_result(False)
        self.verifies.clear()
        if self.pool.links.get((self.local, self.remote)) is self:
            del self.pool.links[(self.local, self.remote)]
        if self.stream is not None and not self.guest:
            self.stream.close()
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()
        # what still waits (the connection closed while it was queued) bounces
        q, self.queue = self.queue, deque()
        for st, _ in q:
            self.pool.bounce(st, "remote-server-not-found", None)

    def describe(self) -> dict[str, Any]:
        s = self.ready_stream or self.stream
        return {"domain": self.remote, "local": self.local, "direction": "out",
                "state": ("shared" if self.guest else "ready") if self.ready_stream is not None else "connecting",
                "auth": ("dialback" if self.guest else s.auth_method) if s is not None else "",
                "tls": getattr(s.transport, "tls_version", "") if s is not None else "",
                "idle": round(monotonic() - self.last_used, 1), "queued": len(self.queue)}


class S2SPool:
    """Outgoing connections by domain pair, incoming streams, and what both need."""

    def __init__(self, *, secret: bytes, serves: Callable[[str], bool], route: Route, reply: Reply,
                 spawn: Callable[[Awaitable[Any]], Any], framer: Framer, limits: StreamLimits, flusher: Any,
                 send_limit: Any, settings: S2SSettings, hosts: dict[str, str], connect_timeout: float,
                 idle_timeout: float, max_queue: int, server_ctxs: list[ssl.SSLContext],
                 client_ctx: ssl.SSLContext, direct_client_ctx: ssl.SSLContext, certs_judged: bool) -> None:
        self.secret = secret
        self.serves = serves
        self.route = route
        self._reply = reply
        self._spawn = spawn
        self.framer = framer
        self.limits = limits
        self.flusher = flusher
        self.send_limit = send_limit
        self.settings = settings
        self.hosts = hosts
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_queue = max_queue
        self.client_ctx = client_ctx
        self.direct_client_ctx = direct_client_ctx
        self._ctxs = [*server_ctxs, client_ctx, direct_client_ctx]
        self.certs_judged = certs_judged
        self.links: dict[tuple[str, str], Link] = {}
        self.incoming: set[S2SInStream] = set()
        self.negotiators = Negotiators([StartTLS(), SASLExternal(), Dialback()])
        self._idle_timer: asyncio.TimerHandle | None = None
        self._schedule_idle()

    def spawn(self, coro: Awaitable[Any]) -> Any:
        return self._spawn(coro)

    # -- the remote route ----------------------------------------------------------------------------
    def forward(self, st: Stanza) -> None:
        """A stanza to a remote domain (``RouteTable.set_remote``)."""
        frm, to = st.from_, st.to
        if frm is None or to is None or not self.serves(frm.domain):
            # not ours to send: we relay nothing for other servers (RFC 6120 §13.7.1)
            log.debug("not relaying a stanza from %s to %s", frm, to)
            return
        link = self.links.get((frm.domain, to.domain)) or self._new_link(frm.domain, to.domain)
        link.send(st)

    def _new_link(self, local: str, remote: str) -> Link:
        """A new outgoing link: piggy-backed on a ready stream of another local domain to the same
        remote domain when dialback allows it (XEP-0220 §2.4), else a connection of its own."""
        via = None
        for (other, r), link in self.links.items():
            s = link.ready_stream
            if r == remote and other != local and not link.guest and s is not None and s.can_piggyback():
                via = s
                break
        link = self.links[(local, remote)] = Link(self, local, remote, via)
        return link

    def bounce(self, st: Stanza, condition: str, text: str | None) -> None:
        """RFC 6120 §8.3.1: never an error in reply to an error; presence that needs no answer
        (unavailable, probe) is dropped (§10.4.3 as the router does without federation)."""
        if st.type == "error" or (st.kind == "presence" and st.type in ("unavailable", "probe")):
            return
        try:
            self._reply(st, st.error(condition, text))
        except Exception:
            log.exception("cannot bounce a stanza")

    # -- the S2SInHost protocol -------------------------------------------------------------------------
    def cert_valid_for(self, transport: Transport, domain: str) -> bool:
        obj = getattr(transport, "ssl_object", None)
        if obj is None or not self.certs_judged:
            return False
        der = obj.getpeercert(binary_form=True)
        return bool(der) and certs.verify_result(obj, self._ctxs) and certs.matches_domain(der, domain)

    async def verify_dialback(self, local: str, remote: str, stream_id: str, key: str) -> bool:
        link = self.links.get((local, remote)) or self._new_link(local, remote)
        fut = link.verify(stream_id, key)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.connect_timeout)
        except TimeoutError:
            return False

    def stream_started(self, stream: S2SInStream) -> None:
        stream.last_active = monotonic()
        self.incoming.add(stream)

    def stream_ended(self, stream: S2SInStream) -> None:
        self.incoming.discard(stream)

    def new_incoming(self, transport: Transport) -> S2SInStream:
        return S2SInStream(self, transport, self.framer, self.settings, self.limits, self.negotiators)

    # -- idle connections, operations ------------------------------------------------------------------
    def _schedule_idle(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(min(self.idle_timeout / 4, 30.0), self._close_idle)

    def _close_idle(self) -> None:
        now = monotonic()
        limit = self.idle_timeout
        for link in list(self.links.values()):
            if link.ready_stream is not None and now - link.last_used > limit:
                log.info("s2s %s -> %s idle: closing", link.local, link.remote)
                link._close()
        for s in list(self.incoming):
            if s.authenticated and now - s.last_active > limit:
                s.close()
        self._schedule_idle()

    def describe(self) -> list[dict[str, Any]]:
        now = monotonic()
        out = [link.describe() for link in self.links.values()]
        for s in self.incoming:
            out.append({"domain": ", ".join(sorted(s.remote_domains)) or s.peer_from or "?",
                        "local": s.local_domain, "direction": "in",
                        "state": "ready" if s.authenticated else "negotiating", "auth": s.auth_method,
                        "tls": getattr(s.transport, "tls_version", ""), "idle": round(now - s.last_active, 1),
                        "queued": 0})
        return sorted(out, key=lambda d: (d["domain"], d["direction"]))

    def close_all(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for link in list(self.links.values()):
            if link.stream is not None:
                link.stream.close("system-shutdown", "the server is shutting down")
            link._close()
        for s in list(self.incoming):
            s.close("system-shutdown", "the server is shutting down")
