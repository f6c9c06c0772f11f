"""XEP-0191 Blocking Command against a running server: slixmpp's xep_0191 for the list, block,
unblock, unblock-all and pushes; raw XML for enforcement (§3.3: errors for messages and iqs, silence
for presence, <blocked/> on outbound stanzas, presence in neither direction, nothing stored offline)
and for each class of bad input."""

from __future__ import annotations

import asyncio
from functools import partial

from xmpp_helpers import (
    RawClient,
    befriend,
    disconnect,
    drain,
    error_condition,
    one_and_two_workers,
    slix_client,
    tls_login,
)

from rookery.jid import JID
from rookery.modules.blocking import matches

rookery_server = one_and_two_workers("rookery-blocking-")


NS = "urn:xmpp:blocking"
C = "{jabber:client}"


login = partial(tls_login, presence=True)  # available after login


async def block(c: RawClient, *jids: str, what: str = "block", id: str = "b1"):
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return await c.iq(f"<iq type='set' id='{id}'><{what} xmlns='{NS}'>{items}</{what}></iq>")


def test_jid_matching_follows_xep_0016_order():
    items = frozenset({"a@x/r", "b@x", "y/r", "z"})
    assert matches(items, "a@x/r") and not matches(items, "a@x/other") and not matches(items, "a@x")
    assert matches(items, "b@x") and matches(items, "b@x/any")
    assert matches(items, "y/r") and not matches(items, "u@y/r") and not matches(items, "y")
    assert matches(items, "z") and matches(items, "u@z") and matches(items, "u@z/r") and matches(items, "z/r")
    assert not matches(frozenset(), "a@x")


