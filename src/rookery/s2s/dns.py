"""Where a remote domain's XMPP server is (RFC 6120 §3.2, XEP-0368): static overrides, then DNS SRV
``_xmpps-server._tcp`` (direct TLS) and ``_xmpp-server._tcp`` (STARTTLS) ordered by priority and
weight (RFC 2782), then the domain itself on port 5269.  dnspython's async resolver; no blocking call.
"""

from __future__ import annotations

import logging
import random
from typing import NamedTuple

log = logging.getLogger(__name__)

DEFAULT_PORT = 5269


class Target(NamedTuple):
    host: str
    port: int
    direct_tls: bool


class SRV(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str
    direct_tls: bool


def order_srv(records: list[SRV], rng: random.Random | None = None) -> list[Target]:
    """RFC 2782: lowest priority first; within a priority, a weighted random order (weight 0 records
    have a small chance).  At equal priority, direct TLS (XEP-0368) records go first."""
    rng = rng or random.Random()
    out: list[Target] = []
    for prio in sorted({r.priority for r in records}):
        for direct in (True, False):
            group = [r for r in records if r.priority == prio and r.direct_tls == direct]
            while group:
                total = sum(r.weight for r in group)
                pick = rng.uniform(0, total) if total else 0
                acc = 0
                chosen = group[0]
                for r in group:
                    acc += r.weight
                    if acc >= pick:
                        chosen = r
                        break
                group.remove(chosen)
                out.append(Target(chosen.target, chosen.port, direct))
    return out


def parse_hostport(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def resolve(domain: str, hosts: dict[str, str]) -> list[Target]:
    """The addresses to try, in order (empty: the domain has no XMPP service)."""
    if domain in hosts:
        h, p = parse_hostport(hosts[domain])
        return [Target(h, p, False)]
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    records: list[SRV] = []
    refused = False  # RFC 2782 "." target: the service is decidedly not available
    for service, direct in (("_xmpps-server._tcp.", True), ("_xmpp-server._tcp.", False)):
        try:
            ans = await dns.asyncresolver.resolve(service + domain, "SRV", lifetime=10)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        except dns.exception.DNSException as e:
            log.info("SRV lookup %s%s failed: %s", service, domain, e)
            continue
        for r in ans:
            target = str(r.target).rstrip(".")  # type: ignore[attr-defined]
            if not target:
                refused = refused or not direct
                continue
            records.append(SRV(r.priority, r.weight, r.port, target, direct))  # type: ignore[attr-defined]
    if records:
        return order_srv(records)
    if refused:
        return []
    return [Target(domain, DEFAULT_PORT, False)]
