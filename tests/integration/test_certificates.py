"""Certificates (issue 7 item 4): SNI per domain, the self-signed certificate's names, ``rookery cert
import`` (Let's Encrypt layout) and ``cert check``, renewed certificates picked up by ``rookery reload``
without dropping connections, ``rookery check`` on coverage and storage."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import socket
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_cli import ROOKERY, assert_one_line_error, cli, free_port, write_config
from test_operations import serve
from test_streams import _scram
from xmpp_helpers import RawClient, insecure_context

from rookery.testing import RunningServer


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_chain(directory: Path, names: list[str], days: int = 90) -> tuple[Path, Path]:
    """A CA and a leaf for ``names`` signed by it: ``fullchain.pem`` (leaf, CA) and ``privkey.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Test CA")).issuer_name(_name("Test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain, priv = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return chain, priv


async def sni_stream(s: RunningServer, domain: str, direct: bool) -> RawClient:
    """A client stream to ``domain`` with SNI ``domain``, encrypted (direct TLS or STARTTLS)."""
    c = RawClient()
    if direct:
        c.reader, c.writer = await asyncio.open_connection("127.0.0.1", s.direct_tls_port, ssl=insecure_context(),
                                                          server_hostname=domain)
        c._reset()
        await c.open_stream(domain)
    else:
        await c.connect(s.c2s_port)
        await c.open_stream(domain)
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await c.recv()
        await c.writer.start_tls(insecure_context(), server_hostname=domain)
        await c.open_stream(domain)
    return c


