"""The outbound queue's bookkeeping: claiming due rows and recording outcomes.

Retry schedule (RFC 5321 section 4.5.4.1 asks for at least 30 minutes between retries and
at least 4-5 days before giving up; we start sooner because most temporary failures are
greylisting, which clears within minutes):

    attempt 1: at once           attempt 5: +40 min after attempt 4
    attempt 2: +5 min            attempt 6: +80 min
    attempt 3: +10 min           attempt 7: +160 min
    attempt 4: +20 min           attempt 8 and later: every 4 hours,
                                 until the row expires, 5 days after it was queued.

A claim writes attempts+1, last_attempt_at and next_attempt_at = now + backoff in one
committed UPDATE before anyone dials. A worker that dies mid-delivery therefore leaves a
row that is simply due again at next_attempt_at; a recipient delivered twice is possible
(the remote accepted, we died before recording it), a lost one is not. Just before sending
each claimed row, the worker renews the claim (renew(): next_attempt_at moves a backoff past
now, guarded by `attempts`), so a long batch never lets another worker claim rows it is still
sending, and each SMTP session's outcome is committed before that session sends its next row
(mail.delivery.batch).
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from everlock_site import metrics
from mail.models import OutboundDelivery, OutboundRecipient

log = logging.getLogger("mail.delivery")

FIRST_RETRY = timedelta(minutes=5)
MAX_RETRY = timedelta(hours=4)


def backoff(attempts: int, *, first: timedelta = FIRST_RETRY, cap: timedelta = MAX_RETRY) -> timedelta:
    """The wait after attempt number `attempts` (1-based) before the next one."""
    return min(first * (2 ** min(max(attempts - 1, 0), 30)), cap)


@dataclass
class Claim:
    """A claimed row: what a worker needs to deliver it without touching the database."""

    id: int
    attempts: int
    domain: str
    envelope_from: str
    helo_hostname: str
    storage_name: str
    content_id: int
    expires_at: datetime
    next_attempt_at: datetime
    # How far past the last attempt the next one lies: renew() moves it on by as much.
    lease: timedelta = timedelta(0)
    bounce_outside: bool = True
    # Some recipient failed in an earlier attempt: the row ends failed, not delivered.
    failed_before: bool = False
    # (recipient id, address) of the recipients still pending.
    recipients: list[tuple[int, str]] = field(default_factory=list)
    # The sender's requests stored with the row (mail.models.OutboundDelivery).
    dsn_ret: str = ""
    dsn_envid: str = ""
    requiretls: bool = False
    binarymime: bool = False
    # Recipient id: its NOTIFY and ORCPT (RFC 3461), for those that gave them.
    notify: dict[int, str] = field(default_factory=dict)
    orcpt: dict[int, str] = field(default_factory=dict)
    # Recipients accepted by a host without DSN that asked for NOTIFY=SUCCESS (set while
    # delivering): we send the success DSN (Action: relayed).
    relayed: list[int] = field(default_factory=list)


# The row's fields a Claim carries under the same names.
_CLAIM_FIELDS = (
    "id", "attempts", "domain", "envelope_from", "helo_hostname", "content_id", "expires_at",
    "next_attempt_at", "dsn_ret", "dsn_envid", "requiretls", "binarymime", "bounce_outside",
)  # fmt: skip


def _due(now: datetime) -> Q:
    return Q(status=OutboundDelivery.Status.QUEUED, next_attempt_at__lte=now)


def claim(
    *,
    ids: list[int] | None = None,
    limit: int = 100,
    first_retry: timedelta = FIRST_RETRY,
    max_retry: timedelta = MAX_RETRY,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim up to `limit` due rows (only among `ids` when given), oldest due first.

    A row is claimed by one committed UPDATE guarded by its old `attempts` value, so two
    workers never both claim it; on PostgreSQL the candidates are also locked with SKIP
    LOCKED so concurrent workers pick different rows instead of colliding. The next attempt
    time is set to now + backoff(first_retry doubling up to max_retry); `now` defaults to the
    clock. Returns the rows this call claimed, with their pending recipients.
    """
    now = now or timezone.now()
    with transaction.atomic():
        query = OutboundDelivery.objects.filter(_due(now))
        if ids is not None:
            query = query.filter(id__in=ids)
        candidates = list(
            query.select_for_update(skip_locked=True, of=("self",))
            .order_by("next_attempt_at", "id")
            .values_list("id", "attempts")[:limit]
        )
        by_attempts: dict[int, list[int]] = {}
        for row_id, attempts in candidates:
            by_attempts.setdefault(attempts, []).append(row_id)
        claimed: list[int] = []
        for attempts, row_ids in by_attempts.items():
            guarded = OutboundDelivery.objects.filter(_due(now), id__in=row_ids, attempts=attempts)
            if len(row_ids) == 1:
                # One row: the guarded UPDATE alone tells whether we won it.
                if guarded.update(
                    attempts=attempts + 1,
                    last_attempt_at=now,
                    next_attempt_at=now + backoff(attempts + 1, first=first_retry, cap=max_retry),
                    updated_at=now,
                ):
                    claimed.extend(row_ids)
                continue
            # Several rows: the transaction holds them (row locks on PostgreSQL, the
            # database write lock on SQLite, whose transactions begin IMMEDIATE).
            guarded.update(
                attempts=attempts + 1,
                last_attempt_at=now,
                next_attempt_at=now + backoff(attempts + 1, first=first_retry, cap=max_retry),
                updated_at=now,
            )
            claimed.extend(row_ids)
        if not claimed:
            return []
        rows = OutboundDelivery.objects.filter(id__in=claimed).values(
            *_CLAIM_FIELDS, storage_name=F("content__storage_name")
        )
        claims = {row["id"]: Claim(**row, lease=row["next_attempt_at"] - now) for row in rows}
        for rid, did, address, notify, orcpt, status in OutboundRecipient.objects.filter(
            delivery_id__in=claimed,
            status__in=[OutboundRecipient.Status.PENDING, OutboundRecipient.Status.FAILED],
        ).values_list("id", "delivery_id", "address", "notify", "orcpt", "status"):
            if status == OutboundRecipient.Status.FAILED:
                claims[did].failed_before = True
                continue
            claims[did].recipients.append((rid, address))
            if notify:
                claims[did].notify[rid] = notify
            if orcpt:
                claims[did].orcpt[rid] = orcpt
    return sorted(claims.values(), key=lambda c: c.id)


