"""SASL (RFC 6120 §6): SCRAM-SHA-1/-256/-512 and their -PLUS variants (RFC 5802, RFC 7677) with
``tls-server-end-point`` channel binding (RFC 5929), and PLAIN (RFC 4616) inside TLS only.

Credentials are SCRAM salted keys (RFC 5802 §3); PLAIN is verified by deriving the salted password
from the stored salt.  Unknown users go through the same SCRAM exchange with throw-away keys whose salt
is derived from a server secret (``fake_credential``), so an attacker can tell them neither from
wrong passwords nor by their salts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError

from ..jid import InvalidJID, nodeprep
from ..storage.base import ScramCredential

HASHES = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}
SCRAM_ORDER = ["SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1"]
ITERATIONS = 4096


def make_credentials(password: str, iterations: int = ITERATIONS) -> dict[str, ScramCredential]:
    """Salted keys for every SCRAM hash (the only form in which passwords are stored)."""
    creds = {}
    for name in HASHES:
        m = ScramMechanism(f"SCRAM-{name}")
        salt, stored, server, it = m.make_auth_info(password, iteration_count=iterations)
        creds[name] = ScramCredential(salt=salt, iterations=it, stored_key=stored, server_key=server)
    return creds


def check_password(password: str, cred: ScramCredential, hash_name: str) -> bool:
    """Verify a plaintext password against stored keys (RFC 5802 §3 key derivation)."""
    from scramp.core import saslprep

    algo = HASHES[hash_name]
    salted = hashlib.pbkdf2_hmac(algo, saslprep(password).encode(), cred.salt, cred.iterations)
    client_key = hmac.digest(salted, b"Client Key", algo)
    stored = hashlib.new(algo, client_key).digest()
    return hmac.compare_digest(stored, cred.stored_key)


class SASLFailure(Exception):
    """RFC 6120 §6.5 failure condition."""

    def __init__(self, condition: str, text: str | None = None, wrong_password: bool = False) -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text
        #: the credentials were wrong (as opposed to a negotiation problem: channel binding, encoding)
        self.wrong_password = wrong_password


def _decode(b64: str) -> bytes:
    if b64.strip() in ("", "="):
        return b""
    try:
        return base64.b64decode(b64.strip(), validate=True)
    except ValueError:
        raise SASLFailure("incorrect-encoding") from None


def parse_scram_username(client_first: str) -> str:
    """The ``n=`` attribute of a SCRAM client-first message, unescaped and PRECIS-normalized."""
    try:
        _gs2_flag, _authzid, bare = client_first.split(",", 2)
    except ValueError:
        raise SASLFailure("malformed-request") from None
    for part in bare.split(","):
        if part.startswith("n="):
            raw = part[2:].replace("=2C", ",").replace("=3D", "=")
            try:
                return nodeprep(raw)
            except InvalidJID:
                return ""
    raise SASLFailure("malformed-request")


SALT_LENGTH = 32  # what make_credentials (scramp) gives real accounts


def fake_credential(hash_name: str, username: str, secret: bytes) -> ScramCredential:
    """Throw-away keys for an unknown user that look like a real account's: a salt of the same
    length derived from the server's secret and the username (the same one at every attempt, and
    after a restart when the secret is kept), the same iteration count.  The proof never matches."""
    algo = HASHES[hash_name]
    salt = hmac.digest(secret, f"{hash_name}\0{username}".encode(), "sha256")[:SALT_LENGTH]
    return ScramCredential(salt=salt, iterations=ITERATIONS, stored_key=os.urandom(hashlib.new(algo).digest_size),
                           server_key=os.urandom(hashlib.new(algo).digest_size))


class ScramExchange:
    """One server-side SCRAM exchange, driven by the stream (credentials fetched by the caller)."""

    def __init__(self, mechanism: str, cb_data: bytes | None) -> None:
        self.mechanism = mechanism
        base = mechanism.removesuffix("-PLUS")
        self.hash_name = base.removeprefix("SCRAM-")
        self.mech = ScramMechanism(mechanism)
        self.cb = ("tls-server-end-point", cb_data) if cb_data is not None else None
        self.server: Any = None
        self.username = ""

    def first(self, client_first_b64: str, cred: ScramCredential) -> str:
        client_first = _decode(client_first_b64).decode("utf-8", "replace")
        c = cred

        def auth_fn(_user: str) -> tuple[bytes, bytes, bytes, int]:
            return c.salt, c.stored_key, c.server_key, c.iterations

        try:
            self.server = self.mech.make_server(auth_fn, channel_binding=self.cb)
            self.server.set_client_first(client_first)
            return base64.b64encode(self.server.get_server_first().encode()).decode()
        except ScramException as e:
            raise SASLFailure("not-authorized", str(e)) from None

    def final(self, client_final_b64: str) -> str:
        client_final = _decode(client_final_b64).decode("utf-8", "replace")
        assert self.server is not None
        try:
            self.server.set_client_final(client_final)
            return base64.b64encode(self.server.get_server_final().encode()).decode()
        except ScramException as e:
            wrong = e.server_error is ServerError.INVALID_PROOF
            raise SASLFailure("not-authorized", None if wrong else str(e), wrong_password=wrong) from None


def parse_plain(b64: str) -> tuple[str, str, str]:
    """RFC 4616 §2: authzid NUL authcid NUL passwd."""
    raw = _decode(b64)
    try:
        authzid, authcid, password = raw.decode("utf-8").split("\0")
    except ValueError:
        raise SASLFailure("malformed-request") from None
    return authzid, authcid, password
