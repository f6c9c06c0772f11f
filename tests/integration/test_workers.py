"""Multi-process workers (issue 12): ``workers = 2`` — a supervisor hands connections to two worker
processes in turn, sessions on different workers reach each other through ``cluster/``.

The RFC 6121 delivery and presence rules run with two workers in test_delivery.py and
test_presence.py; here: which worker holds what, order across the link, a full JID bound on two
workers, the control socket and ``rookery deluser`` for a session on another worker, a worker killed
with SIGKILL (restarted, its sessions forgotten, their contacts told), and a graceful stop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from xmpp_helpers import RawClient, available, befriend, drain

from rookery.control import request
from rookery.testing import ProcessServer

C = "{jabber:client}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcessServer]:
    """One two-worker server for the tests of this module that leave it as they found it (the
    SIGKILL test restarts worker 1 and waits until it is back)."""
    d = tempfile.mkdtemp(prefix="rookery-workers-")
    s = ProcessServer({"workers": 2, "modules": ["roster", "presence", "disco", "ping"]}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def where(server: ProcessServer, jid: str) -> dict[str, str]:
    """full JID -> "attached" (worker 0, which answers the control socket) or "worker N"."""
    out = request(server.data_dir, {"op": "sessions", "jid": jid})
    return {s["jid"]: s["state"] for s in out["sessions"]}


def worker_pids(server: ProcessServer) -> dict[int, int]:
    """index -> pid of the supervisor's worker processes (from /proc: children and command lines)."""
    pid = server.proc.pid
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = {}
    for k in kids:
        try:
            argv = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"rookery.workers" in argv:
            out[int(argv[argv.index(b"--index") + 1])] = int(k)
    return out


async def login_on(server: ProcessServer, jid: str, pw: str, resource: str, worker: str) -> RawClient:
    """Log in until the session lands on ``worker`` ("attached" = worker 0, or "worker 1"); the
    supervisor hands connections out in turn, so at most a second try is needed."""
    for _ in range(4):
        c = await RawClient().login(server.c2s_port, jid, pw, resource=resource)
        if where(server, jid).get(c.jid) == worker:
            return c
        await c.close()
    raise AssertionError(f"{jid}/{resource} never landed on {worker}")


def status(server: ProcessServer) -> dict:
    return request(server.data_dir, {"op": "status"})


