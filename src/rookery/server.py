"""Server: wires hosts, listeners, router, storage and modules; ``start()`` / ``stop()``."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import tls
from .config import Config
from .control import SOCKET_NAME, ControlServer
from .module import Module
from .modules import load_module_class
from .routing.router import Router
from .streams.auth_limits import AuthFailureLimiter
from .streams.c2s import C2SStream
from .transports.tcp import Flusher, RateLimit, StreamProtocol, listen

log = logging.getLogger(__name__)


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.hosts: set[str] = set(config.domains)
        self.router = Router(self)
        self.modules: dict[str, Module] = {}
        self.streams: set[Any] = set()
        self.storage: Any = None
        self.started_at = time.time()
        self.listeners: list[asyncio.AbstractServer] = []
        #: actually bound addresses per listener kind, e.g. {"c2s": [("127.0.0.1", 5222)]}
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self._control: ControlServer | None = None
        self.stopped = asyncio.Event()
        self.auth_limiter = AuthFailureLimiter(config.c2s.max_auth_failures_per_ip, config.c2s.auth_failure_window)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        from .storage.sql import make_storage

        cfg = self.config
        data_dir = cfg.data_path()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = make_storage(cfg.storage, str(data_dir), offline_limit=cfg.offline.max_messages)
        await self.storage.open()
        cert, key = tls.ensure_certificate(cfg.tls.cert, cfg.tls.key, data_dir, cfg.domains)
        self.cert_path = cert
        starttls_ctx = tls.server_context(cert, key, cfg.tls.min_version)
        direct_ctx = tls.server_context(cert, key, cfg.tls.min_version, alpn=["xmpp-client"])
        cb_data = tls.tls_server_end_point(cert)
        await self._load_modules()
        flusher = Flusher(asyncio.get_running_loop())

        rate = cfg.c2s.max_bytes_per_second
        limit = RateLimit(rate, max(cfg.c2s.burst_bytes, cfg.c2s.max_stanza_size)) if rate > 0 else None

        def c2s_stream(t: StreamProtocol) -> C2SStream:
            t.set_rate_limit(limit)
            return C2SStream(self, t)

        def c2s_factory(ctx: Any, direct: bool) -> Any:
            def make() -> StreamProtocol:
                return StreamProtocol(c2s_stream, ctx, direct, cb_data, flusher)
            return make

        for spec in cfg.c2s.listen:
            await self._listen("c2s", spec, c2s_factory(starttls_ctx, False), None)
        for spec in cfg.c2s.direct_tls_listen:
            await self._listen("c2s_direct_tls", spec, c2s_factory(direct_ctx, True), direct_ctx)
        if cfg.s2s.listen or cfg.http.listen:
            log.warning("[s2s] and [http] listeners are not part of this build yet; ignoring them")
        self._control = ControlServer(self, data_dir / SOCKET_NAME)
        try:
            await self._control.start()
        except OSError as e:
            log.warning("control socket unavailable (%s): CLI changes reach this server only via storage", e)
            self._control = None
        if cfg.c2s.keepalive_interval > 0:
            self._schedule_keepalive()
        log.info("Rookery serving %s", ", ".join(cfg.domains))

    async def _listen(self, kind: str, spec: str, factory: Any, ctx: Any) -> None:
        try:
            srv = await listen(spec, factory, ctx)
        except OSError as e:
            raise OSError(f"cannot listen on {spec} ({kind}): {e.strerror or e}") from None
        self.listeners.append(srv)
        for sock in srv.sockets:
            addr = sock.getsockname()
            self.addresses.setdefault(kind, []).append((addr[0], addr[1]))
            log.info("%s listening on %s:%s", kind, addr[0], addr[1])

    async def _load_modules(self) -> None:
        order: list[str] = []

        def visit(name: str, stack: tuple[str, ...] = ()) -> None:
            if name in order:
                return
            if name in stack:
                raise ValueError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
            cls = load_module_class(name)
            for dep in getattr(cls, "depends", []):
                visit(dep, stack + (name,))
            order.append(name)

        for name in self.config.modules:
            visit(name)
        for name in order:
            mod = load_module_class(name)(self)
            self.modules[name] = mod
            iqs, hooks = mod.handlers()
            for key, fn in iqs:
                self.router.add_iq_handler(key, fn)
            for event, prio, fn in hooks:
                self.router.add_hook(event, prio, fn)
        for mod in self.modules.values():
            await mod.start()

    def _schedule_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(self.config.c2s.keepalive_interval, self._send_keepalives)

    def _send_keepalives(self) -> None:
        for s in list(self.streams):
            s.keepalive()
        self._schedule_keepalive()

    async def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: no new connections, every stream closed with <system-shutdown/>."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        for srv in self.listeners:
            srv.close()
        for s in list(self.streams):
            s.close("system-shutdown", "the server is shutting down")
        deadline = time.monotonic() + timeout
        while self.router.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the transports flush their closing bytes
        for mod in reversed(list(self.modules.values())):
            try:
                await mod.stop()
            except Exception:
                log.exception("module %s failed to stop", mod.name)
        if self._control is not None:
            await self._control.stop()
        if self.storage is not None:
            await self.storage.close()
        self.stopped.set()

    # -- account events ----------------------------------------------------------------------
    async def user_deleted(self, host: str, user: str) -> None:
        """An account is gone: disconnect its sessions, let modules forget it."""
        for s in list(self.router.sessions.resources(f"{user}@{host}").values()):
            s.close("not-authorized", "account deleted")
        r = self.router.fire("user-deleted", host, user)
        if r is not None:
            await r
