"""Failed logins: per (address, account) first, per address with a higher threshold, an exponential
delay instead of a wall, IPv6 per /64 (streams/auth_limits.py, issue 7 item 7)."""

from rookery.streams.auth_limits import AuthFailureLimiter, address_key


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limiter(clock: Clock, per_ip: int = 20, per_account: int = 3, window: float = 60) -> AuthFailureLimiter:
    return AuthFailureLimiter(per_ip, window, clock, max_per_account=per_account, base_delay=1.0, max_delay=30.0)


def test_per_account_failures_delay_exponentially_and_never_refuse():
    clock = Clock()
    lim = limiter(clock)
    for _ in range(2):
        lim.failed("192.0.2.1", "alice")
    assert lim.delay("192.0.2.1", "alice") == 0
    delays = []
    for _ in range(6):
        lim.failed("192.0.2.1", "alice")
        delays.append(lim.delay("192.0.2.1", "alice"))
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # doubling, capped at max_delay
    # another account from the same address, and the same account elsewhere, are not slowed
    assert lim.delay("192.0.2.1", "bob") == 0
    assert lim.delay("198.51.100.7", "alice") == 0


def test_per_address_threshold_is_much_higher_and_counts_every_account():
    clock = Clock()
    lim = limiter(clock, per_ip=10)
    for i in range(9):
        lim.failed("192.0.2.1", f"user{i}")
    assert lim.delay("192.0.2.1", "someone") == 0
    lim.failed("192.0.2.1", "user9")
    assert lim.delay("192.0.2.1", "someone") == 2.0
    assert lim.delay("192.0.2.1") == 2.0


def test_success_clears_the_account_count_and_counts_expire():
    clock = Clock()
    lim = limiter(clock)
    for _ in range(3):
        lim.failed("192.0.2.1", "alice")
    assert lim.delay("192.0.2.1", "alice") > 0
    lim.succeeded("192.0.2.1", "alice")
    assert lim.delay("192.0.2.1", "alice") == 0
    for _ in range(3):
        lim.failed("192.0.2.1", "alice")
    clock.t += 60
    assert lim.delay("192.0.2.1", "alice") == 0


def test_ipv6_counts_per_64():
    assert address_key("2001:db8:1:2::5") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    clock = Clock()
    lim = limiter(clock)
    for i in range(3):
        lim.failed(f"2001:db8:1:2::{i + 1}", "alice")
    assert lim.delay("2001:db8:1:2:abcd::9", "alice") > 0
    assert lim.delay("2001:db8:1:3::1", "alice") == 0


def test_zero_disables_the_limits():
    lim = AuthFailureLimiter(0, 60, max_per_account=0)
    for _ in range(100):
        lim.failed("192.0.2.1", "alice")
    assert lim.delay("192.0.2.1", "alice") == 0


def test_memory_stays_bounded_by_pruning_expired_entries():
    clock = Clock()
    lim = limiter(clock, window=10)
    for i in range(10001):
        lim.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    clock.t += 11
    lim.failed("192.0.2.9")
    assert len(lim._counts) == 1


def test_blocked_is_the_wall_component_handshakes_use():
    clock = Clock()
    lim = limiter(clock, per_ip=3)
    for _ in range(2):
        lim.failed("192.0.2.1")
    assert not lim.blocked("192.0.2.1")
    lim.failed("192.0.2.1")
    assert lim.blocked("192.0.2.1") and not lim.blocked("192.0.2.2")
    clock.t += 60
    assert not lim.blocked("192.0.2.1")
