"""transports.limits: counting connections per address (IPv6 per /64), unauthenticated ones apart."""

from __future__ import annotations

import logging

from rookery.transports.limits import REPORT_EVERY, ConnectionLimiter, address_key


def test_ipv4_counts_per_address_and_ipv6_per_64():
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"  # an IPv4 client on a dual-stack socket
    assert address_key("fe80::1%eth0") == "fe80::/64"


def test_limits_per_address_unauthenticated_and_total():
    lim = ConnectionLimiter(max_total=5, max_per_ip=3, max_unauthenticated_per_ip=2)
    assert [lim.admit("a"), lim.admit("a")] == [None, None]
    assert lim.admit("a") == "max_unauthenticated_per_ip"
    lim.authenticated("a")
    assert lim.admit("a") is None  # one of the two authenticated: room for another
    lim.authenticated("a")
    assert lim.admit("a") == "max_connections_per_ip"  # three from "a" already
    assert [lim.admit("b"), lim.admit("b")] == [None, None]
    assert lim.admit("c") == "max_connections"  # five in all
    lim.released("b", authenticated=False)
    assert lim.admit("c") is None and lim.total == 5
    lim.released("a", authenticated=True)
    lim.released("a", authenticated=True)
    lim.released("a", authenticated=False)
    assert lim.per_ip("a") == 0 and lim.total == 2


def test_zero_means_no_limit():
    lim = ConnectionLimiter(0, 0, 0)
    assert all(lim.admit("a") is None for _ in range(1000))


def test_refusals_are_logged_as_summaries_not_one_line_each(caplog):
    now = [0.0]
    lim = ConnectionLimiter(max_total=1, max_per_ip=0, max_unauthenticated_per_ip=0, clock=lambda: now[0])
    lim.admit("a")
    with caplog.at_level(logging.WARNING, logger="rookery.transports.limits"):
        for _ in range(500):
            lim.admit("x")
        now[0] += REPORT_EVERY
        lim.admit("x")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # the first refusal, then one summary of the next ones
    assert lines[1] == "refused 500 connection(s) over [limits] max_connections"
