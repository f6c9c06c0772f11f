"""The module API, version 2 (docs/modules.md): every feature is a ``Module`` that registers handlers
through a typed ``ModuleContext`` — never the ``Server``.

Declare handlers with decorators; the module manager registers them when the module starts and
removes them (through their ``Handle``s) when it stops, so a module can be stopped and started again
at run time.  Handlers are found by one dict lookup, never by scanning modules:

* ``@iq_handler(type, namespace, name, to=..., on="account")`` — iq get/set whose payload is
  ``{namespace}name``, addressed to a served domain (``to="host"``), to an account's bare JID
  (``"bare"``, also used for iqs a client sends with no ``to``: RFC 6120 §10.3.3) or to a full JID
  (``"full"``).  ``on="service"`` registers it on the module's own service subdomains instead (see
  ``Module.subdomain``).  The handler gets a ``Stanza`` and returns the reply ``Element`` (or
  ``None`` if it replied itself), raises ``StanzaError``, or is ``async`` and does the same: the
  router awaits the coroutine and treats its result exactly like a plain return value.  An uncaught
  exception replies ``<internal-server-error/>`` and is logged; the session lives on.
* ``@hook(event, priority=0, on="account")`` — stanza chains ``"<kind>/<target>"`` (``message/bare``,
  ``presence/full`` …) for stanzas to a local entity, ``"pre-<kind>"`` for stanzas a local client
  sends, before routing, and ``"iq-result/<target>"``/``"iq-error/<target>"``.  Higher priority runs
  first; returning ``True`` (or a coroutine whose result is true) means handled, stop.  Any other
  event name is a server-wide event (``session-bound``, ``session-ended``, ``initial-presence``,
  ``message-delivered``, ``user-deleted`` …) whose handlers get the event's own arguments; their
  return value is ignored (coroutines are awaited).
* ``@fold(event, priority=0)`` — a fold event: each handler gets ``(value, *args)`` and returns the
  new value (``stream-features``, ``delivery-failed``, ``disco-items``, ``disco-forms`` …).
* ``@stream_filter(priority=0)`` — ``fn(session, element) -> element | None`` on every element sent to
  every session (the outbound filter chain of ``Session.send``); None drops it.
* ``@element_handler(qualified_name)`` — a top-level non-stanza element of a c2s stream, before or
  after binding (XEP-0198 ``{urn:xmpp:sm:3}enable`` …): ``fn(stream, element)``.

Modules talk to each other through events or declared services (``provides`` / ``ctx.service(name)``),
never by reaching into each other.  Disco features and identities are declared on the class and
collected per domain by the module manager (``ctx.catalog``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar
from xml.etree.ElementTree import Element

from pydantic import BaseModel, ConfigDict

from .routing.hooks import Handle
from .routing.registry import SessionRegistry
from .stanza import Stanza
from .storage.base import Storage

IQ_TARGETS = ("host", "bare", "full")
ON = ("account", "service")

F = TypeVar("F", bound=Callable[..., Any])


def is_stanza_event(event: str) -> bool:
    """Stanza chains live in a domain's handler table; other events on the server-wide bus."""
    return "/" in event or event.startswith("pre-")


def iq_handler(type: str, namespace: str, name: str, to: str = "host", on: str = "account") -> Callable[[F], F]:
    """Register a method for iq ``type`` ("get"/"set") with payload ``{namespace}name`` sent ``to``."""
    if type not in ("get", "set") or to not in IQ_TARGETS or on not in ON:
        raise ValueError("iq_handler(type in get/set, ..., to in host/bare/full, on in account/service)")

    def deco(fn: F) -> F:
        fn.__dict__.setdefault("_rookery_iq", []).append((type, namespace, name, to, on))
        return fn

    return deco


def hook(event: str, priority: int = 0, on: str = "account") -> Callable[[F], F]:
    """Register a method for ``event`` (see the module docstring)."""
    if on not in ON:
        raise ValueError("hook(..., on in account/service)")

    def deco(fn: F) -> F:
        fn.__dict__.setdefault("_rookery_hooks", []).append((event, priority, on))
        return fn

    return deco


def fold(event: str, priority: int = 0) -> Callable[[F], F]:
    """Register a method for the fold event ``event``: ``fn(value, *args) -> value``."""
    if is_stanza_event(event):
        raise ValueError(f"{event} is a stanza chain, not a fold event")
    return hook(event, priority)


