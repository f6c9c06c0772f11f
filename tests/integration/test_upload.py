"""XEP-0363 HTTP File Upload against a real server: slots requested over XMPP (raw XML and slixmpp's
xep_0363 plugin), files PUT and GET over real HTTPS with aiohttp, and every kind of bad input —
expired, forged and replayed tokens, sizes and types that do not match the slot, files over the size
limit or the quota, path traversal in names, unknown files, requests from other servers — plus the
expiry clean-up."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

import aiohttp
import pytest
from xmpp_helpers import RawClient, disconnect, error_condition, slix_client, tls_login

from rookery.jid import JID
from rookery.stanza import Stanza, StanzaError
from rookery.testing import RunningServer

NS = "urn:xmpp:http:upload:0"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
C = "{jabber:client}"
MiB = 1024 * 1024
MAX = 3 * MiB
QUOTA = 4 * MiB


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    d = tempfile.mkdtemp(prefix="rookery-test-")
    s = RunningServer({"upload": {"max_file_size": MAX, "quota": QUOTA}}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def _ssl(server: RunningServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.cert_path))
    ctx.check_hostname = False
    return ctx


async def _slot(c: RawClient, filename: str, size: int | str, ctype: str | None = "application/octet-stream",
                to: str = "upload.localhost") -> Element:
    ct = f" content-type={quoteattr(ctype)}" if ctype else ""
    return await c.iq(f"<iq type='get' id='s1' to='{to}'><request xmlns='{NS}' filename={quoteattr(filename)} "
                      f"size='{size}'{ct}/></iq>")


def _urls(reply: Element) -> tuple[str, dict[str, str], str]:
    assert reply.get("type") == "result", reply.attrib
    slot = reply.find(f"{{{NS}}}slot")
    assert slot is not None
    put, get = slot.find(f"{{{NS}}}put"), slot.find(f"{{{NS}}}get")
    assert put is not None and get is not None
    headers = {h.get("name", ""): h.text or "" for h in put.findall(f"{{{NS}}}header")}
    return put.get("url", ""), headers, get.get("url", "")


async def _request(server: RunningServer, method: str, url: str, **kw) -> tuple[int, dict[str, str], bytes]:  # noqa: ANN003
    async with aiohttp.ClientSession() as s, s.request(method, url, ssl=_ssl(server), **kw) as r:
        return r.status, dict(r.headers), await r.read()


async def _user(server: RunningServer) -> RawClient:
    jid, pw = server.make_user()
    return await tls_login(server, jid, pw)


async def test_disco_lists_service_with_max_file_size(server) -> None:
    c = await _user(server)
    items = await c.iq(f"<iq type='get' id='i' to='localhost'><query xmlns='{DISCO_ITEMS}'/></iq>")
    jids = {i.get("jid"): i.get("name") for i in items.iter(f"{{{DISCO_ITEMS}}}item")}
    assert jids.get("upload.localhost") == "HTTP File Upload"
    info = await c.iq(f"<iq type='get' id='d' to='upload.localhost'><query xmlns='{DISCO_INFO}'/></iq>")
    ident = info.find(f".//{{{DISCO_INFO}}}identity")
    assert ident is not None and (ident.get("category"), ident.get("type")) == ("store", "file")
    assert NS in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in info.iter("{jabber:x:data}field")}
    assert fields == {"FORM_TYPE": NS, "max-file-size": str(MAX)}
    await c.close()


async def test_slixmpp_slot_put_and_get_one_mib_byte_identical(server) -> None:
    jid, pw = server.make_user()
    c = await slix_client(server, jid, pw, plugins=("xep_0030", "xep_0363"), presence=False)
    try:
        data = os.urandom(MiB)
        slot = await c.plugin["xep_0363"].request_slot(JID.parse("upload.localhost").full, "photo.jpg", len(data),
                                                "image/jpeg")
        put_url = slot["http_upload_slot"]["put"]["url"]
        get_url = slot["http_upload_slot"]["get"]["url"]
        headers = {h["name"]: h["value"] for h in slot["http_upload_slot"]["put"]["headers"]}
        assert put_url.startswith("https://") and put_url.endswith("/photo.jpg")
        status, _, _ = await _request(server, "PUT", put_url, data=data,
                                      headers={**headers, "Content-Type": "image/jpeg"})
        assert status == 201
        status, h, body = await _request(server, "GET", get_url)
        assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        assert h["Content-Type"] == "image/jpeg"
        assert h["Content-Disposition"].startswith('inline; filename="photo.jpg"')
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Content-Security-Policy"].startswith("default-src 'none'")
        status, h, body = await _request(server, "HEAD", get_url)
        assert status == 200 and body == b"" and h["Content-Length"] == str(MiB)
        status, _, body = await _request(server, "GET", get_url, headers={"Range": "bytes=10-19"})
        assert status == 206 and body == data[10:20]
    finally:
        await disconnect(c)


async def test_html_upload_is_served_as_an_octet_stream_attachment(server) -> None:
    c = await _user(server)
    page = b"<html><script>alert(1)</script></html>"
    put, headers, get = _urls(await _slot(c, "page.html", len(page), "text/html"))
    status, _, _ = await _request(server, "PUT", put, data=page, headers={**headers, "Content-Type": "text/html"})
    assert status == 201
    status, h, body = await _request(server, "GET", get)
    assert status == 200 and body == page
    assert h["Content-Type"] == "application/octet-stream"
    assert h["Content-Disposition"].startswith('attachment; filename="page.html"')
    assert h["X-Content-Type-Options"] == "nosniff"
    await c.close()


async def test_expired_token_is_refused(server) -> None:
    c = await _user(server)
    put, _, _ = _urls(await _slot(c, "a.bin", 10))
    mod = server.server.modules.modules["upload"]
    slot_id = put.split("/")[-2]
    old = mod.token(slot_id, 10, "application/octet-stream", int(time.time()) - 1)  # signed, but expired
    status, _, body = await _request(server, "PUT", put, data=b"x" * 10,
                                     headers={"Authorization": "Bearer " + old,
                                              "Content-Type": "application/octet-stream"})
    assert status == 403 and b"expired" in body
    await c.close()


async def test_forged_token_is_refused(server) -> None:
    c = await _user(server)
    put, headers, _ = _urls(await _slot(c, "a.bin", 10))
    exp, _, mac = headers["Authorization"].removeprefix("Bearer ").partition(".")
    for forged in (f"{int(exp) + 3600}.{mac}", f"{exp}.{'A' * len(mac)}", "", "Basic abc", "9" * 5000 + ".x",
                   f"{exp}.{mac}\u00e9", "\u0661\u0662.x"):
        status, _, _ = await _request(server, "PUT", put, data=b"x" * 10,
                                      headers={"Authorization": forged if forged.startswith("Basic") else
                                               "Bearer " + forged, "Content-Type": "application/octet-stream"})
        assert status == (401 if forged in ("", "Basic abc") else 403), forged
    # a valid token of one slot does not open another
    put2, _, _ = _urls(await _slot(c, "b.bin", 10))
    status, _, _ = await _request(server, "PUT", put2, data=b"x" * 10,
                                  headers={**headers, "Content-Type": "application/octet-stream"})
    assert status == 403
    await c.close()


async def test_replayed_put_is_refused(server) -> None:
    c = await _user(server)
    put, headers, get = _urls(await _slot(c, "once.txt", 5, "text/plain"))
    hdrs = {**headers, "Content-Type": "text/plain"}
    assert (await _request(server, "PUT", put, data=b"first", headers=hdrs))[0] == 201
    assert (await _request(server, "PUT", put, data=b"again", headers=hdrs))[0] == 409
    status, h, body = await _request(server, "GET", get)
    assert (status, body) == (200, b"first") and h["Content-Type"] == "text/plain"
    await c.close()


async def _partial_put(server: RunningServer, put: str, auth: str, size: int, sent: bytes):  # noqa: ANN202
    """A raw HTTPS PUT of ``size`` bytes that has sent only ``sent`` so far."""
    import asyncio
    from urllib.parse import urlsplit

    u = urlsplit(put)
    reader, writer = await asyncio.open_connection("127.0.0.1", u.port, ssl=_ssl(server), server_hostname="localhost")
    writer.write((f"PUT {u.path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n"
                  f"Content-Type: application/octet-stream\r\nAuthorization: {auth}\r\n\r\n").encode() + sent)
    await writer.drain()
    return reader, writer


def _parts(server: RunningServer) -> list[str]:
    return [p.name for p in server.server.modules.modules["upload"].dir.iterdir() if p.name.startswith(".part-")]


async def test_second_put_while_the_first_runs_is_refused(server) -> None:
    import asyncio

    c = await _user(server)
    put, headers, get = _urls(await _slot(c, "a.bin", 2000))
    reader, writer = await _partial_put(server, put, headers["Authorization"], 2000, b"a" * 1000)
    await asyncio.sleep(0.2)
    status, _, _ = await _request(server, "PUT", put, data=b"b" * 2000,
                                  headers={**headers, "Content-Type": "application/octet-stream"})
    assert status == 409
    writer.write(b"a" * 1000)
    assert b" 201 " in await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert (await _request(server, "GET", get))[2] == b"a" * 2000
    await c.close()


async def test_aborted_upload_leaves_no_partial_file_and_the_slot_usable(server) -> None:
    import asyncio

    c = await _user(server)
    put, headers, get = _urls(await _slot(c, "a.bin", 100_000))
    reader, writer = await _partial_put(server, put, headers["Authorization"], 100_000, b"a" * 50_000)
    await asyncio.sleep(0.2)
    assert _parts(server)
    writer.transport.abort()  # the client goes away mid-body
    for _ in range(100):
        if not _parts(server):
            break
        await asyncio.sleep(0.05)
    assert not _parts(server)
    assert (await _request(server, "GET", get))[0] == 404
    status, _, _ = await _request(server, "PUT", put, data=b"c" * 100_000,
                                  headers={**headers, "Content-Type": "application/octet-stream"})
    assert status == 201
    await c.close()


async def test_size_and_content_type_must_match_the_slot(server) -> None:
    c = await _user(server)
    put, headers, get = _urls(await _slot(c, "a.png", 100, "image/png"))
    ok = {**headers, "Content-Type": "image/png"}
    assert (await _request(server, "PUT", put, data=b"x" * 101, headers=ok))[0] == 413
    assert (await _request(server, "PUT", put, data=b"x" * 99, headers=ok))[0] == 400
    assert (await _request(server, "PUT", put, data=b"x" * 100,
                           headers={**headers, "Content-Type": "text/html"}))[0] == 400
    assert (await _request(server, "GET", get))[0] == 404  # nothing was stored
    assert not [p for p in server.server.modules.modules["upload"].dir.iterdir() if p.name.startswith(".part-")]
    assert (await _request(server, "PUT", put, data=b"x" * 100, headers=ok))[0] == 201
    await c.close()


async def test_file_over_max_file_size_gets_file_too_large_with_the_limit(server) -> None:
    c = await _user(server)
    reply = await _slot(c, "big.iso", MAX + 1)
    assert reply.get("type") == "error" and error_condition(reply) == "not-acceptable"
    limit = reply.find(f"{C}error/{{{NS}}}file-too-large/{{{NS}}}max-file-size")
    assert limit is not None and limit.text == str(MAX)
    await c.close()


async def test_quota_exceeded_is_resource_constraint(server) -> None:
    c = await _user(server)
    _urls(await _slot(c, "one.bin", MAX))
    reply = await _slot(c, "two.bin", QUOTA - MAX + 1)
    assert reply.get("type") == "error" and error_condition(reply) == "resource-constraint"
    err = reply.find(f"{C}error")
    assert err is not None and err.get("type") == "wait"
    assert err.find(f"{{{NS}}}retry") is not None
    _urls(await _slot(c, "three.bin", QUOTA - MAX))  # what is left still fits
    other = await _user(server)  # the quota is per user
    _urls(await _slot(other, "mine.bin", MAX))
    await c.close()
    await other.close()


def test_quota_and_tokens_survive_a_restart_of_the_module(server) -> None:
    import asyncio

    jid, pw = server.make_user()

    async def ask(size: int) -> Element:
        c = await tls_login(server, jid, pw)
        try:
            return await _slot(c, "f.bin", size)
        finally:
            await c.close()

    _urls(asyncio.run(ask(MAX)))
    put, headers, get = _urls(asyncio.run(ask(QUOTA - MAX)))
    server.call(server.server.modules.stop_module, "upload")
    server.call(server.server.modules.start_module, "upload")
    assert error_condition(asyncio.run(ask(1))) == "resource-constraint"
    # the token key comes from the server secret: a slot's PUT URL outlives a restart of the module
    data = b"z" * (QUOTA - MAX)
    status, _, _ = asyncio.run(_request(server, "PUT", put, data=data,
                                        headers={**headers, "Content-Type": "application/octet-stream"}))
    assert status == 201
    assert asyncio.run(_request(server, "GET", get))[2] == data


async def test_path_traversal_in_file_names_is_impossible(server) -> None:
    c = await _user(server)
    data = b"not a passwd"
    put, headers, get = _urls(await _slot(c, "../../../../etc/passwd", len(data), "text/plain"))
    assert "/etc/" not in put and put.endswith("/passwd")
    status, _, _ = await _request(server, "PUT", put, data=data, headers={**headers, "Content-Type": "text/plain"})
    assert status == 201
    upload_dir = server.server.modules.modules["upload"].dir
    assert {p.parent for p in upload_dir.rglob("*")} == {upload_dir}
    assert not (server.data_dir / "etc").exists()
    _, h, _ = await _request(server, "GET", get)
    assert 'filename="passwd"' in h["Content-Disposition"]
    for name in ("..\\..\\boot.ini", ".hidden", "a\u202eb\nc\t.txt"):
        put, _, _ = _urls(await _slot(c, name, 3, "text/plain"))
        tail = put.rsplit("/", 1)[1]
        assert ".." not in tail and "%E2%80%AE" not in tail and "%0A" not in tail and "%09" not in tail
        assert tail and not tail.startswith(".")
    # paths that try to leave the upload directory from the URL side
    base = server.http_url + "/upload/"
    for path in ("..%2F..%2Fsecret/x", "%2e%2e/%2e%2e/secret", "../rookery.sqlite", "secret"):
        async with aiohttp.ClientSession() as s, s.get(base + path) as r:
            assert r.status == 404, path
    await c.close()


async def test_get_of_unknown_file_is_404(server) -> None:
    for path in ("/upload/AAAAAAAAAAAAAAAAAAAAAAAA/x.txt", "/upload/", "/upload/short/x"):
        status, _, _ = await _request(server, "GET", f"https://127.0.0.1:{server.https_port}{path}")
        assert status == 404, path


def test_non_local_requester_is_forbidden(server) -> None:
    mod = server.server.modules.modules["upload"]
    el = Element("iq", {"type": "get", "id": "x", "to": "upload.localhost", "from": "eve@elsewhere.example/r"})
    el.append(Element(f"{{{NS}}}request", filename="a.txt", size="3"))
    st = Stanza(el, JID.parse("eve@elsewhere.example/r"), JID.parse("upload.localhost"))

    async def ask() -> str:
        try:
            await mod.request_slot(st)
        except StanzaError as e:
            return e.condition
        return "granted"

    assert server.call(ask) == "forbidden"


async def test_bad_slot_requests(server) -> None:
    c = await _user(server)
    for size in ("0", "-5", "abc", ""):
        reply = await _slot(c, "a.txt", size)
        assert error_condition(reply) == "bad-request", size
    reply = await _slot(c, "a.txt", 3, "not a type")
    assert error_condition(reply) == "bad-request"
    await c.close()


def test_expired_files_are_cleaned_up(rookery_server_factory) -> None:
    server = rookery_server_factory(upload={"expire_after": 1})
    import asyncio

    async def go() -> tuple[str, str]:
        c = await _user(server)
        put, headers, get = _urls(await _slot(c, "old.txt", 3, "text/plain"))
        assert (await _request(server, "PUT", put, data=b"old",
                               headers={**headers, "Content-Type": "text/plain"}))[0] == 201
        assert (await _request(server, "GET", get))[0] == 200
        await c.close()
        return put, get

    put, get = asyncio.run(go())
    mod = server.server.modules.modules["upload"]
    slot_id = put.split("/")[-2]
    assert (mod.dir / slot_id).exists()
    assert server.call(mod.clean_up, time.time() + 2) == 1
    assert not (mod.dir / slot_id).exists()
    assert asyncio.run(_request(server, "GET", get))[0] == 404
    assert server.call(mod.files.get, "", "", slot_id) is None
