"""The whole server on PostgreSQL storage (DESIGN.md: the storage layer runs on SQLite and PostgreSQL):
accounts, SCRAM login, roster/subscriptions, offline messages — through real clients."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
from xmpp_helpers import RawClient

PG = os.environ.get("ROOKERY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _pg_available(), reason="PostgreSQL not reachable on 127.0.0.1:5432")


@pytest.fixture
def pg_server(rookery_server_factory):
    schema = "rk_" + secrets.token_hex(6)
    server = rookery_server_factory(storage=f"{PG}?schema={schema}")
    yield server

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


async def test_server_on_postgresql_logs_in_subscribes_chats_and_stores_offline(pg_server):
    a_jid, a_pw = pg_server.make_user()
    b_jid, b_pw = pg_server.make_user()
    a = await RawClient().login(pg_server.c2s_port, a_jid, a_pw, resource="a")
    b = await RawClient().login(pg_server.c2s_port, b_jid, b_pw, resource="b")
    try:
        for c in (a, b):
            await c.iq("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
            c.send("<presence/>")
        a.send(f"<presence to='{b_jid}' type='subscribe'/>")
        await b.recv_until(lambda e: e.tag.endswith("presence") and e.get("type") == "subscribe")
        b.send(f"<presence to='{a_jid}' type='subscribed'/>")
        push = await a.recv_until(lambda e: e.tag.endswith("iq") and e.get("type") == "set"
                                  and e.find(".//{jabber:iq:roster}item[@subscription='to']") is not None)
        assert push.find(".//{jabber:iq:roster}item").get("jid") == b_jid
        await b.close()
        # wait until the server has ended b's session (under load it may still be registered, and a
        # message routed to it then would be written to the closing connection)
        for _ in range(250):
            if pg_server.session_count() == 1:
                break
            await asyncio.sleep(0.02)
        # b is offline now: the message is stored in PostgreSQL and delivered at b's next login
        a.send(f"<message to='{b_jid}' type='chat' id='off1'><body>while you were away</body></message>")
        await asyncio.sleep(0.5)
        b = await RawClient().login(pg_server.c2s_port, b_jid, b_pw, resource="b2")
        b.send("<presence/>")
        m = await b.recv_until(lambda e: e.tag.endswith("message") and e.get("id") == "off1")
        assert m.findtext("{jabber:client}body") == "while you were away"
        assert m.find("{urn:xmpp:delay}delay") is not None
        # the roster survived in PostgreSQL
        r = await b.iq("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>")
        assert r.find(".//{jabber:iq:roster}item").get("subscription") == "from"
    finally:
        await a.close()
        await b.close()
