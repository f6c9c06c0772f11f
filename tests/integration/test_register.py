"""Account management over real sockets: XEP-0077 in-band registration (off by default, `[register]`
allow / invite_only / max_per_ip), XEP-0401/XEP-0445 invite tokens, password change and account
removal by the user (with the account leaving local contacts' rosters), and XEP-0157 contact
addresses in the server's disco#info."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from xml.etree.ElementTree import Element

import pytest
from slixmpp.exceptions import IqError
from xmpp_helpers import RawClient, befriend, disconnect, error_condition, slix_client

from rookery.jid import JID
from rookery.modules.caps import NODE, verification_string_of
from rookery.modules.register import create_invite
from rookery.testing import RunningServer

REG = "jabber:iq:register"
FEATURE = "{http://jabber.org/features/iq-register}register"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
ROSTER = "jabber:iq:roster"
_names = itertools.count()


def fresh_name() -> str:
    return f"reg{next(_names)}"


def register_xml(username: str | None, password: str | None, id: str = "r1") -> str:
    fields = ""
    if username is not None:
        fields += f"<username>{username}</username>"
    if password is not None:
        fields += f"<password>{password}</password>"
    return f"<iq type='set' id='{id}'><query xmlns='{REG}'>{fields}</query></iq>"


async def unauthenticated(server: RunningServer) -> RawClient:
    """A direct-TLS stream, before authentication; ``features`` holds the stream features."""
    c = RawClient()
    await c.connect(server.direct_tls_port, tls=True)
    c.features = await c.open_stream(server.domain)
    return c


async def register(server: RunningServer, username: str, password: str) -> Element:
    c = await unauthenticated(server)
    try:
        return await c.iq(register_xml(username, password))
    finally:
        await c.close()


async def can_log_in(server: RunningServer, jid: str, password: str) -> bool:
    user, _, domain = jid.partition("@")
    c = RawClient()
    await c.connect(server.direct_tls_port, tls=True)
    try:
        await c.open_stream(domain)
        res = await c.auth_plain(user, password)
        return res.tag == f"{{{SASL}}}success"
    finally:
        await c.close()


def reg_server(factory, **register) -> RunningServer:
    return factory(register={"allow": True, **register})


# -- registration off (the default) ------------------------------------------------------------------


async def test_registration_is_off_by_default(rookery_server_factory):
    server = rookery_server_factory()
    c = await unauthenticated(server)
    assert c.features.find(FEATURE) is None
    r = await c.iq(f"<iq type='get' id='g'><query xmlns='{REG}'/></iq>")
    assert r.get("type") == "error" and error_condition(r) == "service-unavailable"
    r = await c.iq(register_xml("mallory", "secret1"))
    assert r.get("type") == "error" and error_condition(r) == "not-allowed"
    await c.close()
    assert not server.call(server.server.storage.accounts.exists, server.domain, "mallory")


async def test_registration_needs_tls_unless_the_loopback_plaintext_switch(rookery_server_factory):
    server = reg_server(rookery_server_factory)
    c = RawClient()
    await c.connect(server.c2s_port)
    features = await c.open_stream(server.domain)
    assert features.find(FEATURE) is None  # not offered before STARTTLS
    r = await c.iq(register_xml("plain", "secret1"))
    assert error_condition(r) == "not-authorized"
    await c.close()
    assert not server.call(server.server.storage.accounts.exists, server.domain, "plain")

    dev = rookery_server_factory(register={"allow": True},
                                 c2s={"require_encryption": False, "allow_plaintext_auth": True})
    c = RawClient()
    await c.connect(dev.c2s_port)
    features = await c.open_stream(dev.domain)
    assert features.find(FEATURE) is not None
    r = await c.iq(register_xml("plain", "secret1"))
    assert r.get("type") == "result"
    await c.close()


# -- registration on ---------------------------------------------------------------------------------


async def test_register_an_account_then_log_in_with_it(rookery_server_factory):
    server = reg_server(rookery_server_factory)
    c = await unauthenticated(server)
    assert c.features.find(FEATURE) is not None
    fields = await c.iq(f"<iq type='get' id='g'><query xmlns='{REG}'/></iq>")
    q = fields.find(f"{{{REG}}}query")
    assert fields.get("type") == "result" and q is not None
    assert q.find(f"{{{REG}}}username") is not None and q.find(f"{{{REG}}}password") is not None
    assert q.find(f"{{{REG}}}registered") is None
    r = await c.iq(register_xml("Bill", "Calliope"))
    assert r.get("type") == "result", r.attrib
    # §3.1: one account per stream
    r = await c.iq(register_xml("bill2", "Calliope", id="r2"))
    assert error_condition(r) == "not-acceptable"
    await c.close()
    # nodeprep: "Bill" is stored as "bill"; only SCRAM keys are kept
    creds = server.call(server.server.storage.accounts.get_credentials, server.domain, "bill")
    assert creds and all(b"Calliope" not in (v.stored_key + v.server_key + v.salt) for v in creds.values())
    assert await can_log_in(server, f"bill@{server.domain}", "Calliope")
    assert not await can_log_in(server, f"bill@{server.domain}", "wrong")
    # a real client logs in with SCRAM
    cl = await slix_client(server, f"bill@{server.domain}", "Calliope", direct_tls=True, presence=False)
    await disconnect(cl)


async def test_an_existing_username_is_a_conflict(rookery_server_factory):
    server = reg_server(rookery_server_factory)
    jid, pw = server.make_user()
    r = await register(server, jid.partition("@")[0], "another1")
    assert r.get("type") == "error" and error_condition(r) == "conflict"
    assert await can_log_in(server, jid, pw) and not await can_log_in(server, jid, "another1")


@pytest.mark.parametrize("username,password", [
    (None, "secret1"),           # missing username
    ("carol", None),             # missing password
    ("", "secret1"),             # empty username
    ("carol", ""),               # empty password (XEP-0077 §3.1 note)
    ("ca@rol", "secret1"),       # not a localpart (RFC 7622 §3.3.1)
    ("ca/rol", "secret1"),
    ("x" * 1100, "secret1"),     # too long
    ("carol", "\u0085bell"),     # a C1 control: not an OpaqueString (RFC 8265 §4.2)
])
async def test_bad_registration_fields_are_not_acceptable(rookery_server_factory, username, password):
    server = reg_server(rookery_server_factory)
    c = await unauthenticated(server)
    r = await c.iq(register_xml(username, password))
    assert r.get("type") == "error" and error_condition(r) == "not-acceptable"
    # the stream lives on: a correct registration still works on it
    r = await c.iq(register_xml(fresh_name(), "secret1", id="ok"))
    assert r.get("type") == "result"
    await c.close()


async def test_registrations_per_ip_are_limited(rookery_server_factory):
    server = reg_server(rookery_server_factory, max_per_ip=2, window=60)
    for _ in range(2):
        assert (await register(server, fresh_name(), "secret1")).get("type") == "result"
    name = fresh_name()
    r = await register(server, name, "secret1")
    err = r.find("{jabber:client}error")
    assert error_condition(r) == "resource-constraint" and err is not None and err.get("type") == "wait"
    assert not server.call(server.server.storage.accounts.exists, server.domain, name)


async def test_pre_auth_stanzas_other_than_registration_are_still_refused(rookery_server_factory):
    server = reg_server(rookery_server_factory)
    c = await unauthenticated(server)
    c.send("<iq type='get' id='v'><query xmlns='jabber:iq:version'/></iq>")
    assert await c.stream_error() == "not-authorized"
    await c.close()
    c = await unauthenticated(server)
    c.send(f"<query xmlns='{REG}'/>")  # not inside an iq
    assert await c.stream_error() == "unsupported-stanza-type"
    await c.close()


# -- invite tokens (XEP-0401, XEP-0445) --------------------------------------------------------------


def make_invite(server: RunningServer, expires: float | None = 3600) -> str:
    invites = server.server.modules.modules["register"].invites
    return server.call(create_invite, invites, server.domain, expires)


async def preauth(c: RawClient, token: str, id: str = "p1") -> Element:
    return await c.iq(f"<iq type='set' id='{id}'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")


async def test_invite_only_registration_needs_a_valid_unused_unexpired_token(rookery_server_factory):
    server = reg_server(rookery_server_factory, invite_only=True)
    c = await unauthenticated(server)
    assert c.features.find(FEATURE) is not None
    assert c.features.find("{urn:xmpp:ibr-token:0}register") is not None
    # no token
    r = await c.iq(register_xml("dave", "secret1"))
    assert error_condition(r) == "forbidden"
    # a bad token, an empty one
    r = await preauth(c, "not-a-token")
    assert error_condition(r) == "forbidden"
    r = await c.iq("<iq type='set' id='p0'><preauth xmlns='urn:xmpp:pars:0'/></iq>")
    assert error_condition(r) == "bad-request"
    r = await c.iq(register_xml("dave", "secret1", id="r2"))
    assert error_condition(r) == "forbidden"
    # a good token
    token = make_invite(server)
    assert (await preauth(c, token, "p2")).get("type") == "result"
    r = await c.iq(register_xml("dave", "secret1", id="r3"))
    assert r.get("type") == "result", r.attrib
    await c.close()
    assert await can_log_in(server, f"dave@{server.domain}", "secret1")
    # used up: another stream cannot use it again
    c = await unauthenticated(server)
    assert error_condition(await preauth(c, token)) == "forbidden"
    await c.close()
    # expired
    old = make_invite(server, expires=0.2)
    await asyncio.sleep(0.4)
    c = await unauthenticated(server)
    assert error_condition(await preauth(c, old)) == "forbidden"
    await c.close()


async def test_a_token_allows_one_account_even_when_two_streams_hold_it(rookery_server_factory):
    server = reg_server(rookery_server_factory, invite_only=True)
    token = make_invite(server)
    a, b = await unauthenticated(server), await unauthenticated(server)
    assert (await preauth(a, token)).get("type") == "result"
    assert (await preauth(b, token)).get("type") == "result"
    ra, rb = await asyncio.gather(a.iq(register_xml("erin", "secret1")), b.iq(register_xml("frank", "secret1")))
    assert sorted([ra.get("type"), rb.get("type")]) == ["error", "result"]
    assert error_condition(ra if ra.get("type") == "error" else rb) == "forbidden"
    # a username conflict does not use the token up
    token2 = make_invite(server)
    c = await unauthenticated(server)
    assert (await preauth(c, token2)).get("type") == "result"
    taken = "erin" if ra.get("type") == "result" else "frank"
    assert error_condition(await c.iq(register_xml(taken, "secret1"))) == "conflict"
    assert (await c.iq(register_xml("grace", "secret1", id="r9"))).get("type") == "result"
    for cl in (a, b, c):
        await cl.close()


# -- password change (§3.3) --------------------------------------------------------------------------


async def test_password_change_then_only_the_new_password_logs_in(rookery_server_factory):
    server = rookery_server_factory()  # works with registration off
    jid, pw = server.make_user()
    user = jid.partition("@")[0]
    c = await RawClient().login(server.direct_tls_port, jid, pw, tls=True)
    r = await c.iq(f"<iq type='get' id='g'><query xmlns='{REG}'/></iq>")
    q = r.find(f"{{{REG}}}query")
    assert q is not None and q.find(f"{{{REG}}}registered") is not None
    assert q.findtext(f"{{{REG}}}username") == user
    # bad input: empty password keeps the old one; another user's name
    r = await c.iq(f"<iq type='set' id='e1'><query xmlns='{REG}'><username>{user}</username><password/></query></iq>")
    assert error_condition(r) == "not-acceptable"
    r = await c.iq(f"<iq type='set' id='e2'><query xmlns='{REG}'><username>someoneelse</username>"
                   f"<password>x1234567</password></query></iq>")
    assert error_condition(r) == "bad-request"
    assert await can_log_in(server, jid, pw)
    r = await c.iq(f"<iq type='set' id='c1' to='{server.domain}'><query xmlns='{REG}'><username>{user}</username>"
                   f"<password>n3w-pass</password></query></iq>")
    assert r.get("type") == "result", r.attrib
    await c.close()
    assert not await can_log_in(server, jid, pw)
    assert await can_log_in(server, jid, "n3w-pass")
    cl = await slix_client(server, jid, "n3w-pass", direct_tls=True, presence=False)
    await disconnect(cl)


async def test_password_change_with_slixmpp_xep_0077(rookery_server_factory):
    server = rookery_server_factory()
    jid, pw = server.make_user()
    cl = await slix_client(server, jid, pw, direct_tls=True, presence=False, plugins=("xep_0077",))
    try:
        await asyncio.wait_for(cl.plugin["xep_0077"].change_password("from-slixmpp", jid=server.domain), 10)
        reg = await asyncio.wait_for(cl.plugin["xep_0077"].get_registration(jid=server.domain), 10)
        assert reg["register"]["registered"]
        with pytest.raises(IqError) as e:
            await asyncio.wait_for(cl.plugin["xep_0077"].change_password("", jid=server.domain), 10)
        assert e.value.iq["error"]["condition"] == "not-acceptable"
    finally:
        await disconnect(cl)
    assert await can_log_in(server, jid, "from-slixmpp") and not await can_log_in(server, jid, pw)


# -- account removal (§3.2) --------------------------------------------------------------------------


async def test_account_removal_deletes_everything_and_leaves_contacts_rosters(rookery_server_factory):
    server = rookery_server_factory()
    alice, apw = server.make_user()
    bob, bpw = server.make_user()
    befriend(server, alice, bob)
    a1 = await RawClient().login(server.direct_tls_port, alice, apw, "one", tls=True)
    a2 = await RawClient().login(server.direct_tls_port, alice, apw, "two", tls=True)
    b = await RawClient().login(server.direct_tls_port, bob, bpw, tls=True)
    roster = await b.iq(f"<iq type='get' id='r0'><query xmlns='{ROSTER}'/></iq>")
    assert [i.get("jid") for i in roster.iter(f"{{{ROSTER}}}item")] == [alice]
    # bad input first: <remove/> with something else
    r = await a1.iq(f"<iq type='set' id='x'><query xmlns='{REG}'><remove/><username>a</username></query></iq>")
    assert error_condition(r) == "bad-request"
    r = await a1.iq(f"<iq type='set' id='rm'><query xmlns='{REG}'><remove/></query></iq>")
    assert r.get("type") == "result"
    assert await a1.stream_error() == "not-authorized"
    assert await a2.stream_error() == "not-authorized"
    # bob's interested resource gets the roster push of the removal (RFC 6121 §2.5.2)
    push = await b.recv_until(lambda e: e.tag == "{jabber:client}iq" and e.get("type") == "set")
    item = push.find(f".//{{{ROSTER}}}item")
    assert item is not None and item.get("jid") == alice and item.get("subscription") == "remove"
    roster = await b.iq(f"<iq type='get' id='r1'><query xmlns='{ROSTER}'/></iq>")
    assert [i.get("jid") for i in roster.iter(f"{{{ROSTER}}}item")] == []
    for c in (a1, a2, b):
        await c.close()
    assert not await can_log_in(server, alice, apw)
    h, u = alice.partition("@")[2], alice.partition("@")[0]
    assert not server.call(server.server.storage.accounts.exists, h, u)
    # offline contact rosters too (storage), even with bob offline
    carol, cpw = server.make_user()
    dave, _ = server.make_user()
    befriend(server, carol, dave)
    c = await RawClient().login(server.direct_tls_port, carol, cpw, tls=True)
    assert (await c.iq(f"<iq type='set' id='rm'><query xmlns='{REG}'><remove/></query></iq>")).get("type") == "result"
    await c.close()
    d = JID.parse(dave)
    _ver, items = server.call(server.server.storage.roster.get, d.domain, d.local)
    assert carol not in items


async def test_cli_deluser_also_leaves_local_contacts_rosters(rookery_server_factory):
    server = rookery_server_factory()
    alice, _ = server.make_user()
    bob, bpw = server.make_user()
    befriend(server, alice, bob)
    b = await RawClient().login(server.direct_tls_port, bob, bpw, tls=True)
    await b.iq(f"<iq type='get' id='r0'><query xmlns='{ROSTER}'/></iq>")
    a = JID.parse(alice)
    assert server.call(server.server.storage.accounts.delete, a.domain, a.local)
    server.call(server.server.user_deleted, a.domain, a.local)  # what `rookery deluser` notifies
    push = await b.recv_until(lambda e: e.tag == "{jabber:client}iq" and e.get("type") == "set")
    assert push.find(f".//{{{ROSTER}}}item[@subscription='remove']") is not None
    roster = await b.iq(f"<iq type='get' id='r1'><query xmlns='{ROSTER}'/></iq>")
    assert [i.get("jid") for i in roster.iter(f"{{{ROSTER}}}item")] == []
    await b.close()


# -- XEP-0157 contact addresses ----------------------------------------------------------------------


async def _server_info(server: RunningServer) -> tuple[Element, Element]:
    jid, pw = server.make_user()
    c = RawClient()
    features = await c.authenticate(server.direct_tls_port, jid, pw, tls=True)
    c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    await c.recv()
    r = await c.iq(f"<iq type='get' id='d' to='{server.domain}'><query xmlns='{DISCO_INFO}'/></iq>")
    await c.close()
    q = r.find(f"{{{DISCO_INFO}}}query")
    assert q is not None
    return q, features


async def test_contact_addresses_in_server_disco_and_caps(rookery_server_factory):
    plain = rookery_server_factory()
    q0, f0 = await _server_info(plain)
    assert all(x.find(".//{jabber:x:data}field[@var='FORM_TYPE']") is None for x in q0.iter("{jabber:x:data}x"))

    server = rookery_server_factory(modules={"contact_info": {
        "admin": ["xmpp:admin@localhost", "mailto:admin@example.org"],
        "abuse": ["mailto:abuse@example.org"]}})
    q, features = await _server_info(server)
    forms = [x for x in q.iter("{jabber:x:data}x")
             if x.findtext("{jabber:x:data}field[@var='FORM_TYPE']/{jabber:x:data}value")
             == "http://jabber.org/network/serverinfo"]
    assert len(forms) == 1
    fields = {f.get("var"): [v.text for v in f.iter("{jabber:x:data}value")]
              for f in forms[0].iter("{jabber:x:data}field")}
    assert fields["admin-addresses"] == ["xmpp:admin@localhost", "mailto:admin@example.org"]
    assert fields["abuse-addresses"] == ["mailto:abuse@example.org"]
    assert "support-addresses" not in fields
    caps = features.find("{http://jabber.org/protocol/caps}c")
    caps0 = f0.find("{http://jabber.org/protocol/caps}c")
    assert caps is not None and caps0 is not None and caps.get("node") == NODE
    assert caps.get("ver") == verification_string_of(q) != caps0.get("ver")


def test_contact_addresses_must_be_uris():
    from rookery.config import Config

    with pytest.raises(Exception, match="contact_info.admin"):
        Config.model_validate({"modules": {"contact_info": {"admin": ["admin at example.org"]}}})





# -- `rookery invite` --------------------------------------------------------------------------------


def rookery_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rookery", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


async def test_rookery_invite_makes_a_token_the_running_server_accepts_once(rookery_server_factory, tmp_path):
    server = reg_server(rookery_server_factory, invite_only=True)
    cfg = tmp_path / "rookery.toml"
    cfg.write_text(f'domains = ["{server.domain}"]\ndata_dir = "{server.data_dir}"\n')
    p = await asyncio.to_thread(rookery_cli, "invite", "--config", str(cfg), "--domain", server.domain,
                                "--expires", "600")
    assert p.returncode == 0, p.stderr
    token, uri = p.stdout.split()
    assert uri == f"xmpp:{server.domain}?register;preauth={token}" and len(token) >= 16
    c = await unauthenticated(server)
    assert (await preauth(c, token)).get("type") == "result"
    assert (await c.iq(register_xml("invited", "secret1"))).get("type") == "result"
    await c.close()
    assert await can_log_in(server, f"invited@{server.domain}", "secret1")
    c = await unauthenticated(server)
    assert error_condition(await preauth(c, token)) == "forbidden"
    await c.close()
    # bad input: one line on stderr, non-zero status
    for bad in (["--domain", "elsewhere.example"], ["--domain", "a@" + server.domain], ["--expires", "0"],
                ["--expires", "soon"], ["--expires", "-5"]):
        p = await asyncio.to_thread(rookery_cli, "invite", "--config", str(cfg), *bad)
        assert p.returncode != 0 and p.stdout == "", (bad, p.stdout)
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("rookery: error:"), p.stderr
