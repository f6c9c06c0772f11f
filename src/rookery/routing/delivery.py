"""RFC 6121 §8.5.2.1.1: which resources of an account get a message sent to its bare JID."""

from __future__ import annotations

from collections.abc import Iterable

from .registry import SessionRef


def message_targets(resources: Iterable[SessionRef], mtype: str) -> list[SessionRef]:
    """Available resources with non-negative priority (§8.5.2.1.1); for "normal" and "chat" only those
    of the highest priority (a server MAY deliver to all of them: we deliver to every one that ties),
    for "headline" every one of them.  Empty: no resource takes it (§8.5.2.2: offline storage)."""
    targets = [s for s in resources if s.available and s.priority >= 0]
    if len(targets) > 1 and mtype != "headline":
        top = max(s.priority for s in targets)
        targets = [s for s in targets if s.priority == top]
    return targets