async def test_slixmpp_block_unblock_and_pushes(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, _ = rookery_server.make_user()
    carol, _ = rookery_server.make_user()
    a1 = await slix_client(rookery_server, f"{alice}/one", apw, plugins=("xep_0191",))
    a2 = await slix_client(rookery_server, f"{alice}/two", apw, plugins=("xep_0191",))
    a3 = await login(rookery_server, alice, apw, "three")  # never asks for the list: no pushes
    try:
        assert await a1.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()
        assert await a2.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()
        pushes: asyncio.Queue = asyncio.Queue()
        a2.add_event_handler("blocked", lambda iq: pushes.put_nowait(("block", _jids(iq))))
        a2.add_event_handler("unblocked", lambda iq: pushes.put_nowait(("unblock", _jids(iq))))

        await a1.plugin["xep_0191"].block([bob, carol], timeout=5)
        assert await asyncio.wait_for(pushes.get(), 5) == ("block", {bob, carol})
        assert await a2.plugin["xep_0191"].get_blocked_jids(timeout=5) == {JID_(bob), JID_(carol)}

        await a1.plugin["xep_0191"].unblock([carol], timeout=5)
        assert await asyncio.wait_for(pushes.get(), 5) == ("unblock", {carol})
        assert await a1.plugin["xep_0191"].get_blocked_jids(timeout=5) == {JID_(bob)}

        # §3.5 unblock all: an empty <unblock/> (slixmpp sends no payload for an empty list)
        r = await a3.iq(f"<iq type='set' id='all'><unblock xmlns='{NS}'/></iq>")
        assert r.get("type") == "result"
        assert await asyncio.wait_for(pushes.get(), 5) == ("unblock", set())
        assert await a1.plugin["xep_0191"].get_blocked_jids(timeout=5) == set()
        # a3 never asked for the list: no pushes
        assert not [e for e in await drain(a3, 0.2) if e.tag == f"{C}iq"]
    finally:
        await disconnect(a1, a2)
        await a3.close()


def _jids(iq) -> set[str]:
    return {i.get("jid") for i in iq.xml.iter(f"{{{NS}}}item")}


def JID_(s: str):
    from slixmpp import JID as SJID

    return SJID(s)


async def test_blocked_contact_gets_errors_and_nothing_reaches_the_user(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a")
    b = await login(rookery_server, bob, bpw, "b", presence=False)
    try:
        assert (await block(a, bob)).get("type") == "result"
        # messages: service-unavailable, to the bare and the full JID
        for to in (alice, a.jid):
            b.send(f"<message to='{to}' type='chat' id='m-{to}'><body>hi</body></message>")
            err = await b.recv_until(lambda e, to=to: e.get("id") == f"m-{to}")
            assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
        # iq get to the full JID and to the account (answered by the server on its behalf)
        for to, payload in ((a.jid, "<query xmlns='jabber:iq:version'/>"), (alice, "<vCard xmlns='vcard-temp'/>")):
            err = await b.iq(f"<iq type='get' to='{to}' id='i-{to}'>{payload}</iq>")
            assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
        # presence of any kind: dropped without an answer
        b.send(f"<presence to='{alice}' type='subscribe'/>")
        b.send(f"<presence to='{a.jid}'/>")
        b.send(f"<presence to='{alice}' type='probe'/>")
        # error messages and iq results are dropped too
        b.send(f"<message to='{a.jid}' type='error' id='e1'/>")
        b.send(f"<iq to='{a.jid}' type='result' id='r1'/>")
        assert await drain(b, 0.4) == []
        assert await drain(a, 0.1) == []
    finally:
        for c in (a, b):
            await c.close()


async def test_stanzas_to_a_blocked_jid_are_not_acceptable_with_blocked_condition(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a")
    b = await login(rookery_server, bob, bpw, "b")
    try:
        await block(a, bob)
        await drain(b, 0.2)
        a.send(f"<message to='{b.jid}' type='chat' id='m1'><body>hi</body></message>")
        a.send(f"<iq to='{b.jid}' type='get' id='i1'><ping xmlns='urn:xmpp:ping'/></iq>")
        a.send(f"<presence to='{bob}' id='p1'/>")
        for id in ("m1", "i1", "p1"):
            err = await a.recv_until(lambda e, id=id: e.get("id") == id)
            assert err.get("type") == "error" and error_condition(err) == "not-acceptable"
            assert err.find(f"{C}error/{{urn:xmpp:blocking:errors}}blocked") is not None
        assert await drain(b, 0.3) == []
    finally:
        for c in (a, b):
            await c.close()


async def test_no_presence_either_way_and_presence_again_after_unblock(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    befriend(rookery_server, alice, bob)
    a = await login(rookery_server, alice, apw, "a")
    b = await login(rookery_server, bob, bpw, "b")
    try:
        await drain(a, 0.3)
        await drain(b, 0.3)
        await block(a, bob)
        # §3.3: the blocked contact sees alice go offline
        el = await b.recv_until(lambda e: e.tag == f"{C}presence")
        assert el.get("from") == a.jid and el.get("type") == "unavailable"
        a.send("<presence><show>away</show></presence>")
        b.send("<presence><show>dnd</show></presence>")
        # a new resource of alice: its broadcast and probes skip bob
        a2 = await login(rookery_server, alice, apw, "a2")
        leaked = [e for e in await drain(b, 0.4) if e.tag == f"{C}presence" and e.get("from") != b.jid]
        assert leaked == [], [(e.attrib, [c.tag for c in e]) for e in leaked]
        assert [e for e in await drain(a, 0.1) if e.get("from", "").startswith(bob)] == []
        assert [e for e in await drain(a2, 0.1) if e.get("from", "").startswith(bob)] == []
        # unblocking: bob gets alice's current presence
        r = await block(a, bob, what="unblock", id="u1")
        assert r.get("type") == "result"
        got = [e for e in await drain(b, 0.5) if e.tag == f"{C}presence" and e.get("from") != b.jid]
        assert {(e.get("from"), e.findtext(f"{C}show")) for e in got} == {(a.jid, "away"), (a2.jid, None)}
        await a2.close()
    finally:
        for c in (a, b):
            await c.close()


async def test_blocklist_persists_and_offline_messages_from_blocked_are_refused(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, bpw = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a")
    await block(a, bob)
    await a.close()
    b = await login(rookery_server, bob, bpw, "b", presence=False)
    try:
        await asyncio.sleep(0.2)
        b.send(f"<message to='{alice}' type='chat' id='off1'><body>stored?</body></message>")
        err = await b.recv_until(lambda e: e.get("id") == "off1")
        assert error_condition(err) == "service-unavailable"
        o = JID.parse(alice)
        assert rookery_server.call(rookery_server.server.storage.offline.count, o.domain, o.local) == 0
        a = await login(rookery_server, alice, apw, "a", presence=False)
        r = await a.iq(f"<iq type='get' id='l1'><blocklist xmlns='{NS}'/></iq>")
        assert [i.get("jid") for i in r.iter(f"{{{NS}}}item")] == [bob]
        await a.close()
    finally:
        await b.close()


async def test_bad_requests(rookery_server):
    alice, apw = rookery_server.make_user()
    bob, _ = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a", presence=False)
    try:
        r = await block(a)  # no item
        assert error_condition(r) == "bad-request"
        for bad in ("@localhost", "a@b@c", "user@/res", ""):
            r = await a.iq(f"<iq type='set' id='x'><block xmlns='{NS}'><item jid='{bad}'/></block></iq>")
            assert error_condition(r) == "jid-malformed", bad
        r = await a.iq(f"<iq type='set' id='y'><unblock xmlns='{NS}'><item jid='@x'/></unblock></iq>")
        assert error_condition(r) == "jid-malformed"
        # nothing was stored by the failed requests
        r = await a.iq(f"<iq type='get' id='l'><blocklist xmlns='{NS}'/></iq>")
        assert list(r.iter(f"{{{NS}}}item")) == []
        # another account's list
        for iq in (f"<iq type='get' to='{bob}' id='o1'><blocklist xmlns='{NS}'/></iq>",
                   f"<iq type='set' to='{bob}' id='o2'><block xmlns='{NS}'><item jid='x@y'/></block></iq>",
                   f"<iq type='set' to='{bob}' id='o3'><unblock xmlns='{NS}'/></iq>"):
            assert error_condition(await a.iq(iq)) == "forbidden"
        r = await a.iq(f"<iq type='get' to='nobody@{rookery_server.domain}' id='o4'><blocklist xmlns='{NS}'/></iq>")
        assert error_condition(r) == "service-unavailable"
    finally:
        await a.close()


async def test_own_resources_are_never_blocked(rookery_server):
    alice, apw = rookery_server.make_user()
    a = await login(rookery_server, alice, apw, "a")
    a2 = await login(rookery_server, alice, apw, "a2")
    try:
        assert (await block(a, alice, a2.jid)).get("type") == "result"
        a2.send(f"<message to='{a.jid}' type='chat' id='self'><body>me</body></message>")
        el = await a.recv_until(lambda e: e.tag == f"{C}message")
        assert el.get("id") == "self"
    finally:
        for c in (a, a2):
            await c.close()


async def test_message_path_hooks_exist_only_while_an_online_user_blocks_someone(rookery_server_factory):
    server = rookery_server_factory()
    filters = server.server.events.filters
    blocking = server.server.modules.modules["blocking"]
    chains = server.server.routes.by_domain[server.domain].table.chains

    class Own:
        """The blocking module's own handlers (other modules, e.g. mam, keep theirs there)."""

        def __contains__(self, event: str) -> bool:
            return any(getattr(fn, "__self__", None) is blocking for fn in chains.get(event, []))

    table = Own()
    assert filters == [] and "pre-message" not in table
    alice, apw = server.make_user()
    bob, bpw = server.make_user()
    a = await login(server, alice, apw, "a", presence=False)
    await block(a, bob)
    assert len(filters) == 1 and "pre-message" in table
    await a.close()
    for _ in range(100):
        if not filters:
            break
        await asyncio.sleep(0.02)
    assert filters == [] and "pre-message" not in table
    # offline, the list still applies (checked where offline storage would take the message)
    b = await login(server, bob, bpw, "b", presence=False)
    try:
        b.send(f"<message to='{alice}' type='chat' id='m'><body>x</body></message>")
        assert error_condition(await b.recv_until(lambda e: e.get("id") == "m")) == "service-unavailable"
        # back online: the list is loaded at bind and the hooks come back
        a = await login(server, alice, apw, "a", presence=False)
        for _ in range(100):
            if filters:
                break
            await asyncio.sleep(0.02)
        assert len(filters) == 1 and "pre-message" in table
        b.send(f"<message to='{a.jid}' type='chat' id='m2'><body>x</body></message>")
        assert error_condition(await b.recv_until(lambda e: e.get("id") == "m2")) == "service-unavailable"
        await block(a, what="unblock", id="all")
        assert filters == [] and "pre-message" not in table
        b.send(f"<message to='{a.jid}' type='chat' id='m3'><body>x</body></message>")
        assert (await a.recv_until(lambda e: e.tag == f"{C}message")).get("id") == "m3"
        await a.close()
    finally:
        await b.close()
