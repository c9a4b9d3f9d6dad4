"""Queue administration: list, show, retry, hold, release and delete outbound rows.

What `manage.py mailq`, the console's /mail queue commands and the Django admin call. Each
change is one transaction; a row made due now is kicked after commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from mail.models import OutboundDelivery, OutboundRecipient
from mail.services.enqueue import kick_deliveries


class QueueError(ValueError):
    """An unknown row, or a change that does not apply to the row's state."""


@dataclass(frozen=True)
class QueueEntry:
    """A queue row as the listings show it."""

    id: int
    status: str
    envelope_from: str
    domain: str
    recipients: tuple[tuple[str, str, str], ...]  # (address, status, reply)
    attempts: int
    next_attempt_at: object
    last_attempt_at: object
    expires_at: object
    last_reply: str
    size: int
    created_at: object


def _entry(row: OutboundDelivery) -> QueueEntry:
    return QueueEntry(
        id=row.id,
        status=row.status,
        envelope_from=row.envelope_from,
        domain=row.domain,
        recipients=tuple((r.address, r.status, r.reply) for r in row.recipients.all()),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_attempt_at=row.last_attempt_at,
        expires_at=row.expires_at,
        last_reply=row.last_reply,
        size=row.content.size,
        created_at=row.created_at,
    )


def queue_list(*, include_done: bool = False) -> list[QueueEntry]:
    """Rows still waiting (queued or held), or every row with `include_done`, oldest first."""
    rows = OutboundDelivery.objects.select_related("content").prefetch_related("recipients")
    if not include_done:
        rows = rows.filter(status__in=[OutboundDelivery.Status.QUEUED, OutboundDelivery.Status.HELD])
    return [_entry(row) for row in rows.order_by("id")]


def queue_show(*, id: int) -> QueueEntry:
    """One row. Raises QueueError when there is none."""
    try:
        row = OutboundDelivery.objects.select_related("content").get(id=id)
    except OutboundDelivery.DoesNotExist:
        raise QueueError(f"no queue entry #{id}") from None
    return _entry(row)


def _change(id: int, allowed: set[str], verb: str, **values) -> OutboundDelivery:
    with transaction.atomic():
        try:
            row = OutboundDelivery.objects.select_for_update().get(id=id)
        except OutboundDelivery.DoesNotExist:
            raise QueueError(f"no queue entry #{id}") from None
        if row.status not in allowed:
            raise QueueError(f"queue entry #{id} is {row.status}: cannot {verb} it")
        for name, value in values.items():
            setattr(row, name, value)
        row.save(update_fields=[*values, "updated_at"])
        if row.status == OutboundDelivery.Status.QUEUED and row.next_attempt_at <= timezone.now():
            transaction.on_commit(lambda: kick_deliveries([row.id]))
    return row


def queue_retry(*, id: int) -> QueueEntry:
    """Make a queued or held row due now (a held row is released). Raises QueueError."""
    row = _change(
        id, {"queued", "held"}, "retry", status=OutboundDelivery.Status.QUEUED, next_attempt_at=timezone.now()
    )
    return queue_show(id=row.id)


def queue_hold(*, id: int) -> QueueEntry:
    """Keep a queued row from being attempted until released; idempotent. Raises QueueError."""
    row = _change(id, {"queued", "held"}, "hold", status=OutboundDelivery.Status.HELD)
    return queue_show(id=row.id)


def queue_release(*, id: int) -> QueueEntry:
    """Let a held row be attempted again at its next attempt time; idempotent."""
    row = _change(id, {"queued", "held"}, "release", status=OutboundDelivery.Status.QUEUED)
    return queue_show(id=row.id)


def queue_delete(*, id: int) -> bool:
    """Drop a row and its recipients without a bounce. Returns False when there was none."""
    with transaction.atomic():
        deleted, _ = OutboundDelivery.objects.filter(id=id).delete()
    return bool(deleted)


def format_entry(entry: QueueEntry) -> str:
    """The postqueue -p style lines of one row."""
    when = entry.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"#{entry.id:<8} {entry.status:<9} {entry.size:>8}  {entry.created_at:%Y-%m-%d %H:%M:%S}  "
        f"{entry.envelope_from or '<>'}",
        f"          attempts {entry.attempts}, next attempt {when}"
        + (f", last reply: {entry.last_reply}" if entry.last_reply else ""),
    ]
    for address, status, _reply in entry.recipients:
        lines.append(f"          {address}" + ("" if status == "pending" else f" ({status})"))
    return "\n".join(lines)


def format_list(entries: list[QueueEntry]) -> str:
    if not entries:
        return "Mail queue is empty"
    blocks = [format_entry(e) for e in entries]
    count = sum(len(e.recipients) for e in entries)
    size = sum(e.size for e in entries)
    return (
        "\n\n".join(blocks) + f"\n\n-- {size // 1024} Kbytes in {len(entries)} entries, {count} recipients."
    )


def format_detail(entry: QueueEntry) -> str:
    """Every field of a row and each recipient's last reply."""
    lines = [
        f"queue entry #{entry.id}",
        f"status: {entry.status}",
        f"from: {entry.envelope_from or '<>'}",
        f"domain: {entry.domain}",
        f"size: {entry.size}",
        f"queued: {entry.created_at:%Y-%m-%d %H:%M:%S}",
        f"attempts: {entry.attempts}",
        "last attempt: "
        + (f"{entry.last_attempt_at:%Y-%m-%d %H:%M:%S}" if entry.last_attempt_at else "never"),
        f"next attempt: {entry.next_attempt_at:%Y-%m-%d %H:%M:%S}",
        f"expires: {entry.expires_at:%Y-%m-%d %H:%M:%S}",
        f"last reply: {entry.last_reply or '-'}",
    ]
    for address, status, reply in entry.recipients:
        lines.append(f"recipient {address}: {status}" + (f" ({reply})" if reply else ""))
    return "\n".join(lines)


@dataclass(frozen=True)
class QueueSummary:
    """The queue at a glance: rows waiting (queued, of which held), the oldest one, and the
    recipients delivered and bounced (failed for good) in the last `hours`."""

    waiting: int
    held: int
    oldest: OutboundDelivery | None
    delivered: int
    bounced: int
    hours: int


def queue_summary(*, hours: int = 24) -> QueueSummary:
    waiting = OutboundDelivery.objects.filter(
        status__in=[OutboundDelivery.Status.QUEUED, OutboundDelivery.Status.HELD]
    )
    since = timezone.now() - timedelta(hours=hours)
    done = OutboundRecipient.objects.filter(delivery__updated_at__gte=since).aggregate(
        delivered=Count("id", filter=Q(status=OutboundRecipient.Status.DELIVERED)),
        bounced=Count("id", filter=Q(status=OutboundRecipient.Status.FAILED)),
    )
    return QueueSummary(
        waiting=waiting.count(),
        held=waiting.filter(status=OutboundDelivery.Status.HELD).count(),
        oldest=waiting.order_by("created_at", "id").first(),
        delivered=done["delivered"],
        bounced=done["bounced"],
        hours=hours,
    )
