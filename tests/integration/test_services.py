"""Integration tests of the service modules against a real server: XEP-0030 disco, XEP-0115 caps,
XEP-0199 ping, XEP-0092 version, XEP-0202 time, XEP-0012 last activity, XEP-0054 vcard-temp, XEP-0049
private storage, XEP-0160 offline messages and RFC 3921 session — with slixmpp as the real client, and
raw XML for the error cases."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from xmpp_helpers import RawClient, disconnect, error_condition, slix_client

import rookery
from rookery.config import DEFAULT_MODULES
from rookery.jid import JID
from rookery.modules import load_module_class
from rookery.modules.caps import NODE, verification_string_of
from rookery.storage.base import RosterItem
from rookery.testing import RunningServer

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
C = "{jabber:client}"


def _loadable(name: str) -> bool:
    try:
        load_module_class(name)
    except (ImportError, AttributeError):
        return False
    return True


# every default module that exists in this tree (roster/presence may be written separately)
MODULES = [m for m in DEFAULT_MODULES if _loadable(m)]


def _start(settings: dict) -> tuple[RunningServer, str]:
    d = tempfile.mkdtemp(prefix="rookery-test-")
    return RunningServer({"modules": MODULES, **settings}, Path(d)).start(), d


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    s, d = _start({})
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


async def raw_login(server: RunningServer, jid: str, password: str, resource: str = "raw") -> RawClient:
    return await RawClient().login(server.direct_tls_port, jid, password, resource=resource, tls=True)


async def client(server: RunningServer, jid: str, password: str, *plugins: str, presence: bool = True):
    return await slix_client(server, jid, password, direct_tls=True, plugins=plugins, presence=presence)


def subscribe(server: RunningServer, owner: str, contact: str, subscription: str = "from") -> None:
    """Put ``contact`` on ``owner``'s roster with ``subscription`` (straight into storage)."""
    o = JID.parse(owner)
    server.call(server.server.storage.roster.set_item, o.domain, o.local,
                RosterItem(jid=contact, subscription=subscription))


def initial_presence(server: RunningServer, full_jid: str, priority: int = 0) -> None:
    """Until the presence module exists, do what it will do after a session's initial presence."""
    if "presence" in server.server.modules.modules:
        return

    async def fire() -> None:
        session = server.server.sessions.get(JID.parse(full_jid))
        assert session is not None
        server.server.sessions.update(session, available=True, priority=priority)
        r = server.server.events.fire("initial-presence", session)
        if r is not None:
            await r

    server.call(fire)


def condition(e: IqError) -> str:
    return e.iq["error"]["condition"]