def stream_filter(priority: int = 0) -> Callable[[F], F]:
    """Register a method as an outbound filter: ``fn(session, element) -> element | None``."""

    def deco(fn: F) -> F:
        fn.__dict__["_rookery_filter"] = priority
        return fn

    return deco


def element_handler(qualified_name: str) -> Callable[[F], F]:
    """Register a method for a non-stanza top-level element ``{ns}name`` of c2s streams."""
    if not qualified_name.startswith("{"):
        raise ValueError("element_handler takes a qualified name: '{namespace}name'")

    def deco(fn: F) -> F:
        fn.__dict__.setdefault("_rookery_elements", []).append(qualified_name)
        return fn

    return deco


class NoOptions(BaseModel):
    """A module without options: ``[modules.<name>]`` must be empty."""

    model_config = ConfigDict(extra="forbid")


class Options(BaseModel):
    """Base of a module's typed options (``[modules.<name>]``; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class RouterAPI(Protocol):
    """What modules use of the router."""

    def send(self, el: Element) -> Awaitable[Any] | None:
        """Route a server-generated stanza (``from``/``to`` set); await the result to wait for it."""
        ...

    def route(self, st: Stanza) -> Awaitable[Any] | None: ...

    def reply(self, st: Stanza, el: Element) -> None:
        """Send ``el`` back to where ``st`` came from."""
        ...

    def deliver_message(self, st: Stanza) -> Awaitable[Any] | None:
        """RFC 6121 §8.5 delivery of a message to a local account (offline storage, errors)."""
        ...


class Catalog(Protocol):
    """What the enabled modules declare, per served domain (for disco and caps)."""

    def identities(self, host: str) -> list[tuple[str, str, str | None]]: ...

    def features(self, host: str) -> list[str]: ...

    def account_features(self, host: str) -> list[str]: ...

    def account_identities(self, host: str) -> list[tuple[str, str, str | None]]: ...

    def services(self, host: str) -> list[tuple[str, str, str | None]]:
        """(service domain, module name, display name) of the internal services under ``host``."""
        ...


class Stores(Protocol):
    def open_store(self, owner: str, name: str, kind: str) -> Any: ...


class ModuleContext:
    """Everything a module may use; made by the module manager, one per module."""

    def __init__(self, name: str, *, router: RouterAPI, sessions: SessionRegistry, storage: Storage,
                 stores: Stores, options: BaseModel, host_options: dict[str, BaseModel], hosts: list[str],
                 catalog: Catalog, registrar: Registrar, services: dict[str, Any], started_at: float,
                 admins: frozenset[str] = frozenset(), limits: Any = None, data_dir: Path | None = None,
                 secret: bytes = b"", primary: bool = True) -> None:
        self.name = name
        #: this process is worker 0 or the only one: the home of services' state and of listeners a
        #: module opens itself (docs/architecture.md "Workers"); False on the other workers
        self.primary = primary
        self.router = router
        self.sessions = sessions
        self.storage = storage
        self.options = options
        self.hosts = hosts
        self.catalog = catalog
        self.started_at = started_at
        #: the top-level ``admins`` (bare JIDs as strings)
        self.admins = admins
        #: the ``[limits]`` settings (per-account quotas: ``max_roster_items`` …); None outside a server
        self.limits = limits
        self.log = logging.getLogger(f"rookery.modules.{name}")
        self._stores = stores
        self._host_options = host_options
        self._registrar = registrar
        self._services = services
        self._data_dir = data_dir
        self._secret = secret
        self.handles: list[Handle] = []

    # -- configuration -----------------------------------------------------------------------
    def enabled_for(self, host: str) -> bool:
        return host in self.hosts

    def options_for(self, host: str) -> Any:
        """The options for one domain (``[vhosts."D".options.<name>]`` over ``[modules.<name>]``)."""
        return self._host_options.get(host, self.options)

    def is_admin(self, jid: Any) -> bool:
        """Whether ``jid`` (a ``JID`` or a string; its bare JID counts) is a server administrator
        (the top-level ``admins`` list: the one source of admin rights for every service)."""
        bare = jid.bare if hasattr(jid, "bare") else str(jid).partition("/")[0]
        return str(bare) in self.admins

    # -- files and keys ----------------------------------------------------------------------
    def data_path(self, *parts: str) -> Path:
        """A path in this module's own directory, ``<data_dir>/<module name>/...`` (not created;
        ``ValueError`` when the server has no ``data_dir``)."""
        if self._data_dir is None:
            raise ValueError(f"module {self.name}: the server has no data_dir")
        return self._data_dir.joinpath(self.name, *parts)

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, derived from the server secret (``server_secret``) with
        HMAC-SHA256: the same across restarts, different for every module and purpose."""
        if not self._secret:
            raise ValueError(f"module {self.name}: the server has no secret")
        return hmac.new(self._secret, f"rookery module key\0{self.name}\0{purpose}".encode(), hashlib.sha256).digest()

    # -- storage -----------------------------------------------------------------------------
    def open_store(self, name: str, kind: str = "keyval") -> Any:
        """This module's own store ``name``: ``kind`` "keyval" (one document per user), "map" (keys per
        user) or "archive" (time-ordered items per user).  SQL-backed, kept apart from other modules'."""
        return self._stores.open_store(self.name, name, kind)

    # -- registration (each returns a Handle; all are removed when the module stops) --------
    def _keep(self, h: Handle) -> Handle:
        self.handles.append(h)
        h.on_removed = self._forget  # registrations made and undone at run time do not pile up
        return h

    def _forget(self, h: Handle) -> None:
        try:
            self.handles.remove(h)
        except ValueError:
            pass

    def iq(self, type: str, namespace: str, name: str, fn: Callable[..., Any], to: str = "host",
           on: str = "account") -> Handle:
        return self._keep(self._registrar.iq(self, (type, namespace, name, to), fn, on))

    def hook(self, event: str, fn: Callable[..., Any], priority: int = 0, on: str = "account") -> Handle:
        return self._keep(self._registrar.hook(self, event, fn, priority, on))

    def filter(self, fn: Callable[..., Any], priority: int = 0) -> Handle:
        return self._keep(self._registrar.filter(self, fn, priority))

    def element(self, qualified_name: str, fn: Callable[..., Any]) -> Handle:
        return self._keep(self._registrar.element(self, qualified_name, fn))

    def http_route(self, method: str, path: str, handler: Callable[..., Any], *, prefix: bool = False,
                   cors: bool = False) -> Handle:
        """Serve HTTP ``method`` requests for ``path`` (everything under it when ``prefix``; then it
        ends with "/") on the ``[http]`` listeners: ``async handler(aiohttp.web.Request) ->
        aiohttp.web.StreamResponse``.  ``cors=True``: CORS headers and preflights for web clients."""
        return self._keep(self._registrar.http_route(self, method, path, handler, prefix, cors))

    def http_url(self, path: str = "/", secure: bool = True) -> str:
        """The absolute URL of ``path`` on the HTTP side (``[http] public_url`` when set)."""
        return self._registrar.http_base_url(secure) + path

    def http_secure(self, request: Any) -> bool:
        """Whether an HTTP request counts as encrypted: it came over HTTPS, or from a loopback address
        while ``[http] secure_loopback`` is on (a TLS-terminating reverse proxy on the same host)."""
        return self._registrar.http_secure(request)

    def c2s_stream(self, transport: Any, framer: Any) -> Any:
        """A client stream (the same c2s code as TCP) on ``transport`` framed by ``framer``: how the
        carriers of XMPP over HTTP (modules ``websocket``, ``bosh``) start one.  ``transport`` is a
        ``streams.transport.Transport`` with ``set_admission(limiter, key)``; the connection limits
        count it.  Returns the stream (give it the transport's incoming data), or None when the
        connection limits refuse it."""
        return self._registrar.c2s_stream(transport, framer)

    def fire(self, event: str, *args: Any) -> Awaitable[None] | None:
        """Fire a server-wide event (an awaitable when some handler was async)."""
        return self._registrar.fire(event, *args)

    def fold(self, event: str, value: Any, *args: Any) -> Any:
        """Fold ``value`` through a fold event's handlers (an awaitable when some handler was async)."""
        return self._registrar.fold(event, value, *args)

    def spawn(self, aw: Awaitable[Any]) -> Any:
        """Run in the background (failures are logged; waited for at shutdown)."""
        return self._registrar.spawn(aw)

    # -- services between modules ------------------------------------------------------------
    def service(self, name: str) -> Any:
        """The object a module declared with ``provides = [name]`` (KeyError when none is loaded)."""
        return self._services[name]

    def has_service(self, name: str) -> bool:
        return name in self._services


