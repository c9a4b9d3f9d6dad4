"""Fixtures shared by every test module.

Each test session gets its own data dir (set before Django reads its settings), so host keys,
TLS pairs, stored messages and config files never touch ./var.
"""

import gc
import os
import tempfile

import pytest

_data_dir = tempfile.mkdtemp(prefix="everlock-test-")
os.environ.setdefault("EVERLOCK_DATA_DIR", _data_dir)
os.environ.setdefault("EVERLOCK_LOG", "warning")


@pytest.fixture(scope="session", autouse=True)
def _release_connections_before_the_test_database_goes(django_db_setup):
    """Before the test database is dropped: the connections of worker threads that have
    ended (SMTP decisions, commits) are closed once their objects are collected."""
    yield
    gc.collect()
