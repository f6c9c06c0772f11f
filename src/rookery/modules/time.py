"""XEP-0202: Entity Time, with the XEP-0082 date and time profiles it uses.

The server answers ``<time xmlns='urn:xmpp:time'/>`` sent to its own JID with ``<tzo/>`` (its numeric
offset from UTC, the XEP-0082 TZD) and ``<utc/>`` (the XEP-0082 DateTime profile, in UTC) — XEP-0202 §2
"Protocol Definition".  The formatting helpers here are also used for XEP-0203 delay stamps.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime, timedelta
from xml.etree.ElementTree import Element, SubElement

from ..module import Module, iq_handler
from ..stanza import Stanza
from ..xml import ns

_TIME = f"{{{ns.TIME}}}time"


def format_datetime(ts: float | datetime | None = None, *, fraction: bool = False) -> str:
    """XEP-0082 §3.2 DateTime profile in UTC: ``CCYY-MM-DDThh:mm:ss[.sss]Z``.

    ``ts`` is a POSIX timestamp or an aware ``datetime`` (default: now); ``fraction`` adds milliseconds.
    """
    if ts is None:
        ts = _time.time()
    dt = ts.astimezone(UTC) if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    if fraction:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_tzo(offset: timedelta | None) -> str:
    """XEP-0082 §3 TZD as XEP-0202 §2 wants it: ``(+|-)hh:mm`` (``+00:00`` for UTC)."""
    minutes = int((offset or timedelta(0)).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h:02d}:{m:02d}"


def local_tzo(ts: float | None = None) -> str:
    """The server's local UTC offset at ``ts`` (default: now), as a TZD."""
    dt = datetime.fromtimestamp(_time.time() if ts is None else ts).astimezone()
    return format_tzo(dt.utcoffset())


def time_element(ts: float | None = None) -> Element:
    """``<time xmlns='urn:xmpp:time'><tzo/><utc/></time>`` for ``ts`` (default: now)."""
    if ts is None:
        ts = _time.time()
    el = Element(_TIME)
    SubElement(el, f"{{{ns.TIME}}}tzo").text = local_tzo(ts)
    SubElement(el, f"{{{ns.TIME}}}utc").text = format_datetime(ts)
    return el


class Time(Module):
    """XEP-0202 §2: the server's local time."""

    name = "time"
    features = [ns.TIME]

    @iq_handler("get", ns.TIME, "time", to="host")
    def entity_time(self, request: Stanza) -> Element:
        return request.result(time_element())
