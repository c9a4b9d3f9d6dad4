"""The delivery kick reaches the broker from whichever thread commits the message (the SMTP
listeners' group commit has a thread of its own; Celery's current_app is per thread)."""

import logging
import threading
import uuid

from django.conf import settings

from everlock_site.celery import app as celery_app
from mail.services.enqueue import DELIVER_TASK, kick_deliveries


def _waiting(queue: str) -> int:
    with celery_app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False).message_count


def test_a_kick_from_another_thread_reaches_the_projects_broker(caplog, monkeypatch):
    queue = f"everlock-test-kick-{uuid.uuid4().hex[:8]}"
    monkeypatch.setitem(celery_app.conf, "task_default_queue", queue)
    caplog.set_level(logging.WARNING, logger="mail.delivery")
    before = _waiting(queue)
    thread = threading.Thread(target=kick_deliveries, args=([987654321],))
    thread.start()
    thread.join(30)
    assert "could not send the delivery task" not in caplog.text
    assert _waiting(queue) == before + 1
    with celery_app.connection_for_write() as conn:
        message = conn.SimpleQueue(queue, no_ack=True).get(timeout=5)
        assert message.headers["task"] == DELIVER_TASK
        assert message.decode()[0] == [[987654321]]
    assert celery_app.conf.broker_url == settings.CELERY_BROKER_URL
