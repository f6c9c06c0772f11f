#!/usr/bin/env python3
"""A do-nothing XMPP "server" that measures the load generator's own ceiling.

    taskset -c 1 python bench/nullserver.py --port 35222 &
    taskset -c 0 python bench/xmppload.py --port 35222 --server-pid $! ...

It negotiates just enough of RFC 6120 for ``xmppload.py`` (SASL PLAIN, any password; resource binding),
then relays every byte a session sends, unparsed, to its pair (bench0 <-> bench1, bench2 <-> bench3, ...:
user index XOR 1), which is where ``xmppload.py`` addresses its messages anyway. Relaying costs it almost
nothing per message, so the messages/s measured against it is what the client can drive. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import resource
import sys

NS_STREAM = "http://etherx.jabber.org/streams"
HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='" + NS_STREAM + "' "
    "from='{domain}' id='{sid}' version='1.0'>"
)
FEATURES_AUTH = (
    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>"
    "</mechanisms></stream:features>"
)
FEATURES_BIND = "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
AUTH_RE = re.compile(rb"<auth\b[^>]*>([^<]*)</auth>")
IQ_RE = re.compile(rb"<iq\b[^>]*\bid=['\"]([^'\"]*)['\"][^>]*>.*?<resource>([^<]*)</resource>.*?</iq>", re.S)

sessions: dict[int, Relay] = {}
DIGITS = re.compile(r"(\d+)$")


class Relay(asyncio.Protocol):
    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.buf = b""
        self.state = "header"  # header -> auth -> header2 -> bind -> relay
        self.user = ""
        self.index = -1
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # relayed to us before we were bound

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if sessions.get(self.index) is self:
            del sessions[self.index]

    def deliver(self, data: bytes) -> None:
        if self.state == "relay":
            self.transport.write(data)  # type: ignore[union-attr]
        else:
            self.pending.append(data)

    def data_received(self, data: bytes) -> None:
        if self.state == "relay":
            peer = sessions.get(self.index ^ 1)
            if peer is not None:
                peer.deliver(data)
            return
        self.buf += data
        self.negotiate()

    def negotiate(self) -> None:
        t = self.transport
        assert t is not None
        while True:
            if self.state in ("header", "header2"):
                i = self.buf.find(b"<stream:stream")
                j = self.buf.find(b">", i)
                if i < 0 or j < 0:
                    return
                self.buf = self.buf[j + 1 :]
                t.write(HEADER.format(domain=self.domain, sid=id(self)).encode())
                t.write((FEATURES_AUTH if self.state == "header" else FEATURES_BIND).encode())
                self.state = "auth" if self.state == "header" else "bind"
            elif self.state == "auth":
                m = AUTH_RE.search(self.buf)
                if not m:
                    return
                self.buf = self.buf[m.end() :]
                parts = base64.b64decode(m[1]).split(b"\0")
                self.user = parts[1].decode() if len(parts) == 3 else ""
                d = DIGITS.search(self.user)
                self.index = int(d[1]) if d else -1
                t.write(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                self.state = "header2"
            elif self.state == "bind":
                m = IQ_RE.search(self.buf)
                if not m:
                    return
                rest = self.buf[m.end() :]
                self.buf = b""
                jid = f"{self.user}@{self.domain}/{m[2].decode()}"
                t.write(
                    f"<iq type='result' id='{m[1].decode()}'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    f"<jid>{jid}</jid></bind></iq>".encode()
                )
                self.state = "relay"
                sessions[self.index] = self
                for data in self.pending:
                    t.write(data)
                self.pending = []
                if rest:
                    self.data_received(rest)
                return


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=35222)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--lifetime", type=float, default=3600, help="exit after this many seconds")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Relay(args.domain), "127.0.0.1", args.port, backlog=1024)
    print(f"nullserver on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    async with server:
        await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
