"""XEP-0363: HTTP File Upload (v1.1, ``urn:xmpp:http:upload:0``), as a service on ``upload.<domain>``.

* disco#info of the service (§2): identity ``store/file`` and the XEP-0128 form with
  ``max-file-size``; the service is listed in its domain's disco#items (``service_identity``).
* Slot requests (§4): only the server's own users may ask (``forbidden`` otherwise); a file over
  ``max_file_size`` gets ``not-acceptable`` with ``<file-too-large><max-file-size/>`` (§5); a user
  over ``quota`` gets ``resource-constraint`` with ``<retry stamp=.../>`` when a file of theirs will
  expire.  The slot's PUT and GET URLs are the same, ``<http>/upload/<slot id>/<file name>``; the PUT
  carries ``Authorization: Bearer <expiry>.<mac>``, an HMAC-SHA256 (key derived from the server
  secret) over the slot id, size, content type and expiry.
* PUT (§6): the token must be present (401), valid and unexpired (403), ``Content-Length`` equal
  to the slot's size (413 when larger, 400 when smaller, 411 when missing) and the content type the
  slot's (400).
  The body is streamed to a temporary file in ``data_dir/upload/`` chunk by chunk, never held whole
  in memory, and linked to its final name only when complete: a second PUT to the same slot (a
  replay) gets 409, as does one while the first is still running.  201 when stored.
* GET/HEAD: the file, with a safe ``Content-Type`` (images, audio, video and plain text inline;
  everything else ``application/octet-stream`` and ``Content-Disposition: attachment``), a sanitised
  file name, ``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: default-src 'none'``
  (``media-src 'self'`` so that audio and video opened directly still play);
  ranges and conditional requests by aiohttp's ``FileResponse``.

The name of a file on disk is its slot id (random, checked against ``[A-Za-z0-9_-]`` on every
request), never the client's: path traversal through names is impossible.  Slot metadata lives in
the module's stores (``files``: slot id -> owner, size, type, name, times; ``expiry``: a sorted index;
``usage``: a user's slots and sizes), so quota and expiry survive restarts.  Files older than
``expire_after`` are deleted by a periodic clean-up; a slot counts against its owner's quota from
its request until it expires (the files of a deleted account stay until they expire).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element, SubElement

from aiohttp import web
from pydantic import Field

from ..module import Module, ModuleContext, Options, iq_handler
from ..stanza import Stanza, StanzaError
from ..xml import ns
from .disco import data_form, info_query

NS = "urn:xmpp:http:upload:0"
DISCO_INFO = ns.DISCO_INFO
DISCO_ITEMS = ns.DISCO_ITEMS

#: slot ids: 24 url-safe characters (144 random bits)
_SLOT_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
_EXPIRY = re.compile(r"^[0-9]{1,12}$")
CHUNK = 256 * 1024

#: content types served inline (media that browsers render without running code); anything else is
#: served as application/octet-stream with Content-Disposition: attachment
INLINE_TYPES = frozenset((
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
    "text/plain",
))
INLINE_PREFIXES = ("audio/", "video/")


class UploadOptions(Options):
    """``[upload]`` (or ``[modules.upload]``)."""

    #: largest file, in bytes
    max_file_size: int = Field(104857600, ge=1)
    #: bytes one user may have stored at once (0: no quota)
    quota: int = Field(1073741824, ge=0)
    #: seconds an uploaded file is kept (0: forever)
    expire_after: float = Field(604800.0, ge=0)
    #: seconds between two clean-ups of expired files
    cleanup_interval: float = Field(3600.0, gt=0)
    #: seconds a slot's PUT URL stays valid
    token_lifetime: float = Field(300.0, gt=0)


def safe_filename(name: str) -> str:
    """The client's file name made harmless for URLs and ``Content-Disposition``: the last path
    component, no control or format characters, no leading dots, at most 100 characters."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] not in "CZ" or c == " ")
    name = name.strip().lstrip(".").strip()
    if len(name) > 100:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 100 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 16 else name[:100]
    return name or "file"


