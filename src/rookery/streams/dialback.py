"""XEP-0220 Server Dialback with XEP-0185 keys: names and the key function.

A key is ``HMAC-SHA256(SHA256(secret), receiving + " " + originating + " " + stream id)`` (XEP-0185
§3): the originating server sends it in ``<db:result/>``; the receiving server asks the originating
domain's authoritative server whether it is right with ``<db:verify/>``, and only the holder of the
secret can say.  The secret is the server's own (``server_secret``), never sent anywhere.
"""

from __future__ import annotations

import hashlib
import hmac

NS = "jabber:server:dialback"
FEATURE_NS = "urn:xmpp:features:dialback"
RESULT = "{%s}result" % NS
VERIFY = "{%s}verify" % NS
FEATURE = "{%s}dialback" % FEATURE_NS
#: the prefix declared on s2s stream headers (XEP-0220 §2.1)
HEADER_NS = {"db": NS}


def dialback_key(secret: bytes, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §3: the dialback key for one stream, in lower-case hex."""
    k = hashlib.sha256(secret).hexdigest().encode()
    return hmac.new(k, f"{receiving} {originating} {stream_id}".encode(), hashlib.sha256).hexdigest()


def check_key(secret: bytes, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    return hmac.compare_digest(dialback_key(secret, receiving, originating, stream_id), key.strip())
