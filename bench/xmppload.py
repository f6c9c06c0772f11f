#!/usr/bin/env python3
"""XMPP c2s load generator for any server (Rookery, Prosody, ejabberd, ...).

RFC 6120 client side, just enough of it: STARTTLS, SASL (SCRAM-SHA-1 / SCRAM-SHA-256 / PLAIN), resource
binding. Raw asyncio Protocols, no XMPP library, stdlib only.

Phases, all in one process on one monotonic clock:

1. login ramp: N users (``--user`` pattern with ``{n}`` = 0..N-1) log in with at most
   ``--login-concurrency`` logins in flight; logins/s = successful logins / (last bind - first connect);
2. idle: all sessions stay open; the server's VmRSS is read before the ramp and after it
   (``--server-pid``), KiB per connection = (after - before) / N;
3. throughput: the first ``--clients`` sessions form pairs (0<->1, 2<->3, ...) and both sides of each pair
   send chat messages to the peer's full JID as fast as a window of ``--window`` unacknowledged messages
   per pair allows (a message is acknowledged when the peer received it); result: delivered messages/s;
4. latency: the same pairs send ``--rate`` messages/s in total, each message id carries the monotonic
   send time, the receiver computes the latency; result: p50/p99/max in ms.

Prints one JSON object on stdout (progress goes to stderr). Errors are counted, not fatal; the exit
status is 1 if fewer than half of the logins succeeded, 2 on bad usage.

``--sm`` enables XEP-0198 stream management (``<enable xmlns='urn:xmpp:sm:3'/>``) and ``--carbons``
XEP-0280 carbons on every session after binding, as mobile clients do; with ``--sm`` each session
counts the stanzas it receives and answers the server's ``<r/>`` with ``<a h='...'/>``.

After binding, received bytes are not parsed as XML any more: the receiver only scans them for the ids
of our own messages (``id='xl<sender>.<seq>.<t_ns>'``), which costs a fraction of a microsecond per
message, so the client stays well ahead of the server (see ``bench/nullserver.py`` to measure its own
ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import resource
import ssl
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from typing import Any

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SM = "urn:xmpp:sm:3"
NS_CARBONS = "urn:xmpp:carbons:2"
# stanzas received (XEP-0198 §4 counts message, presence and iq; never nonzas); top-level ones only
# here (the load sends no forwarded copies: one resource per account)
STANZA_RE = re.compile(rb"<(?:message|presence|iq)[\s>/]")
SM_R = re.compile(rb"<r[\s/>]")

T_FEATURES = f"{{{NS_STREAM}}}features"
T_STREAM_ERROR = f"{{{NS_STREAM}}}error"

# Our message ids: xl<sender index>.<sequence>.<monotonic send time in ns>
ID_RE = re.compile(rb"""\sid=["']xl(\d+)\.(\d+)\.(\d+)["']""")

mono_ns = time.monotonic_ns


def log(*parts: object) -> None:
    if not QUIET:
        print(f"[xmppload {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


QUIET = False


class LoginError(Exception):
    """A login step failed; ``kind`` is the error counter it goes to."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


# --------------------------------------------------------------------------------------------------
# SCRAM (RFC 5802) client with a cache of derived keys (PBKDF2 costs the client milliseconds per login)
# --------------------------------------------------------------------------------------------------


class ScramCache:
    """SaltedPassword per (hash, password, salt, iterations), optionally persisted in a JSON file.

    Without it, a client on one core spends ~3.4 ms of PBKDF2 (10,000 iterations of SHA-1) per login and
    tops out near 300 logins/s whatever the server. The servers keep StoredKey/ServerKey, so SCRAM costs
    them no PBKDF2 at login: the cache removes client work only. ``bench/prosody.py`` writes the entries
    for the accounts it creates; for other servers a first (warm-up) run fills the file.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.mem: dict[tuple[str, str, bytes, int], tuple[bytes, bytes, bytes]] = {}
        self.disk: dict[str, str] = {}
        self.dirty = False
        self.misses = 0
        self.kdf_seconds = 0.0
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    self.disk = json.load(f)
            except (OSError, ValueError) as e:
                log(f"ignoring unreadable SCRAM cache {path}: {e}")

    @staticmethod
    def disk_key(hname: str, password: str, salt: bytes, iterations: int) -> str:
        pw = hashlib.sha256(password.encode()).hexdigest()[:16]
        return f"{hname}|{pw}|{base64.b64encode(salt).decode()}|{iterations}"

    def keys(self, hname: str, password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
        """Return (ClientKey, StoredKey, ServerKey)."""
        k = (hname, password, salt, iterations)
        got = self.mem.get(k)
        if got is not None:
            return got
        dk = self.disk_key(hname, password, salt, iterations)
        hexed = self.disk.get(dk)
        if hexed is not None:
            salted = bytes.fromhex(hexed)
        else:
            self.misses += 1
            t0 = time.perf_counter()
            salted = hashlib.pbkdf2_hmac(hname, password.encode(), salt, iterations)
            self.kdf_seconds += time.perf_counter() - t0
            if self.path:
                self.disk[dk] = salted.hex()
                self.dirty = True
        client_key = hmac.digest(salted, b"Client Key", hname)
        got = (client_key, hashlib.new(hname, client_key).digest(), hmac.digest(salted, b"Server Key", hname))
        self.mem[k] = got
        return got

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.disk, f)
        os.replace(tmp, self.path)
        self.dirty = False


def saslname(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


# --------------------------------------------------------------------------------------------------
# One client connection
# --------------------------------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One c2s connection: XML-parsed while negotiating, then a cheap id scanner."""

    def __init__(self, bench: Bench, idx: int) -> None:
        self.bench = bench
        self.idx = idx
        self.transport: asyncio.Transport | None = None
        self.parser: ET.XMLPullParser | None = None
        self.depth = 0
        self.root: ET.Element | None = None
        self.inbox: deque[ET.Element | None] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.closing = False
        self.fast = False
        self.buf = b""
        self.jid = ""
        # messaging state (set up by Bench.make_pairs)
        self.peer: Conn | None = None
        self.peer_tag = b""  # the peer's index as bytes, as it appears in its message ids
        self.msg_head = ""  # "<message type='chat' to='peer' id='xl<idx>."
        self.sent = 0  # messages this connection sent to its peer
        self.acked = 0  # of those, how many the peer received
        self.sm = False  # XEP-0198 enabled: count stanzas, answer <r/>
        self.h = 0  # stanzas received since <enable/>
        self.pong: asyncio.Future[None] | None = None  # --pings: waiting for the answer to this id
        self.pong_id = b""

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fast and not self.closing:
            self.bench.errors["connection_lost"] += 1
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def data_received(self, data: bytes) -> None:
        if self.fast:
            self.fast_received(data)
            return
        parser = self.parser
        if parser is None:
            return
        try:
            parser.feed(data)
            events = parser.read_events()
            for ev, el in events:
                if ev == "start":
                    self.depth += 1
                    if self.depth == 1:
                        self.root = el
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.inbox.append(el)
                        if self.root is not None:
                            self.root.remove(el)
                    elif self.depth == 0:  # </stream:stream>
                        self.inbox.append(None)
        except ET.ParseError as e:
            self.inbox.append(ET.Element("parse-error", text=str(e)))
            self.abort()
        self._wake()

    # -- negotiation helpers -----------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def write(self, s: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(s.encode())

    def open_stream(self, domain: str) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root = None
        self.write(
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='{NS_STREAM}' to='{xml_escape(domain)}' version='1.0'>"
        )

    async def recv(self) -> ET.Element:
        """The next top-level element of the stream; raises LoginError on stream errors and closes."""
        loop = asyncio.get_running_loop()
        while not self.inbox:
            if self.closed:
                raise LoginError("connection_lost", "closed during login")
            self.waiter = loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        el = self.inbox.popleft()
        if el is None:
            raise LoginError("stream_closed", "server closed the stream during login")
        if el.tag == "parse-error":
            raise LoginError("xml_error", el.get("text", ""))
        if el.tag == T_STREAM_ERROR:
            cond = next((c.tag.split("}")[-1] for c in el if not c.tag.endswith("}text")), "?")
            raise LoginError("stream_error", cond)
        return el

    async def features(self) -> ET.Element:
        el = await self.recv()
        if el.tag != T_FEATURES:
            raise LoginError("protocol_error", f"expected stream features, got {el.tag}")
        return el

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(b"</stream:stream>")
            finally:
                self.transport.close()

    # -- after binding: the message hot path ---------------------------------------------------------
    def go_fast(self) -> None:
        """Stop parsing XML: from now on received bytes are only scanned for our message ids."""
        self.parser = None
        self.root = None
        self.fast = True

    def fast_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        # An id attribute cannot contain '>', so everything up to the last '>' is complete for our purpose.
        end = data.rfind(b">") + 1
        if end != len(data):
            self.buf = data[end:]
            data = data[:end]
            if len(self.buf) > 1_000_000:  # no '>' for a megabyte: not XMPP any more
                self.bench.errors["garbage_received"] += 1
                self.buf = b""
        bench = self.bench
        if bench.dump > 0:
            bench.dump -= 1
            log(f"received by #{self.idx} ({self.jid}): {data[:600]!r}")
        if b"stream:error" in data or b"</stream:stream" in data:
            bench.errors["stream_error_in_session"] += 1
        pong = self.pong
        if pong is not None and self.pong_id in data and not pong.done():
            pong.set_result(None)
        if self.sm:
            self.h = (self.h + len(STANZA_RE.findall(data))) & 0xFFFFFFFF
            if SM_R.search(data) is not None and self.transport is not None and not self.closed:
                self.transport.write(f"<a xmlns='{NS_SM}' h='{self.h}'/>".encode())
                bench.sm_acks += 1
        peer = self.peer
        if peer is None:
            return
        now = mono_ns()
        lat = bench.latencies
        peer_tag = self.peer_tag
        n = 0
        for m in ID_RE.finditer(data):
            if m[1] != peer_tag:  # our own message bounced back (type='error'), or someone else's
                bench.errors["bounced_or_misrouted"] += 1
                continue
            n += 1
            lat.append(now - int(m[3]))
        if n:
            peer.acked += n
            bench.received += n
            if bench.flood:
                peer.refill()

    def refill(self) -> None:
        """Throughput phase: top the window up (in batches, so that writes are not one message each)."""
        room = self.bench.window - (self.sent - self.acked)
        if room < self.bench.refill_batch or self.closed:
            return
        t = mono_ns()
        head = self.msg_head
        tail = self.bench.msg_tail
        seq = self.sent
        out = "".join([f"{head}{s}.{t}'>{tail}" for s in range(seq, seq + room)])
        self.transport.write(out.encode())  # type: ignore[union-attr]
        self.sent = seq + room
        self.bench.sent += room

    def send_one(self) -> None:
        """Latency phase: one message, stamped now."""
        if self.closed:
            return
        self.transport.write(  # type: ignore[union-attr]
            f"{self.msg_head}{self.sent}.{mono_ns()}'>{self.bench.msg_tail}".encode()
        )
        self.sent += 1
        self.bench.sent += 1


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


SERVER_TREE = False  # --server-tree: the server's figures are summed over its process tree


def server_pids(pid: int) -> list[int]:
    """``pid``, plus all its descendants with ``--server-tree`` (a server with worker processes)."""
    if not SERVER_TREE:
        return [pid]
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _rss_one(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def read_rss_kib(pid: int | None) -> int | None:
    """The server's VmRSS (with ``--server-tree``: the sum over the process and its descendants)."""
    if not pid:
        return None
    main = _rss_one(pid)
    if main is None:
        return None
    return main + sum(_rss_one(p) or 0 for p in server_pids(pid)[1:])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a process (with ``--server-tree``: of its process tree), in seconds."""
    if not pid:
        return None
    total = 0.0
    for i, p in enumerate(server_pids(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            if i == 0:
                return None
    return total


def host_busy_s() -> float | None:
    """CPU seconds all CPUs spent in processes (user, nice, system, steal) since boot.

    irq and softirq time are left out: on loopback most of it is the benchmark's own TCP traffic, which
    the kernel does not charge to either process.
    """
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU used by the server, by this client and by everything else over a phase.

    The machines we run on may be shared: "other" CPU shows how much the figures were disturbed, and
    work per server CPU second (e.g. messages per server CPU second) is much less sensitive to it than
    work per wall second.
    """

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.t0 = time.monotonic()
        self.s0 = proc_cpu_s(server_pid)
        self.c0 = time.process_time()
        self.h0 = host_busy_s()

    def stop(self) -> dict[str, float | None]:
        wall = max(1e-9, time.monotonic() - self.t0)
        s1, c1, h1 = proc_cpu_s(self.pid), time.process_time(), host_busy_s()
        server = s1 - self.s0 if s1 is not None and self.s0 is not None else None
        client = c1 - self.c0
        other = None
        if wall < 0.2:  # too short for tick-based (10 ms) CPU accounting to mean anything
            return {
                "wall_s": wall,
                "server_cpu_s": server,
                "server_cpu_pct": None,
                "client_cpu_pct": None,
                "other_cpu_pct": None,
            }
        if h1 is not None and self.h0 is not None:
            other = max(0.0, (h1 - self.h0) - client - (server or 0.0))
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "server_cpu_pct": None if server is None else round(100 * server / wall, 1),
            "client_cpu_pct": round(100 * client / wall, 1),
            "other_cpu_pct": None if other is None else round(100 * other / wall, 1),
        }


def percentile(sorted_vals: list[int], q: float) -> float | None:
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i] / 1e6  # ns -> ms


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.errors: Counter[str] = Counter()
        self.conns: dict[int, Conn] = {}
        self.scram = ScramCache(args.scram_cache)
        self.ssl_ctx = ssl.create_default_context()
        self.ssl_ctx.check_hostname = False
        self.ssl_ctx.verify_mode = ssl.CERT_NONE
        self.mechs = [m.strip().upper() for m in args.mechanisms.split(",") if m.strip()]
        # messaging
        self.window = max(1, args.window // 2)  # --window is per pair: half for each direction
        self.refill_batch = max(1, self.window // 10)
        self.msg_tail = f"<body>{'x' * args.body_size}</body></message>"
        self.flood = False
        self.dump = args.dump
        self.sent = 0
        self.received = 0
        self.sm_acks = 0  # XEP-0198 <a/> answers to the server's <r/>
        self.lost = 0  # sent but never received (within the drain timeout)
        self.latencies: list[int] = []
        self.pairs: list[Conn] = []
        self.extra: list[Conn] = []  # connections that are not among the N sessions (the --pings client)
        self.result: dict[str, Any] = {
            "server": args.label or f"{args.host}:{args.port}",
            "sm": args.sm,
            "carbons": args.carbons,
            "connections": args.connections,
        }

    # -- login -----------------------------------------------------------------------------------------
    async def login(self, idx: int) -> Conn:
        a = self.args
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Conn(self, idx), a.host, a.port,
                    ssl=self.ssl_ctx if a.direct_tls else None,
                    server_hostname=a.domain if a.direct_tls else None,
                    ssl_handshake_timeout=a.connect_timeout if a.direct_tls else None,
                ),
                a.connect_timeout,
            )
        except TimeoutError:
            raise LoginError("connect_timeout") from None
        except (OSError, ssl.SSLError) as e:
            raise LoginError("connect_error", str(e)) from None
        try:
            await asyncio.wait_for(self.negotiate(conn, idx), a.login_timeout)
        except TimeoutError:
            conn.abort()
            raise LoginError("login_timeout") from None
        except BaseException:
            conn.abort()
            raise
        return conn

    async def negotiate(self, conn: Conn, idx: int) -> None:
        a = self.args
        user = a.user.replace("{n}", str(idx))
        conn.open_stream(a.domain)
        feats = await conn.features()
        tls = feats.find(f"{{{NS_TLS}}}starttls")
        if a.direct_tls:
            pass
        elif tls is not None and (a.tls or tls.find(f"{{{NS_TLS}}}required") is not None):
            conn.write(f"<starttls xmlns='{NS_TLS}'/>")
            el = await conn.recv()
            if el.tag != f"{{{NS_TLS}}}proceed":
                raise LoginError("tls_failed", el.tag)
            loop = asyncio.get_running_loop()
            try:
                conn.transport = await loop.start_tls(  # type: ignore[assignment]
                    conn.transport,  # type: ignore[arg-type]
                    conn,
                    self.ssl_ctx,
                    server_hostname=a.domain,
                    ssl_handshake_timeout=a.login_timeout,
                )
            except (OSError, ssl.SSLError, ConnectionError) as e:
                raise LoginError("tls_failed", str(e)) from None
            conn.open_stream(a.domain)
            feats = await conn.features()
        elif a.tls:
            raise LoginError("tls_unavailable", "server offered no STARTTLS")

        offered = [m.text.strip().upper() for m in feats.iter(f"{{{NS_SASL}}}mechanism") if m.text]
        mech = next((m for m in self.mechs if m in offered), None)
        if mech is None:
            raise LoginError("no_common_mechanism", ",".join(offered))
        if mech == "PLAIN":
            creds = base64.b64encode(f"\0{user}\0{a.password}".encode()).decode()
            conn.write(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{creds}</auth>")
            el = await conn.recv()
        else:
            el = await self.scram_auth(conn, mech, user)
        if el.tag != f"{{{NS_SASL}}}success":
            cond = next((c.tag.split("}")[-1] for c in el), el.tag.split("}")[-1])
            raise LoginError("auth_failed", f"{mech}: {cond}")

        conn.open_stream(a.domain)
        feats = await conn.features()
        if feats.find(f"{{{NS_BIND}}}bind") is None:
            raise LoginError("bind_failed", "no bind feature")
        conn.write(
            f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{xml_escape(a.resource)}</resource></bind></iq>"
        )
        el = await conn.recv()
        jid_el = el.find(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid")
        if el.get("type") != "result" or jid_el is None or not jid_el.text:
            raise LoginError("bind_failed", ET.tostring(el, encoding="unicode")[:200])
        conn.jid = jid_el.text.strip()
        sess = feats.find(f"{{{NS_SESSION}}}session")
        if sess is not None and sess.find(f"{{{NS_SESSION}}}optional") is None:
            conn.write(f"<iq type='set' id='s1'><session xmlns='{NS_SESSION}'/></iq>")
            el = await conn.recv()
            if el.get("type") != "result":
                raise LoginError("session_failed")
        if a.carbons:
            conn.write(f"<iq type='set' id='c1'><enable xmlns='{NS_CARBONS}'/></iq>")
            el = await conn.recv()
            if el.get("type") != "result":
                raise LoginError("carbons_failed", ET.tostring(el, encoding="unicode")[:200])
        if a.sm:
            conn.write(f"<enable xmlns='{NS_SM}'/>")
            el = await conn.recv()
            if el.tag != f"{{{NS_SM}}}enabled":
                raise LoginError("sm_failed", ET.tostring(el, encoding="unicode")[:200])
            conn.sm = True
        if a.usable:
            # login-to-usable: initial presence *processed* (its reflection to this resource came
            # back, RFC 6121 §4.2.2) and a first iq answered, which is what a user waits for
            conn.write("<presence/><iq type='get' id='u1'><ping xmlns='urn:xmpp:ping'/></iq>")
            got_presence = got_iq = False
            while not (got_presence and got_iq):
                el = await conn.recv()
                if el.tag in ("{jabber:client}presence", "presence") and el.get("from") == conn.jid:
                    got_presence = True
                elif el.tag in ("{jabber:client}iq", "iq") and el.get("id") == "u1":
                    if el.get("type") != "result":
                        raise LoginError("usable_failed", ET.tostring(el, encoding="unicode")[:200])
                    got_iq = True
            conn.go_fast()
            return
        conn.go_fast()
        if a.presence:
            conn.write("<presence/>")

    async def scram_auth(self, conn: Conn, mech: str, user: str) -> ET.Element:
        a = self.args
        hname = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}.get(mech)
        if hname is None:
            raise LoginError("no_common_mechanism", mech)
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={saslname(user)},r={cnonce}"
        msg = base64.b64encode(f"n,,{first_bare}".encode()).decode()
        conn.write(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>{msg}</auth>")
        el = await conn.recv()
        if el.tag != f"{{{NS_SASL}}}challenge":
            return el  # failure
        server_first = base64.b64decode(el.text or "").decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(",") if "=" in kv)
        nonce, salt_b64, iters = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if "m" in attrs or not nonce.startswith(cnonce) or not salt_b64 or not iters.isdigit():
            raise LoginError("auth_failed", f"bad server-first-message {server_first!r}")
        client_key, stored_key, server_key = self.scram.keys(
            hname, a.password, base64.b64decode(salt_b64), int(iters)
        )
        final_wo_proof = f"c=biws,r={nonce}"
        auth_message = f"{first_bare},{server_first},{final_wo_proof}".encode()
        sig = hmac.digest(stored_key, auth_message, hname)
        proof = bytes(x ^ y for x, y in zip(client_key, sig, strict=True))
        final = f"{final_wo_proof},p={base64.b64encode(proof).decode()}"
        conn.write(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
        el = await conn.recv()
        if el.tag == f"{{{NS_SASL}}}challenge":  # RFC 6120 allows v= in a challenge, then an empty response
            server_final = el.text or ""
            conn.write(f"<response xmlns='{NS_SASL}'/>")
            el = await conn.recv()
        elif el.tag == f"{{{NS_SASL}}}success":
            server_final = el.text or ""
        else:
            return el
        expected = base64.b64encode(hmac.digest(server_key, auth_message, hname)).decode()
        got = base64.b64decode(server_final).decode() if server_final.strip() else ""
        if got != f"v={expected}":
            raise LoginError("auth_failed", "server signature mismatch")
        return el

    async def ramp(self) -> None:
        a = self.args
        n = a.connections
        counter = iter(range(n))
        login_ms: list[float] = []
        first: list[float] = []
        last = [0.0]
        done_log = [time.monotonic()]

        async def worker() -> None:
            for idx in counter:
                t0 = time.monotonic()
                if not first:
                    first.append(t0)
                try:
                    conn = await self.login(idx)
                except LoginError as e:
                    self.errors[e.kind] += 1
                    if self.errors[e.kind] <= 3:
                        log(f"login {idx} failed: {e}")
                    continue
                except Exception as e:  # noqa: BLE001 - counted, reported, never fatal
                    self.errors[f"login_{type(e).__name__}"] += 1
                    if self.errors[f"login_{type(e).__name__}"] <= 3:
                        log(f"login {idx} failed: {e!r}")
                    continue
                t1 = time.monotonic()
                last[0] = t1
                login_ms.append((t1 - t0) * 1000)
                self.conns[idx] = conn
                if t1 - done_log[0] > 2:
                    done_log[0] = t1
                    log(f"{len(self.conns)} / {n} logged in")

        kdf_before, misses_before = self.scram.kdf_seconds, self.scram.misses
        meter = CpuMeter(a.server_pid)
        await asyncio.gather(*(worker() for _ in range(max(1, min(a.login_concurrency, n)))))
        ok = len(self.conns)
        wall = (last[0] - first[0]) if ok and first else 0.0
        login_ms.sort()
        r = self.result
        r["logins_ok"] = ok
        r["logins_failed"] = n - ok
        r["login_wall_s"] = round(wall, 3)
        r["logins_per_s"] = round(ok / wall, 1) if wall > 0 else None
        r["login_until"] = "usable" if a.usable else "bind"
        r["transport"] = "direct-tls" if a.direct_tls else "starttls" if a.tls else "tcp"
        r["login_p50_ms"] = round(login_ms[len(login_ms) // 2], 2) if login_ms else None
        r["login_p99_ms"] = round(login_ms[int(0.99 * (len(login_ms) - 1))], 2) if login_ms else None
        kdf = self.scram.kdf_seconds - kdf_before
        r["client_pbkdf2_s"] = round(kdf, 3)
        self.record_cpu("login", meter, ok)
        if wall and kdf > 0.05 * wall:
            log(
                f"WARNING: the client spent {kdf:.2f} s of the {wall:.2f} s ramp in PBKDF2 "
                f"({self.scram.misses - misses_before} SCRAM cache misses): logins/s is client-bound. "
                "Run once more with the same --scram-cache to measure the server."
            )
        log(f"logins: {ok}/{n} ok in {wall:.2f} s = {r['logins_per_s']}/s")

    # -- messaging ---------------------------------------------------------------------------------------
    def make_pairs(self) -> list[Conn]:
        live = [self.conns[i] for i in sorted(self.conns) if not self.conns[i].closed]
        k = min(self.args.clients, len(live)) // 2 * 2
        clients = live[:k]
        for a, b in zip(clients[0::2], clients[1::2], strict=True):
            a.peer, b.peer = b, a
        for c in clients:
            p = c.peer
            assert p is not None
            c.peer_tag = str(p.idx).encode()
            c.msg_head = f"<message type='chat' to='{xml_escape(p.jid)}' id='xl{c.idx}."
        return clients

    def record_cpu(self, phase: str, meter: CpuMeter, work: int | None) -> None:
        """Add <phase>_server_cpu_pct, _client_cpu_pct, _other_cpu_pct and <phase>_per_server_cpu_s."""
        c = meter.stop()
        r = self.result
        for k in ("server_cpu_pct", "client_cpu_pct", "other_cpu_pct"):
            r[f"{phase}_{k}"] = c[k]
        if work is not None and c["server_cpu_s"]:
            r[f"{phase}_per_server_cpu_s"] = round(work / c["server_cpu_s"], 1)
        other = c["other_cpu_pct"]
        if other is not None:
            r["max_other_cpu_pct"] = max(r.get("max_other_cpu_pct") or 0.0, other)
            if other > 10:
                log(
                    f"WARNING: other processes used {other:.0f}% CPU during the {phase} phase: figures disturbed"
                )
        if (c["client_cpu_pct"] or 0) > 90:
            log(
                f"WARNING: the client used {c['client_cpu_pct']:.0f}% CPU in the {phase} phase: it may be the bottleneck"
            )

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.received + self.lost < self.sent:
            await asyncio.sleep(0.01)

    async def throughput(self) -> None:
        a = self.args
        clients = self.pairs
        self.latencies = []
        self.flood = True
        for c in clients:
            c.refill()
        await asyncio.sleep(a.warmup)
        r0, t0 = self.received, time.monotonic()
        meter = CpuMeter(a.server_pid)
        self.latencies = []
        await asyncio.sleep(a.duration)
        r1, t1 = self.received, time.monotonic()
        self.record_cpu("msgs", meter, r1 - r0)
        self.flood = False
        lat, self.latencies = self.latencies, []
        await self.drain(a.drain_timeout)
        lost = self.sent - self.received - self.lost
        if lost:
            self.errors["lost_throughput"] += lost
            self.lost += lost
        rate = (r1 - r0) / (t1 - t0)
        lat = sorted(lat)
        self.result["msgs_per_s"] = round(rate, 1)
        self.result["throughput_p50_ms"] = round(percentile(lat, 0.5) or 0, 3) if lat else None
        log(f"throughput: {rate:.0f} msgs/s delivered ({len(clients)} clients, window {a.window}/pair)")

    async def latency(self) -> None:
        a = self.args
        clients = self.pairs
        loop = asyncio.get_running_loop()
        self.latencies = []
        base_sent, base_recv = self.sent, self.received
        n = len(clients)
        rr = 0
        meter = CpuMeter(a.server_pid)
        t0 = time.monotonic()
        end = t0 + a.duration
        due_sent = 0
        done = loop.create_future()

        def tick() -> None:
            nonlocal rr, due_sent
            now = time.monotonic()
            if now >= end:
                done.set_result(None)
                return
            due = int((now - t0) * a.rate) - due_sent
            for _ in range(due):
                clients[rr].send_one()
                rr += 1
                if rr == n:
                    rr = 0
            due_sent += max(due, 0)
            loop.call_later(0.0005, tick)

        loop.call_soon(tick)
        await done
        self.record_cpu("latency", meter, None)
        await self.drain(a.drain_timeout)
        sent, recv = self.sent - base_sent, self.received - base_recv
        if sent > recv:
            self.errors["lost_latency"] += sent - recv
            self.lost += sent - recv
        lat = sorted(self.latencies)
        r = self.result
        r["latency_rate"] = a.rate
        r["latency_sent"] = sent
        r["p50_ms"] = round(percentile(lat, 0.50) or 0, 3) if lat else None
        r["p90_ms"] = round(percentile(lat, 0.90) or 0, 3) if lat else None
        r["p99_ms"] = round(percentile(lat, 0.99) or 0, 3) if lat else None
        r["max_ms"] = round(lat[-1] / 1e6, 3) if lat else None
        log(f"latency @ {a.rate}/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms")

    # -- the whole run ----------------------------------------------------------------------------------
    async def run(self) -> None:
        a = self.args
        r = self.result
        r["rss_before_kib"] = read_rss_kib(a.server_pid)
        await self.ramp()
        if a.settle > 0:
            await asyncio.sleep(a.settle)
        rss_after = read_rss_kib(a.server_pid)
        r["rss_after_kib"] = rss_after
        if rss_after is not None and r["rss_before_kib"] is not None and a.connections:
            r["kib_per_connection"] = round((rss_after - r["rss_before_kib"]) / a.connections, 2)
        else:
            r["kib_per_connection"] = None
        if rss_after is not None:
            log(f"server RSS {r['rss_before_kib']} -> {rss_after} KiB = {r['kib_per_connection']} KiB/conn")
        if a.hold > 0 or a.pings > 0:
            await self.idle_hold()
        self.pairs = self.make_pairs()
        r["clients"] = len(self.pairs)
        if a.duration > 0 and len(self.pairs) >= 2:
            await self.throughput()
            await self.latency()
            r["rss_end_kib"] = read_rss_kib(a.server_pid)

    async def idle_hold(self) -> None:
        """--hold / --pings: the N sessions stay idle for --hold seconds (the server's CPU over that
        time: what idle connections cost, keepalives included), while one more client, logged in
        after the RSS reading, sends --pings XEP-0199 pings to the server one after another (every
        --ping-interval s) and times each answer."""
        a = self.args
        r = self.result
        pinger: Conn | None = None
        if a.pings > 0:
            try:
                pinger = await self.login(a.connections)
            except LoginError as e:
                self.errors[f"pinger_{e.kind}"] += 1
                log(f"the pinger could not log in: {e}")
        meter = CpuMeter(a.server_pid)
        t_end = time.monotonic() + a.hold
        rtts: list[float] = []
        slow: list[list[float]] = []
        loop = asyncio.get_running_loop()
        for i in range(a.pings if pinger is not None else 0):
            assert pinger is not None
            if pinger.closed:
                self.errors["pinger_lost"] += 1
                break
            pinger.pong_id = f"'pg{i}'".encode()
            pinger.pong = loop.create_future()
            t0 = time.perf_counter()
            pinger.write(f"<iq type='get' id='pg{i}' to='{xml_escape(a.domain)}'><ping xmlns='urn:xmpp:ping'/></iq>")
            try:
                await asyncio.wait_for(pinger.pong, 5)
                rtt = (time.perf_counter() - t0) * 1000
                rtts.append(rtt)
                if rtt > 10:  # when the slow ones came (seconds into the hold), to tell what held the server
                    slow.append([round(time.monotonic() - meter.t0, 2), round(rtt, 1)])
            except TimeoutError:
                self.errors["ping_timeout"] += 1
            pinger.pong = None
            await asyncio.sleep(a.ping_interval)
        rest = t_end - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        c = meter.stop()
        r["idle_s"] = round(c["wall_s"], 1)
        r["idle_server_cpu_pct"] = c["server_cpu_pct"]
        r["idle_other_cpu_pct"] = c["other_cpu_pct"]
        if c["server_cpu_s"] is not None and a.connections:
            # microseconds of server CPU per held connection per second (pings and keepalives included)
            r["idle_cpu_us_per_conn_s"] = round(1e6 * c["server_cpu_s"] / c["wall_s"] / a.connections, 3)
        if rtts:
            rtts.sort()
            r["pings"] = len(rtts)
            r["ping_p50_ms"] = round(statistics.median(rtts), 3)
            r["ping_p99_ms"] = round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 3)
            r["ping_max_ms"] = round(rtts[-1], 3)
            r["ping_slow"] = slow
        r["rss_held_kib"] = read_rss_kib(a.server_pid)
        log(f"idle {r['idle_s']} s: server CPU {r['idle_server_cpu_pct']} %, pings p50 {r.get('ping_p50_ms')} "
            f"max {r.get('ping_max_ms')} ms")
        if pinger is not None:
            self.extra.append(pinger)  # closed with the others

    async def close_all(self) -> None:
        conns = [*self.conns.values(), *self.extra]
        for c in conns:
            c.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(not c.closed for c in conns):
            await asyncio.sleep(0.05)
        for c in conns:
            if not c.closed:
                c.abort()


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need + 100
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, max(want, soft))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as e:
            log(f"cannot raise RLIMIT_NOFILE to {new}: {e}")
        if new < want:
            log(f"WARNING: fd limit {new} < {want} needed")


async def amain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    bench = Bench(args)
    code = 0
    try:
        await asyncio.wait_for(bench.run(), args.timeout)
    except TimeoutError:
        bench.errors["overall_timeout"] += 1
        log(f"overall --timeout {args.timeout} s reached; reporting what was measured")
    try:
        await asyncio.wait_for(bench.close_all(), 10)
    except TimeoutError:
        bench.errors["close_timeout"] += 1
    bench.scram.save()
    # Sanity: a receiver can never have seen more of a sender's messages than the sender sent.
    dup = sum(max(0, c.acked - c.sent) for c in bench.pairs)
    if dup:
        bench.errors["duplicates_or_foreign_ids"] += dup
    r = bench.result
    for k in (
        "logins_ok",
        "logins_per_s",
        "rss_before_kib",
        "rss_after_kib",
        "kib_per_connection",
        "msgs_per_s",
        "latency_rate",
        "p50_ms",
        "p99_ms",
        "max_ms",
    ):
        r.setdefault(k, None)
    if args.sm:
        r["sm_acks_sent"] = bench.sm_acks
    r["errors"] = sum(bench.errors.values())
    r["error_kinds"] = dict(bench.errors)
    if (r["logins_ok"] or 0) < 0.5 * args.connections:
        code = 1
    return r, code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5222)
    p.add_argument("--domain", default="localhost", help="XMPP domain (stream 'to')")
    p.add_argument("--user", default="bench{n}", help="username pattern; {n} = 0..N-1")
    p.add_argument("--password", default="secret")
    p.add_argument("--resource", default="load")
    p.add_argument("--connections", "-n", type=int, default=1000, help="sessions to log in and hold")
    p.add_argument(
        "--clients", type=int, default=200, help="sessions (from the first) that exchange messages"
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds per messaging phase; 0 = logins only"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of throughput load before measuring")
    p.add_argument("--rate", type=float, default=2000.0, help="total messages/s in the latency phase")
    p.add_argument("--window", type=int, default=100, help="unacknowledged messages in flight per pair")
    p.add_argument("--body-size", type=int, default=100, help="characters in each message body")
    p.add_argument("--server-pid", type=int, default=None, help="server PID, to read its VmRSS")
    p.add_argument(
        "--server-tree",
        action="store_true",
        help="sum RSS and CPU over the server PID and all its descendants (worker processes)",
    )
    p.add_argument("--label", default=None, help="'server' field of the result (default host:port)")
    p.add_argument(
        "--tls", action="store_true", help="use STARTTLS (always used when the server requires it)"
    )
    p.add_argument(
        "--direct-tls", action="store_true", help="TLS from the first byte (XEP-0368 direct TLS port)"
    )
    p.add_argument(
        "--usable",
        action="store_true",
        help="a login ends when the session is usable: initial presence sent and reflected back to "
        "this resource, and a first iq (ping) answered (login-to-usable); implies --presence",
    )
    p.add_argument("--mechanisms", default="SCRAM-SHA-1,SCRAM-SHA-256,PLAIN", help="SASL preference order")
    p.add_argument("--presence", action="store_true", help="send initial presence after binding")
    p.add_argument("--sm", action="store_true", help="enable XEP-0198 stream management on every session")
    p.add_argument("--carbons", action="store_true", help="enable XEP-0280 carbons on every session")
    p.add_argument("--login-concurrency", type=int, default=100)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--login-timeout", type=float, default=15.0, help="per login, connect excluded")
    p.add_argument("--settle", type=float, default=2.0, help="seconds idle before reading RSS after the ramp")
    p.add_argument("--hold", type=float, default=0.0,
                   help="after the RSS reading, hold the sessions idle this long and measure the server's CPU")
    p.add_argument("--pings", type=int, default=0,
                   help="during the hold, one more client (user index N) sends this many XEP-0199 pings to "
                   "the server, one at a time, and times the answers (ping_p50_ms, ping_max_ms)")
    p.add_argument("--ping-interval", type=float, default=0.1, help="seconds between two --pings")
    p.add_argument(
        "--drain-timeout", type=float, default=5.0, help="wait for in-flight messages after a phase"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="overall limit in seconds")
    p.add_argument("--scram-cache", default=None, help="JSON file caching SCRAM salted passwords across runs")
    p.add_argument("--dump", type=int, default=0, help="debug: log the first N chunks received after binding")
    p.add_argument("--json", default=None, help="also write the result to this file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if "{n}" not in args.user and args.connections > 1:
        p.error("--user must contain {n}")
    if args.direct_tls and args.tls:
        p.error("--tls (STARTTLS) and --direct-tls exclude each other")
    if args.connections < 1 or args.rate <= 0 or args.window < 2:
        p.error("need --connections >= 1, --rate > 0, --window >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    global QUIET, SERVER_TREE
    args = parse_args(argv)
    QUIET = args.quiet
    SERVER_TREE = args.server_tree
    raise_fd_limit(args.connections)
    result, code = asyncio.run(amain(args))
    out = json.dumps(result)
    print(out, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
