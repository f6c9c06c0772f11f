"""XMPP addresses: RFC 7622 with PRECIS (RFC 8264/8265) via ``precis-i18n``.

A ``JID`` is immutable, normalized at parse time and cached, so parsing the same string twice costs a
dict lookup.  Localpart: UsernameCaseMapped profile (§3.3) minus the characters of §3.3.1;
resourcepart: OpaqueString profile (§3.4); domainpart: lower-cased IDNA2008 U-labels (§3.2), or an IP
literal.  Each part is limited to 1023 octets (§3.1).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import idna
import precis_i18n

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_OPAQUE = precis_i18n.get_profile("OpaqueString")
_LOCAL_FORBIDDEN = set('"&\'/:<>@')
_DOMAIN_ASCII_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-._")
_LABEL_SEPARATORS = ".\u3002\uff0e\uff61"  # RFC 5892 / IDNA2008 §2.3.1: full stops that separate labels
# §3.1: the 1023-octet limits apply *after* normalization, which can shrink a part (fullwidth to ASCII
# is 3 octets to 1); a raw part beyond this cannot be valid, so it is refused before any work.
_MAX_RAW = 3 * 1023


class InvalidJID(ValueError):
    """Raised for a malformed address (stanza error ``<jid-malformed/>``, RFC 6120 §8.3.3.8)."""


def _octets(s: str) -> int:
    return len(s.encode("utf-8"))


def nodeprep(local: str) -> str:
    """RFC 7622 §3.3 localpart normalization (cached for short parts: a login prepares its user
    name more than once, and PRECIS costs ~10-20 us)."""
    if 0 < len(local) <= _CACHE_MAX_CHARS:
        return _nodeprep_cached(local)
    return _nodeprep(local)


def _nodeprep(local: str) -> str:
    if not local or _octets(local) > _MAX_RAW:
        raise InvalidJID("localpart length")
    try:
        out = _USERNAME.enforce(local)
    except UnicodeError as e:
        raise InvalidJID(f"localpart: {e}") from None
    if _LOCAL_FORBIDDEN.intersection(out):
        raise InvalidJID("localpart contains a forbidden character")
    if _octets(out) > 1023:
        raise InvalidJID("localpart length")
    return out


def resourceprep(resource: str) -> str:
    """RFC 7622 §3.4 resourcepart normalization (cached for short parts, like ``nodeprep``)."""
    if 0 < len(resource) <= _CACHE_MAX_CHARS:
        return _resourceprep_cached(resource)
    return _resourceprep(resource)


def _resourceprep(resource: str) -> str:
    if not resource or _octets(resource) > _MAX_RAW:
        raise InvalidJID("resourcepart length")
    try:
        out = _OPAQUE.enforce(resource)
    except UnicodeError as e:
        raise InvalidJID(f"resourcepart: {e}") from None
    if _octets(out) > 1023:
        raise InvalidJID("resourcepart length")
    return out


def nameprep(domain: str) -> str:
    """RFC 7622 §3.2 domainpart normalization."""
    if domain and domain[-1] in _LABEL_SEPARATORS:  # §3.2: a final label separator is stripped
        domain = domain[:-1]
    if not domain or _octets(domain) > 1023:
        raise InvalidJID("domainpart length")
    if domain[0] == "[" and domain[-1] == "]":
        try:
            return "[" + ipaddress.IPv6Address(domain[1:-1]).compressed + "]"
        except ValueError:
            raise InvalidJID("bad IPv6 literal") from None
    low = domain.lower()
    if low.isascii() and "xn--" not in low:  # §3.2.1: A-labels go through IDNA to become U-labels
        if not _DOMAIN_ASCII_OK.issuperset(low) or any(
            not label or len(label) > 63 for label in low.split(".")
        ):
            raise InvalidJID("bad domainpart")
        return low
    try:
        out = idna.decode(idna.encode(domain, uts46=True))
    except idna.IDNAError as e:
        raise InvalidJID(f"domainpart: {e}") from None
    if out.endswith("."):  # a second final separator, mapped to '.' by UTS #46
        raise InvalidJID("bad domainpart")
    return out


class JID:
    """An immutable, normalized JID.  Use ``JID.parse`` (cached) or ``JID(local, domain, resource)``."""

    __slots__ = ("local", "domain", "resource", "bare", "full", "_hash")

    def __init__(self, local: str | None, domain: str, resource: str | None = None, *, _norm: bool = True):
        if _norm:
            local = nodeprep(local) if local is not None else None
            domain = nameprep(domain)
            resource = resourceprep(resource) if resource is not None else None
        self.local = local
        self.domain = domain
        self.resource = resource
        self.bare = f"{local}@{domain}" if local is not None else domain
        self.full = f"{self.bare}/{resource}" if resource is not None else self.bare
        self._hash = hash(self.full)

    @staticmethod
    def parse(s: str) -> JID:
        """Parse and normalize (RFC 7622 §3.1); raises ``InvalidJID``."""
        return _parse(s)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    @property
    def is_host(self) -> bool:
        return self.local is None

    def bare_jid(self) -> JID:
        if self.resource is None:
            return self
        return _parse(self.bare)

    def with_resource(self, resource: str) -> JID:
        return JID(self.local, self.domain, resource)

    def __str__(self) -> str:
        return self.full

    def __repr__(self) -> str:
        return f"JID({self.full!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JID) and other.full == self.full

    def __hash__(self) -> int:
        return self._hash


#: strings longer than this are parsed without caching: with at most ``_CACHE_ENTRIES`` entries of at
#: most this many characters, the cache stays under ~64 MiB however hostile the input (issue F6: 68,000
#: unique ~3 KB JIDs pinned ~0.5 GB).  Real JIDs are far shorter.
_CACHE_MAX_CHARS = 128
_CACHE_ENTRIES = 65536


def _parse(s: str) -> JID:
    if len(s) <= _CACHE_MAX_CHARS:
        return _parse_cached(s)
    return _parse_uncached(s)


def _parse_uncached(s: str) -> JID:
    if not s or _octets(s) > 3 * _MAX_RAW + 2:
        raise InvalidJID("empty or too long")
    rest, slash, resource = s.partition("/")
    if slash and not resource:
        raise InvalidJID("empty resourcepart")
    local, at, domain = rest.rpartition("@")
    if not at:
        local, domain = "", rest
    elif not local:
        raise InvalidJID("empty localpart")
    return JID(local if at else None, domain, resource if slash else None)


_parse_cached = lru_cache(maxsize=_CACHE_ENTRIES)(_parse_uncached)
#: PRECIS results of short parts (at most 128 characters each: 16,384 entries stay under ~20 MiB each,
#: however hostile the input)
_nodeprep_cached = lru_cache(maxsize=16384)(_nodeprep)
_resourceprep_cached = lru_cache(maxsize=16384)(_resourceprep)