class Registrar(Protocol):
    """The module manager's side of registration."""

    def iq(self, ctx: ModuleContext, key: tuple[str, str, str, str], fn: Callable[..., Any], on: str) -> Handle: ...

    def hook(self, ctx: ModuleContext, event: str, fn: Callable[..., Any], priority: int, on: str) -> Handle: ...

    def filter(self, ctx: ModuleContext, fn: Callable[..., Any], priority: int) -> Handle: ...

    def element(self, ctx: ModuleContext, qualified_name: str, fn: Callable[..., Any]) -> Handle: ...

    def http_route(self, ctx: ModuleContext, method: str, path: str, handler: Callable[..., Any], prefix: bool,
                   cors: bool) -> Handle: ...

    def http_base_url(self, secure: bool) -> str: ...

    def http_secure(self, request: Any) -> bool: ...

    def c2s_stream(self, transport: Any, framer: Any) -> Any: ...

    def fire(self, event: str, *args: Any) -> Awaitable[None] | None: ...

    def fold(self, event: str, value: Any, *args: Any) -> Any: ...

    def spawn(self, aw: Awaitable[Any]) -> Any: ...


class Module:
    """Base class of every feature module.  Subclasses set ``name`` and declare handlers."""

    name: ClassVar[str] = ""
    #: disco#info features of the server itself (XEP-0030)
    features: ClassVar[list[str]] = []
    #: disco#info features of each account's bare JID
    account_features: ClassVar[list[str]] = []
    #: disco#info identities of each account's bare JID besides ``account/registered`` (PEP: pubsub/pep)
    account_identities: ClassVar[list[tuple[str, str, str | None]]] = []
    #: disco#info identities of the server: (category, type, name)
    identities: ClassVar[list[tuple[str, str, str | None]]] = []
    #: modules this one needs loaded first (on the same domains).  A module enabled on some domains
    #: only gets the server-wide events about those domains (and its filters and stream element
    #: handlers apply to their sessions only)
    depends: ClassVar[list[str]] = []
    #: services this module offers to others (``ctx.service(name)`` returns the module instance)
    provides: ClassVar[list[str]] = []
    #: typed options, read from ``[modules.<name>]``
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: an internal service on a subdomain of each enabled domain (e.g. "conference" for
    #: ``conference.D``); its ``on="service"`` handlers go to that route's own handler table
    subdomain: ClassVar[str | None] = None
    #: disco identity of the service domain: (category, type, name); its name labels the service in
    #: the parent domain's disco#items (the service answers disco#info itself, ``on="service"``)
    service_identity: ClassVar[tuple[str, str, str | None] | None] = None

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self.log = ctx.log
        self.options: Any = ctx.options

    @property
    def storage(self) -> Storage:
        return self.ctx.storage

    async def start(self) -> None:
        """Called once the module's handlers are registered and storage is open."""

    async def stop(self) -> None:
        """Called when the module stops (at shutdown, or unloaded at run time), before its handlers
        are removed."""

    def declared(self) -> Declared:
        """Handlers declared with the decorators on this instance."""
        d = Declared()
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            if not callable(fn):
                continue
            bound = getattr(self, attr)
            for t, nsuri, name, to, on in getattr(fn, "_rookery_iq", ()):
                d.iqs.append(((t, nsuri, name, to), on, bound))
            for event, prio, on in getattr(fn, "_rookery_hooks", ()):
                d.hooks.append((event, prio, on, bound))
            prio = getattr(fn, "_rookery_filter", None)
            if prio is not None:
                d.filters.append((prio, bound))
            for qn in getattr(fn, "_rookery_elements", ()):
                d.elements.append((qn, bound))
        return d


class Declared:
    __slots__ = ("iqs", "hooks", "filters", "elements")

    def __init__(self) -> None:
        self.iqs: list[tuple[tuple[str, str, str, str], str, Callable[..., Any]]] = []
        self.hooks: list[tuple[str, int, str, Callable[..., Any]]] = []
        self.filters: list[tuple[int, Callable[..., Any]]] = []
        self.elements: list[tuple[str, Callable[..., Any]]] = []
