"""In-process hot-path timing: chat messages from one bound c2s stream to another through the whole
server (parser, stream, router, registry, session, serializer), over in-memory transports.
Works with the code before (c2s.C2SStream(server, transport)) and after (server.new_c2s_stream).
Usage: taskset -c 1 .venv/bin/python bench/hotpath.py [N] [ROUNDS]   (docs/performance.md)
HOTPATH_METRICS=1 turns the Prometheus metrics on ([metrics] listen)."""

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


class T:
    def __init__(self):
        self.is_secure = False
        self.ssl_context = None
        self.cb_data = None
        self.peer_ip = "127.0.0.1"
        self.is_loopback = True
        self.out = []
        self.stream = None

    can_starttls = False

    def write(self, data):
        self.out.append(data)

    def close(self):
        pass

    def authenticated(self):
        pass

    write_blocked = False

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


HDR = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
       "to='localhost' version='1.0'>")


async def main(n, rounds):
    d = tempfile.mkdtemp()
    # the modules of bench/rookery-bench.toml: the core message path (HOTPATH_ALL=1: every default module)
    mods = {} if os.environ.get("HOTPATH_ALL") else {"modules": ["roster", "presence", "disco", "ping"]}
    # HOTPATH_METRICS=1: with the Prometheus metrics on (their own listener)
    if os.environ.get("HOTPATH_METRICS"):
        mods = {**mods, "metrics": {"listen": ["127.0.0.1:0"]}}
    cfg = Config.model_validate({"data_dir": d, **mods, "http": {"listen": [], "tls_listen": []}, "c2s": {"listen": [], "direct_tls_listen": [], "require_encryption": False,
                                                        "allow_plaintext_auth": True, "max_bytes_per_second": 0,
                                                        "keepalive_interval": 0}})
    srv = Server(cfg)
    await srv.start()
    for u in ("a", "b"):
        await srv.storage.accounts.create("localhost", u, make_credentials("pw", iterations=4096))

    def stream(t):
        if hasattr(srv, "new_c2s_stream"):
            return srv.new_c2s_stream(t)
        from rookery.streams.c2s import C2SStream
        return C2SStream(srv, t)

    async def login(u):
        t = T()
        t.stream = stream(t)
        t.stream.data_received(HDR.encode())
        tok = base64.b64encode(f"\0{u}\0pw".encode()).decode()
        t.stream.data_received(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{tok}</auth>".encode())
        for _ in range(50):
            await asyncio.sleep(0.01)
            if b"success" in b"".join(t.out):
                break
        t.stream.data_received(HDR.encode())
        t.stream.data_received(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>")
        await asyncio.sleep(0.05)
        assert b"<jid>" in b"".join(t.out), b"".join(t.out)
        t.out.clear()
        return t

    a = await login("a")
    b = await login("b")
    msg = b"<message to='b@localhost/r' type='chat' id='x'><body>hello there, this is a benchmark message</body></message>"
    chunk = msg * 100
    gc.collect()
    gc.freeze()
    best = None
    for _ in range(rounds):
        b.out.clear()
        t0 = time.perf_counter()
        for _ in range(n // 100):
            a.stream.data_received(chunk)
        dt = time.perf_counter() - t0
        assert len(b.out) == n, len(b.out)
        best = dt if best is None else min(best, dt)
    print(f"{n / best:,.0f} msgs/s  ({best / n * 1e6:.2f} us/msg, best of {rounds})")
    await srv.stop(timeout=0)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100000, int(sys.argv[2]) if len(sys.argv) > 2 else 7))
