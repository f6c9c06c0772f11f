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
from typing import Any

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
    # clients that connect by address or by the machine's name can check it too
    import ipaddress
    import socket

    host = socket.gethostname()
    if host and host not in domains and "_" not in host:
        sans.append(x509.DNSName(host))
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
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
    to every TLS connection made afterwards in this process: listeners, STARTTLS, outgoing links.

    uvloop (``event_loop``) has its own compiled ``SSLProtocol``, whose 256 KiB read buffer is a
    ``malloc`` that cannot be resized from here; only the pages a read touches become resident, and
    an idle connection's reads are small, so an idle TLS connection costs less on uvloop than on
    asyncio with this limit (``bench/attack/tls_memory.py``, docs/performance.md "TLS")."""
    from asyncio import sslproto

    sslproto.SSLProtocol.max_size = size
    _share_tls_read_buffer(sslproto.SSLProtocol, size)


def _share_tls_read_buffer(cls: type, size: int) -> None:
    """One read buffer for all of asyncio's TLS connections instead of ``size`` bytes each (16 KiB
    resident per idle connection: bytearrays are zero-filled).  The buffer only carries ciphertext
    from ``sock.recv_into`` to ``buffer_updated``, which copies it into the connection's incoming BIO
    in the same synchronous call (``get_buffer``, ``recv_into``, ``buffer_updated``: asyncio's
    selector transports on Unix), so the connections of one event-loop thread can share it."""
    import sys
    import threading

    init = cls.__init__  # type: ignore[misc]
    if getattr(init, "_rookery_shared", None) == size or sys.platform == "win32":  # proactor reads overlap
        return
    original = getattr(init, "_rookery_original", init)
    # one buffer per thread: a protocol is used only on its event loop's thread, and a process may run
    # several loops in several threads (the tests do: two federated servers in one process)
    local = threading.local()

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if len(self._ssl_buffer) <= size:  # what get_buffer() asks for never exceeds max_size
            shared = getattr(local, "buffer", None)
            if shared is None:
                buf = bytearray(size)
                shared = local.buffer = (buf, memoryview(buf))
            self._ssl_buffer, self._ssl_buffer_view = shared

    __init__._rookery_shared = size  # type: ignore[attr-defined]
    __init__._rookery_original = original  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


#: no compression (CRIME), the server's cipher order, and no TLS 1.2 renegotiation (a client-initiated
#: renegotiation costs the server a handshake for nothing; TLS 1.3 has none).  TLS 1.3 session tickets
#: stay on (OpenSSL's default, two per connection): a reconnecting client resumes without a full handshake.
SERVER_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION


def server_context(cert: Path, key: Path, min_version: str = "1.2", alpn: list[str] | None = None,
                   ciphers: str | None = None) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+ (RFC 7590 §3), no compression, server cipher preference, the
    TLS 1.2 ``ciphers`` given (an OpenSSL cipher list; TLS 1.3 suites are all strong)."""
    return configure_context(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, min_version, alpn, ciphers)


def tls_server_end_point(cert_path: Path) -> bytes:
    """RFC 5929 §4.1: hash of our certificate with its signature hash (MD5/SHA-1 become SHA-256)."""
    pem = cert_path.read_bytes()
    c = x509.load_pem_x509_certificate(pem)
    algo = c.signature_hash_algorithm
    name = algo.name if algo is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, c.public_bytes(serialization.Encoding.DER)).digest()


_ALPN: dict[str, list[str] | None] = {"starttls": None, "direct": ["xmpp-client"], "https": ["http/1.1"]}


