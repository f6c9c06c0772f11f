"""The HTTP side: one aiohttp application on ``[http] listen`` (plain) and ``[http] tls_listen`` (HTTPS),
sharing the event loop with the XMPP listeners (docs/http.md).

Routes are added and removed at run time (modules start and stop), so the application has a single
catch-all route that dispatches through ``HTTPService``'s own table: exact paths by one dict lookup,
then path prefixes, longest first.  Each registration returns a function that removes it (the module
API wraps it in a ``Handle``).

CORS (the Fetch standard's CORS protocol): routes registered with ``cors=True`` answer preflight
``OPTIONS`` themselves and carry ``Access-Control-Allow-Origin`` for the origins in
``[http] cors_origins`` (web clients on other origins: BOSH, WebSocket discovery, upload).

This module imports nothing of Rookery's: it is a transport, like ``transports/tcp.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from .tcp import parse_listen

log = logging.getLogger(__name__)
access_log = logging.getLogger("rookery.http.access")

HTTPHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))


@dataclass
class _Route:
    path: str
    prefix: bool
    cors: bool
    handlers: dict[str, HTTPHandler] = field(default_factory=dict)


class HTTPService:
    """The server's HTTP listeners and their routes."""

    def __init__(self, *, max_request_size: int = 1 << 20, cors_origins: Iterable[str] = ("*",),
                 public_url: str | None = None, secure_loopback: bool = True) -> None:
        self.max_request_size = max_request_size
        self.secure_loopback = secure_loopback
        self.cors_origins = frozenset(cors_origins)
        self.public_url = public_url.rstrip("/") if public_url else None
        self._exact: dict[str, _Route] = {}
        self._prefixes: list[_Route] = []  # longest first
        self._runner: web.AppRunner | None = None
        #: bound addresses: {"http": [(host, port)], "https": [...]}
        self.addresses: dict[str, list[tuple[str, int]]] = {}

    # -- routes ------------------------------------------------------------------------------
    def add_route(self, method: str, path: str, handler: HTTPHandler, *, prefix: bool = False,
                  cors: bool = False) -> Callable[[], None]:
        """Serve ``method`` requests for ``path`` (every path under it when ``prefix``; ``path`` then
        ends with "/") with ``handler``.  ``GET`` also answers ``HEAD``.  Returns the remover.
        ``ValueError`` when the same method and path are taken."""
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unknown HTTP method {method!r}")
        if not path.startswith("/"):
            raise ValueError(f"HTTP path must start with '/': {path!r}")
        if prefix and not path.endswith("/"):
            raise ValueError(f"a prefix route ends with '/': {path!r}")
        route = self._exact.get(path) if not prefix else next((r for r in self._prefixes if r.path == path), None)
        if route is None:
            route = _Route(path, prefix, cors)
            if prefix:
                self._prefixes.append(route)
                self._prefixes.sort(key=lambda r: len(r.path), reverse=True)
            else:
                self._exact[path] = route
        if method in route.handlers:
            raise ValueError(f"HTTP {method} {path} is already served")
        route.handlers[method] = handler
        route.cors = route.cors or cors

        def remove() -> None:
            if route.handlers.get(method) is not handler:
                return
            del route.handlers[method]
            if not route.handlers:
                if prefix:
                    if route in self._prefixes:
                        self._prefixes.remove(route)
                elif self._exact.get(path) is route:
                    del self._exact[path]

        return remove

    def _find(self, path: str) -> _Route | None:
        route = self._exact.get(path)
        if route is not None:
            return route
        for r in self._prefixes:
            if path.startswith(r.path):
                return r
        return None

    def base_url(self, secure: bool = True) -> str:
        """The URL clients use to reach us: ``[http] public_url`` (behind a reverse proxy), else the
        first bound HTTPS (or plain) address."""
        if self.public_url:
            return self.public_url
        order = ("https", "http") if secure else ("http", "https")
        for scheme in order:
            for host, port in self.addresses.get(scheme, []):
                shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1", "::1") else host
                if ":" in shown:
                    shown = f"[{shown}]"
                return f"{scheme}://{shown}:{port}"
        return "http://localhost:5280"

    def is_secure(self, request: web.Request) -> bool:
        """The request came over HTTPS, or from a loopback address when ``secure_loopback`` (the
        traffic never left the host: a local client, or a TLS-terminating reverse proxy on it)."""
        if request.secure:
            return True
        if not self.secure_loopback:
            return False
        try:
            return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
        except ValueError:
            return False

    # -- dispatch ----------------------------------------------------------------------------
    def _cors_headers(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        if "*" in self.cors_origins:
            allowed = "*"
        elif origin in self.cors_origins:
            allowed = origin
        else:
            return {}
        headers = {"Access-Control-Allow-Origin": allowed}
        if allowed != "*":
            headers["Vary"] = "Origin"
        return headers

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = self._find(request.path)
        if route is None:
            raise web.HTTPNotFound()
        method = request.method
        handler = route.handlers.get(method)
        if handler is None and method == "HEAD":
            handler = route.handlers.get("GET")
        cors = self._cors_headers(request) if route.cors else {}
        if handler is None:
            if method == "OPTIONS" and route.cors:  # a CORS preflight
                allow = ", ".join(sorted({*route.handlers, "OPTIONS"}))
                asked = request.headers.get("Access-Control-Request-Headers", "Content-Type")
                return web.Response(status=204, headers={
                    **cors, "Access-Control-Allow-Methods": allow, "Access-Control-Allow-Headers": asked,
                    "Access-Control-Max-Age": "86400", "Allow": allow})
            raise web.HTTPMethodNotAllowed(method, sorted(route.handlers))
        response = await handler(request)
        if cors and not response.prepared:
            for k, v in cors.items():
                response.headers.setdefault(k, v)
        return response

    @web.middleware
    async def _log(self, request: web.Request, handler: HTTPHandler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug("%s %s %s -> %d", request.remote, request.method, request.path_qs, e.status)
            raise
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s %s %s -> %d", request.remote, request.method, request.path_qs, response.status)
        return response

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, listen: list[str], tls_listen: list[str], ssl_ctx: ssl.SSLContext | None) -> None:
        if not listen and not tls_listen:
            return
        app = web.Application(client_max_size=self.max_request_size, middlewares=[self._log])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        for scheme, specs, ctx in (("http", listen, None), ("https", tls_listen, ssl_ctx)):
            for spec in specs:
                host, port = parse_listen(spec)
                site = web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True)
                try:
                    await site.start()
                except OSError as e:
                    await self.stop()
                    raise OSError(f"cannot listen on {spec} ({scheme}): {e.strerror or e}") from None
                server = site._server
                for sock in getattr(server, "sockets", None) or ():
                    addr = sock.getsockname()
                    self.addresses.setdefault(scheme, []).append((addr[0], addr[1]))
                    log.info("%s listening on %s:%s", scheme, addr[0], addr[1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                await asyncio.wait_for(runner.cleanup(), 5)
            except TimeoutError:
                log.warning("HTTP listeners did not stop within 5 s")
