"""Celery tasks of the outbound queue. They only wire things up: the rows are the truth.

Tasks take row ids (JSON only), are idempotent (a row that is not due is not claimed, so a
duplicate or late message only delivers rows that are due anyway) and run with acks_late.
A worker killed mid-task leaves rows whose claim already moved their next attempt time
forward: they are due again then, and the worker's own rescan timer (below) kicks them, so
neither a lost broker message nor a purged broker loses mail.

The rescan timer: every delivery worker process (the `celery -A everlock_site worker` main
process) runs a thread that, at start and then every EVERLOCK_QUEUE_SCAN_INTERVAL seconds,
sends a deliver task for each batch of due rows. No beat process is needed; several workers
scanning at once only send duplicate kicks, which claim nothing. The same thread sweeps the
message files a killed process left without a row, at start and every
EVERLOCK_ORPHAN_SWEEP_INTERVAL seconds (mail.services.storage.sweep_orphan_files), and moves
DKIM key rotations on every EVERLOCK_DKIM_ROTATION_INTERVAL seconds.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from datetime import timedelta

from celery import shared_task
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from django.utils import timezone

from mail.delivery.attempts import claim, due_ids
from mail.delivery.batch import Deliveries, Kept
from mail.delivery.mta_sts import PolicyFetcher
from mail.delivery.resolver import make_resolver
from mail.delivery.session import Remote
from mail.services.dkim_rotation import advance_rotations
from mail.services.enqueue import DELIVER_TASK, kick_deliveries
from mail.services.storage import sweep_orphan_files

log = logging.getLogger("mail.delivery")

# Rows one task claims at once (its own ids, else any due rows; then, round after round,
# the rows due meanwhile), so that a burst of kicks is delivered over shared connections.
BATCH = 100
# Seconds a task goes on claiming rows that fell due meanwhile, over the sessions it has
# open: short enough for a warm shutdown to wait for it.
DRAIN = 5.0
# The worker process's destinations and open SMTP sessions, kept between tasks for as long
# as Postfix keeps an idle cached connection.
_kept = Kept(idle=2.0)


def remote_from_settings() -> Remote:
    """The resolver, remote port, TLS policy, source addresses, MTA-STS fetching and sessions
    per domain from EVERLOCK_RESOLVER, EVERLOCK_REMOTE_SMTP_PORT, EVERLOCK_SMTP_TLS_VERIFY,
    EVERLOCK_OUTBOUND_SOURCE_ADDRESSES, EVERLOCK_OUTBOUND_CA_FILE, EVERLOCK_MTA_STS_PORT and
    EVERLOCK_DELIVERY_SESSIONS.

    Raises ImproperlyConfigured for a source address that is not an IP address, or two of
    one family.
    """
    resolver = make_resolver(settings.EVERLOCK_RESOLVER)
    return Remote(
        resolver=resolver,
        port=settings.EVERLOCK_REMOTE_SMTP_PORT,
        tls_verify=settings.EVERLOCK_SMTP_TLS_VERIFY,
        source_addresses=source_addresses(settings.EVERLOCK_OUTBOUND_SOURCE_ADDRESSES),
        ca_file=settings.EVERLOCK_OUTBOUND_CA_FILE,
        mta_sts=PolicyFetcher(
            resolver=resolver, port=settings.EVERLOCK_MTA_STS_PORT, ca_file=settings.EVERLOCK_OUTBOUND_CA_FILE
        ),
        sessions=max(1, settings.EVERLOCK_DELIVERY_SESSIONS),
    )


def source_addresses(values: list[str]) -> tuple[str, ...]:
    try:
        parsed = [ipaddress.ip_address(v.strip()) for v in values if v.strip()]
    except ValueError as exc:
        raise ImproperlyConfigured(f"EVERLOCK_OUTBOUND_SOURCE_ADDRESSES: {exc}") from None
    if len({a.version for a in parsed}) != len(parsed):
        raise ImproperlyConfigured(
            "EVERLOCK_OUTBOUND_SOURCE_ADDRESSES: at most one IPv4 and one IPv6 address"
        )
    return tuple(str(a) for a in parsed)


def _claim(ids: list[int] | None, limit: int):
    return claim(
        ids=ids,
        limit=limit,
        first_retry=timedelta(seconds=settings.EVERLOCK_QUEUE_FIRST_RETRY),
        max_retry=timedelta(seconds=settings.EVERLOCK_QUEUE_MAX_RETRY),
    )


@shared_task(name=DELIVER_TASK, acks_late=True, ignore_result=True)
def deliver(ids: list[int]) -> int:
    """Claim the rows `ids` that are due (other due rows when there are none), up to BATCH,
    deliver them; then claim and deliver more due rows over the same sessions while there
    are any, for up to DRAIN seconds (then a kick carries on). A kick when no row is due
    costs one read.

    Returns the number of rows attempted.
    """
    if not due_ids(limit=1):
        return 0
    # Its own rows, else (another task took them) whichever are due: kicks wait in the
    # broker behind each other, and any of them may be the first to find rows due again.
    claims = (_claim([int(i) for i in ids], BATCH) if ids else []) or _claim(None, BATCH)
    attempted = 0
    deadline = time.monotonic() + DRAIN
    with _kept.use(_deliveries) as deliveries:
        while claims:
            deliveries.deliver(claims)
            attempted += len(claims)
            if time.monotonic() >= deadline:
                if due_ids(limit=1):
                    kick_deliveries([])
                break
            claims = _claim(None, BATCH)
    return attempted


def _deliveries() -> Deliveries:
    after = settings.EVERLOCK_QUEUE_DELAY_NOTICE
    return Deliveries(
        remote=remote_from_settings(),
        delay_notice_after=timedelta(seconds=after) if after > 0 else None,
    )


@shared_task(name="mail.delivery.deliver_due", acks_late=True, ignore_result=True)
def deliver_due() -> int:
    """The re-kick: send one deliver task per BATCH of due rows. Returns the row count."""
    ids = due_ids(limit=BATCH * 20)
    for start in range(0, len(ids), BATCH):
        kick_deliveries(ids[start : start + BATCH])
    return len(ids)


def advance_dkim_rotations() -> list[str]:
    """One step of every DKIM key rotation in progress (mail.services.dkim_rotation), with the
    resolver of EVERLOCK_RESOLVER and the grace of EVERLOCK_DKIM_ROTATION_GRACE."""
    return advance_rotations(
        now=timezone.now(),
        resolver=make_resolver(settings.EVERLOCK_RESOLVER),
        grace=timedelta(seconds=settings.EVERLOCK_DKIM_ROTATION_GRACE),
    )


class Rescan(threading.Thread):
    """The worker's own timer: deliver_due() now and every `interval` seconds until stopped;
    sweep_orphan_files() now and every `sweep_interval` seconds; advance_dkim_rotations() now
    and every `rotation_interval` seconds."""

    def __init__(
        self, interval: float, *, sweep_interval: float, orphan_age: float, rotation_interval: float
    ):
        super().__init__(name="everlock-queue-rescan", daemon=True)
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.orphan_age = orphan_age
        self.rotation_interval = rotation_interval
        self.stopped = threading.Event()

    def run(self) -> None:
        next_sweep = next_rotation_step = time.monotonic()
        while True:
            try:
                close_old_connections()
                deliver_due()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval
                    sweep_orphan_files(older_than=self.orphan_age)
                if time.monotonic() >= next_rotation_step:
                    next_rotation_step = time.monotonic() + self.rotation_interval
                    advance_dkim_rotations()
            except Exception as exc:  # the database is away: try again next time
                log.warning("queue rescan failed: %s", exc)
            finally:
                close_old_connections()
            if self.stopped.wait(self.interval):
                return


_rescan: Rescan | None = None


@worker_ready.connect
def _start_rescan(**_kwargs) -> None:
    global _rescan
    _rescan = Rescan(
        settings.EVERLOCK_QUEUE_SCAN_INTERVAL,
        sweep_interval=settings.EVERLOCK_ORPHAN_SWEEP_INTERVAL,
        orphan_age=settings.EVERLOCK_ORPHAN_FILE_AGE,
        rotation_interval=settings.EVERLOCK_DKIM_ROTATION_INTERVAL,
    )
    _rescan.start()


@worker_shutdown.connect
def _stop_rescan(**_kwargs) -> None:
    if _rescan is not None:
        _rescan.stopped.set()


@worker_process_shutdown.connect
def _close_sessions(**_kwargs) -> None:
    _kept.close()
