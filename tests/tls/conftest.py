"""An installation's hosted DNS and HTTP listener in this process, and a Pebble asking them."""

from __future__ import annotations

import asyncio

import pytest
from django.core.cache import cache

from everlock_site.http import bind_http
from everlock_site.listen import ListenAddress
from tests.dns_server import RunningDNS
from tests.tls.pebble import Pebble
from tls.issuance import AcmeSettings


@pytest.fixture
def hosted_dns(transactional_db):
    server = RunningDNS()
    yield server
    server.stop()


@pytest.fixture
def http_listener(transactional_db):
    listener = bind_http(ListenAddress("127.0.0.1", 0))
    listener.start()
    yield listener
    listener.close()
    asyncio.run(listener.wait_closed())


@pytest.fixture
def pebble(tmp_path, hosted_dns, http_listener):
    server = Pebble(tmp_path / "pebble", dns_port=hosted_dns.port, http_port=http_listener.address.port)
    yield server
    server.stop()


@pytest.fixture
def acme(pebble, settings, tmp_path) -> AcmeSettings:
    """ACME on, against the Pebble; the DNS backend on (dns-01 for hosted zones)."""
    settings.DATA_DIR = tmp_path
    settings.EVERLOCK_DNS = True
    settings.EVERLOCK_ACME_DIRECTORY = pebble.directory
    settings.EVERLOCK_ACME_EMAIL = "hostmaster@example.com"
    settings.EVERLOCK_ACME_CA_FILE = str(pebble.ca_file)
    # Failed orders are remembered in the cache, a table the test database flush leaves.
    cache.clear()
    yield AcmeSettings.from_settings()
    cache.clear()
