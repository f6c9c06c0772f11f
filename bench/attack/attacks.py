"""Full-size versions of the attacks of the hardening issue, against ``rookery serve`` in its own
process on loopback (the bounded versions run in ``make test`` from ``tests/security/``).  Each prints
what the server did and what it cost; docs/security.md has the figures.  Usage::

    .venv/bin/python bench/attack/attacks.py flood [N]        # F1: N idle connections from 127.0.0.x (20000)
    .venv/bin/python bench/attack/attacks.py slow-reader      # F2: 40 x 200 KB private XML, never read
    .venv/bin/python bench/attack/attacks.py jid-cache [N]    # F6: N iqs to unique ~3 KB JIDs (68000)
    .venv/bin/python bench/attack/attacks.py quotas           # F7: 5,000 roster items, 2,000 resources
    .venv/bin/python bench/attack/tls_memory.py [N]           # F3: KiB per idle plain/STARTTLS/TLS connection

Every load loop is bounded in count and time; the server is stopped by its PID at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def server(extra: str = "") -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``rookery serve`` on a free loopback port with user ``alice``/``pw`` (PLAIN on loopback)."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        cfg = Path(d) / "rookery.toml"
        # one process: the figures are one server process's RSS
        cfg.write_text(f'domains = ["localhost"]\ndata_dir = "{d}/data"\nlog_level = "warning"\nworkers = 1\n{extra}\n'
                       f'[c2s]\nlisten = ["127.0.0.1:{port}"]\ndirect_tls_listen = []\nrequire_encryption = false\n'
                       f'allow_plaintext_auth = true\nmax_bytes_per_second = 0\n'
                       f'[http]\nlisten = []\ntls_listen = []\n[proxy65]\nlisten = []\n')
        rookery = [sys.executable, "-m", "rookery"]
        subprocess.run([*rookery, "adduser", "alice@localhost", "--password", "pw", "--config", str(cfg)],
                       check=True, capture_output=True)
        log = Path(d) / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*rookery, "serve", "--config", str(cfg)], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(log.read_text()) from None
                    time.sleep(0.1)
            yield proc, port, log
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Client:
    """A minimal raw client: PLAIN login on loopback, iqs by id."""

    def __init__(self) -> None:
        self.r: asyncio.StreamReader
        self.w: asyncio.StreamWriter
        self.buf = b""

    async def until(self, token: bytes, timeout: float = 30) -> bytes:
        while token not in self.buf:
            chunk = await asyncio.wait_for(self.r.read(65536), timeout)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        i = self.buf.index(token) + len(token)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    async def login(self, port: int, user: str = "alice", pw: str = "pw", resource: str = "r") -> Client:
        import base64

        self.r, self.w = await asyncio.open_connection("127.0.0.1", port)
        self.w.write(HEADER.encode())
        await self.until(b"</stream:features>")
        plain = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
        self.w.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>".encode())
        await self.until(b"success")
        self.w.write(HEADER.encode())
        await self.until(b"</stream:features>")
        self.w.write(f"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                     f"<resource>{resource}</resource></bind></iq>".encode())
        reply = await self.until(b"</iq>")
        if b"type='error'" in reply or b'type="error"' in reply:
            self.w.close()
            raise PermissionError(reply.decode(errors="replace")[-200:])
        return self

    async def ping(self, i: int = 0) -> float:
        t = time.perf_counter()
        self.w.write(f"<iq type='get' id='ping{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>".encode())
        await self.until(f"id='ping{i}'".encode())
        return (time.perf_counter() - t) * 1000


async def flood(n: int) -> None:
    """F1: idle connections from 127.0.0.x addresses until the limits or the descriptors run out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)  # this process needs descriptors too
    with server() as (proc, port, log):
        base = rss_mib(proc.pid)
        conns = []
        t0 = time.monotonic()
        for i in range(n):
            if time.monotonic() - t0 > 120:
                break
            try:
                s = socket.socket()
                s.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
                conns.append(s)
            except OSError:
                break
        await asyncio.sleep(3)
        alice = await Client().login(port)
        ms = [await alice.ping(i) for i in range(20)]
        peak = rss_mib(proc.pid)
        for s in conns:
            s.close()
        await asyncio.sleep(3)
        lines = log.read_text().count("\n")
        print(f"flood: {len(conns)} connections opened in {time.monotonic() - t0:.1f} s; bystander login ok, "
              f"ping median {sorted(ms)[10]:.1f} ms; server RSS {base:.0f} -> {peak:.0f} MiB, "
              f"{rss_mib(proc.pid):.0f} MiB after; {lines} log lines")


