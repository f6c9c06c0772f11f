"""Issue F6/F7: per-account quotas and a JID cache bounded in bytes.

``[limits] max_roster_items``, ``max_private_bytes``, ``max_resources_per_account`` and
``max_pending_subscriptions`` each refuse the request over the quota with the error the RFC/XEP names
(RFC 6120 §7.6.2.1 ``resource-constraint`` for binding, ``policy-violation`` for local policy,
§8.3.3.12), while what was stored before keeps working.  Real server, raw XML over TLS."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from xmpp_helpers import RawClient, error_condition, tls_login  # noqa: E402

from rookery import jid as jid_module  # noqa: E402

LIMITS = {"max_roster_items": 3, "max_private_bytes": 2000, "max_resources_per_account": 2,
          "max_pending_subscriptions": 2}


@pytest.fixture
def server(rookery_server_factory):
    return rookery_server_factory(limits=LIMITS)


def roster_set(contact: str, i: int) -> str:
    return f"<iq type='set' id='r{i}'><query xmlns='jabber:iq:roster'><item jid='{contact}'/></query></iq>"


async def test_roster_items_quota(server) -> None:
    jid, pw = server.make_user()
    c = await tls_login(server, jid, pw)
    for i in range(3):
        assert (await c.iq(roster_set(f"friend{i}@example.net", i))).get("type") == "result"
    r = await c.iq(roster_set("one-too-many@example.net", 9))
    assert r.get("type") == "error" and error_condition(r) == "policy-violation"
    # updating an existing item is not a new item
    assert (await c.iq(roster_set("friend0@example.net", 10))).get("type") == "result"
    # and removing one makes room
    r = await c.iq("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'>"
                   "<item jid='friend1@example.net' subscription='remove'/></query></iq>")
    assert r.get("type") == "result"
    assert (await c.iq(roster_set("one-too-many@example.net", 11))).get("type") == "result"
    await c.close()


async def test_private_bytes_quota(server) -> None:
    jid, pw = server.make_user()
    c = await tls_login(server, jid, pw)

    def store(name: str, size: int, i: int) -> str:
        return (f"<iq type='set' id='p{i}'><query xmlns='jabber:iq:private'>"
                f"<{name} xmlns='urn:example:{name}'>{'x' * size}</{name}></query></iq>")

    assert (await c.iq(store("a", 800, 1))).get("type") == "result"
    assert (await c.iq(store("b", 800, 2))).get("type") == "result"
    r = await c.iq(store("c", 800, 3))
    assert r.get("type") == "error" and error_condition(r) == "policy-violation"
    # replacing a fragment counts its new size, not both
    assert (await c.iq(store("a", 900, 4))).get("type") == "result"
    r = await c.iq("<iq type='get' id='g'><query xmlns='jabber:iq:private'><b xmlns='urn:example:b'/></query></iq>")
    assert len(r[0][0].text or "") == 800  # the stored data is intact
    await c.close()


async def test_resources_per_account(server) -> None:
    jid, pw = server.make_user()
    a = await tls_login(server, jid, pw, resource="one")
    b = await tls_login(server, jid, pw, resource="two")
    c = RawClient()
    await c.authenticate(server.direct_tls_port, jid, pw, tls=True)
    c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>three</resource></bind></iq>")
    r = await c.recv()
    assert r.get("type") == "error" and error_condition(r) == "resource-constraint"
    # re-binding a bound resource replaces it (RFC 6120 §7.7.2.2) and is allowed
    d = await tls_login(server, jid, pw, resource="two")
    for x in (a, d):  # the bound resources keep working
        ping = await x.iq(f"<iq type='get' id='ping' to='{server.domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert ping.get("type") == "result"
    for x in (a, b, c, d):
        await x.close()


async def test_pending_subscriptions(server) -> None:
    target, _ = server.make_user()
    senders = [server.make_user() for _ in range(3)]
    clients = [await tls_login(server, j, p, presence=True) for j, p in senders]
    for i, c in enumerate(clients[:2]):
        c.send(f"<presence type='subscribe' to='{target}' id='s{i}'/>")
    await __import__("asyncio").sleep(0.5)
    clients[2].send(f"<presence type='subscribe' to='{target}' id='s2'/>")
    err = await clients[2].recv_until(lambda e: e.tag == "{jabber:client}presence" and e.get("type") == "error")
    assert error_condition(err) == "policy-violation"
    host, user = server.domain, target.split("@")[0]
    pending = server.call(server.server.storage.roster.get_pending_in, host, user)
    assert set(pending) == {senders[0][0], senders[1][0]}
    for c in clients:
        await c.close()


def test_jid_cache_bounded_by_size() -> None:
    jid_module._parse_cached.cache_clear()
    long = "a" * 1000 + "@example.org/" + "r" * 1000
    assert jid_module.JID.parse(long).local == "a" * 1000
    assert jid_module._parse_cached.cache_info().currsize == 0  # long strings are not kept
    jid_module.JID.parse("short@example.org/r")
    assert jid_module._parse_cached.cache_info().currsize == 1
