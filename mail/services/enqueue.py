"""Queue a stored message for remote recipients: the outbound queue's only way in."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from everlock_site.celery import app as celery_app
from mail.addresses import parse_address
from mail.models import MessageContent, OutboundDelivery, OutboundRecipient
from mail.smtp.extensions import EnvelopeParams, RcptParams

log = logging.getLogger("mail.delivery")

# How long a message may wait in the queue before it bounces (RFC 5321 section 4.5.4.1
# suggests at least 4-5 days).
QUEUE_LIFETIME = timedelta(days=5)


# The delivery task (mail.delivery.tasks.deliver), sent by name: a service needs the broker,
# not the worker's code. Sent through the project's app, not celery.current_app: that is
# per thread, and the group commit's thread would get Celery's default app.
DELIVER_TASK = "mail.delivery.deliver"


def kick_deliveries(ids: list[int]) -> None:
    """Send a deliver task for `ids`. Never raises: the message is only a kick, and a kick
    that cannot be sent (or is lost) only delays delivery until the rescan (logged)."""
    try:
        celery_app.send_task(DELIVER_TASK, args=(list(ids),), retry=True, retry_policy={"max_retries": 1})
    except Exception as exc:  # the broker is down: the rows wait for the rescan
        log.warning("could not send the delivery task (%s); the queue rescan will", exc)


def enqueue_remote(
    *,
    content: MessageContent,
    envelope_from: str,
    recipients: list[str],
    helo_hostname: str,
    params: EnvelopeParams | None = None,
    bounce_outside: bool = True,
    now: datetime | None = None,
) -> list[OutboundDelivery]:
    """Queue `content` for `recipients`: one OutboundDelivery per destination domain, with an
    OutboundRecipient per distinct address, due `now` (default: the clock) and expiring
    QUEUE_LIFETIME after it. The
    sender's DSN, REQUIRETLS and BINARYMIME requests (`params`) go on the rows.

    With `bounce_outside` False (a rule redirect of mail whose sender is not authenticated), a
    bounce or delay notice is only filed into a local sender's mailbox, never queued to a
    remote one. Runs in the caller's transaction (or its own when there is none); the delivery task is
    kicked with the new row ids after the outermost commit. Raises
    mail.addresses.AddressError for an invalid recipient address. Returns the new rows.
    """
    params = params or EnvelopeParams()
    by_domain: dict[str, list[str]] = {}
    given: dict[str, RcptParams] = {}
    seen: set[str] = set()
    for text in recipients:
        address = parse_address(text)
        if address.key in seen:
            continue
        seen.add(address.key)
        by_domain.setdefault(address.domain, []).append(str(address))
        given[str(address)] = params.rcpt(text)
    if not by_domain:
        return []
    now = now or timezone.now()
    with transaction.atomic():
        rows = OutboundDelivery.objects.bulk_create(
            [
                OutboundDelivery(
                    content=content,
                    envelope_from=envelope_from,
                    domain=domain,
                    helo_hostname=helo_hostname,
                    next_attempt_at=now,
                    expires_at=now + QUEUE_LIFETIME,
                    dsn_ret=params.mail.ret,
                    dsn_envid=params.mail.envid,
                    requiretls=params.mail.requiretls,
                    binarymime=params.mail.binarymime,
                    bounce_outside=bounce_outside,
                )
                for domain in by_domain
            ]
        )
        OutboundRecipient.objects.bulk_create(
            [
                OutboundRecipient(
                    delivery=row,
                    address=address,
                    notify=",".join(sorted(given[address].notify)),
                    orcpt=given[address].orcpt,
                )
                for row in rows
                for address in by_domain[row.domain]
            ]
        )
        ids = [row.id for row in rows]
        transaction.on_commit(lambda: kick_deliveries(ids))
    return rows
