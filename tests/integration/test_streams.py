"""RFC 6120 stream behaviour and every class of bad input, over real sockets with raw XML."""

from __future__ import annotations

import asyncio
import time

import pytest
from xmpp_helpers import HEADER, STREAM_NS, RawClient, error_condition

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


async def _secure_stream(server) -> RawClient:
    c = await RawClient().connect(server.c2s_port)
    await c.open_stream()
    await c.starttls()
    return c


async def test_stream_header_has_id_from_version_and_features_require_starttls(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    features = await c.open_stream()
    assert c.header is not None
    assert c.header.get("id") and c.header.get("from") == "localhost" and c.header.get("version") == "1.0"
    assert features.tag == "{%s}features" % STREAM_NS
    starttls = features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls")
    assert starttls is not None and starttls.find("{urn:ietf:params:xml:ns:xmpp-tls}required") is not None
    # RFC 6120 §5.3.1 with require_encryption: no SASL before TLS
    assert features.find("{%s}mechanisms" % SASL) is None
    await c.close()


async def test_after_starttls_scram_plus_and_plain_are_offered(rookery_server):
    c = await _secure_stream(rookery_server)
    mechs = [m.text for m in c._queue or []]  # nothing queued
    assert not mechs
    await c.close()
    c = await RawClient().connect(rookery_server.c2s_port)
    await c.open_stream()
    features = await c.starttls()
    mechanisms = features.find("{%s}mechanisms" % SASL)
    assert mechanisms is not None, [e.tag for e in features]
    names = [m.text for m in mechanisms]
    assert {"SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "SCRAM-SHA-256-PLUS", "PLAIN"} <= set(names)
    assert features.find("{urn:xmpp:sasl-cb:0}sasl-channel-binding") is not None
    await c.close()


async def test_sasl_before_tls_fails_with_encryption_required(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    await c.open_stream()
    el = await c.auth_plain("nobody", "x")
    assert el.tag == "{%s}failure" % SASL
    assert el.find("{%s}encryption-required" % SASL) is not None
    await c.close()


async def test_wrong_password_is_not_authorized_and_stream_survives(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    el = await c.auth_plain(jid.split("@")[0], pw + "x")
    assert el.find("{%s}not-authorized" % SASL) is not None
    el = await c.auth_plain(jid.split("@")[0], pw)
    assert el.tag == "{%s}success" % SASL
    await c.close()


async def test_unknown_user_is_not_authorized(rookery_server):
    c = await _secure_stream(rookery_server)
    el = await c.auth_plain("ghost", "whatever")
    assert el.find("{%s}not-authorized" % SASL) is not None
    await c.close()


async def test_unknown_sasl_mechanism_is_invalid_mechanism(rookery_server):
    c = await _secure_stream(rookery_server)
    c.send(f"<auth xmlns='{SASL}' mechanism='X-UNKNOWN'>AAAA</auth>")
    el = await c.recv()
    assert el.find("{%s}invalid-mechanism" % SASL) is not None
    await c.close()


async def test_bad_base64_is_incorrect_encoding(rookery_server):
    c = await _secure_stream(rookery_server)
    c.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>!!!notbase64</auth>")
    el = await c.recv()
    assert el.find("{%s}incorrect-encoding" % SASL) is not None
    await c.close()


async def test_sasl_abort_is_aborted(rookery_server):
    c = await _secure_stream(rookery_server)
    c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'/>")
    el = await c.recv()
    assert el.tag == "{%s}challenge" % SASL
    c.send(f"<abort xmlns='{SASL}'/>")
    el = await c.recv()
    assert el.find("{%s}aborted" % SASL) is not None
    await c.close()


@pytest.mark.parametrize("payload, condition", [
    ("<message><body>unclosed</message>", "not-well-formed"),
    ("<message><body>&foo;</body></message>", "restricted-xml"),
    ("<!-- a comment --><message/>", "restricted-xml"),
    ("<?target instruction?>", "restricted-xml"),
])
async def test_bad_xml_after_login_gets_stream_error(rookery_server, payload, condition):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    c.send(payload)
    assert await c.stream_error() == condition
    await c.close()


async def test_doctype_before_root_is_restricted_xml(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    c.send("<?xml version='1.0'?><!DOCTYPE lol [<!ENTITY lol 'lol'>]>" + HEADER.format(to="localhost"))
    assert await c.stream_error() == "restricted-xml"
    await c.close()


async def test_billion_laughs_is_refused_without_expansion(rookery_server):
    ents = "".join(f"<!ENTITY l{i} '&l{i - 1};&l{i - 1};&l{i - 1};&l{i - 1};'>" for i in range(1, 10))
    c = await RawClient().connect(rookery_server.c2s_port)
    c.send(f"<?xml version='1.0'?><!DOCTYPE s [<!ENTITY l0 'lol'>{ents}]>"
           + HEADER.format(to="localhost") + "<message><body>&l9;</body></message>")
    assert await c.stream_error() == "restricted-xml"
    await c.close()


async def test_oversized_stanza_is_policy_violation(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    big = "x" * 70000
    c.send("<message to='" + jid + "'><body>")
    for _ in range(5):
        c.send(big)
    c.send("</body></message>")
    assert await c.stream_error() == "policy-violation"
    await c.close()


async def test_deep_nesting_is_policy_violation(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    c.send("<message>" + "<x xmlns='urn:x'>" * 100 + "</x>" * 100 + "</message>")
    assert await c.stream_error() == "policy-violation"
    await c.close()


async def test_stanza_before_authentication_is_not_authorized(rookery_server):
    c = await _secure_stream(rookery_server)
    c.send("<message to='someone@localhost'><body>hi</body></message>")
    assert await c.stream_error() == "not-authorized"
    await c.close()


async def test_wrong_stream_namespace_is_invalid_namespace(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    c.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:server' "
           "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    assert await c.stream_error() == "invalid-namespace"
    await c.close()


async def test_unknown_host_is_host_unknown(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    c.send(HEADER.format(to="elsewhere.example"))
    assert await c.stream_error() == "host-unknown"
    await c.close()


async def test_pre_xmpp1_stream_is_unsupported_version_without_legacy_auth(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    c.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
           "xmlns:stream='http://etherx.jabber.org/streams'>")
    assert await c.stream_error() == "unsupported-version"
    await c.close()


async def test_garbage_before_stream_is_not_well_formed(rookery_server):
    c = await RawClient().connect(rookery_server.c2s_port)
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert await c.stream_error() in ("not-well-formed", "invalid-namespace")
    await c.close()


async def test_client_close_gets_closing_tag(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    c.send("</stream:stream>")
    el = await c.recv()
    assert el.tag == "{%s}closed" % STREAM_NS
    await c.close()


async def test_bad_to_jid_is_jid_malformed_and_session_lives(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    r = await c.iq("<iq type='get' id='m1' to='@@bad'><query xmlns='jabber:iq:version'/></iq>")
    assert r.get("type") == "error" and error_condition(r) == "jid-malformed"
    # RFC 6120 §8.3.1: from the entity that found the error, our server (the bad 'to' cannot be used)
    assert r.get("from") == rookery_server.domain and r.get("to") == c.jid
    c.send("<message to='a@b@c' id='m2'><body>x</body></message>")
    r = await c.recv_until(lambda e: e.get("id") == "m2")
    assert error_condition(r) == "jid-malformed" and r.get("from") == rookery_server.domain
    r = await c.iq("<iq type='get' id='alive'><query xmlns='urn:unknown:thing'/></iq>")
    assert error_condition(r) == "service-unavailable"
    await c.close()


async def test_iq_with_unknown_payload_is_service_unavailable(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    for to in ("localhost", jid, ""):
        to_attr = f" to='{to}'" if to else ""
        r = await c.iq(f"<iq type='get' id='u{len(to)}'{to_attr}><nope xmlns='urn:example:nope'/></iq>")
        assert r.get("type") == "error" and error_condition(r) == "service-unavailable"
    await c.close()


async def test_iq_without_payload_is_bad_request(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    r = await c.iq("<iq type='get' id='e1' to='localhost'/>")
    assert error_condition(r) == "bad-request"
    await c.close()


async def test_iq_result_nobody_asked_for_is_dropped(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    c.send("<iq type='result' id='unsolicited' to='localhost'/>")
    c.send(f"<iq type='error' id='unsolicited2' to='{jid}'/>")
    await c.expect_nothing()
    r = await c.iq("<iq type='get' id='still'><nope xmlns='urn:x'/></iq>")
    assert r.get("id") == "still"
    await c.close()


async def test_spoofed_from_is_invalid_from(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    c.send("<message from='admin@localhost/x' to='localhost'><body>x</body></message>")
    assert await c.stream_error() == "invalid-from"
    await c.close()


async def test_same_resource_login_replaces_old_session_with_conflict(rookery_server):
    jid, pw = rookery_server.make_user()
    old = await RawClient().login(rookery_server.c2s_port, jid, pw, resource="same")
    new = await RawClient().login(rookery_server.c2s_port, jid, pw, resource="same")
    assert await old.stream_error() == "conflict"
    r = await new.iq("<iq type='get' id='x'><nope xmlns='urn:x'/></iq>")
    assert r.get("id") == "x"
    await old.close()
    await new.close()


async def test_server_generates_resource_when_none_requested(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().connect(rookery_server.c2s_port)
    await c.open_stream()
    await c.starttls()
    await c.auth_plain(jid.split("@")[0], pw)
    await c.open_stream()
    r = await c.iq("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    full = r.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid").text
    assert full.startswith(jid + "/") and len(full) > len(jid) + 1
    await c.close()


async def test_session_establishment_is_accepted(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    r = await c.iq("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    assert r.get("type") == "result"
    await c.close()


async def test_bad_input_in_one_session_does_not_disturb_another(rookery_server):
    a_jid, a_pw = rookery_server.make_user()
    b_jid, b_pw = rookery_server.make_user()
    a = await RawClient().login(rookery_server.c2s_port, a_jid, a_pw)
    b = await RawClient().login(rookery_server.c2s_port, b_jid, b_pw)
    a.send("<message><body>&bad;</body></message>")
    assert await a.stream_error() == "restricted-xml"
    b.send(f"<message to='{b_jid}/raw' id='self' type='chat'><body>still here</body></message>")
    el = await b.recv_until(lambda e: e.get("id") == "self")
    assert el.findtext("{jabber:client}body") == "still here"
    await a.close()
    await b.close()


async def test_direct_tls_port_speaks_tls_from_first_byte(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().connect(rookery_server.direct_tls_port, tls=True)
    features = await c.open_stream()
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None
    assert features.find("{%s}mechanisms" % SASL) is not None
    await c.close()


async def test_whitespace_keepalives_are_accepted(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    for _ in range(3):
        c.send(" \n ")
        await asyncio.sleep(0.05)
    r = await c.iq("<iq type='get' id='k'><nope xmlns='urn:x'/></iq>")
    assert r.get("id") == "k"
    await c.close()


async def _scram(c: RawClient, mech: str, user: str, password: str, cb: tuple | None, flag_y: bool = False):
    """Run a SCRAM exchange with scramp's client; return the final server element."""
    import base64

    from scramp import ScramClient

    client = ScramClient([mech], user, password, channel_binding=cb)
    first = client.get_client_first()
    if flag_y:  # a client that supports CB but thinks the server does not (RFC 5802 §6)
        first = "y" + first[1:]
    c.send(f"<auth xmlns='{SASL}' mechanism='{mech}'>{base64.b64encode(first.encode()).decode()}</auth>")
    el = await c.recv()
    if not el.tag.endswith("challenge"):
        return el
    client.set_server_first(base64.b64decode(el.text).decode())
    if flag_y:
        final = client.get_client_final().replace("c=biws", "c=eSws", 1)
    else:
        final = client.get_client_final()
    c.send(f"<response xmlns='{SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
    el = await c.recv()
    if el.tag.endswith("success") and el.text:
        client.set_server_final(base64.b64decode(el.text).decode())  # verifies the server signature
    return el


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"])
async def test_scram_plus_with_tls_server_end_point_succeeds(rookery_server, mech):
    import hashlib

    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    # RFC 5929 §4.1: hash of the server certificate (our test certificate is signed with SHA-256)
    der = c.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    cb = ("tls-server-end-point", hashlib.sha256(der).digest())
    el = await _scram(c, mech, jid.split("@")[0], pw, cb)
    assert el.tag == "{%s}success" % SASL
    await c.close()


async def test_scram_plus_with_wrong_channel_binding_is_not_authorized(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    el = await _scram(c, "SCRAM-SHA-256-PLUS", jid.split("@")[0], pw, ("tls-server-end-point", b"\0" * 32))
    assert el.find("{%s}not-authorized" % SASL) is not None
    await c.close()


async def test_scram_downgrade_flag_y_is_refused_when_server_offers_plus(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    el = await _scram(c, "SCRAM-SHA-256", jid.split("@")[0], pw, None, flag_y=True)
    assert el.tag == "{%s}failure" % SASL
    await c.close()


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_scram_without_channel_binding_succeeds_and_server_signature_verifies(rookery_server, mech):
    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    el = await _scram(c, mech, jid.split("@")[0], pw, None)
    assert el.tag == "{%s}success" % SASL
    await c.close()


async def test_scram_wrong_password_is_not_authorized(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    el = await _scram(c, "SCRAM-SHA-256", jid.split("@")[0], pw + "x", None)
    assert el.find("{%s}not-authorized" % SASL) is not None
    await c.close()


async def test_too_many_auth_failures_close_the_stream(rookery_server):
    jid, pw = rookery_server.make_user()
    c = await _secure_stream(rookery_server)
    for _ in range(5):
        el = await c.auth_plain(jid.split("@")[0], "wrong")
        assert el.find("{%s}not-authorized" % SASL) is not None
    assert await c.stream_error() == "policy-violation"
    await c.close()


async def test_handler_exception_replies_internal_server_error_and_session_lives(rookery_server):
    from rookery.stanza import StanzaError

    def boom(_st):
        raise RuntimeError("bug in a module")

    async def boom_async(_st):
        raise RuntimeError("async bug in a module")

    def refuse(_st):
        raise StanzaError("not-allowed", "no")

    table = rookery_server.server.tables[rookery_server.domain]
    for name, fn in (("boom", boom), ("boomasync", boom_async), ("refuse", refuse)):
        key = ("get", "urn:test:handlers", name, "host")
        if key not in table.iq:
            rookery_server.call_sync(table.add_iq, key, fn)
    jid, pw = rookery_server.make_user()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    for i, (name, cond) in enumerate((("boom", "internal-server-error"), ("boomasync", "internal-server-error"),
                                       ("refuse", "not-allowed"))):
        r = await c.iq(f"<iq type='get' id='h{i}' to='localhost'><{name} xmlns='urn:test:handlers'/></iq>")
        assert r.get("type") == "error" and error_condition(r) == cond
    r = await c.iq("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert r.get("type") == "result"
    await c.close()


async def test_read_rate_limit_slows_a_flooding_client_without_losing_stanzas(rookery_server_factory):
    import time

    server = rookery_server_factory(c2s={"max_bytes_per_second": 50000, "burst_bytes": 0,
                                         "max_stanza_size": 20000})
    jid, pw = server.make_user()
    c = await RawClient().login(server.c2s_port, jid, pw, resource="r")
    body = "y" * 900
    n = 160  # ~160 KB: 20 KB of burst, then 50 KB/s => at least ~2.8 s
    start = time.monotonic()
    c.send("".join(f"<message to='{jid}/r' id='f{i}'><body>{body}</body></message>" for i in range(n)))
    got = await c.collect_until(lambda g: sum(1 for e in g if e.tag.endswith("message")) >= n, timeout=20)
    elapsed = time.monotonic() - start
    assert [e.get("id") for e in got if e.tag.endswith("message")] == [f"f{i}" for i in range(n)]
    assert elapsed >= 2.0, f"not throttled: {elapsed:.2f}s"
    r = await c.iq("<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert r.get("type") == "result"
    await c.close()


async def test_failed_logins_from_one_address_slow_attempts_down_but_never_lock_out(rookery_server_factory):
    server = rookery_server_factory(c2s={"max_auth_failures_per_ip": 3, "auth_failure_delay": 0.2})
    jid, pw = server.make_user()
    user = jid.split("@")[0]
    for i in range(3):
        c = await _secure_stream(server)
        el = await c.auth_plain(f"{user}{i}", "wrong")  # three accounts: the per-address count
        assert el.find("{%s}not-authorized" % SASL) is not None
        await c.close()
    c = await _secure_stream(server)
    t0 = time.monotonic()
    el = await c.auth_plain(user, pw)  # the right password: delayed (0.2 s * 2), never refused
    assert el.tag == "{%s}success" % SASL, el
    assert time.monotonic() - t0 >= 0.4
    await c.close()
