"""The publish-subscribe core shared by the XEP-0060 service (``modules/pubsub.py``) and PEP
(XEP-0163, ``modules/pep.py``): one implementation, not two.

* ``core`` — pure data: nodes, their configuration (XEP-0060 §16.4 ``pubsub#node_config``),
  affiliations, subscriptions, items with ``max_items``; the XEP-0060 errors; data forms.
* ``store`` — persistence of one service (the ``pubsub.D`` service, or one account's PEP) through a
  module's ``map`` store.
* ``engine`` — the ``<pubsub/>`` and ``<pubsub xmlns='…#owner'/>`` protocol (XEP-0060 §6-§8), access
  models, notifications (serialized once for many subscribers).
"""
