"""In-process timing of the group chat fan-out (XEP-0045 room message to N local occupants): the
registry's ``deliver_each`` (one serialization with a slot for ``to``) against one serialization per
occupant (a copy with its own ``to`` through ``Session.send``, what routing each copy would cost at
least).  Sessions are real ``Session`` objects on in-memory streams that keep what they are given.

    .venv/bin/python bench/muc_fanout.py          # 10, 100, 1000 occupants
"""

from __future__ import annotations

import sys
import time
from copy import copy
from xml.etree.ElementTree import Element, SubElement

from rookery.jid import JID
from rookery.routing.registry import LocalSessionRegistry
from rookery.streams.session import Session
from rookery.xml.serializer import serialize


class Sink:
    closed = False

    def __init__(self) -> None:
        self.n = 0

    def send(self, el: Element) -> None:
        serialize(el)  # what the stream's framer does
        self.n += 1

    def send_data(self, data: str) -> None:
        self.n += 1

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        pass


def message() -> Element:
    m = Element("message", {"from": "room@conference.localhost/alice", "type": "groupchat", "id": "abc123"})
    SubElement(m, "body").text = "x" * 100
    SubElement(m, "{urn:xmpp:occupant-id:0}occupant-id", id="Zm9vYmFyYmF6cXV1eA")
    SubElement(m, "{urn:xmpp:sid:0}stanza-id", id="q1w2e3r4t5y6", by="room@conference.localhost")
    return m


def run(n: int, rounds: int) -> tuple[float, float]:
    reg = LocalSessionRegistry([])
    targets = []
    for i in range(n):
        s = Session(JID.parse(f"user{i}@localhost/res"), [])
        s.attach(Sink())
        reg.add(s)
        targets.append((s, s.jid.full))
    el = message()
    t0 = time.perf_counter()
    for _ in range(rounds):
        reg.deliver_each(targets, el)
    once = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(rounds):
        for s, to in targets:
            c = copy(el)
            c.set("to", to)
            s.send(c)
    each = time.perf_counter() - t0
    total = n * rounds
    return total / once, total / each


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 1000]
    print(f"{'occupants':>10} {'deliver_each/s':>16} {'per-occupant/s':>16} {'speed-up':>9}")
    for n in sizes:
        rounds = max(20, 200_000 // n)
        a, b = run(n, rounds)
        print(f"{n:>10} {a:>16,.0f} {b:>16,.0f} {a / b:>8.1f}x")


if __name__ == "__main__":
    main()
