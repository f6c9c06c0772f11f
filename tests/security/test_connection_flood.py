"""Issue F1 (connection flood): idle connections from one address are capped (``[limits]``), the
server caps its connections in all below its file descriptor limit, says so in a few log lines rather
than one per connection, and a bystander from another address keeps being served.  Real sockets on
loopback (127.0.0.x addresses stand for different clients)."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from xmpp_helpers import RawClient  # noqa: E402

from rookery.storage.sql import make_storage  # noqa: E402
from rookery.streams.sasl import make_credentials  # noqa: E402


async def idle_connections(port: int, n: int, source: str) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    out = []
    for _ in range(n):
        try:
            out.append(await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5))
        except OSError:
            pass  # refused at the TCP level (backlog full): also "not served"
    return out


async def still_open(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], wait: float = 0.5) -> int:
    """How many of these connections the server has not closed (each is read for ``wait`` seconds)."""
    async def alive(r: asyncio.StreamReader) -> bool:
        try:
            data = await asyncio.wait_for(r.read(1), wait)
        except TimeoutError:
            return True
        except ConnectionError:
            return False
        return bool(data)

    return sum(await asyncio.gather(*(alive(r) for r, _ in conns)))


def close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, w in conns:
        w.transport.abort()


async def test_idle_connections_per_address_are_capped_and_a_bystander_is_served(rookery_server_factory, caplog):
    s = rookery_server_factory(limits={"max_connections_per_ip": 8, "max_unauthenticated_per_ip": 4})
    with caplog.at_level(logging.WARNING, logger="rookery.transports.limits"):
        flood = await idle_connections(s.c2s_port, 30, "127.0.0.2")
        assert await still_open(flood) == 4  # max_unauthenticated_per_ip
        # authenticated connections leave the unauthenticated count, not the per-address one
        bystander = await RawClient().login(s.c2s_port, *s.make_user())
        r = await bystander.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert r.get("type") == "result"
        await bystander.close()
    close_all(flood)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 3, [r.getMessage() for r in refusals]  # not one line per connection


async def test_authenticated_sessions_free_the_unauthenticated_quota(rookery_server_factory):
    s = rookery_server_factory(limits={"max_connections_per_ip": 6, "max_unauthenticated_per_ip": 2})
    clients = []
    for _ in range(4):  # four logged-in sessions from 127.0.0.1
        jid, pw = s.make_user()
        clients.append(await RawClient().login(s.c2s_port, jid, pw))
    idle = await idle_connections(s.c2s_port, 5, "127.0.0.1")
    assert await still_open(idle) == 2  # 4 + 2 = max_connections_per_ip; the unauthenticated quota is 2
    r = await clients[0].iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert r.get("type") == "result"
    close_all(idle)
    for c in clients:
        await c.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_out_of_file_descriptors_is_a_few_log_lines_and_service_resumes(tmp_path, event_loop):
    """The server runs with 200 file descriptors and is told to take 1,000 connections: accept()
    fails with EMFILE while 300 connections are held; it logs a line per back-off (not per attempt)
    and serves again once they are gone.  On uvloop, libuv sheds the connections it cannot take
    (it accepts and closes them at once, with a descriptor kept in reserve), without a log line."""
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 and (hard == resource.RLIM_INFINITY or hard >= 2048):
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    st = make_storage("sqlite", str(data))
    await st.open()
    await st.accounts.create("localhost", "alice", make_credentials("pw", iterations=4096))
    await st.close()
    config = tmp_path / "rookery.toml"
    config.write_text(f'domains = ["localhost"]\ndata_dir = "{data}"\nlog_level = "info"\n'
                      f'event_loop = "{event_loop}"\n'
                      'workers = 1\n'
                      f'[c2s]\nlisten = ["127.0.0.1:{port}"]\ndirect_tls_listen = []\n'
                      f'[http]\nlisten = []\ntls_listen = []\n[proxy65]\nlisten = []\n'
                      f'[limits]\nmax_connections = 1000\nmax_connections_per_ip = 0\n'
                      f'max_unauthenticated_per_ip = 0\n')
    log = tmp_path / "serve.log"

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "rookery", "serve", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, preexec_fn=limit_fds)
    flood: list = []
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not ready"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        for i in range(10):
            flood += await idle_connections(port, 30, f"127.0.0.{10 + i}")
        await asyncio.sleep(2.5)  # a few accept back-offs
        assert proc.poll() is None, "the server died"
        close_all(flood)
        flood = []
        await asyncio.sleep(1.5)  # the server closes its side, accept resumes after its back-off
        alice = await RawClient().login(port, "alice@localhost", "pw")
        r = await alice.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert r.get("type") == "result"
        await alice.close()
    finally:
        close_all(flood)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    text = log.read_text()
    lines = text.splitlines()
    assert "Traceback" not in text, text[-2000:]
    if event_loop == "asyncio":
        assert sum("out of file descriptors" in ln for ln in lines) >= 1, text[-2000:]
    assert len(lines) < 40, f"{len(lines)} log lines:\n" + "\n".join(lines[-20:])
