"""TLS: certificates and contexts (RFC 7590, RFC 6120 §5), channel-binding data (RFC 5929 §4).

On first start a self-signed certificate for every served domain is generated into
``<data_dir>/tls/`` unless ``[tls] cert``/``key`` name one.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


def ensure_certificate(cert: str | None, key: str | None, data_dir: Path, domains: list[str]) -> tuple[Path, Path]:
    """Return (cert, key) paths; generate a self-signed pair for ``domains`` when none is configured."""
    if cert and key:
        return Path(cert), Path(key)
    tls_dir = data_dir / "tls"
    cert_p, key_p = tls_dir / "rookery.crt", tls_dir / "rookery.key"
    if cert_p.exists() and key_p.exists():
        return cert_p, key_p
    tls_dir.mkdir(parents=True, exist_ok=True)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for d in domains:
        sans.append(x509.DNSName(d))
        sans.append(x509.DNSName("*." + d))
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )
    tmp_key = key_p.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(tmp_key, key_p)
    tmp_cert = cert_p.with_suffix(".tmp")
    tmp_cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_p)
    log.info("generated a self-signed certificate for %s in %s", ", ".join(domains), cert_p)
    return cert_p, key_p


#: bytes asyncio's TLS layer reads at once per connection (asyncio allocates a buffer this large for every
#: TLS connection; its default, 256 KiB, made a TLS connection cost ~280 KiB against ~14 KiB in plain
#: TCP: issue F3).  Two TLS records' worth keeps reads whole.
TLS_READ_BUFFER = 16 * 1024


def limit_tls_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Make asyncio's ``SSLProtocol`` allocate ``size`` bytes per connection instead of 256 KiB (its
    ``max_size`` class attribute is the size of that buffer and of each ``SSLObject.read``).  Applies
    to every TLS connection made afterwards in this process: listeners, STARTTLS, outgoing links."""
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = size


def server_context(cert: Path, key: Path, min_version: str = "1.2", alpn: list[str] | None = None,
                   ciphers: str | None = None) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+ (RFC 7590 §3), no compression, server cipher preference, the
    TLS 1.2 ``ciphers`` given (an OpenSSL cipher list; TLS 1.3 suites are all strong)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(str(cert), str(key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_server_end_point(cert_path: Path) -> bytes:
    """RFC 5929 §4.1: hash of our certificate with its signature hash (MD5/SHA-1 become SHA-256)."""
    pem = cert_path.read_bytes()
    c = x509.load_pem_x509_certificate(pem)
    algo = c.signature_hash_algorithm
    name = algo.name if algo is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, c.public_bytes(serialization.Encoding.DER)).digest()
