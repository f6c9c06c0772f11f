"""Storage test-suite (DESIGN.md "Data and durability"): every test runs on SQLite and PostgreSQL.

PostgreSQL comes from ``ROOKERY_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
each test gets a fresh schema (``?schema=``), dropped afterwards, so other tables in that database are
never touched.  PostgreSQL tests are skipped when the server is unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command

import rookery
from rookery.storage import sql
from rookery.storage.base import ArchiveItem, RosterItem, ScramCredential
from rookery.storage.sql import SQLStorage, make_storage

PG_URL = os.environ.get("ROOKERY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
HOST = "example.org"
OFFLINE_LIMIT = 5

_pg_available: bool | None = None


async def _postgres_available() -> bool:
    global _pg_available
    if _pg_available is None:
        try:
            conn = await asyncpg.connect(PG_URL, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            _pg_available = False
        else:
            await conn.close()
            _pg_available = True
    return _pg_available


def cred(tag: str = "a", iterations: int = 4096) -> ScramCredential:
    return ScramCredential(
        salt=f"salt-{tag}".encode(),
        iterations=iterations,
        stored_key=f"stored-{tag}".encode() + b"\x00\xff",
        server_key=f"server-{tag}".encode() + b"\x00\xff",
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database URL for a fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'rookery.sqlite'}"
        return
    if not await _postgres_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"rookery_test_{uuid.uuid4().hex[:16]}"
    yield f"{PG_URL}?schema={schema}"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def store(url: str) -> AsyncIterator[SQLStorage]:
    storage = SQLStorage(url, offline_limit=OFFLINE_LIMIT)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


# -- accounts ---------------------------------------------------------------------------------------


async def test_created_account_exists_and_returns_its_credentials(store: SQLStorage) -> None:
    creds = {"SHA-1": cred("1"), "SHA-256": cred("256", 5000)}
    assert await store.accounts.create(HOST, "juliet", creds) is True
    assert await store.accounts.exists(HOST, "juliet")
    assert not await store.accounts.exists(HOST, "romeo")
    assert not await store.accounts.exists("other.example", "juliet")
    assert await store.accounts.get_credentials(HOST, "juliet") == creds


async def test_duplicate_create_returns_false_and_keeps_first_credentials(store: SQLStorage) -> None:
    assert await store.accounts.create(HOST, "juliet", {"SHA-256": cred("first")})
    assert await store.accounts.create(HOST, "juliet", {"SHA-256": cred("second")}) is False
    assert await store.accounts.get_credentials(HOST, "juliet") == {"SHA-256": cred("first")}


async def test_get_credentials_is_none_for_missing_account_and_empty_without_hashes(
    store: SQLStorage,
) -> None:
    assert await store.accounts.get_credentials(HOST, "nobody") is None
    assert await store.accounts.create(HOST, "bare", {})
    assert await store.accounts.get_credentials(HOST, "bare") == {}


async def test_set_credentials_replaces_every_hash(store: SQLStorage) -> None:
    await store.accounts.create(HOST, "juliet", {"SHA-1": cred("old1"), "SHA-256": cred("old256")})
    assert await store.accounts.set_credentials(HOST, "juliet", {"SHA-512": cred("new")}) is True
    assert await store.accounts.get_credentials(HOST, "juliet") == {"SHA-512": cred("new")}


async def test_set_credentials_of_missing_account_returns_false(store: SQLStorage) -> None:
    assert await store.accounts.set_credentials(HOST, "nobody", {"SHA-256": cred()}) is False
    assert not await store.accounts.exists(HOST, "nobody")


async def test_list_is_sorted_by_host_then_user_and_filters_by_host(store: SQLStorage) -> None:
    for host, user in [("b.example", "zed"), ("a.example", "mia"), ("b.example", "amy"), ("a.example", "al")]:
        assert await store.accounts.create(host, user, {"SHA-256": cred()})
    assert await store.accounts.list() == [
        ("a.example", "al"),
        ("a.example", "mia"),
        ("b.example", "amy"),
        ("b.example", "zed"),
    ]
    assert await store.accounts.list("b.example") == [("b.example", "amy"), ("b.example", "zed")]
    assert await store.accounts.list("c.example") == []


async def test_delete_removes_account_and_missing_delete_returns_false(store: SQLStorage) -> None:
    await store.accounts.create(HOST, "juliet", {"SHA-256": cred()})
    assert await store.accounts.delete(HOST, "juliet") is True
    assert not await store.accounts.exists(HOST, "juliet")
    assert await store.accounts.get_credentials(HOST, "juliet") is None
    assert await store.accounts.delete(HOST, "juliet") is False
    # The name is free again.
    assert await store.accounts.create(HOST, "juliet", {"SHA-1": cred("again")})
    assert await store.accounts.get_credentials(HOST, "juliet") == {"SHA-1": cred("again")}


async def test_concurrent_creators_of_one_user_on_separate_instances_exactly_one_wins(url: str) -> None:
    # Twenty independent instances open a fresh database at once (racing migrations) and then
    # race to create the same account.
    storages = [SQLStorage(url) for _ in range(20)]
    try:
        await asyncio.gather(*(s.open() for s in storages))
        results = await asyncio.gather(
            *(s.accounts.create(HOST, "juliet", {"SHA-256": cred(str(i))}) for i, s in enumerate(storages))
        )
        assert results.count(True) == 1
        winner = results.index(True)
        assert await storages[0].accounts.get_credentials(HOST, "juliet") == {"SHA-256": cred(str(winner))}
    finally:
        await asyncio.gather(*(s.close() for s in storages))


async def test_concurrent_creators_of_different_users_all_succeed(url: str) -> None:
    storages = [SQLStorage(url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in storages))
        users = [f"user{i:02}" for i in range(40)]
        results = await asyncio.gather(
            *(storages[i % 4].accounts.create(HOST, u, {"SHA-256": cred(u)}) for i, u in enumerate(users))
        )
        assert results == [True] * len(users)
        assert await storages[0].accounts.list(HOST) == [(HOST, u) for u in users]
    finally:
        await asyncio.gather(*(s.close() for s in storages))


# -- roster -----------------------------------------------------------------------------------------


async def test_never_written_roster_is_empty_at_version_zero(store: SQLStorage) -> None:
    assert await store.roster.get(HOST, "juliet") == ("0", {})
    assert await store.roster.get_item(HOST, "juliet", "romeo@example.net") is None


async def test_roster_set_get_replace_and_remove_items(store: SQLStorage) -> None:
    romeo = RosterItem(
        jid="romeo@example.net",
        name="Romeo",
        subscription="both",
        ask=False,
        approved=True,
        groups=["Friends", "Ü"],
    )
    nurse = RosterItem(jid="nurse@example.com", ask=True)
    await store.roster.set_item(HOST, "juliet", romeo)
    version = await store.roster.set_item(HOST, "juliet", nurse)
    assert await store.roster.get(HOST, "juliet") == (version, {romeo.jid: romeo, nurse.jid: nurse})
    assert await store.roster.get_item(HOST, "juliet", nurse.jid) == nurse

    renamed = RosterItem(jid=romeo.jid, name=None, subscription="to", groups=[])
    version = await store.roster.set_item(HOST, "juliet", renamed)
    assert await store.roster.get_item(HOST, "juliet", romeo.jid) == renamed

    version = await store.roster.remove_item(HOST, "juliet", nurse.jid)
    assert await store.roster.get(HOST, "juliet") == (version, {romeo.jid: renamed})
    # Other users' rosters are separate.
    assert await store.roster.get(HOST, "romeo") == ("0", {})


async def test_roster_version_strictly_increases_at_every_write(store: SQLStorage) -> None:
    versions = [
        await store.roster.set_item(HOST, "juliet", RosterItem(jid="a@example.net")),
        await store.roster.set_item(HOST, "juliet", RosterItem(jid="b@example.net")),
        await store.roster.set_item(HOST, "juliet", RosterItem(jid="a@example.net", name="A")),
        await store.roster.remove_item(HOST, "juliet", "a@example.net"),
        await store.roster.remove_item(HOST, "juliet", "missing@example.net"),
    ]
    numbers = [int(v) for v in versions]
    assert numbers == sorted(set(numbers)) and numbers[0] > 0
    assert (await store.roster.get(HOST, "juliet"))[0] == versions[-1]
    # Each user has a counter of their own.
    assert await store.roster.set_item(HOST, "romeo", RosterItem(jid="j@example.org")) == "1"


async def test_concurrent_roster_writes_get_distinct_versions(store: SQLStorage) -> None:
    versions = await asyncio.gather(
        *(store.roster.set_item(HOST, "juliet", RosterItem(jid=f"c{i}@example.net")) for i in range(20))
    )
    assert sorted(int(v) for v in versions) == list(range(1, 21))
    version, items = await store.roster.get(HOST, "juliet")
    assert version == "20" and len(items) == 20


async def test_pending_inbound_subscriptions_are_stored_replaced_and_removed(store: SQLStorage) -> None:
    assert await store.roster.get_pending_in(HOST, "juliet") == {}
    await store.roster.add_pending_in(HOST, "juliet", "romeo@example.net", "<presence type='subscribe'/>")
    await store.roster.add_pending_in(HOST, "juliet", "nurse@example.com", "<presence n='1'/>")
    await store.roster.add_pending_in(HOST, "juliet", "nurse@example.com", "<presence n='2'/>")
    assert await store.roster.get_pending_in(HOST, "juliet") == {
        "romeo@example.net": "<presence type='subscribe'/>",
        "nurse@example.com": "<presence n='2'/>",
    }
    await store.roster.remove_pending_in(HOST, "juliet", "romeo@example.net")
    await store.roster.remove_pending_in(HOST, "juliet", "missing@example.net")
    assert await store.roster.get_pending_in(HOST, "juliet") == {"nurse@example.com": "<presence n='2'/>"}
    assert await store.roster.get_pending_in(HOST, "romeo") == {}


# -- key-value --------------------------------------------------------------------------------------


async def test_kv_set_get_overwrite_delete_and_sorted_keys(store: SQLStorage) -> None:
    assert await store.kv.get("vcard", HOST, "juliet", "") is None
    await store.kv.set("private", HOST, "juliet", "storage:bookmarks", "<b/>")
    await store.kv.set("private", HOST, "juliet", "jabber:x:a", "<a/>")
    await store.kv.set("private", HOST, "juliet", "jabber:x:a", "<a2/>")
    await store.kv.set("vcard", HOST, "juliet", "", "<vCard/>")
    await store.kv.set("private", HOST, "", "host-wide", "x")
    assert await store.kv.get("private", HOST, "juliet", "jabber:x:a") == "<a2/>"
    assert await store.kv.keys("private", HOST, "juliet") == ["jabber:x:a", "storage:bookmarks"]
    assert await store.kv.keys("vcard", HOST, "juliet") == [""]
    assert await store.kv.keys("private", HOST, "") == ["host-wide"]
    assert await store.kv.keys("private", HOST, "romeo") == []
    await store.kv.delete("private", HOST, "juliet", "jabber:x:a")
    await store.kv.delete("private", HOST, "juliet", "missing")
    assert await store.kv.get("private", HOST, "juliet", "jabber:x:a") is None
    assert await store.kv.keys("private", HOST, "juliet") == ["storage:bookmarks"]


# -- offline ----------------------------------------------------------------------------------------


async def test_offline_pop_all_returns_arrival_order_and_empties_the_queue(store: SQLStorage) -> None:
    for i in range(3):
        assert await store.offline.push(HOST, "juliet", f"<message n='{i}'/>")
    await store.offline.push(HOST, "romeo", "<message to='romeo'/>")
    assert await store.offline.count(HOST, "juliet") == 3
    assert await store.offline.pop_all(HOST, "juliet") == [f"<message n='{i}'/>" for i in range(3)]
    assert await store.offline.pop_all(HOST, "juliet") == []
    assert await store.offline.count(HOST, "juliet") == 0
    assert await store.offline.count(HOST, "romeo") == 1


async def test_offline_peek_keeps_messages_until_removed_by_id(store: SQLStorage) -> None:
    """Crash-safe delivery (issue F5): reading does not remove; ``remove`` takes exactly the given ids
    of that user."""
    for i in range(5):
        await store.offline.push(HOST, "juliet", f"<message n='{i}'/>")
    await store.offline.push(HOST, "romeo", "<message to='romeo'/>")
    first = await store.offline.peek(HOST, "juliet", 2)
    assert [s for _, s in first] == ["<message n='0'/>", "<message n='1'/>"]
    assert await store.offline.peek(HOST, "juliet", 2) == first  # still there
    (romeo_id, _), = await store.offline.peek(HOST, "romeo")
    assert await store.offline.remove(HOST, "juliet", [i for i, _ in first] + [romeo_id]) == 2
    assert [s for _, s in await store.offline.peek(HOST, "juliet")] == [f"<message n='{i}'/>" for i in (2, 3, 4)]
    assert await store.offline.count(HOST, "romeo") == 1  # another user's id is not removed
    assert await store.offline.remove(HOST, "juliet", []) == 0


async def test_offline_empty_queue_is_answered_without_a_write_transaction(store: SQLStorage) -> None:
    """Issue 12: every login peeks at its queue, nearly always empty: on SQLite that is an inline read,
    not a write transaction; a push of this process still in flight is seen (it takes the write path)."""
    writes = 0
    real_write = store._write

    async def counting_write(fn):  # type: ignore[no-untyped-def]
        nonlocal writes
        writes += 1
        return await real_write(fn)

    store._write = counting_write  # type: ignore[method-assign]
    assert await store.offline.peek(HOST, "juliet", 10) == []
    assert await store.offline.pop_all(HOST, "juliet") == []
    if store.is_postgresql:
        return  # the async path as before (no write queue in this process to be ordered behind)
    assert writes == 0
    # a push not committed yet: the peek, queued behind it as before, must see it
    push = asyncio.ensure_future(store.offline.push(HOST, "juliet", "<message n='1'/>"))
    await asyncio.sleep(0)
    assert [s for _, s in await store.offline.peek(HOST, "juliet", 10)] == ["<message n='1'/>"]
    assert await push
    assert await store.offline.pop_all(HOST, "juliet") == ["<message n='1'/>"]
    assert await store.offline.peek(HOST, "juliet", 10) == []


async def test_roster_and_pending_reads_match_through_either_path(store: SQLStorage) -> None:
    """The SQLite inline reads (roster load, pending requests at initial presence) give what the
    async path gives."""
    await store.roster.set_item(HOST, "juliet", RosterItem(jid="romeo@" + HOST, name="R", subscription="both",
                                                            groups=["a", "b"]))
    await store.roster.add_pending_in(HOST, "juliet", "nurse@" + HOST, "<presence type='subscribe'/>")
    fast = (await store.roster.get(HOST, "juliet"), await store.roster.get_pending_in(HOST, "juliet"))
    ro, store._ro = store._ro, None
    try:
        slow = (await store.roster.get(HOST, "juliet"), await store.roster.get_pending_in(HOST, "juliet"))
    finally:
        store._ro = ro
    assert fast == slow
    assert fast[0][1]["romeo@" + HOST].groups == ["a", "b"] and fast[1] == {"nurse@" + HOST: "<presence type='subscribe'/>"}


async def test_offline_push_refuses_beyond_the_limit_per_user(store: SQLStorage) -> None:
    results = [await store.offline.push(HOST, "juliet", f"<m n='{i}'/>") for i in range(OFFLINE_LIMIT + 2)]
    assert results == [True] * OFFLINE_LIMIT + [False, False]
    assert await store.offline.push(HOST, "romeo", "<m/>")  # another user's queue is not full
    assert await store.offline.pop_all(HOST, "juliet") == [f"<m n='{i}'/>" for i in range(OFFLINE_LIMIT)]
    assert await store.offline.push(HOST, "juliet", "<m n='after'/>")


async def test_concurrent_offline_pushes_never_overshoot_the_limit(store: SQLStorage) -> None:
    results = await asyncio.gather(*(store.offline.push(HOST, "juliet", f"<m n='{i}'/>") for i in range(12)))
    assert results.count(True) == OFFLINE_LIMIT
    assert await store.offline.count(HOST, "juliet") == OFFLINE_LIMIT


# -- archive ----------------------------------------------------------------------------------------

MAM = "mam"
ROMEO = "romeo@example.net"


async def _fill(store: SQLStorage, n: int, *, user: str = "juliet", t0: float = 1000.0) -> list[str]:
    """``n`` items at t0, t0+1, ...; value ``m{i}``, with ``ROMEO``; returns their ids in order."""
    return [
        await store.archive.append(MAM, HOST, user, f"m{i}", with_=ROMEO, when=t0 + i) for i in range(n)
    ]


async def test_archive_query_is_in_time_order_and_keeps_insertion_order_within_a_timestamp(
    store: SQLStorage,
) -> None:
    late = await store.archive.append(MAM, HOST, "juliet", "<late/>", with_=ROMEO, when=2000.5)
    tied = [await store.archive.append(MAM, HOST, "juliet", f"<t{i}/>", when=1500.0) for i in range(5)]
    orchard = f"{ROMEO}/orchard"
    early = await store.archive.append(MAM, HOST, "juliet", "<early/>", with_=orchard, when=1000.25)
    items = await store.archive.query(MAM, HOST, "juliet")
    assert items == [
        ArchiveItem(id=early, when=1000.25, with_=orchard, value="<early/>"),
        *(ArchiveItem(id=t, when=1500.0, with_=None, value=f"<t{i}/>") for i, t in enumerate(tied)),
        ArchiveItem(id=late, when=2000.5, with_=ROMEO, value="<late/>"),
    ]
    assert await store.archive.query(MAM, HOST, "juliet", reverse=True) == items[::-1]
    ids = [item.id for item in items]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)


async def test_archive_trim_keeps_the_newest_of_one_user_only(store: SQLStorage) -> None:
    ids = await _fill(store, 10)
    tied = [await store.archive.append(MAM, HOST, "juliet", f"<t{i}/>", when=1009.0) for i in range(3)]
    other = await _fill(store, 5, user="romeo")
    assert await store.archive.trim(MAM, HOST, "juliet", 4) == 9
    # ties on the timestamp are broken by insertion order, like queries
    assert [i.id for i in await store.archive.query(MAM, HOST, "juliet")] == [ids[9], *tied]
    assert await store.archive.trim(MAM, HOST, "juliet", 10) == 0
    assert [i.id for i in await store.archive.query(MAM, HOST, "romeo")] == other
    assert await store.archive.trim(MAM, HOST, "juliet", 0) == 4
    assert await store.archive.count(MAM, HOST, "juliet") == 0


async def test_archive_append_defaults_to_now(store: SQLStorage) -> None:
    before = time.time()
    item_id = await store.archive.append(MAM, HOST, "juliet", "<m/>")
    after = time.time()
    item = await store.archive.get(MAM, HOST, "juliet", item_id)
    assert item is not None and before <= item.when <= after and item.with_ is None


async def test_archive_with_matches_exactly_or_every_full_jid_of_a_bare_jid(store: SQLStorage) -> None:
    peers = [
        ROMEO,
        f"{ROMEO}/orchard",
        f"{ROMEO}/balcony/with/slashes",
        "romeo@example.net.evil/x",  # a longer domain, not a resource of ROMEO
        "romeo@example.netty",
        "ro%eo@example.net",  # LIKE wildcards in a localpart must not act as wildcards
        "ro_eo@example.net/r",
        "example.net",
        "example.net/service",
        None,
    ]
    ids = {p: await store.archive.append(MAM, HOST, "juliet", str(p), with_=p) for p in peers}

    async def values(with_: str) -> list[str]:
        return [i.value for i in await store.archive.query(MAM, HOST, "juliet", with_=with_)]

    assert await values(ROMEO) == [ROMEO, f"{ROMEO}/orchard", f"{ROMEO}/balcony/with/slashes"]
    assert await values(f"{ROMEO}/orchard") == [f"{ROMEO}/orchard"]
    assert await values(f"{ROMEO}/balcony/with/slashes") == [f"{ROMEO}/balcony/with/slashes"]
    assert await values(f"{ROMEO}/balcony") == []
    assert await values("romeo@example.net.evil") == ["romeo@example.net.evil/x"]
    assert await values("ro%eo@example.net") == ["ro%eo@example.net"]
    assert await values("ro_eo@example.net") == ["ro_eo@example.net/r"]
    assert await values("roXeo@example.net") == []
    assert await values("example.net") == ["example.net", "example.net/service"]
    assert await values("nurse@example.com") == []
    # Unfiltered, the item without a peer is there too.
    assert len(await store.archive.query(MAM, HOST, "juliet")) == len(ids)


async def test_archive_start_and_end_are_inclusive(store: SQLStorage) -> None:
    await _fill(store, 6)  # when 1000 .. 1005

    async def values(**kw: float) -> list[str]:
        return [i.value for i in await store.archive.query(MAM, HOST, "juliet", **kw)]

    assert await values(start=1002) == ["m2", "m3", "m4", "m5"]
    assert await values(end=1002) == ["m0", "m1", "m2"]
    assert await values(start=1001, end=1003) == ["m1", "m2", "m3"]
    assert await values(start=1001.5, end=1002.5) == ["m2"]
    assert await values(start=1003, end=1002) == []
    assert await values(start=5000) == []


async def test_archive_pages_forward_with_after_and_backward_with_before(store: SQLStorage) -> None:
    ids = await _fill(store, 10)

    # Forward, oldest first (XEP-0059 §2.2).
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await store.archive.query(MAM, HOST, "juliet", after=after, limit=3)
        if not page:
            break
        pages.append([i.id for i in page])
        after = page[-1].id
    assert pages == [ids[0:3], ids[3:6], ids[6:9], ids[9:10]]

    # The last page (§2.5), newest first, then backward with before (§2.3).
    last = await store.archive.query(MAM, HOST, "juliet", limit=3, reverse=True)
    assert [i.id for i in last] == [ids[9], ids[8], ids[7]]
    pages = [[i.id for i in last]]
    while True:
        page = await store.archive.query(MAM, HOST, "juliet", before=pages[-1][-1], limit=3, reverse=True)
        if not page:
            break
        pages.append([i.id for i in page])
    assert pages == [ids[9:6:-1], ids[6:3:-1], ids[3:0:-1], ids[0:1]]

    # before without reverse: the oldest items before it; after with reverse: the newest after it.
    assert [i.id for i in await store.archive.query(MAM, HOST, "juliet", before=ids[5], limit=2)] == ids[0:2]
    page = await store.archive.query(MAM, HOST, "juliet", after=ids[5], limit=2, reverse=True)
    assert [i.id for i in page] == [ids[9], ids[8]]
    # Both bounds: strictly between them.
    page = await store.archive.query(MAM, HOST, "juliet", after=ids[2], before=ids[6])
    assert [i.id for i in page] == ids[3:6]
    assert await store.archive.query(MAM, HOST, "juliet", after=ids[9]) == []
    assert await store.archive.query(MAM, HOST, "juliet", before=ids[0]) == []
    assert await store.archive.query(MAM, HOST, "juliet", limit=0) == []


async def test_archive_paging_combines_with_filters_and_ties_in_time(store: SQLStorage) -> None:
    # Same timestamp for all: order (and so paging) falls back to insertion order.
    ids = [
        await store.archive.append(MAM, HOST, "juliet", f"m{i}", with_=ROMEO if i % 2 else None, when=1000.0)
        for i in range(8)
    ]
    page = await store.archive.query(MAM, HOST, "juliet", after=ids[2], limit=3)
    assert [i.id for i in page] == ids[3:6]
    page = await store.archive.query(MAM, HOST, "juliet", before=ids[5], limit=3, reverse=True)
    assert [i.id for i in page] == [ids[4], ids[3], ids[2]]
    # The reference item need not match the filter itself.
    page = await store.archive.query(MAM, HOST, "juliet", with_=ROMEO, after=ids[2], limit=2)
    assert [i.id for i in page] == [ids[3], ids[5]]
    page = await store.archive.query(MAM, HOST, "juliet", with_=ROMEO, reverse=True, limit=2)
    assert [i.id for i in page] == [ids[7], ids[5]]
    page = await store.archive.query(MAM, HOST, "juliet", start=1000.0, end=1000.0, after=ids[6])
    assert [i.id for i in page] == [ids[7]]


async def test_archive_unknown_after_or_before_id_raises_key_error(store: SQLStorage) -> None:
    await _fill(store, 3)
    [other_user] = await _fill(store, 1, user="romeo")
    other_store = await store.archive.append("muc", HOST, "juliet", "<m/>")
    for bad in ("no-such-id", other_user, other_store):
        with pytest.raises(KeyError):
            await store.archive.query(MAM, HOST, "juliet", after=bad)
        with pytest.raises(KeyError):
            await store.archive.query(MAM, HOST, "juliet", before=bad, reverse=True, limit=0)


async def test_archive_get_returns_the_item_only_from_its_own_archive(store: SQLStorage) -> None:
    item_id = await store.archive.append(MAM, HOST, "juliet", "<m/>", with_=f"{ROMEO}/r", when=1234.5)
    expected = ArchiveItem(id=item_id, when=1234.5, with_=f"{ROMEO}/r", value="<m/>")
    assert await store.archive.get(MAM, HOST, "juliet", item_id) == expected
    assert await store.archive.get(MAM, HOST, "juliet", "missing") is None
    assert await store.archive.get(MAM, HOST, "romeo", item_id) is None
    assert await store.archive.get("muc", HOST, "juliet", item_id) is None
    assert await store.archive.get(MAM, "other.example", "juliet", item_id) is None


async def test_archive_delete_all_or_only_older_items_and_count(store: SQLStorage) -> None:
    ids = await _fill(store, 6)  # when 1000 .. 1005
    await _fill(store, 2, user="romeo")
    await store.archive.append("muc", HOST, "juliet", "<m/>", when=1.0)
    assert await store.archive.count(MAM, HOST, "juliet") == 6

    assert await store.archive.delete(MAM, HOST, "juliet", before=1002) == 2  # strictly older
    assert [i.id for i in await store.archive.query(MAM, HOST, "juliet")] == ids[2:]
    assert await store.archive.delete(MAM, HOST, "juliet", before=1002) == 0
    assert await store.archive.count(MAM, HOST, "juliet") == 4
    assert await store.archive.get(MAM, HOST, "juliet", ids[0]) is None

    assert await store.archive.delete(MAM, HOST, "juliet") == 4
    assert await store.archive.count(MAM, HOST, "juliet") == 0
    assert await store.archive.query(MAM, HOST, "juliet") == []
    assert await store.archive.delete(MAM, HOST, "juliet") == 0
    # Other users' and other stores' items are untouched.
    assert await store.archive.count(MAM, HOST, "romeo") == 2
    assert await store.archive.count("muc", HOST, "juliet") == 1


async def test_archive_stores_users_and_hosts_are_isolated(store: SQLStorage) -> None:
    archives = [
        (MAM, HOST, "juliet"),
        ("muc", HOST, "juliet"),
        (MAM, HOST, "romeo"),
        (MAM, "other.example", "juliet"),
        (MAM, HOST, ""),
    ]
    for n, (name, host, user) in enumerate(archives, start=1):
        for i in range(n):
            value = f"{name}/{host}/{user}/{i}"
            await store.archive.append(name, host, user, value, with_=ROMEO, when=1000 + i)
    for n, (name, host, user) in enumerate(archives, start=1):
        assert await store.archive.count(name, host, user) == n
        items = await store.archive.query(name, host, user, with_=ROMEO)
        assert [i.value for i in items] == [f"{name}/{host}/{user}/{i}" for i in range(n)]
    assert await store.archive.count("other", HOST, "juliet") == 0


async def test_concurrent_archive_appends_get_distinct_ids(store: SQLStorage) -> None:
    ids = await asyncio.gather(
        *(store.archive.append(MAM, HOST, "juliet", f"<m n='{i}'/>", when=1000.0) for i in range(20))
    )
    assert len(set(ids)) == 20
    assert await store.archive.count(MAM, HOST, "juliet") == 20
    items = await store.archive.query(MAM, HOST, "juliet")
    assert sorted(i.id for i in items) == sorted(ids)


async def test_archive_append_many_keeps_order_ids_and_users_apart(store: SQLStorage) -> None:
    items = [
        (HOST, "juliet" if i % 3 else "romeo", ArchiveItem(f"id-{i}", 1000.0 + i // 4, ROMEO, f"<m{i}/>"))
        for i in range(25)
    ]
    await store.archive.append_many(MAM, items)
    await store.archive.append_many(MAM, [])  # nothing to do
    for user in ("juliet", "romeo"):
        got = await store.archive.query(MAM, HOST, user)
        # equal timestamps (four per second) keep the order given
        assert [i.id for i in got] == [it.id for h, u, it in items if u == user]
        assert [i.value for i in got] == [it.value for h, u, it in items if u == user]
    first = items[1][2]
    assert await store.archive.get(MAM, HOST, "juliet", "id-1") == ArchiveItem("id-1", 1000.0, ROMEO, "<m1/>")
    assert first.id == "id-1"
    # paging works over bulk-written items like over single appends
    page = await store.archive.query(MAM, HOST, "juliet", after="id-1", limit=2)
    assert [i.id for i in page] == ["id-2", "id-4"]
    # a repeated id is refused as a whole batch (ids are unique)
    with pytest.raises(sa.exc.IntegrityError):
        await store.archive.append_many(MAM, [(HOST, "juliet", ArchiveItem("new", 1.0, None, "<m/>")),
                                              (HOST, "juliet", ArchiveItem("id-1", 1.0, None, "<m/>"))])
    assert await store.archive.get(MAM, HOST, "juliet", "new") is None


async def test_archive_append_many_writes_large_batches(store: SQLStorage) -> None:
    n = 25_000  # more than one executemany chunk
    await store.archive.append_many(
        MAM, [(HOST, "juliet", ArchiveItem(f"b{i}", 1000.0 + i, ROMEO, "<m/>")) for i in range(n)]
    )
    assert await store.archive.count(MAM, HOST, "juliet") == n
    last = await store.archive.query(MAM, HOST, "juliet", limit=2, reverse=True)
    assert [i.id for i in last] == [f"b{n - 1}", f"b{n - 2}"]


async def test_archive_prune_deletes_old_items_of_every_user(store: SQLStorage) -> None:
    await _fill(store, 4)  # 1000..1003
    await _fill(store, 4, user="romeo")
    await store.archive.append(MAM, "other.example", "juliet", "<m/>", when=1000.0)
    await store.archive.append("muc", HOST, "juliet", "<m/>", when=1.0)
    assert await store.archive.prune(MAM, 1002.0, host=HOST) == 4
    assert await store.archive.count(MAM, HOST, "juliet") == 2
    assert await store.archive.count(MAM, HOST, "romeo") == 2
    assert await store.archive.count(MAM, "other.example", "juliet") == 1  # other domain kept
    assert await store.archive.count("muc", HOST, "juliet") == 1  # other store kept
    assert await store.archive.prune(MAM, 5000.0) == 5
    assert await store.archive.count(MAM, "other.example", "juliet") == 0


async def test_archive_full_text_search_matches_every_word(store: SQLStorage) -> None:
    texts = ["Wherefore art thou Romeo", "a rose by any other name", "ROMEO, doff thy name", None,
             'quotes " and * operators OR NEAR']
    await store.archive.append_many(MAM, [
        (HOST, "juliet", ArchiveItem(f"t{i}", 1000.0 + i, ROMEO, f"<m{i}/>", t)) for i, t in enumerate(texts)
    ])
    await store.archive.append_many(MAM, [(HOST, "romeo", ArchiveItem("r0", 1.0, None, "<m/>", "romeo"))])

    async def search(q: str, **kw: object) -> list[str]:
        return [i.id for i in await store.archive.query(MAM, HOST, "juliet", text=q, **kw)]  # type: ignore[arg-type]

    assert await search("romeo") == ["t0", "t2"]  # case-insensitive, only this user's archive
    assert await search("name romeo") == ["t2"]  # every word
    assert await search("name") == ["t1", "t2"]
    assert await search("name", reverse=True, limit=1) == ["t2"]
    assert await search("name", after="t1") == ["t2"]
    assert await search("juliet") == []
    assert await search('" * OR') == ["t4"]  # user input is never query syntax
    assert await search("   ") == []
    # deleted items leave the index
    await store.archive.delete(MAM, HOST, "juliet", before=1001.0)
    assert await search("romeo") == ["t2"]


# -- whole-user and lifecycle -----------------------------------------------------------------------


async def test_deleting_an_account_removes_its_data_from_every_store(store: SQLStorage) -> None:
    for user in ("juliet", "romeo"):
        await store.accounts.create(HOST, user, {"SHA-256": cred(user)})
        await store.roster.set_item(HOST, user, RosterItem(jid="nurse@example.com"))
        await store.roster.add_pending_in(HOST, user, "tybalt@example.net", "<presence/>")
        await store.kv.set("vcard", HOST, user, "", "<vCard/>")
        await store.kv.set("private", HOST, user, "k", "v")
        await store.offline.push(HOST, user, "<message/>")
        await store.archive.append(MAM, HOST, user, "<message/>", with_=ROMEO)
        await store.archive.append("muc", HOST, user, "<message/>")
    await store.kv.set("private", HOST, "", "host-wide", "x")
    await store.archive.append(MAM, HOST, "", "<host-wide/>")

    assert await store.accounts.delete(HOST, "juliet")

    assert await store.accounts.get_credentials(HOST, "juliet") is None
    assert await store.roster.get(HOST, "juliet") == ("0", {})
    assert await store.roster.get_pending_in(HOST, "juliet") == {}
    assert await store.kv.keys("vcard", HOST, "juliet") == []
    assert await store.kv.keys("private", HOST, "juliet") == []
    assert await store.offline.count(HOST, "juliet") == 0
    assert await store.archive.count(MAM, HOST, "juliet") == 0
    assert await store.archive.count("muc", HOST, "juliet") == 0
    # Nobody else's data is touched.
    assert await store.accounts.get_credentials(HOST, "romeo") == {"SHA-256": cred("romeo")}
    assert len((await store.roster.get(HOST, "romeo"))[1]) == 1
    assert await store.roster.get_pending_in(HOST, "romeo") != {}
    assert await store.kv.keys("private", HOST, "romeo") == ["k"]
    assert await store.kv.keys("private", HOST, "") == ["host-wide"]
    assert await store.offline.count(HOST, "romeo") == 1
    assert await store.archive.count(MAM, HOST, "romeo") == 1
    assert await store.archive.count("muc", HOST, "romeo") == 1
    assert await store.archive.count(MAM, HOST, "") == 1


async def test_data_survives_close_and_reopen(url: str) -> None:
    first = SQLStorage(url)
    await first.open()
    await first.accounts.create(HOST, "juliet", {"SHA-256": cred()})
    version = await first.roster.set_item(HOST, "juliet", RosterItem(jid="romeo@example.net", groups=["g"]))
    await first.kv.set("vcard", HOST, "juliet", "", "<vCard/>")
    await first.offline.push(HOST, "juliet", "<message/>")
    await first.close()

    second = SQLStorage(url)
    await second.open()
    try:
        assert await second.accounts.get_credentials(HOST, "juliet") == {"SHA-256": cred()}
        assert await second.roster.get(HOST, "juliet") == (
            version,
            {"romeo@example.net": RosterItem(jid="romeo@example.net", groups=["g"])},
        )
        assert await second.kv.get("vcard", HOST, "juliet", "") == "<vCard/>"
        assert await second.offline.pop_all(HOST, "juliet") == ["<message/>"]
    finally:
        await second.close()


async def test_migrations_are_idempotent_and_reach_head(url: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    await storage.open()  # no-op on an open instance
    await storage.accounts.create(HOST, "juliet", {})
    await storage.close()
    again = SQLStorage(url)
    await again.open()  # migrations already at head: nothing to do, data intact
    try:
        assert await again.accounts.exists(HOST, "juliet")
        assert again._engine is not None
        async with again._engine.connect() as conn:
            heads = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all()
        assert heads == ["0003"]
    finally:
        await again.close()


def _upgrade_to(connection: sa.Connection, revision: str) -> None:
    config = sql._alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_open_upgrades_a_revision_0001_database_keeping_its_data(url: str) -> None:
    # Build the database as revision 0001 left it, with some data, the way open() migrates.
    old = SQLStorage(url)
    engine = old._create_engine()
    try:
        async with engine.execution_options(rookery_write=True, rookery_migrate=True).begin() as conn:
            if old.schema is not None:
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{old.schema}"')
            await conn.run_sync(_upgrade_to, "0001")
            assert not await conn.run_sync(lambda c: sa.inspect(c).has_table("archive"))
            juliet = {"host": HOST, "username": "juliet"}
            await conn.execute(sa.insert(sql.accounts).values(**juliet, created_at=1.0))
            await conn.execute(sa.insert(sql.kv).values(**juliet, store="vcard", key="", value="<vCard/>"))
            await conn.execute(sa.insert(sql.offline).values(**juliet, stanza="<message/>", created_at=2.0))
    finally:
        await engine.dispose()

    storage = SQLStorage(url)
    await storage.open()
    try:
        assert await storage.accounts.exists(HOST, "juliet")
        assert await storage.kv.get("vcard", HOST, "juliet", "") == "<vCard/>"
        assert await storage.offline.count(HOST, "juliet") == 1
        assert storage._engine is not None
        async with storage._engine.connect() as conn:
            heads = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars().all()

            def schema(c: sa.Connection) -> tuple[set[str], dict[str | None, tuple[list[str | None], bool]]]:
                inspector = sa.inspect(c)
                columns = {col["name"] for col in inspector.get_columns("archive")}
                indexes = {
                    ix["name"]: (list(ix["column_names"]), bool(ix["unique"]))
                    for ix in inspector.get_indexes("archive")
                }
                return columns, indexes

            columns, indexes = await conn.run_sync(schema)
        assert heads == ["0003"]
        # The migration and the Table used to build queries agree.
        assert columns == set(sql.archive.c.keys())
        expected = {
            "ux_archive_id": (["id"], True),
            "ix_archive_user_time": (["host", "username", "store", "ts", "seq"], False),
            "ix_archive_user_peer": (["host", "username", "store", "peer_bare", "ts", "seq"], False),
            "ix_archive_store_time": (["store", "ts"], False),
        }
        if storage.is_postgresql:  # the full-text expression index (SQLite has archive_fts instead)
            expected["ix_archive_fts"] = indexes["ix_archive_fts"]
        assert indexes == expected
        item_id = await storage.archive.append(MAM, HOST, "juliet", "<m/>", with_=ROMEO, when=5.0)
        assert await storage.archive.query(MAM, HOST, "juliet", with_=ROMEO) == [
            ArchiveItem(id=item_id, when=5.0, with_=ROMEO, value="<m/>")
        ]
    finally:
        await storage.close()


async def test_closed_storage_refuses_use(url: str) -> None:
    storage = SQLStorage(url)
    with pytest.raises(RuntimeError):
        await storage.accounts.exists(HOST, "juliet")


async def test_sqlite_connections_use_wal_full_sync_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite+aiosqlite:///{tmp_path / 'p.sqlite'}")
    await storage.open()
    try:
        assert storage._engine is not None
        async with storage._engine.connect() as conn:
            pragmas = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 10000, "foreign_keys": 1}
    finally:
        await storage.close()


_WORKER = """
import asyncio, json, sys
from rookery.storage.base import ScramCredential
from rookery.storage.sql import SQLStorage

