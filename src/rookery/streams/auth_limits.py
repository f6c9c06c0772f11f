"""Failed authentications per IP address (DESIGN.md "Security defaults"; like Prosody's mod_limit_auth).

After ``max_failures`` failed logins from one address within ``window`` seconds, further attempts from
that address are refused at once with ``<temporary-auth-failure/>`` (RFC 6120 §6.5.12) until the window
has passed.  Memory is bounded: expired entries are pruned as the table grows.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_PRUNE_AT = 10000


class AuthFailureLimiter:
    __slots__ = ("max_failures", "window", "_by_ip", "_clock")

    def __init__(self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self._by_ip: dict[str, tuple[float, int]] = {}  # ip -> (window start, failures)
        self._clock = clock

    def blocked(self, ip: str) -> bool:
        if self.max_failures <= 0:
            return False
        entry = self._by_ip.get(ip)
        if entry is None:
            return False
        start, count = entry
        if self._clock() - start >= self.window:
            del self._by_ip[ip]
            return False
        return count >= self.max_failures

    def failed(self, ip: str) -> None:
        if self.max_failures <= 0:
            return
        now = self._clock()
        start, count = self._by_ip.get(ip, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._by_ip[ip] = (start, count + 1)
        if len(self._by_ip) > _PRUNE_AT:
            self._by_ip = {k: v for k, v in self._by_ip.items() if now - v[0] < self.window}
