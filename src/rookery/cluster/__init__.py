"""The seam for more than one process (and, later, more than one node): issue 12, docs/architecture.md.

* ``directory``: who holds which session elsewhere — ``RemoteSession`` refs (full JID, priority,
  availability, last presence, interested flag, the replicated per-module flags) by worker;
* ``link``: the stanza link between workers, one ordered Unix-socket connection per pair of workers
  (frames in the order sent: no lost and no reordered stanzas per sender);
* ``registry``: ``ClusterSessionRegistry``, the ``routing.registry.SessionRegistry`` that sees local
  sessions and the directory as one, and delivers to a remote session through the link.

A multi-node cluster keeps these shapes: the directory moves to Redis, the link to TCP between nodes.
"""

#: the listener kinds whose connections the supervisor accepts and hands to workers (``workers.py``),
#: by their index in a hand-over message
DISPATCHED = ("c2s", "c2s_direct_tls", "s2s", "s2s_direct_tls")
