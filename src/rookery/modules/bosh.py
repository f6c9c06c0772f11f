"""XEP-0206: XMPP over BOSH (XEP-0124) at ``/http-bind`` on the ``[http]`` listeners.

The carrier is ``transports/bosh.py`` (sessions, ``rid`` order, held requests, timers), the framing
``streams.framing.BOSHFramer``; the stream is the same c2s stream as on TCP (``ctx.c2s_stream``).
CORS is on for the endpoint (``[http] cors_origins``), so web clients on other origins can use it.
A server-wide carrier: enable it in the global ``modules``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..module import Module, Options
from ..streams.framing import BOSHFramer, parse_body
from ..transports.bosh import BOSHEndpoint, BOSHSession, BOSHSettings


class BOSHOptions(Options):
    path: str = "/http-bind"
    #: longest a request is held waiting for output, in seconds (the client's 'wait' is capped to it)
    max_wait: int = Field(60, ge=1, le=3600)
    #: most requests held at once (the client's 'hold' is capped to it)
    max_hold: int = Field(1, ge=0, le=8)
    #: seconds without a request (none held) before a session is ended
    inactivity: int = Field(60, ge=1, le=86400)
    #: longest 'pause' a client may ask for, in seconds
    max_pause: int = Field(300, ge=0, le=86400)
    #: shortest polling interval announced to clients, in seconds
    polling: int = Field(2, ge=0, le=3600)
    #: bytes that may wait for a client's next request; over it nothing more is read from it
    max_send_buffer: int = Field(1048576, ge=4096)


class BOSH(Module):
    """XEP-0206 endpoint (``provides = ["bosh"]``: ``url()`` for discovery and the web client)."""

    name = "bosh"
    provides = ["bosh"]
    Options = BOSHOptions

    async def start(self) -> None:
        o = self.options
        settings = BOSHSettings(max_wait=o.max_wait, max_hold=o.max_hold, inactivity=o.inactivity,
                                max_pause=o.max_pause, polling=o.polling, max_send_buffer=o.max_send_buffer)
        self.endpoint = BOSHEndpoint(settings, parse_body, self._stream, self.ctx.http_secure)
        self.ctx.http_route("POST", o.path, self.endpoint.handle, cors=True)
        self.ctx.http_route("GET", o.path, self.endpoint.handle, cors=True)

    async def stop(self) -> None:
        self.endpoint.close_all()

    def url(self) -> str:
        return self.ctx.http_url(self.options.path)

    @property
    def sessions(self) -> int:
        return len(self.endpoint.sessions)

    def _stream(self, session: BOSHSession) -> Any:
        framer = BOSHFramer()
        session.header = lambda: {"authid": framer.stream_id, "from": framer.domain}
        return self.ctx.c2s_stream(session, framer)
