"""Loads feature modules per domain, registers what they declare, and starts and stops them — at
start-up and at run time (docs/modules.md).

Each module gets a ``ModuleContext``; everything it registers (iq handlers, stanza hooks in the
handler tables of the domains it is enabled on, server-wide hooks, outbound filters, stream element
handlers, its service routes) is kept as ``Handle``s, so stopping a module removes exactly what it
added.  Modules enabled on some domains only (``[vhosts."D"] modules``) get their stanza handlers on
those domains' tables only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Config
from .module import Module, ModuleContext, RouterAPI, is_stanza_event
from .modules import load_module_class
from .routing.hooks import EventBus, Handle, HandlerTable, register
from .routing.registry import SessionRegistry
from .routing.routes import RouteTable
from .routing.tasks import Tasks
from .storage.base import Storage
from .storage.views import ModuleStores
from .transports.http import HTTPService

log = logging.getLogger(__name__)


#: the domain a server-wide event is about, from its arguments (a fold's value comes first)
_HOST_OF: dict[str, Callable[..., str | None]] = {
    "stream-features": lambda _v, stream: stream.local_domain,
    "stream-features-pre-auth": lambda _v, stream: stream.local_domain,
    "delivery-failed": lambda _v, st: st.to.domain if st.to is not None else None,
    "disco-items": lambda _v, host: host,
    "disco-forms": lambda _v, host: host,
    "session-stream-lost": lambda _v, session: session.jid.domain,
    "session-bound": lambda session: session.jid.domain,
    "session-ended": lambda session: session.jid.domain,
    "initial-presence": lambda session: session.jid.domain,
    "message-delivered": lambda st, _targets: st.to.domain if st.to is not None else None,
    "user-deleted": lambda host, _user: host,
}
FOLD_EVENTS = frozenset(("stream-features", "stream-features-pre-auth", "delivery-failed", "disco-items",
                         "disco-forms", "session-stream-lost"))


def _scoped(event: str, fn: Callable[..., Any], hosts: frozenset[str]) -> Callable[..., Any]:
    """``fn`` for a module enabled on some domains only: it runs for events about those domains;
    for others a fold passes its value through and a plain event is ignored."""
    host_of = _HOST_OF.get(event)
    if host_of is None:
        return fn
    is_fold = event in FOLD_EVENTS

    def scoped(*args: Any) -> Any:
        if host_of(*args) in hosts:
            return fn(*args)
        return args[0] if is_fold else None

    return scoped


def _combined(handles: list[Handle], what: str) -> Handle:
    def undo() -> None:
        for h in handles:
            h.remove()

    return Handle(undo, what)


class ModuleCatalog:
    """What the loaded modules declare, per domain (the ``Catalog`` protocol of ``module``)."""

    def __init__(self, manager: ModuleManager) -> None:
        self._m = manager

    def _mods(self, host: str) -> list[Module]:
        return [m for m in self._m.modules.values() if host in m.ctx.hosts]

    def identities(self, host: str) -> list[tuple[str, str, str | None]]:
        return [tuple(i) for m in self._mods(host) for i in m.identities]  # type: ignore[misc]

    def features(self, host: str) -> list[str]:
        return [f for m in self._mods(host) for f in m.features]

    def account_features(self, host: str) -> list[str]:
        return [f for m in self._mods(host) for f in m.account_features]

    def account_identities(self, host: str) -> list[tuple[str, str, str | None]]:
        return [tuple(i) for m in self._mods(host) for i in m.account_identities]  # type: ignore[misc]

    def services(self, host: str) -> list[tuple[str, str, str | None]]:
        out = []
        for m in self._mods(host):
            if m.subdomain:
                label = m.service_identity[2] if m.service_identity else None
                out.append((f"{m.subdomain}.{host}", m.name, label))
        return out


class ModuleManager:
    def __init__(self, config: Config, *, router: RouterAPI, sessions: SessionRegistry, routes: RouteTable,
                 events: EventBus, tables: dict[str, HandlerTable], elements: dict[str, Callable[..., Any]],
                 storage: Storage, tasks: Tasks, started_at: float, http: HTTPService | None = None,
                 secret: bytes = b"", c2s: Callable[[Any, Any], Any] | None = None, primary: bool = True) -> None:
        self.config = config
        self.primary = primary  # worker 0 or the only process (ctx.primary)
        self.secret = secret  # the server secret (ctx.derive_key)
        self.http = http  # the [http] listeners' routes (None: no HTTP side)
        self.c2s = c2s  # starts a c2s stream on a transport and framer (the HTTP carriers)
        self.router = router
        self.sessions = sessions
        self.routes = routes
        self.events = events
        self.tables = tables  # local domain -> its handler table
        self.elements = elements  # c2s stream element handlers by qualified name
        self.storage = storage
        self.stores = ModuleStores(storage)
        self.tasks = tasks
        self.started_at = started_at
        self.modules: dict[str, Module] = {}
        self.services: dict[str, Any] = {}
        self.catalog = ModuleCatalog(self)
        self._service_tables: dict[str, list[HandlerTable]] = {}

    # -- loading -----------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, list[str]]]:
        """(module name, domains) in dependency order: dependencies first, on the same domains."""
        order: list[str] = []
        hosts: dict[str, list[str]] = {}

        def visit(name: str, host: str, stack: tuple[str, ...] = ()) -> None:
            if name in stack:
                raise ValueError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
            cls = load_module_class(name)
            for dep in cls.depends:
                visit(dep, host, stack + (name,))
            if name not in order:
                order.append(name)
            hs = hosts.setdefault(name, [])
            if host not in hs:
                hs.append(host)

        for host in self.config.domains:
            for name in self.config.modules_for(host):
                visit(name, host)
        return [(name, hosts[name]) for name in order]

    async def load_all(self) -> None:
        for name, hosts in self.plan():
            self.load(name, hosts)
        for mod in list(self.modules.values()):
            await mod.start()
        self.events.fire("modules-changed")

    def load(self, name: str | type[Module], hosts: list[str]) -> Module:
        """Instantiate and register (not started: ``start_module`` does both).  ``name`` is a module
        name (built-in, entry point, "package.module:Class") or a ``Module`` class."""
        cls: type[Module] = load_module_class(name) if isinstance(name, str) else name
        name = cls.name  # a module's identity (registry, options, stores) is its class's name
        if not name:
            raise ValueError(f"module class {cls.__qualname__} has no name")
        if name in self.modules:
            raise ValueError(f"module {name} is already loaded")
        for dep in cls.depends:
            if dep not in self.modules:
                raise ValueError(f"module {name} needs module {dep}")
        opts = cls.Options.model_validate(self.config.options_of(name))
        host_opts = {h: cls.Options.model_validate(self.config.options_of(name, h))
                     for h in hosts if h in self.config.vhosts}
        ctx = ModuleContext(name, router=self.router, sessions=self.sessions, storage=self.storage,
                            stores=self.stores, options=opts, host_options=host_opts, hosts=list(hosts),
                            catalog=self.catalog, registrar=self, services=self.services,
                            started_at=self.started_at, admins=frozenset(self.config.admins),
                            limits=self.config.limits, data_dir=self.config.data_path(), secret=self.secret,
                            primary=self.primary)
        mod = cls(ctx)
        for svc in cls.provides:
            if svc in self.services:
                raise ValueError(f"two modules provide service {svc}")
        try:
            if cls.subdomain:
                self._add_service_routes(mod)
            d = mod.declared()
            for key, on, fn in d.iqs:
                ctx.iq(*key[:3], fn, to=key[3], on=on)
            for event, prio, on, fn in d.hooks:
                ctx.hook(event, fn, prio, on)
            for prio, fn in d.filters:
                ctx.filter(fn, prio)
            for qn, fn in d.elements:
                ctx.element(qn, fn)
        except Exception:
            self._unregister(mod)  # a module that cannot load leaves nothing behind
            raise
        for svc in cls.provides:
            self.services[svc] = mod
        self.modules[name] = mod
        return mod

    def _add_service_routes(self, mod: Module) -> None:
        tables = []
        for host in mod.ctx.hosts:
            domain = f"{mod.subdomain}.{host}"
            table = HandlerTable(domain)
            mod.ctx.handles.append(self.routes.add_service(domain, mod.name, table))
            tables.append(table)
        self._service_tables[mod.name] = tables

    async def start_module(self, name: str | type[Module], hosts: list[str] | None = None) -> Module:
        """Load and start a module at run time (on ``hosts``, default every served domain)."""
        mod = self.load(name, hosts if hosts is not None else list(self.config.domains))
        try:
            await mod.start()
        except Exception:
            self._unregister(mod)
            raise
        self.events.fire("modules-changed")
        return mod

    async def stop_module(self, name: str) -> None:
        """Stop a module at run time: ``stop()``, then every handler it registered is removed."""
        mod = self.modules.get(name)
        if mod is None:
            raise KeyError(f"module {name} is not loaded")
        users = [m.name for m in self.modules.values() if name in m.depends]
        if users:
            raise ValueError(f"module {name} is needed by {', '.join(users)}")
        try:
            await mod.stop()
        finally:
            self._unregister(mod)
            self.events.fire("modules-changed")

    def _unregister(self, mod: Module) -> None:
        for h in reversed(list(mod.ctx.handles)):
            h.remove()
        mod.ctx.handles.clear()
        for svc in mod.provides:
            if self.services.get(svc) is mod:
                del self.services[svc]
        self._service_tables.pop(mod.name, None)
        if self.modules.get(mod.name) is mod:
            del self.modules[mod.name]

    async def stop_all(self) -> None:
        for mod in reversed(list(self.modules.values())):
            try:
                await mod.stop()
            except Exception:
                log.exception("module %s failed to stop", mod.name)

    # -- the Registrar protocol (ModuleContext's registration calls) -------------------------
    def _tables(self, ctx: ModuleContext, on: str) -> list[HandlerTable]:
        if on == "service":
            tables = self._service_tables.get(ctx.name)
            if tables is None:
                raise ValueError(f"module {ctx.name} registers service handlers but has no subdomain")
            return tables
        return [self.tables[h] for h in ctx.hosts if h in self.tables]

    def iq(self, ctx: ModuleContext, key: tuple[str, str, str, str], fn: Callable[..., Any], on: str) -> Handle:
        return _combined([t.add_iq(key, fn) for t in self._tables(ctx, on)], f"iq {key} of {ctx.name}")

    def _partial(self, ctx: ModuleContext) -> frozenset[str] | None:
        """The module's domains when it is not enabled on every served domain."""
        hosts = frozenset(ctx.hosts)
        return None if hosts >= frozenset(self.config.domains) else hosts

    def hook(self, ctx: ModuleContext, event: str, fn: Callable[..., Any], priority: int, on: str) -> Handle:
        if is_stanza_event(event):
            return _combined([t.add_hook(event, fn, priority) for t in self._tables(ctx, on)],
                             f"hook {event} of {ctx.name}")
        hosts = self._partial(ctx)
        return self.events.on(event, fn if hosts is None else _scoped(event, fn, hosts), priority)

    def filter(self, ctx: ModuleContext, fn: Callable[..., Any], priority: int) -> Handle:
        hosts = self._partial(ctx)
        if hosts is not None:
            inner = fn

            def fn(session: Any, el: Any) -> Any:
                return inner(session, el) if session.jid.domain in hosts else el

        return self.events.add_filter(fn, priority)

    def element(self, ctx: ModuleContext, qualified_name: str, fn: Callable[..., Any]) -> Handle:
        hosts = self._partial(ctx)
        if hosts is not None:
            inner = fn

            def fn(stream: Any, el: Any) -> Any:
                if stream.local_domain in hosts:
                    return inner(stream, el)
                stream.stream_error("unsupported-stanza-type")
                return None

        return register(self.elements, qualified_name, fn, f"stream element {qualified_name}")

    def http_route(self, ctx: ModuleContext, method: str, path: str, handler: Callable[..., Any], prefix: bool,
                   cors: bool) -> Handle:
        if self.http is None:
            raise ValueError(f"module {ctx.name} serves HTTP but the server has no HTTP service")
        undo = self.http.add_route(method, path, handler, prefix=prefix, cors=cors)
        return Handle(undo, f"HTTP {method} {path} of {ctx.name}")

    def http_base_url(self, secure: bool) -> str:
        return self.http.base_url(secure) if self.http is not None else "http://localhost:5280"

    def http_secure(self, request: Any) -> bool:
        return self.http.is_secure(request) if self.http is not None else bool(request.secure)

    def c2s_stream(self, transport: Any, framer: Any) -> Any:
        if self.c2s is None:
            raise ValueError("this server cannot start client streams for modules")
        return self.c2s(transport, framer)

    def fire(self, event: str, *args: Any) -> Awaitable[None] | None:
        return self.events.fire(event, *args)

    def fold(self, event: str, value: Any, *args: Any) -> Any:
        return self.events.fold(event, value, *args)

    def spawn(self, aw: Awaitable[Any]) -> Any:
        return self.tasks.spawn(aw)
