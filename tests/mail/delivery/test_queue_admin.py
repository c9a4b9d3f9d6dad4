"""Queue administration: the service, `manage.py mailq` and the Django admin actions."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from delivery_world import queue_message
from django.core.management import call_command
from django.utils import timezone

from accounts.models import User
from mail.delivery.attempts import claim
from mail.delivery.queue import (
    QueueError,
    queue_delete,
    queue_hold,
    queue_list,
    queue_release,
    queue_retry,
)
from mail.models import OutboundDelivery, OutboundRecipient


def test_hold_release_retry_delete(sender):
    [row] = queue_message(["bob@example.net", "carol@example.net"])
    assert queue_hold(id=row.id).status == "held"
    assert queue_hold(id=row.id).status == "held"
    # A held row is never claimed, even when due.
    assert claim(ids=[row.id]) == []
    later = timezone.now() + timedelta(hours=1)
    OutboundDelivery.objects.filter(id=row.id).update(next_attempt_at=later)
    released = queue_release(id=row.id)
    assert (released.status, released.next_attempt_at) == ("queued", later)
    assert claim(ids=[row.id]) == []
    retried = queue_retry(id=row.id)
    assert retried.status == "queued" and retried.next_attempt_at <= timezone.now()
    assert [c.id for c in claim(ids=[row.id])] == [row.id]
    assert queue_delete(id=row.id) is True
    assert queue_delete(id=row.id) is False
    assert OutboundRecipient.objects.count() == 0
    with pytest.raises(QueueError, match=rf"^no queue entry #{row.id}$"):
        queue_retry(id=row.id)


def test_done_rows_cannot_be_held(sender):
    [row] = queue_message(["bob@example.net"])
    OutboundDelivery.objects.filter(id=row.id).update(status="delivered")
    with pytest.raises(QueueError, match=rf"^queue entry #{row.id} is delivered: cannot hold it$"):
        queue_hold(id=row.id)
    assert queue_list() == []
    assert [e.id for e in queue_list(include_done=True)] == [row.id]


def test_mailq_lists_like_postqueue(sender):
    out = io.StringIO()
    call_command("mailq", stdout=out)
    assert out.getvalue() == "Mail queue is empty\n"
    [row] = queue_message(["bob@example.net", "carol@example.net"])
    OutboundDelivery.objects.filter(id=row.id).update(attempts=2, last_reply="451 4.7.1 greylisted")
    out = io.StringIO()
    call_command("mailq", stdout=out)
    lines = out.getvalue().splitlines()
    assert re.fullmatch(
        rf"#{row.id}\s+queued\s+\d+  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d  alice@example\.com", lines[0]
    )
    assert re.fullmatch(
        r"          attempts 2, next attempt \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, "
        r"last reply: 451 4\.7\.1 greylisted",
        lines[1],
    )
    assert lines[2:4] == ["          bob@example.net", "          carol@example.net"]
    assert lines[-1] == "-- 0 Kbytes in 1 entries, 2 recipients."


@pytest.fixture
def admin_client(client, sender):
    client.force_login(User.objects.create_superuser("root", password="x"))
    return client


def test_admin_lists_and_acts_through_the_queue_service(admin_client):
    [row] = queue_message(["bob@example.net"])
    listing = admin_client.get("/mail/outbounddelivery/")
    assert listing.status_code == 200
    assert "bob@example.net" in listing.content.decode()
    page = admin_client.get(f"/mail/outbounddelivery/{row.id}/change/")
    assert page.status_code == 200 and "bob@example.net" in page.content.decode()

    def act(action):
        return admin_client.post(
            "/mail/outbounddelivery/", {"action": action, "_selected_action": [row.id]}, follow=True
        )

    assert "1 queue entry held" in act("hold").content.decode()
    assert OutboundDelivery.objects.get().status == "held"
    assert "1 queue entry released" in act("release").content.decode()
    assert OutboundDelivery.objects.get().status == "queued"
    assert "1 queue entry set to be attempted now" in act("retry").content.decode()
    assert "1 queue entry deleted" in act("delete_entries").content.decode()
    assert OutboundDelivery.objects.count() == 0