async def test_connections_are_shared_out_and_the_directory_sees_both_workers(cluster):
    jid, pw = cluster.make_user()
    clients = [await RawClient().login(cluster.c2s_port, jid, pw, resource=f"r{i}") for i in range(4)]
    states = where(cluster, jid)
    assert sorted(states.values()) == ["attached", "attached", "worker 1", "worker 1"], states
    st = status(cluster)
    assert st["workers"]["count"] == 2 and st["workers"]["connected"] == [0, 1]
    assert st["workers"]["sessions"] == {"0": 2, "1": 2}
    assert sum(st["sessions"].values()) == 4
    cfg = next(cluster.data_dir.glob("*.toml"))
    out = subprocess.run([sys.executable, "-m", "rookery", "status", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60).stdout
    assert f"workers: 2 (supervisor pid {cluster.proc.pid}; this is worker 0; connected: 0, 1); " \
           "sessions worker 0: 2, worker 1: 2" in out, out
    for c in clients:
        await c.close()


async def test_stanzas_across_workers_arrive_complete_and_in_order(cluster):
    a, apw = cluster.make_user()
    b, bpw = cluster.make_user()
    sender = await login_on(cluster, a, apw, "s", "attached")
    receiver = await login_on(cluster, b, bpw, "r", "worker 1")
    n = 500
    sender.send("".join(f"<message to='{receiver.jid}' type='chat' id='m{i}'><body>{i} &amp; é</body></message>"
                        for i in range(n)))
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        el = await receiver.recv(5)
        if el.tag == C + "message":
            got.append(el)
    assert [e.get("id") for e in got] == [f"m{i}" for i in range(n)]
    assert all(e.get("from") == sender.jid for e in got)
    assert got[7].findtext(C + "body") == "7 & é"
    # and an iq round trip from worker 1 to a session on worker 0
    receiver.send(f"<iq type='get' id='p1' to='{sender.jid}'><ping xmlns='urn:xmpp:ping'/></iq>")
    iq = await sender.recv_until(lambda e: e.tag == C + "iq" and e.get("id") == "p1")
    sender.send(f"<iq type='result' id='p1' to='{receiver.jid}'/>")
    res = await receiver.recv_until(lambda e: e.tag == C + "iq" and e.get("id") == "p1")
    assert iq.get("from") == receiver.jid and res.get("type") == "result" and res.get("from") == sender.jid
    await sender.close()
    await receiver.close()


async def test_a_full_jid_bound_on_another_worker_replaces_the_older_session(cluster):
    jid, pw = cluster.make_user()
    old = await login_on(cluster, jid, pw, "same", "attached")
    new = await login_on(cluster, jid, pw, "same", "worker 1")  # the older one is told <conflict/>
    assert await old.stream_error() == "conflict"
    for _ in range(50):
        if where(cluster, jid) == {new.jid: "worker 1"}:
            break
        await asyncio.sleep(0.1)
    assert where(cluster, jid) == {new.jid: "worker 1"}
    other, opw = cluster.make_user()
    o = await RawClient().login(cluster.c2s_port, other, opw)
    o.send(f"<message to='{new.jid}' type='chat' id='after'><body>x</body></message>")
    m = await new.recv_until(lambda e: e.tag == C + "message")
    assert m.get("id") == "after"
    await new.close()
    await o.close()


async def test_kick_and_deluser_reach_a_session_on_another_worker(cluster):
    jid, pw = cluster.make_user()
    c = await login_on(cluster, jid, pw, "k", "worker 1")
    out = request(cluster.data_dir, {"op": "kick", "jid": c.jid, "reason": "bye"})
    assert out
    assert await c.stream_error() == "policy-violation"
    c = await login_on(cluster, jid, pw, "d", "worker 1")
    env = {**os.environ}
    cfg = next(cluster.data_dir.glob("*.toml"))
    r = subprocess.run([sys.executable, "-m", "rookery", "deluser", jid, "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert await c.stream_error() == "not-authorized"
    for _ in range(50):
        if not where(cluster, jid):
            break
        await asyncio.sleep(0.1)
    assert where(cluster, jid) == {}


async def test_a_worker_killed_is_restarted_and_its_sessions_are_forgotten_and_announced(cluster):
    a, apw = cluster.make_user()
    b, bpw = cluster.make_user()
    c, cpw = cluster.make_user()
    d, dpw = cluster.make_user()
    befriend(cluster, a, b)
    watcher = await login_on(cluster, a, apw, "w", "attached")
    await available(watcher)
    victim = await login_on(cluster, b, bpw, "v", "worker 1")
    await available(victim)
    await watcher.recv_until(lambda e: e.tag == C + "presence" and e.get("from") == victim.jid
                             and e.get("type") is None)
    # load between two sessions on worker 0 while worker 1 dies: none of it is disturbed
    s0 = await login_on(cluster, c, cpw, "s", "attached")
    r0 = await login_on(cluster, d, dpw, "r", "attached")
    await drain(watcher)
    pids = worker_pids(cluster)
    n = 300
    for i in range(n):
        s0.send(f"<message to='{r0.jid}' type='chat' id='l{i}'><body>{i}</body></message>")
        if i == n // 3:
            os.kill(pids[1], signal.SIGKILL)
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        el = await r0.recv(5)
        if el.tag == C + "message":
            got.append(el.get("id"))
    assert got == [f"l{i}" for i in range(n)]
    # the victim's contact hears that it is gone (from the surviving worker, RFC 6121 §4.5.3)
    gone = await watcher.recv_until(lambda e: e.tag == C + "presence" and e.get("from") == victim.jid, 10)
    assert gone.get("type") == "unavailable"
    assert b not in {j.split("/")[0] for j in where(cluster, b)}
    # the supervisor restarts worker 1, which joins again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids2 = worker_pids(cluster)
        if pids2.get(1) not in (None, pids[1]) and status(cluster)["workers"]["connected"] == [0, 1]:
            break
        await asyncio.sleep(0.2)
    assert pids2[0] == pids[0] and pids2[1] != pids[1]
    assert status(cluster)["workers"]["connected"] == [0, 1]
    # the victim's client reconnects (to whichever worker) and is seen again
    back = await RawClient().login(cluster.c2s_port, b, bpw, resource="v")
    await available(back)
    again = await watcher.recv_until(lambda e: e.tag == C + "presence" and e.get("from") == back.jid, 10)
    assert again.get("type") is None
    for x in (watcher, s0, r0, back):
        await x.close()


def test_sigterm_stops_every_worker_and_closes_streams_with_system_shutdown(tmp_path):
    s = ProcessServer({"workers": 2, "modules": ["roster", "presence"]}, tmp_path).start()
    try:
        pids = worker_pids(s)
        assert set(pids) == {0, 1}
        jid, pw = s.make_user()

        async def run() -> list[str]:
            clients = [await RawClient().login(s.c2s_port, jid, pw, resource=f"r{i}") for i in range(2)]
            s.proc.send_signal(signal.SIGTERM)
            return [await c.stream_error(10) for c in clients]

        assert asyncio.run(run()) == ["system-shutdown", "system-shutdown"]
        assert s.proc.wait(30) == 0
        for pid in pids.values():
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        s.stop()


async def test_federation_with_a_two_worker_server(rookery_server_factory):
    """Incoming and outgoing server-to-server streams on any worker: dialback keys are derived from
    the shared server secret, so whichever worker the remote server's verification reaches can answer."""
    from s2s_helpers import federated_pair, subscribe_and_chat

    def factory(**kw):  # noqa: ANN003, ANN202
        return rookery_server_factory(**kw, **({"workers": 2} if kw["domains"] == ["a.example"] else {}))

    sa, sb = federated_pair(factory)
    assert isinstance(sa, ProcessServer)
    for _ in range(2):  # users of both workers of a.example
        a_jid, a_pw = sa.make_user()
        b_jid, b_pw = sb.make_user()
        await subscribe_and_chat(sa, a_jid, a_pw, sb, b_jid, b_pw)


async def test_a_component_on_worker_0_serves_users_of_every_worker(rookery_server_factory):
    """XEP-0114 components connect to worker 0; a user's stanza to the component domain from any
    worker is routed there, and the component's answers reach the user on whichever worker."""
    from rookery.streams.component import handshake_digest

    s = rookery_server_factory(workers=2, components={"secrets": {"gw.localhost": "pw"}})
    comp = await RawClient().connect(s.component_port)
    comp.send("<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
              "xmlns:stream='http://etherx.jabber.org/streams' to='gw.localhost'>")
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while comp.header is None:
        await comp._fill(max(0.01, end - loop.time()))
    comp.send(f"<handshake>{handshake_digest(comp.header.get('id'), 'pw')}</handshake>")
    assert (await comp.recv()).tag.endswith("handshake")
    users = []
    for worker in ("attached", "worker 1"):
        jid, pw = s.make_user()
        users.append(await login_on(s, jid, pw, "r", worker))
    for i, u in enumerate(users):
        u.send(f"<message to='bot@gw.localhost' type='chat' id='c{i}'><body>hi</body></message>")
        m = await comp.recv_until(lambda e, i=i: e.tag.endswith("message") and e.get("id") == f"c{i}")
        assert m.get("from") == u.jid
        comp.send(f"<message from='bot@gw.localhost' to='{u.jid}' type='chat' id='r{i}'><body>yo</body></message>")
        back = await u.recv_until(lambda e: e.tag == C + "message")
        assert back.get("id") == f"r{i}" and back.get("from") == "bot@gw.localhost"
    for x in (*users, comp):
        await x.close()


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(tmp_path):
    """Worker 0 cannot listen on its HTTP port: the supervisor does not restart it forever, it stops
    everything and exits 1; the worker's one line says why (as a single process would)."""
    import socket as so

    taken = so.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cfg = tmp_path / "rookery.toml"
    cfg.write_text(f'domains = ["localhost"]\ndata_dir = "{tmp_path}/data"\nworkers = 2\n'
                   '[c2s]\nlisten = ["127.0.0.1:0"]\ndirect_tls_listen = []\n'
                   f'[http]\nlisten = ["127.0.0.1:{port}"]\ntls_listen = []\n[proxy65]\nlisten = []\n')
    try:
        r = subprocess.run([sys.executable, "-m", "rookery", "serve", "--config", str(cfg)], capture_output=True,
                           text=True, timeout=120)
    finally:
        taken.close()
    assert r.returncode == 1
    assert f"rookery: error: worker 0: cannot listen on 127.0.0.1:{port} (http)" in r.stderr, r.stderr
    assert "address already in use" in r.stderr