def served_cert(port: int, server_name: str) -> x509.Certificate:
    """The certificate a direct-TLS handshake with SNI ``server_name`` gets."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with insecure_context().wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def names_of(c: x509.Certificate) -> list[str]:
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + \
        [str(a) for a in san.get_values_for_type(x509.IPAddress)]


async def test_sni_serves_each_domain_its_certificate_and_channel_binding_follows(tmp_path):
    chain, key = make_chain(tmp_path / "eo", ["example.org", "*.example.org"])
    s = RunningServer({"domains": ["localhost", "example.org"],
                       "tls": {"domains": {"example.org": {"cert": str(chain), "key": str(key)}}}},
                      tmp_path / "data").start()
    try:
        assert names_of(await asyncio.to_thread(served_cert, s.direct_tls_port, "example.org")) == \
            ["example.org", "*.example.org"]
        # a subdomain without its own certificate gets its parent's; other names the default one
        assert "example.org" in names_of(await asyncio.to_thread(served_cert, s.direct_tls_port, "muc.example.org"))
        default = names_of(await asyncio.to_thread(served_cert, s.direct_tls_port, "localhost"))
        assert "localhost" in default and "127.0.0.1" in default and "::1" in default
        assert socket.gethostname() in default or "_" in socket.gethostname()
        # SCRAM-PLUS: the channel binding is the certificate the client was given (RFC 5929 §4.1)
        s.make_user("alice", "pw")
        s.domain = "example.org"
        s.make_user("bob", "pw")
        for user, domain, direct in (("bob", "example.org", True), ("bob", "example.org", False),
                                     ("alice", "localhost", True)):
            c = await sni_stream(s, domain, direct)
            der = c.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            el = await _scram(c, "SCRAM-SHA-256-PLUS", user, "pw", ("tls-server-end-point", hashlib.sha256(der).digest()))
            assert el.tag.endswith("}success"), (user, domain, direct)
            await c.close()
    finally:
        s.stop()


async def test_cert_import_lets_encrypt_layout_and_check(tmp_path):
    live = tmp_path / "live"
    make_chain(live / "example.org", ["example.org", "conference.example.org"])
    make_chain(live / "other.example", ["other.example"])
    sp = await asyncio.to_thread(serve, tmp_path / "srv")
    try:
        before = await asyncio.to_thread(served_cert_starttls, sp.port, "example.org")
        assert "example.org" in names_of(before) and "localhost" in names_of(before)  # the self-signed one
        r = cli("cert", "import", live, "-c", sp.config)
        assert r.returncode == 0, r.stderr
        assert f"imported example.org from {live / 'example.org'}" in r.stdout
        assert "no certificate for localhost" in r.stdout and "the running server uses them now" in r.stdout
        key = sp.data_dir / "tls" / "example.org.key"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        after = await asyncio.to_thread(served_cert_starttls, sp.port, "example.org")
        assert names_of(after) == ["example.org", "conference.example.org"]
        r = cli("cert", "check", "-c", sp.config)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert any(ln.startswith("example.org: ") and "imported" in ln and "chain of 2" in ln for ln in lines)
        assert any(ln.startswith("localhost: ") and "self-signed" in ln for ln in lines)
    finally:
        sp.stop()


def served_cert_starttls(port: int, server_name: str) -> x509.Certificate:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(f"<?xml version='1.0'?><stream:stream to='{server_name}' xmlns='jabber:client' "
                    "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>".encode())
        buf = b""
        while b"</stream:features>" not in buf:
            buf += raw.recv(4096)
        raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        buf = b""
        while b"proceed" not in buf:
            buf += raw.recv(4096)
        with insecure_context().wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_reload_picks_up_renewed_certificates_without_dropping_connections(tmp_path):
    chain, key = make_chain(tmp_path / "certs", ["localhost", "example.org"])
    port = free_port()
    sp = await asyncio.to_thread(serve, tmp_path / "srv")
    sp.stop()  # restart it with [tls] cert/key
    text = sp.config.read_text().replace(f"127.0.0.1:{sp.port}", f"127.0.0.1:{port}")
    sp.config.write_text(text.replace("[c2s]\n", f'[tls]\ncert = "{chain}"\nkey = "{key}"\n\n[c2s]\n'))

    from test_operations import Served  # noqa: F401

    sp.log.unlink(missing_ok=True)
    proc = subprocess.Popen([*ROOKERY, "serve", "-c", str(sp.config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                if (sp.data_dir / "rookery.ctl").exists():
                    break
            except OSError:
                pass
            await asyncio.sleep(0.05)
        first = await asyncio.to_thread(served_cert_starttls, port, "localhost")
        assert cli("adduser", "alice@localhost", "-p", "pw", "-c", sp.config).returncode == 0
        c = await RawClient().login(port, "alice@localhost", "pw")
        make_chain(tmp_path / "certs", ["localhost", "example.org"])  # renewed in place, as certbot does
        r = cli("reload", "-c", sp.config)
        assert r.returncode == 0, r.stderr
        second = await asyncio.to_thread(served_cert_starttls, port, "localhost")
        assert second.serial_number != first.serial_number
        pong = await c.iq("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert pong.get("type") == "result"  # the open connection was not dropped
        await c.close()
        # a broken renewal is refused and changes nothing
        (tmp_path / "certs" / "privkey.pem").write_text("garbage")
        r = cli("reload", "-c", sp.config)
        assert_one_line_error(r.returncode, r.stdout, r.stderr, "cannot load")
        third = await asyncio.to_thread(served_cert_starttls, port, "localhost")
        assert third.serial_number == second.serial_number
    finally:
        proc.kill()
        proc.wait(10)


def test_cert_bad_input_and_check_coverage(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "empty").mkdir()
    r = cli("cert", "import", tmp_path / "nonexistent", "-c", cfg)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "cannot read the directory")
    r = cli("cert", "import", tmp_path / "empty", "-c", cfg)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "no certificate in", "covers a served domain")
    broken = tmp_path / "broken" / "example.org"
    make_chain(broken, ["example.org"])
    (broken / "privkey.pem").write_text("not a key")
    r = cli("cert", "import", tmp_path / "broken", "-c", cfg)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, "cannot use")
    # [tls] cert covering only example.org: check says localhost is not covered
    chain, key = make_chain(tmp_path / "only", ["example.org"])
    cfg2 = write_config(tmp_path / "two", f'[tls]\ncert = "{chain}"\nkey = "{key}"\n')
    for cmd in (["cert", "check"], ["check"]):
        r = cli(*cmd, "-c", cfg2)
        assert r.returncode == 1 and "localhost: the certificate" in r.stderr and "does not cover it" in r.stderr
    r = cli("check", "-c", cfg)  # before the first start: no certificate yet, storage not made yet: fine
    assert r.returncode == 0, r.stderr
