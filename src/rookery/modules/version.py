"""XEP-0092: Software Version of the server.

§2 "Protocol": an iq-get with ``<query xmlns='jabber:iq:version'/>`` to the server is answered with
``<name/>`` ("Rookery") and ``<version/>``; ``<os/>`` is OPTIONAL and, per §5 "Security Considerations",
an administrator must be able to withhold it: it is sent only when the ``show_os`` option is true
(``[modules.version]``, or the ``[version]`` section).
"""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from xml.etree.ElementTree import Element, SubElement

from ..module import Module, Options, iq_handler
from ..stanza import Stanza
from ..xml import ns

SOFTWARE_NAME = "Rookery"


@cache
def software_version() -> str:
    """``rookery.__version__`` if set, else the installed distribution's version."""
    import rookery

    v = getattr(rookery, "__version__", None)
    if isinstance(v, str) and v:
        return v
    try:
        return _dist_version("rookery")
    except PackageNotFoundError:
        return "unknown"


@cache
def operating_system() -> str:
    return " ".join(p for p in (platform.system(), platform.release()) if p) or "unknown"


class VersionOptions(Options):
    #: XEP-0092 §5: include the operating system in answers
    show_os: bool = False


class Version(Module):
    """XEP-0092 §2 for the server's own JID."""

    name = "version"
    features = [ns.VERSION]
    Options = VersionOptions

    @iq_handler("get", ns.VERSION, "query", to="host")
    def answer(self, request: Stanza) -> Element:
        q = Element(f"{{{ns.VERSION}}}query")
        SubElement(q, f"{{{ns.VERSION}}}name").text = SOFTWARE_NAME
        SubElement(q, f"{{{ns.VERSION}}}version").text = software_version()
        assert request.to is not None
        if self.ctx.options_for(request.to.domain).show_os:
            SubElement(q, f"{{{ns.VERSION}}}os").text = operating_system()
        return request.result(q)
