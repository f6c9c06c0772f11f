"""``sasl.ScramExchange`` computes well-formed SCRAM logins itself and hands everything else to scramp:
both must give the same answers (success, failure condition and text, wrong-password flag) for the
same messages, well-formed or mangled."""

from __future__ import annotations

import base64
import os
import random
from typing import Any

import pytest
from scramp import ScramClient

from rookery.streams import sasl

NONCE = "0123456789abcdef" * 4
CREDS = sasl.make_credentials("secret")
CB = os.urandom(32)


class _ScrampOnly(sasl.ScramExchange):
    __slots__ = ()

    def _fast_gs2(self, header: str) -> bytes | None:
        self._s_nonce = NONCE  # the same server nonce as the fast path, so that messages compare
        return None


def _run(monkeypatch: pytest.MonkeyPatch, cls: type[sasl.ScramExchange], mech: str, cb: bytes | None,
         seed: float, mutate_first: bool, mutate_final: bool, password: str, user: str) -> tuple[Any, ...]:
    monkeypatch.setattr(sasl.secrets, "token_hex", lambda: NONCE)
    rng = random.Random(seed)

    def mutate(s: str) -> str:
        chars = list(s)
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(chars) + 1)
            op = rng.random()
            if op < 0.4 and chars:
                del chars[min(k, len(chars) - 1)]
            elif op < 0.8:
                chars.insert(k, rng.choice("abn,=ryp-cx+/AZ09 \x00"))
            elif chars:
                chars[min(k, len(chars) - 1)] = rng.choice("abn,=ryp-cx+/AZ09")
        return "".join(chars)

    cred = CREDS[mech.removesuffix("-PLUS").removeprefix("SCRAM-")]
    ex = cls(mech, cb)
    binding = ("tls-server-end-point", cb) if cb is not None and mech.endswith("-PLUS") else None
    client = ScramClient([mech], user, password, channel_binding=binding, c_nonce="clientnonce123")
    first = client.get_client_first()
    if mutate_first:
        first = mutate(first)
    try:
        server_first = ex.first(base64.b64encode(first.encode()).decode(), cred)
    except sasl.SASLFailure as f:
        return ("first", f.condition, f.text)
    try:
        client.set_server_first(base64.b64decode(server_first).decode())
        final = client.get_client_final()
    except Exception as e:  # noqa: BLE001 - the client refused the mangled exchange
        return ("client", type(e).__name__)
    if mutate_final:
        final = mutate(final)
    try:
        server_final = ex.final(base64.b64encode(final.encode()).decode())
    except sasl.SASLFailure as f:
        return ("final", f.condition, f.text, f.wrong_password)
    client.set_server_final(base64.b64decode(server_final).decode())
    return ("ok",)


CASES = [("SCRAM-SHA-1", None), ("SCRAM-SHA-256", None), ("SCRAM-SHA-512", CB), ("SCRAM-SHA-256", CB),
         ("SCRAM-SHA-256-PLUS", CB), ("SCRAM-SHA-1-PLUS", CB)]


@pytest.mark.parametrize(("mech", "cb"), CASES)
def test_well_formed_logins_succeed_on_both_paths(monkeypatch: pytest.MonkeyPatch, mech: str, cb: bytes | None) -> None:
    for cls in (sasl.ScramExchange, _ScrampOnly):
        assert _run(monkeypatch, cls, mech, cb, 0.0, False, False, "secret", "alice") == ("ok",)
        assert _run(monkeypatch, cls, mech, cb, 0.0, False, False, "wrong", "alice") == (
            "final", "not-authorized", None, True)


def test_fast_path_and_scramp_agree_on_mangled_exchanges(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(12)
    agreed = {"ok": 0, "first": 0, "final": 0, "client": 0}
    for _ in range(1500):
        mech, cb = rng.choice(CASES)
        seed, which = rng.random(), rng.random()
        user = rng.choice(["alice", "a=b,c", "\u00e9l\u00e8ve", "bob"])
        args = (mech, cb, seed, which < 0.35, 0.35 <= which < 0.8, rng.choice(["secret", "wrong"]), user)
        fast = _run(monkeypatch, sasl.ScramExchange, *args)
        slow = _run(monkeypatch, _ScrampOnly, *args)
        assert fast == slow, args
        agreed[fast[0]] += 1
    assert all(agreed.values()), agreed  # every outcome was exercised
