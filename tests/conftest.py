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
# The inbound checks ask DNS about every sender. The SMTP listeners the tests start in this
# process run them, as production does by default: tests.mail.smtp.conftest.start_smtp turns
# them on with a DNS server of its own for the senders (tests/mail/auth with its corpus
# zones). Installations started as processes (everlock serve) run without them, but for the
# two-installation e2e test, which serves its zones. (The variable is for those processes; in
# this process, see _no_inbound_checks.)
os.environ.setdefault("EVERLOCK_INBOUND_CHECKS", "false")


@pytest.fixture(autouse=True)
def _no_inbound_checks(settings):
    settings.EVERLOCK_INBOUND_CHECKS = False


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """On SQLite, the test database is a file as in production, not Django's shared in-memory
    one: its table locks fail concurrent readers at once (the IMAP and SMTP listeners' threads),
    where a file in WAL mode lets them read beside a writer."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = os.path.join(
            tempfile.mkdtemp(prefix="everlock-db-"), "test.sqlite3"
        )


@pytest.fixture(scope="session", autouse=True)
def _release_connections_before_the_test_database_goes(django_db_setup):
    """Before the test database is dropped: the connections of worker threads that have
    ended (SMTP decisions, commits) are closed once their objects are collected."""
    yield
    gc.collect()


@pytest.fixture
def site_admin_client(client, settings, tmp_path):
    """The Django test client logged in as a superuser, with its own data dir and the DNS
    backend on (so mail domains in hosted zones publish their records)."""
    from accounts.models import User

    settings.DATA_DIR = tmp_path
    settings.EVERLOCK_DNS = True
    client.force_login(User.objects.create_superuser("root", password="x"))
    return client
