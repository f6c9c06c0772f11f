"""The domain route table (RFC 6120 §10.4, §10.5): who serves a domain.

``routes[domain]`` is one of
* ``LOCAL``: a domain whose accounts live here (``domains`` in the configuration);
* ``SERVICE``: an internal service on a subdomain (``conference.D``, ``pubsub.D``, ``upload.D`` …), a
  component object inside this process with its own ``HandlerTable``;
* ``COMPONENT``: an external component connection (XEP-0114), which the route forwards to;
* ``REMOTE``: any other domain — the s2s pool when federation is enabled, else the router answers
  ``<remote-server-not-found/>`` (RFC 6120 §10.4.3).

Local and service routes dispatch through their ``HandlerTable``; component and remote routes hand
the stanza to their ``forward`` callable.  Registration returns a ``Handle``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..stanza import Stanza
from .hooks import Handle, HandlerTable, register

LOCAL = "local"
SERVICE = "service"
COMPONENT = "component"
REMOTE = "remote"

Forward = Callable[[Stanza], "Awaitable[Any] | None"]


class Route:
    __slots__ = ("domain", "kind", "table", "forward", "name")

    def __init__(self, domain: str, kind: str, table: HandlerTable | None = None,
                 forward: Forward | None = None, name: str = "") -> None:
        self.domain = domain
        self.kind = kind
        self.table = table
        self.forward = forward
        self.name = name  # the service's name (e.g. "muc") for SERVICE routes

    def __repr__(self) -> str:
        return f"<Route {self.kind} {self.domain or '*'}>"


class RouteTable:
    """domain -> ``Route``; ``get`` falls back to the remote route."""

    __slots__ = ("_routes", "remote")

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self.remote = Route("", REMOTE)  # mutated in place by set_remote: it is never replaced

    @property
    def by_domain(self) -> dict[str, Route]:
        """The table itself (read only): the router's hot path looks domains up here directly."""
        return self._routes

    def get(self, domain: str) -> Route:
        return self._routes.get(domain) or self.remote

    def is_local(self, domain: str) -> bool:
        r = self._routes.get(domain)
        return r is not None and r.kind == LOCAL

    def _add(self, route: Route) -> Handle:
        return register(self._routes, route.domain, route, f"route {route.domain}")

    def add_local(self, domain: str, table: HandlerTable) -> Handle:
        return self._add(Route(domain, LOCAL, table=table))

    def add_service(self, domain: str, name: str, table: HandlerTable) -> Handle:
        return self._add(Route(domain, SERVICE, table=table, name=name))

    def add_component(self, domain: str, forward: Forward) -> Handle:
        return self._add(Route(domain, COMPONENT, forward=forward))

    def set_remote(self, forward: Forward) -> Handle:
        """Federation: where stanzas to every unrouted domain go (the s2s pool)."""
        if self.remote.forward is not None:
            raise ValueError("remote domains are already routed")
        self.remote.forward = forward

        def undo() -> None:
            if self.remote.forward is forward:
                self.remote.forward = None

        return Handle(undo, "route remote")
