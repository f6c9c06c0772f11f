"""RFC 7395: XMPP over WebSocket at ``/xmpp-websocket`` on the ``[http]`` listeners.

The carrier is ``transports/websocket.py``, the framing ``streams.framing.WebSocketFramer``; the
stream is the same c2s stream as on TCP (``ctx.c2s_stream``), so SASL, binding, stream management
and every module work unchanged.  A connection counts as encrypted over HTTPS, or from a loopback
address while ``[http] secure_loopback`` is on (``ctx.http_secure``).  A server-wide carrier: enable
it in the global ``modules``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from ..module import Module, Options
from ..streams.framing import WebSocketFramer
from ..transports.websocket import WebSocketTransport, serve_websocket


class WebSocketOptions(Options):
    path: str = "/xmpp-websocket"
    #: seconds between WebSocket pings (a connection whose pong does not come back is closed); 0: none
    ping_interval: float = Field(30.0, ge=0)
    #: largest WebSocket message, in bytes (stanzas are limited by [c2s] max_stanza_size as well)
    max_message_size: int = Field(1048576, ge=4096)
    #: bytes that may wait to be sent to one client; over it nothing more is read from it
    max_send_buffer: int = Field(1048576, ge=4096)
    #: seconds a client over max_send_buffer has to read before it is disconnected
    send_timeout: float = Field(60.0, gt=0)


class WebSocket(Module):
    """RFC 7395 endpoint (``provides = ["websocket"]``: ``url()`` for discovery and the web client)."""

    name = "websocket"
    provides = ["websocket"]
    Options = WebSocketOptions

    async def start(self) -> None:
        self.ctx.http_route("GET", self.options.path, self.handle)

    def url(self) -> str:
        """``ws://`` or ``wss://`` URL of the endpoint (``[http] public_url`` when set)."""
        u = self.ctx.http_url(self.options.path)
        return "ws" + u[4:]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        o = self.options
        return await serve_websocket(request, self._stream, secure=self.ctx.http_secure,
                                     heartbeat=o.ping_interval or None, max_msg_size=o.max_message_size,
                                     max_buffer=o.max_send_buffer, send_timeout=o.send_timeout)

    def _stream(self, transport: WebSocketTransport) -> Any:
        return self.ctx.c2s_stream(transport, WebSocketFramer())
