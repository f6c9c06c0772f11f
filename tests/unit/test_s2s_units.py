"""Pure parts of federation: XEP-0185 dialback keys, RFC 2782 SRV ordering, RFC 6125 certificate
identities, and the [s2s] settings."""

from __future__ import annotations

import datetime
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rookery.config import ConfigError, load_config
from rookery.s2s.certs import ID_ON_DNSSRV, ID_ON_XMPPADDR, identities, matches_domain
from rookery.s2s.dns import SRV, Target, order_srv, resolve
from rookery.streams.dialback import check_key, dialback_key


def test_dialback_key_binds_secret_domains_and_stream_id():
    k = dialback_key(b"secret", "b.example", "a.example", "id1")
    assert len(k) == 64 and int(k, 16) >= 0
    assert check_key(b"secret", "b.example", "a.example", "id1", k)
    assert not check_key(b"other", "b.example", "a.example", "id1", k)
    assert not check_key(b"secret", "a.example", "b.example", "id1", k)
    assert not check_key(b"secret", "b.example", "a.example", "id2", k)


def test_srv_records_go_by_priority_then_weight_and_direct_tls_first_on_ties():
    recs = [SRV(20, 0, 5269, "late.example", False), SRV(10, 0, 5269, "starttls.example", False),
            SRV(10, 0, 5223, "direct.example", True)]
    assert order_srv(recs, random.Random(1)) == [Target("direct.example", 5223, True),
                                                 Target("starttls.example", 5269, False),
                                                 Target("late.example", 5269, False)]
    # weights: the heavier record comes first most of the time
    firsts = [order_srv([SRV(0, 90, 1, "heavy", False), SRV(0, 10, 1, "light", False)], random.Random(i))[0].host
              for i in range(200)]
    assert 150 < firsts.count("heavy") < 200


async def test_a_static_host_wins_over_dns():
    assert await resolve("example.org", {"example.org": "127.0.0.1:25269"}) == [Target("127.0.0.1", 25269, False)]


def _der_string(tag: int, s: str) -> bytes:
    b = s.encode()
    return bytes([tag, len(b)]) + b


def _cert(sans: list[x509.GeneralName] | None, cn: str = "cn.example") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if sans is not None:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_certificate_identities_dns_id_wildcard_srv_id_and_xmppaddr():
    der = _cert([x509.DNSName("example.org"), x509.DNSName("*.example.org"),
                 x509.OtherName(ID_ON_DNSSRV, _der_string(0x16, "_xmpp-server.srv.example")),
                 x509.OtherName(ID_ON_XMPPADDR, _der_string(0x0C, "xmpp.example"))])
    ids = identities(der)
    assert ids["srv"] == ["srv.example"] and ids["xmpp"] == ["xmpp.example"]
    for ok in ("example.org", "Conference.Example.org", "srv.example", "xmpp.example"):
        assert matches_domain(der, ok), ok
    # RFC 6125 §6.4.3: a wildcard matches one label only; the CN is ignored when there are SANs
    for bad in ("a.b.example.org", "other.org", "cn.example", "example.org.evil"):
        assert not matches_domain(der, bad), bad
    assert not matches_domain(None, "example.org")


def test_the_common_name_counts_only_without_subject_alt_names():
    assert matches_domain(_cert(None, cn="legacy.example"), "legacy.example")


def test_s2s_settings_load_and_bad_values_name_their_key(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[s2s]\nlisten = ["*:5269"]\nhosts = { "Example.ORG" = "127.0.0.1:25269" }\n'
                 'require_valid_certs = true\ndialback = false\nidle_timeout = 60\nmax_queue = 10\n')
    c = load_config(str(p))
    assert c.s2s.hosts == {"example.org": "127.0.0.1:25269"} and c.s2s.enabled
    assert not load_config(None).s2s.enabled
    for text, key in (('[s2s]\nhosts = { "example.org" = "nowhere" }\n', "s2s.hosts"),
                      ("[s2s]\nidle_timeout = 0\n", "s2s.idle_timeout"),
                      ("[s2s]\nsecure = true\n", "s2s.secure"),
                      ('[tls]\nca_file = "/nonexistent/ca.pem"\n', "tls.ca_file")):
        p.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(str(p))