class TLSManager:
    """The server's TLS contexts: a default certificate (``[tls] cert``/``key``, or the self-signed
    one), and per domain one from ``[tls.domains."<domain>"]`` or imported by ``rookery cert import``
    (``<data_dir>/tls/<domain>.crt``/``.key``), chosen by SNI; a subdomain without its own falls back to
    its parent domain's, then to the default.

    ``reload()`` loads every certificate again into the same context objects: new connections get the
    renewed certificates, open ones keep theirs.  ``cb_data(ssl_object)`` is the RFC 5929
    ``tls-server-end-point`` data of the certificate a connection was actually given."""

    def __init__(self, cfg: object, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cfg = cfg
        #: the default contexts by kind: "starttls", "direct" (ALPN xmpp-client), "https" (ALPN http/1.1)
        self.default: dict[str, ssl.SSLContext] = {k: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for k in _ALPN}
        self.starttls, self.direct, self.https = self.default["starttls"], self.default["direct"], self.default["https"]
        #: domain -> contexts by kind
        self.by_domain: dict[str, dict[str, ssl.SSLContext]] = {}
        #: id(context) -> channel-binding data
        self._cb: dict[int, bytes] = {}
        #: domain (or "" for the default) -> certificate file, key file
        self.cert_files: dict[str, Path] = {}
        self.key_files: dict[str, Path] = {}

    def pairs(self) -> dict[str, tuple[Path, Path]]:
        """Domain ("" for the default) -> (cert, key) files, as configured now."""

        cfg: Any = self.cfg
        out: dict[str, tuple[Path, Path]] = {}
        out[""] = ensure_certificate(cfg.tls.cert, cfg.tls.key, self.data_dir, cfg.domains)
        tls_dir = self.data_dir / "tls"
        for d in cfg.domains:
            c, k = tls_dir / f"{d}.crt", tls_dir / f"{d}.key"
            if c.exists() and k.exists():
                out[d] = (c, k)
        for d, pair in cfg.tls.domains.items():
            out[d] = (Path(pair.cert), Path(pair.key))
        return out

    def load(self) -> list[str]:
        """(Re)load every certificate; returns the domains with their own certificate.  Raises
        ``OSError``/``ssl.SSLError`` naming the file when one cannot be loaded (nothing is changed then)."""

        cfg: Any = self.cfg
        pairs = self.pairs()
        # load everything into fresh contexts first: a bad file must not leave half the server renewed
        for d, (c, k) in pairs.items():
            try:
                server_context(c, k, cfg.tls.min_version, ciphers=cfg.tls.ciphers)
            except (OSError, ValueError) as e:
                where = f'tls.domains."{d}"' if d in cfg.tls.domains else "tls" if not d else f"imported {d}"
                raise OSError(f"{where}: cannot load {c} / {k}: {getattr(e, 'strerror', None) or e}") from None
        self._cb = {}
        self.cert_files, self.key_files = {}, {}
        for d, (c, k) in pairs.items():
            if d:
                ctxs = self.by_domain.setdefault(d, {kind: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for kind in _ALPN})
            else:
                ctxs = self.default
            cb = tls_server_end_point(c)
            for kind, ctx in ctxs.items():
                configure_context(ctx, c, k, cfg.tls.min_version, _ALPN[kind], cfg.tls.ciphers)
                self._cb[id(ctx)] = cb
            self.cert_files[d] = c
            self.key_files[d] = k
        for d in list(self.by_domain):
            if d not in pairs:
                del self.by_domain[d]
        for ctx in self.default.values():
            ctx.sni_callback = self._sni
        return sorted(d for d in pairs if d)

    def context_for(self, server_name: str | None, kind: str) -> ssl.SSLContext | None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        while name:
            ctxs = self.by_domain.get(name)
            if ctxs is not None:
                return ctxs[kind]
            name = name.partition(".")[2]
        return None

    def _sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
             ctx: ssl.SSLContext) -> None:
        kind = next((k for k, c in self.default.items() if c is ctx), "starttls")
        other = self.context_for(server_name, kind)
        if other is not None:
            sslobj.context = other
        return None

    def cb_data(self, ssl_object: ssl.SSLObject | None) -> bytes | None:
        if ssl_object is None:
            return self._cb.get(id(self.starttls))
        return self._cb.get(id(ssl_object.context)) or self._cb.get(id(self.starttls))

    @property
    def default_cert(self) -> Path:
        return self.cert_files[""]


def configure_context(ctx: ssl.SSLContext, cert: Path, key: Path, min_version: str = "1.2",
                      alpn: list[str] | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    """Set ``ctx`` up as ``server_context`` does (loading the certificate again into an existing
    context replaces it for the handshakes that follow)."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= SERVER_OPTIONS
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(str(cert), str(key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def describe(path: Path) -> dict[str, object]:
    """Names, validity and chain of the PEM certificate file ``path`` (for ``rookery cert check``)."""
    pems = x509.load_pem_x509_certificates(path.read_bytes())
    leaf = pems[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]  # type: ignore[misc]
    chain_ok = all(pems[i].issuer == pems[i + 1].subject for i in range(len(pems) - 1))
    return {
        "names": names,
        "not_after": leaf.not_valid_after_utc,
        "self_signed": leaf.issuer == leaf.subject,
        "chain_length": len(pems),
        "chain_ok": chain_ok,
    }


def covers(names: list[str], domain: str) -> bool:
    """RFC 6125: a DNS name of the certificate, or a wildcard one level up, matches ``domain``."""
    for n in names:
        n = n.lower()
        if n == domain or (n.startswith("*.") and domain.partition(".")[2] == n[2:]):
            return True
    return False
