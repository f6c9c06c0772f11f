"""XEP-0060 Publish-Subscribe on pubsub.localhost, against a running server (raw XML and slixmpp)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from pubsub_helpers import (
    DISCO_INFO,
    ERRORS,
    EVENT,
    OWNER,
    PS,
    SERVICE,
    XDATA,
    config,
    err,
    event_item_ids,
    form,
    iq,
    is_event,
    new_id,
    ok,
    ps,
    publish_options,
)
from xmpp_helpers import befriend, disconnect, drain, slix_client, tls_login

from rookery.testing import RunningServer

pytestmark = pytest.mark.asyncio

DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


async def two(server, presence: bool = True):  # noqa: ANN001, ANN202
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await tls_login(server, a, pa, presence=presence)
    cb = await tls_login(server, b, pb, presence=presence)
    return a, ca, b, cb


async def test_service_is_discoverable_with_its_features(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    try:
        items = ok(await iq(c, "get", "localhost", f"<query xmlns='{DISCO_ITEMS}'/>"))
        assert SERVICE in [i.get("jid") for i in items.iter(f"{{{DISCO_ITEMS}}}item")]
        info = ok(await iq(c, "get", SERVICE, f"<query xmlns='{DISCO_INFO}'/>"))
        ident = info.find(f".//{{{DISCO_INFO}}}identity")
        assert ident is not None and (ident.get("category"), ident.get("type")) == ("pubsub", "service")
        feats = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        for f in ("", "#create-nodes", "#publish", "#subscribe", "#retrieve-items", "#access-authorize",
                  "#publish-options", "#purge-nodes", "#rsm", "#config-node"):
            assert PS + f in feats
        assert PS + "#collections" not in feats
    finally:
        await c.close()


async def test_create_publish_notify_retrieve_retract_purge_delete(rookery_server):
    a, ca, b, cb = await two(rookery_server)
    node = "news-" + new_id()
    try:
        ok(await ps(ca, "set", f"<create node='{node}'/>"))
        sub = ok(await ps(cb, "set", f"<subscribe node='{node}' jid='{b}'/>"))
        s = sub.find(f".//{{{PS}}}subscription")
        assert s is not None and s.get("subscription") == "subscribed" and s.get("subid")
        r = ok(await ps(ca, "set", f"<publish node='{node}'><item id='i1'><entry xmlns='urn:test'>hello</entry></item></publish>"))
        assert r.find(f".//{{{PS}}}item").get("id") == "i1"
        ev = await cb.recv_until(lambda e: is_event(e, "items", node))
        assert event_item_ids(ev) == ["i1"]
        assert ev.find(".//{urn:test}entry").text == "hello"
        assert ev.get("from") == SERVICE and ev.get("to") == b
        # an item id is generated when none is given
        r = ok(await ps(ca, "set", f"<publish node='{node}'><item><entry xmlns='urn:test'>two</entry></item></publish>"))
        gen = r.find(f".//{{{PS}}}item").get("id")
        assert gen
        await cb.recv_until(lambda e: is_event(e, "items", node) and event_item_ids(e) == [gen])
        items = ok(await ps(cb, "get", f"<items node='{node}'/>"))
        assert [i.get("id") for i in items.iter(f"{{{PS}}}item")] == [gen, "i1"]
        one = ok(await ps(cb, "get", f"<items node='{node}'><item id='i1'/></items>"))
        assert [i.get("id") for i in one.iter(f"{{{PS}}}item")] == ["i1"]
        ok(await ps(ca, "set", f"<retract node='{node}' notify='true'><item id='i1'/></retract>"))
        ev = await cb.recv_until(lambda e: is_event(e, "items", node))
        assert ev.find(f".//{{{EVENT}}}retract").get("id") == "i1"
        ok(await ps(ca, "set", f"<purge node='{node}'/>", owner=True))
        await cb.recv_until(lambda e: is_event(e, "purge", node))
        items = ok(await ps(cb, "get", f"<items node='{node}'/>"))
        assert list(items.iter(f"{{{PS}}}item")) == []
        ok(await ps(cb, "set", f"<unsubscribe node='{node}' jid='{b}'/>"))
        ok(await ps(cb, "set", f"<subscribe node='{node}' jid='{b}'/>"))
        ok(await ps(ca, "set", f"<delete node='{node}'><redirect uri='xmpp:{SERVICE}?;node=elsewhere'/></delete>",
                    owner=True))
        ev = await cb.recv_until(lambda e: is_event(e, "delete", node))
        assert ev.find(f".//{{{EVENT}}}redirect") is not None
        assert err(await ps(cb, "get", f"<items node='{node}'/>")) == ("item-not-found", None)
    finally:
        await ca.close()
        await cb.close()


async def test_publish_without_payload_on_a_notification_only_node(rookery_server):
    a, ca, b, cb = await two(rookery_server)
    node = "ping-" + new_id()
    try:
        ok(await ps(ca, "set", f"<create node='{node}'/><configure>{config(persist_items='0', deliver_payloads='0')}</configure>"))
        ok(await ps(cb, "set", f"<subscribe node='{node}' jid='{b}'/>"))
        ok(await ps(ca, "set", f"<publish node='{node}'><item id='x'/></publish>"))
        ev = await cb.recv_until(lambda e: is_event(e, "items", node))
        assert event_item_ids(ev) == ["x"] and len(list(ev.find(f".//{{{EVENT}}}item"))) == 0
        # a payload on such a node is item-forbidden
        assert err(await ps(ca, "set", f"<publish node='{node}'><item><x xmlns='urn:t'/></item></publish>")) == \
            ("bad-request", "item-forbidden")
    finally:
        await ca.close()
        await cb.close()


async def test_instant_node_and_create_conflict(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    try:
        r = ok(await ps(c, "set", "<create/>"))
        name = r.find(f".//{{{PS}}}create").get("node")
        assert name
        assert err(await ps(c, "set", f"<create node='{name}'/>")) == ("conflict", None)
    finally:
        await c.close()


async def test_max_items_keeps_the_newest_and_rsm_pages(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    node = "n-" + new_id()
    try:
        ok(await ps(c, "set", f"<create node='{node}'/><configure>{config(max_items='3')}</configure>"))
        for i in range(5):
            ok(await ps(c, "set", f"<publish node='{node}'><item id='i{i}'><p xmlns='urn:t'>{i}</p></item></publish>"))
        items = ok(await ps(c, "get", f"<items node='{node}'/>"))
        assert [i.get("id") for i in items.iter(f"{{{PS}}}item")] == ["i4", "i3", "i2"]
        latest = ok(await ps(c, "get", f"<items node='{node}' max_items='1'/>"))
        assert [i.get("id") for i in latest.iter(f"{{{PS}}}item")] == ["i4"]
        rsm = "http://jabber.org/protocol/rsm"
        page = ok(await ps(c, "get", f"<items node='{node}'/><set xmlns='{rsm}'><max>2</max></set>"))
        assert [i.get("id") for i in page.iter(f"{{{PS}}}item")] == ["i4", "i3"]
        assert page.find(f".//{{{rsm}}}count").text == "3"
        last = page.find(f".//{{{rsm}}}last").text
        page2 = ok(await ps(c, "get", f"<items node='{node}'/><set xmlns='{rsm}'><max>2</max><after>{last}</after></set>"))
        assert [i.get("id") for i in page2.iter(f"{{{PS}}}item")] == ["i2"]
        # "max": the service's limit
        ok(await ps(c, "set", f"<configure node='{node}'>{config(max_items='max')}</configure>", owner=True))
        conf = ok(await ps(c, "get", f"<configure node='{node}'/>", owner=True))
        values = {f.get("var"): [v.text for v in f] for f in conf.iter(f"{{{XDATA}}}field")}
        assert values["pubsub#max_items"] == ["max"]
        # out of range: not-acceptable
        assert err(await ps(c, "set", f"<configure node='{node}'>{config(max_items='100000')}</configure>",
                            owner=True))[0] == "not-acceptable"
    finally:
        await c.close()


async def test_access_models(rookery_server):
    a, ca, b, cb = await two(rookery_server)
    try:
        nodes = {}
        for model in ("presence", "roster", "whitelist", "authorize"):
            nodes[model] = f"{model}-{new_id()}"
            extra = {"roster_groups_allowed": "Friends"} if model == "roster" else {}
            ok(await ps(ca, "set", f"<create node='{nodes[model]}'/><configure>{config(access_model=model, **extra)}</configure>"))
            ok(await ps(ca, "set", f"<publish node='{nodes[model]}'><item id='1'><p xmlns='urn:t'/></item></publish>"))
        sub = f"jid='{b}'"
        assert err(await ps(cb, "set", f"<subscribe node='{nodes['presence']}' {sub}/>")) == \
            ("not-authorized", "presence-subscription-required")
        assert err(await ps(cb, "get", f"<items node='{nodes['presence']}'/>")) == \
            ("not-authorized", "presence-subscription-required")
        assert err(await ps(cb, "set", f"<subscribe node='{nodes['roster']}' {sub}/>")) == \
            ("not-authorized", "not-in-roster-group")
        assert err(await ps(cb, "set", f"<subscribe node='{nodes['whitelist']}' {sub}/>")) == ("not-allowed", "closed-node")
        assert err(await ps(cb, "get", f"<items node='{nodes['whitelist']}'/>")) == ("not-allowed", "closed-node")
        assert err(await ps(cb, "get", f"<items node='{nodes['authorize']}'/>")) == ("not-authorized", "not-subscribed")
        # presence: a contact may; roster: a contact in an allowed group may
        befriend(rookery_server, a, b)
        ok(await ps(cb, "get", f"<items node='{nodes['presence']}'/>"))
        from rookery.jid import JID
        from rookery.storage.base import RosterItem

        o = JID.parse(a)
        rookery_server.call(rookery_server.server.storage.roster.set_item, o.domain, o.local,
                            RosterItem(jid=b, subscription="both", groups=["Friends"]))
        ok(await ps(cb, "set", f"<subscribe node='{nodes['roster']}' {sub}/>"))
        # whitelist: the owner makes b a member
        ok(await ps(ca, "set", f"<affiliations node='{nodes['whitelist']}'><affiliation jid='{b}' affiliation='member'/></affiliations>", owner=True))
        ok(await ps(cb, "get", f"<items node='{nodes['whitelist']}'/>"))
        affs = ok(await ps(ca, "get", f"<affiliations node='{nodes['whitelist']}'/>", owner=True))
        assert {(x.get("jid"), x.get("affiliation")) for x in affs.iter(f"{{{OWNER}}}affiliation")} >= {(b, "member"), (a, "owner")}
        # an outcast is forbidden
        ok(await ps(ca, "set", f"<affiliations node='{nodes['whitelist']}'><affiliation jid='{b}' affiliation='outcast'/></affiliations>", owner=True))
        assert err(await ps(cb, "get", f"<items node='{nodes['whitelist']}'/>"))[0] == "forbidden"
        # authorize: pending, the owner gets the approval form and allows
        r = ok(await ps(cb, "set", f"<subscribe node='{nodes['authorize']}' {sub}/>"))
        assert r.find(f".//{{{PS}}}subscription").get("subscription") == "pending"
        msg = await ca.recv_until(lambda e: e.tag == "{jabber:client}message" and e.find(f"{{{XDATA}}}x") is not None)
        fields = {f.get("var"): [v.text for v in f.findall(f"{{{XDATA}}}value")] for f in msg.iter(f"{{{XDATA}}}field")}
        assert fields["FORM_TYPE"] == [PS + "#subscribe_authorization"]
        assert fields["pubsub#subscriber_jid"] == [b] and fields["pubsub#node"] == [nodes["authorize"]]
        pend = ok(await ps(ca, "get", f"<subscriptions node='{nodes['authorize']}'/>", owner=True))
        assert [s.get("subscription") for s in pend.iter(f"{{{OWNER}}}subscription")] == ["pending"]
        answer = form(PS + "#subscribe_authorization", {"pubsub#node": nodes["authorize"], "pubsub#subscriber_jid": b,
                                                        "pubsub#subid": fields["pubsub#subid"][0], "pubsub#allow": "true"})
        ca.send(f"<message to='{SERVICE}' id='approve'>{answer}</message>")
        ev = await cb.recv_until(lambda e: is_event(e, "subscription", nodes["authorize"]))
        assert ev.find(f".//{{{EVENT}}}subscription").get("subscription") == "subscribed"
        ok(await ps(cb, "get", f"<items node='{nodes['authorize']}'/>"))
    finally:
        await ca.close()
        await cb.close()


async def test_publish_options_preconditions(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    node = "po-" + new_id()
    try:
        ok(await ps(c, "set", f"<create node='{node}'/>"))
        ok(await ps(c, "set", f"<publish node='{node}'><item><p xmlns='urn:t'/></item></publish>{publish_options(access_model='open')}"))
        assert err(await ps(c, "set", f"<publish node='{node}'><item><p xmlns='urn:t'/></item></publish>"
                                      f"{publish_options(access_model='whitelist')}")) == ("conflict", "precondition-not-met")
        # the service does not create nodes on publish
        assert err(await ps(c, "set", f"<publish node='missing-{new_id()}'><item><p xmlns='urn:t'/></item></publish>"))[0] == \
            "item-not-found"
    finally:
        await c.close()


async def test_error_cases(rookery_server):
    a, ca, b, cb = await two(rookery_server, presence=False)
    node = "e-" + new_id()
    try:
        ok(await ps(ca, "set", f"<create node='{node}'/>"))
        item = "<item id='1'><p xmlns='urn:t'/></item>"
        assert err(await ps(ca, "get", f"<items node='nope-{new_id()}'/>")) == ("item-not-found", None)
        assert err(await ps(ca, "get", f"<items node='{node}'><item id='zz'/></items>")) == ("item-not-found", None)
        assert err(await ps(ca, "set", f"<retract node='{node}'><item id='zz'/></retract>")) == ("item-not-found", None)
        assert err(await ps(ca, "set", f"<retract node='{node}'/>")) == ("bad-request", "item-required")
        assert err(await ps(cb, "set", f"<publish node='{node}'>{item}</publish>")) == ("forbidden", None)
        assert err(await ps(cb, "set", f"<delete node='{node}'/>", owner=True)) == ("forbidden", None)
        assert err(await ps(cb, "set", f"<purge node='{node}'/>", owner=True)) == ("forbidden", None)
        assert err(await ps(cb, "get", f"<configure node='{node}'/>", owner=True)) == ("forbidden", None)
        assert err(await ps(ca, "set", f"<publish>{item}</publish>")) == ("bad-request", "nodeid-required")
        assert err(await ps(ca, "set", f"<publish node='{node}'/>")) == ("bad-request", "item-required")
        assert err(await ps(ca, "set", f"<publish node='{node}'><item id='1'/></publish>")) == ("bad-request", "payload-required")
        assert err(await ps(ca, "set", f"<publish node='{node}'><item><a xmlns='urn:t'/><b xmlns='urn:t'/></item></publish>")) == \
            ("bad-request", "invalid-payload")
        big = "x" * 70000
        assert err(await ps(ca, "set", f"<publish node='{node}'><item><p xmlns='urn:t'>{big}</p></item></publish>")) == \
            ("not-acceptable", "payload-too-big")
        assert err(await ps(cb, "set", f"<subscribe node='{node}' jid='{a}'/>")) == ("bad-request", "invalid-jid")
        assert err(await ps(cb, "set", f"<subscribe node='{node}'/>")) == ("bad-request", "invalid-jid")
        assert err(await ps(cb, "set", f"<subscribe jid='{b}'/>")) == ("bad-request", "nodeid-required")
        assert err(await ps(cb, "set", f"<unsubscribe node='{node}' jid='{b}'/>")) == ("unexpected-request", "not-subscribed")
        ok(await ps(cb, "set", f"<subscribe node='{node}' jid='{b}'/>"))
        assert err(await ps(cb, "set", f"<unsubscribe node='{node}' jid='{b}' subid='wrong'/>")) == \
            ("not-acceptable", "invalid-subid")
        assert err(await ps(cb, "set", f"<unsubscribe node='{node}' jid='{a}'/>")) == ("forbidden", None)
        coll = f"<create node='c-{new_id()}'/><configure>{config(node_type='collection')}</configure>"
        e = await ps(ca, "set", coll)
        assert err(e) == ("feature-not-implemented", "unsupported")
        assert e.find(f".//{{{ERRORS}}}unsupported").get("feature") == "collections"
        assert err(await ps(ca, "set", f"<configure node='{node}'>{config(access_model='bogus')}</configure>",
                            owner=True))[0] == "not-acceptable"
        assert err(await ps(ca, "set", "<bogus/>"))[0] == "feature-not-implemented"
        # a transient node cannot be purged
        t = "t-" + new_id()
        ok(await ps(ca, "set", f"<create node='{t}'/><configure>{config(persist_items='0')}</configure>"))
        e = await ps(ca, "set", f"<purge node='{t}'/>", owner=True)
        assert err(e) == ("feature-not-implemented", "unsupported")
    finally:
        await ca.close()
        await cb.close()


async def test_subscription_options_and_owner_management(rookery_server):
    a, ca, b, cb = await two(rookery_server)
    node = "o-" + new_id()
    try:
        ok(await ps(ca, "set", f"<create node='{node}'/>"))
        ok(await ps(cb, "set", f"<subscribe node='{node}' jid='{b}'/>"))
        opts = ok(await ps(cb, "get", f"<options node='{node}' jid='{b}'/>"))
        assert opts.find(f".//{{{XDATA}}}x") is not None
        off = form(PS + "#subscribe_options", {"pubsub#deliver": "false"})
        ok(await ps(cb, "set", f"<options node='{node}' jid='{b}'>{off}</options>"))
        ok(await ps(ca, "set", f"<publish node='{node}'><item id='q'><p xmlns='urn:t'/></item></publish>"))
        assert not [e for e in await drain(cb, 0.4) if is_event(e)]
        mine = ok(await ps(cb, "get", "<subscriptions/>"))
        assert [(s.get("node"), s.get("jid")) for s in mine.iter(f"{{{PS}}}subscription")] == [(node, b)]
        affs = ok(await ps(ca, "get", f"<affiliations node='{node}'/>"))
        assert [x.get("affiliation") for x in affs.iter(f"{{{PS}}}affiliation")] == ["owner"]
        # the owner removes b's subscription: b is told
        ok(await ps(ca, "set", f"<subscriptions node='{node}'><subscription jid='{b}' subscription='none'/></subscriptions>", owner=True))
        ev = await cb.recv_until(lambda e: is_event(e, "subscription", node))
        assert ev.find(f".//{{{EVENT}}}subscription").get("subscription") == "none"
        # the owner makes b a publisher
        ok(await ps(ca, "set", f"<affiliations node='{node}'><affiliation jid='{b}' affiliation='publisher'/></affiliations>", owner=True))
        ok(await ps(cb, "set", f"<publish node='{node}'><item><p xmlns='urn:t'/></item></publish>"))
        # the last owner cannot go
        assert err(await ps(ca, "set", f"<affiliations node='{node}'><affiliation jid='{a}' affiliation='none'/></affiliations>", owner=True))[0] == "not-acceptable"
        default = ok(await ps(ca, "get", "<default/>", owner=True))
        assert default.find(f".//{{{XDATA}}}x") is not None
        # notify_config
        ok(await ps(cb, "set", f"<subscribe node='{node}' jid='{b}'/>"))
        ok(await ps(ca, "set", f"<configure node='{node}'>{config(notify_config='1', title='T')}</configure>", owner=True))
        ok(await ps(ca, "set", f"<configure node='{node}'>{config(title='T2')}</configure>", owner=True))
        await cb.recv_until(lambda e: is_event(e, "configuration", node))
        # node disco: identity, meta-data, items
        info = ok(await iq(cb, "get", SERVICE, f"<query xmlns='{DISCO_INFO}' node='{node}'/>"))
        assert info.find(f".//{{{DISCO_INFO}}}identity").get("type") == "leaf"
        its = ok(await iq(cb, "get", SERVICE, f"<query xmlns='{DISCO_ITEMS}' node='{node}'/>"))
        assert len(list(its.iter(f"{{{DISCO_ITEMS}}}item"))) == 2
        top = ok(await iq(cb, "get", SERVICE, f"<query xmlns='{DISCO_ITEMS}'/>"))
        assert node in [i.get("node") for i in top.iter(f"{{{DISCO_ITEMS}}}item")]
    finally:
        await ca.close()
        await cb.close()


async def test_node_creation_policy_admins(rookery_server_factory):
    server = rookery_server_factory(admins=["boss@localhost"], pubsub={"node_creation": "admins"})
    server.make_user("boss", "pw-boss-1")
    u, pu = server.make_user()
    boss = await tls_login(server, "boss@localhost", "pw-boss-1")
    c = await tls_login(server, u, pu)
    try:
        assert err(await ps(c, "set", "<create node='x'/>")) == ("forbidden", None)
        ok(await ps(boss, "set", "<create node='x'/>"))
        # admins own every node
        ok(await ps(boss, "get", "<configure node='x'/>", owner=True))
    finally:
        await boss.close()
        await c.close()


async def test_nodes_per_user_limit(rookery_server_factory):
    server = rookery_server_factory(pubsub={"max_nodes_per_user": 2})
    u, pu = server.make_user()
    c = await tls_login(server, u, pu)
    try:
        ok(await ps(c, "set", "<create node='one'/>"))
        ok(await ps(c, "set", "<create node='two'/>"))
        assert err(await ps(c, "set", "<create node='three'/>"))[0] == "resource-constraint"
    finally:
        await c.close()


async def test_nodes_and_items_survive_a_restart():
    d = Path(tempfile.mkdtemp(prefix="rookery-test-"))
    s1 = RunningServer({}, d).start()
    try:
        u, pu = s1.make_user()
        c = await tls_login(s1, u, pu)
        ok(await ps(c, "set", f"<create node='keep'/><configure>{config(title='Kept', access_model='whitelist')}</configure>"))
        ok(await ps(c, "set", "<publish node='keep'><item id='a'><p xmlns='urn:t'>1</p></item></publish>"))
        ok(await ps(c, "set", "<publish node='keep'><item id='b'><p xmlns='urn:t'>2</p></item></publish>"))
        await c.close()
    finally:
        s1.stop()
    s2 = RunningServer({}, d).start()
    try:
        c = await tls_login(s2, u, pu)
        items = ok(await ps(c, "get", "<items node='keep'/>"))
        assert [i.get("id") for i in items.iter(f"{{{PS}}}item")] == ["b", "a"]
        conf = ok(await ps(c, "get", "<configure node='keep'/>", owner=True))
        values = {f.get("var"): [v.text for v in f.findall(f"{{{XDATA}}}value")] for f in conf.iter(f"{{{XDATA}}}field")}
        assert values["pubsub#access_model"] == ["whitelist"] and values["pubsub#title"] == ["Kept"]
        await c.close()
    finally:
        s2.stop()
        import shutil

        shutil.rmtree(d, ignore_errors=True)


async def test_slixmpp_clients_use_the_service(rookery_server):
    a, pa = rookery_server.make_user()
    b, pb = rookery_server.make_user()
    ca = await slix_client(rookery_server, a, pa, plugins=("xep_0030", "xep_0060", "xep_0004"))
    cb = await slix_client(rookery_server, b, pb, plugins=("xep_0030", "xep_0060", "xep_0004"))
    got: asyncio.Queue = asyncio.Queue()
    cb.add_event_handler("pubsub_publish", lambda msg: got.put_nowait(msg))
    node = "slix-" + new_id()
    try:
        await ca.plugin["xep_0060"].create_node(SERVICE, node)
        await cb.plugin["xep_0060"].subscribe(SERVICE, node)
        from slixmpp.xmlstream import ET

        payload = ET.fromstring("<entry xmlns='urn:test'>via slixmpp</entry>")
        await ca.plugin["xep_0060"].publish(SERVICE, node, id="s1", payload=payload)
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg["pubsub_event"]["items"]["item"]["id"] == "s1"
        res = await cb.plugin["xep_0060"].get_items(SERVICE, node)
        assert [i["id"] for i in res["pubsub"]["items"]] == ["s1"]
        await ca.plugin["xep_0060"].delete_node(SERVICE, node)
    finally:
        await disconnect(ca, cb)


async def test_deleting_an_account_removes_its_nodes_subscriptions_and_pep_data(rookery_server):
    a, ca, b, cb = await two(rookery_server, presence=False)
    mine, shared = "gone-" + new_id(), "kept-" + new_id()
    try:
        ok(await ps(ca, "set", f"<create node='{mine}'/>"))
        ok(await ps(cb, "set", f"<create node='{shared}'/>"))
        ok(await ps(ca, "set", f"<subscribe node='{shared}' jid='{a}'/>"))
        ok(await ps(ca, "set", "<publish node='urn:test:pep'><item><p xmlns='urn:t'/></item></publish>", to=None))
        r = await iq(ca, "set", None, "<query xmlns='jabber:iq:register'><remove/></query>")
        assert r.get("type") == "result"
        await asyncio.sleep(0.3)
        assert err(await ps(cb, "get", f"<items node='{mine}'/>")) == ("item-not-found", None)
        subs = ok(await ps(cb, "get", f"<subscriptions node='{shared}'/>", owner=True))
        assert list(subs.iter(f"{{{OWNER}}}subscription")) == []
        # the same name again is a new account: no PEP nodes
        user, _, _ = a.partition("@")
        a2, pa2 = rookery_server.make_user(user, "new-password-1")
        c2 = await tls_login(rookery_server, a2, pa2)
        try:
            assert err(await ps(c2, "get", "<items node='urn:test:pep'/>", to=None)) == ("item-not-found", None)
        finally:
            await c2.close()
    finally:
        await ca.close()
        await cb.close()


async def test_publish_models(rookery_server):
    a, ca, b, cb = await two(rookery_server, presence=False)
    opened, subs = "open-" + new_id(), "subs-" + new_id()
    item = "<item><p xmlns='urn:t'/></item>"
    try:
        ok(await ps(ca, "set", f"<create node='{opened}'/><configure>{config(publish_model='open')}</configure>"))
        ok(await ps(ca, "set", f"<create node='{subs}'/><configure>{config(publish_model='subscribers')}</configure>"))
        r = ok(await ps(cb, "set", f"<publish node='{opened}'>{item}</publish>"))
        own = r.find(f".//{{{PS}}}item").get("id")
        assert err(await ps(cb, "set", f"<publish node='{subs}'>{item}</publish>")) == ("forbidden", None)
        ok(await ps(cb, "set", f"<subscribe node='{subs}' jid='{b}'/>"))
        ok(await ps(cb, "set", f"<publish node='{subs}'>{item}</publish>"))
        # a publisher by the open model retracts its own items, not the owner's
        r = ok(await ps(ca, "set", f"<publish node='{opened}'>{item}</publish>"))
        owners = r.find(f".//{{{PS}}}item").get("id")
        assert err(await ps(cb, "set", f"<retract node='{opened}'><item id='{owners}'/></retract>")) == ("forbidden", None)
        ok(await ps(cb, "set", f"<retract node='{opened}'><item id='{own}'/></retract>"))
    finally:
        await ca.close()
        await cb.close()


async def test_malformed_requests_get_bad_request(rookery_server):
    a, pa = rookery_server.make_user()
    c = await tls_login(rookery_server, a, pa)
    node = "m-" + new_id()
    try:
        ok(await ps(c, "set", f"<create node='{node}'/>"))
        assert err(await ps(c, "set", ""))[0] == "bad-request"
        assert err(await ps(c, "set", "<configure xmlns='urn:other'/>"))[0] == "bad-request"
        assert err(await ps(c, "get", f"<publish node='{node}'/>"))[0] == "feature-not-implemented"
        assert err(await ps(c, "set", f"<purge node='{node}'/>"))[0] == "feature-not-implemented"
        assert err(await ps(c, "set", f"<affiliations node='{node}'><affiliation jid='@@' affiliation='member'/></affiliations>",
                            owner=True)) == ("bad-request", "invalid-jid")
        assert err(await ps(c, "set", f"<affiliations node='{node}'><affiliation jid='x@localhost' affiliation='king'/></affiliations>",
                            owner=True))[0] == "bad-request"
        assert err(await ps(c, "get", f"<items node='{node}' max_items='many'/>"))[0] == "bad-request"
        assert err(await ps(c, "set", f"<configure node='{node}'/>", owner=True))[0] == "bad-request"
        wrong = form("urn:other", {"pubsub#title": "x"})
        assert err(await ps(c, "set", f"<configure node='{node}'>{wrong}</configure>", owner=True))[0] == "bad-request"
        assert err(await ps(c, "set", f"<subscribe node='{node}' jid='not a jid@@'/>")) == ("bad-request", "invalid-jid")
    finally:
        await c.close()
