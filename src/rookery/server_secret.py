"""The server's own secret: random bytes kept in ``data_dir/secret`` (mode 0600), created at first start.

Values derived from it stay the same across restarts, so they tell nothing about when the server
restarted: the SCRAM salts of unknown users (``streams.sasl.fake_credential``) must look as stable as
real accounts' salts.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE_NAME = "secret"
SIZE = 32


def load_or_create(data_dir: Path) -> bytes:
    """The secret in ``data_dir`` (created atomically when missing; a second server starting at the
    same moment reads the one that won)."""
    path = data_dir / FILE_NAME
    try:
        data = path.read_bytes()
        if len(data) >= SIZE:
            return data
    except FileNotFoundError:
        pass
    tmp = data_dir / f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(SIZE))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails when another process created it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()
