"""Server: wires domains, routes, listeners, the router, storage and modules; ``start()`` / ``stop()``.

It is also the ``C2SHost`` of client streams (``streams.c2s``): it creates sessions at bind and
registers them, ends them when their stream is gone (unless a module keeps them detached, XEP-0198),
and hands their stanzas to the router.  See docs/architecture.md for the map of the seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import TYPE_CHECKING, Any
from xml.etree.ElementTree import Element

from . import admin, fdlimit, server_secret, tls
from .cluster import DISPATCHED
from .cluster.directory import RemoteSession
from .cluster.registry import ClusterSessionRegistry
from .components import Components
from .config import Config
from .control import SOCKET_NAME, ControlServer
from .jid import JID, InvalidJID
from .module_manager import ModuleManager
from .routing.hooks import EventBus, HandlerTable
from .routing.registry import LocalSessionRegistry, SessionRef
from .routing.router import Router
from .routing.routes import COMPONENT, SERVICE, Route, RouteTable
from .routing.tasks import Tasks
from .stanza import Stanza
from .streams.auth_limits import AuthFailureLimiter
from .streams.bind import Bind, BindRefused
from .streams.c2s import C2SStream, ElementHandler
from .streams.component import ComponentStream
from .streams.legacy_auth import LegacyAuth
from .streams.negotiator import Negotiator, Negotiators
from .streams.sasl_auth import SASLAuth
from .streams.session import Session
from .streams.starttls import StartTLS
from .streams.transport import StreamFramer
from .streams.xmlstream import StreamLimits
from .transports.http import HTTPService
from .transports.limits import ConnectionLimiter, address_key
from .transports.tcp import Flusher, RateLimit, SendLimit, StreamProtocol, listen

if TYPE_CHECKING:
    from .workers import WorkerPlace

log = logging.getLogger(__name__)
conn_log = logging.getLogger("rookery.c2s")

KEEPALIVE_BATCH = 100  # whitespace keepalives written together (a write costs 10-50 us on loopback: 1-5 ms)
CONN_LOG_PER_SECOND = 50  # connection opened/closed lines at most, then a summary
FD_RESERVE = fdlimit.FD_RESERVE  # file descriptors kept for listeners, storage, logs, the control socket


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio reports every failed ``accept`` (EMFILE/ENFILE: out of file descriptors) with a traceback,
    up to ``backlog`` times per wake-up, and retries a second later: say it in one line per second
    instead (issue F1).  ``[limits] max_connections`` (by default below the descriptor limit) keeps
    the server from getting there at all."""
    previous = loop.get_exception_handler()
    last = [-1.0, 0]  # time of the last line, failures since

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            last[1] += 1
            now = loop.time()
            if now - last[0] >= 1.0:
                exc = context.get("exception")
                log.warning("out of file descriptors (%s): %d connection(s) not accepted; retrying in a second",
                            getattr(exc, "strerror", None) or exc, last[1])
                last[0], last[1] = now, 0
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class Server:
    def __init__(self, config: Config, cluster: WorkerPlace | None = None) -> None:
        self.config = config
        self.started_at = time.time()
        self.tasks = Tasks()
        self.events = EventBus()
        self.routes = RouteTable()
        #: this process's place among the workers (``workers.py``); None: the whole server in one process
        self.place = cluster
        #: worker 0, or the only process: the home of HTTP, components, services, metrics, control
        self.primary = cluster is None or cluster.primary
        self.sessions: Any = LocalSessionRegistry(self.events.filters)
        self.cluster: ClusterSessionRegistry | None = None
        if cluster is not None:
            self.cluster = self.sessions = ClusterSessionRegistry(self.sessions, cluster.index, cluster.count,
                                                                  cluster.sockets)
        self.sessions.on_detached_close = self.end_session  # a session no stream carries
        self.tables: dict[str, HandlerTable] = {}
        for domain in config.domains:
            self.tables[domain] = HandlerTable(domain)
            self.routes.add_local(domain, self.tables[domain])
        self.router = Router(self.sessions, self.routes, self.events, self.tasks, self._account_exists)
        #: C2SHost.route: a stanza from a bound session goes straight to the router (hot path)
        self.route: Callable[[Stanza], Awaitable[Any] | None] = self.router.from_local
        self.elements: dict[str, Callable[..., Any]] = {}
        self.modules: ModuleManager | None = None
        #: open client streams -> when they started (time.monotonic())
        self.streams: dict[C2SStream, float] = {}
        #: ``rookery status`` sections added by other parts (s2s links, components, HTTP): name -> fn()
        self.status_sections: dict[str, Callable[[], Any]] = {}
        #: the file the configuration came from (``rookery reload`` reads it again); None: built-in defaults
        self.config_path: str | None = None
        #: the server owns the process's logging (``rookery serve``): reload re-applies ``[log]``
        self.manage_logging = False
        self.tracer = admin.Tracer(self)
        self._conn_log_second, self._conn_log_count, self._conn_log_dropped = 0, 0, 0
        #: (stanzas received by kind, elements sent by first letter), counted by the c2s streams when
        #: metrics are on (None: not counted, nothing done per stanza)
        self.stanza_counts: tuple[dict[str, int], dict[str, int]] | None = None
        if config.metrics.active:
            self.stanza_counts = (dict.fromkeys(("message", "presence", "iq"), 0), {})
        self.metrics: Any = None  # metrics.Metrics when [metrics] is on
        self.storage: Any = None
        self.listeners: list[asyncio.AbstractServer] = []
        #: actually bound addresses per listener kind, e.g. {"c2s": [("127.0.0.1", 5222)]}
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self._control: ControlServer | None = None
        self.stopped = asyncio.Event()
        self.auth_limiter = AuthFailureLimiter(config.c2s.max_auth_failures_per_ip, config.c2s.auth_failure_window)
        self.auth_limiter.configure(config.c2s)
        self._framer = StreamFramer()
        c = config.c2s
        self._limits = StreamLimits(c.max_stanza_size, c.max_depth, c.handshake_timeout)
        self._c2s_negotiators: Negotiators | None = None
        self.secret = b""  # server_secret, read at start
        self.admission: ConnectionLimiter | None = None  # made at start
        self._rate_limit: RateLimit | None = None
        self._send_limit: SendLimit | None = None
        self.tls: Any = None  # tls.TLSManager, made at start
        h = config.http
        #: the HTTP side (routes are added by modules and the HTTP carriers; listens at start)
        self.http = HTTPService(max_request_size=h.max_request_size, cors_origins=h.cors_origins,
                                public_url=h.public_url, secure_loopback=h.secure_loopback)
        #: external components (XEP-0114): their routes and streams (components.py)
        self.components = Components(config.components.secrets, config.domains, self.routes, self.events,
                                     self.router.route, self.router.reply, self.tasks.spawn, self.auth_limiter)
        #: federation (``s2s.pool.S2SPool``), when ``[s2s]`` enables it
        self.s2s: Any = None
        self._remote_route: Any = None
        #: a worker's protocol factories for connections the supervisor hands over, by listener kind
        self._handed: dict[str, tuple[Any, Any]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        from .storage.sql import make_storage

        cfg = self.config
        data_dir = cfg.data_path()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = make_storage(cfg.storage, str(data_dir), offline_limit=cfg.offline_limit)
        await self.storage.open()
        self.secret = server_secret.load_or_create(data_dir)
        tls.limit_tls_read_buffers()
        self.tls = tls.TLSManager(cfg, data_dir)
        self.tls.load()
        cert, key = self.tls.cert_files[""], self.tls.key_files[""]
        self.cert_path = cert
        starttls_ctx, direct_ctx = self.tls.starttls, self.tls.direct
        cb_data = self.tls.cb_data(None)
        cb_lookup = self.tls.cb_data
        self.modules = ModuleManager(cfg, router=self.router, sessions=self.sessions, routes=self.routes,
                                     events=self.events, tables=self.tables, elements=self.elements,
                                     storage=self.storage, tasks=self.tasks, started_at=self.started_at,
                                     http=self.http, secret=self.secret, c2s=self.open_c2s_stream,
                                     primary=self.primary)
        await self.modules.load_all()
        self.components.install()  # after the modules: a clash with a service's subdomain is an error
        if self.cluster is not None:
            await self._join_cluster()
        loop = asyncio.get_running_loop()
        flusher = Flusher(loop)
        self.admission = ConnectionLimiter(self._max_connections(), cfg.limits.max_connections_per_ip,
                                           cfg.limits.max_unauthenticated_per_ip)
        _quiet_accept_errors(loop)

        rate = cfg.c2s.max_bytes_per_second
        limit = RateLimit(rate, max(cfg.c2s.burst_bytes, cfg.c2s.max_stanza_size)) if rate > 0 else None

        send_limit = self._send_limit = SendLimit(cfg.limits.max_send_buffer, cfg.limits.send_timeout)
        self._rate_limit = limit

        def c2s_stream(t: StreamProtocol) -> C2SStream:
            t.set_rate_limit(limit)
            t.set_send_limit(send_limit)
            return self.new_c2s_stream(t)

        def c2s_factory(ctx: Any, direct: bool) -> Any:
            def make() -> StreamProtocol:
                return StreamProtocol(c2s_stream, ctx, direct, cb_data, flusher, self.admission, cb_lookup)
            return make

        for spec in cfg.c2s.listen:
            await self._listen("c2s", spec, c2s_factory(starttls_ctx, False), None)
        for spec in cfg.c2s.direct_tls_listen:
            await self._listen("c2s_direct_tls", spec, c2s_factory(direct_ctx, True), direct_ctx)
        if cfg.s2s.enabled:
            await self._start_s2s(cert, key, flusher, send_limit)
            pool = self.s2s
            self.status_sections["s2s"] = lambda: pool.describe() if pool is not None else []
        https_ctx = self.tls.https
        if self.primary:  # worker 0 serves HTTP (BOSH sessions live where their requests arrive)
            await self.http.start(cfg.http.listen, cfg.http.tls_listen, https_ctx)
        if cfg.metrics.active and self.primary:
            from .metrics import Metrics

            self.metrics = Metrics(self)
            self.metrics.install()
            await self.metrics.start(cfg.metrics.listen, self.http)
        for scheme, addrs in self.http.addresses.items():
            self.addresses.setdefault(scheme, []).extend(addrs)
        if self.primary:
            self._control = ControlServer(self, data_dir / SOCKET_NAME)
            try:
                await self._control.start()
            except OSError as e:
                log.warning("control socket unavailable (%s): CLI changes reach this server only via storage", e)
                self._control = None
        if cfg.components.secrets and self.primary:  # XEP-0114: only when components are configured
            def component_stream(t: StreamProtocol) -> ComponentStream:
                t.set_send_limit(send_limit)  # no rate limit: a gateway carries many users' traffic
                return ComponentStream(self.components, t, self._framer, self._limits)

            def component_factory() -> StreamProtocol:
                return StreamProtocol(component_stream, None, False, None, flusher, self.admission)

            for spec in cfg.components.listen:
                if not spec.startswith(("127.", "[::1]:", "localhost:")):
                    log.warning("[components] listen %s: component streams are not encrypted; keep them "
                                "on loopback or a trusted network", spec)
                await self._listen("component", spec, component_factory, None)
        if cfg.c2s.keepalive_interval > 0:
            self._schedule_keepalive()
        if self.place is not None:
            self._take_connections()
            log.info("Rookery worker %d of %d serving %s", self.place.index, self.place.count,
                     ", ".join(cfg.domains))
        else:
            log.info("Rookery serving %s", ", ".join(cfg.domains))

    async def _start_s2s(self, cert: Any, key: Any, flusher: Flusher, send_limit: SendLimit) -> None:
        """Federation (docs/federation.md): the s2s pool as the remote route, and its listeners."""
        from .s2s import certs
        from .s2s.pool import S2SPool, StreamSettings

        s, t = self.config.s2s, self.config.tls
        srv_ctx, judged = certs.s2s_server_context(cert, key, t.min_version, t.ciphers, t.ca_file)
        direct_srv_ctx, _ = certs.s2s_server_context(cert, key, t.min_version, t.ciphers, t.ca_file,
                                                     alpn=["xmpp-server"])
        client_ctx, judged_out = certs.s2s_client_context(cert, key, t.min_version, t.ciphers, t.ca_file)
        direct_client_ctx, _ = certs.s2s_client_context(cert, key, t.min_version, t.ciphers, t.ca_file,
                                                        alpn=["xmpp-server"])
        by_domain = self.routes.by_domain
        pool = self.s2s = S2SPool(
            secret=self.secret, serves=by_domain.__contains__, route=self.router.route, reply=self.router.reply,
            spawn=self.tasks.spawn, framer=self._framer, limits=self._limits, flusher=flusher,
            send_limit=send_limit, settings=StreamSettings(s.dialback, s.require_valid_certs), hosts=s.hosts,
            connect_timeout=s.connect_timeout, idle_timeout=s.idle_timeout, max_queue=s.max_queue,
            server_ctxs=[srv_ctx, direct_srv_ctx], client_ctx=client_ctx, direct_client_ctx=direct_client_ctx,
            certs_judged=judged and judged_out)
        self._remote_route = self.routes.set_remote(pool.forward)

        def s2s_stream(tr: StreamProtocol) -> Any:
            tr.set_send_limit(send_limit)
            return pool.new_incoming(tr)

        def s2s_factory(ctx: Any, direct: bool) -> Any:
            def make() -> StreamProtocol:
                return StreamProtocol(s2s_stream, ctx, direct, None, flusher, self.admission)
            return make

        for spec in s.listen:
            await self._listen("s2s", spec, s2s_factory(srv_ctx, False), None)
        for spec in s.direct_tls_listen:
            await self._listen("s2s_direct_tls", spec, s2s_factory(direct_srv_ctx, True), direct_srv_ctx)

    def _max_connections(self) -> int:
        """``[limits] max_connections``, or what the file descriptor limit allows (raised to its hard
        limit first, ``fdlimit``) less a reserve for listeners, storage, logs and the control socket."""
        configured = self.config.limits.max_connections
        soft = fdlimit.raise_nofile_limit(configured)
        return configured or fdlimit.connections_allowed(soft)

    def new_c2s_stream(self, transport: Any, framer: Any = None) -> C2SStream:
        """A c2s stream on ``transport`` (any ``Transport``; the RFC 6120 framer unless given)."""
        c = self.config.c2s
        negotiators = self._c2s_negotiators
        if negotiators is None:  # built once: negotiators are stateless, shared by every stream
            order: list[Negotiator] = [StartTLS(), SASLAuth(self.storage.accounts, self.auth_limiter,
                                                            c.auth_failure_delay, self.secret)]
            if c.legacy_auth:
                order.append(LegacyAuth(self.storage.accounts, self.auth_limiter, c.auth_failure_delay))
            order.append(Bind())
            negotiators = self._c2s_negotiators = Negotiators(order)
        return C2SStream(self, transport, framer or self._framer, c, self._limits, negotiators,
                         accept_pre_1_0=c.legacy_auth)

    def open_c2s_stream(self, transport: Any, framer: Any) -> C2SStream | None:
        """A c2s stream for a carrier other than the TCP listeners (WebSocket, BOSH: ``ctx.c2s_stream``),
        counted by the connection limits like a TCP connection (None: over a limit)."""
        adm = self.admission
        if adm is not None:
            key = address_key(transport.peer_ip)
            if adm.admit(key) is not None:
                return None
            transport.set_admission(adm, key)
        return self.new_c2s_stream(transport, framer)

    async def _listen(self, kind: str, spec: str, factory: Any, ctx: Any) -> None:
        if self.place is not None and kind in DISPATCHED:
            # a worker: the supervisor listens and hands accepted connections over (workers.DISPATCHED)
            self._handed[kind] = (factory, ctx)
            return
        try:
            srv = await listen(spec, factory, ctx)
        except OSError as e:
            raise OSError(f"cannot listen on {spec} ({kind}): {e.strerror or e}") from None
        self.listeners.append(srv)
        for sock in srv.sockets:
            addr = sock.getsockname()
            self.addresses.setdefault(kind, []).append((addr[0], addr[1]))
            log.info("%s listening on %s:%s", kind, addr[0], addr[1])

    def _schedule_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(self.config.c2s.keepalive_interval, self._send_keepalives)

    def _send_keepalives(self) -> None:
        streams = list(self.streams)
        batches = -(-len(streams) // KEEPALIVE_BATCH)
        # the batches spread evenly over half the interval: the pass costs the same CPU, never in one burst
        gap = self.config.c2s.keepalive_interval / 2 / batches if batches else 0.0
        self._keepalive_batch(streams, 0, gap)
        self.components.keepalive()
        self._schedule_keepalive()

    def _keepalive_batch(self, streams: list[C2SStream], start: int, gap: float = 0.0) -> None:
        """RFC 6120 §4.6.1 keepalives, ``KEEPALIVE_BATCH`` streams at a time, ``gap`` seconds apart:
        with 10,000s of connections one pass would hold the event loop for a long time (a write costs
        10-50 us on loopback, more through asyncio's TLS layer) while every other client waits."""
        end = start + KEEPALIVE_BATCH
        for s in streams[start:end]:
            s.keepalive()
        if end < len(streams):
            asyncio.get_running_loop().call_later(gap, self._keepalive_batch, streams, end, gap)

    async def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: no new connections, every stream closed with <system-shutdown/>."""
        if self.cluster is not None:
            self.cluster.stopping = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        for srv in self.listeners:
            srv.close()
        for s in list(self.streams):
            s.close("system-shutdown", "the server is shutting down")
        if self.s2s is not None:
            self.s2s.close_all()
        self.components.close_all("system-shutdown", "the server is shutting down")
        for ref in self.sessions.local_all():  # detached sessions have no stream to close
            self.sessions.close(ref)
        await self.tasks.wait(timeout)
        await asyncio.sleep(0.05)  # let the transports flush their closing bytes
        if self.metrics is not None:
            await self.metrics.stop()
        await self.http.stop()
        if self.modules is not None:
            await self.modules.stop_all()
        if self._control is not None:
            await self._control.stop()
        if self.cluster is not None:
            self._stop_taking_connections()
            await self.cluster.shutdown()
        if self.storage is not None:
            await self.storage.close()
        self.stopped.set()

    def connected_components(self) -> list[dict[str, Any]]:
        """The connected external components (XEP-0114): domain, peer address, since, stanza counts."""
        return self.components.status()

    # -- C2SHost: what client streams need -------------------------------------------------
    def serves(self, domain: str) -> bool:
        return self.routes.is_local(domain)

    @property
    def default_domain(self) -> str:
        return self.config.domains[0]

    def element_handler(self, tag: str) -> ElementHandler | None:
        return self.elements.get(tag)

    def stream_features(self, stream: C2SStream, features: Element) -> Awaitable[Any] | None:
        """The ``stream-features`` fold (authenticated streams) or ``stream-features-pre-auth`` (before
        authentication): each module adds to ``features`` (may be async)."""
        event = "stream-features" if stream.authenticated else "stream-features-pre-auth"
        r = self.events.fold(event, features, stream)
        return r if isawaitable(r) else None

    def bind(self, stream: C2SStream, username: str, resource: str) -> Session:
        """RFC 6120 §7: a new session for ``username@domain/resource`` (the stream attaches it once the
        bind result is written); §7.7.2.2: a session that had this full JID is closed with ``<conflict/>``."""
        jid = JID(username, stream.local_domain, resource, _norm=False)
        limit = self.config.limits.max_resources_per_account
        if limit:
            bound = self.sessions.resources(jid.bare)
            if resource not in bound and len(bound) >= limit:
                # [limits] max_resources_per_account: the new resource is refused, the bound ones
                # keep working (a replaced full JID is not a new resource)
                raise BindRefused("resource-constraint", f"this account has {limit} resources bound already")
        session = self._new_session(stream, jid, stream.auth_info if stream.auth_info is not None else {})
        # not attached yet: the stream attaches it once the bind result is written, so whatever is
        # routed to it meanwhile (a replaced session's queue, session-bound handlers) follows the result
        self._register(session)
        return session

    def _new_session(self, stream: C2SStream, jid: JID, auth: dict[str, Any]) -> Session:
        """The session of ``jid`` on ``stream``, with how it authenticated (``auth``: for operators)."""
        auth["ip"] = stream.transport.peer_ip
        auth["secure"] = stream.transport.is_secure
        if self.cluster is not None:  # other workers show it in `rookery sessions`
            auth["tls"] = getattr(stream.transport, "tls_version", None) or None
        session = Session(jid, self.events.filters, auth)
        stream.transport.authenticated()
        return session

    def _register(self, session: Session, moved: bool = False) -> None:
        """Into the registry (``moved``: handed over by another worker, not a new bind); a session that
        had its full JID is closed with ``<conflict/>`` (RFC 6120 §7.7.2.2); then ``session-bound``."""
        if moved and self.cluster is not None:
            old = self.cluster.add(session, moved=True)
        else:
            old = self.sessions.add(session)
        if old is not None:
            self.sessions.close(old, "conflict", "replaced by a new session")
        r = self.events.fire("session-bound", session)
        if r is not None:
            self.tasks.spawn(r)

    def adopt(self, stream: C2SStream, jid: JID, state: dict[str, Any], ext: dict[str, Any]) -> Session:
        """XEP-0198 hand-over (issue 12): the session ``jid`` of the account authenticated on ``stream``,
        which another worker gave up, continues here — registered with its routing ``state``
        (``priority``, ``available``, ``presence``, ``interested``) and ``ext`` (published keys and the
        modules' slots), announced as *moved* (its old entry is not a session that ended), then
        ``session-bound``.  Not attached: the caller resumes it on ``stream``."""
        if jid.local != stream.username or jid.domain != stream.local_domain or jid.resource is None:
            raise ValueError("that session belongs to another account")
        session = self._new_session(stream, jid, dict(stream.auth_info) if stream.auth_info is not None else {})
        for k, v in state.items():
            setattr(session, k, v)
        session.ext.update(ext)
        self._register(session, moved=True)
        return session

    def stream_started(self, stream: C2SStream) -> None:
        self.streams[stream] = time.monotonic()

    def stream_opened(self, stream: C2SStream) -> None:
        """The first stream header of a connection was accepted: the "connection opened" line (a
        connection that never sends one, e.g. in a flood, logs nothing; lines are rate-limited)."""
        if conn_log.isEnabledFor(logging.INFO) and self._conn_log_allowed():
            conn_log.info("connection from %s opened: stream %s to %s", stream.transport.peer_ip, stream.stream_id,
                          stream.local_domain)

    def _conn_log_allowed(self) -> bool:
        """At most ``CONN_LOG_PER_SECOND`` connection lines a second; then one line says how many were not
        written (a flood must not flood the log)."""
        now = int(time.monotonic())
        if now != self._conn_log_second:
            if self._conn_log_dropped:
                conn_log.warning("%d connection log lines not written (more than %d a second)",
                                 self._conn_log_dropped, CONN_LOG_PER_SECOND)
            self._conn_log_second, self._conn_log_count, self._conn_log_dropped = now, 0, 0
        self._conn_log_count += 1
        if self._conn_log_count > CONN_LOG_PER_SECOND:
            self._conn_log_dropped += 1
            return False
        return True

    def stream_ended(self, stream: C2SStream, session: Session | None) -> None:
        """A c2s stream is over.  Its session ends, unless a module keeps it detached
        (the ``session-stream-lost`` fold returns True: XEP-0198 resumption)."""
        started = self.streams.pop(stream, None)
        if stream.announced and conn_log.isEnabledFor(logging.INFO) and self._conn_log_allowed():
            conn_log.info("connection from %s closed: stream %s, %s, %.1f s", stream.transport.peer_ip,
                          stream.stream_id or "-", stream.jid or stream.username or "not authenticated",
                          time.monotonic() - started if started is not None else 0.0)
        if session is None:
            return
        keep = self.events.fold("session-stream-lost", False, session)
        if keep is True:
            session.detach()
            return
        if isawaitable(keep):  # an async handler decides: detached until it has
            session.detach()
            self.tasks.spawn(self._keep_or_end(session, keep))
            return
        self.end_session(session)

    async def _keep_or_end(self, session: Session, keep: Awaitable[Any]) -> None:
        try:
            kept = await keep
        except Exception:
            log.exception("session-stream-lost handler failed")
            kept = False
        if kept is not True and session.stream is None:
            self.end_session(session)

    def spawn(self, coro: Awaitable[Any]) -> Any:
        return self.tasks.spawn(coro)

    # -- sessions ----------------------------------------------------------------------------
    def end_session(self, session: Session) -> None:
        """Unregister, tell modules (``session-ended``: presence broadcasts unavailable, RFC 6121
        §4.5.3), and re-route what was queued for it while detached (RFC 6121 §8.5.3.2.1: messages
        go to the account's other resources or offline storage; nothing acknowledged is lost)."""
        r = self._end_session(session)
        if r is not None:
            self.tasks.spawn(r)

    def _end_session(self, session: Session) -> Awaitable[Any] | None:
        """``end_session``; returns what the ``session-ended`` handlers still do (to spawn or await)."""
        if session.ended:
            return None
        session.detach()
        session.ended = True
        self.sessions.remove(session)  # a no-op when a new session took its full JID (§7.7.2.2)
        r = self.events.fire("session-ended", session)
        for el in session.take_queue():
            sent = self.router.send(el)
            if sent is not None:
                self.tasks.spawn(sent)
        return r

    async def _account_exists(self, host: str, user: str) -> bool:
        return bool(await self.storage.accounts.exists(host, user))

    # -- reload ------------------------------------------------------------------------------
    #: settings a reload applies to the running server (the rest need a restart)
    HOT = {
        "log_level", "log",
        "c2s.require_encryption", "c2s.allow_plaintext_auth", "c2s.max_stanza_size", "c2s.max_depth",
        "c2s.max_bytes_per_second", "c2s.burst_bytes", "c2s.auth_failure_delay", "c2s.max_auth_failures_per_ip",
        "c2s.auth_failure_window", "c2s.keepalive_interval", "c2s.handshake_timeout",
        "c2s.max_auth_failures_per_account", "c2s.auth_max_delay",
        "limits.max_connections", "limits.max_connections_per_ip", "limits.max_unauthenticated_per_ip",
        "limits.max_send_buffer", "limits.send_timeout",
        "tls",
    }

    async def reload(self, broadcast: bool = True) -> dict[str, Any]:
        """``rookery reload`` / SIGHUP: read the configuration file again and apply what can change
        without dropping connections (``HOT``: logging, limits, certificates); name what needs a
        restart.  A bad file changes nothing.  With workers, a reload asked of worker 0 (the control
        socket) is passed to the others (``broadcast``)."""
        from .config import load_config


        if self.config_path is None:
            new = self.config.__class__()
        else:
            new = load_config(self.config_path)  # ConfigError: the caller reports it, nothing changed
        old = self.config
        changed: list[str] = []
        for name in type(old).model_fields:
            a, b = getattr(old, name), getattr(new, name)
            if a == b:
                continue
            if name in ("c2s", "limits") :
                for key in type(a).model_fields:
                    if getattr(a, key) != getattr(b, key):
                        changed.append(f"{name}.{key}")
            else:
                changed.append(name)
        # every [limits] key is read where it is enforced (quotas by modules, connection limits below)
        applied = [k for k in changed if k in self.HOT or k.startswith("limits.")]
        restart = [k for k in changed if k not in applied]
        if "tls" in applied:
            mgr = tls.TLSManager(new, self.config.data_path())  # check the new files before touching anything
            mgr.pairs()
            self.tls.cfg = new
            try:
                self.tls.load()
            except (OSError, ValueError):
                self.tls.cfg = old
                raise
        elif self.tls is not None:
            self.tls.load()  # renewed certificate files (same paths) are picked up by every reload
        for k in applied:
            section, _, key = k.partition(".")
            if key:
                setattr(getattr(old, section), key, getattr(getattr(new, section), key))
            else:
                setattr(old, section, getattr(new, section))
        self._apply_limits()
        if self.manage_logging and ("log" in applied or "log_level" in applied):
            from . import logsetup

            logsetup.configure(old)
        if broadcast and self.cluster is not None:  # the other workers, once this file loaded here
            await self.cluster.broadcast_wait("reload")
        log.info("configuration reloaded from %s: %s%s", self.config_path or "built-in defaults",
                 f"applied {', '.join(applied)}" if applied else "no change applied",
                 f"; needs a restart: {', '.join(restart)}" if restart else "")
        return {"applied": applied, "restart": restart}

    def _apply_limits(self) -> None:
        """Push the (possibly reloaded) limit settings into the objects that enforce them."""
        c, lim = self.config.c2s, self.config.limits
        self._limits.max_stanza_size = c.max_stanza_size
        self._limits.max_depth = c.max_depth
        self._limits.handshake_timeout = c.handshake_timeout
        self.auth_limiter.configure(c)
        for n in (self._c2s_negotiators.order if self._c2s_negotiators is not None else []):
            if hasattr(n, "failure_delay"):
                n.failure_delay = c.auth_failure_delay
        if self._rate_limit is not None and c.max_bytes_per_second > 0:
            self._rate_limit.rate = c.max_bytes_per_second
            self._rate_limit.burst = max(c.burst_bytes, c.max_stanza_size)
        if self._send_limit is not None:
            self._send_limit.max_buffer = lim.max_send_buffer
            self._send_limit.timeout = lim.send_timeout
        if self.admission is not None:
            self.admission.max_total = self._max_connections()
            self.admission.max_per_ip = lim.max_connections_per_ip
            self.admission.max_unauthenticated_per_ip = lim.max_unauthenticated_per_ip

    # -- workers (issue 12: cluster/, workers.py) -------------------------------------------------
    async def _join_cluster(self) -> None:
        """Wire this worker into the cluster: frames from other workers land here, and the stanzas of
        what lives on worker 0 (internal services, external components) are routed there."""
        cl = self.cluster
        place = self.place
        assert cl is not None and place is not None
        cl.undeliverable = self._undeliverable
        cl.route_here = self._route_here
        cl.close_local = self._close_local
        cl.on_lost = self._sessions_lost
        cl.on_event = self._cluster_event
        cl.on_remote = self._remote_session
        for kind, host, port in place.listeners:
            self.addresses.setdefault(kind, []).append((host, port))
        if not place.primary:
            for domain, route in list(self.routes.by_domain.items()):
                if route.kind in (SERVICE, COMPONENT):
                    self.routes.by_domain[domain] = Route(domain, route.kind, forward=self._to_primary,
                                                          name=route.name)
        self.status_sections["workers"] = self._workers_status
        await cl.start()

    def _to_primary(self, st: Stanza) -> None:
        assert self.cluster is not None
        self.cluster.route_to(0, st.el)

    def _route_here(self, el: Element) -> None:
        r = self.router.send(el)
        if r is not None:
            self.tasks.spawn(r)

    def _undeliverable(self, el: Element) -> None:
        """A stanza another worker sent to a session of ours that has ended meanwhile: RFC 6121
        §8.5.3.2.1 — a message goes to the account's other resources or offline storage (as a message
        to the bare JID), an iq request is answered ``service-unavailable``, anything else is dropped."""
        try:
            to = JID.parse(el.get("to", ""))
            frm = JID.parse(el.get("from", "")) if el.get("from") else None
        except InvalidJID:
            return
        st = Stanza(el, frm, to)
        if el.tag == "message" and st.type not in ("error", "groupchat"):
            r = self.router.deliver_message(Stanza(el, frm, to.bare_jid()))
            if r is not None:
                self.tasks.spawn(r)
        elif el.tag == "iq" and st.type in ("get", "set"):
            self.router.reply(st, st.error("service-unavailable"))

    def _close_local(self, session: Any, condition: str | None, text: str | None, end: bool) -> None:
        self.sessions.local.close(session, condition, text)
        if end and isinstance(session, Session):
            self.end_session(session)

    def _sessions_lost(self, lost: list[RemoteSession], designated: bool) -> None:
        """A worker died with these sessions (every worker's modules have had ``session-gone`` for each):
        one worker (``designated``) ends them as if their streams had closed — ``session-ended``: their
        contacts get unavailable presence (RFC 6121 §4.5.3), last activity is kept …"""
        if designated:
            for ref in lost:
                r = self.events.fire("session-ended", ref)
                if r is not None:
                    self.tasks.spawn(r)

    def _remote_session(self, ref: RemoteSession, gone: bool) -> None:
        """Another worker's session was announced (``session-announced``: bound, or its state or
        published ``ext`` changed) or is gone (``session-gone``: ended, replaced, its worker died)."""
        r = self.events.fire("session-gone" if gone else "session-announced", ref)
        if r is not None:
            self.tasks.spawn(r)

    def _cluster_event(self, name: str, args: list[Any]) -> Awaitable[Any] | None:
        if name == "reload":
            return self._reload_quietly()
        if name == "reload-tls":
            self.tls.load()
            return None
        if name == "debug":
            self.tracer.set(str(args[0]), bool(args[1]))
            return None
        r = self.events.fire(name, *args)
        if r is not None:
            return self.tasks.spawn(r)  # type: ignore[no-any-return]
        return None

    async def _reload_quietly(self) -> None:
        from .config import ConfigError

        try:
            await self.reload(broadcast=False)
        except (ConfigError, OSError, ValueError) as e:
            log.error("reload failed, nothing changed: %s", e)

    def _workers_status(self) -> dict[str, Any]:
        cl, place = self.cluster, self.place
        assert cl is not None and place is not None
        per = {str(place.index): cl.local.count()}
        for w, refs in cl.directory.by_worker.items():
            per[str(w)] = len(refs)
        return {"count": place.count, "this": place.index, "supervisor": os.getppid(), "connected": cl.mesh.alive(),
                "sessions": per}

    def _take_connections(self) -> None:
        """Read the supervisor's hand-over channel: each message is one listener kind per descriptor
        (``workers.DISPATCHED``); the connection is served here as if this process had accepted it."""
        place = self.place
        assert place is not None and place.channel is not None
        chan = place.channel
        chan.setblocking(False)
        loop = asyncio.get_running_loop()

        def readable() -> None:
            while True:
                try:
                    msg, fds, _, _ = socket.recv_fds(chan, 64, 64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    msg, fds = b"", []
                if not msg and not fds:  # the supervisor is gone: so are we
                    loop.remove_reader(chan.fileno())
                    log.error("the supervisor is gone: stopping")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                for kind, fd in zip(msg, fds, strict=False):
                    sock = socket.socket(fileno=fd)
                    handed = self._handed.get(DISPATCHED[kind]) if kind < len(DISPATCHED) else None
                    if handed is None:
                        sock.close()
                        continue
                    sock.setblocking(False)
                    self.tasks.spawn(self._serve_handed(handed[0], handed[1], sock))

        loop.add_reader(chan.fileno(), readable)

    async def _serve_handed(self, factory: Any, ctx: Any, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(factory, sock, ssl=ctx,
                                               ssl_handshake_timeout=30 if ctx is not None else None)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            sock.close()

    def _stop_taking_connections(self) -> None:
        place = self.place
        if place is not None and place.channel is not None:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(place.channel.fileno())

    # -- account events ----------------------------------------------------------------------
    async def user_deleted(self, host: str, user: str) -> None:
        """An account is gone: disconnect its sessions, let modules forget it."""
        log.info("account %s@%s deleted", user, host)
        ref: SessionRef
        ending = []
        for ref in list(self.sessions.resources(f"{user}@{host}").values()):
            if isinstance(ref, RemoteSession):  # its worker closes and ends it
                self.sessions.close(ref, "not-authorized", "account deleted", end=True)
                continue
            self.sessions.close(ref, "not-authorized", "account deleted")
            if isinstance(ref, Session):  # ended now, not kept for resumption (XEP-0198)
                ending.append(self._end_session(ref))
        for r in ending:
            if r is not None:
                await r
        # the other workers' modules forget what they cache of it (issue 12; ``user-deleted`` with its
        # side effects — roster pushes, pubsub clean-up — runs here only)
        self.sessions.broadcast("user-forgotten", host, user)
        r = self.events.fire("user-deleted", host, user)
        if r is not None:
            await r
        if self.storage is not None and not await self.storage.accounts.exists(host, user):
            # what the sessions' ends wrote (last activity, the last presence) goes too: every row
            await self.storage.accounts.delete(host, user)
