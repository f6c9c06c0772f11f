"""XEP-0156 discovery (modules/http_discovery.py): host-meta as XRD and JSON, announcing the WebSocket
and BOSH endpoints (at [http] public_url when set), with CORS; and the web client's page."""

from __future__ import annotations

import asyncio
import json
from xml.etree.ElementTree import fromstring

import aiohttp

XRD = "{http://docs.oasis-open.org/ns/xri/xrd-1.0}"


def _get(url: str, **kw) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
            return r.status, dict(r.headers), await r.read()

    return asyncio.run(go())


def test_host_meta_xrd_and_json(rookery_server):
    base = rookery_server.http_url
    status, headers, body = _get(base + "/.well-known/host-meta", headers={"Origin": "https://app.example"})
    assert status == 200 and headers["Content-Type"].startswith("application/xrd+xml")
    assert headers["Access-Control-Allow-Origin"] == "*"
    links = {ln.get("rel"): ln.get("href") for ln in fromstring(body).iter(XRD + "Link")}
    port = rookery_server.https_port
    assert links == {"urn:xmpp:alt-connections:websocket": f"wss://localhost:{port}/xmpp-websocket",
                     "urn:xmpp:alt-connections:xbosh": f"https://localhost:{port}/http-bind"}
    status, headers, body = _get(base + "/.well-known/host-meta.json", headers={"Origin": "https://app.example"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert {ln["rel"]: ln["href"] for ln in json.loads(body)["links"]} == links


def test_host_meta_honours_public_url_and_loaded_modules(rookery_server_factory):
    srv = rookery_server_factory(http={"public_url": "https://chat.example.org"})
    _, _, body = _get(srv.http_url + "/.well-known/host-meta.json")
    links = {ln["rel"]: ln["href"] for ln in json.loads(body)["links"]}
    assert links == {"urn:xmpp:alt-connections:websocket": "wss://chat.example.org/xmpp-websocket",
                     "urn:xmpp:alt-connections:xbosh": "https://chat.example.org/http-bind"}
    srv.call(srv.server.modules.stop_module, "bosh")
    _, _, body = _get(srv.http_url + "/.well-known/host-meta.json")
    assert [ln["rel"] for ln in json.loads(body)["links"]] == ["urn:xmpp:alt-connections:websocket"]
    assert _get(srv.http_url + "/http-bind")[0] == 404


def test_web_client_page_and_assets(rookery_server):
    status, headers, body = _get(rookery_server.http_url + "/")
    if status == 503:  # npm ci --prefix web has not run (make test runs it)
        assert b"npm ci" in body
        return
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert '"default_domain": "localhost"' in page and '"websocket_path": "/xmpp-websocket"' in page
    status, headers, _ = _get(rookery_server.http_url + "/converse/converse.min.js")
    assert status == 200 and "javascript" in headers["Content-Type"]
    assert _get(rookery_server.http_url + "/converse/../../package.json")[0] == 404
    assert _get(rookery_server.http_url + "/converse/%2e%2e/%2e%2e/package.json")[0] == 404
    assert _get(rookery_server.http_url + "/converse/nothing.js")[0] == 404


def test_web_client_off(rookery_server_factory):
    srv = rookery_server_factory(http={"web_client": False})
    assert _get(srv.http_url + "/")[0] == 404
    assert "web_client" not in srv.server.modules.modules
