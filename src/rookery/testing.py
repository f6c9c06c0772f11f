"""A pytest plugin that runs a real Rookery server for tests (yours too: ``pip install rookery``).

The server runs in a background thread with its own event loop, on free loopback ports, with its data
in a temporary directory, so test code and clients (slixmpp, raw sockets) are independent of it::

    def test_my_bot(rookery_server):
        jid, password = rookery_server.make_user()
        ... connect to ("127.0.0.1", rookery_server.c2s_port) ...

``rookery_server_factory(**overrides)`` starts one with other settings, e.g.
``rookery_server_factory(c2s={"legacy_auth": True})``; with ``workers=2`` (or more) it runs
``rookery serve`` with that many worker processes in a child process (``ProcessServer``: the same
ports, ``make_user`` and ``server.storage``; no access to the server's objects).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from .config import Config

_counter = itertools.count()


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class RunningServer:
    """A server in a thread.  ``call(coro_fn)`` runs a coroutine function on the server's loop."""

    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None:
        base = {
            "domains": ["localhost"],
            "data_dir": str(data_dir),
            # tests log in wrongly on purpose, all from 127.0.0.1: the per-IP limit is set out of reach
            "c2s": {"listen": ["127.0.0.1:0"], "direct_tls_listen": ["127.0.0.1:0"],
                    "auth_failure_delay": 0.1, "keepalive_interval": 0, "max_auth_failures_per_ip": 10000},
            # every test client comes from 127.0.0.1: per-address connection limits out of reach too
            "limits": {"max_connections_per_ip": 0, "max_unauthenticated_per_ip": 0},
            "http": {"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
            # listened on only when a test configures [components] secrets
            "components": {"listen": ["127.0.0.1:0"]},
            # the SOCKS5 bytestreams proxy (XEP-0065) on a free port too
            "proxy65": {"listen": ["127.0.0.1:0"]},
        }
        self.config = Config.model_validate(_merge(base, settings))
        self.data_dir = data_dir
        self.domain = self.config.domains[0]
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rookery-server", daemon=True)
        self.server: Any = None

    def start(self) -> RunningServer:
        from .server import Server

        self._thread.start()
        self.server = Server(self.config)
        self.call(self.server.start, timeout=60)
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
        async def run() -> Any:
            return await fn(*args)

        fut: Future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return fut.result(timeout)

    def call_sync(self, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self.call(run, timeout=timeout)

    @property
    def c2s_port(self) -> int:
        return self.server.addresses["c2s"][0][1]

    @property
    def direct_tls_port(self) -> int:
        return self.server.addresses["c2s_direct_tls"][0][1]

    @property
    def s2s_port(self) -> int:
        return self.server.addresses["s2s"][0][1]

    @property
    def http_port(self) -> int:
        return self.server.addresses["http"][0][1]

    @property
    def https_port(self) -> int:
        return self.server.addresses["https"][0][1]

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the plain HTTP listener."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def component_port(self) -> int:
        """The XEP-0114 component port (the server must have ``components={"secrets": {...}}``)."""
        return self.server.addresses["component"][0][1]

    @property
    def cert_path(self) -> Path:
        return self.server.cert_path

    def make_user(self, name: str | None = None, password: str | None = None) -> tuple[str, str]:
        """Create an account (unique name by default); returns (bare JID, password)."""
        from .streams.sasl import make_credentials

        name = name or f"u{next(_counter)}x{secrets.token_hex(3)}"
        password = password or secrets.token_urlsafe(12)
        creds = make_credentials(password, iterations=4096)
        ok = self.call(self.server.storage.accounts.create, self.domain, name, creds)
        if not ok:
            raise ValueError(f"user {name} exists")
        return f"{name}@{self.domain}", password

    def session_count(self) -> int:
        return self.call_sync(self.server.sessions.count)

    def stop(self) -> None:
        try:
            self.call(self.server.stop, timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


class ProcessServer(RunningServer):
    """``rookery serve`` in a child process — with ``workers`` > 1, a supervisor and its workers
    (issue 12) — with the interface of ``RunningServer``: ports come from ``rookery status`` (the
    control socket), ``make_user`` and ``server.storage`` use the same database from a storage
    opened in the test process (``call`` runs on its loop)."""

    def __init__(self, settings: dict[str, Any], data_dir: Path) -> None:
        settings = {"workers": 2, **settings}
        super().__init__(settings, data_dir)
        self.proc: Any = None
        self.status: dict[str, Any] = {}
        self.log_path = data_dir / "serve.log"

    def start(self) -> ProcessServer:
        import json
        import subprocess
        import sys
        import time
        import types

        from .control import NotRunning, request
        from .storage.sql import make_storage

        cfg = self.config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        path = self.data_dir / "rookery.json.toml"
        path.write_text(_toml(cfg))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open while the server runs)
        self.proc = subprocess.Popen([sys.executable, "-m", "rookery", "serve", "--config", str(path)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        count = self.config.worker_count()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rookery serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                st = request(self.data_dir, {"op": "status"}, timeout=5)
                w = st.get("workers") or {}
                if len(w.get("connected", [0])) == count:
                    self.status = st
                    break
            except (NotRunning, OSError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rookery serve did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        self._thread.start()
        storage = make_storage(self.config.storage, str(self.config.data_path()))
        self.call(storage.open, timeout=60)
        addresses = {k: [(a.rpartition(":")[0].strip("[]"), int(a.rpartition(":")[2])) for a in v]
                     for k, v in st["listeners"].items()}
        self.server = types.SimpleNamespace(storage=storage, addresses=addresses,
                                            cert_path=self.config.data_path() / "tls" / "rookery.crt")
        return self

    def session_count(self) -> int:
        from .control import request

        return int(sum(request(self.data_dir, {"op": "status"}, timeout=10)["sessions"].values()))

    def stop(self) -> None:
        import signal

        if self.server is not None:
            try:
                self.call(self.server.storage.close, timeout=30)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)
                self.loop.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _toml(d: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the settings of ``ProcessServer`` (tables, arrays, strings, numbers)."""
    import json

    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{json.dumps(k)} = {json.dumps(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)
        out += f"\n[{name}]\n" + _toml(v, name)
    return out


@pytest.fixture
def rookery_server_factory() -> Iterator[Callable[..., RunningServer]]:
    started: list[tuple[RunningServer, str]] = []

    def make(**settings: Any) -> RunningServer:
        d = tempfile.mkdtemp(prefix="rookery-test-")
        # workers > 1: ``rookery serve`` in a child process (ProcessServer); else a server in a thread
        many = settings.get("workers", 1) not in (1, None)
        s = (ProcessServer(settings, Path(d)) if many else RunningServer(settings, Path(d))).start()
        started.append((s, d))
        return s

    yield make
    for s, d in started:
        s.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def rookery_server() -> Iterator[RunningServer]:
    """One server per test module, default settings (users are unique per ``make_user`` call)."""
    d = tempfile.mkdtemp(prefix="rookery-test-")
    s = RunningServer({}, Path(d)).start()
    yield s
    s.stop()
    shutil.rmtree(d, ignore_errors=True)
