"""Server memory per idle connection: plain TCP, STARTTLS and direct TLS (issue F3).

Starts ``rookery serve`` in its own process on loopback, opens N connections of each kind that send a
stream header (STARTTLS ones also negotiate TLS and reopen the stream), and reports the server's RSS
growth per connection in KiB.  Usage::

    .venv/bin/python bench/attack/tls_memory.py [N] [EVENT_LOOP] [KINDS]

N defaults to 2000; EVENT_LOOP is the server's ``event_loop`` setting: auto (uvloop when installed, the
default), uvloop or asyncio; KINDS a comma-separated subset of plain,starttls,direct (default all three,
one after the other on one server: a later kind may reuse memory an earlier one freed, so measure one
kind per run for figures of record).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def read_until(reader: asyncio.StreamReader, token: bytes) -> None:
    buf = b""
    while token not in buf:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


async def open_one(kind: str, c2s: int, direct: int) -> asyncio.StreamWriter:
    if kind == "direct":
        r, w = await asyncio.open_connection("127.0.0.1", direct, ssl=client_ctx(), server_hostname="localhost")
    else:
        r, w = await asyncio.open_connection("127.0.0.1", c2s)
    w.write(HEADER.encode())
    await read_until(r, b"</stream:features>")
    if kind == "starttls":
        w.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await read_until(r, b"<proceed")
        await w.start_tls(client_ctx(), server_hostname="localhost")
        w.write(HEADER.encode())
        await read_until(r, b"</stream:features>")
    return w


async def measure(kind: str, n: int, pid: int, c2s: int, direct: int) -> float:
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    writers = []
    for i in range(0, n, 50):
        writers += await asyncio.gather(*(open_one(kind, c2s, direct) for _ in range(min(50, n - i))))
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    for w in writers:
        w.close()
    await asyncio.sleep(1.0)
    return (after - before) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    loop = sys.argv[2] if len(sys.argv) > 2 else "auto"
    kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else ["plain", "starttls", "direct"]
    with tempfile.TemporaryDirectory() as d:
        c2s, direct = free_port(), free_port()
        cfg = Path(d) / "rookery.toml"
        # one process (workers = 1): the figure is that process's RSS per connection
        cfg.write_text(f'domains = ["localhost"]\ndata_dir = "{d}/data"\nlog_level = "warning"\nworkers = 1\n'
                       f'event_loop = "{loop}"\n[c2s]\nlisten = ["127.0.0.1:{c2s}"]\ndirect_tls_listen = ["127.0.0.1:{direct}"]\n'
                       f'handshake_timeout = 600\n[http]\nlisten = []\ntls_listen = []\n'
                       f'[limits]\nmax_connections_per_ip = 0\nmax_unauthenticated_per_ip = 0\n')
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "rookery", "serve", "--config", str(cfg)], env=env)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", c2s), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            for kind in kinds:
                per = asyncio.run(measure(kind, n, proc.pid, c2s, direct))
                print(f"{kind:9s} {n} idle connections: {per:6.1f} KiB per connection ({loop})")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