def renew(claims: list[Claim], *, now: datetime | None = None) -> list[Claim]:
    """Just before claimed rows are sent: move each one's next attempt time its `lease` past
    now, if the row is still this claim's (not claimed again since, not held). Returns the
    claims that are; the others must not be sent, or they would be sent twice. Call it in a
    transaction when renewing several rows.

    A worker sends its claimed rows one after another; without this, a batch that takes
    longer than the backoff would see its last rows due again, and claimed by a second
    worker while the first one still sends them."""
    now = now or timezone.now()
    rows = OutboundDelivery.objects.filter(status=OutboundDelivery.Status.QUEUED)
    if len(claims) == 1:
        # One row: the guarded UPDATE alone tells whether it is still ours.
        [claim] = claims
        renewed = rows.filter(id=claim.id, attempts=claim.attempts).update(
            next_attempt_at=now + claim.lease, updated_at=now
        )
        ours = claims if renewed else []
    else:
        # Several: lock them (PostgreSQL; SQLite's transaction holds the write lock), keep
        # those whose attempt is still ours, and move them on by lease in one UPDATE each.
        current = dict(
            rows.select_for_update().filter(id__in=[c.id for c in claims]).values_list("id", "attempts")
        )
        ours = [c for c in claims if current.get(c.id) == c.attempts]
        by_lease: dict[timedelta, list[int]] = {}
        for claim in ours:
            by_lease.setdefault(claim.lease, []).append(claim.id)
        for lease, ids in by_lease.items():
            OutboundDelivery.objects.filter(id__in=ids).update(next_attempt_at=now + lease, updated_at=now)
    for claim in ours:
        claim.next_attempt_at = now + claim.lease
    return ours


