"""Rookery: an XMPP server in Python."""

__version__ = "0.1.0"
