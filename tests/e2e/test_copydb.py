"""`everlock copydb --to postgres://...`: an installation on SQLite moved to PostgreSQL keeps
its ids, IMAP UIDs and flags, DKIM keys and outbound queue."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.e2e.installation import Everlock, message_from_alice, submit
from tests.e2e.test_backup_restore import everlock_command, mailbox, populate, start
from tests.ports import free_port
from tests.postgres import create_database, drop_database, is_postgres

pytestmark = pytest.mark.e2e

# The PostgreSQL server the copy goes to: the test run's when it uses one, else the local one.
SERVER = os.environ.get("DATABASE_URL", "")
if not is_postgres(SERVER):
    SERVER = os.environ.get("EVERLOCK_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def target():
    name = f"everlock_copy_{uuid.uuid4().hex[:10]}"
    url = create_database(SERVER, name)
    try:
        yield url
    finally:
        drop_database(SERVER, name)


def test_copydb_moves_an_installation_from_sqlite_to_postgresql(tmp_path, target):
    # The DNS of the queued message's domain fails: it waits in the queue.
    installation = Everlock(tmp_path / "var", EVERLOCK_RESOLVER=f"127.0.0.1:{free_port(udp=True)}")
    installation.env.pop("DATABASE_URL", None)  # SQLite in the data dir, whatever the test run uses
    try:
        ports = populate(installation)
        installation.console("/mail domains set example.com submission=on auth=on")
        message = message_from_alice("Queued", "bob@example.net")
        message.replace_header("From", "carol@example.com")
        assert submit(ports["submission"], "carol", message, password="carol-secret-1") == {}
        deadline = time.monotonic() + 60
        while "last reply" not in (queued := installation.console("/mail queue list")):
            assert time.monotonic() < deadline, queued
            time.sleep(0.2)
        before = {
            line: installation.console(line)
            for line in (
                "/mail messages list carol@example.com",
                "/mail messages list carol@example.com sent",
                "/mail domains show example.com",
                "/mail queue list",
                "/users list",
            )
        }
        imap_before = mailbox(ports["imap"])
        installation.stop()

        copied = everlock_command(installation, "copydb", "--to", target)
        assert copied.returncode == 0, copied.stderr
        lines = copied.stdout.splitlines()
        assert "mail.Message: 3" in lines
        assert "mail.OutboundDelivery: 1" in lines
        assert lines[-2].startswith("copied ") and lines[-2].endswith(f" rows to {target}")
        again = everlock_command(installation, "copydb", "--to", target)
        assert again.returncode == 1
        assert again.stderr.strip().endswith(": copy into an empty database")

        installation.env["DATABASE_URL"] = target
        ports = start(installation)
        assert {line: installation.console(line) for line in before} == before
        assert mailbox(ports["imap"]) == imap_before
        # New rows continue after the copied ids: mail still arrives.
        send_ok = submit(ports["submission"], "carol", message, password="carol-secret-1")
        assert send_ok == {}
        assert "#2 " in installation.console("/mail queue list")
    finally:
        installation.close()
