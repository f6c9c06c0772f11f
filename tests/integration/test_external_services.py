"""XEP-0215 External Service Discovery against a real server: the configured STUN/TURN services,
TURN REST API credentials checked with our own HMAC, the §3.3 credentials request, and refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest
from xmpp_helpers import error_condition, tls_login

from rookery.config import Config, ConfigError, load_config
from rookery.jid import JID
from rookery.stanza import Stanza, StanzaError
from rookery.testing import RunningServer

NS = "urn:xmpp:extdisco:2"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
SECRET = "turn-shared-secret"
TTL = 3600
SERVICES = [
    {"type": "stun", "host": "stun.example.org", "port": 3478, "transport": "udp"},
    {"type": "turn", "host": "turn.example.org", "port": 3478, "transport": "udp", "restricted": True},
    {"type": "turns", "host": "turn.example.org", "port": 5349, "transport": "tcp", "restricted": True,
     "name": "TURN over TLS"},
]


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    d = tempfile.mkdtemp(prefix="rookery-test-")
    s = RunningServer({"external_services": {"services": SERVICES, "secret": SECRET, "ttl": TTL}}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)


def _check_credentials(el: Element, jid: str) -> None:
    user, password = el.get("username", ""), el.get("password", "")
    expires_s, _, who = user.partition(":")
    assert who == jid
    assert abs(int(expires_s) - (time.time() + TTL)) < 60
    want = base64.b64encode(hmac.new(SECRET.encode(), user.encode(), hashlib.sha1).digest()).decode()
    assert password == want
    assert int(datetime.fromisoformat(el.get("expires", "").replace("Z", "+00:00")).timestamp()) == int(expires_s)


async def test_user_gets_services_and_valid_turn_credentials(server) -> None:
    jid, pw = server.make_user()
    c = await tls_login(server, jid, pw)
    info = await c.iq(f"<iq type='get' id='d' to='localhost'><query xmlns='{DISCO_INFO}'/></iq>")
    assert NS in {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
    r = await c.iq(f"<iq type='get' id='s' to='localhost'><services xmlns='{NS}'/></iq>")
    assert r.get("type") == "result", r.attrib
    got = r.findall(f".//{{{NS}}}service")
    assert [(s.get("type"), s.get("host"), s.get("port"), s.get("transport")) for s in got] == [
        ("stun", "stun.example.org", "3478", "udp"), ("turn", "turn.example.org", "3478", "udp"),
        ("turns", "turn.example.org", "5349", "tcp")]
    assert got[0].get("username") is None and got[0].get("restricted") is None
    for s in got[1:]:
        assert s.get("restricted") == "true"
        _check_credentials(s, jid)
    assert got[2].get("name") == "TURN over TLS"
    # only one type
    r = await c.iq(f"<iq type='get' id='t' to='localhost'><services xmlns='{NS}' type='turn'/></iq>")
    services = r.find(f"{{{NS}}}services")
    assert services is not None and services.get("type") == "turn"
    assert [s.get("type") for s in services] == ["turn"]
    await c.close()


async def test_credentials_request(server) -> None:
    jid, pw = server.make_user()
    c = await tls_login(server, jid, pw)
    r = await c.iq(f"<iq type='get' id='c' to='localhost'><credentials xmlns='{NS}'>"
                   "<service host='turn.example.org' type='turn'/></credentials></iq>")
    assert r.get("type") == "result", r.attrib
    (svc,) = r.findall(f".//{{{NS}}}service")
    assert (svc.get("host"), svc.get("type"), svc.get("port")) == ("turn.example.org", "turn", "3478")
    _check_credentials(svc, jid)
    r = await c.iq(f"<iq type='get' id='p' to='localhost'><credentials xmlns='{NS}'>"
                   "<service host='turn.example.org' type='turns' port='5349'/></credentials></iq>")
    assert [s.get("port") for s in r.iter(f"{{{NS}}}service")] == ["5349"]
    for bad, cond in (("<service host='stun.example.org' type='stun'/>", "item-not-found"),  # no credentials
                      ("<service host='nowhere.example' type='turn'/>", "item-not-found"),
                      ("<service type='turn'/>", "bad-request"), ("", "bad-request")):
        r = await c.iq(f"<iq type='get' id='b' to='localhost'><credentials xmlns='{NS}'>{bad}</credentials></iq>")
        assert error_condition(r) == cond, bad
    await c.close()


def test_non_local_entity_is_refused(server) -> None:
    mod = server.server.modules.modules["external_services"]
    el = Element("iq", {"type": "get", "id": "x", "to": "localhost"})
    el.append(Element(f"{{{NS}}}services"))

    async def ask() -> str:
        try:
            mod.services(Stanza(el, JID.parse("eve@elsewhere.example/r"), JID.parse("localhost")))
        except StanzaError as e:
            return e.condition
        return "answered"

    assert server.call(ask) == "forbidden"


def test_restricted_service_needs_a_secret(tmp_path) -> None:
    p = tmp_path / "r.toml"
    p.write_text('[external_services]\nservices = [{type = "turn", host = "t.example", restricted = true}]\n')
    with pytest.raises(ConfigError, match="secret"):
        load_config(str(p))
    cfg = Config.model_validate({"external_services": {"services": [
        {"type": "turn", "host": "t.example", "restricted": True, "username": "u", "password": "p"}]}})
    assert cfg.options_of("external_services")["services"][0]["username"] == "u"
