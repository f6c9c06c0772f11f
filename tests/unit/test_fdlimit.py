"""The server raises its soft open-file limit (RLIMIT_NOFILE) to the hard limit at start, says so,
and says clearly when the limit cannot carry a configured ``[limits] max_connections``."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SOFT = 256


def _hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= SOFT:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to raise")
    return hard


def _run(code: str, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    prog = ("import logging, resource, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout, "
            "format='%(levelname)s %(message)s'); from rookery import fdlimit; " + code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60,
                          preexec_fn=limit, check=True)


def test_soft_limit_raised_to_hard() -> None:
    hard = _hard()
    out = _run("print('SOFT', fdlimit.raise_nofile_limit()); "
               "print('NOW', resource.getrlimit(resource.RLIMIT_NOFILE)[0])", SOFT, hard).stdout
    want = hard if hard != resource.RLIM_INFINITY else 1048576
    assert f"NOW {want}" in out
    assert f"raised the open file limit (RLIMIT_NOFILE) from {SOFT} to {want}" in out
    assert "ERROR" not in out


def test_configured_maximum_over_the_limit_is_an_error() -> None:
    out = _run("print('SOFT', fdlimit.raise_nofile_limit(5000))", 200, 200).stdout
    assert "SOFT 200" in out
    assert "ERROR [limits] max_connections = 5000 needs 5064 open files, but this process may open only 200" in out
    assert "raise the limit" in out
    out = _run("print('SOFT', fdlimit.raise_nofile_limit(100))", 200, 200).stdout
    assert "ERROR" not in out and "raised" not in out  # soft = hard already, 100 + 64 fit


def test_connections_allowed() -> None:
    from rookery import fdlimit

    assert fdlimit.connections_allowed(20000) == 20000 - fdlimit.FD_RESERVE
    assert fdlimit.connections_allowed(10) == 16
    assert fdlimit.connections_allowed(resource.RLIM_INFINITY) == 0


def test_rookery_serve_raises_its_soft_limit(tmp_path: Path) -> None:
    """``rookery serve`` started with a low soft limit runs with soft = hard, and logs it."""
    hard = _hard()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "rookery.toml"
    config.write_text(f'domains = ["localhost"]\ndata_dir = "{tmp_path / "data"}"\nlog_level = "info"\n'
                      f'[c2s]\nlisten = ["127.0.0.1:{port}"]\ndirect_tls_listen = []\n'
                      f'[http]\nlisten = []\ntls_listen = []\n[proxy65]\nlisten = []\n[s2s]\nlisten = []\n')
    log = tmp_path / "serve.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))

    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "rookery", "serve", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, preexec_fn=limit)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "not ready: " + log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        if hard == resource.RLIM_INFINITY:
            assert line.split()[3] != str(SOFT)
        else:
            assert line.split()[3:5] == [want, want], line
        assert f"raised the open file limit (RLIMIT_NOFILE) from {SOFT}" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