def due_ids(*, ids: list[int] | None = None, limit: int = 1000, now: datetime | None = None) -> list[int]:
    """Ids of rows due at `now` (default: the clock; queued, next attempt time passed; only
    among `ids` when given), oldest due first."""
    rows = OutboundDelivery.objects.filter(_due(now or timezone.now()))
    if ids is not None:
        rows = rows.filter(id__in=ids)
    return list(rows.order_by("next_attempt_at", "id").values_list("id", flat=True)[:limit])


@dataclass(frozen=True)
class Reply:
    """A remote (or our own) reply for one recipient: SMTP code and text."""

    code: int
    text: str

    @property
    def line(self) -> str:
        return f"{self.code} {self.text}"


def _count_results(results: collections.Counter) -> None:
    for result, count in results.items():
        if count:
            metrics.DELIVERIES.labels(result).inc(count)


def record_outcome(
    *, claim: Claim, replies: dict[int, Reply], temporary: str = "", now: datetime | None = None
) -> list[int]:
    """Record the outcome of one attempt on a claimed row, in one transaction.

    `replies` maps recipient ids to their reply: 2xx delivered, 5xx failed, 4xx stays
    pending. `temporary` is the reason no recipient got a reply (DNS or connection
    failure). Recipients still pending when the next attempt would fall after the row's
    expiry fail as expired. Returns the ids of recipients that failed in this call (the
    caller sends one DSN for them, in the same transaction: see bounces.bounce). `now`
    defaults to the clock.
    """
    now = now or timezone.now()
    failed: list[int] = []
    row = OutboundDelivery.objects.select_for_update().get(id=claim.id)
    pending = dict(
        OutboundRecipient.objects.filter(delivery=row, status=OutboundRecipient.Status.PENDING).values_list(
            "id", "address"
        )
    )
    last_reply = temporary
    results = collections.Counter()
    for rid, reply in replies.items():
        if rid not in pending:
            continue
        last_reply = reply.line
        if 200 <= reply.code < 300:
            status = OutboundRecipient.Status.DELIVERED
            results["delivered"] += 1
            del pending[rid]
        elif reply.code >= 500:
            status = OutboundRecipient.Status.FAILED
            results["failed"] += 1
            failed.append(rid)
            del pending[rid]
        else:
            status = OutboundRecipient.Status.PENDING
        OutboundRecipient.objects.filter(id=rid).update(status=status, reply=reply.line)
    for rid in pending:
        if rid not in replies and temporary:
            OutboundRecipient.objects.filter(id=rid).update(reply=temporary)
    expired = bool(pending) and row.next_attempt_at >= row.expires_at
    results["expired" if expired else "deferred"] += len(pending)
    if expired:
        reason = f"message expired after {row.attempts} attempts; last reply: {last_reply}"
        OutboundRecipient.objects.filter(id__in=list(pending)).update(status=OutboundRecipient.Status.FAILED)
        failed.extend(pending)
        last_reply = reason
        pending = {}
    row.last_reply = last_reply[:2000]
    if not pending and row.status != OutboundDelivery.Status.HELD:
        any_failed = OutboundRecipient.objects.filter(
            delivery=row, status=OutboundRecipient.Status.FAILED
        ).exists()
        row.status = OutboundDelivery.Status.FAILED if any_failed else OutboundDelivery.Status.DELIVERED
    row.updated_at = now
    row.save(update_fields=["last_reply", "status", "updated_at"])
    transaction.on_commit(lambda: _count_results(results))
    if expired:
        log.info(
            "delivery #%s to %s expired: %s",
            row.id,
            row.domain,
            last_reply,
            extra={"queue_id": row.id, "domain": row.domain},
        )
    return failed
