"""Deliver claimed queue rows: MX lookup once per domain, then up to Remote.sessions SMTP
sessions per domain at once (mail.delivery.session), each reused for row after row and, with
Deliveries, from one round of claimed rows to the next; outcomes recorded by group commit.

No database transaction is open while we talk to DNS or SMTP (STYLE.md habit 6): rows are
claimed (committed) before, and the sessions run in threads of their own that never touch
the database. This thread records what they report: all outcomes that arrived meanwhile, and
the renewal of the rows that go out next, in one transaction.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import timedelta

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from mail.delivery.attempts import Claim, Reply, record_outcome, renew
from mail.delivery.mta_sts import Policy, record_result
from mail.delivery.mx import Host, LookupFailed, lookup
from mail.delivery.session import Remote, Sent, Session, read_message
from mail.models import OutboundDelivery, OutboundRecipient
from mail.services.dsn import Report, send_dsn, wants

log = logging.getLogger("mail.delivery")


class Outcomes:
    """Attempt outcomes waiting to be recorded, and the TLS results (RFC 8460) the sessions
    saw, committed together: one commit for all that arrived while the last one was made.
    A worker dying before a commit leaves those rows claimed: they are attempted again
    later, so a message may arrive twice, never zero times; and since each session's outcome
    is recorded before that session sends its next row, a worker process that dies sends
    again at most one message per session it was running."""

    FLUSH = 50

    def __init__(self, *, delay_notice_after: timedelta | None = None) -> None:
        self.items: list[tuple[Claim, dict[int, Reply], str, str]] = []
        self.tls_results: list[dict] = []
        self.delay_notice_after = delay_notice_after

    def add(self, claim: Claim, replies: dict[int, Reply], *, temporary: str = "", mta: str = "") -> None:
        self.items.append((claim, replies, temporary, mta))
        if len(self.items) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.items or self.tls_results:
            with transaction.atomic():
                self.record()

    def record(self) -> None:
        """Record what is waiting, in the caller's transaction."""
        results, self.tls_results = self.tls_results, []
        for result in results:
            record_result(**result)
        items, self.items = self.items, []
        for claim, replies, temporary, mta in _record_delivered(items) if items else []:
            _record(claim, replies, temporary=temporary, mta=mta)
            if self.delay_notice_after is not None:
                _delay_notice(claim, self.delay_notice_after, mta=mta)
        for claim, replies, _temporary, mta in items:
            if claim.relayed:
                _relayed_notice(claim, replies, mta=mta)


def _record_delivered(items):
    """Record, with two set-based queries, the rows whose every pending recipient was
    accepted and that have no earlier failed recipient: the common case. Returns the
    other items, for record_outcome one by one."""
    simple = {
        claim.id: (claim, replies)
        for claim, replies, temporary, _mta in items
        if claim.recipients
        and not claim.failed_before
        and not temporary
        and set(replies) == {rid for rid, _ in claim.recipients}
        and all(200 <= r.code < 300 for r in replies.values())
    }
    if not simple:
        return items
    now = timezone.now()
    recipient_replies: dict[int, str] = {}
    row_replies: dict[int, str] = {}
    for row_id, (_claim, replies) in simple.items():
        for rid, reply in replies.items():
            recipient_replies[rid] = reply.line
        row_replies[row_id] = next(iter(replies.values())).line[:2000]
    OutboundRecipient.objects.filter(
        id__in=list(recipient_replies), status=OutboundRecipient.Status.PENDING
    ).update(status=OutboundRecipient.Status.DELIVERED, reply=_per_id(recipient_replies))
    # A row held meanwhile stays held (its recipients are recorded as delivered).
    OutboundDelivery.objects.filter(id__in=list(row_replies)).update(
        status=Case(
            When(status=OutboundDelivery.Status.QUEUED, then=Value(OutboundDelivery.Status.DELIVERED)),
            default=F("status"),
        ),
        last_reply=_per_id(row_replies),
        updated_at=now,
    )
    return [item for item in items if item[0].id not in simple]


