#!/usr/bin/env python3
"""XEP-0045 group chat fan-out benchmark for any server (Rookery, Prosody's mod_muc, ...).

    python bench/muc_bench.py --port 25222 --occupants 100 --duration 10
    bench/muc.sh                          # Rookery and Prosody side by side, 10 / 100 / 1,000 occupants

N users (``bench{n}``, as for ``xmppload.py``) log in and join one room (the first creates it and
accepts the default configuration: an instant room, XEP-0045 §10.1.2).  Then ``--senders`` of them send
groupchat messages as fast as a window of ``--window`` unacknowledged messages per sender allows (a
message is acknowledged when its sender receives the room's reflection of it).  Every occupant receives
every message: the result is **delivered stanzas/s** (messages received by all occupants together per
second), plus the messages/s sent into the room.

Stdlib only; the login code and the cheap id scanner are ``xmppload.py``'s.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import xmppload
from xmppload import ID_RE, Bench, Conn, CpuMeter, log, mono_ns, xml_escape

MUC = "http://jabber.org/protocol/muc"


class MucConn(Conn):
    """After joining, received bytes are scanned for message ids (every occupant counts deliveries; a
    sender also counts the reflections of its own messages, which refill its window)."""

    joined: asyncio.Future[None] | None = None

    def fast_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        end = data.rfind(b">") + 1
        if end != len(data):
            self.buf = data[end:]
            data = data[:end]
        bench: MucBench = self.bench  # type: ignore[assignment]
        bench.last_rx = time.monotonic()
        j = self.joined
        if j is not None and not j.done() and (b"<subject" in data):
            j.set_result(None)
        if b"stream:error" in data or b"</stream:stream" in data:
            bench.errors["stream_error_in_session"] += 1
        if b"type='error'" in data or b'type="error"' in data:
            bench.errors["error_stanza"] += 1
        n = 0
        mine = 0
        tag = self.peer_tag
        for m in ID_RE.finditer(data):
            n += 1
            if m[1] == tag:
                mine += 1
                bench.latencies.append(mono_ns() - int(m[3]))
        if n:
            bench.received += n
        if mine:
            self.acked += mine
            if bench.flood:
                self.refill()


class MucBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.window = max(1, args.window)
        self.refill_batch = 1
        self.room = f"{args.room}@{args.service}"
        self.last_rx = 0.0

    async def join_all(self) -> None:
        conns = [self.conns[i] for i in sorted(self.conns)]
        loop = asyncio.get_running_loop()
        first = conns[0]
        # the creator: join, then accept the default configuration (instant room)
        first.go_fast()
        first.joined = loop.create_future()  # type: ignore[attr-defined]
        first.write(f"<presence to='{self.room}/u{first.idx}'><x xmlns='{MUC}'><history maxstanzas='0'/></x></presence>")
        await asyncio.wait_for(first.joined, 30)  # type: ignore[attr-defined]
        first.write(f"<iq type='set' to='{self.room}' id='cfg'><query xmlns='{MUC}#owner'>"
                    "<x xmlns='jabber:x:data' type='submit'/></query></iq>")
        await asyncio.sleep(0.5)
        sem = asyncio.Semaphore(self.args.join_concurrency)
        t0 = time.monotonic()

        async def join(c: Conn) -> None:
            async with sem:
                c.go_fast()
                c.joined = loop.create_future()  # type: ignore[attr-defined]
                c.write(f"<presence to='{self.room}/u{c.idx}'><x xmlns='{MUC}'><history maxstanzas='0'/></x>"
                        "</presence>")
                try:
                    await asyncio.wait_for(c.joined, 60)  # type: ignore[attr-defined]
                except TimeoutError:
                    self.errors["join_timeout"] += 1

        await asyncio.gather(*(join(c) for c in conns[1:]))
        self.result["join_wall_s"] = round(time.monotonic() - t0, 2)
        log(f"{len(conns)} occupants joined in {self.result['join_wall_s']} s")
        # the join presences (N * N / 2 of them) may still be on their way: wait for a quiet second
        deadline = time.monotonic() + 600
        while time.monotonic() - self.last_rx < 1.0 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        self.result["join_quiet_s"] = round(time.monotonic() - t0, 2)
        await asyncio.sleep(self.args.settle)
        self.received = 0

    async def fanout(self) -> None:
        a = self.args
        conns = [self.conns[i] for i in sorted(self.conns)]
        senders = conns[: max(1, min(a.senders, len(conns)))]
        for c in senders:
            c.peer_tag = str(c.idx).encode()
            c.msg_head = f"<message type='groupchat' to='{xml_escape(self.room)}' id='xl{c.idx}."
        self.flood = True
        for c in senders:
            c.refill()
        await asyncio.sleep(a.warmup)
        r0, s0, t0 = self.received, sum(c.acked for c in senders), time.monotonic()
        self.latencies = []
        meter = CpuMeter(a.server_pid)
        await asyncio.sleep(a.duration)
        r1, s1, t1 = self.received, sum(c.acked for c in senders), time.monotonic()
        self.record_cpu("fanout", meter, r1 - r0)
        self.flood = False
        lat = sorted(self.latencies)
        await asyncio.sleep(1.0)
        r = self.result
        r["occupants"] = len(conns)
        r["senders"] = len(senders)
        r["delivered_per_s"] = round((r1 - r0) / (t1 - t0), 1)
        r["room_msgs_per_s"] = round((s1 - s0) / (t1 - t0), 1)
        r["reflection_p50_ms"] = round(lat[len(lat) // 2] / 1e6, 2) if lat else None
        r["reflection_p99_ms"] = round(lat[int(0.99 * (len(lat) - 1))] / 1e6, 2) if lat else None
        log(f"{r['occupants']} occupants: {r['room_msgs_per_s']} room msgs/s, {r['delivered_per_s']} delivered/s")

    async def run(self) -> None:
        await self.ramp()
        if len(self.conns) < 2:
            return
        await self.join_all()
        await self.fanout()


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    bench = MucBench(args)
    try:
        await asyncio.wait_for(bench.run(), args.timeout)
    except TimeoutError:
        bench.errors["overall_timeout"] += 1
    try:
        await asyncio.wait_for(bench.close_all(), 10)
    except TimeoutError:
        bench.errors["close_timeout"] += 1
    bench.scram.save()
    r = bench.result
    r["errors"] = sum(bench.errors.values())
    r["error_kinds"] = dict(bench.errors)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--occupants", "-n", type=int, default=100)
    p.add_argument("--senders", type=int, default=5)
    p.add_argument("--window", type=int, default=10, help="unacknowledged messages per sender")
    p.add_argument("--service", default="conference.localhost")
    p.add_argument("--room", default="bench")
    p.add_argument("--join-concurrency", type=int, default=20)
    known, rest = p.parse_known_args(argv)
    args = xmppload.parse_args(rest)  # --host, --port, --duration, --warmup, --server-pid, --json ...
    for k, v in vars(known).items():
        setattr(args, k, v)
    args.connections = known.occupants
    xmppload.Conn = MucConn  # type: ignore[misc]  # Bench.login makes connections of this class
    xmppload.QUIET = args.quiet
    xmppload.raise_fd_limit(args.connections)
    r = asyncio.run(amain(args))
    out = json.dumps(r)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
