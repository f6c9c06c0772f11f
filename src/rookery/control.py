"""The local control socket: lets `rookery` CLI commands ask a running server (``status``,
``sessions``, ``kick``, ``reload``, ``debug``: ``admin.py``) and tell it about changes made directly in
storage (a deleted user is disconnected at once).  A Unix socket in ``data_dir``, one JSON request per
line, one JSON answer; only the local user that can reach ``data_dir`` can use it.

Requests are dispatched by their ``op`` through ``OPS``; ``register_op`` adds one (s2s, components and
HTTP add theirs the same way).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from collections.abc import Callable
from inspect import isawaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)
SOCKET_NAME = "rookery.ctl"

#: op name -> fn(server, request) -> dict (or an awaitable of one)
OPS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {}


class ControlRequestError(Exception):
    """A request the server refuses; the message goes back to the CLI as its error line."""


def register_op(name: str, fn: Callable[[Any, dict[str, Any]], Any]) -> None:
    OPS[name] = fn


async def _user_deleted(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    await server.user_deleted(str(req["host"]), str(req["user"]))
    return {}


def _user_created(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    log.info("account %s@%s created", req["user"], req["host"])
    return {}


def _s2s(server: Server, req: dict[str, Any]) -> dict[str, Any]:
    pool = getattr(server, "s2s", None)
    return {"enabled": pool is not None, "s2s": pool.describe() if pool is not None else []}


register_op("user-deleted", _user_deleted)
register_op("s2s", _s2s)
register_op("user-created", _user_created)


class ControlServer:
    def __init__(self, server: Server, path: Path) -> None:
        self.server = server
        self.path = path
        self._srv: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if notify(self.path.parent, {"op": "status"}, timeout=1.0) is not None:
                # never take the socket from a live server: its CLI notifications would come here
                raise OSError(errno.EADDRINUSE, f"{self.path} belongs to another running server")
            self.path.unlink()  # left behind by a server that died
        self._srv = await asyncio.start_unix_server(self._client, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._srv is not None:
            self._srv.close()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            req = json.loads(line)
            fn = OPS.get(req.get("op"))
            if fn is None:
                resp: dict[str, object] = {"ok": False, "error": f"unknown request {req.get('op')!r}"}
            else:
                r = fn(self.server, req)
                if isawaitable(r):
                    r = await r
                resp = {"ok": True, **r}
        except ControlRequestError as e:
            resp = {"ok": False, "error": str(e)}
        except Exception as e:  # a bad request must never hurt the server
            log.exception("control request failed")
            resp = {"ok": False, "error": str(e) or type(e).__name__}
        try:
            writer.write(json.dumps(resp, default=str).encode() + b"\n")
            await writer.drain()
            writer.close()
        except Exception:
            pass


def notify(data_dir: Path, request: dict, timeout: float = 5.0) -> dict | None:
    """Send one request to a running server (None when no server is running there)."""
    import socket

    path = data_dir / SOCKET_NAME
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf) if buf else None
    except (OSError, ValueError):
        return None


class NotRunning(Exception):
    """No server answers on the control socket."""


def request(data_dir: Path, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request to the running server; its answer (``ok`` True).  Raises ``NotRunning`` when no
    server answers, ``ControlRequestError`` with the server's message when it refuses."""
    path = data_dir / SOCKET_NAME
    if not path.exists():
        raise NotRunning(f"the server is not running (no control socket {path})")
    resp = notify(data_dir, req, timeout)
    if resp is None:
        raise NotRunning(f"the server is not running (nothing answers on {path})")
    if not resp.get("ok"):
        raise ControlRequestError(str(resp.get("error")))
    return resp
