"""Transport-agnostic stream state machines (RFC 6120 §4-§7)."""
