"""XEP-0313 Message Archive Management against a real server: archiving both directions with XEP-0359
stanza ids, queries (with/start/end, before-id/after-id/ids, XEP-0059 paging both ways, flip-page),
metadata, XEP-0441 preferences, the errors for bad queries and other users' archives; slixmpp's
xep_0313 as a real client."""

from __future__ import annotations

import asyncio
import logging
import time
from xml.etree.ElementTree import Element

import pytest
from xmpp_helpers import RawClient, disconnect, error_condition, one_and_two_workers, slix_client

from rookery.modules.time import format_datetime

rookery_server = one_and_two_workers("rookery-mam-")


MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FWD = "urn:xmpp:forward:0"
C = "{jabber:client}"


async def _login(server, name=None, resource="raw", presence=True):
    jid, pw = server.make_user(name)
    c = await RawClient().login(server.c2s_port, jid, pw, resource=resource)
    if presence:
        c.send("<presence/>")
    c.bare = jid  # type: ignore[attr-defined]
    c.pw = pw  # type: ignore[attr-defined]
    return c


async def _drain(*clients: RawClient, timeout: float = 0.2) -> None:
    for c in clients:
        try:
            while True:
                await c.recv(timeout)
        except (TimeoutError, ConnectionError):
            pass


def _form(**fields) -> str:
    out = ["<x xmlns='jabber:x:data' type='submit'>",
           f"<field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"]
    for k, v in fields.items():
        k = k.rstrip("_").replace("_", "-")
        vals = v if isinstance(v, list) else [v]
        out.append(f"<field var='{k}'>" + "".join(f"<value>{x}</value>" for x in vals) + "</field>")
    out.append("</x>")
    return "".join(out)


_qn = 0


async def _query(c: RawClient, form: str = "", rsm: str = "", extra: str = "", to: str = ""):
    """Run a query; return (result messages, the iq reply)."""
    global _qn
    _qn += 1
    qid = f"q{_qn}"
    iid = f"mamq{_qn}"
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='set' id='{iid}'{to_attr}><query xmlns='{MAM}' queryid='{qid}'>{form}{rsm}{extra}</query></iq>")
    got = await c.collect_until(lambda g: bool(g) and g[-1].tag == C + "iq" and g[-1].get("id") == iid, timeout=5)
    results = [e for e in got if e.tag == C + "message" and e.find(f"{{{MAM}}}result") is not None]
    for r in results:
        assert r.find(f"{{{MAM}}}result").get("queryid") == qid
    return results, got[-1]


def _body(result_msg: Element) -> str:
    fwd = result_msg.find(f"{{{MAM}}}result/{{{FWD}}}forwarded")
    assert fwd is not None and fwd.find("{urn:xmpp:delay}delay") is not None
    return fwd.find(f"{C}message/{C}body").text  # type: ignore[union-attr]


def _ids(results) -> list[str]:
    return [r.find(f"{{{MAM}}}result").get("id") for r in results]


def _fin(iq: Element) -> Element:
    assert iq.get("type") == "result", (iq.attrib, error_condition(iq))
    fin = iq.find(f"{{{MAM}}}fin")
    assert fin is not None
    return fin


async def _chat(sender: RawClient, to: str, body: str, recv: RawClient | None = None, extra: str = "") -> Element | None:
    mid = f"m-{body}"
    sender.send(f"<message to='{to}' type='chat' id='{mid}'><body>{body}</body>{extra}</message>")
    if recv is not None:
        return await recv.recv_until(lambda e: e.tag == C + "message" and e.get("id") == mid)
    return None