def served_type(content_type: str) -> tuple[str, bool]:
    """(Content-Type to send, inline?) for a stored file's declared content type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in INLINE_TYPES or media.startswith(INLINE_PREFIXES):
        return media, True
    return "application/octet-stream", False


def content_disposition(name: str, inline: bool) -> str:
    """RFC 6266: an ASCII fallback ``filename`` and the UTF-8 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in name)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Upload(Module):
    """XEP-0363 upload service on ``upload.<domain>``, files on the ``[http]`` listeners."""

    name = "upload"
    subdomain = "upload"
    service_identity = ("store", "file", "HTTP File Upload")
    Options = UploadOptions
    #: the HTTP path prefix of PUT and GET URLs
    http_path = "/upload/"

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        self.files = ctx.open_store("files", "map")  # ("", "", slot id) -> JSON record
        self.expiry = ctx.open_store("expiry", "map")  # ("", "", "<expires:012d>.<slot id>") -> ""
        self.usage = ctx.open_store("usage", "keyval")  # (host, user) -> {slot id: [size, expires]}
        self.dir = ctx.data_path()
        self._key = ctx.derive_key("put-token")
        self._uploading: set[str] = set()
        self._lock = asyncio.Lock()
        self._cleaner: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(self.dir):  # partial uploads of a previous run
            if entry.name.startswith(".part-"):
                os.unlink(entry.path)
        self.ctx.http_route("PUT", self.http_path, self.put, prefix=True, cors=True)
        self.ctx.http_route("GET", self.http_path, self.get, prefix=True, cors=True)
        if any(self.ctx.options_for(h).expire_after > 0 for h in self.ctx.hosts):
            self._cleaner = asyncio.get_running_loop().create_task(self._clean_periodically())

    async def stop(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            try:
                await self._cleaner
            except asyncio.CancelledError:
                pass
            self._cleaner = None

    async def _clean_periodically(self) -> None:
        while True:
            try:
                await self.clean_up()
            except Exception:
                self.log.exception("upload clean-up failed")
            await asyncio.sleep(self.options.cleanup_interval)

    # -- disco ---------------------------------------------------------------------------------------
    @iq_handler("get", DISCO_INFO, "query", to="host", on="service")
    def service_info(self, st: Stanza) -> Element:
        if st.el[0].get("node") is not None:
            raise StanzaError("item-not-found")
        assert st.to is not None
        host = st.to.domain.partition(".")[2]
        assert self.service_identity is not None
        q = info_query(self.service_identity, (DISCO_INFO, DISCO_ITEMS, NS))
        q.append(data_form(NS, {"max-file-size": str(self.ctx.options_for(host).max_file_size)}))
        return st.result(q)

    @iq_handler("get", DISCO_ITEMS, "query", to="host", on="service")
    def service_items(self, st: Stanza) -> Element:
        return st.result(Element(f"{{{DISCO_ITEMS}}}query"))

    # -- slots -----------------------------------------------------------------------------------
    def _local_user(self, st: Stanza) -> tuple[str, str]:
        frm = st.from_
        if st.origin is None or frm is None or frm.local is None or frm.domain not in self.ctx.hosts:
            raise StanzaError("forbidden", "Only local users may upload files")
        return frm.domain, frm.local

    def token(self, slot_id: str, size: int, content_type: str, expires: int) -> str:
        msg = f"{slot_id}\n{size}\n{content_type}\n{expires}".encode()
        mac = hmac.new(self._key, msg, hashlib.sha256).digest()
        return f"{expires}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    @iq_handler("get", NS, "request", to="host", on="service")
    async def request_slot(self, st: Stanza) -> Element:
        try:
            return await self._request_slot(st)
        except StanzaError as e:  # each refusal logged once
            self.log.info("slot request from %s refused: %s", st.from_, e)
            raise

    async def _request_slot(self, st: Stanza) -> Element:
        host, user = self._local_user(st)
        req = st.el[0]
        opts = self.ctx.options_for(host)
        filename = req.get("filename")
        size_s = req.get("size", "")
        ctype = (req.get("content-type") or "").strip()
        if not filename or not size_s.isdigit() or int(size_s) <= 0:
            raise StanzaError("bad-request", "A request needs a filename and a positive size")
        if ctype and not _MEDIA_TYPE.match(ctype.split(";", 1)[0].strip()):
            raise StanzaError("bad-request", "Malformed content-type")
        size = int(size_s)
        if size > opts.max_file_size:
            app = Element(f"{{{NS}}}file-too-large")
            SubElement(app, f"{{{NS}}}max-file-size").text = str(opts.max_file_size)
            raise StanzaError("not-acceptable", f"File too large. The maximum file size is {opts.max_file_size} bytes",
                              app=app)
        name = safe_filename(filename)
        now = time.time()
        slot_id = secrets.token_urlsafe(18)
        expires = int(now + opts.expire_after) if opts.expire_after > 0 else 0
        async with self._lock:  # usage is read, checked and written as one step
            usage: dict[str, list[int]] = json.loads(await self.usage.get(host, user) or "{}")
            if opts.quota and sum(s for s, _ in usage.values()) + size > opts.quota:
                retry = min((e for _, e in usage.values() if e), default=0)
                wait = Element(f"{{{NS}}}retry", stamp=_stamp(retry)) if retry else None
                raise StanzaError("resource-constraint", f"Quota reached: {opts.quota} bytes per user", app=wait)
            record = {"h": host, "u": user, "s": size, "t": ctype, "n": name, "c": now, "e": expires}
            await self.files.set("", "", slot_id, json.dumps(record))
            if expires:
                await self.expiry.set("", "", f"{expires:012d}.{slot_id}", "")
            usage[slot_id] = [size, expires]
            await self.usage.set(host, user, json.dumps(usage))
        url = self.ctx.http_url(f"{self.http_path}{slot_id}/{quote(name, safe='')}")
        put_expires = int(now + opts.token_lifetime)
        slot = Element(f"{{{NS}}}slot")
        put = SubElement(slot, f"{{{NS}}}put", url=url)
        SubElement(put, f"{{{NS}}}header", name="Authorization").text = \
            "Bearer " + self.token(slot_id, size, ctype, put_expires)
        SubElement(slot, f"{{{NS}}}get", url=url)
        self.log.debug("slot %s for %s@%s: %d bytes", slot_id, user, host, size)
        return st.result(slot)

    # -- HTTP ------------------------------------------------------------------------------------
    def _slot_id(self, request: web.Request) -> str:
        slot_id = request.path[len(self.http_path):].split("/", 1)[0]
        if not _SLOT_ID.match(slot_id):
            raise web.HTTPNotFound()
        return slot_id

    async def _record(self, slot_id: str) -> dict[str, Any] | None:
        raw = await self.files.get("", "", slot_id)
        return json.loads(raw) if raw is not None else None

    def _refuse(self, exc: type[web.HTTPException], slot_id: str, why: str) -> web.HTTPException:
        self.log.info("upload PUT %s refused (%d): %s", slot_id, exc.status_code, why)
        if exc is web.HTTPRequestEntityTooLarge:
            return web.HTTPRequestEntityTooLarge(0, text=why + "\n")
        return exc(text=why + "\n")

    async def put(self, request: web.Request) -> web.StreamResponse:
        slot_id = self._slot_id(request)
        rec = await self._record(slot_id)
        if rec is None:
            raise self._refuse(web.HTTPNotFound, slot_id, "no such slot")
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            self.log.info("upload PUT %s refused (401): no bearer token", slot_id)
            raise web.HTTPUnauthorized(text="Authorization: Bearer <token> required\n",
                                       headers={"WWW-Authenticate": "Bearer"})
        exp_s = token.partition(".")[0]
        if not _EXPIRY.match(exp_s) or not hmac.compare_digest(
                token.encode("utf-8", "surrogateescape"), self.token(slot_id, rec["s"], rec["t"], int(exp_s)).encode()):
            raise self._refuse(web.HTTPForbidden, slot_id, "bad upload token")
        if int(exp_s) < time.time():
            raise self._refuse(web.HTTPForbidden, slot_id, "upload token expired")
        final = self.dir / slot_id
        if slot_id in self._uploading or final.exists():
            raise self._refuse(web.HTTPConflict, slot_id, "this slot has been used")
        size = rec["s"]
        length = request.content_length
        if length is None:
            raise self._refuse(web.HTTPLengthRequired, slot_id, "Content-Length required")
        if length > size:
            raise self._refuse(web.HTTPRequestEntityTooLarge, slot_id, f"larger than the slot's {size} bytes")
        if length != size:
            raise self._refuse(web.HTTPBadRequest, slot_id, f"Content-Length is not the slot's {size} bytes")
        if rec["t"]:
            sent = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if sent != rec["t"].split(";", 1)[0].strip().lower():
                raise self._refuse(web.HTTPBadRequest, slot_id, f"Content-Type is not the slot's {rec['t']}")
        self._uploading.add(slot_id)
        tmp = self.dir / f".part-{slot_id}-{secrets.token_hex(4)}"
        try:
            await self._receive(request, tmp, size, slot_id)
            try:
                os.link(tmp, final)  # fails if it exists: one upload per slot
            except FileExistsError:
                raise self._refuse(web.HTTPConflict, slot_id, "this slot has been used") from None
        finally:
            self._uploading.discard(slot_id)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.log.debug("upload %s stored: %d bytes", slot_id, size)
        return web.Response(status=201)

    async def _receive(self, request: web.Request, tmp: Any, size: int, slot_id: str) -> None:
        """Stream the body into ``tmp``: at most ``size`` bytes, all of them, then fsync."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            got = 0
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                got += len(chunk)
                if got > size:
                    raise self._refuse(web.HTTPRequestEntityTooLarge, slot_id, "more data than the slot's size")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if got != size:
                raise self._refuse(web.HTTPBadRequest, slot_id, f"{got} bytes received of {size}")
            await asyncio.get_running_loop().run_in_executor(None, os.fsync, fd)
        finally:
            os.close(fd)

    async def get(self, request: web.Request) -> web.StreamResponse:
        slot_id = self._slot_id(request)
        rec = await self._record(slot_id)
        path = self.dir / slot_id
        if rec is None or (rec["e"] and rec["e"] < time.time()) or not path.is_file():
            raise web.HTTPNotFound()
        ctype, inline = served_type(rec["t"])
        headers = {
            "Content-Type": ctype,
            "Content-Disposition": content_disposition(rec["n"], inline),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; media-src 'self'; frame-ancestors 'none'",
            "Cache-Control": "public, max-age=86400, immutable",
        }
        return web.FileResponse(path, chunk_size=CHUNK, headers=headers)

    # -- expiry ------------------------------------------------------------------------------------
    async def _forget(self, slot_id: str, rec: dict[str, Any] | None) -> None:
        try:
            os.unlink(self.dir / slot_id)
        except FileNotFoundError:
            pass
        await self.files.delete("", "", slot_id)
        if rec is None:
            return
        if rec["e"]:
            await self.expiry.delete("", "", f"{rec['e']:012d}.{slot_id}")
        host, user = rec["h"], rec["u"]
        async with self._lock:
            raw = await self.usage.get(host, user)
            if raw is not None:
                usage = json.loads(raw)
                if usage.pop(slot_id, None) is not None:
                    if usage:
                        await self.usage.set(host, user, json.dumps(usage))
                    else:
                        await self.usage.delete(host, user)

    async def clean_up(self, now: float | None = None) -> int:
        """Delete the files (and slots) whose ``expire_after`` has passed; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for key in await self.expiry.keys("", ""):
            expires, _, slot_id = key.partition(".")
            if int(expires) > now:
                break  # the index is sorted by expiry
            await self._forget(slot_id, await self._record(slot_id))
            await self.expiry.delete("", "", key)
            removed += 1
        if removed:
            self.log.info("expired %d uploaded file(s)", removed)
        return removed
