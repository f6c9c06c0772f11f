"""Smoke test of ``bench/compare`` (docs/performance.md, "Side by side with Prosody and ejabberd"): a short
Rookery-only run in its own state directory and port must print the table and write JSON with real,
non-zero figures (logins/s, msgs/s over TCP and STARTTLS, latency, KiB per connection)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_compare_quick_rookery(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    offset = free_port() - 29222  # bench/compare's Rookery port is 29222 + --port-offset
    cmd = [sys.executable, str(ROOT / "bench" / "compare"), "--servers", "rookery", "--modes", "pinned",
           "--quick", "--repeat", "1", "--connections", "60,120", "--duration", "1", "--no-install",
           "--rookery-python", sys.executable, "--state", str(tmp_path / "state"),
           "--port-offset", str(offset), "--json", str(out)]
    if (os.cpu_count() or 1) < 2:
        cmd[cmd.index("pinned")] = "unpinned"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| Rookery |" in r.stdout and "logins/s" in r.stdout, r.stdout
    doc = json.loads(out.read_text())
    mode = doc["settings"]["modes"][0]
    m = doc["summary"]["rookery"][mode]
    assert not m["failed"], m
    for key in ("logins_per_s", "msgs_tcp", "msgs_tls", "p50_ms", "p99_ms", "kib_60", "kib_120"):
        assert isinstance(m[key], (int, float)) and m[key] > 0, (key, m)
    assert m["errors"] == 0, doc["runs"]
    assert doc["versions"]["rookery"].startswith("Rookery")
    # the table row of logins/s carries the same median
    row = next(line for line in doc["table"].splitlines() if "logins/s" in line)
    assert row.split("|")[3].strip() not in ("-", "failed", "0")