# -- XEP-0030 service discovery ------------------------------------------------------------------
async def test_server_disco_info_lists_identity_and_every_module_feature(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0030")
    try:
        iq = await c.plugin["xep_0030"].get_info(jid=server.domain)
        info = iq["disco_info"]
        assert ("server", "im", None, "Rookery") in info["identities"]
        features = set(info["features"])
        for var in (DISCO_INFO, DISCO_ITEMS, "urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time",
                    "jabber:iq:last", "vcard-temp", "jabber:iq:private", "msgoffline"):
            assert var in features, var
        for mod in server.server.modules.modules.values():
            assert set(mod.features) <= features
    finally:
        await disconnect(c)


async def test_server_disco_items_lists_only_its_internal_services(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0030")
    try:
        iq = await c.plugin["xep_0030"].get_items(jid=server.domain)
        services = {f"{m.subdomain}.{server.domain}" for m in server.server.modules.modules.values() if m.subdomain}
        assert {item[0] for item in iq["disco_items"]["items"]} == services
    finally:
        await disconnect(c)


async def test_own_account_disco_info_is_account_registered(server):
    jid, pw = server.make_user()
    c = await raw_login(server, jid, pw)
    try:
        r = await c.iq(f"<iq type='get' id='a1'><query xmlns='{DISCO_INFO}'/></iq>")
        assert r.get("type") == "result"
        q = r.find(f"{{{DISCO_INFO}}}query")
        idents = [(i.get("category"), i.get("type")) for i in q.findall(f"{{{DISCO_INFO}}}identity")]
        assert idents == [("account", "registered")]
        features = {f.get("var") for f in q.findall(f"{{{DISCO_INFO}}}feature")}
        assert DISCO_INFO in features and "vcard-temp" in features
        assert "urn:xmpp:ping" not in features  # server-only feature
    finally:
        await c.close()


async def test_account_disco_info_needs_a_presence_subscription(server):
    a, pa = server.make_user()
    b, _ = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        q = f"<query xmlns='{DISCO_INFO}'/>"
        r = await c.iq(f"<iq type='get' id='d1' to='{b}'>{q}</iq>")
        assert error_condition(r) == "service-unavailable"  # XEP-0030 §8 rule 1.2
        subscribe(server, b, a, "from")
        r = await c.iq(f"<iq type='get' id='d2' to='{b}'>{q}</iq>")
        assert r.get("type") == "result" and r.get("from") == b
        ident = r.find(f"{{{DISCO_INFO}}}query/{{{DISCO_INFO}}}identity")
        assert (ident.get("category"), ident.get("type")) == ("account", "registered")
        # "to" subscription only (b sees a's presence, not the other way round) is not enough
        c2, _ = server.make_user()
        subscribe(server, c2, a, "to")
        r = await c.iq(f"<iq type='get' id='d3' to='{c2}'>{q}</iq>")
        assert error_condition(r) == "service-unavailable"
    finally:
        await c.close()


async def test_disco_of_nonexistent_account(server):
    a, pa = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        r = await c.iq(f"<iq type='get' id='n1' to='nobody@{server.domain}'><query xmlns='{DISCO_INFO}'/></iq>")
        assert error_condition(r) == "service-unavailable"
        r = await c.iq(f"<iq type='get' id='n2' to='nobody@{server.domain}'>"
                       f"<query xmlns='{DISCO_INFO}' node='x'/></iq>")
        assert error_condition(r) == "service-unavailable"
        # §8 rule 2.1: disco#items of a missing account is an empty result
        r = await c.iq(f"<iq type='get' id='n3' to='nobody@{server.domain}'><query xmlns='{DISCO_ITEMS}'/></iq>")
        assert r.get("type") == "result"
        assert len(r.find(f"{{{DISCO_ITEMS}}}query")) == 0
    finally:
        await c.close()


async def test_account_disco_items_lists_own_available_resources_only_to_authorized(server):
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await raw_login(server, a, pa, resource="one")
    cb = await raw_login(server, b, pb)
    try:
        ca.send("<presence/>")
        initial_presence(server, f"{a}/one")
        await asyncio.sleep(0.1)
        r = await ca.iq(f"<iq type='get' id='i1'><query xmlns='{DISCO_ITEMS}'/></iq>")
        items = [i.get("jid") for i in r.find(f"{{{DISCO_ITEMS}}}query")]
        assert items == [f"{a}/one"]
        r = await cb.iq(f"<iq type='get' id='i2' to='{a}'><query xmlns='{DISCO_ITEMS}'/></iq>")
        assert r.get("type") == "result" and len(r.find(f"{{{DISCO_ITEMS}}}query")) == 0
    finally:
        await ca.close()
        await cb.close()


async def test_unknown_disco_node_is_item_not_found_and_mirrors_nothing_else(server):
    jid, pw = server.make_user()
    c = await raw_login(server, jid, pw)
    try:
        r = await c.iq(f"<iq type='get' id='u1' to='{server.domain}'>"
                       f"<query xmlns='{DISCO_INFO}' node='urn:example:nope'/></iq>")
        assert error_condition(r) == "item-not-found"
        r = await c.iq(f"<iq type='get' id='u2' to='{server.domain}'>"
                       f"<query xmlns='{DISCO_ITEMS}' node='urn:example:nope'/></iq>")
        assert error_condition(r) == "item-not-found"
        r = await c.iq(f"<iq type='get' id='u3'><query xmlns='{DISCO_INFO}' node='urn:example:nope'/></iq>")
        assert error_condition(r) == "item-not-found"
        r = await c.iq(f"<iq type='get' id='u4' to='{server.domain}'>"
                       f"<query xmlns='{DISCO_INFO}' node='{NODE}#wrongver'/></iq>")
        assert error_condition(r) == "item-not-found"
    finally:
        await c.close()


# -- XEP-0115 entity capabilities ----------------------------------------------------------------
async def _features_after_auth(server: RunningServer, jid: str, password: str) -> tuple[RawClient, Element]:
    c = await RawClient().connect(server.direct_tls_port, tls=True)
    await c.open_stream()
    res = await c.auth_plain(jid.split("@")[0], password)
    assert res.tag.endswith("}success")
    return c, await c.open_stream()


async def test_caps_stream_feature_hashes_the_server_disco_info(server):
    jid, pw = server.make_user()
    raw, features = await _features_after_auth(server, jid, pw)
    await raw.close()
    caps = features.find("{http://jabber.org/protocol/caps}c")
    assert caps is not None
    assert caps.get("hash") == "sha-1" and caps.get("node") == NODE
    ver = caps.get("ver")
    c = await raw_login(server, jid, pw)
    try:
        plain = await c.iq(f"<iq type='get' id='c1' to='{server.domain}'><query xmlns='{DISCO_INFO}'/></iq>")
        assert verification_string_of(plain.find(f"{{{DISCO_INFO}}}query")) == ver
        r = await c.iq(f"<iq type='get' id='c2' to='{server.domain}'>"
                       f"<query xmlns='{DISCO_INFO}' node='{NODE}#{ver}'/></iq>")
        assert r.get("type") == "result"
        q = r.find(f"{{{DISCO_INFO}}}query")
        assert q.get("node") == f"{NODE}#{ver}"  # XEP-0030 §3.2: the node is mirrored
        assert verification_string_of(q) == ver
    finally:
        await c.close()


async def test_caps_node_via_slixmpp(server):
    jid, pw = server.make_user()
    raw, features = await _features_after_auth(server, jid, pw)
    await raw.close()
    ver = features.find("{http://jabber.org/protocol/caps}c").get("ver")
    c = await client(server, jid, pw, "xep_0030")
    try:
        iq = await c.plugin["xep_0030"].get_info(jid=server.domain, node=f"{NODE}#{ver}")
        assert "urn:xmpp:ping" in iq["disco_info"]["features"]
    finally:
        await disconnect(c)


# -- XEP-0199 ping -------------------------------------------------------------------------------
async def test_ping_server_with_slixmpp(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0199")
    try:
        rtt = await c.plugin["xep_0199"].ping(jid=server.domain, timeout=5)
        assert rtt is not None and rtt >= 0
    finally:
        await disconnect(c)


async def test_ping_without_to_own_bare_and_other_accounts(server):
    a, pa = server.make_user()
    b, _ = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        ping = "<ping xmlns='urn:xmpp:ping'/>"
        assert (await c.iq(f"<iq type='get' id='p1'>{ping}</iq>")).get("type") == "result"
        assert (await c.iq(f"<iq type='get' id='p2' to='{a}'>{ping}</iq>")).get("type") == "result"
        assert (await c.iq(f"<iq type='get' id='p3' to='{b}'>{ping}</iq>")).get("type") == "result"
        r = await c.iq(f"<iq type='get' id='p4' to='ghost@{server.domain}'>{ping}</iq>")
        assert error_condition(r) == "service-unavailable"
    finally:
        await c.close()


# -- XEP-0092 software version -------------------------------------------------------------------
async def test_version_is_rookery_without_os_by_default(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0092")
    try:
        iq = await c.plugin["xep_0092"].get_version(server.domain)
        v = iq["software_version"]
        assert v["name"] == "Rookery"
        assert v["version"] == rookery.__version__
        assert not v["os"]
    finally:
        await disconnect(c)


async def test_version_shows_os_when_configured(server, monkeypatch):
    monkeypatch.setattr(server.server.modules.modules["version"].options, "show_os", True)
    jid, pw = server.make_user()
    c = await raw_login(server, jid, pw)
    try:
        r = await c.iq(f"<iq type='get' id='v1' to='{server.domain}'><query xmlns='jabber:iq:version'/></iq>")
        assert r.findtext("{jabber:iq:version}query/{jabber:iq:version}os")
    finally:
        await c.close()


# -- XEP-0202 entity time ------------------------------------------------------------------------
async def test_entity_time(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0202")
    try:
        iq = await c.plugin["xep_0202"].get_entity_time(server.domain)
        # read the XML: slixmpp 1.17's entity_time accessors cannot parse XEP-0082 values
        # ('utc' gets a second 'Z' appended, 'tzo' is parsed as a dateTime)
        utc = datetime.strptime(iq.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}utc"),
                                "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs(utc.timestamp() - time.time()) < 5
        assert re.fullmatch(r"[+-]\d\d:\d\d", iq.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo"))
    finally:
        await disconnect(c)


# -- XEP-0012 last activity ----------------------------------------------------------------------
async def test_last_activity_of_server_is_uptime(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0012")
    try:
        iq = await c.plugin["xep_0012"].get_last_activity(server.domain)
        expected = time.time() - server.server.started_at
        assert 0 <= iq["last_activity"]["seconds"] <= expected + 1
    finally:
        await disconnect(c)


async def test_last_activity_of_online_self_is_zero(server):
    jid, pw = server.make_user()
    c = await raw_login(server, jid, pw)
    try:
        r = await c.iq("<iq type='get' id='l1'><query xmlns='jabber:iq:last'/></iq>")
        q = r.find("{jabber:iq:last}query")
        assert q.get("seconds") == "0" and not q.text
    finally:
        await c.close()


async def test_last_activity_needs_subscription_and_reports_logout_status(server):
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await client(server, a, pa, "xep_0012")
    try:
        with pytest.raises(IqError) as e:
            await ca.plugin["xep_0012"].get_last_activity(b)
        assert condition(e.value) == "forbidden"  # XEP-0012 §3
        subscribe(server, b, a, "both")
        # b online: 0 seconds
        cb = await raw_login(server, b, pb)
        iq = await ca.plugin["xep_0012"].get_last_activity(b)
        assert iq["last_activity"]["seconds"] == 0
        cb.send("<presence type='unavailable'><status>Heading Home</status></presence>")
        await asyncio.sleep(0.1)
        await cb.close()
        for _ in range(50):
            if server.session_count() == 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        iq = await ca.plugin["xep_0012"].get_last_activity(b)
        assert 0 <= iq["last_activity"]["seconds"] <= 5
        assert iq["last_activity"]["status"] == "Heading Home"
        with pytest.raises(IqError) as e:
            await ca.plugin["xep_0012"].get_last_activity(f"nobody@{server.domain}")
        assert condition(e.value) == "service-unavailable"
    finally:
        await disconnect(ca)


async def test_last_activity_right_after_logout_is_never_item_not_found(server, monkeypatch):
    """XEP-0012 §3: the logout is known the moment the last session is gone, even while its record is
    still being written (the write is slowed down here to open that window wide)."""
    a, pa = server.make_user()
    b, pb = server.make_user()
    subscribe(server, b, a, "both")
    kv = server.server.storage.kv
    original = kv.set

    async def slow_set(*args):
        await asyncio.sleep(0.5)
        return await original(*args)

    monkeypatch.setattr(kv, "set", slow_set)
    ca = await raw_login(server, a, pa)
    cb = await raw_login(server, b, pb)
    try:
        await cb.close()
        answers = []
        for i in range(40):  # bounded: about 1 s of queries across the logout
            r = await ca.iq(f"<iq type='get' id='q{i}' to='{b}'><query xmlns='jabber:iq:last'/></iq>")
            answers.append(r.get("type") if r.get("type") == "result" else error_condition(r))
            if server.session_count() == 1 and i > 5:
                break
            await asyncio.sleep(0.02)
        assert set(answers) == {"result"}, answers
    finally:
        await ca.close()


async def test_last_activity_to_full_jid_is_forwarded_only_when_authorized(server):
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await raw_login(server, a, pa)
    cb = await raw_login(server, b, pb, resource="desk")
    try:
        q = "<query xmlns='jabber:iq:last'/>"
        r = await ca.iq(f"<iq type='get' id='f1' to='{b}/desk'>{q}</iq>")
        assert error_condition(r) == "forbidden"  # XEP-0012 §4: not delivered
        await cb.expect_nothing()
        subscribe(server, b, a, "from")
        ca.send(f"<iq type='get' id='f2' to='{b}/desk'>{q}</iq>")
        got = await cb.recv_until(lambda e: e.get("id") == "f2")
        assert got.get("from") == ca.jid
        r = await ca.iq(f"<iq type='get' id='f3' to='{b}/gone'>{q}</iq>")
        assert error_condition(r) == "service-unavailable"
    finally:
        await ca.close()
        await cb.close()


# -- XEP-0054 vcard-temp -------------------------------------------------------------------------
async def test_vcard_publish_and_fetch_with_slixmpp(server):
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await client(server, a, pa, "xep_0054")
    cb = await client(server, b, pb, "xep_0054")
    try:
        empty = await ca.plugin["xep_0054"].get_vcard(a)
        assert empty["vcard_temp"]["FN"] == ""
        vcard = ca.plugin["xep_0054"].make_vcard()
        vcard["FN"] = "Ada Lovelace"
        vcard["NICKNAME"] = "ada"
        await ca.plugin["xep_0054"].publish_vcard(vcard)
        mine = await ca.plugin["xep_0054"].get_vcard(a)
        assert mine["vcard_temp"]["FN"] == "Ada Lovelace"
        theirs = await cb.plugin["xep_0054"].get_vcard(a)
        assert theirs["vcard_temp"]["FN"] == "Ada Lovelace"
        assert theirs.xml.findtext(".//{vcard-temp}NICKNAME") == "ada"
        # XEP-0054 §3.3: another user's missing vCard is service-unavailable, like a missing user
        with pytest.raises(IqError) as e:
            await ca.plugin["xep_0054"].get_vcard(b)
        assert condition(e.value) == "service-unavailable"
        with pytest.raises(IqError) as e:
            await ca.plugin["xep_0054"].get_vcard(f"nobody@{server.domain}")
        assert condition(e.value) == "service-unavailable"
    finally:
        await disconnect(ca, cb)


async def test_vcard_set_for_another_user_is_forbidden_and_size_is_limited(server):
    a, pa = server.make_user()
    b, _ = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        r = await c.iq(f"<iq type='set' id='vs1' to='{b}'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>")
        assert error_condition(r) == "forbidden"
        big = "x" * (65 * 1024)
        r = await c.iq(f"<iq type='set' id='vs2'><vCard xmlns='vcard-temp'><DESC>{big}</DESC></vCard></iq>")
        assert error_condition(r) == "policy-violation"
        r = await c.iq(f"<iq type='set' id='vs3' to='{a}'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>")
        assert r.get("type") == "result"
        # an empty vCard removes it
        r = await c.iq("<iq type='set' id='vs4'><vCard xmlns='vcard-temp'/></iq>")
        assert r.get("type") == "result"
        r = await c.iq("<iq type='get' id='vs5'><vCard xmlns='vcard-temp'/></iq>")
        assert r.get("type") == "result" and len(r.find("{vcard-temp}vCard")) == 0
    finally:
        await c.close()


# -- XEP-0049 private XML storage ----------------------------------------------------------------
async def test_private_storage_roundtrip_with_slixmpp(server):
    jid, pw = server.make_user()
    c = await client(server, jid, pw, "xep_0049")
    try:
        prefs = ET.fromstring("<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>")
        await c.plugin["xep_0049"].store(prefs)
        iq = c.make_iq_get()
        iq["private"].append(ET.fromstring("<exodus xmlns='exodus:prefs'/>"))
        res = await iq.send()
        assert res.xml.findtext(".//{exodus:prefs}defaultnick") == "Hamlet"
    finally:
        await disconnect(c)


async def test_private_storage_errors_and_empty_get(server):
    a, pa = server.make_user()
    b, _ = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        r = await c.iq("<iq type='get' id='ps1'><query xmlns='jabber:iq:private'><x xmlns='urn:none'/></query></iq>")
        assert r.get("type") == "result"
        child = r.find("{jabber:iq:private}query/{urn:none}x")
        assert child is not None and len(child) == 0
        r = await c.iq(f"<iq type='set' id='ps2' to='{b}'><query xmlns='jabber:iq:private'>"
                       f"<x xmlns='urn:a'><y/></x></query></iq>")
        assert error_condition(r) == "forbidden"
        r = await c.iq(f"<iq type='get' id='ps3' to='{b}'><query xmlns='jabber:iq:private'><x xmlns='urn:a'/></query></iq>")
        assert error_condition(r) == "forbidden"
        for i, reserved in enumerate(("jabber:iq:private", "jabber:client", "jabber:server")):
            r = await c.iq(f"<iq type='set' id='ps4{i}'><query xmlns='jabber:iq:private'>"
                           f"<x xmlns='{reserved}'/></query></iq>")
            assert error_condition(r) == "not-acceptable", reserved
        r = await c.iq("<iq type='set' id='ps5'><query xmlns='jabber:iq:private'/></iq>")
        assert error_condition(r) == "not-acceptable"
        # several fragments in one set, fetched separately; a second set replaces
        r = await c.iq("<iq type='set' id='ps6'><query xmlns='jabber:iq:private'>"
                       "<a xmlns='urn:one'>1</a><b xmlns='urn:two'>2</b></query></iq>")
        assert r.get("type") == "result"
        await c.iq("<iq type='set' id='ps7'><query xmlns='jabber:iq:private'><a xmlns='urn:one'>3</a></query></iq>")
        r = await c.iq("<iq type='get' id='ps8'><query xmlns='jabber:iq:private'><a xmlns='urn:one'/></query></iq>")
        assert r.findtext("{jabber:iq:private}query/{urn:one}a") == "3"
        r = await c.iq("<iq type='get' id='ps9'><query xmlns='jabber:iq:private'><b xmlns='urn:two'/></query></iq>")
        assert r.findtext("{jabber:iq:private}query/{urn:two}b") == "2"
    finally:
        await c.close()


# -- XEP-0160 offline messages -------------------------------------------------------------------
async def offline_count_becomes(server: RunningServer, jid: JID, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server.call(server.server.storage.offline.count, jid.domain, jid.local) != n:
        assert time.monotonic() < deadline, f"offline count of {jid} never became {n}"
        await asyncio.sleep(0.02)


async def test_offline_message_is_delivered_on_login_with_delay(server):
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await client(server, a, pa)
    try:
        ca.send_message(mto=b, mbody="while you were out", mtype="chat")
        o = JID.parse(b)
        await offline_count_becomes(server, o, 1)
        before = time.time()
        cb = await client(server, b, pb, "xep_0203", presence=False)
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        cb.add_event_handler("message", lambda m: got.done() or got.set_result(m))
        cb.send_presence()
        initial_presence(server, str(cb.boundjid))
        msg = await asyncio.wait_for(got, 5)
        assert msg["body"] == "while you were out"
        assert msg["from"].bare == a
        delay = msg["delay"]
        assert delay["from"].full == server.domain
        assert before - 5 < delay["stamp"].timestamp() <= before
        assert delay["text"] == "Offline Storage"
        await offline_count_becomes(server, o, 0)  # removed once handed over (crash-safe delivery)
        await disconnect(cb)
    finally:
        await disconnect(ca)


async def test_offline_queue_full_bounces_service_unavailable(server, monkeypatch):
    # the limit is offline.max_messages, handed to the store at start; shrink it for this test
    monkeypatch.setattr(server.server.storage.offline, "limit", 1)
    a, pa = server.make_user()
    b, _ = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        c.send(f"<message to='{b}' type='chat' id='m1'><body>one</body></message>")
        await c.expect_nothing()
        c.send(f"<message to='{b}' type='chat' id='m2'><body>two</body></message>")
        err = await c.recv_until(lambda e: e.tag == f"{C}message" and e.get("id") == "m2")
        assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
    finally:
        await c.close()


async def test_chat_state_only_messages_are_not_stored(server):
    a, pa = server.make_user()
    b, _ = server.make_user()
    c = await raw_login(server, a, pa)
    try:
        c.send(f"<message to='{b}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        c.send(f"<message to='{b}' type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>")
        await c.expect_nothing()
        o = JID.parse(b)
        assert server.call(server.server.storage.offline.count, o.domain, o.local) == 0
    finally:
        await c.close()


async def test_offline_messages_wait_for_non_negative_priority(server):
    a, pa = server.make_user()
    b, pb = server.make_user()
    ca = await raw_login(server, a, pa)
    cb = None
    try:
        ca.send(f"<message to='{b}' id='o1'><body>first</body></message>")
        ca.send(f"<message to='{b}' id='o2' type='chat'><body>second</body></message>")
        await ca.expect_nothing()
        cb = await raw_login(server, b, pb, resource="neg")
        cb.send("<presence><priority>-1</priority></presence>")
        initial_presence(server, f"{b}/neg", priority=-1)
        with pytest.raises(TimeoutError):  # nothing for a negative-priority resource (XEP-0160 §2)
            await cb.recv_until(lambda e: e.tag == f"{C}message", timeout=0.5)
        cb.send("<presence><priority>1</priority></presence>")
        m1 = await cb.recv_until(lambda e: e.tag == f"{C}message")
        m2 = await cb.recv_until(lambda e: e.tag == f"{C}message")
        assert [m1.findtext(f"{C}body"), m2.findtext(f"{C}body")] == ["first", "second"]
        assert m1.find("{urn:xmpp:delay}delay") is not None
    finally:
        await ca.close()
        if cb is not None:
            await cb.close()


# -- RFC 3921 session ----------------------------------------------------------------------------
async def test_session_iq_gets_empty_result(server):
    jid, pw = server.make_user()
    c = await raw_login(server, jid, pw)
    try:
        xml = "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>"
        r = await c.iq(f"<iq type='set' id='s1' to='{server.domain}'>{xml}</iq>")
        assert r.get("type") == "result" and len(r) == 0
        r = await c.iq(f"<iq type='set' id='s2'>{xml}</iq>")
        assert r.get("type") == "result"
    finally:
        await c.close()

