"""Who may see an account's presence-derived information (RFC 6121 §4.1, XEP-0030 §8, XEP-0012 §3).

Shared by the disco and last-activity modules: an entity may learn an account's availability only if
it is the account itself, the server, or a contact the account has a presence subscription of type
"from" or "both" with.
"""

from __future__ import annotations

from typing import Any

from ..jid import JID


async def presence_authorized(storage: Any, owner: JID, requester: JID | None) -> bool:
    """True when ``requester`` is authorized to receive ``owner``'s presence."""
    if requester is None or requester.bare == owner.bare:
        return True
    if requester.local is None and requester.domain == owner.domain:
        return True  # the account's own server
    assert owner.local is not None
    item = await storage.roster.get_item(owner.domain, owner.local, requester.bare)
    return item is not None and item.subscription in ("from", "both")
