"""Federation between two Rookery servers on loopback (RFC 6120, XEP-0220, XEP-0178, RFC 6121 §3-§5
across domains): real servers, real slixmpp clients."""

from __future__ import annotations

import asyncio

from s2s_helpers import _wait, federated_pair, subscribe_and_chat
from xmpp_helpers import disconnect, slix_client

from rookery.cli import main as cli_main


async def test_users_of_two_servers_subscribe_see_presence_and_chat_over_dialback(rookery_server_factory, tmp_path,
                                                                                  capsys):
    sa, sb = federated_pair(rookery_server_factory)
    a_jid, a_pw = sa.make_user()
    b_jid, b_pw = sb.make_user()
    await subscribe_and_chat(sa, a_jid, a_pw, sb, b_jid, b_pw)
    links = sa.call_sync(sa.server.s2s.describe)
    assert {(d["direction"], d["auth"]) for d in links} >= {("out", "dialback"), ("in", "dialback")}
    # `rookery s2s` lists them through the control socket
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'domains = ["a.example"]\ndata_dir = "{sa.data_dir}"\n')
    assert cli_main(["s2s", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["PEER", "LOCAL", "DIR", "STATE", "AUTH", "TLS", "IDLE", "QUEUED"]
    rows = {tuple(line.split()[:5]) for line in out[1:]}
    assert ("b.example", "a.example", "out", "ready", "dialback") in rows
    assert ("b.example", "a.example", "in", "ready", "dialback") in rows
    # RFC 6121 §4.3: a user who logs in later probes the remote contact and sees it online
    b = await slix_client(sb, b_jid, b_pw)
    a = await slix_client(sa, a_jid, a_pw)
    try:
        await _wait(lambda: bool(a.client_roster[b_jid].resources))
    finally:
        await disconnect(a, b)


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


# -- bad input from peers (each gets its stream error; the others are not disturbed) -----------------
async def _still_federated(sa, sb) -> None:
    a_jid, a_pw = sa.make_user()
    b_jid, b_pw = sb.make_user()
    a = await slix_client(sa, a_jid, a_pw, presence=False)
    b = await slix_client(sb, b_jid, b_pw)
    try:
        got: list[str] = []
        b.add_event_handler("message", lambda m: got.append(m["body"]))
        a.send_message(mto=b_jid, mbody="still here", mtype="chat")
        await _wait(lambda: got == ["still here"])
    finally:
        await disconnect(a, b)


async def test_bad_peers_get_their_stream_errors_and_federation_goes_on(rookery_server_factory):
    from s2s_helpers import raw_peer

    from rookery.streams.dialback import dialback_key

    sa, sb = federated_pair(rookery_server_factory)
    port = sb.s2s_port
    # a domain this server does not serve
    c, f = await raw_peer(port, "a.example", "nobody.example", tls=False)
    assert f.tag.endswith("error") and f[0].tag.endswith("host-unknown")
    # stanzas before authentication
    c, f = await raw_peer(port, "a.example", "b.example", tls=False)
    c.send("<message from='x@a.example' to='y@b.example'><body>hi</body></message>")
    assert await c.stream_error() == "not-authorized"
    c, f = await raw_peer(port, "a.example", "b.example")
    assert f.find("{urn:xmpp:features:dialback}dialback") is not None
    assert f.find("{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms") is None  # self-signed: no EXTERNAL
    c.send("<message from='x@a.example' to='y@b.example'><body>hi</body></message>")
    assert await c.stream_error() == "not-authorized"
    # garbage
    c, f = await raw_peer(port, "a.example", "b.example")
    c.send("<message><<<")
    assert await c.stream_error() == "not-well-formed"
    # a lying peer: dialback for a.example with a key a.example's server never issued
    c, f = await raw_peer(port, "a.example", "b.example")
    c.send("<db:result from='a.example' to='b.example'>0123456789abcdef</db:result>")
    res = await c.recv(10)
    assert res.tag == "{jabber:server:dialback}result" and res.get("type") == "invalid"
    assert await c.stream_error() == "not-authorized"  # XEP-0220 §2.2.1: the stream is closed
    # a peer authenticated as a.example (the key is right) that forges another 'from', or sends to a
    # domain that is not ours
    for stanza, condition in (
            ("<message from='mallory@c.example' to='y@b.example'><body>hi</body></message>", "invalid-from"),
            ("<message from='x@a.example' to='y@elsewhere.example'><body>hi</body></message>", "host-unknown")):
        c, f = await raw_peer(port, "a.example", "b.example")
        sid = c.header.get("id")
        key = sa.call_sync(lambda sid=sid: dialback_key(sa.server.secret, "b.example", "a.example", sid))
        c.send(f"<db:result from='a.example' to='b.example'>{key}</db:result>")
        res = await c.recv(10)
        assert res.get("type") == "valid", res.attrib
        c.send(stanza)
        assert await c.stream_error() == condition
    await _still_federated(sa, sb)


async def test_db_verify_is_answered_on_a_stream_not_yet_authenticated(rookery_server_factory):
    """XEP-0220 §2.1.3: the authoritative server answers <db:verify/> (Prosody asks on a stream it has
    not authenticated)."""
    from s2s_helpers import raw_peer

    from rookery.streams.dialback import dialback_key

    sa, sb = federated_pair(rookery_server_factory)
    good = sb.call_sync(lambda: dialback_key(sb.server.secret, "a.example", "b.example", "abc123"))
    c, f = await raw_peer(sb.s2s_port, "a.example", "b.example")
    c.send(f"<db:verify from='a.example' to='b.example' id='abc123'>{good}</db:verify>")
    r = await c.recv()
    assert (r.tag, r.get("type"), r.get("id"), r.get("from")) == ("{jabber:server:dialback}verify", "valid",
                                                                  "abc123", "b.example")
    c.send("<db:verify from='a.example' to='b.example' id='abc124'>" + good + "</db:verify>")
    r = await c.recv()
    assert r.get("type") == "invalid"


async def test_connecting_queue_is_bounded_and_a_silent_server_times_out(rookery_server_factory):
    """Stanzas wait (bounded: resource-constraint beyond ``max_queue``) while the connection is set up;
    a peer that accepts TCP and never speaks makes them bounce with remote-server-timeout."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        s = rookery_server_factory(domains=["a.example"], s2s={
            "hosts": {"mute.example": f"127.0.0.1:{port}"}, "max_queue": 2, "connect_timeout": 1.5})
        jid, pw = s.make_user()
        c = await slix_client(s, jid, pw, presence=False)
        try:
            errors: list[str] = []
            c.add_event_handler("message_error", lambda m: errors.append(m["error"]["condition"]))
            for i in range(3):
                c.send_message(mto="x@mute.example", mbody=f"m{i}", mtype="chat")
            await _wait(lambda: errors == ["resource-constraint"])
            await _wait(lambda: len(errors) == 3, 5)
            assert errors == ["resource-constraint", "remote-server-timeout", "remote-server-timeout"]
        finally:
            await disconnect(c)
    finally:
        silent.close()


async def test_idle_connections_close_and_reopen_on_demand(rookery_server_factory):
    sa, sb = federated_pair(rookery_server_factory, a_s2s={"idle_timeout": 0.6}, b_s2s={"idle_timeout": 0.6})
    await _still_federated(sa, sb)
    await _wait(lambda: sa.call_sync(sa.server.s2s.describe) == [] and sb.call_sync(sb.server.s2s.describe) == [],
                5)
    await _still_federated(sa, sb)


async def test_remote_senders_reach_offline_storage_and_server_iqs_work_across(rookery_server_factory):
    """RFC 6121 §8.5.2.2 offline storage for a remote sender; ping (XEP-0199) and version (XEP-0092)
    between a user and the remote server."""
    sa, sb = federated_pair(rookery_server_factory)
    a_jid, a_pw = sa.make_user()
    b_jid, b_pw = sb.make_user()
    a = await slix_client(sa, a_jid, a_pw, plugins=("xep_0199", "xep_0092"), presence=False)
    try:
        a.send_message(mto=b_jid, mbody="while you were away", mtype="chat")
        rtt = await a.plugin["xep_0199"].ping(jid="b.example", timeout=10)
        assert rtt is not None
        v = await a.plugin["xep_0092"].get_version("b.example", timeout=10)
        assert v["software_version"]["name"]
    finally:
        await disconnect(a)
    b = await slix_client(sb, b_jid, b_pw, presence=False)
    try:
        got: list[str] = []
        b.add_event_handler("message", lambda m: got.append(m["body"]))
        b.send_presence()
        await _wait(lambda: got == ["while you were away"])
    finally:
        await disconnect(b)


async def test_an_oversized_stanza_from_a_peer_is_a_policy_violation(rookery_server_factory):
    from s2s_helpers import raw_peer

    sa, sb = federated_pair(rookery_server_factory, b_s2s={})
    c, f = await raw_peer(sb.s2s_port, "a.example", "b.example")
    c.send("<message from='x@a.example' to='y@b.example'><body>" + "x" * 300_000 + "</body></message>")
    assert await c.stream_error() == "policy-violation"
    await _still_federated(sa, sb)


async def test_a_flood_of_dialback_requests_is_a_policy_violation(rookery_server_factory):
    from s2s_helpers import free_port, raw_peer

    # the claimed domains lead to a port where nothing answers quickly: verifications stay pending
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        hosts = {"d0.example": f"127.0.0.1:{port}"}
        s = rookery_server_factory(domains=["b.example"],
                                   s2s={"listen": [f"127.0.0.1:{free_port()}"], "hosts": hosts})
        c, f = await raw_peer(s.s2s_port, "d0.example", "b.example")
        for i in range(10):
            c.send(f"<db:result from='d0.example' to='b.example'>{i:064x}</db:result>")
        assert await c.stream_error() == "policy-violation"
    finally:
        silent.close()


async def test_direct_tls_listener_offers_dialback_without_starttls(rookery_server_factory):
    """XEP-0368: TLS from the first byte (ALPN xmpp-server); the features skip STARTTLS."""
    import ssl

    from s2s_helpers import S2S_HEADER, free_port
    from xmpp_helpers import RawClient

    s = rookery_server_factory(domains=["b.example"], s2s={"direct_tls_listen": [f"127.0.0.1:{free_port()}"]})
    port = s.server.addresses["s2s_direct_tls"][0][1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["xmpp-server"])
    c = RawClient()
    c.reader, c.writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="b.example")
    f = await c.open_stream(header=S2S_HEADER.format(frm="a.example", to="b.example"))
    assert c.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "xmpp-server"
    assert f.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    assert f.find("{urn:xmpp:features:dialback}dialback") is not None
    await c.close()


async def test_outgoing_direct_tls_from_an_xmpps_server_record(rookery_server_factory, monkeypatch):
    """XEP-0368 outgoing: a direct TLS target (as from an _xmpps-server SRV record; DNS itself is
    replaced here, the tests stay on loopback) is connected with TLS from the first byte."""
    from s2s_helpers import free_port

    import rookery.s2s.pool as pool_mod
    from rookery.s2s.dns import Target

    pa, pb, pb_direct = free_port(), free_port(), free_port()
    real_resolve = pool_mod.resolve
    tried: list[Target] = []

    async def resolve(domain, hosts):
        if domain == "b.example":
            tried.append(Target("127.0.0.1", pb_direct, True))
            return tried[-1:]
        return await real_resolve(domain, hosts)

    monkeypatch.setattr(pool_mod, "resolve", resolve)
    sa = rookery_server_factory(domains=["a.example"], s2s={"listen": [f"127.0.0.1:{pa}"]})
    sb = rookery_server_factory(domains=["b.example"], s2s={
        "listen": [f"127.0.0.1:{pb}"], "direct_tls_listen": [f"127.0.0.1:{pb_direct}"],
        "hosts": {"a.example": f"127.0.0.1:{pa}"}})
    await _still_federated(sa, sb)
    assert tried
    ins = sb.call_sync(sb.server.s2s.describe)
    assert ("in", "dialback") in {(d["direction"], d["auth"]) for d in ins}


async def test_dialback_piggybacks_further_domain_pairs_and_each_pair_is_checked(rookery_server_factory):
    """XEP-0220 §2.4: one incoming stream may authenticate more (from, to) pairs; stanzas may only use
    a pair that was authenticated."""
    from s2s_helpers import free_port, raw_peer

    from rookery.streams.dialback import dialback_key

    pa, pb = free_port(), free_port()
    sa = rookery_server_factory(domains=["a.example", "a2.example"], s2s={
        "listen": [f"127.0.0.1:{pa}"],
        "hosts": {"b.example": f"127.0.0.1:{pb}", "b2.example": f"127.0.0.1:{pb}"}})
    sb = rookery_server_factory(domains=["b.example", "b2.example"], s2s={
        "listen": [f"127.0.0.1:{pb}"],
        "hosts": {"a.example": f"127.0.0.1:{pa}", "a2.example": f"127.0.0.1:{pa}"}})
    c, f = await raw_peer(pb, "a.example", "b.example")
    sid = c.header.get("id")
    for frm, to in (("a.example", "b.example"), ("a2.example", "b2.example")):
        key = sa.call_sync(lambda frm=frm, to=to: dialback_key(sa.server.secret, to, frm, sid))
        c.send(f"<db:result from='{frm}' to='{to}'>{key}</db:result>")
        r = await c.recv(10)
        assert (r.get("from"), r.get("to"), r.get("type")) == (to, frm, "valid")
    # an authenticated pair: accepted (the unknown user's error comes back on our outgoing side)
    c.send("<iq type='get' id='p1' from='x@a2.example/r' to='b2.example'><ping xmlns='urn:xmpp:ping'/></iq>")
    await c.expect_nothing(0.5)
    # the answer went back to a2.example over b2.example's own outgoing connection
    await _wait(lambda: any(d["direction"] == "out" and d["state"] == "ready"
                            and (d["local"], d["domain"]) == ("b2.example", "a2.example")
                            for d in sb.call_sync(sb.server.s2s.describe)))
    # a2.example -> b.example was never authenticated
    c.send("<message from='x@a2.example' to='y@b.example'><body>hi</body></message>")
    assert await c.stream_error() == "not-authorized"


async def test_a_second_local_domain_piggybacks_on_the_connection_to_the_same_remote(rookery_server_factory):
    """XEP-0220 §2.4 outgoing: users of a.example and a2.example write to b.example: one connection."""
    from s2s_helpers import free_port

    pa, pb = free_port(), free_port()
    sa = rookery_server_factory(domains=["a.example", "a2.example"], s2s={
        "listen": [f"127.0.0.1:{pa}"], "hosts": {"b.example": f"127.0.0.1:{pb}"}})
    sb = rookery_server_factory(domains=["b.example"], s2s={
        "listen": [f"127.0.0.1:{pb}"],
        "hosts": {"a.example": f"127.0.0.1:{pa}", "a2.example": f"127.0.0.1:{pa}"}})
    b_jid, b_pw = sb.make_user()
    from rookery.streams.sasl import make_credentials

    ok = sa.call(sa.server.storage.accounts.create, "a2.example", "carol", make_credentials("pw-carol", iterations=4096))
    assert ok
    a_jid, a_pw = sa.make_user()
    b = await slix_client(sb, b_jid, b_pw)
    a = await slix_client(sa, a_jid, a_pw, presence=False)
    try:
        got: list[str] = []
        b.add_event_handler("message", lambda m: got.append(m["body"]))
        a.send_message(mto=b_jid, mbody="from a", mtype="chat")
        await _wait(lambda: got == ["from a"])
        carol = await slix_client(sa, "carol@a2.example", "pw-carol", presence=False)
        try:
            carol.send_message(mto=b_jid, mbody="from a2", mtype="chat")
            await _wait(lambda: got == ["from a", "from a2"])
        finally:
            await disconnect(carol)
        outs = [d for d in sa.call_sync(sa.server.s2s.describe) if d["direction"] == "out"]
        assert {(d["local"], d["state"]) for d in outs} == {("a.example", "ready"), ("a2.example", "shared")}
        ins = [d for d in sb.call_sync(sb.server.s2s.describe) if d["direction"] == "in"]
        assert [d["domain"] for d in ins] == ["a.example, a2.example"]
    finally:
        await disconnect(a, b)
