"""Fixtures of the outbound delivery tests: see delivery_world.py."""

from delivery_world import dns_server, sender, sink

__all__ = ["dns_server", "sender", "sink"]
