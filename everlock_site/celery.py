"""The Celery app. Task code lives with its concept (mail/delivery/tasks.py).

`celery -A everlock_site worker` runs the outbound delivery workers; each worker also runs
the queue rescan timer (mail.delivery.tasks.Rescan) and the certificate renewal timer
(tls.tasks.RenewalTimer), so no beat process is needed.
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "everlock_site.settings")

app = Celery("everlock")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["mail.delivery", "tls"])


@signals.setup_logging.connect
def keep_everlock_logging(**kwargs) -> None:
    """Celery configures logging itself unless a receiver of this signal does: Django has
    already applied LOGGING (EVERLOCK_LOG), so the worker logs like every other process
    (its --loglevel would otherwise lower the root logger and hide delivery lines)."""
