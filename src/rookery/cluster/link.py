"""The stanza link between workers (issue 12): one Unix-socket connection per pair of workers.

Worker ``i`` listens on ``<dir>/w<i>.sock`` and connects to every worker with a higher index (it
keeps retrying while that worker is down: a restarted worker is found again).  Frames are
``length (4 bytes, big endian) | type (1 byte) | payload``; frames to one peer are written in the
order they were sent, coalesced into one write per event-loop turn, so what one worker sends another
arrives complete and in order (no lost and no reordered stanzas per sender).  Frames for a peer whose
connection is not up yet wait in a bounded queue and are written once it is.

The link knows no XMPP: the ``LinkHandler`` (the cluster registry) gives frames their meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">IB")
HELLO = 0x48  # "H": the connecting worker's index
#: frames queued for a peer that is not connected (beyond: dropped, logged)
MAX_PENDING = 200_000
RETRY = 0.05


class LinkHandler(Protocol):
    def peer_up(self, peer: int) -> None: ...

    def peer_down(self, peer: int) -> None: ...

    def frame(self, peer: int, ftype: int, payload: bytes) -> None: ...


def socket_path(directory: Path, index: int) -> Path:
    return directory / f"w{index}.sock"


class _Conn(asyncio.Protocol):
    __slots__ = ("mesh", "peer", "transport", "_buf", "_out", "_flushing", "lost")

    def __init__(self, mesh: Mesh, peer: int | None) -> None:
        self.mesh = mesh
        self.peer = peer  # None until the HELLO of an accepted connection
        self.transport: Any = None  # asyncio's or uvloop's transport
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flushing = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.peer is not None:  # we connected: say who we are
            self.write(HELLO, str(self.mesh.index).encode())
            self.mesh._up(self)

    def write(self, ftype: int, payload: bytes) -> None:
        self._out.append(_HEAD.pack(len(payload), ftype))
        self._out.append(payload)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        frame = self.mesh.handler.frame
        while n - pos >= 5:
            size, ftype = _HEAD.unpack_from(buf, pos)
            end = pos + 5 + size
            if end > n:
                break
            payload = bytes(buf[pos + 5:end])
            pos = end
            if ftype == HELLO and self.peer is not None:
                continue  # the answer to our own HELLO
            if self.peer is None:
                if ftype != HELLO:
                    log.error("cluster link: a connection began without HELLO; closed")
                    self.transport.close()
                    return
                self.peer = int(payload)
                self.write(HELLO, str(self.mesh.index).encode())
                self.mesh._up(self)
                continue
            try:
                frame(self.peer, ftype, payload)
            except Exception:
                log.exception("cluster link: frame %r from worker %s failed", chr(ftype), self.peer)
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.peer is not None:
            self.mesh._down(self)


class Mesh:
    """This worker's end of the links to every other worker."""

    def __init__(self, index: int, count: int, directory: Path, handler: LinkHandler) -> None:
        self.index = index
        self.count = count
        self.directory = directory
        self.handler = handler
        self.peers: dict[int, _Conn] = {}
        self._pending: dict[int, list[tuple[int, bytes]]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        path = socket_path(self.directory, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Conn(self, None), str(path))
        os.chmod(path, 0o600)
        for peer in range(self.index + 1, self.count):
            self._tasks.append(asyncio.ensure_future(self._keep_connected(peer)))

    async def _keep_connected(self, peer: int) -> None:
        """Connect to a higher-numbered worker, and again whenever the connection is lost."""
        loop = asyncio.get_running_loop()
        path = str(socket_path(self.directory, peer))
        while not self._closing:
            try:
                _, conn = await loop.create_unix_connection(lambda: _Conn(self, peer), path)
            except OSError:
                await asyncio.sleep(RETRY)
                continue
            await conn.lost
            await asyncio.sleep(RETRY)

    def _up(self, conn: _Conn) -> None:
        peer = conn.peer
        assert peer is not None
        old = self.peers.get(peer)
        if old is not None and old is not conn and old.transport is not None:
            old.peer = None  # superseded: its loss is not this peer's
            old.transport.close()
        self.peers[peer] = conn
        log.info("cluster link to worker %d up", peer)
        self.handler.peer_up(peer)
        for ftype, payload in self._pending.pop(peer, ()):
            conn.write(ftype, payload)

    def _down(self, conn: _Conn) -> None:
        peer = conn.peer
        if peer is None or self.peers.get(peer) is not conn:
            return
        del self.peers[peer]
        if not self._closing:
            log.warning("cluster link to worker %d lost", peer)
        self.handler.peer_down(peer)

    def send(self, peer: int, ftype: int, payload: bytes) -> None:
        conn = self.peers.get(peer)
        if conn is not None:
            conn.write(ftype, payload)
            return
        q = self._pending.setdefault(peer, [])
        if len(q) >= MAX_PENDING:
            log.error("cluster link: worker %d unreachable, %d frames queued: frame dropped", peer, len(q))
            return
        q.append((ftype, payload))

    def broadcast(self, ftype: int, payload: bytes) -> None:
        """To every connected worker (state announcements: a worker that connects later gets a snapshot)."""
        for conn in self.peers.values():
            conn.write(ftype, payload)

    def alive(self) -> list[int]:
        """This worker and the workers it is connected to, in index order."""
        return sorted({self.index, *self.peers})

    async def close(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for conn in list(self.peers.values()):
            conn._flush()
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path(self.directory, self.index).unlink()
