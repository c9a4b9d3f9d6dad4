"""The certificate renewal timer of the delivery workers.

Every delivery worker (the `celery -A everlock_site worker` main process, which `everlock
serve --backend-mail-smtp` starts) runs a thread that, when ACME is on, calls
tls.services.renew_due() a minute after start and then every EVERLOCK_ACME_CHECK_INTERVAL
seconds (a check with nothing due costs a few queries), so a new mail domain has its
certificates within minutes; an order that failed waits EVERLOCK_ACME_RETRY_AFTER seconds.
No beat process is needed: the shared cache lock lets one worker renew at a time.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections

from tls.issuance import AcmeSettings
from tls.services import renew_due

log = logging.getLogger("tls")

# Seconds after the worker starts before the first check: the listeners are up by then, so
# an http-01 challenge can be answered.
FIRST_CHECK_DELAY = 60.0


class RenewalTimer(threading.Thread):
    def __init__(self, interval: float, *, first_delay: float = FIRST_CHECK_DELAY):
        super().__init__(name="everlock-tls-renewal", daemon=True)
        self.interval = interval
        self.first_delay = first_delay
        self.stopped = threading.Event()

    def run(self) -> None:
        delay = self.first_delay
        while not self.stopped.wait(delay):
            delay = self.interval
            try:
                close_old_connections()
                renew_due(
                    acme=AcmeSettings.from_settings(),
                    admin_host=settings.EVERLOCK_ADMIN_HOST,
                    retry_after=settings.EVERLOCK_ACME_RETRY_AFTER,
                )
            except Exception as exc:  # the database is away: try again next time
                log.warning("certificate renewal check failed: %s", exc)
            finally:
                close_old_connections()


_timer: RenewalTimer | None = None


@worker_ready.connect
def _start_timer(**_kwargs) -> None:
    global _timer
    if not AcmeSettings.from_settings().enabled:
        return
    _timer = RenewalTimer(settings.EVERLOCK_ACME_CHECK_INTERVAL)
    _timer.start()


@worker_shutdown.connect
def _stop_timer(**_kwargs) -> None:
    if _timer is not None:
        _timer.stopped.set()
