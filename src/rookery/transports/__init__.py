"""Byte carriers that feed streams: TCP (STARTTLS and direct TLS); later WebSocket and BOSH."""
