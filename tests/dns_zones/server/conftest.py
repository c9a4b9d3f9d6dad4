"""Fixtures of the DNS server tests: a real server on 127.0.0.1 started per test."""

from __future__ import annotations

import pytest

from tests.dns_server import RunningDNS


@pytest.fixture
def start_dns_server(transactional_db):
    """Call to start a server (after creating the zone data the test needs); stopped at teardown."""
    started = []

    def start() -> RunningDNS:
        started.append(RunningDNS())
        return started[-1]

    yield start
    for server in started:
        server.stop()
