"""In-process pubsub fan-out: one publisher, N subscribers of one node on pubsub.localhost, all bound
c2s streams over in-memory transports (the same harness as hotpath.py); the publisher sends K
publishes at once and we time until every subscriber has every notification written to its transport.
Reports notifications delivered per second, for a persistent node (each publish also writes the item
to SQLite) and a transient one.
PER_RECIPIENT=1 serializes each notification separately (the path without SessionRegistry.deliver_each).
Usage: taskset -c 1 .venv/bin/python bench/pubsub_bench.py [N=1000] [K=200] [ROUNDS=3]   (docs/performance.md)"""

import asyncio
import base64
import gc
import os
import sys
import tempfile
import time

from rookery.config import Config
from rookery.server import Server
from rookery.streams.sasl import make_credentials

HDR = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
       "to='localhost' version='1.0'>")
PS = "http://jabber.org/protocol/pubsub"
#: notifications written so far, and the number awaited
COUNT = [0, 0]
DONE: list[asyncio.Event] = []


class T:
    """An in-memory transport that counts the notifications written to it."""

    can_starttls = False
    write_blocked = False

    def __init__(self):
        self.is_secure = False
        self.ssl_context = None
        self.cb_data = None
        self.peer_ip = "127.0.0.1"
        self.is_loopback = True
        self.out = []
        self.events = 0
        self.stream = None

    def write(self, data):
        if b"pubsub#event" in data:
            n = data.count(b"<message ")
            self.events += n
            COUNT[0] += n
            if COUNT[0] >= COUNT[1]:
                DONE[0].set()
        else:
            self.out.append(data)

    def close(self):
        pass

    def authenticated(self):
        pass

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def main(n, k, rounds):
    d = tempfile.mkdtemp()
    cfg = Config.model_validate({
        "data_dir": d, "modules": ["roster", "presence", "disco", "pubsub"],
        "pubsub": {"max_items": 100000, "default_max_items": 100},
        "http": {"listen": [], "tls_listen": []},
        "c2s": {"listen": [], "direct_tls_listen": [], "require_encryption": False, "allow_plaintext_auth": True,
                "max_bytes_per_second": 0, "keepalive_interval": 0}})
    if os.environ.get("PER_RECIPIENT"):  # for comparison: one serialization per subscriber
        from rookery.routing.registry import LocalSessionRegistry

        LocalSessionRegistry.deliver_each = None  # type: ignore[assignment,method-assign]
    srv = Server(cfg)
    await srv.start()
    creds = make_credentials("pw", iterations=4096)
    users = ["pub"] + [f"s{i}" for i in range(n)]
    for u in users:
        await srv.storage.accounts.create("localhost", u, creds)

    async def login(u):
        t = T()
        t.stream = srv.new_c2s_stream(t)
        t.stream.data_received(HDR.encode())
        tok = base64.b64encode(f"\0{u}\0pw".encode()).decode()
        t.stream.data_received(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{tok}</auth>".encode())
        for _ in range(500):
            await asyncio.sleep(0.01)
            if b"success" in b"".join(t.out):
                break
        t.stream.data_received(HDR.encode())
        t.stream.data_received(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>")
        for _ in range(500):
            await asyncio.sleep(0.01)
            if b"<jid>" in b"".join(t.out):
                break
        t.out.clear()
        return t

    async def wait_for(pred, what):
        for _ in range(60000):
            if pred():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"timed out: {what}")

    pub = await login("pub")
    subs = []
    for i in range(0, n, 100):
        subs += await asyncio.gather(*(login(u) for u in users[1 + i:1 + i + 100]))
    print(f"{n} subscribers logged in")
    for node, persist in (("persistent", "1"), ("transient", "0")):
        form = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{PS}#node_config</value></field>"
                f"<field var='pubsub#persist_items'><value>{persist}</value></field></x>")
        pub.stream.data_received(f"<iq type='set' id='c-{node}' to='pubsub.localhost'><pubsub xmlns='{PS}'>"
                                 f"<create node='{node}'/><configure>{form}</configure></pubsub></iq>".encode())
        await wait_for(lambda node=node: b"c-" + node.encode() in b"".join(pub.out), "create")
        for i, s in enumerate(subs):
            s.stream.data_received(f"<iq type='set' id='s' to='pubsub.localhost'><pubsub xmlns='{PS}'>"
                                   f"<subscribe node='{node}' jid='s{i}@localhost/r'/></pubsub></iq>".encode())
        await wait_for(lambda: all(b"subscribed" in b"".join(s.out) for s in subs), "subscriptions")
        for s in subs:
            s.out.clear()
        item = ("<item><entry xmlns='http://www.w3.org/2005/Atom'><title>A headline of ordinary length</title>"
                "<summary>Some eighty bytes of summary text, which is about what a feed item carries.</summary>"
                "</entry></item>")
        chunk = "".join(f"<iq type='set' id='p{j}' to='pubsub.localhost'><pubsub xmlns='{PS}'>"
                        f"<publish node='{node}'>{item}</publish></pubsub></iq>" for j in range(k)).encode()
        gc.collect()
        best = None
        prof = None
        if os.environ.get("PUBSUB_PROFILE"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        for s in subs:
            s.events = 0
        for r in range(rounds):
            DONE[:] = [asyncio.Event()]
            COUNT[:] = [0, n * k]
            t0 = time.perf_counter()
            pub.stream.data_received(chunk)
            await asyncio.wait_for(DONE[0].wait(), 600)
            dt = time.perf_counter() - t0
            assert all(s.events == k * (r + 1) for s in subs)
            best = dt if best is None else min(best, dt)
        if prof is not None:
            prof.disable()
            prof.print_stats("tottime")
        print(f"{node:>10} node: {n * k / best:,.0f} notifications/s delivered to {n} subscribers "
              f"({k / best:,.0f} publishes/s, best of {rounds})")
    await srv.stop(timeout=0)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(int(a[0]) if a else 1000, int(a[1]) if len(a) > 1 else 200, int(a[2]) if len(a) > 2 else 3))
