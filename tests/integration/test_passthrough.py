"""Pass-through of IM payloads the server does not interpret (issue 9, item 9): XEP-0184 receipts,
XEP-0333 chat markers, XEP-0085 chat states, XEP-0308 corrections, XEP-0071 XHTML-IM and an OMEMO
(XEP-0384, eu.siacs.conversations.axolotl) payload reach the recipient unchanged — between two online
users, inside XEP-0280 carbon copies, and through offline storage (XEP-0160, with only a XEP-0203
delay added).  Chat states without a body are not stored offline (XEP-0160 §3)."""

from __future__ import annotations

import asyncio
from functools import partial
from xml.etree.ElementTree import Element, fromstring

from xmpp_helpers import RawClient, drain, tls_login

from rookery.jid import JID

C = "{jabber:client}"
DELAY = "{urn:xmpp:delay}delay"

PAYLOADS = {
    "receipt-request": "<body>ack me</body><request xmlns='urn:xmpp:receipts'/>",
    "receipt": "<received xmlns='urn:xmpp:receipts' id='receipt-request'/>",
    "marker-markable": "<body>mark me</body><markable xmlns='urn:xmpp:chat-markers:0'/>",
    "marker-displayed": "<displayed xmlns='urn:xmpp:chat-markers:0' id='marker-markable'/>",
    "chatstate-with-body": "<body>typing done</body><active xmlns='http://jabber.org/protocol/chatstates'/>",
    "correction": "<body>fixed text</body><replace id='receipt-request' xmlns='urn:xmpp:message-correct:0'/>",
    "xhtml": ("<body>hi there</body><html xmlns='http://jabber.org/protocol/xhtml-im'>"
              "<body xmlns='http://www.w3.org/1999/xhtml'><p style='font-weight:bold'>hi <em>there</em> "
              "&amp; &lt;you&gt;</p></body></html>"),
    "omemo": ("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='27183'>"
              "<key rid='31415' prekey='true'>MwohBWKP3Hv0xSv4+Ns3Ofn7Ei5lvxQgZmfKmZkeH/Zs</key>"
              "<key rid='12321'>MwohBQrIYkN0TuLgjjLW/MoV+UZ4WKiJWu6cWr==</key><iv>U4A0x5qsJXBCh9Nh</iv></header>"
              "<payload>hcmmONO9lRPiFeFL1QfT</payload></encrypted>"
              "<encryption xmlns='urn:xmpp:eme:0' namespace='eu.siacs.conversations.axolotl'/>"
              "<body>I sent you an OMEMO encrypted message.</body><store xmlns='urn:xmpp:hints'/>"),
}
CHATSTATE_ONLY = "<composing xmlns='http://jabber.org/protocol/chatstates'/>"


login = partial(tls_login, presence=True)  # available after login


def message(id: str, to: str, payload: str) -> str:
    return f"<message to='{to}' type='chat' id='{id}' xml:lang='en'>{payload}</message>"


SID = "{urn:xmpp:sid:0}stanza-id"


def canon(el: Element, drop: tuple[str, ...] = ()) -> tuple:
    """A comparable form: tag, attributes (without ``drop``), text, children in order; without the
    XEP-0359 ``<stanza-id/>`` the archive (XEP-0313) stamps on messages it archives for the recipient."""
    attrs = tuple(sorted((k, v) for k, v in el.attrib.items() if k not in drop))
    return (el.tag, attrs, (el.text or "").strip() or None, tuple(canon(c) for c in el if c.tag != SID))


def as_received(xml: str) -> Element:
    """The stanza as the test client parses it (content in jabber:client)."""
    return fromstring(f"<stream xmlns='jabber:client'>{xml}</stream>")[0]


def next_message(c: RawClient, timeout: float = 5.0):
    return c.recv_until(lambda e: e.tag == f"{C}message", timeout)


async def test_payloads_route_unchanged_between_online_users_and_in_carbons(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a", presence=False)
    b = await login(rookery_server, bob, bpw, "b")
    b2 = await login(rookery_server, bob, bpw, "b2", presence=False)
    try:
        r = await b2.iq("<iq type='set' id='cb'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
        assert r.get("type") == "result"
        for id, payload in {**PAYLOADS, "chatstate-only": CHATSTATE_ONLY}.items():
            xml = message(id, b.jid, payload)
            a.send(xml)
            got = await next_message(b)
            sent = as_received(xml)
            assert got.get("from") == a.jid
            assert canon(got, drop=("from",)) == canon(sent), id
            # the carbon copy of bob's second resource wraps the very same stanza
            copy = await next_message(b2)
            inner = copy.find("{urn:xmpp:carbons:2}received/{urn:xmpp:forward:0}forwarded/" + C + "message")
            assert inner is not None and canon(inner) == canon(got), id
    finally:
        for c in (a, b, b2):
            await c.close()


async def test_payloads_survive_offline_storage_and_chat_states_alone_are_not_stored(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a", presence=False)
    try:
        sent = {}
        for id, payload in PAYLOADS.items():
            xml = message(id, bob, payload)
            a.send(xml)
            sent[id] = as_received(xml)
        a.send(message("chatstate-only", bob, CHATSTATE_ONLY))
        # the ping answer comes after all of them were handled (in order)
        await a.iq("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        o = JID.parse(bob)
        for _ in range(50):
            n = rookery_server.call(rookery_server.server.storage.offline.count, o.domain, o.local)
            if n == len(PAYLOADS):
                break
            await asyncio.sleep(0.05)
        assert n == len(PAYLOADS)  # not the chat state alone
        # and the sender got no error for it (silently dropped, XEP-0160 §3)
        assert not [e for e in await drain(a) if e.get("type") == "error"]

        b = await login(rookery_server, bob, bpw, "b")
        try:
            got = [await next_message(b) for _ in PAYLOADS]
            assert [e.get("id") for e in got] == list(PAYLOADS)
            for el in got:
                delays = el.findall(DELAY)
                assert len(delays) == 1 and delays[0].get("from") == rookery_server.domain
                el.remove(delays[0])
                assert canon(el, drop=("from", "to")) == canon(sent[el.get("id")], drop=("to",)), el.get("id")
                assert el.get("to") == bob and el.get("from") == a.jid
            assert not [e for e in await drain(b) if e.tag == f"{C}message"]
        finally:
            await b.close()
    finally:
        await a.close()

