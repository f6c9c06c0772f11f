"""Federation between two Rookery servers on loopback (RFC 6120, XEP-0220, XEP-0178, RFC 6121 §3-§5
across domains): real servers, real slixmpp clients."""

from __future__ import annotations

import asyncio

from s2s_helpers import federated_pair
from xmpp_helpers import disconnect, slix_client


async def _wait(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def subscribe_and_chat(sa, a_jid: str, a_pw: str, sb, b_jid: str, b_pw: str) -> None:
    """Two users of two servers subscribe to each other, see presence, chat both ways, see logout."""
    a = await slix_client(sa, a_jid, a_pw)
    b = await slix_client(sb, b_jid, b_pw)
    try:
        got_a: list[str] = []
        got_b: list[str] = []
        a.add_event_handler("message", lambda m: got_a.append(m["body"]) if m["body"] else None)
        b.add_event_handler("message", lambda m: got_b.append(m["body"]) if m["body"] else None)
        for c in (a, b):
            c.auto_authorize = True
            c.auto_subscribe = True
        a.send_presence(pto=b_jid, ptype="subscribe")
        await _wait(lambda: a.client_roster[b_jid]["subscription"] == "both"
                    and b.client_roster[a_jid]["subscription"] == "both", 20)
        await _wait(lambda: bool(a.client_roster[b_jid].resources) and bool(b.client_roster[a_jid].resources))
        a.send_message(mto=b_jid, mbody="hello b", mtype="chat")
        b.send_message(mto=a_jid, mbody="hello a", mtype="chat")
        await _wait(lambda: "hello b" in got_b and "hello a" in got_a)
        b_res = str(b.boundjid.resource)
        await disconnect(b)
        await _wait(lambda: b_res not in a.client_roster[b_jid].resources)
    finally:
        await disconnect(a, b)


async def test_users_of_two_servers_subscribe_see_presence_and_chat_over_dialback(rookery_server_factory):
    sa, sb = federated_pair(rookery_server_factory)
    a_jid, a_pw = sa.make_user()
    b_jid, b_pw = sb.make_user()
    await subscribe_and_chat(sa, a_jid, a_pw, sb, b_jid, b_pw)
    links = sa.call_sync(sa.server.s2s.describe)
    assert {(d["direction"], d["auth"]) for d in links} >= {("out", "dialback"), ("in", "dialback")}


async def test_users_of_two_servers_chat_over_sasl_external_with_ca_certificates(rookery_server_factory, tmp_path):
    from s2s_helpers import TestCA

    ca = TestCA(tmp_path)
    ca_cert, ca_key = ca.issue("a", ["a.example"])
    cb_cert, cb_key = ca.issue("b", ["b.example"])
    sa, sb = federated_pair(rookery_server_factory,
                            a_tls={"cert": ca_cert, "key": ca_key, "ca_file": str(ca.path)},
                            b_tls={"cert": cb_cert, "key": cb_key, "ca_file": str(ca.path)},
                            a_s2s={"require_valid_certs": True, "dialback": False},
                            b_s2s={"require_valid_certs": True, "dialback": False})
    a_jid, a_pw = sa.make_user()
    b_jid, b_pw = sb.make_user()
    await subscribe_and_chat(sa, a_jid, a_pw, sb, b_jid, b_pw)
    for s in (sa, sb):
        links = s.call_sync(s.server.s2s.describe)
        assert {(d["direction"], d["auth"]) for d in links} == {("out", "EXTERNAL"), ("in", "EXTERNAL")}
        assert all(d["tls"].startswith("TLSv1.") for d in links)


async def test_message_to_an_unreachable_server_bounces_remote_server_not_found(rookery_server_factory):
    from s2s_helpers import free_port

    s = rookery_server_factory(domains=["a.example"],
                               s2s={"hosts": {"down.example": f"127.0.0.1:{free_port()}"}})
    jid, pw = s.make_user()
    c = await slix_client(s, jid, pw, presence=False)
    try:
        errors: list[str] = []
        c.add_event_handler("message_error", lambda m: errors.append(m["error"]["condition"]))
        c.send_message(mto="romeo@down.example", mbody="anyone?", mtype="chat")
        await _wait(lambda: errors == ["remote-server-not-found"])
        # never an error in reply to an error (RFC 6120 §8.3.1)
        c.send_message(mto="romeo@down.example", mtype="error")
        c.send_message(mto="romeo@down.example", mbody="again", mtype="chat")
        await _wait(lambda: len(errors) == 2)
        await asyncio.sleep(0.3)
        assert errors == ["remote-server-not-found"] * 2
        assert s.call_sync(s.server.s2s.describe) == []
    finally:
        await disconnect(c)


async def test_peer_with_a_certificate_for_another_domain_is_refused_when_valid_certs_are_required(
        rookery_server_factory, tmp_path):
    from s2s_helpers import TestCA

    ca = TestCA(tmp_path)
    wrong_cert, wrong_key = ca.issue("a", ["other.example"])
    cb_cert, cb_key = ca.issue("b", ["b.example"])
    sa, sb = federated_pair(rookery_server_factory,
                            a_tls={"cert": wrong_cert, "key": wrong_key, "ca_file": str(ca.path)},
                            b_tls={"cert": cb_cert, "key": cb_key, "ca_file": str(ca.path)},
                            b_s2s={"require_valid_certs": True})
    a_jid, a_pw = sa.make_user()
    b_jid, _ = sb.make_user()
    c = await slix_client(sa, a_jid, a_pw, presence=False)
    try:
        errors: list[str] = []
        c.add_event_handler("message_error", lambda m: errors.append(m["error"]["condition"]))
        c.send_message(mto=b_jid, mbody="let me in", mtype="chat")
        await _wait(lambda: errors == ["remote-server-not-found"])
        assert sb.call_sync(lambda: [d for d in sb.server.s2s.describe() if d["state"] == "ready"]) == []
    finally:
        await disconnect(c)
