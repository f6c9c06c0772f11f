"""RFC 6121 §8 delivery rules for message and iq to local bare and full JIDs, with resource priorities
(RFC 6121 §8.5, RFC 6120 §10.5), checked with raw clients."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from xmpp_helpers import RawClient, error_condition

from rookery.testing import ProcessServer, RunningServer


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-workers"])
def rookery_server(request) -> Iterator[RunningServer]:
    """Every rule holds with one process and with two workers (issue 12): with two, consecutive
    connections land on different workers, so the resources of one account are split between them."""
    d = tempfile.mkdtemp(prefix="rookery-delivery-")
    s = (RunningServer({}, Path(d)) if request.param == 1 else ProcessServer({"workers": 2}, Path(d))).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


async def _sessions(server, jid, pw, prios: dict[str, int]) -> dict[str, RawClient]:
    out = {}
    for res, prio in prios.items():
        c = await RawClient().login(server.c2s_port, jid, pw, resource=res)
        c.send(f"<presence><priority>{prio}</priority></presence>")
        out[res] = c
    # each session sees the others' presence; drain what is pending so later checks start clean
    for c in out.values():
        try:
            while True:
                await c.recv(0.3)
        except (TimeoutError, ConnectionError):
            pass
    return out


async def _close(*clients) -> None:
    for c in clients:
        await c.close()


def _is_msg(mid: str):
    return lambda e: e.tag.endswith("message") and e.get("id") == mid


async def _got(c: RawClient, mid: str, timeout: float = 1.0) -> bool:
    try:
        await c.recv_until(_is_msg(mid), timeout)
        return True
    except (TimeoutError, ConnectionError):
        return False


@pytest.mark.parametrize("mtype", ["chat", "normal"])
async def test_chat_and_normal_to_bare_jid_go_to_highest_priority_resources(rookery_server, mtype):
    jid, pw = rookery_server.make_user()
    s_jid, s_pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"low": 1, "high1": 5, "high2": 5, "neg": -1})
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='{jid}' type='{mtype}' id='m-{mtype}'><body>x</body></message>")
    assert await _got(res["high1"], f"m-{mtype}") and await _got(res["high2"], f"m-{mtype}")
    assert not await _got(res["low"], f"m-{mtype}", 0.3)
    assert not await _got(res["neg"], f"m-{mtype}", 0.3)
    await _close(sender, *res.values())


async def test_headline_to_bare_jid_goes_to_all_non_negative_resources(rookery_server):
    jid, pw = rookery_server.make_user()
    s_jid, s_pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"a": 0, "b": 3, "neg": -5})
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='{jid}' type='headline' id='hl'><body>news</body></message>")
    assert await _got(res["a"], "hl") and await _got(res["b"], "hl")
    assert not await _got(res["neg"], "hl", 0.3)
    await _close(sender, *res.values())


async def test_message_to_full_jid_goes_only_to_that_resource_even_with_negative_priority(rookery_server):
    jid, pw = rookery_server.make_user()
    s_jid, s_pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"main": 10, "neg": -1})
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='{jid}/neg' type='chat' id='direct'><body>x</body></message>")
    assert await _got(res["neg"], "direct")
    assert not await _got(res["main"], "direct", 0.3)
    await _close(sender, *res.values())


async def test_chat_to_offline_full_jid_falls_back_to_bare_jid_rules(rookery_server):
    jid, pw = rookery_server.make_user()
    s_jid, s_pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"here": 0})
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='{jid}/gone' type='chat' id='fb'><body>x</body></message>")
    el = await res["here"].recv_until(_is_msg("fb"))
    assert el.get("to") == f"{jid}/gone"  # the server does not rewrite 'to'
    await _close(sender, *res.values())


async def test_groupchat_to_user_is_service_unavailable(rookery_server):
    jid, pw = rookery_server.make_user()
    s_jid, s_pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"r": 0})
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='{jid}' type='groupchat' id='gc'><body>x</body></message>")
    err = await sender.recv_until(_is_msg("gc"))
    assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
    assert not await _got(res["r"], "gc", 0.3)
    await _close(sender, *res.values())


async def test_error_message_to_bare_jid_is_silently_dropped(rookery_server):
    jid, pw = rookery_server.make_user()
    s_jid, s_pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"r": 0})
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='{jid}' type='error' id='em'><error type='cancel'>"
                "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    assert not await _got(res["r"], "em", 0.3)
    await sender.expect_nothing()
    await _close(sender, *res.values())


@pytest.mark.parametrize("mtype", ["chat", "normal"])
async def test_message_to_nonexistent_user_is_service_unavailable(rookery_server, mtype):
    s_jid, s_pw = rookery_server.make_user()
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send(f"<message to='nobody-here@localhost' type='{mtype}' id='nx'><body>x</body></message>")
    err = await sender.recv_until(_is_msg("nx"))
    assert error_condition(err) == "service-unavailable"
    assert err.get("from") == "nobody-here@localhost"
    await sender.close()


async def test_headline_to_nonexistent_user_is_silently_dropped(rookery_server):
    s_jid, s_pw = rookery_server.make_user()
    sender = await RawClient().login(rookery_server.c2s_port, s_jid, s_pw)
    sender.send("<message to='nobody-here@localhost' type='headline' id='hx'><body>x</body></message>")
    await sender.expect_nothing()
    await sender.close()


async def test_iq_to_full_jid_is_delivered_and_result_routed_back(rookery_server):
    a_jid, a_pw = rookery_server.make_user()
    b_jid, b_pw = rookery_server.make_user()
    a = await RawClient().login(rookery_server.c2s_port, a_jid, a_pw, resource="a")
    b = await RawClient().login(rookery_server.c2s_port, b_jid, b_pw, resource="b")
    a.send(f"<iq type='get' to='{b_jid}/b' id='q1'><query xmlns='jabber:iq:version'/></iq>")
    req = await b.recv_until(lambda e: e.tag.endswith("iq") and e.get("id") == "q1")
    assert req.get("from") == f"{a_jid}/a"
    b.send(f"<iq type='result' to='{a_jid}/a' id='q1'><query xmlns='jabber:iq:version'><name>b</name></query></iq>")
    res = await a.recv_until(lambda e: e.tag.endswith("iq") and e.get("id") == "q1")
    assert res.get("type") == "result" and res.get("from") == f"{b_jid}/b"
    await _close(a, b)


async def test_iq_to_offline_full_jid_is_service_unavailable(rookery_server):
    a_jid, a_pw = rookery_server.make_user()
    b_jid, _ = rookery_server.make_user()
    a = await RawClient().login(rookery_server.c2s_port, a_jid, a_pw)
    r = await a.iq(f"<iq type='get' to='{b_jid}/nowhere' id='q2'><query xmlns='jabber:iq:version'/></iq>")
    assert error_condition(r) == "service-unavailable"
    await a.close()


async def test_message_without_to_goes_to_own_bare_jid(rookery_server):
    jid, pw = rookery_server.make_user()
    res = await _sessions(rookery_server, jid, pw, {"one": 1, "two": 0})
    res["two"].send("<message type='chat' id='self'><body>note to self</body></message>")
    assert await _got(res["one"], "self")
    await _close(*res.values())


async def test_message_to_remote_domain_is_remote_server_not_found(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    c.send("<message to='someone@remote.example' type='chat' id='rm'><body>x</body></message>")
    err = await c.recv_until(_is_msg("rm"))
    assert error_condition(err) == "remote-server-not-found"
    await c.close()


async def test_messages_from_one_sender_arrive_in_order(rookery_server):
    a_jid, a_pw = rookery_server.make_user()
    b_jid, b_pw = rookery_server.make_user()
    a = await RawClient().login(rookery_server.c2s_port, a_jid, a_pw, resource="a")
    b = await RawClient().login(rookery_server.c2s_port, b_jid, b_pw, resource="b")
    a.send("".join(f"<message to='{b_jid}/b' type='chat' id='o{i}'><body>{i}</body></message>"
                   for i in range(200)))
    got = await b.collect_until(lambda g: sum(1 for e in g if e.tag.endswith("message")) >= 200)
    ids = [e.get("id") for e in got if e.tag.endswith("message")]
    assert ids == [f"o{i}" for i in range(200)]
    await _close(a, b)
