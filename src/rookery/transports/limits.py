"""Connection limits (issue F1; XEP-0205 "Best Practices to Discourage Denial of Service Attacks" §3):
how many connections the server holds in all, per client address, and per address before they
authenticate.  A connection over a limit is closed at once, before any stream is read.

IPv4 addresses count one by one; IPv6 addresses count per /64 (one host usually owns a whole /64).
Refusals are logged as one summary line per reason at most every ``REPORT_EVERY`` seconds, never one
line per connection (a flood must not become a log flood).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from functools import lru_cache

log = logging.getLogger(__name__)

REPORT_EVERY = 10.0


@lru_cache(maxsize=4096)  # a login asks more than once, and ipaddress parsing costs ~5 us
def address_key(ip: str) -> str:
    """The unit a per-address limit counts: the address itself, or its /64 for IPv6."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if addr.version == 6:
        mapped = addr.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class ConnectionLimiter:
    """Counts open connections; ``admit`` says whether one more may stay.  0 means no limit."""

    __slots__ = ("max_total", "max_per_ip", "max_unauthenticated_per_ip", "total", "_per_ip", "_unauth",
                 "_refused", "_reported", "_clock")

    def __init__(self, max_total: int, max_per_ip: int, max_unauthenticated_per_ip: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_unauthenticated_per_ip = max_unauthenticated_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}
        self._unauth: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # reason -> refusals since the last report
        self._clock = clock
        self._reported = clock() - REPORT_EVERY  # the first refusal is reported at once

    def admit(self, key: str) -> str | None:
        """Count a new connection from ``key`` (see ``address_key``); the reason when it must be closed."""
        reason = None
        if self.max_total and self.total >= self.max_total:
            reason = "max_connections"
        elif self.max_per_ip and self._per_ip.get(key, 0) >= self.max_per_ip:
            reason = "max_connections_per_ip"
        elif self.max_unauthenticated_per_ip and self._unauth.get(key, 0) >= self.max_unauthenticated_per_ip:
            reason = "max_unauthenticated_per_ip"
        if reason is not None:
            self._refusal(reason)
            return reason
        self.total += 1
        self._per_ip[key] = self._per_ip.get(key, 0) + 1
        self._unauth[key] = self._unauth.get(key, 0) + 1
        return None

    def authenticated(self, key: str) -> None:
        """An admitted connection authenticated: it no longer counts as unauthenticated."""
        _dec(self._unauth, key)

    def released(self, key: str, authenticated: bool) -> None:
        """An admitted connection closed."""
        self.total -= 1
        _dec(self._per_ip, key)
        if not authenticated:
            _dec(self._unauth, key)

    def per_ip(self, key: str) -> int:
        return self._per_ip.get(key, 0)

    def _refusal(self, reason: str) -> None:
        self._refused[reason] = self._refused.get(reason, 0) + 1
        now = self._clock()
        if now - self._reported >= REPORT_EVERY:
            for r, n in sorted(self._refused.items()):
                log.warning("refused %d connection(s) over [limits] %s", n, r)
            self._refused.clear()
            self._reported = now


def _dec(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


class DrainWaiters:
    """Those waiting for a transport's send buffer to drain below its mark (``Transport.writable``):
    ``wait()`` parks until ``release()`` (the buffer drained, or the connection is gone).  The event
    exists only while someone waits."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    async def wait(self) -> None:
        if self._event is None or self._event.is_set():
            self._event = asyncio.Event()
        await self._event.wait()

    def release(self) -> None:
        if self._event is not None:
            self._event.set()
