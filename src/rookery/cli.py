"""Command line: ``rookery serve | adduser | passwd | deluser | users | invite | check``.

Every error is one line naming the problem, with a non-zero exit status.  User commands work while
the server runs: they write to storage and tell the running server over its control socket.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import re
import signal
import sys
from typing import Any

from .config import Config, ConfigError, load_config
from .jid import JID, InvalidJID


class CLIError(Exception):
    pass


def _config(args: argparse.Namespace) -> Config:
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


def _check_paths(cfg: Config, create: bool = True) -> None:
    """Errors the schema cannot see: an unusable ``data_dir``, unreadable ``tls.cert`` / ``tls.key``."""
    try:
        if create:
            cfg.data_path().mkdir(parents=True, exist_ok=True)
        elif cfg.data_path().exists() and not cfg.data_path().is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as e:
        raise CLIError(f"data_dir: cannot use {cfg.data_dir}: {e.strerror or e}") from None
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
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", cfg.storage)


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


def cmd_adduser(args: argparse.Namespace) -> int:
    from .streams.sasl import make_credentials

    cfg = _config(args)
    j = _account_jid(cfg, args.jid)
    pw = _read_password(args)
    creds = make_credentials(pw)
    assert j.local is not None
    if not asyncio.run(_with_storage(cfg, lambda st: st.accounts.create(j.domain, j.local, creds))):
        raise CLIError(f"user {j.bare} already exists")
    print(f"created {j.bare}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from .streams.sasl import make_credentials

    cfg = _config(args)
    j = _account_jid(cfg, args.jid)
    pw = _read_password(args)
    creds = make_credentials(pw)
    assert j.local is not None
    if not asyncio.run(_with_storage(cfg, lambda st: st.accounts.set_credentials(j.domain, j.local, creds))):
        raise CLIError(f"user {j.bare} does not exist")
    print(f"password changed for {j.bare}")
    return 0


def cmd_deluser(args: argparse.Namespace) -> int:
    from .control import notify

    cfg = _config(args)
    j = _account_jid(cfg, args.jid)
    assert j.local is not None
    if not asyncio.run(_with_storage(cfg, lambda st: st.accounts.delete(j.domain, j.local))):
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
    for h, u in asyncio.run(_with_storage(cfg, lambda st: st.accounts.list(host))):
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

    token = asyncio.run(_with_storage(cfg, make))
    print(token)
    print(invite_uri(domain, token))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_paths(cfg, create=False)
    print(f"configuration OK: domains {', '.join(cfg.domains)}; storage {_storage_name(cfg)}; "
          f"{len(cfg.modules)} modules")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _check_paths(cfg)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations report themselves only on trouble
    try:
        import uvloop  # type: ignore[import-not-found]

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_serve(cfg))


async def _serve(cfg: Config) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .server import Server

    server = Server(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except (OSError, SQLAlchemyError) as e:
        await server.stop(timeout=0)
        raise CLIError(str(e).splitlines()[0]) from None
    # Start-up objects (imported code, modules, config) live as long as the process: move them out of
    # the cyclic collector's reach so that its full collections stay short (latency, docs/performance.md).
    gc.collect()
    gc.freeze()
    await stop.wait()
    logging.getLogger("rookery").info("shutting down")
    await server.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    helptext = "TOML configuration file (default: built-in defaults)"
    p = argparse.ArgumentParser(prog="rookery", description="Rookery XMPP server")
    p.add_argument("--config", "-c", metavar="FILE", help=helptext)
    # accepted after the sub-command too; SUPPRESS keeps a top-level --config from being reset
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", help=helptext, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the server").set_defaults(fn=cmd_serve)
    for name, fn, helptext in (("adduser", cmd_adduser, "create an account"),
                               ("passwd", cmd_passwd, "change an account's password")):
        sp = sub.add_parser(name, parents=[common], help=helptext)
        sp.add_argument("jid", help="user@domain")
        sp.add_argument("--password", "-p", help="the password (prompted for when omitted; read from stdin when not a terminal)")
        sp.set_defaults(fn=fn)
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
    sub.add_parser("check", parents=[common], help="validate the configuration").set_defaults(fn=cmd_check)
    sub.add_parser("s2s", parents=[common], help="list the running server's server-to-server connections"
                   ).set_defaults(fn=cmd_s2s)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (CLIError, ConfigError) as e:
        print(f"rookery: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
