"""Bounded live fuzz of the c2s state machine: mutated stream documents, before and after login.

Whatever the input, the server must answer with a defined stream or stanza error (never
``<internal-server-error/>``, which would mean an unhandled exception), leave other sessions alone, and
keep serving.  Seeded, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import random

from xmpp_helpers import HEADER, RawClient

SEEDS = [
    "<message to='{peer}' type='chat' id='m1'><body>hi</body></message>",
    "<presence><priority>5</priority><status>x</status></presence>",
    "<presence to='{peer}' type='subscribe'/>",
    "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='{peer}' name='p'><group>g</group></item></query></iq>",
    "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    "<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>x</FN></vCard></iq>",
    "<iq type='set' id='p1'><query xmlns='jabber:iq:private'><x xmlns='urn:x'>y</x></query></iq>",
    "<iq type='get' id='l1' to='{peer}'><query xmlns='jabber:iq:last'/></iq>",
    "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r</resource></bind></iq>",
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>biwsbj1hLHI9eA==</auth>",
    "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>Yz1iaXdzLHI9eA==</response>",
    "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    "<iq type='get' id='a1'><query xmlns='jabber:iq:auth'><username>x</username></query></iq>",
]
TOKENS = ["'", '"', "<", ">", "/", "=", " ", "type='error'", "to=''", "to='@'", "id=''", "xmlns=''",
          "&amp;", "&#0;", "\u00e9", "\ud7ff", "type='bogus'", "<x/>", "</x>", "priority", "-129", "99999"]


def mutate(rng: random.Random, s: str) -> str:
    chars = list(s)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.4 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.8:
            chars[pos:pos] = list(rng.choice(TOKENS))
        else:
            j = rng.randrange(len(chars) + 1)
            chars[pos:pos] = chars[j:j + rng.randint(1, 20)]
    return "".join(chars)


async def _drain_for_errors(c: RawClient, seconds: float) -> list[str]:
    """Collect defined conditions of any stream/stanza errors received; stop at close or timeout."""
    conditions: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            el = await c.recv(max(0.01, deadline - loop.time()))
        except (TimeoutError, ConnectionError, OSError):
            break
        except Exception:  # our test client's own parser choking is fine: the server's output is what we check
            break
        for err in el.iter():
            if err.tag.endswith("}internal-server-error") or err.tag == "internal-server-error":
                conditions.append("internal-server-error")
    return conditions


async def test_mutated_input_never_causes_internal_errors_or_disturbs_others(rookery_server, caplog):
    import logging

    caplog.set_level(logging.ERROR, logger="rookery")
    rng = random.Random(6120)
    peer, peer_pw = rookery_server.make_user()
    watcher = await RawClient().login(rookery_server.c2s_port, peer, peer_pw, resource="watch")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 25
    bad: list[tuple[str, str]] = []
    cases = 0
    while cases < 120 and loop.time() < deadline:
        cases += 1
        stanza = mutate(rng, rng.choice(SEEDS).format(peer=peer))
        jid, pw = rookery_server.make_user()
        try:
            if rng.random() < 0.5:
                c = await RawClient().login(rookery_server.c2s_port, jid, pw, resource=f"f{cases}")
            else:
                c = await RawClient().connect(rookery_server.c2s_port)
                c.send(HEADER.format(to="localhost"))
        except (ConnectionError, OSError, TimeoutError):
            continue
        c.send(stanza)
        found = await _drain_for_errors(c, 0.15)
        if found:
            bad.append((stanza, found[0]))
        await c.close()
    assert cases >= 30
    assert not bad, bad[:5]
    errors = [r for r in caplog.records if r.name.startswith("rookery") and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:5]]
    # the watcher was not disturbed, and the server still answers
    r = await watcher.iq("<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert r.get("type") == "result"
    await watcher.close()
