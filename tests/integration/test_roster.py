"""RFC 6121 §2 roster management (get, set, update, remove, pushes, §2.6 versioning, §2.3.3 and
§2.5.3 errors) against a real server, with raw-XML clients and slixmpp."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_presence import IM, ROSTER, C, is_presence, login, set_roster, sub_of, users
from xmpp_helpers import RawClient, disconnect, error_condition, slix_client

from rookery.testing import RunningServer


@pytest.fixture(scope="module")
def im_server() -> Iterator[RunningServer]:
    d = tempfile.mkdtemp(prefix="rookery-roster-")
    s = RunningServer({"modules": ["roster", "presence"]}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def is_push(el) -> bool:  # type: ignore[no-untyped-def]
    return el.tag == C + "iq" and el.get("type") == "set" and el.find(ROSTER + "query") is not None


async def test_stream_features_advertise_roster_versioning_and_pre_approval(im_server):
    jid, pw = im_server.make_user()
    c = await RawClient().connect(im_server.c2s_port)
    await c.open_stream()
    await c.starttls()
    assert (await c.auth_plain(jid.split("@")[0], pw)).tag.endswith("}success")
    features = await c.open_stream()
    assert features.find("{urn:xmpp:features:rosterver}ver") is not None  # §2.6.1
    assert features.find("{urn:xmpp:features:pre-approval}sub") is not None  # §3.4.1
    await c.close()


async def test_roster_get_returns_the_version_whether_or_not_the_client_asks_for_it(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa, roster=False, presence=None)
    r = await ca.iq("<iq type='get'><query xmlns='jabber:iq:roster' ver=''/></iq>")
    q = r.find(ROSTER + "query")
    assert r.get("type") == "result" and q is not None and len(q) == 0 and q.get("ver")
    r = await ca.iq("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>")
    # §2.6: versioning is advertised, so the result carries the version even to a client that sent
    # none (Prosody's and ejabberd's clients expect it)
    assert r.find(ROSTER + "query").get("ver") == q.get("ver")
    await ca.close()


async def test_roster_set_replies_result_and_pushes_to_every_interested_resource(im_server):
    (a, pa), = users(im_server, 1)
    r1 = await login(im_server, a, pa, resource="one")
    r2 = await login(im_server, a, pa, resource="two", presence=None)  # interested, not available
    r3 = await login(im_server, a, pa, resource="three", roster=False)  # available, not interested
    r = await r1.iq("<iq type='set'><query xmlns='jabber:iq:roster'>"
                    "<item jid='nurse@example.com' name='Nurse'><group>Servants</group></item></query></iq>")
    assert r.get("type") == "result" and len(r) == 0  # §2.3.2
    for c in (r1, r2):
        iq = await c.wait(is_push)
        assert iq.get("to") == c.jid and iq.get("from") in (None, a)  # §2.1.6
        q = iq.find(ROSTER + "query")
        assert q.get("ver")
        item = q.find(ROSTER + "item")
        assert item.attrib == {"jid": "nurse@example.com", "name": "Nurse", "subscription": "none"}
        assert [g.text for g in item] == ["Servants"]
    await r3.never(is_push)
    for c in (r1, r2, r3):
        await c.close()


async def test_roster_update_replaces_name_and_groups_and_keeps_subscription(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    set_roster(im_server, a, b, "to")
    set_roster(im_server, b, a, "from")
    ca = await login(im_server, a, pa)
    await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{b}' name='Bee'>"
                "<group>X</group><group>Y</group></item></query></iq>")
    item = await ca.push(b)
    assert (item.get("name"), sub_of(item), [g.text for g in item]) == ("Bee", ("to", None, None), ["X", "Y"])
    await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{b}'/></query></iq>")
    item = await ca.push(b)  # §2.4: groups and name left out are removed
    assert (item.get("name"), len(item), item.get("subscription")) == (None, 0, "to")
    await ca.close()


async def test_roster_set_ignores_subscription_ask_and_approved_attributes(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    r = await ca.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='x@example.com' "
                    "subscription='both' ask='subscribe' approved='true'/></query></iq>")
    assert r.get("type") == "result"  # §2.1.2.5: values other than "remove" are ignored
    assert sub_of(await ca.push("x@example.com")) == ("none", None, None)
    await ca.close()


async def test_roster_remove_pushes_remove_and_item_is_gone(im_server):
    (a, pa), = users(im_server, 1)
    r1, r2 = await login(im_server, a, pa, resource="1"), await login(im_server, a, pa, resource="2")
    await r1.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='x@example.com'/></query></iq>")
    await r1.push("x@example.com")
    await r2.push("x@example.com")
    r = await r1.iq("<iq type='set'><query xmlns='jabber:iq:roster'>"
                    "<item jid='x@example.com' subscription='remove'/></query></iq>")
    assert r.get("type") == "result"
    for c in (r1, r2):
        assert (await c.push("x@example.com")).get("subscription") == "remove"  # §2.5.2
    assert await r1.roster() == {}
    await r1.close()
    await r2.close()


async def test_removing_unknown_item_is_item_not_found(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    r = await ca.iq("<iq type='set'><query xmlns='jabber:iq:roster'>"
                    "<item jid='ghost@example.com' subscription='remove'/></query></iq>")
    assert r.get("type") == "error" and error_condition(r) == "item-not-found"  # §2.5.3
    await ca.never(is_push)
    await ca.close()


async def test_removing_a_contact_cancels_both_subscriptions(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    set_roster(im_server, a, b, "both")
    set_roster(im_server, b, a, "both")
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    await cb.presence(frm=ca.jid)
    await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{b}' subscription='remove'/>"
                "</query></iq>")
    assert (await ca.push(b)).get("subscription") == "remove"
    await cb.presence(frm=a, ptype="unsubscribe")  # §2.5.2: the user's subscription to the contact
    await cb.presence(frm=a, ptype="unsubscribed")  # and the contact's to the user
    await cb.presence(frm=ca.jid, ptype="unavailable")
    await ca.presence(frm=cb.jid, ptype="unavailable")
    await cb.sync()
    await asyncio.sleep(0.1)
    assert sub_of((await cb.roster())[a]) == ("none", None, None)
    await ca.close()
    await cb.close()


async def test_removing_a_contact_with_pending_requests_cancels_and_denies_them(im_server):
    (a, pa), (b, pb) = users(im_server, 2)
    ca, cb = await login(im_server, a, pa), await login(im_server, b, pb)
    cb.send(f"<presence to='{a}' type='subscribe'/>")
    assert sub_of(await cb.push(a)) == ("none", "subscribe", None)
    await ca.presence(frm=b, ptype="subscribe")
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await ca.push(b)
    await cb.presence(frm=a, ptype="subscribe")
    await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{b}' subscription='remove'/>"
                "</query></iq>")
    await cb.presence(frm=a, ptype="unsubscribe")  # withdraws A's request
    await cb.presence(frm=a, ptype="unsubscribed")  # denies B's request
    assert sub_of(await cb.push(a)) == ("none", None, None)  # B's ask is gone
    await ca.close()
    ca = await login(im_server, a, pa, resource="later")
    await ca.never(lambda e: is_presence(e, b, "subscribe"))  # no longer pending
    await ca.close()
    await cb.close()


async def test_roster_versioning_returns_empty_result_when_up_to_date_and_full_roster_otherwise(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa, roster=False, presence=None)
    r = await ca.iq("<iq type='get'><query xmlns='jabber:iq:roster' ver=''/></iq>")
    v0 = r.find(ROSTER + "query").get("ver")
    await ca.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='v1@example.com'/></query></iq>")
    v1 = (await ca.wait(is_push)).find(ROSTER + "query").get("ver")
    assert v1 != v0
    r = await ca.iq(f"<iq type='get'><query xmlns='jabber:iq:roster' ver='{v1}'/></iq>")
    assert r.get("type") == "result" and len(r) == 0  # §2.6.3: nothing new
    r = await ca.iq(f"<iq type='get'><query xmlns='jabber:iq:roster' ver='{v0}'/></iq>")
    q = r.find(ROSTER + "query")
    assert q.get("ver") == v1 and [i.get("jid") for i in q] == ["v1@example.com"]
    await ca.close()
    # versions survive the session (and the cache)
    ca = await login(im_server, a, pa, roster=False, presence=None)
    r = await ca.iq(f"<iq type='get'><query xmlns='jabber:iq:roster' ver='{v1}'/></iq>")
    assert len(r) == 0
    await ca.close()


@pytest.mark.parametrize("query,condition", [
    ("<item jid='a@example.com'/><item jid='b@example.com'/>", "bad-request"),
    ("", "bad-request"),
    ("<item jid='a@example.com'><group>G</group><group>G</group></item>", "bad-request"),
    ("<item jid='a@example.com'><group></group></item>", "not-acceptable"),
    ("<item jid='a@example.com'><group>" + "g" * 2000 + "</group></item>", "not-acceptable"),
    ("<item jid='a@example.com' name='" + "n" * 2000 + "'/>", "not-acceptable"),
    ("<item/>", "bad-request"),
    ("<item jid='a@example.com/resource'/>", "bad-request"),
    ("<item jid='a@@example.com'/>", "jid-malformed"),
])
async def test_invalid_roster_set_is_rejected_and_changes_nothing(im_server, query, condition):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    r = await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'>{query}</query></iq>")
    assert r.get("type") == "error" and error_condition(r) == condition  # §2.3.3
    await ca.never(is_push)
    assert await ca.roster() == {}
    await ca.close()


@pytest.mark.parametrize("iqtype", ["get", "set"])
async def test_roster_of_another_account_is_forbidden(im_server, iqtype):
    (a, pa), (b, _pb) = users(im_server, 2)
    ca = await login(im_server, a, pa)
    payload = "<item jid='x@example.com'/>" if iqtype == "set" else ""
    r = await ca.iq(f"<iq type='{iqtype}' to='{b}'><query xmlns='jabber:iq:roster'>{payload}</query></iq>")
    assert r.get("type") == "error" and error_condition(r) == "forbidden"  # §2.1.5 / §2.3.3
    await ca.close()


async def test_roster_request_addressed_to_own_bare_jid_works(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    r = await ca.iq(f"<iq type='get' to='{a}'><query xmlns='jabber:iq:roster'/></iq>")
    assert r.get("type") == "result" and r.get("from") == a
    await ca.close()


async def test_own_bare_jid_can_be_a_roster_item(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    r = await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{a}' name='me'/></query></iq>")
    assert r.get("type") == "result"
    assert (await ca.push(a)).get("name") == "me"
    r = await ca.iq(f"<iq type='set'><query xmlns='jabber:iq:roster'><item jid='{a}' subscription='remove'/>"
                    "</query></iq>")
    assert r.get("type") == "result"
    await ca.never(lambda e: e.tag == C + "presence" and e.get("type") in ("unsubscribe", "unsubscribed"))
    await ca.close()


async def test_roster_items_persist_across_sessions(im_server):
    (a, pa), = users(im_server, 1)
    ca = await login(im_server, a, pa)
    await ca.iq("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='keep@example.com' name='K'>"
                "<group>g</group></item></query></iq>")
    await ca.close()
    ca = await login(im_server, a, pa, resource="again")
    item = (await ca.roster())["keep@example.com"]
    assert item.get("name") == "K" and [g.text for g in item] == ["g"]
    await ca.close()


async def test_pending_subscription_shows_ask_in_roster_result(im_server):
    (a, pa), (b, _pb) = users(im_server, 2)
    ca = await login(im_server, a, pa)
    ca.send(f"<presence to='{b}' type='subscribe'/>")
    await ca.push(b)
    assert sub_of((await ca.roster())[b]) == ("none", "subscribe", None)  # §2.1.2.2
    await ca.close()


async def test_slixmpp_adds_renames_and_removes_a_contact(im_server):
    (a, pa), = users(im_server, 1)
    xa = await slix_client(im_server, a, pa)
    try:
        await xa.get_roster()
        await xa.update_roster("friend@example.com", name="Friend", groups=["Pals"])
        for _ in range(50):
            if "friend@example.com" in xa.client_roster and xa.client_roster["friend@example.com"]["name"]:
                break
            await asyncio.sleep(0.05)
        entry = xa.client_roster["friend@example.com"]
        assert entry["name"] == "Friend" and entry["groups"] == ["Pals"] and entry["subscription"] == "none"
        await xa.update_roster("friend@example.com", name="Buddy")  # slixmpp sends subscription='none'
        for _ in range(50):
            if xa.client_roster["friend@example.com"]["name"] == "Buddy":
                break
            await asyncio.sleep(0.05)
        assert xa.client_roster["friend@example.com"]["name"] == "Buddy"
        await xa.del_roster_item("friend@example.com")
        for _ in range(50):
            if "friend@example.com" not in xa.client_roster.keys():
                break
            await asyncio.sleep(0.05)
        assert "friend@example.com" not in xa.client_roster.keys()
        fresh = IM(await RawClient().login(im_server.c2s_port, a, pa, "check"))
        assert await fresh.roster() == {}
        await fresh.close()
    finally:
        await disconnect(xa)