async def slow_reader() -> None:
    """F2: a client that asks for 40 x 200 KB and never reads; a bystander pings meanwhile."""
    with server() as (proc, port, _log):
        base = rss_mib(proc.pid)
        bad = await Client().login(port, resource="bad")
        blob = "x" * 200_000
        bad.w.write(f"<iq type='set' id='s'><query xmlns='jabber:iq:private'><big xmlns='urn:x'>{blob}</big>"
                    f"</query></iq>".encode())
        await bad.until(b"id='s'")
        for i in range(40):
            bad.w.write(f"<iq type='get' id='g{i}'><query xmlns='jabber:iq:private'><big xmlns='urn:x'/>"
                        f"</query></iq>".encode())
        await asyncio.sleep(2)
        alice = await Client().login(port, resource="bystander")
        ms = [await alice.ping(i) for i in range(20)]
        peak = rss_mib(proc.pid)
        bad.w.transport.abort()
        await asyncio.sleep(2)
        print(f"slow reader: server RSS {base:.0f} -> {peak:.0f} MiB while it did not read, "
              f"{rss_mib(proc.pid):.0f} MiB after; bystander ping median {sorted(ms)[10]:.1f} ms")


async def jid_cache(n: int) -> None:
    """F6: iqs to n unique ~3 KB JIDs."""
    with server() as (proc, port, _log):
        c = await Client().login(port)
        base = rss_mib(proc.pid)
        t0 = time.monotonic()
        sent = 0
        for i in range(n):
            if time.monotonic() - t0 > 120:
                break
            c.w.write(f"<iq type='get' id='j{i}' to='{'u' * 1000}{i}@{'d' * 1000}.example/{'r' * 1000}'>"
                      f"<ping xmlns='urn:xmpp:ping'/></iq>".encode())
            sent += 1
            if i % 500 == 499:
                await c.until(f"id='j{i}'".encode(), timeout=60)
        await c.ping()
        print(f"jid cache: {sent} unique ~3 KB JIDs; server RSS {base:.0f} -> {rss_mib(proc.pid):.0f} MiB")


async def quotas() -> None:
    """F7: 5,000 roster items and 2,000 resources for one account."""
    with server() as (proc, port, _log):
        c = await Client().login(port)
        ok = 0
        for i in range(5000):
            c.w.write(f"<iq type='set' id='r{i}'><query xmlns='jabber:iq:roster'><item jid='c{i}@example.net'/>"
                      f"</query></iq>".encode())
            reply = await c.until(f"id='r{i}'".encode())
            ok += b"type='result'" in reply[-200:] or b'type="result"' in reply[-200:]
        res = 0
        refused = ""
        clients = []
        for i in range(2000):
            try:
                clients.append(await Client().login(port, resource=f"res{i}"))
                res += 1
            except PermissionError as e:
                refused = "resource-constraint" if "resource-constraint" in str(e) else str(e)
                break
            except (ConnectionError, TimeoutError):
                refused = "connection closed"
                break
        else:
            refused = "none"
        print(f"quotas: {ok} of 5000 roster items accepted; {res + 1} resources bound (then: {refused}); "
              f"server RSS {rss_mib(proc.pid):.0f} MiB")


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if what == "flood":
        asyncio.run(flood(arg or 20000))
    elif what == "slow-reader":
        asyncio.run(slow_reader())
    elif what == "jid-cache":
        asyncio.run(jid_cache(arg or 68000))
    elif what == "quotas":
        asyncio.run(quotas())
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
