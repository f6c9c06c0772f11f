"""Prometheus metrics (issue 7 item 5): a real server, real clients, the endpoint scraped over HTTP and
parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cli import assert_one_line_error, cli, write_config
from xmpp_helpers import RawClient, tls_login


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_scrape_on_its_own_listener_counts_sessions_logins_stanzas_and_more(rookery_server_factory):
    s = rookery_server_factory(metrics={"listen": ["127.0.0.1:0"]})
    port = s.server.addresses["metrics"][0][1]
    url = f"http://127.0.0.1:{port}/metrics"
    before = await asyncio.to_thread(scrape, url)
    assert before[("rookery_sessions", (("domain", "localhost"),))] == 0
    a_jid, a_pw = s.make_user()
    b_jid, _ = s.make_user()
    a = await tls_login(s, a_jid, a_pw)
    bad = await RawClient().connect(s.direct_tls_port, tls=True)
    await bad.open_stream()
    assert (await bad.auth_plain(a_jid.split("@")[0], "wrong")).tag.endswith("failure")
    await bad.close()
    for i in range(40):  # to an offline contact: offline storage, sampled routing times
        a.send(f"<message to='{b_jid}' id='m{i}' type='chat'><body>hi {i}</body></message>")
    await a.iq("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    await asyncio.sleep(0.3)
    m = await asyncio.to_thread(scrape, url)
    assert m[("rookery_sessions", (("domain", "localhost"),))] == 1
    assert m[("rookery_c2s_connections", ())] >= 1
    assert m[("rookery_logins_total", (("result", "ok"),))] >= 1
    assert m[("rookery_logins_total", (("result", "failed"),))] == 1
    assert m[("rookery_stanzas_in_total", (("kind", "message"),))] == 40
    assert m[("rookery_stanzas_in_total", (("kind", "iq"),))] >= 1  # the ping (bind comes before the session)
    assert m[("rookery_stanzas_out_total", (("kind", "iq"),))] >= 2
    assert m[("rookery_routing_seconds_count", ())] >= 40 // 16
    assert m[("rookery_routing_seconds_bucket", (("le", "+Inf"),))] == m[("rookery_routing_seconds_count", ())]
    assert m[("rookery_storage_seconds_count", (("kind", "write"),))] >= 1
    assert m[("rookery_offline_messages", ())] == 40 and m[("rookery_offline_queues", ())] == 1
    assert m[("rookery_offline_queue_max", ())] == 40
    assert m[("rookery_memory_rss_bytes", ())] > 1_000_000
    assert 0 <= m[("rookery_event_loop_lag_seconds", ())] < 5
    assert m[("rookery_uptime_seconds", ())] >= 0
    await a.close()


async def test_metrics_on_the_http_listener_and_only_for_allowed_addresses(rookery_server_factory):
    s = rookery_server_factory(metrics={"enabled": True, "path": "/stats/prometheus"})
    m = await asyncio.to_thread(scrape, f"{s.http_url}/stats/prometheus")
    assert ("rookery_info", (("version", __import__("rookery").__version__),)) in m
    closed = rookery_server_factory(metrics={"enabled": True, "allow": ["192.0.2.0/24"]})
    with pytest.raises(urllib.error.HTTPError) as e:
        await asyncio.to_thread(scrape, f"{closed.http_url}/metrics")
    assert e.value.code == 403


async def test_metrics_are_off_by_default(rookery_server):
    with pytest.raises(urllib.error.HTTPError) as e:
        await asyncio.to_thread(scrape, f"{rookery_server.http_url}/metrics")
    assert e.value.code == 404
    assert rookery_server.server.metrics is None


def test_bad_metrics_settings_stop_start_up_naming_the_key(tmp_path):
    for text, key in (('[metrics]\nlisten = ["nope"]', "metrics.listen"),
                      ('[metrics]\nallow = ["not-a-net"]', "metrics.allow"),
                      ('[metrics]\npath = "metrics"', "metrics.path")):
        r = cli("check", "-c", write_config(tmp_path, text))
        assert_one_line_error(r.returncode, r.stdout, r.stderr, key)
