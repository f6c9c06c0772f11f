"""Persistence of a pubsub service (XEP-0060 §4.3 persistent nodes) through a module's ``map`` store
(``ctx.open_store(name, "map")``): per ``(host, user)`` — ``user`` is the account for PEP, "" for the
``pubsub.D`` service — one key ``n:<node>`` per node (configuration and affiliations as JSON), one
key ``s:<node>\\n<jid>`` per subscription and one key ``i:<node>\\n<item id>`` per item of a
persistent node, so that a change writes one small document.  A service is read whole
on first use and written through: every change is stored before it is acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .core import Item, Node, Service, Subscription


class ServiceStore:
    def __init__(self, view: Any, host: str, user: str, changed: Callable[[], None] | None = None) -> None:
        self.view = view
        self.host = host
        self.user = user
        #: called after each write (other workers drop their copy of the service: issue 12)
        self.changed = changed

    async def load(self, service: Service) -> None:
        keys = await self.view.keys(self.host, self.user)
        items: list[tuple[str, Item]] = []
        subs: list[tuple[str, Subscription]] = []
        for key in keys:
            raw = await self.view.get(self.host, self.user, key)
            if raw is None:
                continue
            data = json.loads(raw)
            if key.startswith("n:"):
                node = Node.from_dict(data)
                service.nodes[node.name] = node
            elif key.startswith("i:"):
                items.append((key[2:].partition("\n")[0], Item.from_dict(data)))
            elif key.startswith("s:"):
                subs.append((key[2:].partition("\n")[0], Subscription.from_dict(data)))
        for name, sub in subs:
            owner = service.nodes.get(name)
            if owner is not None:
                owner.subscriptions[sub.jid] = sub
        items.sort(key=lambda p: p[1].seq)
        for name, item in items:
            owner = service.nodes.get(name)
            if owner is not None:
                owner.items[item.id] = item
            service.seq = max(service.seq, item.seq)

    def _written(self) -> None:
        if self.changed is not None:
            self.changed()

    async def save_node(self, node: Node) -> None:
        await self.view.set(self.host, self.user, "n:" + node.name, json.dumps(node.to_dict()))
        self._written()

    async def delete_node(self, node: Node) -> None:
        for item_id in list(node.items):
            await self.view.delete(self.host, self.user, f"i:{node.name}\n{item_id}")
        for jid in list(node.subscriptions):
            await self.view.delete(self.host, self.user, f"s:{node.name}\n{jid}")
        await self.view.delete(self.host, self.user, "n:" + node.name)
        self._written()

    async def save_item(self, node: Node, item: Item) -> None:
        if node.persistent:
            await self.view.set(self.host, self.user, f"i:{node.name}\n{item.id}", json.dumps(item.to_dict()))
            self._written()

    async def delete_item(self, node: Node, item_id: str, *, stored: bool | None = None) -> None:
        """Forget a stored item (nothing to do on a transient node unless ``stored``)."""
        if stored or (stored is None and node.persistent):
            await self.view.delete(self.host, self.user, f"i:{node.name}\n{item_id}")
            self._written()

    async def save_subscription(self, node: Node, sub: Subscription) -> None:
        await self.view.set(self.host, self.user, f"s:{node.name}\n{sub.jid}", json.dumps(sub.to_dict()))
        self._written()

    async def delete_subscription(self, node: Node, jid: str) -> None:
        await self.view.delete(self.host, self.user, f"s:{node.name}\n{jid}")
        self._written()
