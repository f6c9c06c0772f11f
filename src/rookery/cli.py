"""Command line: ``rookery serve | status | sessions | kick | reload | debug | adduser | passwd |
deluser | users | invite | cert | check``.

Every error is one line naming the problem, with a non-zero exit status.  User commands work while
the server runs: they write to storage and tell the running server over its control socket; ``status``,
``sessions``, ``kick``, ``reload`` and ``debug`` ask the running server over it.

The CLI starts fast: only argparse and the configuration are imported up front; storage, TLS and the
server are imported by the commands that need them.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from . import __version__
from .jid import JID, InvalidJID

if TYPE_CHECKING:
    from .config import Config


class CLIError(Exception):
    pass


def _config(args: argparse.Namespace) -> Config:
    from .config import load_config  # pydantic: only for commands that need the configuration

    return load_config(args.config)


def _account_jid(cfg: Config, s: str) -> JID:
    try:
        j = JID.parse(s)
    except InvalidJID as e:
        raise CLIError(f"invalid JID {s!r}: {e}") from None
    if j.local is None or j.resource is not None:
        raise CLIError(f"invalid JID {s!r}: an account address is user@domain")
    if j.domain not in cfg.domains:
        raise CLIError(f"domain {j.domain!r} is not served here (domains: {', '.join(cfg.domains)})")
    return j


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        pw = args.password
    elif sys.stdin.isatty():
        import getpass

        try:
            pw = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != pw:
                raise CLIError("the passwords do not match")
        except EOFError:
            raise CLIError("no password given") from None
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        raise CLIError("the password must not be empty")
    try:
        from precis_i18n import get_profile

        get_profile("OpaqueString").enforce(pw)
    except UnicodeError as e:
        raise CLIError(f"the password is not valid (RFC 8265 OpaqueString): {e}") from None
    return pw


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _check_writable(cfg: Config) -> None:
    """The data dir and the SQLite database must be writable by this process (the server would start
    and then fail every write)."""
    import os

    data = cfg.data_path()
    who = f"user {_user_name(os.geteuid())}"
    if not os.access(data, os.W_OK | os.X_OK):
        raise CLIError(f"data_dir: {data} is not writable by {who}; fix its owner or mode (chown/chmod)")
    if cfg.storage == "sqlite":
        for name in ("rookery.sqlite", "rookery.sqlite-wal", "rookery.sqlite-shm"):
            f = data / name
            if f.exists() and not os.access(f, os.R_OK | os.W_OK):
                raise CLIError(f"storage: the database file {f} is not writable by {who}; fix its owner or mode")


def _check_paths(cfg: Config, create: bool = True, serving: bool = False) -> None:
    """Errors the schema cannot see: an unusable ``data_dir``, unreadable ``tls.cert`` / ``tls.key``."""
    import os

    os.umask(0o077)  # data files 0600, directories 0700: they hold password keys and messages
    data = cfg.data_path()
    existed = data.exists()
    try:
        if create:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif existed and not data.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as e:
        raise CLIError(f"data_dir: cannot use {cfg.data_dir}: {e.strerror or e}") from None
    if create:
        _check_writable(cfg)
        owner = data.stat().st_uid
        if existed and owner != os.geteuid() and os.geteuid() == 0 and not serving:
            print(f"warning: {data} belongs to uid {owner}, this command runs as root: files it creates there "
                  f"may not be writable by the server (run it as the server's user, e.g. sudo -u "
                  f"{_user_name(owner)} rookery ...)", file=sys.stderr)
    if cfg.tls.cert and cfg.tls.key:
        from pathlib import Path

        from .tls import server_context

        try:
            server_context(Path(cfg.tls.cert), Path(cfg.tls.key), cfg.tls.min_version)
        except OSError as e:  # ssl.SSLError too
            raise CLIError(f"tls.cert / tls.key: cannot load {cfg.tls.cert} / {cfg.tls.key}: "
                           f"{e.strerror or e}") from None


def _storage_name(cfg: Config) -> str:
    """The ``storage`` setting without its password, for messages."""
    import re

    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", cfg.storage)


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


async def _with_storage(cfg: Config, fn: Any) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from .storage.sql import make_storage

    _check_paths(cfg)
    st = make_storage(cfg.storage, str(cfg.data_path()), offline_limit=cfg.offline_limit)
    try:
        await st.open()
    except (OSError, SQLAlchemyError) as e:
        raise CLIError(f"storage: cannot open {_storage_name(cfg)}: {str(e).splitlines()[0]}") from None
    try:
        return await fn(st)
    finally:
        await st.close()


def _notify(cfg: Config, req: dict[str, Any]) -> None:
    from .control import notify

    notify(cfg.data_path(), req)


def _bulk_users(cfg: Config, args: argparse.Namespace) -> list[tuple[JID, str | None]]:
    """The accounts to create: several JIDs, or ``--from-file`` lines ``user@domain [password]``
    (``-``: stdin; blank lines and ``#`` comments skipped).  Every line is checked before anything
    is created."""
    out: list[tuple[JID, str | None]] = [(_account_jid(cfg, j), args.password) for j in args.jid]
    if args.from_file is not None:
        try:
            if args.from_file == "-":
                lines = sys.stdin.read().splitlines()
            else:
                with open(args.from_file, encoding="utf-8") as f:
                    lines = f.read().splitlines()
        except OSError as e:
            raise CLIError(f"--from-file: cannot read {args.from_file}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise CLIError(f"--from-file: {args.from_file} is not UTF-8 text") from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            jid, _, pw = line.partition(" ")
            try:
                j = _account_jid(cfg, jid)
            except CLIError as e:
                raise CLIError(f"{args.from_file}, line {n}: {e}") from None
            out.append((j, pw.strip() or None))
    seen: set[str] = set()
    for j, _ in out:
        if j.bare in seen:
            raise CLIError(f"{j.bare} is named twice")
        seen.add(j.bare)
    if not out:
        raise CLIError("no account to create (give user@domain, or --from-file with one per line)")
    return out


def cmd_adduser(args: argparse.Namespace) -> int:
    import secrets

    from .streams.sasl import make_credentials

    cfg = _config(args)
    if len(args.jid) == 1 and args.from_file is None:
        j = _account_jid(cfg, args.jid[0])
        pw = _read_password(args)
        creds = make_credentials(pw)
        assert j.local is not None
        if not _run(_with_storage(cfg, lambda st: st.accounts.create(j.domain, j.local, creds))):
            raise CLIError(f"user {j.bare} already exists")
        _notify(cfg, {"op": "user-created", "host": j.domain, "user": j.local})
        print(f"created {j.bare}")
        return 0
    todo = _bulk_users(cfg, args)
    made = [(j, pw or secrets.token_urlsafe(12), pw is None) for j, pw in todo]

    async def create(st: Any) -> list[str]:
        import asyncio

        exists = []
        for j, pw, _ in made:
            creds = await asyncio.to_thread(make_credentials, pw)
            if not await st.accounts.create(j.domain, j.local, creds):
                exists.append(j.bare)
        return exists

    exists = _run(_with_storage(cfg, create))
    for j, pw, generated in made:
        if j.bare not in exists:
            _notify(cfg, {"op": "user-created", "host": j.domain, "user": j.local})
            print(f"created {j.bare}" + (f" {pw}" if generated else ""))
    if exists:
        raise CLIError(f"{len(exists)} of {len(made)} already existed, not changed: {', '.join(exists)}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from .streams.sasl import make_credentials

    cfg = _config(args)
    j = _account_jid(cfg, args.jid)
    pw = _read_password(args)
    creds = make_credentials(pw)
    assert j.local is not None
    if not _run(_with_storage(cfg, lambda st: st.accounts.set_credentials(j.domain, j.local, creds))):
        raise CLIError(f"user {j.bare} does not exist")
    print(f"password changed for {j.bare}")
    return 0


def cmd_deluser(args: argparse.Namespace) -> int:
    from .control import notify

    cfg = _config(args)
    j = _account_jid(cfg, args.jid)
    assert j.local is not None
    if not _run(_with_storage(cfg, lambda st: st.accounts.delete(j.domain, j.local))):
        raise CLIError(f"user {j.bare} does not exist")
    notify(cfg.data_path(), {"op": "user-deleted", "host": j.domain, "user": j.local})
    print(f"deleted {j.bare}")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    cfg = _config(args)
    host = None
    if args.domain:
        try:
            host = JID.parse(args.domain).domain
        except InvalidJID as e:
            raise CLIError(f"invalid domain {args.domain!r}: {e}") from None
        if host not in cfg.domains:
            raise CLIError(f"domain {host!r} is not served here (domains: {', '.join(cfg.domains)})")
    for h, u in _run(_with_storage(cfg, lambda st: st.accounts.list(host))):
        print(f"{u}@{h}")
    return 0


def cmd_s2s(args: argparse.Namespace) -> int:
    """List the running server's s2s connections (through its control socket)."""
    from .control import notify

    cfg = _config(args)
    resp = notify(cfg.data_path(), {"op": "s2s"})
    if resp is None:
        raise CLIError(f"no running server answers on {cfg.data_path()} (is it running with this configuration?)")
    if not resp.get("ok"):
        raise CLIError(str(resp.get("error", "the server refused the request")))
    rows = resp.get("s2s", [])
    if not rows:
        print("no s2s connections" if resp.get("enabled") else "federation is off ([s2s] has no listener or host)")
        return 0
    head = ("PEER", "LOCAL", "DIR", "STATE", "AUTH", "TLS", "IDLE", "QUEUED")
    table = [head] + [(r["domain"], r["local"], r["direction"], r["state"], r["auth"] or "-", r["tls"] or "-",
                       f"{r['idle']:.0f}s", str(r["queued"])) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_invite(args: argparse.Namespace) -> int:
    """XEP-0401 / XEP-0445: a single-use invite token for in-band registration (``[register]
    invite_only``), printed with its ``xmpp:`` URI."""
    from .modules.register import INVITES_STORE, create_invite, invite_uri
    from .storage.views import ModuleStores

    cfg = _config(args)
    domain = cfg.domains[0]
    if args.domain is not None:
        try:
            domain = JID.parse(args.domain).domain
        except InvalidJID as e:
            raise CLIError(f"invalid domain {args.domain!r}: {e}") from None
        if domain not in cfg.domains or JID.parse(args.domain).local is not None:
            raise CLIError(f"domain {args.domain!r} is not served here (domains: {', '.join(cfg.domains)})")
    try:
        expires = float(args.expires)
    except ValueError:
        expires = -1.0
    if not 0 < expires <= 10 * 365 * 86400:
        raise CLIError(f"--expires: {args.expires!r} is not a positive number of seconds (at most ten years)")

    async def make(st: Any) -> str:
        return await create_invite(ModuleStores(st).open_store("register", INVITES_STORE, "map"), domain, expires)

    token = _run(_with_storage(cfg, make))
    print(token)
    print(invite_uri(domain, token))
    return 0


# -- certificates ------------------------------------------------------------------------------------
def _cert_problems(cfg: Config, out: list[str]) -> list[str]:
    """For ``cert check`` and ``check``: a line per served domain into ``out``; the problems found."""
    import datetime
    from pathlib import Path

    from .tls import covers, describe

    problems: list[str] = []
    tls_dir = cfg.data_path("tls")
    now = datetime.datetime.now(datetime.UTC)
    for d in cfg.domains:
        cert: Path | None = None
        key: Path | None = None
        origin = ""
        for name, pair in cfg.tls.domains.items():
            if name == d:
                cert, key, origin = Path(pair.cert), Path(pair.key), f'[tls.domains."{d}"]'
        if cert is None and (tls_dir / f"{d}.crt").exists():
            cert, key, origin = tls_dir / f"{d}.crt", tls_dir / f"{d}.key", "imported"
        if cert is None and cfg.tls.cert and cfg.tls.key:
            cert, key, origin = Path(cfg.tls.cert), Path(cfg.tls.key), "[tls] cert"
        if cert is None:
            cert, key, origin = tls_dir / "rookery.crt", tls_dir / "rookery.key", "self-signed"
            if not cert.exists():
                out.append(f"{d}: no certificate yet (a self-signed one is made at first start)")
                continue
        assert key is not None
        try:
            info = describe(cert)
        except (OSError, ValueError) as e:
            problems.append(f"{d}: cannot read {cert}: {getattr(e, 'strerror', None) or e}")
            continue
        try:
            from .tls import server_context

            server_context(cert, key)
        except (OSError, ValueError) as e:
            problems.append(f"{d}: {cert} / {key} do not load as a pair: {getattr(e, 'strerror', None) or e}")
        names = [str(n) for n in info["names"]]  # type: ignore[attr-defined]
        not_after: datetime.datetime = info["not_after"]  # type: ignore[assignment]
        days = (not_after - now).days
        chain = int(info["chain_length"])  # type: ignore[call-overload]
        out.append(f"{d}: {cert} ({origin}{', self-signed' if info['self_signed'] else ''}), "
                   f"expires {not_after:%Y-%m-%d} ({days} days), names {', '.join(names)}, "
                   f"chain of {chain}{'' if info['chain_ok'] else ' OUT OF ORDER'}")
        if not covers(names, d):
            problems.append(f"{d}: the certificate {cert} does not cover it (names: {', '.join(names)})")
        if not_after < now:
            problems.append(f"{d}: the certificate {cert} expired on {not_after:%Y-%m-%d}")
        elif days < 14:
            out.append(f"warning: {d}: the certificate expires in {days} days")
        if not info["chain_ok"]:
            problems.append(f"{d}: the chain in {cert} is not in order (leaf first, then each issuer)")
    return problems


def cmd_cert_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    lines: list[str] = []
    problems = _cert_problems(cfg, lines)
    for ln in lines:
        print(ln)
    if problems:
        raise CLIError("; ".join(problems))
    return 0


def cmd_cert_import(args: argparse.Namespace) -> int:
    """Let's Encrypt style ``<DIR>/<name>/fullchain.pem`` + ``privkey.pem`` (or DIR itself holding
    them): each served domain a certificate covers is copied to ``<data_dir>/tls/<domain>.crt/.key``."""
    import os
    from pathlib import Path

    from .tls import covers, describe, server_context

    cfg = _config(args)
    src = Path(args.dir)
    try:
        subdirs = [src] + sorted(p for p in src.iterdir() if p.is_dir())
    except OSError as e:
        raise CLIError(f"cannot read the directory {src}: {e.strerror or e}") from None
    found: dict[str, tuple[Path, Path, str]] = {}
    for sd in subdirs:
        chain, key = sd / "fullchain.pem", sd / "privkey.pem"
        try:
            if not (chain.is_file() and key.is_file()):
                continue
            info = describe(chain)
            server_context(chain, key)
        except (OSError, ValueError) as e:
            raise CLIError(f"cannot use {chain} / {key}: {getattr(e, 'strerror', None) or e}") from None
        names = [str(n) for n in info["names"]]  # type: ignore[attr-defined]
        for d in cfg.domains:
            if covers(names, d) and (d not in found or sd.name == d):
                found[d] = (chain, key, f"{info['not_after']:%Y-%m-%d}")
    if not found:
        raise CLIError(f"no certificate in {src} covers a served domain ({', '.join(cfg.domains)}); "
                       "expected <name>/fullchain.pem and <name>/privkey.pem")
    _check_paths(cfg)
    tls_dir = cfg.data_path("tls")
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    for d, (chain, key, expires) in sorted(found.items()):
        for source, dest, mode in ((key, tls_dir / f"{d}.key", 0o600), (chain, tls_dir / f"{d}.crt", 0o644)):
            tmp = dest.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(source.read_bytes())
            os.replace(tmp, dest)
        print(f"imported {d} from {chain.parent} (expires {expires})")
    for d in cfg.domains:
        if d not in found:
            print(f"no certificate for {d} in {src}")
    from .control import notify

    if notify(cfg.data_path(), {"op": "reload-tls"}) is not None:
        print("the running server uses them now")
    return 0


# -- XEP-0227 export / import ------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    """All accounts (of one domain) with their data, as XEP-0227, to a file or stdout."""
    import os

    from .storage.sql import export_accounts
    from .xep0227 import export_xml

    cfg = _config(args)
    host = None
    if args.domain is not None:
        host = args.domain.lower()
        if host not in cfg.domains:
            raise CLIError(f"domain {args.domain!r} is not served here (domains: {', '.join(cfg.domains)})")
    accounts = _run(_with_storage(cfg, lambda st: export_accounts(st, host)))
    text = export_xml(accounts)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:  # it holds password hashes: readable by its owner only
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise CLIError(f"cannot write {args.output}: {e.strerror or e}") from None
        print(f"exported {len(accounts)} account(s) to {args.output}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Create the accounts of a XEP-0227 file (Rookery's, Prosody's, ejabberd's) with their data, in one
    transaction: a malformed file, or an account that exists already, changes nothing."""
    from .storage.sql import import_accounts
    from .xep0227 import PIEError, parse

    cfg = _config(args)
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as e:
        raise CLIError(f"cannot read {args.file}: {e.strerror or e}") from None
    try:
        accounts, skipped = parse(data, cfg.domains)
    except PIEError as e:
        raise CLIError(f"{args.file}: {e}; nothing imported") from None

    async def write(st: Any) -> None:
        from sqlalchemy.exc import IntegrityError

        try:
            await import_accounts(st, accounts)
        except FileExistsError as e:
            raise CLIError(f"{args.file}: account {e} exists already; nothing imported") from None
        except IntegrityError:
            raise CLIError(f"{args.file}: an archive item id or roster entry is taken or repeated; "
                           "nothing imported") from None

    _run(_with_storage(cfg, write))
    for a in accounts:
        _notify(cfg, {"op": "user-created", "host": a.host, "user": a.user})
    print(f"imported {len(accounts)} account(s) from {args.file}")
    partial = [f"{a.user}@{a.host}" for a in accounts if a.creds and "SHA-256" not in a.creds]
    if partial:
        print(f"{len(partial)} account(s) have no SCRAM-SHA-256 keys (e.g. {partial[0]}): "
              "they log in with the mechanisms they have keys for, or PLAIN, until `rookery passwd` sets new keys")
    if skipped:
        print("skipped (not kept by this server): " + ", ".join(f"{t} x{n}" for t, n in sorted(skipped.items())))
    return 0


# -- commands that ask the running server ------------------------------------------------------------
def _ask(args: argparse.Namespace, req: dict[str, Any]) -> dict[str, Any]:
    from .control import ControlRequestError, NotRunning, request

    cfg = _config(args)
    try:
        return request(cfg.data_path(), req)
    except (NotRunning, ControlRequestError) as e:
        raise CLIError(str(e)) from None


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s}s"


def _bytes(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def cmd_status(args: argparse.Namespace) -> int:
    r = _ask(args, {"op": "status"})
    if args.json:
        import json

        r.pop("ok", None)
        print(json.dumps(r, indent=2))
        return 0
    print(f"Rookery {r['version']}, pid {r['pid']}, up {_duration(r['uptime'])}")
    print(f"domains: {', '.join(r['domains'])}")
    for kind, addrs in r["listeners"].items():
        print(f"listener {kind}: {', '.join(addrs)}")
    total = sum(r["sessions"].values())
    print(f"sessions: {total} ({', '.join(f'{d}: {n}' for d, n in r['sessions'].items())}); "
          f"connections: {r['connections']}")
    print(f"memory: {_bytes(r['memory_rss'])} RSS")
    print(f"storage: {r['storage']}")
    w = r.get("workers")
    if isinstance(w, dict):  # workers > 1: worker 0 answers; sessions are every worker's
        per = ", ".join(f"worker {i}: {n}" for i, n in sorted(w["sessions"].items()))
        print(f"workers: {w['count']} (supervisor pid {w.get('supervisor')}; this is worker {w['this']}; "
              f"connected: {', '.join(map(str, w['connected']))}); sessions {per}")
    known = {"ok", "version", "pid", "uptime", "domains", "listeners", "sessions", "connections", "memory_rss",
             "storage", "workers"}
    for name, value in r.items():  # sections added by s2s, components, HTTP ...
        if name not in known:
            print(f"{name}: {value if not isinstance(value, (list, dict)) or value else 'none'}")
            if isinstance(value, list):
                for item in value:
                    print(f"  {item}")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"op": "sessions"}
    if args.jid is not None:
        req["jid"] = _any_jid(_config(args), args.jid)
    r = _ask(args, req)
    if args.json:
        import json

        print(json.dumps(r["sessions"], indent=2))
        return 0
    for s in r["sessions"]:
        idle = _duration(s["idle"]) if s["idle"] is not None else "-"
        print(f"{s['jid']}  ip {s['ip'] or '-'}  tls {s['tls'] or '-'}  sasl {s['mechanism'] or '-'}  "
              f"client {s['client'] or '-'}  idle {idle}  {s['state']}")
    if not r["sessions"] and args.jid is not None:
        raise CLIError(f"{args.jid} has no session")
    return 0


def _any_jid(cfg: Config, s: str) -> str:
    """An account or full JID on a served domain (the error names the problem)."""
    try:
        j = JID.parse(s)
    except InvalidJID as e:
        raise CLIError(f"invalid JID {s!r}: {e}") from None
    if j.local is None:
        raise CLIError(f"invalid JID {s!r}: expected user@domain or user@domain/resource")
    if j.domain not in cfg.domains:
        raise CLIError(f"domain {j.domain!r} is not served here (domains: {', '.join(cfg.domains)})")
    return j.full


def cmd_kick(args: argparse.Namespace) -> int:
    jid = _any_jid(_config(args), args.jid)
    req = {"op": "kick", "jid": jid}
    if args.reason:
        req["reason"] = args.reason
    r = _ask(args, req)
    if not r["kicked"]:
        raise CLIError(f"{jid} has no session")
    for j in r["kicked"]:
        print(f"kicked {j}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    _config(args)  # a bad file is reported here, before the server is asked
    r = _ask(args, {"op": "reload"})
    print(f"reloaded: {', '.join(r['applied']) or 'nothing changed'}")
    if r["restart"]:
        print(f"needs a restart to take effect: {', '.join(r['restart'])}")
    return 0


def cmd_debug(args: argparse.Namespace) -> int:
    cfg = _config(args)
    j = _account_jid(cfg, args.jid)
    r = _ask(args, {"op": "debug", "jid": j.bare, "on": not args.off})
    print(f"stanza trace {'off' if args.off else 'on'} for {j.bare} (logger rookery.trace, level debug); "
          f"traced now: {', '.join(r['tracing']) or 'none'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_paths(cfg, create=False)
    print(f"configuration OK: domains {', '.join(cfg.domains)}; storage {_storage_name(cfg)}; "
          f"{len(cfg.modules)} modules")
    lines: list[str] = []
    problems = _cert_problems(cfg, lines)
    for ln in lines:
        print(f"certificate {ln}" if not ln.startswith("warning:") else ln)
    if cfg.storage != "sqlite" or cfg.data_path().exists():
        async def probe(st: Any) -> None:  # reachable and writable: one write, then its removal
            await st.kv.set("rookery-check", "", "", "probe", "1")
            await st.kv.delete("rookery-check", "", "", "probe")

        try:
            _run(_with_storage(cfg, probe))
            print(f"storage OK: {_storage_name(cfg)} is reachable and writable")
        except CLIError as e:
            problems.append(str(e))
        except Exception as e:  # a read-only database file, a permission problem ...
            problems.append(f"storage: cannot write to {_storage_name(cfg)}: {str(e).splitlines()[0]}")
    else:
        print(f"storage: {cfg.data_dir} does not exist yet; it is created at first start")
    if problems:
        raise CLIError("; ".join(problems))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:

    from . import logsetup

    cfg = _config(args)
    _check_paths(cfg, serving=True)
    try:
        logsetup.configure(cfg)
    except OSError as e:
        raise CLIError(f"log.file: cannot open {cfg.log.file}: {e.strerror or e}") from None
    count = cfg.worker_count()
    if count > 1:  # a supervising parent (plain asyncio: it only accepts and hands over) and N workers
        import asyncio

        return int(asyncio.run(_supervise(cfg, args.config, count)))
    return int(event_loop_runner(cfg.event_loop)(_serve(cfg, args.config)))


def event_loop_runner(choice: str) -> Any:
    """``asyncio.run`` or ``uvloop.run`` for the ``event_loop`` setting (``workers.event_loop_runner``)."""
    from .workers import event_loop_runner as runner

    try:
        return runner(choice)
    except ValueError as e:
        raise CLIError(str(e)) from None


async def _serve(cfg: Config, config_path: str | None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .workers import serve_process

    try:
        return await serve_process(cfg, config_path)
    except (OSError, SQLAlchemyError) as e:
        raise CLIError(str(e).splitlines()[0]) from None


async def _supervise(cfg: Config, config_path: str | None, count: int) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .workers import supervise

    try:
        return await supervise(cfg, config_path, count)
    except (OSError, SQLAlchemyError) as e:
        raise CLIError(str(e).splitlines()[0]) from None


def build_parser() -> argparse.ArgumentParser:
    helptext = "TOML configuration file (default: built-in defaults)"
    p = _Parser(prog="rookery", description="Rookery XMPP server")
    p.add_argument("--version", "-V", action="version", version=f"rookery {__version__}")
    p.add_argument("--config", "-c", metavar="FILE", help=helptext)
    # accepted after the sub-command too; SUPPRESS keeps a top-level --config from being reset
    common = _Parser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help=helptext, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the server").set_defaults(fn=cmd_serve)
    pwhelp = "the password (prompted for when omitted; read from stdin when not a terminal)"
    sp = sub.add_parser("adduser", parents=[common], help="create accounts")
    sp.add_argument("jid", nargs="*", help="user@domain (several: each gets --password or a generated one, printed)")
    sp.add_argument("--password", "-p", help=pwhelp)
    sp.add_argument("--from-file", "-f", metavar="FILE",
                    help="create the accounts listed in FILE, one 'user@domain [password]' per line (-: stdin); "
                         "a generated password is printed for lines without one")
    sp.set_defaults(fn=cmd_adduser)
    sp = sub.add_parser("passwd", parents=[common], help="change an account's password")
    sp.add_argument("jid", help="user@domain")
    sp.add_argument("--password", "-p", help=pwhelp)
    sp.set_defaults(fn=cmd_passwd)
    sp = sub.add_parser("deluser", parents=[common], help="delete an account and all its data")
    sp.add_argument("jid", help="user@domain")
    sp.set_defaults(fn=cmd_deluser)
    sp = sub.add_parser("users", parents=[common], help="list accounts")
    sp.add_argument("domain", nargs="?")
    sp.set_defaults(fn=cmd_users)
    sp = sub.add_parser("invite", parents=[common], help="make a single-use invite token for in-band registration")
    sp.add_argument("--domain", "-d", help="the domain the account will be on (default: the first served domain)")
    sp.add_argument("--expires", "-e", default="604800", metavar="SECONDS",
                    help="how long the token is valid (default: 604800, a week)")
    sp.set_defaults(fn=cmd_invite)
    sp = sub.add_parser("export", parents=[common], help="write all accounts and their data as XEP-0227 XML")
    sp.add_argument("output", nargs="?", help="the file to write (default: stdout); created 0600")
    sp.add_argument("--domain", "-d", help="only this domain's accounts")
    sp.set_defaults(fn=cmd_export)
    sp = sub.add_parser("import", parents=[common],
                        help="create the accounts of a XEP-0227 file (Rookery, Prosody, ejabberd exports)")
    sp.add_argument("file", help="the XEP-0227 file (-: stdin)")
    sp.set_defaults(fn=cmd_import)
    sp = sub.add_parser("cert", parents=[common], help="certificates: import, check")
    csub = sp.add_subparsers(dest="cert_command", required=True)
    cp = csub.add_parser("import", parents=[common],
                         help="take fullchain.pem/privkey.pem per domain from DIR (e.g. /etc/letsencrypt/live)")
    cp.add_argument("dir")
    cp.set_defaults(fn=cmd_cert_import)
    csub.add_parser("check", parents=[common], help="names, expiry and chain of each domain's certificate"
                    ).set_defaults(fn=cmd_cert_check)
    sp = sub.add_parser("status", parents=[common], help="the running server: version, uptime, listeners, sessions")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(fn=cmd_status)
    sp = sub.add_parser("sessions", parents=[common], help="connected resources (of one account or full JID)")
    sp.add_argument("jid", nargs="?", help="user@domain or user@domain/resource")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(fn=cmd_sessions)
    sp = sub.add_parser("kick", parents=[common], help="disconnect an account's sessions (or one resource)")
    sp.add_argument("jid", help="user@domain or user@domain/resource")
    sp.add_argument("--reason", "-r", help="the text sent with the <policy-violation/> stream error")
    sp.set_defaults(fn=cmd_kick)
    sub.add_parser("reload", parents=[common],
                   help="re-read the configuration (same as SIGHUP)").set_defaults(fn=cmd_reload)
    sp = sub.add_parser("debug", parents=[common], help="log every stanza of one account (at debug)")
    sp.add_argument("jid", help="user@domain")
    sp.add_argument("--off", action="store_true", help="stop tracing it")
    sp.set_defaults(fn=cmd_debug)
    sub.add_parser("check", parents=[common], help="validate the configuration").set_defaults(fn=cmd_check)
    sub.add_parser("s2s", parents=[common], help="list the running server's server-to-server connections"
                   ).set_defaults(fn=cmd_s2s)
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, like every other error
        print(f"rookery: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError

    try:
        return int(args.fn(args) or 0)
    except (CLIError, ConfigError) as e:
        print(f"rookery: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
