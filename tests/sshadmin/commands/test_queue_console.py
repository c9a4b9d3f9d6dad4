"""The /mail queue console commands, called through the command registry as the console does."""

from __future__ import annotations

import pytest
from django.db import transaction

from mail.models import MailDomain, OutboundDelivery
from mail.services.enqueue import enqueue_remote
from mail.services.storage import StoredFiles, store_content
from sshadmin.commands import CommandError
from tests.sshadmin.commands.console import run

pytestmark = pytest.mark.django_db(transaction=True)


def queued() -> int:
    MailDomain.objects.get_or_create(name="example.com")
    with StoredFiles() as files, transaction.atomic():
        content = store_content(b"Subject: x\r\n\r\nx\r\n", files=files)
        [row] = enqueue_remote(
            content=content,
            envelope_from="alice@example.com",
            recipients=["bob@example.net"],
            helo_hostname="mail.example.com",
        )
    return row.id


def test_queue_commands():
    assert run("/mail queue list") == "Mail queue is empty"
    row_id = queued()
    listing = run("/mail queue list")
    assert listing.startswith(f"#{row_id:<8} queued")
    assert listing.endswith("-- 0 Kbytes in 1 entries, 1 recipients.")
    detail = run(f"/mail queue show {row_id}").splitlines()
    assert detail[:4] == [
        f"queue entry #{row_id}",
        "status: queued",
        "from: alice@example.com",
        "domain: example.net",
    ]
    assert detail[-1] == "recipient bob@example.net: pending"
    assert run(f"/mail queue hold {row_id}") == f"queue entry #{row_id} held"
    assert OutboundDelivery.objects.get().status == "held"
    assert run(f"/mail queue release #{row_id}").startswith(f"queue entry #{row_id} released (next attempt ")
    assert run(f"/mail queue retry {row_id}") == f"queue entry #{row_id} will be attempted now"
    assert run(f"/mail queue delete {row_id}") == f"queue entry #{row_id} deleted"
    with pytest.raises(CommandError, match=rf"^no queue entry #{row_id}$"):
        run(f"/mail queue delete {row_id}")
    with pytest.raises(CommandError, match=r"^not a queue entry id: 'abc'$"):
        run("/mail queue show abc")
    with pytest.raises(CommandError, match=r"^the only option is: all$"):
        run("/mail queue list everything")
    assert run("/mail queue list all") == "Mail queue is empty"
