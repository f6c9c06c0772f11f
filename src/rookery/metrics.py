"""Prometheus metrics (``[metrics]``, docs/operations.md "Metrics").

Nothing here runs per stanza except a sampled timing of routing: the server keeps plain integer counters
(stanzas in and out by kind, logins) that a collector reads at scrape time, and gauges (sessions,
connections, offline queues, memory, event-loop lag) are computed when scraped.  Histograms use fixed
buckets in plain lists.  Each server has its own ``CollectorRegistry``.

The endpoint is ``[metrics] path`` on ``[metrics] listen`` (its own plain-HTTP listeners) or, when that
is empty, on the ``[http]`` listeners; only addresses in ``[metrics] allow`` may scrape it.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import __version__

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)

#: seconds: routing (sub-millisecond to a storage round trip) and storage transactions
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: one stanza in this many has its routing timed
SAMPLE_EVERY = 16
_KINDS = {"m": "message", "p": "presence", "i": "iq"}


class Histogram:
    """Fixed buckets, plain lists: ``observe`` is a bisect and two additions."""

    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def family(self, name: str, doc: str, labels: dict[str, str] | None = None,
               fam: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
        if fam is None:
            fam = HistogramMetricFamily(name, doc, labels=list(labels or {}))
        cum, buckets = 0, []
        for bound, c in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            cum += c
            buckets.append((bound, cum))
        fam.add_metric(list((labels or {}).values()), buckets, self.total)
        return fam


class Metrics:
    """The server's metrics: counters kept by the server, read when scraped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.routing = Histogram()
        self.storage = {"read": Histogram(), "write": Histogram()}
        self.loop_lag = 0.0  # the last measured delay of a timer, seconds
        self.loop_lag_max = 0.0  # the largest since the last scrape
        self.offline = (0, 0, 0)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        self._seq = 0
        self._lag_task: asyncio.Task[None] | None = None
        self._removers: list[Callable[[], None]] = []
        self._allow = [ipaddress.ip_network(n, strict=False) for n in server.config.metrics.allow]

    # -- wiring -------------------------------------------------------------------------------
    def install(self) -> None:
        """Time routing (sampled) and storage; measure the loop lag."""
        inner = self.server.route
        hist = self.routing

        def route(st: Any) -> Awaitable[Any] | None:
            self._seq += 1
            if self._seq % SAMPLE_EVERY:
                return inner(st)
            t0 = time.perf_counter()
            r = inner(st)
            if r is None:
                hist.observe(time.perf_counter() - t0)
                return None
            return self._timed(r, t0)

        self.server.route = route
        storage = self.server.storage
        if storage is not None and hasattr(storage, "observe"):
            storage.observe = lambda kind, s: self.storage[kind].observe(s)
        self._lag_task = asyncio.get_running_loop().create_task(self._measure_lag())

    async def _timed(self, r: Awaitable[Any], t0: float) -> Any:
        try:
            return await r
        finally:
            self.routing.observe(time.perf_counter() - t0)

    async def _measure_lag(self, interval: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - t0 - interval)
            self.loop_lag = lag
            self.loop_lag_max = max(self.loop_lag_max, lag)

    async def start(self, listen: list[str], http: Any) -> None:
        path = self.server.config.metrics.path
        if listen:
            from .transports.http import HTTPService

            own = HTTPService()
            own.add_route("GET", path, self.handle)
            await own.start(listen, [], None)
            self.server.addresses["metrics"] = own.addresses.get("http", [])
            self._removers.append(lambda: None)
            self._own = own
        else:
            self._removers.append(http.add_route("GET", path, self.handle))

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
        for r in self._removers:
            r()
        own = getattr(self, "_own", None)
        if own is not None:
            await own.stop()

    # -- the endpoint -------------------------------------------------------------------------
    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        try:
            ip = ipaddress.ip_address((request.remote or "").split("%")[0])
        except ValueError:
            ip = None
        if ip is None or not any(ip in n for n in self._allow):
            raise web.HTTPForbidden(text="metrics are not open to your address\n")
        await self.refresh()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def refresh(self) -> None:
        """What needs storage: the offline queues."""
        from .storage.sql import offline_stats

        storage = self.server.storage
        if storage is None:
            return
        try:
            self.offline = await offline_stats(storage)
        except Exception as e:  # metrics must not fail because storage is slow or down
            log.warning("metrics: cannot read the offline queues: %s", e)

    # -- the collector --------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        from .admin import memory_rss

        s = self.server
        info = GaugeMetricFamily("rookery_info", "Rookery version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("rookery_uptime_seconds", "Seconds since the server started",
                                value=time.time() - s.started_at)
        per_domain = dict.fromkeys(s.config.domains, 0)
        for ref in s.sessions.all():
            per_domain[ref.jid.domain] = per_domain.get(ref.jid.domain, 0) + 1
        g = GaugeMetricFamily("rookery_sessions", "Bound client sessions (resources)", labels=["domain"])
        for d, n in per_domain.items():
            g.add_metric([d], n)
        yield g
        yield GaugeMetricFamily("rookery_c2s_connections", "Open client connections", value=len(s.streams))
        c = CounterMetricFamily("rookery_logins", "Logins by result (failed: wrong passwords)", labels=["result"])
        c.add_metric(["ok"], s.auth_limiter.logins_ok)
        c.add_metric(["failed"], s.auth_limiter.logins_failed)
        yield c
        inbound, outbound = s.stanza_counts or ({}, {})
        c = CounterMetricFamily("rookery_stanzas_in", "Stanzas received from clients", labels=["kind"])
        for kind in ("message", "presence", "iq"):
            c.add_metric([kind], inbound.get(kind, 0))
        yield c
        c = CounterMetricFamily("rookery_stanzas_out", "Elements sent to clients (stanzas by kind, other "
                                "stream elements as 'other')", labels=["kind"])
        other = 0
        totals = dict.fromkeys(_KINDS.values(), 0)
        for k, n in list(outbound.items()):
            if k in _KINDS:
                totals[_KINDS[k]] += n
            else:
                other += n
        for kind, n in totals.items():
            c.add_metric([kind], n)
        c.add_metric(["other"], other)
        yield c
        yield self.routing.family("rookery_routing_seconds",
                                  f"Routing time of a stanza from a client (one in {SAMPLE_EVERY} timed)")
        fam = HistogramMetricFamily("rookery_storage_seconds", "Storage transaction time", labels=["kind"])
        for kind, h in self.storage.items():
            h.family("rookery_storage_seconds", "", {"kind": kind}, fam)
        yield fam
        messages, users, longest = self.offline
        yield GaugeMetricFamily("rookery_offline_messages", "Offline messages stored", value=messages)
        yield GaugeMetricFamily("rookery_offline_queues", "Accounts with offline messages", value=users)
        yield GaugeMetricFamily("rookery_offline_queue_max", "The longest offline queue", value=longest)
        yield GaugeMetricFamily("rookery_memory_rss_bytes", "Resident memory", value=memory_rss())
        yield GaugeMetricFamily("rookery_event_loop_lag_seconds", "Delay of a 1 s timer, last measured",
                                value=self.loop_lag)
        yield GaugeMetricFamily("rookery_event_loop_lag_max_seconds", "Largest timer delay since the last scrape",
                                value=self.loop_lag_max)
        self.loop_lag_max = self.loop_lag