async def main(url: str, tag: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    cred = ScramCredential(b"salt", 4096, tag.encode(), tag.encode())
    own = [storage.accounts.create("example.org", f"{tag}{i}", {"SHA-256": cred}) for i in range(30)]
    shared = [storage.accounts.create("example.org", f"shared{i}", {"SHA-256": cred}) for i in range(10)]
    results = await asyncio.gather(*own, *shared)
    await storage.close()
    print(json.dumps({"own": results[:30], "shared": results[30:]}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_two_processes_create_users_concurrently_in_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.sqlite'}"
    src = str(Path(rookery.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            url,
            tag,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for tag in ("p", "q")
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    p, q = (json.loads(out) for out, _ in outputs)
    assert p["own"] == [True] * 30 and q["own"] == [True] * 30
    assert [a + b for a, b in zip(p["shared"], q["shared"], strict=True)] == [1] * 10

    storage = SQLStorage(url)
    await storage.open()
    try:
        assert len(await storage.accounts.list("example.org")) == 70
    finally:
        await storage.close()


# -- make_storage -----------------------------------------------------------------------------------


def test_make_storage_sqlite_uses_a_file_in_a_created_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    storage = make_storage("sqlite", str(data_dir))
    assert data_dir.is_dir()
    assert storage.url.drivername == "sqlite+aiosqlite"
    assert storage.url.database == str(data_dir.resolve() / "rookery.sqlite")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_make_storage_rewrites_postgresql_urls_to_asyncpg(scheme: str, tmp_path: Path) -> None:
    storage = make_storage(f"{scheme}://u:secret@db.example:5433/xmpp?schema=rk", str(tmp_path))
    assert storage.url.drivername == "postgresql+asyncpg"
    assert (storage.url.host, storage.url.port, storage.url.database) == ("db.example", 5433, "xmpp")
    assert storage.schema == "rk" and "schema" not in storage.url.query
    assert "secret" not in repr(storage)


@pytest.mark.parametrize(
    "spec", ["mysql://x/y", "postgresql://h/db?schema=Bad-Name", "sqlite+aiosqlite:///:memory:"]
)
def test_make_storage_rejects_unsupported_specs(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_storage(spec, str(tmp_path))
