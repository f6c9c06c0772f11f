"""XEP-0280 Message Carbons against a running server: slixmpp's xep_0280 with two resources of one
account and another account, and raw XML for the eligibility rules (§6.1), the XEP-0334 hints (§7),
the copies' addresses and the enable/disable errors."""

from __future__ import annotations

import asyncio

from xmpp_helpers import (
    RawClient,
    available,
    disconnect,
    error_condition,
    one_and_two_workers,
    slix_client,
    tls_login,
)

rookery_server = one_and_two_workers("rookery-carbons-")


NS = "urn:xmpp:carbons:2"
FWD = "urn:xmpp:forward:0"
C = "{jabber:client}"


async def login(server, jid: str, pw: str, resource: str, carbons: bool = True, presence: bool = True) -> RawClient:
    c = await tls_login(server, jid, pw, resource)
    if carbons:
        r = await c.iq(f"<iq type='set' id='cb'><enable xmlns='{NS}'/></iq>")
        assert r.get("type") == "result", r.attrib
    if presence:
        await available(c)
    return c


async def no_message(c: RawClient, timeout: float = 0.3) -> None:
    """Nothing but presence arrives within ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (left := end - loop.time()) > 0:
        try:
            el = await c.recv(left)
        except TimeoutError:
            return
        assert el.tag == f"{C}presence", (el.tag, el.attrib)


def carbon(el, direction: str):
    """The forwarded message of a carbon copy ``el`` (or None)."""
    return el.find(f"{{{NS}}}{direction}/{{{FWD}}}forwarded/{C}message")


async def test_slixmpp_received_and_sent_carbons_between_two_resources(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    phone = await slix_client(rookery_server, f"{alice}/phone", apw, plugins=("xep_0280",))
    desk = await slix_client(rookery_server, f"{alice}/desk", apw, plugins=("xep_0280",))
    b = await slix_client(rookery_server, f"{bob}/pc", bpw)
    try:
        await phone.plugin["xep_0280"].enable(timeout=5)
        await desk.plugin["xep_0280"].enable(timeout=5)
        got: asyncio.Queue = asyncio.Queue()
        desk.add_event_handler("carbon_received", lambda m: got.put_nowait(("received", m)))
        desk.add_event_handler("carbon_sent", lambda m: got.put_nowait(("sent", m)))
        phone_carbons: list = []
        phone.add_event_handler("carbon_received", phone_carbons.append)
        phone.add_event_handler("carbon_sent", phone_carbons.append)
        phone_msgs: asyncio.Queue = asyncio.Queue()
        phone.add_event_handler("message", phone_msgs.put_nowait)
        bob_msgs: asyncio.Queue = asyncio.Queue()
        b.add_event_handler("message", bob_msgs.put_nowait)

        # bob writes to alice's phone: the desk gets a <received/> copy
        b.send_message(mto=f"{alice}/phone", mbody="hello phone", mtype="chat")
        m = await asyncio.wait_for(phone_msgs.get(), 5)
        assert m["body"] == "hello phone"
        kind, c = await asyncio.wait_for(got.get(), 5)
        assert kind == "received"
        assert c["from"] == alice and c["to"] == f"{alice}/desk"
        inner = c["carbon_received"]
        assert inner["body"] == "hello phone" and inner["from"].bare == bob

        # the phone answers: the desk gets a <sent/> copy, the phone none
        phone.send_message(mto=bob, mbody="hi bob", mtype="chat")
        m = await asyncio.wait_for(bob_msgs.get(), 5)
        assert m["body"] == "hi bob"
        kind, c = await asyncio.wait_for(got.get(), 5)
        assert kind == "sent"
        inner = c["carbon_sent"]
        assert inner["body"] == "hi bob" and inner["to"].bare == bob and inner["from"] == f"{alice}/phone"
        await asyncio.sleep(0.2)
        assert phone_carbons == []
    finally:
        await disconnect(phone, desk, b)


async def test_copies_are_from_the_bare_jid_to_each_resource_and_keep_the_type(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a1 = await login(rookery_server, alice, apw, "one")
    a2 = await login(rookery_server, alice, apw, "two")
    a3 = await login(rookery_server, alice, apw, "three", carbons=False)
    b = await login(rookery_server, bob, bpw, "b", carbons=False, presence=False)
    try:
        a1.send(f"<message to='{bob}/b' type='chat' id='m1'><body>x</body></message>")
        got = await b.recv_until(lambda e: e.tag == f"{C}message")
        assert got.get("id") == "m1"
        copy = await a2.recv_until(lambda e: e.tag == f"{C}message")
        assert copy.get("from") == alice and copy.get("to") == f"{alice}/two" and copy.get("type") == "chat"
        inner = carbon(copy, "sent")
        assert inner is not None and inner.get("id") == "m1" and inner.get("from") == f"{alice}/one"
        # not to the sender, not to a resource without carbons
        await no_message(a1, 0.3)
        await no_message(a3, 0.1)
    finally:
        for c in (a1, a2, a3, b):
            await c.close()


async def test_eligibility_rules_and_hints(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a1 = await login(rookery_server, alice, apw, "one")
    a2 = await login(rookery_server, alice, apw, "two")
    b = await login(rookery_server, bob, bpw, "b", carbons=False, presence=False)
    copied = {
        "normal-body": "<message to='{to}' id='{id}'><body>x</body></message>",
        "receipt": "<message to='{to}' id='{id}'><received xmlns='urn:xmpp:receipts' id='z'/></message>",
        "marker": "<message to='{to}' id='{id}'><displayed xmlns='urn:xmpp:chat-markers:0' id='z'/></message>",
        "chatstate": "<message to='{to}' type='chat' id='{id}'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "invite": "<message to='{to}' id='{id}'><x xmlns='jabber:x:conference' jid='room@conf.example'/></message>",
    }
    not_copied = {
        "normal-nobody": "<message to='{to}' id='{id}'><subject>s</subject></message>",
        "headline": "<message to='{to}' type='headline' id='{id}'><body>x</body></message>",
        "private": "<message to='{to}' type='chat' id='{id}'><body>x</body><private xmlns='urn:xmpp:carbons:2'/>"
                   "<no-copy xmlns='urn:xmpp:hints'/></message>",
        "no-copy": "<message to='{to}' type='chat' id='{id}'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>",
        "fake-carbon": "<message to='{to}' type='chat' id='{id}'><sent xmlns='urn:xmpp:carbons:2'/></message>",
    }
    try:
        for name, xml in {**copied, **not_copied}.items():
            a1.send(xml.format(to=f"{bob}/b", id=name))
            # sent copies
            got = await b.recv_until(lambda e: e.tag == f"{C}message")
            assert got.get("id") == name
            if name in copied:
                c = await a2.recv_until(lambda e: e.tag == f"{C}message")
                assert carbon(c, "sent").get("id") == name, name
            else:
                await no_message(a2, 0.2)
            # received copies: bob sends the same to alice/one
            b.send(xml.format(to=f"{alice}/one", id="r-" + name))
            got = await a1.recv_until(lambda e: e.tag == f"{C}message")
            assert got.get("id") == "r-" + name
            if name in copied:
                c = await a2.recv_until(lambda e: e.tag == f"{C}message")
                assert carbon(c, "received").get("id") == "r-" + name, name
            else:
                await no_message(a2, 0.2)
    finally:
        for c in (a1, a2, b):
            await c.close()


async def test_disabled_resource_gets_no_copies_and_repeat_requests_are_fine(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a1 = await login(rookery_server, alice, apw, "one")
    a2 = await login(rookery_server, alice, apw, "two")
    b = await login(rookery_server, bob, bpw, "b", carbons=False, presence=False)
    try:
        # §9: enabling twice and disabling twice are not errors
        assert (await a2.iq(f"<iq type='set' id='e2'><enable xmlns='{NS}'/></iq>")).get("type") == "result"
        for i in range(2):
            r = await a2.iq(f"<iq type='set' id='d{i}'><disable xmlns='{NS}'/></iq>")
            assert r.get("type") == "result"
        b.send(f"<message to='{alice}/one' type='chat' id='x'><body>x</body></message>")
        await a1.recv_until(lambda e: e.tag == f"{C}message")
        await no_message(a2, 0.3)
    finally:
        for c in (a1, a2, b):
            await c.close()


async def test_message_to_bare_jid_copies_to_resources_that_did_not_get_it(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a1 = await login(rookery_server, alice, apw, "one")
    a2 = await login(rookery_server, alice, apw, "two")
    b = await login(rookery_server, bob, bpw, "b", carbons=False, presence=False)
    try:
        # a2 goes to priority -1: a chat to the bare JID goes to a1 only, a2 gets a copy
        a2.send("<presence><priority>-1</priority></presence>")
        await a2.recv_until(lambda e: e.tag == f"{C}presence" and e.get("from") == a2.jid)
        b.send(f"<message to='{alice}' type='chat' id='bare1'><body>x</body></message>")
        got = await a1.recv_until(lambda e: e.tag == f"{C}message")
        assert got.get("id") == "bare1" and carbon(got, "received") is None
        c = await a2.recv_until(lambda e: e.tag == f"{C}message")
        assert carbon(c, "received").get("id") == "bare1"
        # both at -1: nobody takes it (offline storage), both get a copy
        a1.send("<presence><priority>-1</priority></presence>")
        await a1.recv_until(lambda e: e.tag == f"{C}presence" and e.get("from") == a1.jid)
        b.send(f"<message to='{alice}' type='chat' id='bare2'><body>y</body></message>")
        for c in (a1, a2):
            got = await c.recv_until(lambda e: e.tag == f"{C}message")
            assert carbon(got, "received").get("id") == "bare2"
    finally:
        for c in (a1, a2, b):
            await c.close()


async def test_enable_for_another_account_is_not_allowed(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, _ = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "one", carbons=False, presence=False)
    try:
        for what in ("enable", "disable"):
            r = await a.iq(f"<iq type='set' to='{bob}' id='x{what}'><{what} xmlns='{NS}'/></iq>")
            assert r.get("type") == "error" and error_condition(r) == "not-allowed"
    finally:
        await a.close()


async def test_server_advertises_carbons(rookery_server):
    jid, pw = rookery_server.make_user()
    a = await login(rookery_server, jid, pw, "one", carbons=False, presence=False)
    try:
        r = await a.iq(f"<iq type='get' to='{rookery_server.domain}' id='d'>"
                       "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        features = {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
        assert NS in features and "urn:xmpp:blocking" in features
    finally:
        await a.close()


async def wait_for_state(pred, timeout: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_message_path_hooks_exist_only_while_some_resource_has_carbons(rookery_server_factory):
    server = rookery_server_factory()
    carbons = server.server.modules.modules["carbons"]
    chains = server.server.events.chains
    tchains = server.server.routes.by_domain[server.domain].table.chains

    class Hooks:
        """Whether the carbons module's own handlers are in the chains (other modules, e.g. mam,
        have theirs there for good)."""

        def __contains__(self, event: str) -> bool:
            lst = chains.get(event, []) + tchains.get(event, [])
            return any(getattr(fn, "__self__", None) is carbons for fn in lst)

    bus = table = Hooks()
    assert "message-delivered" not in bus and "pre-message" not in table
    alice, apw = server.make_user()
    a1 = await login(server, alice, apw, "one")
    a2 = await login(server, alice, apw, "two", carbons=False)
    try:
        assert "message-delivered" in bus and "pre-message" in table
        await a1.iq(f"<iq type='set' id='off'><disable xmlns='{NS}'/></iq>")
        assert await wait_for_state(lambda: "message-delivered" not in bus and "pre-message" not in table)
        await a1.iq(f"<iq type='set' id='on'><enable xmlns='{NS}'/></iq>")
        assert "message-delivered" in bus
        # the session ending switches them off too
        await a1.close()
        assert await wait_for_state(lambda: "message-delivered" not in bus and "pre-message" not in table)
        a2.send(f"<message to='{alice}/two' type='chat' id='x'><body>still delivered</body></message>")
        assert (await a2.recv_until(lambda e: e.tag == f"{C}message")).get("id") == "x"
    finally:
        for c in (a1, a2):
            await c.close()
