"""The built-in web client: Converse.js (the npm package ``converse.js``, pinned in ``web/package.json``)
served at ``/`` on the ``[http]`` listeners, set up for this server's WebSocket endpoint (BOSH when
only that is loaded) and its first domain.  Off with ``[http] web_client = false``.

The files come from ``web/node_modules/converse.js/dist`` (``npm ci --prefix web``, which ``make run``
and ``make test`` do when it is missing) or the ``dist_dir`` option.  Without them ``/`` says how to
install them.  Assets are served under ``/converse/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from ..module import Module, Options
from ..xml.serializer import escape_text

#: the repository's web/ directory (a source checkout; an installed package sets dist_dir)
_WEB = Path(__file__).resolve().parents[3] / "web"
ASSETS = "/converse/"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" type="text/css" media="screen" href="{assets}converse.min.css">
<script type="module" src="{assets}converse.min.js"></script>
</head>
<body class="converse-fullscreen">
<noscript>This chat page needs JavaScript. Any XMPP client works too: connect to {domain}.</noscript>
<script type="module">
const settings = {settings};
const ws = settings.websocket_path;
delete settings.websocket_path;
if (ws) {{
  // same origin as this page unless [http] public_url says otherwise
  settings.websocket_url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + ws;
}}
converse.initialize(settings);
</script>
</body>
</html>
"""


class WebClientOptions(Options):
    #: the directory holding Converse.js's dist/ files (default: web/node_modules/converse.js/dist)
    dist_dir: str | None = None
    #: "fullscreen" (the whole page), "overlayed" or "embedded" (Converse.js view_mode)
    view_mode: str = "fullscreen"


class WebClient(Module):
    name = "web_client"
    Options = WebClientOptions

    async def start(self) -> None:
        o = self.options
        self.dist = Path(o.dist_dir) if o.dist_dir else _WEB / "node_modules" / "converse.js" / "dist"
        if not (self.dist / "converse.min.js").is_file():
            self.log.warning("web client files missing in %s: run `npm ci --prefix web` (make run does)", self.dist)
        self.ctx.http_route("GET", "/", self.index)
        self.ctx.http_route("GET", ASSETS, self.asset, prefix=True)

    def settings(self) -> dict[str, object]:
        domain = self.ctx.hosts[0]
        s: dict[str, object] = {
            "assets_path": ASSETS,
            "view_mode": self.options.view_mode,
            "default_domain": domain,
            "discover_connection_methods": False,
            "auto_reconnect": True,
            "play_sounds": False,
            "loglevel": "warn",
        }
        if self.ctx.has_service("websocket"):
            ws = self.ctx.service("websocket")
            if self._public():
                s["websocket_url"] = ws.url()
            else:
                s["websocket_path"] = ws.options.path
        elif self.ctx.has_service("bosh"):
            bosh = self.ctx.service("bosh")
            s["bosh_service_url"] = bosh.url() if self._public() else bosh.options.path
        return s

    def _public(self) -> bool:
        return not self.ctx.http_url("").startswith(("http://localhost:", "https://localhost:"))

    async def index(self, request: web.Request) -> web.Response:
        if not (self.dist / "converse.min.js").is_file():
            return web.Response(status=503, text="The web client is not installed: run `npm ci --prefix web` "
                                                   "in the Rookery source directory.\n")
        domain = self.ctx.hosts[0]
        settings = json.dumps(self.settings()).replace("<", "\\u003c")
        page = _PAGE.format(title=escape_text(f"Chat on {domain}"), assets=ASSETS, domain=escape_text(domain),
                            settings=settings)
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        rel = request.path[len(ASSETS):]
        root = self.dist.resolve()
        try:
            path = (root / rel).resolve()
        except (OSError, ValueError):
            raise web.HTTPNotFound() from None
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600",
                                               "X-Content-Type-Options": "nosniff"})
