"""asyncio's TLS connections share one ciphertext read buffer per event-loop thread
(``tls.limit_tls_read_buffers``): never one buffer across threads, which may run loops of their own."""

from __future__ import annotations

import asyncio
import ssl
import threading
from asyncio import sslproto
from typing import Any

from rookery import tls


def _buffers() -> list[Any]:
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        protos = [sslproto.SSLProtocol(loop, asyncio.Protocol(), ctx, None, server_hostname="x") for _ in range(3)]
        return [p._ssl_buffer for p in protos]
    finally:
        loop.close()


def test_one_buffer_per_thread() -> None:
    tls.limit_tls_read_buffers()
    here = _buffers()
    assert here[0] is here[1] is here[2]
    assert len(here[0]) == tls.TLS_READ_BUFFER
    there: list[Any] = []
    t = threading.Thread(target=lambda: there.extend(_buffers()))
    t.start()
    t.join()
    assert there[0] is there[1] and there[0] is not here[0]
