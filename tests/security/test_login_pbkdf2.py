"""Issue 12: the server never spends PBKDF2 on a SCRAM login (it stores StoredKey/ServerKey), and the
PBKDF2 a PLAIN login needs runs off the event loop (``asyncio.to_thread``), so a login never blocks
the other sessions for the ~ms it costs."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from xmpp_helpers import RawClient, disconnect, slix_client  # noqa: E402


@pytest.fixture
def pbkdf2_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of the thread of every ``hashlib.pbkdf2_hmac`` call made while the test runs."""
    calls: list[str] = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    yield calls


async def test_scram_login_spends_no_pbkdf2_on_the_server(rookery_server, pbkdf2_threads: list[str]) -> None:
    jid, pw = rookery_server.make_user()
    pbkdf2_threads.clear()  # creating the account derived its keys
    main = threading.current_thread().name
    c = await slix_client(rookery_server, jid, pw, mech="SCRAM-SHA-256")
    try:
        # the client (this thread) derives its keys; the server thread and its executor none
        assert [t for t in pbkdf2_threads if t != main] == []
    finally:
        await disconnect(c)


async def test_plain_login_derives_off_the_event_loop(rookery_server, pbkdf2_threads: list[str]) -> None:
    jid, pw = rookery_server.make_user()
    pbkdf2_threads.clear()
    c = await RawClient().login(rookery_server.c2s_port, jid, pw)
    try:
        assert pbkdf2_threads, "PLAIN is checked by deriving the salted password"
        assert "rookery-server" not in pbkdf2_threads  # the server's event loop thread
    finally:
        await c.close()
