"""Certificates of s2s peers: RFC 6120 §13.7.2, RFC 6125 identity checks, XEP-0178.

Python's ``ssl`` either aborts the handshake on a certificate it cannot verify (``CERT_OPTIONAL`` /
``CERT_REQUIRED``) or does not ask the client for one (``CERT_NONE`` on a server).  A federating server
must do neither: it asks for the peer's certificate, completes the handshake whatever it is, then
judges it — valid for the peer's domain: SASL EXTERNAL; otherwise dialback (when allowed).  So the
contexts made here get a verification callback that lets the handshake go on (through ``ctypes``, the
way LuaSec's ``verifyext = "lsec_continue"`` does for Prosody), and ``verify_result`` reads what
OpenSSL concluded about the chain.  If OpenSSL's symbols cannot be reached (another Python build),
incoming peers are not asked for a certificate and outgoing ones are treated as unverified: dialback
only, never a wrongly accepted certificate.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

ID_ON_XMPPADDR = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7")

_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VERIFY_CB
def _continue(preverify_ok: int, store_ctx: int) -> int:  # pragma: no cover - called by OpenSSL
    return 1


class _OpenSSL:
    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        self.set_verify = lib.SSL_CTX_set_verify
        self.set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CB]
        self.set_verify.restype = None
        self.get_verify_mode = lib.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int
        self.get_ssl_ctx = lib.SSL_get_SSL_CTX
        self.get_ssl_ctx.argtypes = [ctypes.c_void_p]
        self.get_ssl_ctx.restype = ctypes.c_void_p
        self.get_verify_result = lib.SSL_get_verify_result
        self.get_verify_result.argtypes = [ctypes.c_void_p]
        self.get_verify_result.restype = ctypes.c_long


_lib: _OpenSSL | None
try:
    _lib = _OpenSSL()
except (OSError, AttributeError, ImportError) as e:  # pragma: no cover
    log.warning("OpenSSL not reachable through ctypes (%s): s2s certificates are never trusted", e)
    _lib = None

# CPython 3.11+: PySSLContext and PySSLSocket start with PyObject_HEAD, then SSL_CTX* / (Socket, SSL*)
_HEAD = ctypes.sizeof(ctypes.c_void_p) * 2


def _ctx_ptr(ctx: ssl.SSLContext) -> int:
    return ctypes.c_void_p.from_address(id(ctx) + _HEAD).value or 0


def _continue_on_failure(ctx: ssl.SSLContext) -> bool:
    """Install the callback that lets the handshake complete whatever the peer's certificate."""
    if _lib is None:
        return False
    ptr = _ctx_ptr(ctx)
    mode = _lib.get_verify_mode(ptr) if ptr else -1
    expected = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}[ctx.verify_mode]
    if mode & 3 != expected:  # not the structure we expected: leave it alone
        return False
    _lib.set_verify(ptr, mode, _continue)
    return True


def verify_result(ssl_object: Any, contexts: Iterable[ssl.SSLContext]) -> bool:
    """Did OpenSSL verify the peer's chain against the trust store (X509_V_OK)?  ``contexts``: the
    contexts the connection may have been made with (a sanity check of the structure read)."""
    if _lib is None or ssl_object is None:
        return False
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None:
        return False
    ssl_ptr = ctypes.c_void_p.from_address(id(inner) + _HEAD + ctypes.sizeof(ctypes.c_void_p)).value
    if not ssl_ptr or _lib.get_ssl_ctx(ssl_ptr) not in {_ctx_ptr(c) for c in contexts}:
        return False
    return bool(_lib.get_verify_result(ssl_ptr) == 0)


def s2s_server_context(cert: Path, key: Path, min_version: str, ciphers: str | None, ca_file: str | None,
                       alpn: list[str] | None = None) -> tuple[ssl.SSLContext, bool]:
    """Incoming s2s: asks for the peer's certificate and completes the handshake whatever it is.
    Returns the context and whether certificates can be judged (else: dialback only)."""
    from ..tls import server_context

    ctx = server_context(cert, key, min_version, alpn=alpn, ciphers=ciphers)
    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    if not _continue_on_failure(ctx):
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, False
    return ctx, True


def s2s_client_context(cert: Path, key: Path, min_version: str, ciphers: str | None, ca_file: str | None,
                       alpn: list[str] | None = None) -> tuple[ssl.SSLContext, bool]:
    """Outgoing s2s: presents our certificate as a client certificate (peers use it for SASL
    EXTERNAL) and completes the handshake whatever the peer's certificate is."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not _continue_on_failure(ctx):
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, False
    return ctx, True


# -- RFC 6125 identities ----------------------------------------------------------------------
def _der_string(data: bytes) -> str | None:
    """The value of a DER UTF8String / IA5String (the otherName values of RFC 6120 and RFC 4985)."""
    if len(data) < 2 or data[0] not in (0x0C, 0x16):
        return None
    n = data[1]
    i = 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[2:2 + k], "big")
        i = 2 + k
    try:
        return data[i:i + n].decode("utf-8")
    except UnicodeDecodeError:
        return None


def identities(der: bytes) -> dict[str, list[str]]:
    """The reference identities a certificate presents: ``dns`` (DNS-ID), ``srv`` (SRV-ID for
    _xmpp-server, domain part), ``xmpp`` (xmppAddr), ``cn`` (only used when there are no SANs)."""
    out: dict[str, list[str]] = {"dns": [], "srv": [], "xmpp": [], "cn": []}
    try:
        c = x509.load_der_x509_certificate(der)
    except ValueError:
        return out
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        out["dns"] = [d.lower() for d in san.get_values_for_type(x509.DNSName)]
        for gn in san:
            if isinstance(gn, x509.OtherName):
                v = _der_string(gn.value)
                if v is None:
                    continue
                if gn.type_id == ID_ON_XMPPADDR:
                    out["xmpp"].append(v.lower())
                elif gn.type_id == ID_ON_DNSSRV and v.lower().startswith("_xmpp-server."):
                    out["srv"].append(v[len("_xmpp-server."):].lower())
    else:
        out["cn"] = [str(a.value).lower() for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return out


def _dns_match(pattern: str, domain: str) -> bool:
    if pattern == domain:
        return True
    # RFC 6125 §6.4.3: a wildcard only as the complete left-most label, matching one label
    if pattern.startswith("*."):
        head, _, rest = domain.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def matches_domain(der: bytes | None, domain: str) -> bool:
    """RFC 6120 §13.7.2.1 / RFC 6125 §6: the certificate names ``domain`` (DNS-ID, SRV-ID,
    xmppAddr; the CN only when there is no subjectAltName)."""
    if not der:
        return False
    domain = domain.lower().rstrip(".")
    ids = identities(der)
    if any(_dns_match(p, domain) for p in ids["dns"]):
        return True
    if domain in ids["srv"] or domain in ids["xmpp"]:
        return True
    return any(_dns_match(p, domain) for p in ids["cn"])
