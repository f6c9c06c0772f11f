"""The local control socket: lets `rookery` CLI commands tell a running server about changes made
directly in storage (a deleted user is disconnected at once).  A Unix socket in ``data_dir``,
one JSON request per line; only the local user that can reach ``data_dir`` can use it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger(__name__)
SOCKET_NAME = "rookery.ctl"


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
            op = req.get("op")
            if op == "user-deleted":
                await self.server.user_deleted(str(req["host"]), str(req["user"]))
                resp: dict[str, object] = {"ok": True}
            elif op == "s2s":
                pool = self.server.s2s
                resp = {"ok": True, "enabled": pool is not None, "s2s": pool.describe() if pool is not None else []}
            elif op == "status":
                resp = {"ok": True, "sessions": self.server.sessions.count()}
            else:
                resp = {"ok": False, "error": "unknown op"}
        except Exception as e:  # a bad request must never hurt the server
            resp = {"ok": False, "error": str(e)}
        try:
            writer.write(json.dumps(resp).encode() + b"\n")
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
