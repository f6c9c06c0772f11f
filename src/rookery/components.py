"""External components (XEP-0114): the configured component domains, their routes, their streams.

``Components`` is the ``ComponentHost`` of ``streams.component.ComponentStream`` (wiring, like
``server.py``: it knows the route table and the stream kind).  For each domain in
``[components] secrets`` it keeps a ``COMPONENT`` route in the route table for the server's whole
life, so a component domain never falls through to the remote route (the s2s pool, DNS):

* while no component is connected, the route bounces what is sent to the domain with
  ``<service-unavailable/>`` of type ``wait`` (RFC 6120 §8.3.3.19: the service is hosted here and
  is not available now; ``remote-server-not-found`` is for domains the server cannot reach,
  §10.4.3, and this one is not remote).  Errors, iq results and presence of type ``unavailable`` or
  ``probe`` are never answered with an error (RFC 6120 §8.3.1, RFC 6121 §4.3.2);
* once a component authenticated, the route's ``forward`` is the stream's own ``forward`` (the
  placeholder's ``Handle`` is removed and ``RouteTable.add_component(domain, stream.forward)``
  registered); when the stream closes that ``Handle`` is removed and the placeholder comes back.

A second component for a connected domain is refused with ``<conflict/>`` (after its handshake, so
an unauthenticated peer learns nothing).  Connected component domains are listed in the server's
disco#items (the ``disco-items`` fold): under each served domain they are a subdomain of, or under
every served domain when they are a subdomain of none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import ConfigError
from .routing.hooks import EventBus, Handle
from .routing.routes import RouteTable
from .stanza import Stanza
from .streams.auth_limits import AuthFailureLimiter
from .streams.component import ComponentStream

log = logging.getLogger(__name__)

Route = Callable[[Stanza], "Awaitable[Any] | None"]
Reply = Callable[[Stanza, Any], None]


class Components:
    """The ``ComponentHost`` (``streams.component``): secrets, routes and streams of components."""

    def __init__(self, secrets: dict[str, str], local_domains: list[str], routes: RouteTable, events: EventBus,
                 route: Route, reply: Reply, spawn: Callable[[Awaitable[Any]], Any],
                 limiter: AuthFailureLimiter | None = None) -> None:
        self.secrets = dict(secrets)
        self.local_domains = list(local_domains)
        self.routes = routes
        self.events = events
        self._route = route
        self._reply = reply
        self._spawn = spawn
        self._limiter = limiter  # failed handshakes count with failed logins ([c2s] max_auth_failures_per_ip)
        #: every component stream, authenticated or not (closed at shutdown)
        self.streams: set[ComponentStream] = set()
        #: domain -> the authenticated stream serving it
        self.connected: dict[str, ComponentStream] = {}
        self._handles: dict[str, Handle] = {}  # domain -> its current route (placeholder or stream)
        self._disco: Handle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def install(self) -> None:
        """Route every configured domain (to the placeholder); list connected ones in disco#items.
        ``ConfigError`` when a domain is already routed (an internal service's subdomain)."""
        for domain in self.secrets:
            try:
                self._handles[domain] = self.routes.add_component(domain, self._unavailable)
            except ValueError:
                self.uninstall()
                raise ConfigError(f"components.secrets: {domain} is already served by this server "
                                  "(a local domain or an internal service)") from None
        if self.secrets:
            self._disco = self.events.on("disco-items", self._disco_items)

    def close_all(self, condition: str = "system-shutdown", text: str | None = None) -> None:
        for s in list(self.streams):
            s.close(condition, text)

    def uninstall(self) -> None:
        for h in self._handles.values():
            h.remove()
        self._handles.clear()
        if self._disco is not None:
            self._disco.remove()
            self._disco = None

    def keepalive(self) -> None:
        for s in list(self.connected.values()):
            s.keepalive()

    def status(self) -> list[dict[str, Any]]:
        """The connected components, for operators: domain, peer address, since, stanza counts."""
        return [{"domain": d, "ip": s.peer_ip, "since": s.since, "stanzas_in": s.stanzas_in,
                 "stanzas_out": s.stanzas_out} for d, s in sorted(self.connected.items())]

    # -- ComponentHost -----------------------------------------------------------------------
    @property
    def default_domain(self) -> str:
        return self.local_domains[0]

    def secret_of(self, domain: str) -> str | None:
        return self.secrets.get(domain)

    def handshake_blocked(self, ip: str) -> bool:
        return self._limiter is not None and self._limiter.blocked(ip)

    def handshake_failed(self, ip: str) -> None:
        if self._limiter is not None:
            self._limiter.failed(ip)

    def authenticated(self, stream: ComponentStream) -> tuple[str, str | None] | None:
        domain = stream.domain
        if domain in self.connected:
            log.warning("component %s from %s refused: that domain is already connected", domain, stream.peer_ip)
            return "conflict", "a component is already connected for this domain"
        old = self._handles.pop(domain, None)
        if old is not None:
            old.remove()
        try:
            self._handles[domain] = self.routes.add_component(domain, stream.forward)
        except ValueError:  # routed by someone else since start-up
            return "conflict", "this domain is served by something else"
        self.connected[domain] = stream
        stream.since = time.time()
        log.info("component %s connected from %s", domain, stream.peer_ip)
        return None

    def route(self, st: Stanza) -> Awaitable[Any] | None:
        return self._route(st)

    def stream_started(self, stream: ComponentStream) -> None:
        self.streams.add(stream)

    def stream_ended(self, stream: ComponentStream) -> None:
        self.streams.discard(stream)
        domain = stream.domain
        if not stream.authenticated or self.connected.get(domain) is not stream:
            return
        del self.connected[domain]
        h = self._handles.pop(domain, None)
        if h is not None:
            h.remove()
        if domain in self.secrets:  # back to the placeholder: the domain stays ours
            self._handles[domain] = self.routes.add_component(domain, self._unavailable)
        log.info("component %s disconnected (%d stanzas in, %d out)", domain, stream.stanzas_in, stream.stanzas_out)

    def spawn(self, coro: Awaitable[Any]) -> Any:
        return self._spawn(coro)

    # -- routes ------------------------------------------------------------------------------
    def _unavailable(self, st: Stanza) -> None:
        """The route of a configured component that is not connected (see the module docstring)."""
        t = st.type
        if t == "error" or t == "result" or (st.kind == "presence" and t in ("unavailable", "probe")):
            return
        self._reply(st, st.error("service-unavailable", "the component is not connected", "wait"))

    def _disco_items(self, items: list[Any], host: str) -> list[Any]:
        """XEP-0030 §4.1: the connected components, among the server's items."""
        out = list(items)
        for domain in sorted(self.connected):
            parents = [d for d in self.local_domains if domain.endswith("." + d)]
            if host in parents or not parents:
                out.append((domain, None))
        return out
