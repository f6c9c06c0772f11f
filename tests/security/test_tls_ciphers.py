"""Issue F7: TLS 1.2 offers only Mozilla's "intermediate" suites (forward secrecy, AEAD) by default, and
``[tls] ciphers`` changes them.  Real handshakes on loopback with the stdlib's TLS client."""

from __future__ import annotations

import asyncio
import ssl

import pytest


def client_context(ciphers: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 suites are not configurable (all strong)
    ctx.set_ciphers(ciphers)
    return ctx


async def handshake(port: int, ciphers: str) -> str:
    """The negotiated cipher; a refused handshake raises ssl.SSLError or ConnectionError (reset)."""
    _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=client_context(ciphers),
                                                          server_hostname="localhost"), 5)
    try:
        return str(w.get_extra_info("cipher")[0])
    finally:
        w.close()


async def test_weak_tls12_suites_are_refused_and_strong_ones_work(rookery_server):
    port = rookery_server.direct_tls_port
    assert await handshake(port, "ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    # CBC suites (allowed by OpenSSL's and Python's defaults), SHA-1 CBC, no forward secrecy
    for weak in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA",
                 "AES256-GCM-SHA384"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, weak)


async def test_tls_ciphers_setting_is_applied(rookery_server_factory):
    s = rookery_server_factory(tls={"ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"})
    assert await handshake(s.direct_tls_port, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256") \
        == "ECDHE-ECDSA-AES256-GCM-SHA384"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(s.direct_tls_port, "ECDHE-ECDSA-AES128-GCM-SHA256")
