"""XEP-0156: Discovering Alternative XMPP Connection Methods (HTTP lookup): ``/.well-known/host-meta``
(XRD, RFC 6415) and ``/.well-known/host-meta.json`` announce the WebSocket (RFC 7395) and BOSH
(XEP-0206) endpoints of the loaded ``websocket`` and ``bosh`` modules, at ``[http] public_url`` when
it is set (behind a reverse proxy).  CORS is on, so web clients on other origins can read them.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..module import Module
from ..xml.serializer import escape_attr

XRD = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
REL_WEBSOCKET = "urn:xmpp:alt-connections:websocket"
REL_BOSH = "urn:xmpp:alt-connections:xbosh"


class HTTPDiscovery(Module):
    name = "http_discovery"

    async def start(self) -> None:
        self.ctx.http_route("GET", "/.well-known/host-meta", self.host_meta, cors=True)
        self.ctx.http_route("GET", "/.well-known/host-meta.json", self.host_meta_json, cors=True)

    def links(self) -> list[tuple[str, str]]:
        """(rel, href) of each endpoint now served."""
        out = []
        if self.ctx.has_service("websocket"):
            out.append((REL_WEBSOCKET, self.ctx.service("websocket").url()))
        if self.ctx.has_service("bosh"):
            out.append((REL_BOSH, self.ctx.service("bosh").url()))
        return out

    async def host_meta(self, request: web.Request) -> web.Response:
        links = "".join(f"\n  <Link rel='{rel}' href='{escape_attr(href)}'/>" for rel, href in self.links())
        body = f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{XRD}'>{links}\n</XRD>\n"
        return web.Response(text=body, content_type="application/xrd+xml", charset="utf-8")

    async def host_meta_json(self, request: web.Request) -> web.Response:
        body = {"links": [{"rel": rel, "href": href} for rel, href in self.links()]}
        return web.Response(text=json.dumps(body, indent=1) + "\n", content_type="application/json")
