"""Zone data changes, announced to the DNS servers running in this process.

The services that change zone data call `zone_data_changed()` once their transaction has
committed (dns_zones.services); each DNS server of this process (dns_zones.server.listener)
subscribes and has installed the new data when the call returns, so a change made on the
console is served by the time the console answers. DNS servers in other processes notice the
change by polling the database (dns_zones.server.listener.POLL_INTERVAL).
"""

from __future__ import annotations

from collections.abc import Callable

_subscribers: list[Callable[[], None]] = []


def subscribe(callback: Callable[[], None]) -> None:
    """Call `callback()` (in the committing thread) after every zone data change."""
    _subscribers.append(callback)


def unsubscribe(callback: Callable[[], None]) -> None:
    if callback in _subscribers:
        _subscribers.remove(callback)


def zone_data_changed() -> None:
    """Tell this process's DNS servers that zone data changed; returns once they serve it."""
    for callback in list(_subscribers):
        callback()
