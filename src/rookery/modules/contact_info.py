"""XEP-0157: Contact Addresses for XMPP Services, from ``[modules.contact_info]``.

The addresses are published as an XEP-0128 extended-information form (``FORM_TYPE``
``http://jabber.org/network/serverinfo``, XEP-0157 §2) in the server's disco#info through the
``disco-forms`` fold; the server's XEP-0115 caps hash covers it.  With no address configured there is
no form.  Each option is a list of URIs (``mailto:``, ``xmpp:``, ``https:`` …), XEP-0157 §2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from xml.etree.ElementTree import Element

from pydantic import Field, field_validator

from ..module import Module, Options, fold

FORM_TYPE = "http://jabber.org/network/serverinfo"

#: option name -> the XEP-0157 §2 field var
FIELDS = {
    "abuse": "abuse-addresses",
    "admin": "admin-addresses",
    "feedback": "feedback-addresses",
    "sales": "sales-addresses",
    "security": "security-addresses",
    "support": "support-addresses",
}


class ContactInfoOptions(Options):
    abuse: list[str] = Field(default_factory=list)
    admin: list[str] = Field(default_factory=list)
    feedback: list[str] = Field(default_factory=list)
    sales: list[str] = Field(default_factory=list)
    security: list[str] = Field(default_factory=list)
    support: list[str] = Field(default_factory=list)

    @field_validator("abuse", "admin", "feedback", "sales", "security", "support")
    @classmethod
    def _uris(cls, v: list[str]) -> list[str]:
        for uri in v:
            scheme, sep, rest = uri.partition(":")
            plain = scheme.replace("+", "").replace("-", "").replace(".", "")
            if not sep or not rest or not plain.isalnum() or not scheme[0].isalpha():
                raise ValueError(f"{uri!r} is not a URI (e.g. \"mailto:admin@example.org\")")
        return v


class ContactInfo(Module):
    """XEP-0157 contact addresses in the server's disco#info."""

    name = "contact_info"
    depends = ["disco"]
    Options = ContactInfoOptions

    def form(self, host: str) -> Element | None:
        """XEP-0157 §2: the serverinfo form for ``host``, or None when no address is configured."""
        opts: Any = self.ctx.options_for(host)
        fields: dict[str, str | Iterable[str]] = {
            var: list(getattr(opts, name)) for name, var in FIELDS.items() if getattr(opts, name)
        }
        if not fields:
            return None
        from .disco import data_form

        return data_form(FORM_TYPE, fields)

    @fold("disco-forms")
    def disco_forms(self, forms: list[Element], host: str) -> list[Element]:
        f = self.form(host)
        if f is not None:
            forms.append(f)
        return forms
