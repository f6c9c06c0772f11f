"""File transfer throughput over loopback: XEP-0363 HTTP upload (PUT and GET of one large file) and the
XEP-0065 SOCKS5 proxy's relay.

    .venv/bin/python bench/transfer_bench.py                  # 100 MB upload, 200 MB through the proxy
    .venv/bin/python bench/transfer_bench.py --upload-mb 100 --proxy-mb 500 --repeat 3

A Rookery server runs as its own process (``rookery serve``, fresh data directory, free loopback
ports; pinned to CPU ``--server-cpu`` when given) and this process is the client:

* upload — an XMPP session asks ``upload.localhost`` for a slot, then aiohttp PUTs the file (sent
  from memory in 1 MiB chunks) and GETs it back (read and discarded in 1 MiB chunks), over plain HTTP
  and over HTTPS; MB/s = 10^6 bytes per second, wall clock of the HTTP request alone.
* proxy — two SOCKS5 connections with the same hash, the activation iq from the initiator's session,
  then the initiator writes ``--proxy-mb`` MB and the target reads it all: MB/s of that relay.

Reported: the median of ``--repeat`` runs for each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

MB = 1_000_000
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class XMPP:
    """Just enough of a client: plain c2s (loopback benchmark), SASL PLAIN, bind, iq round trips."""

    async def login(self, port: int, user: str, password: str) -> XMPP:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", port)
        header = ("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
        self.w.write(header.encode())
        await self.until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.w.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        assert b"<success" in await self.until(b"success", b"failure")
        self.w.write(header.encode())
        await self.until(b"</stream:features>")
        reply = await self.iq("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", "bind")
        m = re.search(r"<jid>([^<]+)</jid>", reply)
        assert m, reply
        self.jid = m.group(1)
        return self

    async def until(self, *marks: bytes) -> bytes:
        buf = b""
        while not any(m in buf for m in marks):
            data = await asyncio.wait_for(self.r.read(65536), 30)
            if not data:
                raise ConnectionError("server closed the stream")
            buf += data
        return buf

    async def iq(self, xml: str, iq_id: str) -> str:
        self.w.write(xml.encode())
        buf = b""
        while True:
            buf += await self.until(b"</iq>", b"/>")
            m = re.search(rf"<iq[^>]*id=['\"]{iq_id}['\"].*?(</iq>|/>)".encode(), buf, re.S)
            if m:
                return buf.decode()


def start_server(tmp: Path, ports: dict[str, int], size: int) -> subprocess.Popen[bytes]:
    cfg = tmp / "rookery.toml"
    cfg.write_text(f"""domains = ["localhost"]
