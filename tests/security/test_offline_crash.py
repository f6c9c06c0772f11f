"""Issue F5 (crash-safe offline delivery): a server killed with SIGKILL at any moment while it delivers
1,000 stored messages loses none of them: every one reaches the user after a restart (at worst twice:
clients de-duplicate by id).  ``rookery serve`` runs as a real process; raw XML clients over sockets."""

from __future__ import annotations

import asyncio
import re
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

N = 1000
_ID = re.compile(r"^m(\d+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``rookery serve`` in a process of its own on a fixed port, so it can be killed and restarted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.data = directory / "data"
        self.config = directory / "rookery.toml"
        self.config.write_text(
            # one process: SIGKILL takes the sessions' holder down (a worker's death: tests/integration/test_workers.py)
            f'domains = ["localhost"]\ndata_dir = "{self.data}"\nlog_level = "warning"\nworkers = 1\n'
            f'[c2s]\nlisten = ["127.0.0.1:{self.port}"]\ndirect_tls_listen = []\nmax_bytes_per_second = 0\n'
            f'[http]\nlisten = []\ntls_listen = []\n[proxy65]\nlisten = []\n')
        self.log = directory / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "rookery", "serve", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "rookery serve not ready in 30 s"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def create_users(data: Path, *names: str) -> None:
    st = make_storage("sqlite", str(data))
    await st.open()
    for n in names:
        await st.accounts.create("localhost", n, make_credentials("pw", iterations=4096))
    await st.close()


async def store_messages(port: int) -> None:
    """``N`` numbered chat messages from bob to alice, who is offline: stored (XEP-0160)."""
    bob = await RawClient().login(port, "bob@localhost", "pw")
    bob.send("".join(f"<message to='alice@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
                     for i in range(N)))
    r = await bob.iq("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>", timeout=30)
    assert r.get("type") == "result"  # bob's stanzas are processed in order: all stored now
    await bob.close()


async def collect(alice: RawClient, got: set[int], stop_after: int | None, timeout: float) -> None:
    """Add the numbers of the messages alice receives to ``got`` (until ``stop_after`` more arrived,
    all of them did, the connection closed, or ``timeout``)."""
    new = 0
    deadline = time.monotonic() + timeout
    while len(got) < N and (stop_after is None or new < stop_after):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            el = await alice.recv(timeout=left)
        except (TimeoutError, ConnectionError, AssertionError):
            break
        m = _ID.match(el.get("id") or "")
        if el.tag.endswith("message") and m:
            got.add(int(m.group(1)))
            new += 1


async def online(port: int) -> RawClient:
    alice = await RawClient().login(port, "alice@localhost", "pw")
    alice.send("<presence/>")
    return alice


@pytest.mark.parametrize("kill_after", [0, 100, 600])
async def test_a_crash_during_offline_delivery_loses_no_message(tmp_path, kill_after):
    srv = Serve(tmp_path)
    srv.data.mkdir()
    await create_users(srv.data, "alice", "bob")
    srv.start()
    try:
        await store_messages(srv.port)
        got: set[int] = set()
        alice = await online(srv.port)
        if kill_after == 0:
            await asyncio.sleep(0.03)  # delivery has just started
        else:
            await collect(alice, got, kill_after, timeout=30)
            assert len(got) >= kill_after
        srv.kill()
        # what the server handed over before it died is in alice's socket: she still reads it
        await collect(alice, got, None, timeout=2)
        await alice.close()
        assert len(got) < N, "the crash should come in the middle of the delivery"
        srv.start()
        alice = await online(srv.port)
        await collect(alice, got, None, timeout=30)
        await alice.close()
        assert sorted(got) == list(range(N)), f"lost: {sorted(set(range(N)) - got)[:20]}"
    finally:
        srv.kill()


async def test_offline_messages_not_acknowledged_with_stream_management_survive_a_crash(tmp_path):
    """Issue F5 with XEP-0198: alice's client enables stream management, receives every stored
    message and never acknowledges them; the server is killed (SIGKILL): they are still stored and
    delivered on her next login (the server removes them only once acknowledged)."""
    n = 50
    srv = Serve(tmp_path)
    srv.data.mkdir()
    await create_users(srv.data, "alice", "bob")
    srv.start()
    try:
        bob = await RawClient().login(srv.port, "bob@localhost", "pw")
        bob.send("".join(f"<message to='alice@localhost' type='chat' id='m{i}'><body>{i}</body></message>"
                         for i in range(n)))
        r = await bob.iq("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>", timeout=30)
        assert r.get("type") == "result"
        await bob.close()
        alice = await RawClient().login(srv.port, "alice@localhost", "pw")
        alice.send("<enable xmlns='urn:xmpp:sm:3'/>")
        el = await alice.recv_until(lambda e: e.tag.endswith("}enabled") or e.tag.endswith("}failed"), 10)
        assert el.tag == "{urn:xmpp:sm:3}enabled"
        alice.send("<presence/>")
        got: set[int] = set()
        first = 0
        while len(got) < n:
            el = await alice.recv(timeout=10)
            m = _ID.match(el.get("id") or "")
            if el.tag.endswith("message") and m:
                got.add(int(m.group(1)))
                first += 1
        assert got == set(range(n))  # all handed over; the server's <r/> requests go unanswered
        await asyncio.sleep(1.0)  # far longer than the one loop turn a session without acks gets
        srv.kill()
        await alice.close()
        srv.start()
        alice = await online(srv.port)
        again: set[int] = set()
        deadline = time.monotonic() + 30
        while len(again) < n and time.monotonic() < deadline:
            try:
                el = await alice.recv(timeout=deadline - time.monotonic())
            except (TimeoutError, ConnectionError, AssertionError):
                break
            m = _ID.match(el.get("id") or "")
            if el.tag.endswith("message") and m:
                again.add(int(m.group(1)))
        await alice.close()
        assert again == set(range(n)), f"lost: {sorted(set(range(n)) - again)[:20]}"
    finally:
        srv.kill()
