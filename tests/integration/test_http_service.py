"""The HTTP side's seam (transports/http.py): routes added and removed at run time through the module
API, CORS, HTTPS with the server's certificate, errors for unknown paths and methods."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
from aiohttp import web

from rookery.config import Config, ConfigError, load_config
from rookery.module import Module


class Hello(Module):
    name = "hello_http"

    async def start(self) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="hello " + request.path)

        async def echo(request: web.Request) -> web.Response:
            return web.Response(body=await request.read())

        self.ctx.http_route("GET", "/hello", hello, cors=True)
        self.ctx.http_route("POST", "/hello", echo, cors=True)
        self.ctx.http_route("GET", "/files/", hello, prefix=True)


def _get(url: str, method: str = "GET", **kw) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:
            return r.status, dict(r.headers), await r.read()

    return asyncio.run(go())


@pytest.fixture
def server(rookery_server_factory):
    srv = rookery_server_factory(http={"max_request_size": 2048})
    srv.call(srv.server.modules.start_module, Hello)
    return srv


def test_routes_methods_and_not_found(server) -> None:
    base = server.http_url
    assert _get(base + "/hello")[0] == 200
    assert _get(base + "/hello", "HEAD")[0] == 200
    status, _, body = _get(base + "/hello", "POST", data=b"abc")
    assert (status, body) == (200, b"abc")
    assert _get(base + "/files/a/b.txt")[0] == 200
    assert _get(base + "/nothing")[0] == 404
    status, headers, _ = _get(base + "/hello", "DELETE")
    assert status == 405 and "GET" in headers["Allow"]


def test_request_size_limit(server) -> None:
    assert _get(server.http_url + "/hello", "POST", data=b"x" * 4096)[0] == 413


def test_cors_preflight_and_headers(server) -> None:
    status, headers, _ = _get(server.http_url + "/hello", "OPTIONS",
                              headers={"Origin": "https://web.example", "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    _, headers, _ = _get(server.http_url + "/hello", headers={"Origin": "https://web.example"})
    assert headers["Access-Control-Allow-Origin"] == "*"
    # a route without cors: no CORS headers, no preflight
    status, headers, _ = _get(server.http_url + "/files/x", "OPTIONS", headers={"Origin": "https://web.example"})
    assert status == 405 and "Access-Control-Allow-Origin" not in headers


def test_module_stop_removes_its_routes(server) -> None:
    assert _get(server.http_url + "/hello")[0] == 200
    server.call(server.server.modules.stop_module, "hello_http")
    assert _get(server.http_url + "/hello")[0] == 404
    assert _get(server.http_url + "/files/a")[0] == 404


def test_https_with_server_certificate(server) -> None:
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    ctx.check_hostname = False
    status, _, body = _get(f"https://127.0.0.1:{server.https_port}/hello", ssl=ctx)
    assert (status, body) == (200, b"hello /hello")


def test_config_admins_and_module_sections(tmp_path) -> None:
    cfg = Config.model_validate({"admins": ["Admin@Localhost"], "contact_info": {"admin": ["mailto:a@b.c"]}})
    assert cfg.admins == ["admin@localhost"]
    assert cfg.options_of("contact_info") == {"admin": ["mailto:a@b.c"]}
    p = tmp_path / "bad.toml"
    p.write_text('admins = ["a@b/c"]\n')
    with pytest.raises(ConfigError, match="admins"):
        load_config(str(p))
    p.write_text('[contact_info]\nbogus = 1\n')
    with pytest.raises(ConfigError, match="contact_info.bogus: unknown key"):
        load_config(str(p))
    p.write_text('[http]\npublic_url = "chat.example.org"\n')
    with pytest.raises(ConfigError, match="http.public_url"):
        load_config(str(p))
