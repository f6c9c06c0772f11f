"""Serving processes: one, or a supervising parent and ``workers`` worker processes (issue 12).

``workers = 1`` serves in the process that runs ``rookery serve`` (``serve_process``).  With more, that
process becomes the **supervisor**: it prepares what must exist once (data directory, database schema,
server secret, certificates), binds the client and server-to-server listeners itself, starts N worker
processes (``python -m rookery.workers``), and hands each accepted connection to the next ready
worker in turn (the descriptor passes over a Unix socket pair, ``SCM_RIGHTS``), so every worker takes
its share and a worker that is down takes none.  It restarts a worker that dies (with a back-off when
one keeps dying), forwards SIGHUP (reload) and SIGUSR1 (reopen logs) to the workers, and on SIGTERM
or SIGINT stops them all (each closes its streams with ``<system-shutdown/>``).

Workers reach each other through ``cluster/`` (session directory + stanza link).  Worker 0 is also the
home of what exists once: the HTTP listeners, external components, the internal services
(``conference.D``, ``pubsub.D``, ``upload.D``, ``proxy.D``: their stanzas are routed to worker 0 from
every other worker), metrics and the control socket (``rookery status``, ``deluser`` …).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import DISPATCHED
from .config import Config

log = logging.getLogger("rookery.workers")

READY = b"ready"
STOP_TIMEOUT = 20.0


@dataclass
class WorkerPlace:
    """Where a worker stands in the cluster (``Server(cluster=...)``)."""

    index: int
    count: int
    sockets: Path  # the directory of the link sockets
    channel: socket.socket | None = None  # hand-over channel from the supervisor
    #: (kind, host, port) of the supervisor's listeners (``rookery status`` shows them)
    listeners: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def primary(self) -> bool:
        return self.index == 0


def event_loop_runner(choice: str) -> Any:
    """``asyncio.run`` or ``uvloop.run`` for the ``event_loop`` setting: "auto" takes uvloop when it
    is importable (a dependency; its TLS layer is compiled, asyncio's is pure Python:
    docs/performance.md), "uvloop" requires it (ValueError without), "asyncio" never uses it."""
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError('event_loop = "uvloop": uvloop is not installed (pip install uvloop)') from None
        return asyncio.run
    return uvloop.run


async def serve_process(cfg: Config, config_path: str | None, place: WorkerPlace | None = None) -> int:
    """Run one serving process until SIGTERM/SIGINT: the whole server, or one worker of it.
    Raises ``OSError``/``SQLAlchemyError`` when it cannot start."""
    from . import logsetup
    from .config import ConfigError
    from .server import Server

    server = Server(cfg, cluster=place)
    server.config_path = config_path
    server.manage_logging = True
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def reload() -> None:
        try:
            await server.reload()
        except (ConfigError, OSError, ValueError) as e:
            log.error("reload failed, nothing changed: %s", e)

    # SIGHUP is `rookery reload` (never a kill); SIGUSR1 reopens the log file (logrotate)
    loop.add_signal_handler(signal.SIGHUP, lambda: server.spawn(reload()))
    loop.add_signal_handler(signal.SIGUSR1, logsetup.reopen)
    try:
        await server.start()
    except BaseException:
        await server.stop(timeout=0)
        raise
    if place is not None and place.channel is not None:
        place.channel.send(READY)
    # Start-up objects (imported code, modules, config) live as long as the process: move them out of
    # the cyclic collector's reach so that its full collections stay short (latency, docs/performance.md).
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    return 0


# -- the supervisor ------------------------------------------------------------------------------
def _bind(spec: str, kind: str) -> list[socket.socket]:
    from .transports.tcp import parse_listen

    host, port = parse_listen(spec)
    out: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen = set()
        for family, stype, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, stype, proto)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(4096)
            s.setblocking(False)
            if port == 0:  # one port for every address of this spec
                port = s.getsockname()[1]
    except OSError as e:
        for s in out:
            s.close()
        why = str(e.strerror or e)
        raise OSError(f"cannot listen on {spec} ({kind}): {why[:1].lower()}{why[1:]}") from None
    return out


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.ready = False
        self.started = 0.0
        self.failures = 0  # quick deaths in a row (back-off)
        self.restart_at = 0.0
        self.ever_ready = False


class Supervisor:
    def __init__(self, cfg: Config, config_path: str | None, count: int) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.count = count
        self.workers = [_Worker(i) for i in range(count)]
        self.listeners: list[tuple[int, socket.socket]] = []  # (kind index, socket)
        self.addresses: list[tuple[str, str, int]] = []
        self.sockets = cfg.data_path() / "cluster"
        self._next = 0
        self._stopping = False
        self._accept_on = False
        self.failed = False

    async def prepare(self) -> None:
        """What exists once, before any worker starts (workers would race to create it)."""
        from . import fdlimit, server_secret, tls

        # every accepted connection passes through here (and the workers inherit the limit, which
        # each raises for itself too)
        fdlimit.raise_nofile_limit(self.cfg.limits.max_connections)
        from .storage.sql import make_storage

        data_dir = self.cfg.data_path()
        data_dir.mkdir(parents=True, exist_ok=True)
        storage = make_storage(self.cfg.storage, str(data_dir), offline_limit=self.cfg.offline_limit)
        await storage.open()  # creates or migrates the schema
        await storage.close()
        server_secret.load_or_create(data_dir)
        tls.TLSManager(self.cfg, data_dir).load()  # a self-signed certificate is made once
        self.sockets.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.sockets, 0o700)
        c, s = self.cfg.c2s, self.cfg.s2s
        specs: list[tuple[int, list[str]]] = [(0, c.listen), (1, c.direct_tls_listen)]
        if s.enabled:
            specs += [(2, s.listen), (3, s.direct_tls_listen)]
        for kind, lst in specs:
            for spec in lst:
                for sock in _bind(spec, DISPATCHED[kind]):
                    self.listeners.append((kind, sock))
                    addr = sock.getsockname()
                    self.addresses.append((DISPATCHED[kind], addr[0], addr[1]))
                    log.info("%s listening on %s:%s (%d workers)", DISPATCHED[kind], addr[0], addr[1], self.count)

    def _spawn(self, w: _Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "rookery.workers", "--index", str(w.index), "--count", str(self.count),
               "--channel", str(child.fileno()), "--sockets", str(self.sockets),
               "--listeners", json.dumps(self.addresses), "--supervisor", str(os.getpid())]
        if self.config_path is not None:
            cmd += ["--config", self.config_path]
        w.proc = subprocess.Popen(cmd, pass_fds=[child.fileno()], start_new_session=False)
        child.close()
        parent.setblocking(False)
        w.channel = parent
        w.ready = False
        w.started = time.monotonic()
        loop = asyncio.get_running_loop()
        loop.add_reader(parent.fileno(), self._from_worker, w)
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _from_worker(self, w: _Worker) -> None:
        assert w.channel is not None
        try:
            msg = w.channel.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if msg == READY:
            w.ready = w.ever_ready = True
            w.failures = 0
            log.info("worker %d ready", w.index)
            self._accepting(True)
        elif not msg:  # the worker is gone; _watch restarts it
            self._drop_channel(w)

    def _accepting(self, ready: bool) -> None:
        """Accept while a worker is ready to take connections; meanwhile they wait in the backlog."""
        want = ready or any(w.ready for w in self.workers)
        if want == self._accept_on or self._stopping:
            return
        self._accept_on = want
        loop = asyncio.get_running_loop()
        for kind, lsock in self.listeners:
            if want:
                loop.add_reader(lsock.fileno(), self._accept, kind, lsock)
            else:
                loop.remove_reader(lsock.fileno())

    def _drop_channel(self, w: _Worker) -> None:
        w.ready = False
        if w.channel is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(w.channel.fileno())
            w.channel.close()
            w.channel = None
        self._accepting(False)

    def _accept(self, kind: int, lsock: socket.socket) -> None:
        for _ in range(256):  # bounded per wake-up: the other listeners get their turn
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE …: retried when the socket is readable again
                log.warning("accept failed: %s", e.strerror or e)
                return
            with conn:
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._hand_over(kind, conn)

    def _hand_over(self, kind: int, conn: socket.socket) -> None:
        n = self.count
        for step in range(n):
            w = self.workers[(self._next + step) % n]
            if not w.ready or w.channel is None:
                continue
            try:
                socket.send_fds(w.channel, [bytes([kind])], [conn.fileno()])
            except OSError as e:
                log.warning("worker %d did not take a connection (%s)", w.index, e.strerror or e)
                continue
            self._next = (w.index + 1) % n
            return
        log.warning("no worker ready: connection closed")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGUSR1, self._signal_all, signal.SIGUSR1)
        for w in self.workers:
            self._spawn(w)
        while not stop.is_set():
            if not self._watch():
                stop.set()
                self.failed = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        log.info("shutting down %d workers", self.count)
        self._stopping = True
        for _, lsock in self.listeners:
            if self._accept_on:
                loop.remove_reader(lsock.fileno())
            lsock.close()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and any(w.proc and w.proc.poll() is None for w in self.workers):
            await asyncio.sleep(0.05)
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                log.error("worker %d did not stop in %.0f s: killed", w.index, STOP_TIMEOUT)
                w.proc.kill()
                w.proc.wait()
            self._drop_channel(w)
        return 1 if self.failed else 0

    def _watch(self) -> bool:
        """Restart workers that died (after 0.2 s, up to 10 s when one keeps dying within 10 s of start).
        False when a worker died before it was ever ready: the server cannot start (its own error line
        says why), so everything stops."""
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None:
                continue
            code = w.proc.poll()
            if code is None:
                continue
            if not w.ever_ready:
                self._drop_channel(w)
                log.error("worker %d could not start: stopping", w.index)
                return False
            if w.restart_at == 0.0:
                self._drop_channel(w)
                quick = now - w.started < 10
                w.failures = w.failures + 1 if quick else 1
                delay = min(10.0, 0.2 * 2 ** (w.failures - 1))
                w.restart_at = now + delay
                how = f"signal {-code}" if code < 0 else f"status {code}"
                log.error("worker %d (pid %d) exited with %s: restarting in %.1f s", w.index, w.proc.pid, how, delay)
            elif now >= w.restart_at:
                w.restart_at = 0.0
                self._spawn(w)
        return True

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)


async def supervise(cfg: Config, config_path: str | None, count: int) -> int:
    sup = Supervisor(cfg, config_path, count)
    try:
        await sup.prepare()
    except BaseException:
        for _, s in sup.listeners:
            s.close()
        raise
    return await sup.run()


# -- a worker process -------------------------------------------------------------------------
def _die_with_supervisor(supervisor: int) -> None:
    """A supervisor killed with SIGKILL takes its workers with it (Linux ``PR_SET_PDEATHSIG``): a
    ``kill -9`` of the server is one, and a new server on the same data directory never meets the old
    one's workers."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if supervisor and os.getppid() != supervisor:  # it died before prctl took effect
        os._exit(1)


def _worker_main(argv: list[str]) -> int:
    from . import logsetup
    from .config import load_config

    p = argparse.ArgumentParser(prog="python -m rookery.workers")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--channel", type=int, required=True)
    p.add_argument("--sockets", required=True)
    p.add_argument("--listeners", default="[]")
    p.add_argument("--config")
    p.add_argument("--supervisor", type=int, default=0)
    a = p.parse_args(argv)
    _die_with_supervisor(a.supervisor)
    cfg = load_config(a.config) if a.config else Config()
    logsetup.configure(cfg)
    channel = socket.socket(fileno=a.channel)
    place = WorkerPlace(a.index, a.count, Path(a.sockets), channel,
                        [(k, h, int(port)) for k, h, port in json.loads(a.listeners)])
    try:
        return int(event_loop_runner(cfg.event_loop)(serve_process(cfg, a.config, place)))
    except Exception as e:  # the same one line as a single-process start-up failure (cli.py)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"rookery: error: worker {a.index}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