async def test_both_directions_archived_with_stanza_id_equal_to_archive_id(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    got = await _chat(a, b.bare, "hello", recv=b, extra=f"<origin-id xmlns='{SID}' id='orig-1'/>")
    sids = got.findall(f"{{{SID}}}stanza-id")
    assert len(sids) == 1 and sids[0].get("by") == b.bare
    assert got.find(f"{{{SID}}}origin-id").get("id") == "orig-1"  # client ids kept
    sid = sids[0].get("id")
    await _chat(b, a.bare, "hi back", recv=a)

    results, iq = await _query(b)
    assert [_body(r) for r in results] == ["hello", "hi back"]
    assert _ids(results)[0] == sid
    stored = results[0].find(f"{{{MAM}}}result/{{{FWD}}}forwarded/{C}message")
    assert stored.find(f"{{{SID}}}stanza-id").get("id") == sid  # stored as delivered
    assert stored.get("from").startswith(a.bare)
    fin = _fin(iq)
    assert fin.get("complete") == "true"
    assert fin.find(f"{{{RSM}}}set/{{{RSM}}}count").text == "2"
    assert fin.find(f"{{{RSM}}}set/{{{RSM}}}first").text == sid

    results, _ = await _query(a)
    assert [_body(r) for r in results] == ["hello", "hi back"]
    # the sender's copy carries no stanza-id of the recipient's archive
    sent = results[0].find(f"{{{MAM}}}result/{{{FWD}}}forwarded/{C}message")
    assert sent.find(f"{{{SID}}}stanza-id") is None
    await a.close()
    await b.close()


async def test_forged_stanza_id_is_removed_and_others_kept(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    got = await _chat(a, b.bare, "forged", recv=b,
                      extra=f"<stanza-id xmlns='{SID}' by='{b.bare}' id='fake'/>"
                            f"<stanza-id xmlns='{SID}' by='room@elsewhere.example' id='keep'/>")
    sids = {s.get("by"): s.get("id") for s in got.findall(f"{{{SID}}}stanza-id")}
    assert sids["room@elsewhere.example"] == "keep"
    assert sids[b.bare] != "fake"
    assert len(got.findall(f"{{{SID}}}stanza-id")) == 2
    await a.close()
    await b.close()


async def test_paging_forward_and_backward_with_complete_flags(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    for i in range(7):
        await _chat(a, b.bare, f"n{i}", recv=b)
    # forward, pages of 3
    seen, after, pages = [], None, 0
    while True:
        rsm = f"<set xmlns='{RSM}'><max>3</max>" + (f"<after>{after}</after>" if after else "") + "</set>"
        results, iq = await _query(b, rsm=rsm)
        fin = _fin(iq)
        seen += [_body(r) for r in results]
        pages += 1
        if fin.get("complete") == "true":
            break
        assert fin.get("complete") in (None, "false")
        after = fin.find(f"{{{RSM}}}set/{{{RSM}}}last").text
    assert seen == [f"n{i}" for i in range(7)] and pages == 3
    # backward from the last page
    seen, before, pages = [], "", 0
    while True:
        rsm = f"<set xmlns='{RSM}'><max>3</max><before>{before}</before></set>"
        results, iq = await _query(b, rsm=rsm)
        fin = _fin(iq)
        seen = [_body(r) for r in results] + seen
        pages += 1
        if fin.get("complete") == "true":
            break
        before = fin.find(f"{{{RSM}}}set/{{{RSM}}}first").text
    assert seen == [f"n{i}" for i in range(7)] and pages == 3
    # the last page is in chronological order; flip-page reverses it
    results, _ = await _query(b, rsm=f"<set xmlns='{RSM}'><max>2</max><before/></set>")
    assert [_body(r) for r in results] == ["n5", "n6"]
    results, _ = await _query(b, rsm=f"<set xmlns='{RSM}'><max>2</max><before/></set>", extra="<flip-page/>")
    assert [_body(r) for r in results] == ["n6", "n5"]
    await a.close()
    await b.close()


async def test_with_start_end_and_id_filters(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    c = await _login(rookery_server)
    await _drain(a, b, c)
    await _chat(a, b.bare, "from-a-1", recv=b)
    await _chat(c, b.bare, "from-c-1", recv=b)
    await asyncio.sleep(1.1)
    middle = time.time()
    await asyncio.sleep(0.05)
    await _chat(a, b.bare, "from-a-2", recv=b)
    await _chat(b, c.bare, "to-c", recv=c)

    results, _ = await _query(b, _form(with_=a.bare))
    assert [_body(r) for r in results] == ["from-a-1", "from-a-2"]
    results, _ = await _query(b, _form(with_=c.bare))
    assert [_body(r) for r in results] == ["from-c-1", "to-c"]
    # a full JID matches only that resource (the message to c went to the bare JID)
    results, _ = await _query(b, _form(with_=c.bare + "/raw"))
    assert [_body(r) for r in results] == ["from-c-1"]
    results, _ = await _query(b, _form(start=format_datetime(middle, fraction=True)))
    assert [_body(r) for r in results] == ["from-a-2", "to-c"]
    results, _ = await _query(b, _form(end=format_datetime(middle, fraction=True)))
    assert [_body(r) for r in results] == ["from-a-1", "from-c-1"]
    results, _ = await _query(b, _form(start="2000-01-01T00:00:00Z", end="2000-01-02T00:00:00+01:00"))
    assert results == []

    everything, _ = await _query(b)
    ids = _ids(everything)
    results, _ = await _query(b, _form(after_id=ids[0], before_id=ids[3]))
    assert [_body(r) for r in results] == ["from-c-1", "from-a-2"]
    results, iq = await _query(b, _form(ids=[ids[2], ids[0]]))
    assert [_body(r) for r in results] == ["from-a-1", "from-a-2"]
    assert _fin(iq).get("complete") == "true"
    # RSM after combined with a filter
    results, _ = await _query(b, _form(with_=a.bare), rsm=f"<set xmlns='{RSM}'><after>{ids[0]}</after></set>")
    assert [_body(r) for r in results] == ["from-a-2"]
    for cl in (a, b, c):
        await cl.close()


async def test_metadata_and_form_discovery(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    r = await b.iq(f"<iq type='get' id='md0'><metadata xmlns='{MAM}'/></iq>")
    md = r.find(f"{{{MAM}}}metadata")
    assert r.get("type") == "result" and md is not None and len(md) == 0
    for i in range(3):
        await _chat(a, b.bare, f"md{i}", recv=b)
    ids = _ids((await _query(b))[0])
    r = await b.iq(f"<iq type='get' id='md1'><metadata xmlns='{MAM}'/></iq>")
    md = r.find(f"{{{MAM}}}metadata")
    assert md.find(f"{{{MAM}}}start").get("id") == ids[0]
    assert md.find(f"{{{MAM}}}end").get("id") == ids[-1]
    assert md.find(f"{{{MAM}}}end").get("timestamp").endswith("Z")

    r = await b.iq(f"<iq type='get' id='form1'><query xmlns='{MAM}'/></iq>")
    fields = {f.get("var"): f.get("type") for f in r.iter("{jabber:x:data}field")}
    assert fields["with"] == "jid-single" and fields["start"] == "text-single"
    assert {"end", "before-id", "after-id", "ids", "FORM_TYPE"} <= set(fields)
    assert not any(f.find("{jabber:x:data}required") is not None for f in r.iter("{jabber:x:data}field"))
    await a.close()
    await b.close()


async def test_another_users_archive_is_forbidden(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    _, iq = await _query(a, to=b.bare)
    assert iq.get("type") == "error" and error_condition(iq) == "forbidden"
    for payload in (f"<prefs xmlns='{MAM}'/>", f"<metadata xmlns='{MAM}'/>"):
        r = await a.iq(f"<iq type='get' id='x1' to='{b.bare}'>{payload}</iq>")
        assert error_condition(r) == "forbidden"
    await a.close()
    await b.close()


@pytest.mark.parametrize(("form", "rsm", "condition"), [
    (_form(start="yesterday"), "", "bad-request"),
    (_form(end="2020-01-01"), "", "bad-request"),
    (_form(with_="@bad@"), "", "bad-request"),
    ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>", "",
     "bad-request"),
    (_form(**{"{urn:example}unknown": "x"}), "", "feature-not-implemented"),
    ("", f"<set xmlns='{RSM}'><max>-1</max></set>", "bad-request"),
    ("", f"<set xmlns='{RSM}'><max>ten</max></set>", "bad-request"),
    ("", f"<set xmlns='{RSM}'><after>no-such-id</after></set>", "item-not-found"),
    ("", f"<set xmlns='{RSM}'><before>no-such-id</before></set>", "item-not-found"),
    (_form(after_id="no-such-id"), "", "item-not-found"),
    (_form(before_id="no-such-id"), "", "item-not-found"),
    (_form(ids=["no-such-id"]), "", "item-not-found"),
    ("<bogus xmlns='urn:example'/>", "", "bad-request"),
])
async def test_bad_queries_get_the_error_the_xep_names(rookery_server, form, rsm, condition):
    a = await _login(rookery_server)
    results, iq = await _query(a, form, rsm)
    assert results == []
    assert iq.get("type") == "error" and error_condition(iq) == condition
    # the session lives on
    r = await a.iq("<iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert r.get("type") == "result"
    await a.close()


async def test_preferences_never_and_roster(rookery_server):
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    c = await _login(rookery_server)
    await _drain(a, b, c)
    r = await b.iq(f"<iq type='get' id='p0'><prefs xmlns='{MAM}'/></iq>")
    p = r.find(f"{{{MAM}}}prefs")
    assert p.get("default") == "always" and p.find(f"{{{MAM}}}always") is not None
    r = await b.iq(f"<iq type='set' id='p1'><prefs xmlns='{MAM}' default='always'><always/>"
                   f"<never><jid>{a.bare}</jid></never></prefs></iq>")
    assert r.get("type") == "result"
    assert r.find(f"{{{MAM}}}prefs/{{{MAM}}}never/{{{MAM}}}jid").text == a.bare
    got = await _chat(a, b.bare, "not-kept", recv=b)
    assert got.find(f"{{{SID}}}stanza-id") is None  # not archived: no archive id
    await _chat(c, b.bare, "kept", recv=b)
    await _chat(b, a.bare, "not-kept-out", recv=a)
    results, _ = await _query(b)
    assert [_body(r) for r in results] == ["kept"]

    # default roster: c is in b's roster, a is not
    b.send(f"<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='{c.bare}'/></query></iq>")
    await b.recv_until(lambda e: e.get("id") == "r1")
    r = await b.iq(f"<iq type='set' id='p2'><prefs xmlns='{MAM}' default='roster'/></iq>")
    assert r.find(f"{{{MAM}}}prefs").get("default") == "roster"
    await _chat(a, b.bare, "stranger", recv=b)
    await _chat(c, b.bare, "friend", recv=b)
    results, _ = await _query(b)
    assert [_body(r) for r in results] == ["kept", "friend"]
    # never archive anything
    r = await b.iq(f"<iq type='set' id='p3'><prefs xmlns='{MAM}' default='never'/></iq>")
    await _chat(c, b.bare, "nothing", recv=b)
    assert [_body(r) for r in (await _query(b))[0]] == ["kept", "friend"]
    bad = await b.iq(f"<iq type='set' id='p4'><prefs xmlns='{MAM}' default='sometimes'/></iq>")
    assert error_condition(bad) == "bad-request"
    for cl in (a, b, c):
        await cl.close()


async def test_offline_messages_archived_and_chat_states_not(rookery_server):
    a = await _login(rookery_server)
    jid, pw = rookery_server.make_user()
    await _drain(a)
    a.send(f"<message to='{jid}' type='chat' id='off1'><body>while away</body></message>")
    a.send(f"<message to='{jid}' type='chat' id='cs1'>"
           f"<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await asyncio.sleep(0.3)
    b = await RawClient().login(rookery_server.c2s_port, jid, pw)
    b.send("<presence/>")
    got = await b.recv_until(lambda e: e.tag == C + "message" and e.get("id") == "off1")
    sid = got.find(f"{{{SID}}}stanza-id")
    assert sid is not None and sid.get("by") == jid
    await _chat(a, jid, "online", recv=b)
    b.send(f"<message to='{a.bare}' type='chat' id='cs2'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    results, _ = await _query(b)
    assert [_body(r) for r in results] == ["while away", "online"]
    assert _ids(results)[0] == sid.get("id")
    assert [_body(r) for r in (await _query(a))[0]] == ["while away", "online"]
    await a.close()
    await b.close()


async def test_query_flushes_pending_writes_at_once(rookery_server):
    """A message answered by the recipient then queried at once: the query sees it (no sleep)."""
    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    for i in range(20):
        a.send(f"<message to='{b.bare}' type='chat' id='burst{i}'><body>burst{i}</body></message>")
    results, _ = await _query(a)
    assert [_body(r) for r in results] == [f"burst{i}" for i in range(20)]
    await a.close()
    await b.close()


async def test_disco_advertises_mam_on_the_account(rookery_server):
    a = await _login(rookery_server)
    r = await a.iq(f"<iq type='get' id='d1' to='{a.bare}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    features = {f.get("var") for f in r.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {MAM, MAM + "#extended", SID} <= features
    await a.close()


async def test_slixmpp_mam_client_retrieves_history(rookery_server):
    ja, pa = rookery_server.make_user()
    jb, pb = rookery_server.make_user()
    a = await slix_client(rookery_server, ja, pa)
    b = await slix_client(rookery_server, jb, pb, plugins=("xep_0313", "xep_0359"))
    got = asyncio.get_running_loop().create_future()
    b.add_event_handler("message", lambda m: got.done() or got.set_result(m))
    for i in range(5):
        a.send_message(mto=jb, mbody=f"slix{i}", mtype="chat")
    msg = await asyncio.wait_for(got, 5)
    assert msg["stanza_id"]["by"] == jb and msg["stanza_id"]["id"]
    await asyncio.sleep(0.2)
    bodies = []
    async for rsm_page in b.plugin["xep_0313"].iterate(jid=None, rsm={"max": 2}, total=10):
        bodies.append(rsm_page["mam_result"]["forwarded"]["stanza"]["body"])
    assert bodies == [f"slix{i}" for i in range(5)]
    await disconnect(a, b)


async def test_full_text_search_when_enabled(rookery_server_factory):
    server = rookery_server_factory(mam={"full_text": True})
    a = await _login(server)
    b = await _login(server)
    await _drain(a, b)
    for body in ("the quick brown fox", "a lazy dog", "Quick thinking"):
        await _chat(a, b.bare, body)
    await asyncio.sleep(0.3)
    field = "{urn:xmpp:fulltext:0}fulltext"
    r = await b.iq(f"<iq type='get' id='ff'><query xmlns='{MAM}'/></iq>")
    assert field in {f.get("var") for f in r.iter("{jabber:x:data}field")}
    results, iq = await _query(b, _form(**{field: "quick"}))
    assert [_body(r) for r in results] == ["the quick brown fox", "Quick thinking"]
    assert _fin(iq).get("complete") == "true"
    results, _ = await _query(b, _form(**{field: "quick fox"}))
    assert [_body(r) for r in results] == ["the quick brown fox"]
    results, _ = await _query(a, _form(**{field: "dog"}), rsm=f"<set xmlns='{RSM}'><max>5</max><before/></set>")
    assert [_body(r) for r in results] == ["a lazy dog"]
    await a.close()
    await b.close()


async def test_full_text_field_is_unknown_when_disabled(rookery_server):
    a = await _login(rookery_server)
    _, iq = await _query(a, _form(**{"{urn:xmpp:fulltext:0}fulltext": "x"}))
    assert error_condition(iq) == "feature-not-implemented"
    await a.close()


async def test_retention_removes_old_messages_periodically(rookery_server_factory):
    from rookery.storage.base import ArchiveItem

    server = rookery_server_factory(mam={"retention": 1, "cleanup_interval": 0.1})
    a = await _login(server)
    user = a.bare.split("@")[0]
    old = time.time() - 2 * 86400
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(server.server.storage.archive.append_many(
        "mam/messages", [(server.domain, user, ArchiveItem("old-1", old, "x@y", "<message><body>old</body></message>"))]),
        server.loop))
    b = await _login(server)
    await _drain(a, b)
    await _chat(b, a.bare, "recent", recv=a)
    deadline = time.time() + 5
    while True:
        results, _ = await _query(a)
        if [_body(r) for r in results] == ["recent"]:
            break
        assert time.time() < deadline, [_body(r) for r in results]
        await asyncio.sleep(0.1)
    await a.close()
    await b.close()


async def test_archive_quota_prunes_the_oldest_messages_of_that_user(rookery_server_factory, caplog):
    """``[mam] max_messages_per_user``: new messages are archived, the user's oldest go (logged)."""
    caplog.set_level(logging.INFO)
    server = rookery_server_factory(mam={"max_messages_per_user": 5})
    a = await _login(server)
    b = await _login(server)
    c = await _login(server)
    await _drain(a, b, c)
    for i in range(8):
        await _chat(a, b.bare, f"n{i}", recv=b)
    await _chat(c, a.bare, "other", recv=a)
    for _ in range(50):
        results, _fin = await _query(b)
        if [_body(r) for r in results] == [f"n{i}" for i in range(3, 8)]:
            break
        await asyncio.sleep(0.05)
    assert [_body(r) for r in results] == [f"n{i}" for i in range(3, 8)]
    # a's archive: 8 sent + 1 received, over 5 as well; c's (1 message) untouched
    results, _fin = await _query(a)
    assert [_body(r) for r in results] == ["n4", "n5", "n6", "n7", "other"]
    results, _fin = await _query(c)
    assert [_body(r) for r in results] == ["other"]
    # the next message pushes out exactly one more
    await _chat(b, a.bare, "reply", recv=a)
    results, _fin = await _query(b)
    assert [_body(r) for r in results] == ["n4", "n5", "n6", "n7", "reply"]
    assert any("quota: removed" in r.getMessage() for r in caplog.records)
    for x in (a, b, c):
        await x.close()


async def test_pending_archive_writes_survive_shutdown(rookery_server_factory, tmp_path):
    server = rookery_server_factory()
    a = await _login(server)
    b = await _login(server)
    await _drain(a, b)
    await _chat(a, b.bare, "last words", recv=b)
    user = b.bare.split("@")[0]
    server.call(server.server.stop)  # at once: module stop() flushes the pending batch
    await a.close()
    await b.close()
    storage = server.server.storage
    await storage.open()
    try:
        items = await storage.archive.query("mam/messages", server.domain, user)
        assert [i.value for i in items if "last words" in i.value]
    finally:
        await storage.close()


async def test_message_routed_again_by_the_server_keeps_its_id_and_is_archived_once(rookery_server):
    """A stanza the server routes a second time (e.g. re-routed from a dead stream) already carries
    its archive id: kept, not archived again; a forged one on a server-routed stanza is replaced."""
    if not hasattr(rookery_server.server, "router"):
        pytest.skip("routes a stanza inside the server: needs it in this process")
    from rookery.xml import serialize

    a = await _login(rookery_server)
    b = await _login(rookery_server)
    await _drain(a, b)
    got = await _chat(a, b.bare, "once", recv=b)
    sid = got.find(f"{{{SID}}}stanza-id").get("id")
    for child in list(got):
        if child.tag.startswith(C):
            child.tag = child.tag[len(C):]
    got.tag = "message"
    from xml.etree.ElementTree import fromstring

    again = fromstring(serialize(got))
    rookery_server.call(lambda: _route(rookery_server, again))
    again2 = await b.recv_until(lambda e: e.tag == C + "message" and e.get("id") == "m-once")
    assert again2.find(f"{{{SID}}}stanza-id").get("id") == sid
    forged = fromstring(f"<message from='{a.bare}/raw' to='{b.bare}' type='chat' id='m-forged'><body>forged</body>"
                        f"<stanza-id xmlns='{SID}' by='{b.bare}' id='{sid[:-2]}AA'/></message>")
    rookery_server.call(lambda: _route(rookery_server, forged))
    got = await b.recv_until(lambda e: e.tag == C + "message" and e.get("id") == "m-forged")
    new = got.findall(f"{{{SID}}}stanza-id")
    assert len(new) == 1 and new[0].get("id") not in (sid, sid[:-2] + "AA")
    results, _ = await _query(b)
    assert [_body(r) for r in results] == ["once", "forged"]
    assert _ids(results) == [sid, new[0].get("id")]
    await a.close()
    await b.close()


async def _route(server, el):
    r = server.server.router.send(el)
    if r is not None:
        await r
