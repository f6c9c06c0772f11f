"""XEP-0045 Multi-User Chat against a real server: room creation (instant and reserved), configuration,
join/leave, nick changes and conflicts, history, subject, private messages, multi-session nicks,
occupant ids (XEP-0421), self-ping (XEP-0410), moderation (kick, ban, voice, lists, voice requests),
registration, invitations (mediated, declines, XEP-0249 direct), destruction, persistence across a
restart, the room archive (XEP-0313) and disco; every XEP error case; raw XML clients, and slixmpp's
xep_0045 as a real client."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from pathlib import Path
from xml.etree.ElementTree import Element

from xmpp_helpers import RawClient, disconnect, error_condition, one_and_two_workers, slix_client

from rookery.testing import RunningServer

rookery_server = one_and_two_workers("rookery-muc-")


CONF = "conference.localhost"
C = "{jabber:client}"
MUC = "http://jabber.org/protocol/muc"
USER = MUC + "#user"
ADMIN = MUC + "#admin"
OWNER = MUC + "#owner"
XD = "jabber:x:data"
MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
OID = "urn:xmpp:occupant-id:0"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"

_n = itertools.count()


def room_jid() -> str:
    return f"room{next(_n)}@{CONF}"


async def login(server, resource: str = "raw", name: str | None = None, pw: str | None = None) -> RawClient:
    if name is None:
        jid, pw = server.make_user()
    else:
        jid = name
    c = await RawClient().login(server.c2s_port, jid, pw, resource=resource)
    c.bare = jid  # type: ignore[attr-defined]
    c.pw = pw  # type: ignore[attr-defined]
    c.send("<presence/>")
    await c.recv_until(lambda e: e.tag == C + "presence" and e.get("from") == c.jid)
    return c


def codes(el: Element) -> set[str]:
    return {s.get("code") for s in el.findall(f"{{{USER}}}x/{{{USER}}}status")}


def item(el: Element) -> Element:
    it = el.find(f"{{{USER}}}x/{{{USER}}}item")
    assert it is not None, el.attrib
    return it


def is_self(el: Element, occ: str) -> bool:
    return el.tag == C + "presence" and el.get("from") == occ and "110" in codes(el)


async def join(c: RawClient, occ: str, x: str = f"<x xmlns='{MUC}'/>", ptype: str = "") -> list[Element]:
    """Join; returns what arrived up to the subject message (or the error presence)."""
    t = f" type='{ptype}'" if ptype else ""
    c.send(f"<presence to='{occ}'{t}>{x}</presence>")
    got = await c.collect_until(lambda g: bool(g) and (
        (g[-1].tag == C + "message" and g[-1].find(C + "subject") is not None)
        or (g[-1].tag == C + "presence" and g[-1].get("type") == "error")))
    return got


async def join_error(c: RawClient, occ: str, x: str = f"<x xmlns='{MUC}'/>", echo: bool = True) -> str | None:
    got = await join(c, occ, x)
    assert got[-1].get("type") == "error", got[-1].attrib
    assert not echo or got[-1].find(f"{{{MUC}}}x") is not None
    return error_condition(got[-1])


async def iq(c: RawClient, to: str, type: str, payload: str) -> Element:
    i = f"i{next(_n)}"
    return await c.iq(f"<iq type='{type}' to='{to}' id='{i}'>{payload}</iq>")


def form(fields: dict[str, str | list[str]]) -> str:
    out = [f"<x xmlns='{XD}' type='submit'><field var='FORM_TYPE'><value>{MUC}#roomconfig</value></field>"]
    for k, v in fields.items():
        vals = v if isinstance(v, list) else [v]
        out.append(f"<field var='{k}'>" + "".join(f"<value>{x}</value>" for x in vals) + "</field>")
    return "".join(out) + "</x>"


async def configure(c: RawClient, room: str, **fields: str) -> Element:
    f = {f"muc#roomconfig_{k}" if not k.startswith("muc#") else k: v for k, v in fields.items()}
    return await iq(c, room, "set", f"<query xmlns='{OWNER}'>{form(f)}</query>")


async def create(c: RawClient, room: str, nick: str = "owner", **fields: str) -> list[Element]:
    got = await join(c, f"{room}/{nick}")
    selfp = [e for e in got if is_self(e, f"{room}/{nick}")]
    assert selfp and "201" in codes(selfp[0]), [e.attrib for e in got]
    r = await configure(c, room, **fields)
    assert r.get("type") == "result", error_condition(r)
    return got


async def quiet(*clients: RawClient, t: float = 0.15) -> None:
    for c in clients:
        try:
            while True:
                await c.recv(t)
        except (TimeoutError, ConnectionError):
            pass


async def groupchat(c: RawClient, room: str, body: str) -> None:
    c.send(f"<message to='{room}' type='groupchat' id='g-{body}'><body>{body}</body></message>")


async def got_body(c: RawClient, body: str) -> Element:
    return await c.recv_until(lambda e: e.tag == C + "message" and e.findtext(C + "body") == body)


# -- creation, join, presence -----------------------------------------------------------------------
async def test_create_locked_then_configure_join_and_chat(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    room = room_jid()
    got = await join(a, f"{room}/Alice")
    me = [e for e in got if is_self(e, f"{room}/Alice")][0]
    assert {"110", "201"} <= codes(me)
    assert item(me).get("affiliation") == "owner" and item(me).get("role") == "moderator"
    assert me.find(f"{{{OID}}}occupant-id") is not None
    # locked until configured: others get item-not-found
    assert await join_error(b, f"{room}/Bob") == "item-not-found"
    cf = await iq(a, room, "get", f"<query xmlns='{OWNER}'/>")
    fields = {f.get("var") for f in cf.iter(f"{{{XD}}}field")}
    for var in ("muc#roomconfig_roomname", "muc#roomconfig_roomdesc", "muc#roomconfig_persistentroom",
                "muc#roomconfig_publicroom", "muc#roomconfig_membersonly", "muc#roomconfig_roomsecret",
                "muc#roomconfig_moderatedroom", "muc#roomconfig_maxusers", "muc#roomconfig_whois",
                "muc#maxhistoryfetch", "muc#roomconfig_allowinvites", "muc#roomconfig_changesubject",
                "muc#roomconfig_allowpm"):
        assert var in fields, var
    assert (await configure(a, room, roomname="Lounge")).get("type") == "result"
    got = await join(b, f"{room}/Bob")
    # Bob sees Alice first, then himself, then the subject
    pres = [e for e in got if e.tag == C + "presence"]
    assert pres[0].get("from") == f"{room}/Alice"
    assert item(pres[0]).get("jid") is None  # semi-anonymous: no real JIDs for participants
    assert is_self(pres[-1], f"{room}/Bob") and item(pres[-1]).get("role") == "participant"
    alice_sees = await a.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert item(alice_sees).get("jid") == b.jid  # moderators see real JIDs
    await groupchat(b, room, "hello all")
    for c in (a, b):
        m = await got_body(c, "hello all")
        assert m.get("from") == f"{room}/Bob" and m.get("type") == "groupchat"
        assert m.get("id") == "g-hello all"
        assert m.find(f"{{{SID}}}stanza-id").get("by") == room
        assert m.find(f"{{{OID}}}occupant-id").get("id")
    # leave
    b.send(f"<presence to='{room}/Bob' type='unavailable'/>")
    left = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert left.get("type") == "unavailable" and "110" in codes(left)
    other = await a.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert other.get("type") == "unavailable"
    await a.close()
    await b.close()


async def test_instant_room_and_gc1_join(rookery_server):
    a = await login(rookery_server)
    room = room_jid()
    # groupchat 1.0 join (no <x/>): an instant room, unlocked at once
    got = await join(a, f"{room}/a", x="")
    assert "201" in codes([e for e in got if is_self(e, f"{room}/a")][0])
    b = await login(rookery_server)
    got = await join(b, f"{room}/b")
    assert is_self([e for e in got if e.tag == C + "presence"][-1], f"{room}/b")
    # instant room by an empty submit (§10.1.2)
    room2 = room_jid()
    await join(a, f"{room2}/a")
    r = await iq(a, room2, "set", f"<query xmlns='{OWNER}'><x xmlns='{XD}' type='submit'/></query>")
    assert r.get("type") == "result"
    assert (await join(b, f"{room2}/b"))[-1].tag == C + "message"
    await a.close()
    await b.close()


async def test_join_errors(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice", passwordprotectedroom="1", roomsecret="s3cret", maxusers="2")
    # no nickname: jid-malformed
    b.send(f"<presence to='{room}'><x xmlns='{MUC}'/></presence>")
    err = await b.recv_until(lambda e: e.get("type") == "error")
    assert error_condition(err) == "jid-malformed"
    # a nickname that is not a nickname (RFC 8266): jid-malformed
    assert await join_error(b, f"{room}/  ") == "jid-malformed"
    assert await join_error(b, f"{room}/\u200b", echo=False) == "jid-malformed"  # not even a resource
    # password
    assert await join_error(b, f"{room}/Bob") == "not-authorized"
    assert await join_error(b, f"{room}/Bob", f"<x xmlns='{MUC}'><password>nope</password></x>") == "not-authorized"
    # nick conflict, PRECIS-case-insensitive
    ok = f"<x xmlns='{MUC}'><password>s3cret</password></x>"
    assert await join_error(b, f"{room}/alice", ok) == "conflict"
    got = await join(b, f"{room}/Bob", ok)
    assert got[-1].tag == C + "message"
    # full room: service-unavailable
    c = await login(rookery_server)
    assert await join_error(c, f"{room}/Carol", ok) == "service-unavailable"
    await a.close()
    await b.close()
    await c.close()


async def test_room_creation_policy_and_limit(rookery_server_factory):
    s = rookery_server_factory(muc={"room_creation": "admins", "max_rooms_per_user": 1},
                               admins=["boss@localhost"])
    s.make_user("boss", "pw")
    u = await login(s)
    assert await join_error(u, f"newroom@{CONF}/me") == "not-allowed"
    boss = await login(s, name="boss@localhost", pw="pw")
    await create(boss, f"r1@{CONF}", "boss")
    await create(boss, f"r2@{CONF}", "boss")  # admins are not limited
    await u.close()
    await boss.close()
    # another subdomain
    s2 = rookery_server_factory(muc={"room_creation": "local", "max_rooms_per_user": 1, "subdomain": "chat"})
    v = await login(s2)
    r = await iq(v, "localhost", "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    items = [i.get("jid") for i in r.iter(f"{{{DISCO_ITEMS}}}item")]
    assert "chat.localhost" in items and "conference.localhost" not in items
    await create(v, "r1@chat.localhost", "v")
    assert await join_error(v, "r2@chat.localhost/v") == "policy-violation"
    await v.close()


async def test_nick_change_history_subject(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice", changesubject="0")
    for i in range(5):
        await groupchat(a, room, f"m{i}")
        await got_body(a, f"m{i}")
    a.send(f"<message to='{room}' type='groupchat'><subject>Topic!</subject></message>")
    subj = await a.recv_until(lambda e: e.findtext(C + "subject") == "Topic!")
    assert subj.get("from") == f"{room}/Alice"
    got = await join(b, f"{room}/Bob", f"<x xmlns='{MUC}'><history maxstanzas='3'/></x>")
    bodies = [e.findtext(C + "body") for e in got if e.findtext(C + "body")]
    assert bodies == ["m2", "m3", "m4"]
    hist = [e for e in got if e.findtext(C + "body")][0]
    assert hist.find("{urn:xmpp:delay}delay").get("from") == room
    assert got[-1].findtext(C + "subject") == "Topic!"
    # participants may not change the subject here
    b.send(f"<message to='{room}' type='groupchat' id='s1'><subject>Mine</subject></message>")
    err = await b.recv_until(lambda e: e.get("id") == "s1")
    assert error_condition(err) == "forbidden"
    # history options: maxchars=0, seconds
    c = await login(rookery_server)
    got = await join(c, f"{room}/Carol", f"<x xmlns='{MUC}'><history maxchars='0'/></x>")
    assert not [e for e in got if e.findtext(C + "body")]
    await c.close()
    d = await login(rookery_server)
    got = await join(d, f"{room}/Dave", f"<x xmlns='{MUC}'><history since='2999-01-01T00:00:00Z'/></x>")
    assert not [e for e in got if e.findtext(C + "body")]
    await d.close()
    await quiet(a, b)
    # nick change: 303 then the new presence; conflict with an existing nick
    b.send(f"<presence to='{room}/alice'/>")
    err = await b.recv_until(lambda e: e.get("type") == "error")
    assert error_condition(err) == "conflict"
    b.send(f"<presence to='{room}/Robert'/>")
    un = await a.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert un.get("type") == "unavailable" and "303" in codes(un) and item(un).get("nick") == "Robert"
    new = await a.recv_until(lambda e: e.get("from") == f"{room}/Robert")
    assert new.get("type") is None
    mine = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert {"110", "303"} <= codes(mine)
    await a.close()
    await b.close()


async def test_private_messages_and_multisession(rookery_server):
    a = await login(rookery_server)
    jid, pw = rookery_server.make_user()
    b1 = await login(rookery_server, "one", jid, pw)
    b2 = await login(rookery_server, "two", jid, pw)
    room = room_jid()
    await create(a, room, "Alice")
    await join(b1, f"{room}/Bob")
    got = await join(b2, f"{room}/Bob")
    assert is_self([e for e in got if e.tag == C + "presence"][-1], f"{room}/Bob")
    await quiet(a, b1, b2)
    a.send(f"<message to='{room}/Bob' type='chat' id='pm1'><body>psst</body></message>")
    for c in (b1, b2):
        m = await got_body(c, "psst")
        assert m.get("from") == f"{room}/Alice" and m.find(f"{{{USER}}}x") is not None
    # PM to nobody: item-not-found; groupchat to an occupant: bad-request
    a.send(f"<message to='{room}/Nobody' type='chat' id='pm2'><body>x</body></message>")
    assert error_condition(await a.recv_until(lambda e: e.get("id") == "pm2")) == "item-not-found"
    # a non-occupant: not-acceptable
    c = await login(rookery_server)
    c.send(f"<message to='{room}/Alice' type='chat' id='pm3'><body>x</body></message>")
    assert error_condition(await c.recv_until(lambda e: e.get("id") == "pm3")) == "not-acceptable"
    c.send(f"<message to='{room}' type='groupchat' id='gc3'><body>x</body></message>")
    assert error_condition(await c.recv_until(lambda e: e.get("id") == "gc3")) == "not-acceptable"
    # PMs off
    await configure(a, room, allowpm="none")
    await quiet(a, b1, b2)
    b1.send(f"<message to='{room}/Alice' type='chat' id='pm4'><body>x</body></message>")
    assert error_condition(await b1.recv_until(lambda e: e.get("id") == "pm4")) == "forbidden"
    # one session leaves: the nick stays
    b1.send(f"<presence to='{room}/Bob' type='unavailable'/>")
    await b1.recv_until(lambda e: e.get("from") == f"{room}/Bob" and e.get("type") == "unavailable")
    await groupchat(a, room, "still here?")
    await got_body(b2, "still here?")
    # the other session's end (disconnect) makes Bob leave
    await b2.close()
    gone = await a.recv_until(lambda e: e.get("from") == f"{room}/Bob" and e.get("type") == "unavailable")
    assert gone is not None
    await a.close()
    await b1.close()
    await c.close()


async def test_self_ping_and_occupant_ids(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice")
    await join(b, f"{room}/Bob")
    r = await iq(b, f"{room}/Bob", "get", "<ping xmlns='urn:xmpp:ping'/>")
    assert r.get("type") == "result"
    c = await login(rookery_server)
    r = await iq(c, f"{room}/Bob", "get", "<ping xmlns='urn:xmpp:ping'/>")
    assert error_condition(r) == "not-acceptable"
    r = await iq(c, f"{room}/Bob", "get", "<vCard xmlns='vcard-temp'/>")
    assert error_condition(r) == "not-acceptable"
    await c.close()
    # an occupant's vCard: relayed from the occupant's account, answered from the occupant JID
    b.send("<iq type='set' id='vc1'><vCard xmlns='vcard-temp'><FN>Bob B.</FN></vCard></iq>")
    await b.recv_until(lambda e: e.get("id") == "vc1")
    r = await iq(a, f"{room}/Bob", "get", "<vCard xmlns='vcard-temp'/>")
    assert r.get("type") == "result" and r.get("from") == f"{room}/Bob"
    assert r.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Bob B."
    r = await iq(a, f"{room}/Nobody", "get", "<vCard xmlns='vcard-temp'/>")
    assert error_condition(r) == "item-not-found"
    # any other iq to an occupant (§7.8): relayed to its session from the asker's occupant JID, and back
    await quiet(a, b)
    a.send(f"<iq type='get' id='ver1' to='{room}/Bob'><query xmlns='jabber:iq:version'/></iq>")
    fwd = await b.recv_until(lambda e: e.tag == C + "iq" and e.get("type") == "get")
    assert fwd.get("from") == f"{room}/Alice" and fwd.get("id") != "ver1"
    assert fwd.find("{jabber:iq:version}query") is not None
    b.send(f"<iq type='result' id='{fwd.get('id')}' to='{room}/Alice'><query xmlns='jabber:iq:version'>"
           f"<name>raw</name></query></iq>")
    r = await a.recv_until(lambda e: e.get("id") == "ver1")
    assert r.get("type") == "result" and r.get("from") == f"{room}/Bob"
    assert r.findtext("{jabber:iq:version}query/{jabber:iq:version}name") == "raw"
    r = await iq(a, f"{room}/Nobody", "get", "<query xmlns='jabber:iq:version'/>")
    assert error_condition(r) == "item-not-found"
    # occupant id stable for one user across sessions, different between users
    await quiet(a, b)
    await groupchat(b, room, "id1")
    m1 = await got_body(a, "id1")
    await groupchat(a, room, "id2")
    m2 = await got_body(a, "id2")
    oid_b = m1.find(f"{{{OID}}}occupant-id").get("id")
    assert oid_b != m2.find(f"{{{OID}}}occupant-id").get("id")
    # a join from a session already in: the room state again (others, self-presence, subject)
    await quiet(a, b)
    got = await join(b, f"{room}/Bob")
    assert [e.get("from") for e in got if e.tag == C + "presence"][0] == f"{room}/Alice"
    assert any(is_self(e, f"{room}/Bob") for e in got)
    await quiet(a, b)
    # a forged occupant id is replaced
    b.send(f"<message to='{room}' type='groupchat'><body>forge</body><occupant-id xmlns='{OID}' id='fake'/></message>")
    m3 = await got_body(a, "forge")
    assert [o.get("id") for o in m3.findall(f"{{{OID}}}occupant-id")] == [oid_b]
    # broadcast unavailable presence (RFC 6121 §4.5.2: to directed-presence recipients too) leaves
    b.send("<presence type='unavailable'/>")
    gone = await a.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert gone.get("type") == "unavailable"
    # presence error from an occupant's JID removes it (status 333)
    c = await login(rookery_server)
    await join(c, f"{room}/Carol")
    await quiet(a)
    c.send(f"<presence to='{room}/Carol' type='error'><error type='cancel'>"
           "<remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>")
    gone = await a.recv_until(lambda e: e.get("from") == f"{room}/Carol")
    assert gone.get("type") == "unavailable" and "333" in codes(gone)
    await c.close()
    await a.close()
    await b.close()


# -- moderation -----------------------------------------------------------------------------------
async def admin_set(c: RawClient, room: str, items: str) -> Element:
    return await iq(c, room, "set", f"<query xmlns='{ADMIN}'>{items}</query>")


async def test_kick_ban_voice_and_lists(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    c = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice", moderatedroom="1")
    got = await join(b, f"{room}/Bob")
    assert item([e for e in got if is_self(e, f"{room}/Bob")][0]).get("role") == "visitor"
    await join(c, f"{room}/Carol")
    await quiet(a, b, c)
    # a visitor cannot speak
    b.send(f"<message to='{room}' type='groupchat' id='v1'><body>hi</body></message>")
    assert error_condition(await b.recv_until(lambda e: e.get("id") == "v1")) == "forbidden"
    # a visitor cannot moderate
    r = await admin_set(b, room, "<item nick='Carol' role='none'/>")
    assert error_condition(r) == "forbidden"
    # voice request: moderators get the approval form; approving grants voice
    b.send(f"<message to='{room}'><x xmlns='{XD}' type='submit'><field var='FORM_TYPE'>"
           f"<value>{MUC}#request</value></field><field var='muc#role'><value>participant</value></field></x></message>")
    req = await a.recv_until(lambda e: e.find(f"{{{XD}}}x") is not None)
    fields = {f.get("var"): f.findtext(f"{{{XD}}}value") for f in req.iter(f"{{{XD}}}field")}
    assert fields["muc#roomnick"] == "Bob" and fields["muc#jid"] == b.jid
    a.send(f"<message to='{room}'><x xmlns='{XD}' type='submit'><field var='FORM_TYPE'><value>{MUC}#request</value>"
           f"</field><field var='muc#roomnick'><value>Bob</value></field><field var='muc#request_allow'>"
           f"<value>true</value></field></x></message>")
    p = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob" and e.tag == C + "presence")
    assert item(p).get("role") == "participant"
    # revoke voice
    r = await admin_set(a, room, "<item nick='Bob' role='visitor'><reason>quiet</reason></item>")
    assert r.get("type") == "result"
    p = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob" and e.tag == C + "presence")
    assert item(p).get("role") == "visitor"
    # role list
    r = await iq(a, room, "get", f"<query xmlns='{ADMIN}'><item role='visitor'/></query>")
    assert sorted(i.get("nick") for i in r.iter(f"{{{ADMIN}}}item")) == ["Bob", "Carol"]
    # kick
    r = await admin_set(a, room, "<item nick='Carol' role='none'><reason>bye</reason></item>")
    assert r.get("type") == "result"
    k = await c.recv_until(lambda e: e.get("from") == f"{room}/Carol")
    assert k.get("type") == "unavailable" and {"110", "307"} <= codes(k)
    assert item(k).findtext(f"{{{USER}}}reason") == "bye"
    assert item(k).find(f"{{{USER}}}actor").get("nick") == "Alice"
    # ban, and the outcast list; banned users cannot join
    r = await admin_set(a, room, f"<item jid='{b.bare}' affiliation='outcast'><reason>spam</reason></item>")
    assert r.get("type") == "result"
    k = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert "301" in codes(k)
    assert await join_error(b, f"{room}/Bob") == "forbidden"
    r = await iq(a, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='outcast'/></query>")
    assert [i.get("jid") for i in r.iter(f"{{{ADMIN}}}item")] == [b.bare]
    # participants may not read affiliation lists
    await join(c, f"{room}/Carol")
    r = await iq(c, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='member'/></query>")
    assert error_condition(r) == "forbidden"
    # admin: cannot kick an owner (not-allowed), cannot grant owner (forbidden)
    r = await admin_set(a, room, f"<item jid='{c.bare}' affiliation='admin'/>")
    assert r.get("type") == "result"
    r = await admin_set(c, room, "<item nick='Alice' role='none'/>")
    assert error_condition(r) == "not-allowed"
    r = await admin_set(c, room, f"<item jid='{c.bare}' affiliation='owner'/>")
    assert error_condition(r) == "forbidden"
    # the last owner cannot leave the owner list
    r = await admin_set(a, room, f"<item jid='{a.bare}' affiliation='member'/>")
    assert error_condition(r) == "conflict"
    # unknown nick
    r = await admin_set(a, room, "<item nick='Ghost' role='none'/>")
    assert error_condition(r) == "item-not-found"
    await a.close()
    await b.close()
    await c.close()


async def test_members_only_registration_and_invitations(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    c = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice", membersonly="1")
    assert await join_error(b, f"{room}/Bob") == "registration-required"
    r = await iq(b, room, "set", f"<query xmlns='jabber:iq:register'><x xmlns='{XD}' type='submit'>"
                 f"<field var='muc#register_roomnick'><value>Bob</value></field></x></query>")
    assert error_condition(r) == "registration-required"
    # member list
    r = await admin_set(a, room, f"<item jid='{b.bare}' affiliation='member'/>")
    assert r.get("type") == "result"
    r = await iq(a, room, "get", f"<query xmlns='{ADMIN}'><item affiliation='member'/></query>")
    assert [i.get("jid") for i in r.iter(f"{{{ADMIN}}}item")] == [b.bare]
    # registration: a reserved nick
    r = await iq(b, room, "get", "<query xmlns='jabber:iq:register'/>")
    assert r.find(f".//{{{XD}}}field[@var='muc#register_roomnick']") is not None
    r = await iq(b, room, "set", f"<query xmlns='jabber:iq:register'><x xmlns='{XD}' type='submit'>"
                 f"<field var='FORM_TYPE'><value>{MUC}#register</value></field>"
                 f"<field var='muc#register_roomnick'><value>Bobby</value></field></x></query>")
    assert r.get("type") == "result"
    r = await iq(b, room, "get", "<query xmlns='jabber:iq:register'/>")
    assert r.findtext(".//{jabber:iq:register}username") == "Bobby"
    await join(b, f"{room}/Bob")
    # mediated invitation: the invitee becomes a member (owner invites to a members-only room)
    await quiet(a, b)
    a.send(f"<message to='{room}'><x xmlns='{USER}'><invite to='{c.bare}'><reason>come</reason></invite></x></message>")
    inv = await c.recv_until(lambda e: e.find(f"{{{USER}}}x/{{{USER}}}invite") is not None)
    assert inv.get("from") == room
    assert inv.find(f"{{{USER}}}x/{{{USER}}}invite").get("from") == a.jid
    assert inv.findtext(f"{{{USER}}}x/{{{USER}}}invite/{{{USER}}}reason") == "come"
    # the reserved nick is not for Carol
    assert await join_error(c, f"{room}/bobby") == "conflict"
    got = await join(c, f"{room}/Carol")
    assert got[-1].tag == C + "message"
    # a member may not invite when invitations are off
    b.send(f"<message to='{room}' id='inv2'><x xmlns='{USER}'><invite to='nobody@localhost'/></x></message>")
    assert error_condition(await b.recv_until(lambda e: e.get("id") == "inv2")) == "forbidden"
    # decline goes back to the inviter
    c.send(f"<message to='{room}'><x xmlns='{USER}'><decline to='{a.jid}'><reason>busy</reason></decline></x></message>")
    d = await a.recv_until(lambda e: e.find(f"{{{USER}}}x/{{{USER}}}decline") is not None)
    assert d.find(f"{{{USER}}}x/{{{USER}}}decline").get("from") == c.bare
    # XEP-0249 direct invitation: user to user, passed through
    a.send(f"<message to='{c.jid}'><x xmlns='jabber:x:conference' jid='{room}' reason='hey'/></message>")
    dm = await c.recv_until(lambda e: e.find("{jabber:x:conference}x") is not None and e.get("from") == a.jid)
    assert dm.find("{jabber:x:conference}x").get("jid") == room
    # removal from the member list removes the occupant (321)
    await quiet(a, b, c)
    r = await admin_set(a, room, f"<item jid='{b.bare}' affiliation='none'/>")
    assert r.get("type") == "result"
    k = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob")
    assert "321" in codes(k)
    await a.close()
    await b.close()
    await c.close()


async def test_destroy_with_venue_and_reason(rookery_server):
    a = await login(rookery_server)
    b = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice")
    await join(b, f"{room}/Bob")
    r = await iq(b, room, "set", f"<query xmlns='{OWNER}'><destroy/></query>")
    assert error_condition(r) == "forbidden"
    r = await iq(b, room, "get", f"<query xmlns='{OWNER}'/>")
    assert error_condition(r) == "forbidden"
    r = await iq(a, room, "set", f"<query xmlns='{OWNER}'><destroy jid='other@{CONF}'><reason>moved</reason>"
                 f"</destroy></query>")
    assert r.get("type") == "result"
    p = await b.recv_until(lambda e: e.get("from") == f"{room}/Bob" and e.get("type") == "unavailable")
    d = p.find(f"{{{USER}}}x/{{{USER}}}destroy")
    assert d.get("jid") == f"other@{CONF}" and d.findtext(f"{{{USER}}}reason") == "moved"
    r = await iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert error_condition(r) == "item-not-found"
    # a bad config value: not-acceptable
    room2 = room_jid()
    await join(a, f"{room2}/a")
    r = await configure(a, room2, maxusers="lots")
    assert error_condition(r) == "not-acceptable"
    # cancelling the initial configuration destroys the locked room
    r = await iq(a, room2, "set", f"<query xmlns='{OWNER}'><x xmlns='{XD}' type='cancel'/></query>")
    assert r.get("type") == "result"
    r = await iq(a, room2, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert error_condition(r) == "item-not-found"
    await a.close()
    await b.close()


async def test_disco_and_room_archive(rookery_server):
    a = await login(rookery_server)
    room = room_jid()
    await create(a, room, "Alice", roomname="Public Lounge", roomdesc="for all")
    r = await iq(a, "localhost", "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    assert CONF in [i.get("jid") for i in r.iter(f"{{{DISCO_ITEMS}}}item")]
    r = await iq(a, CONF, "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert r.find(f".//{{{DISCO_INFO}}}identity").get("category") == "conference"
    assert MUC in {f.get("var") for f in r.iter(f"{{{DISCO_INFO}}}feature")}
    r = await iq(a, CONF, "get", f"<unique xmlns='{MUC}#unique'/>")
    assert len(r.findtext(f"{{{MUC}#unique}}unique") or "") >= 8
    r = await iq(a, CONF, "get", f"<query xmlns='{DISCO_ITEMS}'/>")
    names = {i.get("jid"): i.get("name") for i in r.iter(f"{{{DISCO_ITEMS}}}item")}
    assert names[room] == "Public Lounge (1)"
    r = await iq(a, room, "get", f"<query xmlns='{DISCO_INFO}'/>")
    feats = {f.get("var") for f in r.iter(f"{{{DISCO_INFO}}}feature")}
    assert {MUC, "muc_public", "muc_temporary", "muc_open", "muc_unmoderated", "muc_semianonymous",
            "muc_unsecured", MAM, OID} <= feats
    info = {f.get("var"): f.findtext(f"{{{XD}}}value") for f in r.iter(f"{{{XD}}}field")}
    assert info["muc#roominfo_occupants"] == "1" and info["muc#roominfo_description"] == "for all"
    r = await iq(a, f"nope@{CONF}", "get", f"<query xmlns='{DISCO_INFO}'/>")
    assert error_condition(r) == "item-not-found"
    # archive
    sids = []
    for i in range(3):
        await groupchat(a, room, f"arch{i}")
        m = await got_body(a, f"arch{i}")
        sids.append(m.find(f"{{{SID}}}stanza-id").get("id"))
    a.send(f"<iq type='set' to='{room}' id='mq'><query xmlns='{MAM}' queryid='q1'>"
           f"<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set></query></iq>")
    got = await a.collect_until(lambda g: bool(g) and g[-1].get("id") == "mq")
    res = [e for e in got if e.find(f"{{{MAM}}}result") is not None]
    assert [e.find(f"{{{MAM}}}result").get("id") for e in res] == sids[:2]
    assert all(e.get("from") == room for e in res)
    fwd = res[0].find(f"{{{MAM}}}result/{{urn:xmpp:forward:0}}forwarded/{C}message")
    assert fwd.get("from") == f"{room}/Alice" and fwd.findtext(C + "body") == "arch0"
    assert got[-1].find(f"{{{MAM}}}fin").get("complete") is None
    last = got[-1].findtext(".//{http://jabber.org/protocol/rsm}last")
    a.send(f"<iq type='set' to='{room}' id='mq2'><query xmlns='{MAM}'>"
           f"<set xmlns='http://jabber.org/protocol/rsm'><after>{last}</after></set></query></iq>")
    got = await a.collect_until(lambda g: bool(g) and g[-1].get("id") == "mq2")
    res = [e for e in got if e.find(f"{{{MAM}}}result") is not None]
    assert [e.find(f"{{{MAM}}}result").get("id") for e in res] == sids[2:]
    assert got[-1].find(f"{{{MAM}}}fin").get("complete") == "true"
    # a members-only room's archive is closed to outsiders
    await configure(a, room, membersonly="1")
    b = await login(rookery_server)
    r = await iq(b, room, "set", f"<query xmlns='{MAM}'/>")
    assert error_condition(r) == "forbidden"
    # a temporary room goes with its last occupant, and its archive with it: a new room of that name
    # starts empty
    a.send(f"<presence to='{room}/Alice' type='unavailable'/>")
    await a.recv_until(lambda e: e.get("from") == f"{room}/Alice" and e.get("type") == "unavailable")
    await create(a, room, "Alice")
    a.send(f"<iq type='set' to='{room}' id='mq3'><query xmlns='{MAM}'/></iq>")
    got = await a.collect_until(lambda g: bool(g) and g[-1].get("id") == "mq3")
    assert [e for e in got if e.find(f"{{{MAM}}}result") is not None] == []
    await a.close()
    await b.close()


async def test_persistent_room_survives_restart():
    d = Path(tempfile.mkdtemp(prefix="rookery-muc-"))
    try:
        s = RunningServer({}, d).start()
        jid, pw = s.make_user("keeper", "pw")
        jid2, pw2 = s.make_user("member", "pw")
        a = await login(s, name=jid, pw=pw)
        await create(a, f"kept@{CONF}", "Keeper", persistentroom="1", roomname="Kept", membersonly="1")
        r = await admin_set(a, f"kept@{CONF}", f"<item jid='{jid2}' affiliation='member'/>")
        assert r.get("type") == "result"
        a.send(f"<message to='kept@{CONF}' type='groupchat'><subject>Saved</subject></message>")
        await a.recv_until(lambda e: e.findtext(C + "subject") == "Saved")
        await groupchat(a, f"kept@{CONF}", "before restart")
        await got_body(a, "before restart")
        await a.close()
        await asyncio.sleep(0.2)
        s.stop()
        s = RunningServer({}, d).start()
        b = await login(s, name=jid2, pw=pw2)
        r = await iq(b, f"kept@{CONF}", "get", f"<query xmlns='{DISCO_INFO}'/>")
        assert r.find(f".//{{{DISCO_INFO}}}identity").get("name") == "Kept"
        got = await join(b, f"kept@{CONF}/Member")
        assert got[-1].findtext(C + "subject") == "Saved"
        assert [e.findtext(C + "body") for e in got if e.findtext(C + "body")] == ["before restart"]
        r = await iq(b, f"kept@{CONF}", "set", f"<query xmlns='{MAM}'/>")
        assert r.get("type") == "result"
        c = await login(s)
        assert await join_error(c, f"kept@{CONF}/x") == "registration-required"
        await b.close()
        await c.close()
        s.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_slixmpp_xep_0045_end_to_end(rookery_server):
    ja, pa = rookery_server.make_user()
    jb, pb = rookery_server.make_user()
    a = await slix_client(rookery_server, ja, pa, plugins=("xep_0030", "xep_0045", "xep_0004"))
    b = await slix_client(rookery_server, jb, pb, plugins=("xep_0030", "xep_0045", "xep_0004"))
    room = room_jid()
    try:
        await a.plugin["xep_0045"].join_muc_wait(room, "alice", maxstanzas=0, timeout=10)
        cfg = await a.plugin["xep_0045"].get_room_config(room)
        cfg["type"] = "submit"
        cfg.field["muc#roomconfig_roomname"]["value"] = "Slix"
        await a.plugin["xep_0045"].set_room_config(room, cfg)
        await b.plugin["xep_0045"].join_muc_wait(room, "bob", maxstanzas=0, timeout=10)
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        a.add_event_handler("groupchat_message",
                            lambda m: m["body"] == "via slix" and not got.done() and got.set_result(m))
        b.send_message(mto=room, mbody="via slix", mtype="groupchat")
        msg = await asyncio.wait_for(got, 5)
        assert str(msg["from"]) == f"{room}/bob"
        await a.plugin["xep_0045"].set_role(room, "bob", "visitor")
        await a.plugin["xep_0045"].set_affiliation(room, jid=jb, affiliation="outcast")
        await a.plugin["xep_0045"].destroy(room, reason="done")
    finally:
        await disconnect(a, b)