def _per_id(values: dict[int, str]) -> Value | Case:
    """The value of each id for one UPDATE of them all (remote replies mostly differ, by the
    queue id they name)."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return Value(distinct.pop())
    return Case(*(When(id=key, then=Value(value)) for key, value in values.items()))


def _delay_notice(claim: Claim, after: timedelta, *, mta: str) -> None:
    """One delay DSN (RFC 3464 Action: delayed) for a row still waiting `after` its arrival."""
    row = OutboundDelivery.objects.get(id=claim.id)
    if (
        row.status != OutboundDelivery.Status.QUEUED
        or row.delay_notified
        or timezone.now() - row.created_at < after
    ):
        return
    waiting = [
        (address, reply, orcpt)
        for address, reply, notify, orcpt in row.recipients.filter(
            status=OutboundRecipient.Status.PENDING
        ).values_list("address", "reply", "notify", "orcpt")
        if wants(notify, "DELAY")
    ]
    send_dsn(
        Report(
            reporting_host=claim.helo_hostname,
            envelope_from=claim.envelope_from,
            original=read_message(claim),
            recipients=tuple((address, mta, reply or row.last_reply) for address, reply, _ in waiting),
            arrival=row.created_at,
            action="delayed",
            ret=row.dsn_ret,
            envid=row.dsn_envid,
            orcpts={address: orcpt for address, _, orcpt in waiting if orcpt},
        ),
        outside=claim.bounce_outside,
    )
    OutboundDelivery.objects.filter(id=row.id).update(delay_notified=True)
    log.info(
        "delivery #%s to %s delayed; notice sent to %s",
        row.id,
        row.domain,
        claim.envelope_from or "<>",
        extra={"queue_id": row.id, "domain": row.domain},
    )


def _relayed_notice(claim: Claim, replies: dict[int, Reply], *, mta: str) -> None:
    """The success DSN (Action: relayed) for recipients that asked for NOTIFY=SUCCESS and
    went to a host that does not offer DSN."""
    addresses = dict(claim.recipients)
    send_dsn(
        Report(
            reporting_host=claim.helo_hostname,
            envelope_from=claim.envelope_from,
            original=read_message(claim),
            recipients=tuple((addresses[rid], mta, replies[rid].line) for rid in claim.relayed),
            arrival=OutboundDelivery.objects.values_list("created_at", flat=True).get(id=claim.id),
            action="relayed",
            ret=claim.dsn_ret,
            envid=claim.dsn_envid,
            orcpts={addresses[rid]: claim.orcpt[rid] for rid in claim.relayed if rid in claim.orcpt},
        ),
        outside=claim.bounce_outside,
    )


def _record(claim: Claim, replies: dict[int, Reply], *, temporary: str, mta: str) -> None:
    failed = record_outcome(claim=claim, replies=replies, temporary=temporary)
    if not failed:
        return
    # RFC 3461 section 4.1: only the recipients whose NOTIFY asks for failures (all of
    # them when the sender gave no NOTIFY).
    rows = [
        (address, reply, orcpt)
        for address, reply, notify, orcpt in OutboundRecipient.objects.filter(id__in=failed).values_list(
            "address", "reply", "notify", "orcpt"
        )
        if wants(notify, "FAILURE")
    ]
    row = OutboundDelivery.objects.get(id=claim.id)
    sent = rows and send_dsn(
        Report(
            reporting_host=claim.helo_hostname,
            envelope_from=claim.envelope_from,
            original=read_message(claim),
            recipients=tuple((address, mta, reply or temporary) for address, reply, _ in rows),
            arrival=row.created_at,
            ret=row.dsn_ret,
            envid=row.dsn_envid,
            orcpts={address: orcpt for address, _, orcpt in rows if orcpt},
        ),
        outside=claim.bounce_outside,
    )
    log.info(
        "delivery #%s to %s failed for %s; DSN %s",
        claim.id,
        claim.domain,
        ", ".join(a for a, _, _ in rows) or "recipients without NOTIFY=FAILURE",
        f"sent to {claim.envelope_from}" if sent else "not sent",
        extra={"queue_id": claim.id, "domain": claim.domain},
    )


def _apply_policy(domain: str, hosts: list[Host], remote: Remote) -> tuple[list[Host], Policy | None, str]:
    """The MX hosts to try under `domain`'s MTA-STS policy, the policy in force (None when
    there is none, or its mode is "none") and, when enforce mode leaves no host, the
    temporary failure to record for every row (RFC 8461 section 5: the mail waits)."""
    found = remote.policy(domain)
    policy = found.policy if found.policy is not None and found.policy.mode != "none" else None
    if found.failure:
        record_result(domain=domain, policy=found.policy, result=found.failure, policy_id=found.advertised_id)
    if policy is None or policy.mode != "enforce":
        return hosts, policy, ""
    allowed = [h for h in hosts if policy.matches(h.name)]
    for host in hosts:
        if host not in allowed:
            record_result(domain=domain, policy=policy, mx_host=host.name, result="validation-failure")
    if allowed:
        return allowed, policy, ""
    names = ", ".join(h.name for h in hosts)
    log.info("MTA-STS policy of %s (enforce) names none of its MX hosts (%s)", domain, names)
    return [], policy, f"451 4.7.5 MTA-STS policy of {domain} names none of its MX hosts ({names})"


class Destination:
    """A destination domain's MX hosts and MTA-STS policy as looked up once, and the SMTP
    sessions open with it (up to Remote.sessions, run by threads of its own): kept from one
    round of claimed rows to the next, as Postfix's connection cache reuses a session by
    destination without looking the domain up again."""

    def __init__(self, domain: str, hosts: list[Host], policy: Policy | None, remote: Remote):
        self.domain = domain
        self.hosts = hosts
        self.policy = policy
        self.remote = remote
        self.looked_up = time.monotonic()
        self.sessions: list[Session] = []
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, remote.sessions), thread_name_prefix="everlock-smtp"
        )

    def send(self, todo: deque[Claim], outcomes: Outcomes) -> None:
        """Send the rows `todo`, up to remote.sessions at once. A session gets its next row
        only once its last outcome is committed; each commit also renews the rows about to
        go (attempts.renew). When a session finds no host reachable, the rows not yet sent
        wait too, and the sessions that found none are dropped (the next round dials again)."""
        while len(self.sessions) < min(max(1, self.remote.sessions), len(todo)):
            self.sessions.append(Session(self.domain, self.hosts, self.policy, self.remote))
        idle = list(self.sessions)
        running: dict[Future, Session] = {}
        finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
        unreachable = ""
        try:
            while todo or running:
                starting = []
                while todo and unreachable:
                    # Every host just failed: the other rows for this domain wait too.
                    outcomes.add(todo.popleft(), {}, temporary=unreachable)
                while todo and len(starting) < len(idle):
                    starting.append(todo.popleft())
                with transaction.atomic():
                    outcomes.record()
                    going = renew(starting) if starting else []
                renewed = {claim.id for claim in going}
                for claim in starting:
                    if claim.id not in renewed:
                        log.info(
                            "delivery #%s was claimed again meanwhile: left to that attempt",
                            claim.id,
                            extra={"queue_id": claim.id, "domain": self.domain},
                        )
                for claim in going:
                    session = idle.pop()
                    future = self.pool.submit(session.send, claim)
                    running[future] = session
                    future.add_done_callback(finished.put)
                if not running:
                    continue
                done = [finished.get()]
                while not finished.empty():
                    done.append(finished.get())
                for future in done:
                    idle.append(running.pop(future))
                    unreachable = _outcome(self.domain, future.result(), outcomes) or unreachable
        finally:
            # Rows a session was still sending when we failed stay claimed (due again later).
            wait(running)
        self.sessions = [s for s in self.sessions if s.index < len(self.hosts)]

    def close(self) -> None:
        """QUIT every open session."""
        for _ in self.pool.map(Session.close, self.sessions):
            pass
        self.pool.shutdown()
        self.sessions = []


def _outcome(domain: str, sent: Sent, outcomes: Outcomes) -> str:
    """Add what `sent` reports to `outcomes`; returns the temporary failure for the rows not
    yet sent when no host was reachable, else ""."""
    claim = sent.claim
    outcomes.tls_results.extend(sent.tls_results)
    if sent.replies:
        outcomes.add(claim, sent.replies, mta=sent.mta)
        done = sum(1 for r in sent.replies.values() if 200 <= r.code < 300)
        log.info(
            "delivery #%s to %s: %d of %d recipients accepted by %s",
            claim.id,
            domain,
            done,
            len(claim.recipients),
            sent.mta or domain,
            extra={"queue_id": claim.id, "domain": domain, "mx": sent.mta},
        )
        return ""
    unreachable = f"451 4.4.1 {sent.error or 'no host reachable'}"
    outcomes.add(claim, {}, temporary=unreachable)
    log.info(
        "delivery #%s to %s deferred: %s",
        claim.id,
        domain,
        sent.error,
        extra={"queue_id": claim.id, "domain": domain},
    )
    return unreachable


class Deliveries:
    """Rounds of claimed rows delivered over shared state: each destination domain is looked
    up once (Destination) and its sessions stay open from one round to the next until
    close(), or for REUSE seconds at most (then the domain is looked up again and new
    sessions are dialled, as Postfix's smtp_connection_reuse_time_limit does). Use it as a
    context manager."""

    REUSE = 300.0

    def __init__(self, *, remote: Remote, delay_notice_after: timedelta | None = None) -> None:
        self.remote = remote
        self.delay_notice_after = delay_notice_after
        self.destinations: dict[str, Destination] = {}

    def __enter__(self) -> Deliveries:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def deliver(self, claims: list[Claim]) -> None:
        """Deliver every claimed row and record each outcome. Never raises for remote
        failures; an exception of our own leaves the rows claimed, due again at their next
        attempt time.

        With `delay_notice_after`, a row still waiting that long after it was queued sends
        its sender one delay notice."""
        by_domain: dict[str, list[Claim]] = {}
        for claim in claims:
            by_domain.setdefault(claim.domain, []).append(claim)
        outcomes = Outcomes(delay_notice_after=self.delay_notice_after)
        for domain, group in by_domain.items():
            self._deliver_domain(domain, group, outcomes)
        outcomes.flush()

    def _destination(self, domain: str, claims: list[Claim], outcomes: Outcomes) -> Destination | None:
        """The domain's Destination, looked up now when it has none; None (with every row's
        outcome added) when the lookup or the MTA-STS policy leaves no host to try."""
        kept = self.destinations.get(domain)
        if kept is not None and time.monotonic() - kept.looked_up < self.REUSE:
            return kept
        if kept is not None:
            del self.destinations[domain]
            kept.close()
        try:
            hosts = lookup(domain, resolver=self.remote.resolver)
        except LookupFailed as exc:
            log.info(
                "MX lookup for %s failed: %s",
                domain,
                exc,
                extra={"queue_id": [c.id for c in claims], "domain": domain},
            )
            for claim in claims:
                if exc.permanent:
                    reply = Reply(550, f"5.1.2 {exc}")
                    outcomes.add(claim, {rid: reply for rid, _ in claim.recipients})
                else:
                    outcomes.add(claim, {}, temporary=f"451 4.4.3 {exc}")
            return None
        hosts, policy, refusal = _apply_policy(domain, hosts, self.remote)
        if refusal:
            for claim in claims:
                outcomes.add(claim, {}, temporary=refusal)
            return None
        self.destinations[domain] = Destination(domain, hosts, policy, self.remote)
        return self.destinations[domain]

    def _deliver_domain(self, domain: str, claims: list[Claim], outcomes: Outcomes) -> None:
        destination = self._destination(domain, claims, outcomes)
        if destination is None:
            return
        todo = deque()
        for claim in claims:
            if claim.recipients:
                todo.append(claim)
            else:
                outcomes.add(claim, {})
        if todo:
            destination.send(todo, outcomes)

    def close(self) -> None:
        """Close every session still open."""
        destinations, self.destinations = self.destinations, {}
        for destination in destinations.values():
            destination.close()


def deliver_claims(
    claims: list[Claim], *, remote: Remote, delay_notice_after: timedelta | None = None
) -> None:
    """Deliver every claimed row and record each outcome (Deliveries.deliver, one round)."""
    with Deliveries(remote=remote, delay_notice_after=delay_notice_after) as deliveries:
        deliveries.deliver(claims)


class Kept:
    """One Deliveries kept open between uses (between delivery tasks of a worker process)
    for up to `idle` seconds, then closed by a timer: Postfix keeps an idle connection
    cached 2 seconds (smtp_connection_cache_time_limit). Thread-safe."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.lock = threading.Lock()
        self.deliveries: Deliveries | None = None
        self.timer: threading.Timer | None = None
        self.uses = 0

    @contextlib.contextmanager
    def use(self, make: Callable[[], Deliveries]) -> Iterator[Deliveries]:
        """The kept Deliveries, else a new one from `make()`. It is closed at once when the
        block raises, else `idle` seconds after the block ends unless used again."""
        with self.lock:
            self.uses += 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.deliveries is None:
                self.deliveries = make()
            try:
                yield self.deliveries
            except BaseException:
                self.deliveries.close()
                self.deliveries = None
                raise
            self.timer = threading.Timer(self.idle, self._expire, args=(self.uses,))
            self.timer.daemon = True
            self.timer.start()

    def _expire(self, uses: int) -> None:
        with self.lock:
            if self.uses == uses and self.deliveries is not None:
                self.deliveries.close()
                self.deliveries = None

    def close(self) -> None:
        """Close the kept Deliveries now (a worker process that stops)."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.deliveries is not None:
                self.deliveries.close()
                self.deliveries = None
