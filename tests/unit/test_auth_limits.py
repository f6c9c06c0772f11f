"""Failed logins per IP (streams/auth_limits.py)."""

from rookery.streams.auth_limits import AuthFailureLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_address_is_blocked_after_max_failures_within_the_window():
    clock = Clock()
    lim = AuthFailureLimiter(3, 60, clock)
    for _ in range(2):
        lim.failed("192.0.2.1")
    assert not lim.blocked("192.0.2.1")
    lim.failed("192.0.2.1")
    assert lim.blocked("192.0.2.1")
    assert not lim.blocked("192.0.2.2")


def test_block_ends_when_the_window_has_passed():
    clock = Clock()
    lim = AuthFailureLimiter(2, 60, clock)
    lim.failed("192.0.2.1")
    lim.failed("192.0.2.1")
    assert lim.blocked("192.0.2.1")
    clock.t += 60
    assert not lim.blocked("192.0.2.1")
    lim.failed("192.0.2.1")
    assert not lim.blocked("192.0.2.1")


def test_zero_disables_the_limit():
    lim = AuthFailureLimiter(0, 60)
    for _ in range(100):
        lim.failed("192.0.2.1")
    assert not lim.blocked("192.0.2.1")


def test_memory_stays_bounded_by_pruning_expired_addresses():
    clock = Clock()
    lim = AuthFailureLimiter(5, 10, clock)
    for i in range(10001):
        lim.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    clock.t += 11
    lim.failed("192.0.2.9")
    assert len(lim._by_ip) == 1
