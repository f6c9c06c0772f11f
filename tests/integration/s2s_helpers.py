"""Helpers of the federation tests: free loopback ports, a test CA, two federated Rookery servers."""

from __future__ import annotations

import asyncio
import datetime
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from xmpp_helpers import disconnect, slix_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestCA:
    """A certificate authority made by the test (both sides trust it: SASL EXTERNAL, XEP-0178)."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rookery test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, domains: list[str], *, self_signed: bool = False) -> tuple[str, str]:
        """A certificate (and key) for ``domains`` (DNS-ID SANs, and the wildcard for subdomains);
        ``self_signed``: not from the CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for d in domains:
            sans += [x509.DNSName(d), x509.DNSName("*." + d)]
        b = (x509.CertificateBuilder().subject_name(subject)
             .issuer_name(subject if self_signed else self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.SubjectAlternativeName(sans), critical=False)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                   x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        cert = b.sign(key if self_signed else self.key, hashes.SHA256())
        cp, kp = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        kp.chmod(0o600)
        return str(cp), str(kp)


def federated_pair(factory, a_domain: str = "a.example", b_domain: str = "b.example", *, a_tls: dict | None = None,
                   b_tls: dict | None = None, a_s2s: dict | None = None, b_s2s: dict | None = None):
    """Two servers that find each other through ``[s2s] hosts``."""
    pa, pb = free_port(), free_port()
    a = factory(domains=[a_domain], tls=a_tls or {},
                s2s={"listen": [f"127.0.0.1:{pa}"], "hosts": {b_domain: f"127.0.0.1:{pb}"}, **(a_s2s or {})})
    b = factory(domains=[b_domain], tls=b_tls or {},
                s2s={"listen": [f"127.0.0.1:{pb}"], "hosts": {a_domain: f"127.0.0.1:{pa}"}, **(b_s2s or {})})
    return a, b


S2S_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' "
              "xmlns:stream='http://etherx.jabber.org/streams' from='{frm}' to='{to}' version='1.0'>")


async def raw_peer(port: int, frm: str, to: str, *, tls: bool = True, cert: tuple[str, str] | None = None):
    """A hand-driven peer server on an incoming s2s port: header, STARTTLS (with ``cert`` as its
    client certificate).  Returns (client, features)."""
    import ssl

    from xmpp_helpers import RawClient

    c = await RawClient().connect(port)
    header = S2S_HEADER.format(frm=frm, to=to)
    features = await c.open_stream(header=header)
    if tls and features.tag.endswith("features"):
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        el = await c.recv()
        assert el.tag.endswith("proceed"), el.tag
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(*cert)
        await c.writer.start_tls(ctx, server_hostname=to)
        features = await c.open_stream(header=header)
    return c, features


async def _wait(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def subscribe_and_chat(sa, a_jid: str, a_pw: str, sb, b_jid: str, b_pw: str, b_mech: str = "SCRAM-SHA-256") -> None:
    """Two users of two servers subscribe to each other, see presence, chat both ways, see logout."""
    a = await slix_client(sa, a_jid, a_pw)
    b = await slix_client(sb, b_jid, b_pw, mech=b_mech)
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


