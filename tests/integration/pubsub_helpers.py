"""Helpers for the XEP-0060 / XEP-0163 integration tests (raw XML clients)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from xml.etree.ElementTree import Element

from xmpp_helpers import RawClient, error_condition, eventually

from rookery.modules.caps import verification_string

PS = "http://jabber.org/protocol/pubsub"
OWNER = PS + "#owner"
EVENT = PS + "#event"
ERRORS = PS + "#errors"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
XDATA = "jabber:x:data"
SERVICE = "pubsub.localhost"


def new_id() -> str:
    return secrets.token_hex(4)


async def iq(c: RawClient, type_: str, to: str | None, body: str, timeout: float = 5.0) -> Element:
    """Send an iq and return its reply; other stanzas received meanwhile stay queued."""
    i = new_id()
    to_attr = f" to='{to}'" if to else ""
    c.send(f"<iq type='{type_}' id='{i}'{to_attr}>{body}</iq>")
    others: list[Element] = []
    try:
        while True:
            el = await c.recv(timeout)
            if el.tag == "{jabber:client}iq" and el.get("id") == i:
                return el
            others.append(el)
    finally:
        c._queue[:0] = others


async def ps(c: RawClient, type_: str, body: str, to: str | None = SERVICE, owner: bool = False) -> Element:
    return await iq(c, type_, to, f"<pubsub xmlns='{OWNER if owner else PS}'>{body}</pubsub>")


def ok(el: Element) -> Element:
    assert el.get("type") == "result", _describe(el)
    return el


def _describe(el: Element) -> str:
    from rookery.xml import serialize

    return serialize(el)


def err(el: Element) -> tuple[str | None, str | None]:
    """(defined condition, pubsub#errors condition) of an iq error."""
    assert el.get("type") == "error", _describe(el)
    app = None
    e = el.find("{jabber:client}error")
    assert e is not None
    for child in e:
        if child.tag.startswith("{%s}" % ERRORS):
            app = child.tag.split("}")[1]
    return error_condition(el), app


def form(form_type: str, fields: dict[str, str | list[str]], type_: str = "submit") -> str:
    out = [f"<x xmlns='{XDATA}' type='{type_}'><field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        out.append(f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>")
    out.append("</x>")
    return "".join(out)


def config(**fields: str | list[str]) -> str:
    return form(PS + "#node_config", {f"pubsub#{k}": v for k, v in fields.items()})


def publish_options(**fields: str) -> str:
    return "<publish-options>" + form(PS + "#publish-options", {f"pubsub#{k}": v for k, v in fields.items()}) + \
        "</publish-options>"


def is_event(el: Element, kind: str | None = None, node: str | None = None) -> bool:
    ev = el.find(f"{{{EVENT}}}event")
    if el.tag != "{jabber:client}message" or ev is None:
        return False
    if kind is None:
        return True
    child = ev.find(f"{{{EVENT}}}{kind}")
    return child is not None and (node is None or child.get("node") == node)


def event_item_ids(el: Element) -> list[str]:
    return [i.get("id", "") for i in el.iter(f"{{{EVENT}}}item")]


async def caps_presence(c: RawClient, features: list[str], server: Any = None) -> None:
    """Initial presence with XEP-0115 caps for ``features`` (plus a unique one, so the server asks),
    answering the server's disco#info query; stanzas received meanwhile stay queued.  With
    ``server``, returns once the server has verified the answer and applied it to the session."""
    feats = sorted(set(features) | {f"urn:test:{new_id()}", DISCO_INFO})
    identity = ("client", "pc", None, "test")
    ver = verification_string([identity], feats)
    c.send(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='urn:test' ver='{ver}'/>"
           f"</presence>")
    others: list[Element] = []
    while True:
        el = await c.recv()
        q = el.find(f"{{{DISCO_INFO}}}query")
        if el.tag == "{jabber:client}iq" and el.get("type") == "get" and q is not None:
            break
        others.append(el)
    body = "<identity category='client' type='pc' name='test'/>" + "".join(f"<feature var='{f}'/>" for f in feats)
    c.send(f"<iq type='result' id='{el.get('id')}' to='{el.get('from')}'>"
           f"<query xmlns='{DISCO_INFO}' node='{q.get('node')}'>{body}</query></iq>")
    c._queue[:0] = others
    if server is None or not hasattr(server.server, "modules"):  # (a ProcessServer: no way to look)
        await asyncio.sleep(0.2 if server is None else 0.5)  # the server verifies and applies the answer
        return
    caps = server.server.modules.modules["caps"]

    def applied() -> bool:
        sessions = [s for s in server.server.sessions.all() if s.jid.full == c.jid]
        return bool(sessions) and caps.features_of(sessions[0]) is not None and \
            "pep.notify" in sessions[0].ext

    await eventually(applied, 10)
