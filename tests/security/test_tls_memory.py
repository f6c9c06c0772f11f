"""Issue F3: a TLS connection must not cost the server ~20× a plain one (asyncio's 256 KiB read buffer
per TLS connection).  A bounded run of ``bench/attack/tls_memory.py`` against ``rookery serve`` in its
own process: server RSS growth per idle connection, plain vs STARTTLS vs direct TLS."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("tls_memory", ROOT / "bench" / "attack" / "tls_memory.py")
assert spec is not None and spec.loader is not None
tls_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tls_memory)

N = 100


def test_idle_tls_connection_memory(tmp_path: Path) -> None:
    c2s, direct = tls_memory.free_port(), tls_memory.free_port()
    cfg = tmp_path / "rookery.toml"
    cfg.write_text(f'domains = ["localhost"]\ndata_dir = "{tmp_path}/data"\nlog_level = "warning"\nworkers = 1\n'
                   f'[c2s]\nlisten = ["127.0.0.1:{c2s}"]\ndirect_tls_listen = ["127.0.0.1:{direct}"]\n'
                   f'[http]\nlisten = []\ntls_listen = []\n'
                   f'[limits]\nmax_connections_per_ip = 0\nmax_unauthenticated_per_ip = 0\n')
    proc = subprocess.Popen([sys.executable, "-m", "rookery", "serve", "--config", str(cfg)],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "rookery serve exited"
            try:
                socket.create_connection(("127.0.0.1", c2s), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "rookery serve not ready in 30 s"
                time.sleep(0.05)
        per = {kind: asyncio.run(tls_memory.measure(kind, N, proc.pid, c2s, direct))
               for kind in ("plain", "starttls", "direct")}
    finally:
        proc.terminate()
        proc.wait(10)
    # measured: plain ~14 KiB, TLS ~43 KiB (it was ~280 KiB with asyncio's default buffer)
    assert per["plain"] < 40, per
    assert per["starttls"] < 90 and per["direct"] < 90, per
