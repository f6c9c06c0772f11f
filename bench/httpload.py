#!/usr/bin/env python3
"""Load generator for XMPP over HTTP (BOSH, XEP-0206; WebSocket, RFC 7395), for any server.

    python bench/httpload.py --base http://127.0.0.1:26280 --bosh 1000 --idle 10 --ws-pairs 50 \\
        --duration 10 --server-pid PID --json out.json

Phases:

1. **Idle BOSH sessions**: ``--bosh N`` sessions log in (SASL PLAIN, bind, initial presence) and each
   keeps one request held, as a browser does.  Reported: the server's RSS growth per session (RSS after
   the ramp less RSS before, over N), and the server's CPU use while those N sessions idle for
   ``--idle`` seconds (percent of one core; their held requests are answered every ``wait`` seconds).
2. **WebSocket throughput**: ``--ws-pairs P`` pairs of WebSocket clients (P*2 connections) log in; in each
   pair one client sends chat messages to the other for ``--duration`` seconds, with at most
   ``--window`` messages sent but not yet received per pair.  Reported: messages delivered per second
   and the server's CPU use.

Needs aiohttp (Rookery's own virtualenv has it).  Accounts ``--user`` (``bench{n}``) with ``--password``
must exist (bench/http.sh creates them).  Loopback only: PLAIN is sent in the clear over plain HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
import time
from xml.etree.ElementTree import fromstring

import aiohttp

HTTPBIND = "http://jabber.org/protocol/httpbind"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"


def rss_kib(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_s(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


class Bosh:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.rid = random.randrange(1 << 30, 1 << 40)
        self.sid = ""
        self.hold_task: asyncio.Task | None = None

    async def post(self, attrs: str, payload: str = "") -> bytes:
        self.rid += 1
        sid = f" sid='{self.sid}'" if self.sid else ""
        body = f"<body xmlns='{HTTPBIND}' rid='{self.rid}'{sid}{attrs}>{payload}</body>"
        async with self.http.post(self.url, data=body, headers={"Content-Type": "text/xml; charset=utf-8"}) as r:
            data = await r.read()
            if r.status != 200:
                raise RuntimeError(f"BOSH HTTP {r.status}: {data[:200]!r}")
            return data

    async def until(self, needle: bytes, first: bytes) -> bytes:
        data = first
        while needle not in data:
            if b"type='terminate'" in data or b'type="terminate"' in data:
                raise RuntimeError(f"BOSH session terminated: {data[:300]!r}")
            data = await self.post("")
        return data

    async def login(self, domain: str, user: str, password: str, wait: int) -> None:
        first = await self.post(f" to='{domain}' wait='{wait}' hold='1' ver='1.6' xml:lang='en' "
                                "xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'")
        self.sid = fromstring(first).get("sid") or ""
        await self.until(b"mechanisms", first)
        await self.until(b"success", await self.post("", f"<auth xmlns='{SASL}' mechanism='PLAIN'>"
                                                        f"{plain(user, password)}</auth>"))
        r = await self.post(f" to='{domain}' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'")
        await self.until(b"bind", r)
        await self.until(b"<jid", await self.post("", f"<iq xmlns='jabber:client' type='set' id='b'>"
                                                     f"<bind xmlns='{BIND}'/></iq>"))
        # initial presence; its answer (the presence echo) may come now or on the held request
        await self.post("", "<presence xmlns='jabber:client'/>")

    def hold(self) -> None:
        """Keep one request held, as a browser does (re-sent when the server answers it)."""
        async def loop() -> None:
            while True:
                await self.post("")
        self.hold_task = asyncio.ensure_future(loop())


class WS:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.ws: aiohttp.ClientWebSocketResponse
        self.jid = ""

    async def recv_until(self, needle: str) -> str:
        while True:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"WebSocket closed: {msg}")
            if needle in msg.data:
                return msg.data

    async def open(self, domain: str) -> None:
        await self.ws.send_str(f"<open xmlns='{FRAMING}' to='{domain}' version='1.0'/>")
        await self.recv_until("features")

    async def login(self, domain: str, user: str, password: str) -> None:
        self.ws = await self.http.ws_connect(self.url, protocols=("xmpp",), max_msg_size=1 << 20)
        await self.open(domain)
        await self.ws.send_str(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{plain(user, password)}</auth>")
        await self.recv_until("success")
        await self.open(domain)
        await self.ws.send_str(f"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{BIND}'/></iq>")
        res = await self.recv_until("<jid")
        self.jid = fromstring(res).findtext(f".//{{{BIND}}}jid") or ""


async def gather_limited(n: int, limit: int, fn) -> list:  # noqa: ANN001
    sem = asyncio.Semaphore(limit)

    async def one(i: int):  # noqa: ANN202
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def bosh_phase(args: argparse.Namespace, out: dict) -> None:
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as http:
        url = args.base + args.bosh_path
        rss0 = rss_kib(args.server_pid)
        t0 = time.monotonic()
        clients: list[Bosh] = []

        async def login(i: int) -> None:
            c = Bosh(http, url)
            await c.login(args.domain, args.user.replace("{n}", str(i)), args.password, args.wait)
            c.hold()
            clients.append(c)

        await gather_limited(args.bosh, args.concurrency, login)
        ramp = time.monotonic() - t0
        await asyncio.sleep(2)  # let the last held requests settle
        rss1 = rss_kib(args.server_pid)
        c0, w0 = cpu_s(args.server_pid), time.monotonic()
        await asyncio.sleep(args.idle)
        c1, w1 = cpu_s(args.server_pid), time.monotonic()
        rss2 = rss_kib(args.server_pid)
        out["bosh"] = {
            "sessions": args.bosh, "login_s": round(ramp, 2),
            "rss_before_kib": rss0, "rss_after_kib": rss1, "rss_after_idle_kib": rss2,
            "kib_per_session": round((rss1 - rss0) / args.bosh, 2) if rss0 and rss1 else None,
            "idle_s": args.idle,
            "idle_cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 2) if c0 is not None and c1 is not None else None,
        }
        print(f"BOSH: {args.bosh} sessions logged in in {ramp:.1f} s; "
              f"{out['bosh']['kib_per_session']} KiB RSS per session; "
              f"{out['bosh']['idle_cpu_pct']}% CPU while idle for {args.idle:.0f} s", file=sys.stderr)
        for c in clients:
            if c.hold_task:
                c.hold_task.cancel()
        await asyncio.gather(*(c.hold_task for c in clients if c.hold_task), return_exceptions=True)


async def ws_phase(args: argparse.Namespace, out: dict) -> None:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        url = args.ws_url or ("ws" + args.base[4:] + args.ws_path)
        clients: list[WS] = []

        async def login(i: int) -> WS:
            c = WS(http, url)
            await c.login(args.domain, args.user.replace("{n}", str(args.ws_offset + i)), args.password)
            return c

        clients = await gather_limited(2 * args.ws_pairs, args.concurrency, login)
        stop = False
        received = 0
        body = "x" * args.size

        async def pair(a: WS, b: WS) -> None:
            nonlocal received
            credit = asyncio.Semaphore(args.window)

            async def reader() -> None:
                nonlocal received
                while True:
                    msg = await b.ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return
                    if msg.data.startswith("<message"):
                        received += 1
                        credit.release()

            rt = asyncio.ensure_future(reader())
            n = 0
            while not stop:
                await credit.acquire()
                n += 1
                await a.ws.send_str(f"<message xmlns='jabber:client' to='{b.jid}' type='chat' id='m{n}'>"
                                    f"<body>{body}</body></message>")
            await asyncio.sleep(0.5)
            rt.cancel()

        c0, w0 = cpu_s(args.server_pid), time.monotonic()
        tasks = [asyncio.ensure_future(pair(clients[2 * i], clients[2 * i + 1])) for i in range(args.ws_pairs)]
        await asyncio.sleep(args.duration)
        n_at_stop, w1, c1 = received, time.monotonic(), cpu_s(args.server_pid)
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
        rate = n_at_stop / (w1 - w0)
        out["websocket"] = {
            "pairs": args.ws_pairs, "duration_s": args.duration, "window": args.window, "body_bytes": args.size,
            "messages": n_at_stop, "msg_per_s": round(rate, 1),
            "server_cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 1) if c0 is not None and c1 is not None else None,
        }
        print(f"WebSocket: {rate:.0f} messages/s over {args.ws_pairs} pairs "
              f"(server CPU {out['websocket']['server_cpu_pct']}%)", file=sys.stderr)
        for c in clients:
            await c.ws.close()


async def main_async(args: argparse.Namespace) -> int:
    out: dict = {"label": args.label, "base": args.base}
    if args.bosh:
        await bosh_phase(args, out)
    if args.ws_pairs:
        await ws_phase(args, out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:26280", help="the server's plain HTTP base URL")
    ap.add_argument("--bosh-path", default="/http-bind")
    ap.add_argument("--ws-path", default="/xmpp-websocket")
    ap.add_argument("--ws-url", default=None, help="the WebSocket URL, if not base + ws-path")
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--user", default="bench{n}")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--bosh", type=int, default=1000, help="idle BOSH sessions (0: skip)")
    ap.add_argument("--wait", type=int, default=60, help="BOSH 'wait' asked for")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds the BOSH sessions idle while measured")
    ap.add_argument("--ws-pairs", type=int, default=50, help="WebSocket sender/receiver pairs (0: skip)")
    ap.add_argument("--ws-offset", type=int, default=0, help="first account number of the WebSocket phase")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=20, help="messages in flight per pair")
    ap.add_argument("--size", type=int, default=100, help="message body bytes")
    ap.add_argument("--concurrency", type=int, default=50, help="logins at once")
    ap.add_argument("--server-pid", type=int, default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
