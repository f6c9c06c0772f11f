#!/usr/bin/env python3
"""Create the benchmark accounts in Rookery's storage, fast, and fill the load generator's SCRAM cache.

    PYTHONPATH=src python bench/rookery_users.py --config bench/rookery-bench.toml --users 1000

``rookery adduser`` starts Python, imports the server and opens the database once per user (about a
second each: ~20 minutes for 1,000 users). This does the same thing (``make_credentials`` +
``accounts.create``, the code ``adduser`` runs) for every user in one process. Existing accounts are kept.

The SCRAM-SHA-1 and SCRAM-SHA-256 salted passwords of the accounts go to ``bench/.scram-cache.json`` so that
``xmppload.py`` does not spend its own CPU on PBKDF2 during the measured login ramp (the server stores
StoredKey/ServerKey and does no PBKDF2 for a SCRAM login, so this only removes client work).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


async def create(args: argparse.Namespace) -> int:
    from rookery.config import load_config
    from rookery.storage.sql import make_storage
    from rookery.streams.sasl import make_credentials

    cfg = load_config(args.config)
    domain = args.domain or cfg.domains[0]
    st = make_storage(cfg.storage, str(cfg.data_path()), offline_limit=cfg.offline.max_messages)
    await st.open()
    cache: dict[str, str] = {}
    if args.scram_cache and os.path.exists(args.scram_cache):
        with open(args.scram_cache) as f:
            cache = json.load(f)
    pw = args.password.encode()
    pw_tag = hashlib.sha256(pw).hexdigest()[:16]
    created = 0
    t0 = time.monotonic()
    try:
        for i in range(args.users):
            user = args.user.replace("{n}", str(i))
            creds = await st.accounts.get_credentials(domain, user)
            if creds is None:
                creds = make_credentials(args.password)
                if await st.accounts.create(domain, user, creds):
                    created += 1
                else:
                    creds = await st.accounts.get_credentials(domain, user) or {}
            for name, algo in (("SHA-1", "sha1"), ("SHA-256", "sha256")):
                c = creds.get(name)
                if c is None:
                    continue
                key = f"{algo}|{pw_tag}|{base64.b64encode(c.salt).decode()}|{c.iterations}"
                if key not in cache:
                    cache[key] = hashlib.pbkdf2_hmac(algo, pw, c.salt, c.iterations).hex()
    finally:
        await st.close()
    if args.scram_cache:
        tmp = args.scram_cache + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, args.scram_cache)
    print(
        f"{created} accounts created, {args.users - created} existed ({time.monotonic() - t0:.1f} s)",
        file=sys.stderr,
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=os.path.join(HERE, "rookery-bench.toml"))
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--user", default="bench{n}")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--domain", default=None, help="default: the first configured domain")
    ap.add_argument("--scram-cache", default=os.path.join(HERE, ".scram-cache.json"), help="'' = none")
    args = ap.parse_args()
    return asyncio.run(create(args))


if __name__ == "__main__":
    sys.exit(main())