data_dir = "{tmp / 'data'}"
log_level = "warning"
modules = ["roster", "presence", "disco", "ping", "upload", "proxy65"]
[c2s]
listen = ["127.0.0.1:{ports['c2s']}"]
direct_tls_listen = []
require_encryption = false
allow_plaintext_auth = true
max_bytes_per_second = 0
[http]
listen = ["127.0.0.1:{ports['http']}"]
tls_listen = ["127.0.0.1:{ports['https']}"]
[upload]
max_file_size = {size}
quota = 0
[proxy65]
listen = ["127.0.0.1:{ports['proxy']}"]
""")
    exe = [sys.executable, "-m", "rookery"]
    subprocess.run([*exe, "adduser", "bench@localhost", "-p", "secret", "-c", str(cfg)], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*exe, "adduser", "target@localhost", "-p", "secret", "-c", str(cfg)], check=True,
                   stdout=subprocess.DEVNULL)
    return subprocess.Popen([*exe, "serve", "-c", str(cfg)])


async def wait_port(port: int) -> None:
    for _ in range(300):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"port {port} never opened")


async def upload_once(c: XMPP, size: int, base: str, sslctx: ssl.SSLContext | None) -> tuple[float, float]:
    reply = await c.iq(f"<iq type='get' id='slot' to='upload.localhost'><request xmlns='urn:xmpp:http:upload:0' "
                       f"filename='big.bin' size='{size}' content-type='application/octet-stream'/></iq>", "slot")
    put = re.search(r"<put url=['\"]([^'\"]+)", reply)
    auth = re.search(r"<header name=['\"]Authorization['\"]>([^<]+)<", reply)
    assert put and auth, reply
    path = put.group(1).split("/", 3)[3]
    url = f"{base}/{path}"
    block = os.urandom(CHUNK)

    async def body():  # noqa: ANN202
        left = size
        while left > 0:
            yield block[:left] if left < CHUNK else block
            left -= CHUNK

    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        async with s.put(url, data=body(), ssl=sslctx if sslctx else False,
                         headers={"Authorization": auth.group(1), "Content-Length": str(size),
                                  "Content-Type": "application/octet-stream"}) as r:
            assert r.status == 201, r.status
        t_put = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = 0
        async with s.get(url, ssl=sslctx if sslctx else False) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_chunked(CHUNK):
                got += len(chunk)
        t_get = time.perf_counter() - t0
        assert got == size
    return size / MB / t_put, size / MB / t_get


async def socks(port: int, dest: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"\x05\x01\x00")
    assert await r.readexactly(2) == b"\x05\x00"
    w.write(bytes((5, 1, 0, 3, len(dest))) + dest + b"\x00\x00")
    head = await r.readexactly(5)
    assert head[1] == 0, head
    await r.readexactly(head[4] + 2)
    return r, w


async def proxy_once(c: XMPP, port: int, size: int, n: int) -> float:
    sid = f"bench{n}"
    target = "target@localhost/x"
    dest = hashlib.sha1(f"{sid}{c.jid}{target}".encode()).hexdigest().encode()
    tr, tw = await socks(port, dest)
    ir, iw = await socks(port, dest)
    reply = await c.iq(f"<iq type='set' id='act{n}' to='proxy.localhost'><query xmlns="
                       f"'http://jabber.org/protocol/bytestreams' sid='{sid}'><activate>{target}</activate>"
                       f"</query></iq>", f"act{n}")
    assert "type='result'" in reply or 'type="result"' in reply, reply
    block = os.urandom(CHUNK)

    async def send() -> None:
        left = size
        while left > 0:
            iw.write(block[:left] if left < CHUNK else block)
            left -= CHUNK
            await iw.drain()

    async def recv() -> int:
        got = 0
        while got < size:
            data = await tr.read(CHUNK)
            if not data:
                break
            got += len(data)
        return got

    t0 = time.perf_counter()
    _, got = await asyncio.gather(send(), recv())
    dt = time.perf_counter() - t0
    assert got == size, got
    iw.close()
    tw.close()
    return size / MB / dt


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upload-mb", type=int, default=100)
    ap.add_argument("--proxy-mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--server-cpu", type=int, default=None, help="pin the server to this CPU (taskset)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rookery-transfer-"))
    ports = {k: free_port() for k in ("c2s", "http", "https", "proxy")}
    size = args.upload_mb * MB
    proc = start_server(tmp, ports, size)
    if args.server_cpu is not None:
        subprocess.run(["taskset", "-pc", str(args.server_cpu), str(proc.pid)], stdout=subprocess.DEVNULL)
    try:
        for p in ports.values():
            await wait_port(p)
        c = await XMPP().login(ports["c2s"], "bench", "secret")
        sslctx = ssl.create_default_context()
        sslctx.check_hostname = False
        sslctx.verify_mode = ssl.CERT_NONE
        results: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for label, base, ctx in (("http", f"http://127.0.0.1:{ports['http']}", None),
                                     ("https", f"https://127.0.0.1:{ports['https']}", sslctx)):
                put, get = await upload_once(c, size, base, ctx)
                results.setdefault(f"upload PUT {args.upload_mb} MB ({label})", []).append(put)
                results.setdefault(f"upload GET {args.upload_mb} MB ({label})", []).append(get)
        for n in range(args.repeat):
            results.setdefault(f"proxy65 relay {args.proxy_mb} MB", []).append(
                await proxy_once(c, ports["proxy"], args.proxy_mb * MB, n))
        print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')}  cpus: {os.cpu_count()}  load: "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])}  median of {args.repeat}")
        for k, v in results.items():
            print(f"{k:34s} {statistics.median(v):8.1f} MB/s   (runs: {', '.join(f'{x:.0f}' for x in v)})")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
