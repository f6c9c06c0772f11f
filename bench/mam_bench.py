"""XEP-0313 archive benchmark: fill one user's archive with N messages in a fresh SQLite database (bulk,
through ``ArchiveStore.append_many``) and time the queries a MAM client makes most.

    .venv/bin/python bench/mam_bench.py                 # 1,000,000 messages in a temporary directory
    .venv/bin/python bench/mam_bench.py -n 200000 --dir /tmp/mam --keep

Reported (median of ``--repeat`` runs, each a query the ``mam`` module would run for a page of 50:
the storage query of 51 rows plus turning the page into the result stanzas):

* latest page — ``<set><max>50</max><before/></set>`` (what a client asks first);
* middle page — ``<set><max>50</max><after>ID</after></set>`` with the id of the message in the middle;
* with filter — the latest page of the conversation with one contact (1 in 100 messages).

Target (issue "Speed"): each under 5 ms on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rookery.modules.mam import MAM
from rookery.storage.base import ArchiveItem
from rookery.storage.sql import SQLStorage

STORE = "mam/messages"
HOST = "localhost"
USER = "juliet"
PEERS = 100
PAGE = 50


def _message(i: int, peer: str, sid: str) -> str:
    return (
        f"<message from='{peer}/phone' to='{USER}@{HOST}/laptop' type='chat' id='m{i}'>"
        f"<body>Message number {i}: a line of ordinary chat text, of ordinary length.</body>"
        f"<origin-id xmlns='urn:xmpp:sid:0' id='o{i}'/>"
        f"<stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='{USER}@{HOST}'/></message>"
    )


async def fill(storage: SQLStorage, n: int, batch: int) -> tuple[list[str], float]:
    t0 = time.perf_counter()
    start = time.time() - n  # one message a second up to now
    ids: list[str] = []
    for base in range(0, n, batch):
        rows = []
        for i in range(base, min(n, base + batch)):
            sid = secrets.token_urlsafe(12)
            peer = f"contact{i % PEERS}@example.net"
            rows.append((HOST, USER, ArchiveItem(sid, start + i, f"{peer}/phone", _message(i, peer, sid))))
            ids.append(sid)
        await storage.archive.append_many(STORE, rows)
        done = min(n, base + batch)
        rate = done / (time.perf_counter() - t0)
        print(f"\r  filled {done:>9,} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return ids, time.perf_counter() - t0


class _Results:
    """What the module does with a page: parse each item and build its result message."""

    def __init__(self) -> None:
        import logging

        self.log = logging.getLogger("bench")

    def build(self, items: list[ArchiveItem]) -> int:
        out = 0
        for item in items:
            el = MAM._result(self, item, "q1", (HOST, USER), f"{USER}@{HOST}/laptop")  # type: ignore[arg-type]
            out += el is not None
        return out


async def timed(fn, repeat: int) -> tuple[float, int]:
    times = []
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), n


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="messages to archive (default 1,000,000)")
    ap.add_argument("--batch", type=int, default=50_000, help="rows per append_many call")
    ap.add_argument("--repeat", type=int, default=21, help="runs per query (the median is reported)")
    ap.add_argument("--dir", help="directory for the database (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()

    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rookery-mam-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "mam-bench.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    storage = SQLStorage(f"sqlite+aiosqlite:///{db}")
    await storage.open()
    try:
        print(f"filling {args.n:,} messages into {db} ...", file=sys.stderr)
        ids, fill_s = await fill(storage, args.n, args.batch)
        size = sum(Path(str(db) + s).stat().st_size for s in ("", "-wal") if Path(str(db) + s).exists())
        results = _Results()
        middle = ids[len(ids) // 2]
        peer = "contact42@example.net"

        async def latest() -> int:
            rows = await storage.archive.query(STORE, HOST, USER, limit=PAGE + 1, reverse=True)
            rows = rows[:PAGE]
            rows.reverse()
            return results.build(rows)

        async def middle_page() -> int:
            rows = await storage.archive.query(STORE, HOST, USER, after=middle, limit=PAGE + 1)
            return results.build(rows[:PAGE])

        async def with_filter() -> int:
            rows = await storage.archive.query(STORE, HOST, USER, with_=peer, limit=PAGE + 1, reverse=True)
            rows = rows[:PAGE]
            rows.reverse()
            return results.build(rows)

        await latest()  # warm the page cache once, as a running server would be
        print(f"archive: {args.n:,} messages, {size / 2**20:,.0f} MiB, filled in {fill_s:,.1f} s "
              f"({args.n / fill_s:,.0f} messages/s)")
        print(f"query times, median of {args.repeat}, page of {PAGE}:")
        for name, fn in (("latest page", latest), ("middle page (after-id)", middle_page),
                         ("with filter (latest page)", with_filter)):
            ms, n = await timed(fn, args.repeat)
            print(f"  {name:<28} {ms:7.2f} ms  ({n} results)")
    finally:
        await storage.close()
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True) if not args.dir else db.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
