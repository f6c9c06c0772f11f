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
import re
import secrets
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


# RFC 5802 messages in their plainest form, the form every client sends for a login without extras:
# client-first-message-bare "n=user,r=nonce" (a user name of printable ASCII with no escaped '=' or ','
# and no extensions) and client-final-message "c=...,r=...,p=...".  ``ScramExchange`` checks these
# itself (a few hmac.digest calls); anything else, and any failure, goes through scramp.
_PLAIN_FIRST_BARE = re.compile(r"n=([\x21-\x2b\x2d-\x3c\x3e-\x7e]+),r=([\x21-\x2b\x2d-\x7e]+)")
_PLAIN_FINAL = re.compile(r"(c=([A-Za-z0-9+/]+={0,2}),r=([\x21-\x2b\x2d-\x7e]+)),p=([A-Za-z0-9+/]+={0,2})")


class ScramExchange:
    """One server-side SCRAM exchange, driven by the stream (credentials fetched by the caller).

    A well-formed login (``_PLAIN_FIRST_BARE``, ``_PLAIN_FINAL``, the GS2 header this server expects)
    is computed here with ``hmac.digest``: the messages, the nonce and the proof check are RFC 5802's
    and exactly what scramp would compute.  Everything else (extensions, escaped names, authzids, a
    channel-binding or nonce mismatch, bad base64, a wrong proof) is handed to scramp, replayed with
    the same server nonce, so that errors and their texts are scramp's own."""

    __slots__ = ("mechanism", "hash_name", "algo", "cb", "server", "username", "_s_nonce", "_client_first",
                 "_bare", "_server_first", "_gs2", "_cred")

    def __init__(self, mechanism: str, cb_data: bytes | None) -> None:
        self.mechanism = mechanism
        base = mechanism.removesuffix("-PLUS")
        self.hash_name = base.removeprefix("SCRAM-")
        self.algo = HASHES[self.hash_name]
        self.cb = ("tls-server-end-point", cb_data) if cb_data is not None else None
        #: set once the client-first message was taken (scramp's server, or True on the fast path)
        self.server: Any = None
        self.username = ""
        self._s_nonce = ""
        self._client_first = ""
        self._bare = ""
        self._server_first = ""
        self._gs2 = b""  # the GS2 header plus channel-binding data the final message must carry
        self._cred: ScramCredential | None = None

    def _scramp(self, cred: ScramCredential) -> Any:
        c = cred

        def auth_fn(_user: str) -> tuple[bytes, bytes, bytes, int]:
            return c.salt, c.stored_key, c.server_key, c.iterations

        return ScramMechanism(self.mechanism).make_server(auth_fn, channel_binding=self.cb, s_nonce=self._s_nonce)

    def _fast_gs2(self, header: str) -> bytes | None:
        """The cbind input of a GS2 header scramp accepts without a word, else None."""
        plus = self.mechanism.endswith("-PLUS")
        if header == "n,,":
            return None if plus else b"n,,"
        if header == "y,,":
            return None if plus or self.cb is not None else b"y,,"
        if header == "p=tls-server-end-point,," and self.cb is not None:
            return b"p=tls-server-end-point,," + self.cb[1]
        return None

    def first(self, client_first_b64: str, cred: ScramCredential) -> str:
        client_first = _decode(client_first_b64).decode("utf-8", "replace")
        self._client_first = client_first
        self._cred = cred
        self._s_nonce = secrets.token_hex()  # what scramp's Nonce.create() makes
        header, sep, bare = client_first.partition(",")
        header2, sep2, bare = bare.partition(",")
        gs2 = self._fast_gs2(f"{header},{header2},") if sep and sep2 else None
        m = _PLAIN_FIRST_BARE.fullmatch(bare) if gs2 is not None else None
        if (m is not None and type(cred.salt) is bytes and len(cred.salt) >= 12  # what scramp accepts
                and type(cred.iterations) is int and 4096 <= cred.iterations <= 10_000_000
                and type(cred.stored_key) is bytes and type(cred.server_key) is bytes):
            self._gs2 = gs2  # type: ignore[assignment]
            self._bare = bare
            self._server_first = (f"r={m.group(2)}{self._s_nonce},s={base64.b64encode(cred.salt).decode()}"
                                  f",i={cred.iterations}")
            self.server = True
            return base64.b64encode(self._server_first.encode()).decode()
        try:
            self.server = self._scramp(cred)
            self.server.set_client_first(client_first)
            return base64.b64encode(self.server.get_server_first().encode()).decode()
        except ScramException as e:
            raise SASLFailure("not-authorized", str(e)) from None

    def final(self, client_final_b64: str) -> str:
        client_final = _decode(client_final_b64).decode("utf-8", "replace")
        assert self.server is not None
        if self.server is True:
            m = _PLAIN_FINAL.fullmatch(client_final)
            cred = self._cred
            assert cred is not None
            try:
                cbind = base64.b64decode(m.group(2), validate=True) if m is not None else None
                proof = base64.b64decode(m.group(4), validate=True) if m is not None else b""
            except ValueError:  # bad padding: scramp's error
                cbind = None
            if (m is not None and cbind is not None and hmac.compare_digest(cbind, self._gs2)
                    and m.group(3) == self._server_first[2:].partition(",")[0]):
                algo = self.algo
                auth = f"{self._bare},{self._server_first},{m.group(1)}".encode()
                sig = hmac.digest(cred.stored_key, auth, algo)
                if len(proof) == len(sig):
                    key = (int.from_bytes(sig, "big") ^ int.from_bytes(proof, "big")).to_bytes(len(sig), "big")
                    if hmac.compare_digest(hashlib.new(algo, key).digest(), cred.stored_key):
                        verifier = hmac.digest(cred.server_key, auth, algo)
                        return base64.b64encode(b"v=" + base64.b64encode(verifier)).decode()
            # anything else (a wrong proof too): scramp, replayed with the same nonce, says what is wrong
            self.server = self._scramp(cred)
            try:
                self.server.set_client_first(self._client_first)
                self.server.get_server_first()
            except ScramException as e:  # cannot be: the fast path took this message
                raise SASLFailure("not-authorized", str(e)) from None
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
