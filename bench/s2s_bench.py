#!/usr/bin/env python3
"""Federation benchmark: two Rookery servers federated on loopback, messages across the s2s link.

    PYTHONPATH=src .venv/bin/python bench/s2s_bench.py --pairs 20 --duration 10 --rate 2000

Starts ``rookery serve`` twice (domains ``a.bench`` and ``b.bench``, each on its own c2s and s2s port,
finding each other through ``[s2s] hosts``; self-signed certificates, so the link authenticates with
dialback), creates the accounts in their storage, then runs ``xmppload.py``'s throughput and latency
phases with every pair split across the two servers: user ``bench<2k>`` on a.bench talks to
``bench<2k+1>`` on b.bench, both ways.  Result (JSON on stdout): ``msgs_per_s`` delivered across the link
(the window-limited flood, both directions) and ``p50_ms``/``p99_ms`` at ``--rate`` messages/s in total.
The servers are stopped (by PID) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import xmppload  # noqa: E402

_side: contextvars.ContextVar[argparse.Namespace] = contextvars.ContextVar("side")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S2SBench(xmppload.Bench):
    """xmppload's Bench with even sessions on server A and odd ones on server B."""

    sides: list[argparse.Namespace]

    @property  # type: ignore[override]
    def args(self) -> argparse.Namespace:
        return _side.get(self._base)

    @args.setter
    def args(self, v: argparse.Namespace) -> None:
        self._base = v

    async def login(self, idx: int) -> xmppload.Conn:
        tok = _side.set(self.sides[idx % 2])
        try:
            return await super().login(idx)
        finally:
            _side.reset(tok)


def write_config(d: Path, domain: str, c2s: int, s2s: int, peer: str, peer_s2s: int) -> Path:
    (d / domain).mkdir(parents=True, exist_ok=True)
    p = d / f"{domain}.toml"
    p.write_text(f"""
domains = ["{domain}"]
data_dir = "{d / domain}"
modules = ["roster", "presence", "disco", "ping"]
log_level = "warning"
[c2s]
listen = ["127.0.0.1:{c2s}"]
direct_tls_listen = []
require_encryption = false
allow_plaintext_auth = true
max_bytes_per_second = 0
[s2s]
listen = ["127.0.0.1:{s2s}"]
hosts = {{ "{peer}" = "127.0.0.1:{peer_s2s}" }}
[http]
listen = []
tls_listen = []
[limits]
max_connections_per_ip = 0
max_unauthenticated_per_ip = 0
""")
    return p


async def make_users(config: Path, names: list[str], password: str) -> None:
    from rookery.config import load_config
    from rookery.storage.sql import make_storage
    from rookery.streams.sasl import make_credentials

    cfg = load_config(str(config))
    st = make_storage(cfg.storage, str(cfg.data_path()), offline_limit=100)
    await st.open()
    try:
        for n in names:
            await st.accounts.create(cfg.domains[0], n, make_credentials(password, iterations=4096))
    finally:
        await st.close()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def run(args: argparse.Namespace, ports: dict[str, int], pid: int) -> dict[str, Any]:
    n = args.pairs * 2
    base = xmppload.parse_args(["--connections", str(n), "--clients", str(n), "--duration", str(args.duration),
                                "--rate", str(args.rate), "--window", str(args.window), "--mechanisms", "PLAIN",
                                "--settle", "0", "--label", "rookery-s2s", "--server-pid", str(pid), "-q"])
    xmppload.QUIET = True
    sides = []
    for domain in ("a.bench", "b.bench"):
        s = copy.copy(base)
        s.domain, s.port = domain, ports[domain]
        sides.append(s)
    bench = S2SBench(base)
    bench.sides = sides
    # warm the link up (connections opened and authenticated both ways) before measuring
    await bench.run()
    await bench.close_all()
    r = bench.result
    r["errors"] = sum(bench.errors.values())
    r["error_kinds"] = dict(bench.errors)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20, help="user pairs, each split across the two servers")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="messages/s in the latency phase")
    ap.add_argument("--window", type=int, default=100)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="rookery-s2s-bench-"))
    ports = {"a.bench": free_port(), "b.bench": free_port()}
    s2s = {"a.bench": free_port(), "b.bench": free_port()}
    cfg_a = write_config(d, "a.bench", ports["a.bench"], s2s["a.bench"], "b.bench", s2s["b.bench"])
    cfg_b = write_config(d, "b.bench", ports["b.bench"], s2s["b.bench"], "a.bench", s2s["a.bench"])
    names = [f"bench{i}" for i in range(args.pairs * 2)]
    asyncio.run(make_users(cfg_a, names[0::2], "secret"))
    asyncio.run(make_users(cfg_b, names[1::2], "secret"))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    procs = [subprocess.Popen([sys.executable, "-m", "rookery", "--config", str(c), "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(d / f"{c.stem}.log", "wb"))
             for c in (cfg_a, cfg_b)]
    try:
        for p, port in zip(procs, ports.values(), strict=True):
            wait_port(port, p)
        result = asyncio.run(run(args, ports, procs[0].pid))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    if result.get("logins_ok") != args.pairs * 2:
        print(f"only {result.get('logins_ok')} of {args.pairs * 2} logins: see the logs in {d}", file=sys.stderr)
    keep = {k: result.get(k) for k in ("logins_ok", "msgs_per_s", "latency_rate", "latency_sent", "p50_ms",
                                        "p90_ms", "p99_ms", "max_ms", "errors", "error_kinds",
                                        "msgs_server_cpu_pct", "latency_server_cpu_pct")}
    print(json.dumps(keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
