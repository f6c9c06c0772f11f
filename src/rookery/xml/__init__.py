"""Pure XML layer: no I/O.  ``ET.Element`` trees, a restricted incremental stream parser, a fast serializer.

Stanzas parsed from a stream carry their top-level content namespace (``jabber:client``,
``jabber:server``) *stripped*: ``<message>`` has tag ``"message"`` and its ``<body>`` tag ``"body"``.
That makes a stanza independent of the stream it arrived on, so it can be re-serialized into any
stream without renaming (RFC 6120 §4.8.3 content namespaces).
"""

from xml.etree.ElementTree import Element, SubElement

from .parser import StreamParser, XMLStreamError
from .serializer import serialize

__all__ = ["Element", "SubElement", "StreamParser", "XMLStreamError", "serialize"]
