"""XEP-0163 Personal Eventing Protocol end to end: account JIDs as pubsub services, +notify through
entity capabilities, last items, bookmarks (XEP-0402, XEP-0411), against a running server."""

from __future__ import annotations

import asyncio

import pytest
from pubsub_helpers import (
    DISCO_INFO,
    PS,
    caps_presence,
    err,
    event_item_ids,
    form,
    iq,
    is_event,
    ok,
    ps,
    publish_options,
)
from xmpp_helpers import befriend, disconnect, drain, one_and_two_workers, slix_client, tls_login

rookery_server = one_and_two_workers("rookery-pep-")

pytestmark = pytest.mark.asyncio

TUNE = "http://jabber.org/protocol/tune"
AVATAR_META = "urn:xmpp:avatar:metadata"
BOOKMARKS = "urn:xmpp:bookmarks:1"


def tune(title: str) -> str:
    return f"<tune xmlns='{TUNE}'><title>{title}</title></tune>"


async def test_account_disco_shows_pep_identity_and_features(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    try:
        info = ok(await iq(c, "get", a, f"<query xmlns='{DISCO_INFO}'/>"))
        idents = {(i.get("category"), i.get("type")) for i in info.iter(f"{{{DISCO_INFO}}}identity")}
        assert ("pubsub", "pep") in idents and ("account", "registered") in idents
        feats = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        assert {PS + "#publish", PS + "#auto-create", PS + "#publish-options", PS + "#access-presence",
                BOOKMARKS + "#compat"} <= feats
    finally:
        await c.close()


async def test_contact_with_notify_gets_the_event_and_a_stranger_does_not(rookery_server):
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    s, ps_ = rookery_server.make_user()
    befriend(rookery_server, a, b)
    ca = await tls_login(rookery_server, a, pa)
    cb = await tls_login(rookery_server, b, pb)
    cs = await tls_login(rookery_server, s, ps_)
    try:
        await caps_presence(ca, [], rookery_server)
        await caps_presence(cb, [TUNE + "+notify"], rookery_server)
        await caps_presence(cs, [TUNE + "+notify"], rookery_server)
        await drain(cb, 0.3)
        await drain(cs, 0.1)
        r = ok(await ps(ca, "set", f"<publish node='{TUNE}'><item id='current'>{tune('Song')}</item></publish>", to=None))
        assert r.find(f".//{{{PS}}}item").get("id") == "current"
        ev = await cb.recv_until(lambda e: is_event(e, "items", TUNE))
        assert ev.get("from") == a and ev.get("to") == cb.jid
        assert ev.find(f".//{{{TUNE}}}title").text == "Song"
        assert not [e for e in await drain(cs, 0.4) if is_event(e)]
        # the owner's own resource did not ask (+notify) either
        assert not [e for e in await drain(ca, 0.1) if is_event(e)]
        # a contact reads the item; a stranger may not (presence access model)
        items = ok(await ps(cb, "get", f"<items node='{TUNE}'/>", to=a))
        assert [i.get("id") for i in items.iter(f"{{{PS}}}item")] == ["current"]
        assert err(await ps(cs, "get", f"<items node='{TUNE}'/>", to=a)) == \
            ("not-authorized", "presence-subscription-required")
        # only the account publishes to its own PEP
        assert err(await ps(cb, "set", f"<publish node='{TUNE}'><item>{tune('x')}</item></publish>", to=a))[0] == "forbidden"
        assert err(await ps(cb, "set", f"<publish node='new'><item>{tune('x')}</item></publish>", to=a))[0] == "forbidden"
        # max_items defaults to 1: the new item replaces the old
        ok(await ps(ca, "set", f"<publish node='{TUNE}'><item id='next'>{tune('Next')}</item></publish>", to=None))
        ev = await cb.recv_until(lambda e: is_event(e, "items", TUNE))
        assert event_item_ids(ev) == ["next"]
        items = ok(await ps(ca, "get", f"<items node='{TUNE}'/>", to=a))
        assert [i.get("id") for i in items.iter(f"{{{PS}}}item")] == ["next"]
    finally:
        for c in (ca, cb, cs):
            await c.close()


async def test_last_item_is_sent_when_a_contact_comes_online(rookery_server):
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    befriend(rookery_server, a, b)
    ca = await tls_login(rookery_server, a, pa)
    try:
        meta = f"<metadata xmlns='{AVATAR_META}'><info bytes='12' id='abc' height='64' width='64' type='image/png'/></metadata>"
        ok(await ps(ca, "set", f"<publish node='{AVATAR_META}'><item id='abc'>{meta}</item></publish>", to=None))
        cb = await tls_login(rookery_server, b, pb)
        try:
            await caps_presence(cb, [AVATAR_META + "+notify"], rookery_server)
            ev = await cb.recv_until(lambda e: is_event(e, "items", AVATAR_META))
            assert ev.get("from") == a and event_item_ids(ev) == ["abc"]
            assert ev.find(f".//{{{AVATAR_META}}}info").get("id") == "abc"
        finally:
            await cb.close()
        # the owner's own new session gets its last item too
        ca2 = await tls_login(rookery_server, a, pa, resource="second")
        try:
            await caps_presence(ca2, [AVATAR_META + "+notify"], rookery_server)
            ev = await ca2.recv_until(lambda e: is_event(e, "items", AVATAR_META))
            assert ev.get("from") == a
        finally:
            await ca2.close()
    finally:
        await ca.close()


async def test_publish_options_whitelist_node_is_private_and_preconditions_hold(rookery_server):
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    befriend(rookery_server, a, b)
    ca = await tls_login(rookery_server, a, pa)
    cb = await tls_login(rookery_server, b, pb)
    node = "urn:xmpp:private-test"
    try:
        ok(await ps(ca, "set", f"<publish node='{node}'><item id='1'><secret xmlns='urn:t'/></item></publish>"
                               f"{publish_options(persist_items='true', access_model='whitelist')}", to=None))
        assert err(await ps(cb, "get", f"<items node='{node}'/>", to=a)) == ("not-allowed", "closed-node")
        assert err(await ps(ca, "set", f"<publish node='{node}'><item><secret xmlns='urn:t'/></item></publish>"
                                       f"{publish_options(access_model='presence')}", to=None)) == \
            ("conflict", "precondition-not-met")
        ok(await ps(ca, "get", f"<items node='{node}'/>", to=None))
        # the owner reconfigures; then the same publish-options match
        cfg = form(PS + "#node_config", {"pubsub#access_model": "presence"})
        ok(await ps(ca, "set", f"<configure node='{node}'>{cfg}</configure>", to=None, owner=True))
        ok(await ps(ca, "set", f"<publish node='{node}'><item><secret xmlns='urn:t'/></item></publish>"
                               f"{publish_options(access_model='presence')}", to=None))
        ok(await ps(cb, "get", f"<items node='{node}'/>", to=a))
    finally:
        await ca.close()
        await cb.close()


async def test_bookmarks2_publish_retrieve_and_private_xml_compat(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    try:
        await caps_presence(c, [BOOKMARKS + "+notify"], rookery_server)
        conf = f"<conference xmlns='{BOOKMARKS}' name='Coven' autojoin='true'><nick>me</nick></conference>"
        opts = publish_options(persist_items="true", max_items="max", send_last_published_item="never",
                               access_model="whitelist")
        ok(await ps(c, "set", f"<publish node='{BOOKMARKS}'><item id='coven@chat.example'>{conf}</item></publish>{opts}",
                    to=None))
        ev = await c.recv_until(lambda e: is_event(e, "items", BOOKMARKS))
        assert event_item_ids(ev) == ["coven@chat.example"]
        conf2 = f"<conference xmlns='{BOOKMARKS}' name='Other'/>"
        ok(await ps(c, "set", f"<publish node='{BOOKMARKS}'><item id='other@chat.example'>{conf2}</item></publish>{opts}",
                    to=None))
        items = ok(await ps(c, "get", f"<items node='{BOOKMARKS}'/>", to=None))
        assert sorted(i.get("id") for i in items.iter(f"{{{PS}}}item")) == ["coven@chat.example", "other@chat.example"]
        # XEP-0411: private XML storage shows the same bookmarks ...
        r = ok(await iq(c, "get", None, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"))
        jids = sorted(x.get("jid") for x in r.iter("{storage:bookmarks}conference"))
        assert jids == ["coven@chat.example", "other@chat.example"]
        coven = [x for x in r.iter("{storage:bookmarks}conference") if x.get("jid") == "coven@chat.example"][0]
        assert coven.get("autojoin") == "true" and coven.find("{storage:bookmarks}nick").text == "me"
        # ... and writing it there updates the PEP node (with notifications)
        ok(await iq(c, "set", None, "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'>"
                                    "<conference jid='legacy@chat.example' name='Legacy' autojoin='1'/></storage></query>"))
        await c.recv_until(lambda e: is_event(e, "items", BOOKMARKS) and event_item_ids(e) == ["legacy@chat.example"])
        items = ok(await ps(c, "get", f"<items node='{BOOKMARKS}'/>", to=None))
        assert [i.get("id") for i in items.iter(f"{{{PS}}}item")] == ["legacy@chat.example"]
        assert items.find(f".//{{{BOOKMARKS}}}conference").get("autojoin") == "true"
    finally:
        await c.close()


async def test_pep_quota_and_payload_limits(rookery_server_factory):
    server = rookery_server_factory(pep={"max_nodes_per_user": 1, "max_payload_size": 100})
    a, pa = server.make_user()
    c = await tls_login(server, a, pa)
    try:
        ok(await ps(c, "set", f"<publish node='{TUNE}'><item>{tune('a')}</item></publish>", to=None))
        assert err(await ps(c, "set", f"<publish node='other'><item>{tune('a')}</item></publish>", to=None))[0] == \
            "resource-constraint"
        assert err(await ps(c, "set", f"<publish node='{TUNE}'><item>{tune('a' * 200)}</item></publish>", to=None)) == \
            ("not-acceptable", "payload-too-big")
    finally:
        await c.close()


async def test_slixmpp_user_tune_through_pep(rookery_server):
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    befriend(rookery_server, a, b)
    plugins = ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0118")
    ca = await slix_client(rookery_server, a, pa, plugins=plugins)
    cb = await slix_client(rookery_server, b, pb, plugins=plugins, presence=False)
    got: asyncio.Queue = asyncio.Queue()
    cb.add_event_handler("user_tune_publish", lambda msg: got.put_nowait(msg))
    try:
        await cb.get_roster()
        cb.send_presence()
        await asyncio.sleep(0.5)  # the server learns b's caps (+notify for tunes)
        await ca.plugin["xep_0118"].publish_tune(artist="Band", title="Tune")
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg["pubsub_event"]["items"]["item"]["tune"]["title"] == "Tune"
    finally:
        await disconnect(ca, cb)




async def test_last_items_follow_an_approved_presence_subscription(rookery_server):
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    ca = await tls_login(rookery_server, a, pa)
    cb = await tls_login(rookery_server, b, pb)
    try:
        await caps_presence(ca, [], rookery_server)
        ok(await ps(ca, "set", f"<publish node='{TUNE}'><item id='now'>{tune('Hello')}</item></publish>", to=None))
        await caps_presence(cb, [TUNE + "+notify"], rookery_server)
        assert not [e for e in await drain(cb, 0.3) if is_event(e)]
        cb.send(f"<presence type='subscribe' to='{a}'/>")
        await ca.recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("type") == "subscribe")
        ca.send(f"<presence type='subscribed' to='{b}'/>")
        ev = await cb.recv_until(lambda e: is_event(e, "items", TUNE))
        assert ev.get("from") == a and event_item_ids(ev) == ["now"]
    finally:
        await ca.close()
        await cb.close()
