"""Issue F4 (account enumeration): a SCRAM exchange must not tell real accounts from unknown ones.

Unknown users get a salt of the same length as real accounts, derived from the server secret (the same
at every attempt and after a restart), the same iteration count.  An exchange abandoned after the
server's challenge tests no password and is not counted as a failed login (issue 7: only wrong passwords
count), and a probe learns nothing from it either.
Raw XML over real sockets (RFC 6120 §6, RFC 5802 §5.1)."""

from __future__ import annotations

import base64
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from xmpp_helpers import RawClient  # noqa: E402

from rookery.testing import RunningServer  # noqa: E402

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


async def server_first(port: int, user: str) -> dict[str, str] | str:
    """Start SCRAM-SHA-256 for ``user``; the server-first attributes, or the failure condition."""
    c = RawClient()
    await c.connect(port, tls=True)
    await c.open_stream()
    first = base64.b64encode(f"n,,n={user},r={secrets.token_hex(12)}".encode()).decode()
    c.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")
    el = await c.recv()
    await c.close()  # abandoned after the challenge
    if el.tag != f"{{{SASL}}}challenge":
        return next(iter(el)).tag.split("}")[1]
    attrs = dict(kv.split("=", 1) for kv in base64.b64decode(el.text or "").decode().split(","))
    return attrs


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="rookery-enum-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


async def test_unknown_users_salts_look_like_real_ones_and_are_stable_across_restarts(data_dir):
    s = RunningServer({}, data_dir).start()
    try:
        real, _ = s.make_user()
        real_first = await server_first(s.direct_tls_port, real.split("@")[0])
        ghost1 = await server_first(s.direct_tls_port, "ghost")
        again = await server_first(s.direct_tls_port, "ghost")
        ghost2 = await server_first(s.direct_tls_port, "phantom")
    finally:
        s.stop()
    assert isinstance(real_first, dict) and isinstance(ghost1, dict)
    assert isinstance(again, dict) and isinstance(ghost2, dict)
    assert len(base64.b64decode(ghost1["s"])) == len(base64.b64decode(real_first["s"])) == 32
    assert ghost1["i"] == real_first["i"]
    assert again["s"] == ghost1["s"]  # the same at every attempt, like a real account's
    assert ghost2["s"] != ghost1["s"]  # and different per user, like real accounts
    s = RunningServer({}, data_dir).start()  # the same data_dir: the same secret
    try:
        after = await server_first(s.direct_tls_port, "ghost")
    finally:
        s.stop()
    assert isinstance(after, dict) and after["s"] == ghost1["s"]


async def test_abandoned_scram_exchanges_do_not_count_as_failed_logins(rookery_server_factory):
    s = rookery_server_factory(c2s={"max_auth_failures_per_ip": 3, "max_auth_failures_per_account": 2})
    for i in range(8):  # more than both thresholds: none of them slows or refuses anything
        got = await server_first(s.direct_tls_port, f"probe{i % 2}")
        assert isinstance(got, dict), got
    assert s.call_sync(s.server.auth_limiter.delay, "127.0.0.1", "probe0") == 0
