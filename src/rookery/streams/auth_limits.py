"""Failed logins: an exponential delay, never a wall (docs/security.md "Password guessing").

Only wrong passwords count (a wrong SCRAM proof, a wrong PLAIN or XEP-0078 password): not an
unsupported mechanism, not a channel-binding negotiation that fails (clients such as slixmpp try
channel-binding variants first), not an exchange abandoned before the proof.  Failures are counted per
(address, account) — ``max_per_account`` — and per address with a much higher threshold —
``max_per_ip`` —, an IPv6 address by its /64.  Over a threshold, each further attempt from there waits
``base_delay * 2**(failures over it)`` seconds (at most ``max_delay``) before it is checked, right or
wrong: guessing slows down exponentially, and an honest user who mistyped waits a few seconds, then
logs in.  A successful login clears its (address, account) count; counts expire ``window`` seconds
after the last failure.  Memory is bounded: expired entries are pruned as the table grows.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

_PRUNE_AT = 10000
log = logging.getLogger("rookery.auth")


@lru_cache(maxsize=4096)  # a login asks more than once, and ipaddress parsing costs ~5 us
def address_key(ip: str) -> str:
    """The unit counted: the address itself, or its /64 for IPv6 (an IPv4-mapped one as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class AuthFailureLimiter:
    __slots__ = ("max_per_ip", "max_per_account", "window", "base_delay", "max_delay", "_counts", "_clock",
                 "logins_ok", "logins_failed")

    def __init__(self, max_per_ip: int, window: float, clock: Callable[[], float] = time.monotonic, *,
                 max_per_account: int = 5, base_delay: float = 1.0, max_delay: float = 60.0) -> None:
        self.max_per_ip = max_per_ip
        self.max_per_account = max_per_account
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        #: key -> (time of the last failure, failures); keys: "ip" and "ip account"
        self._counts: dict[str, tuple[float, int]] = {}
        self._clock = clock
        #: totals since start, for metrics
        self.logins_ok = 0
        self.logins_failed = 0

    def configure(self, c2s: Any) -> None:
        """Take the ``[c2s]`` settings (at start and on reload)."""
        self.max_per_ip = c2s.max_auth_failures_per_ip
        self.max_per_account = c2s.max_auth_failures_per_account
        self.window = c2s.auth_failure_window
        self.base_delay = max(c2s.auth_failure_delay, 0.1)
        self.max_delay = c2s.auth_max_delay

    def _get(self, key: str, now: float) -> int:
        e = self._counts.get(key)
        if e is None:
            return 0
        if now - e[0] >= self.window:
            del self._counts[key]
            return 0
        return e[1]

    def delay(self, ip: str, account: str | None = None) -> float:
        """Seconds the next attempt from ``ip`` (for ``account``) waits before it is checked (0: none)."""
        if not self._counts:
            return 0.0
        now = self._clock()
        k = address_key(ip)
        over = 0
        if self.max_per_ip > 0:
            over = self._get(k, now) - self.max_per_ip + 1
        if account is not None and self.max_per_account > 0:
            over = max(over, self._get(f"{k} {account}", now) - self.max_per_account + 1)
        if over <= 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(over, 32)))

    def blocked(self, ip: str) -> bool:
        """A wall, for machines rather than people (XEP-0114 component handshakes): ``max_per_ip``
        failures from ``ip`` within the window."""
        if self.max_per_ip <= 0 or not self._counts:
            return False
        return self._get(address_key(ip), self._clock()) >= self.max_per_ip

    def failed(self, ip: str, account: str | None = None) -> None:
        """A wrong password from ``ip`` for ``account``."""
        self.logins_failed += 1
        now = self._clock()
        k = address_key(ip)
        keys = [k] if account is None else [k, f"{k} {account}"]
        for key, limit in zip(keys, (self.max_per_ip, self.max_per_account), strict=False):
            if limit <= 0:
                continue
            n = self._get(key, now) + 1
            self._counts[key] = (now, n)
            if n == limit:
                log.warning("login throttled: %d failed logins from %s%s; further attempts are delayed "
                            "(up to %g s) for %g s", n, k, f" for {account}" if key != k else "",
                            self.max_delay, self.window)
        if len(self._counts) > _PRUNE_AT:
            self._counts = {key: v for key, v in self._counts.items() if now - v[0] < self.window}

    def succeeded(self, ip: str, account: str) -> None:
        self.logins_ok += 1
        self._counts.pop(f"{address_key(ip)} {account}", None)
