"""Deliver a batch of claimed queue rows: MX lookup once per domain, one SMTP connection
per destination reused for all its rows, outcomes recorded row by row.

No database transaction is open while we talk to DNS or SMTP (STYLE.md habit 6): rows are
claimed (committed) before, and each outcome is committed after, its own attempt.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from mail.delivery.attempts import Claim, Reply, record_outcome, renew
from mail.delivery.client import ConnectFailed, Connection, SendOptions, TLSFailed
from mail.delivery.mta_sts import Lookup, Policy, PolicyFetcher, policy_for, record_result
from mail.delivery.mx import Host, LookupFailed, lookup
from mail.models import OutboundDelivery, OutboundRecipient
from mail.services.dsn import Report, send_dsn, wants
from mail.services.storage import message_storage

log = logging.getLogger("mail.delivery")


@dataclass(frozen=True)
class Remote:
    """Where and how to dial: the injected outside world."""

    resolver: object
    port: int
    tls_verify: bool
    timeout: float = 60.0
    # Local addresses to connect from, at most one per address family; () lets the system choose.
    source_addresses: tuple[str, ...] = ()
    # The CA file remote certificates are verified against ("": the system's store).
    ca_file: str = ""
    # Where MTA-STS policies come from (RFC 8461); None: no policy is looked for.
    mta_sts: PolicyFetcher | None = None

    def policy(self, domain: str) -> Lookup:
        """The MTA-STS policy in force for `domain` (mail.delivery.mta_sts.policy_for)."""
        if self.mta_sts is None:
            return Lookup(None)
        return policy_for(domain, resolver=self.resolver, fetcher=self.mta_sts)

    def source_for(self, address: str) -> str | None:
        """The configured local address of `address`'s family, or None."""
        family = ipaddress.ip_address(address).version
        return next((a for a in self.source_addresses if ipaddress.ip_address(a).version == family), None)


def _read(claim: Claim) -> bytes:
    with message_storage().open(claim.storage_name, "rb") as fh:
        return fh.read()


class Outcomes:
    """Attempt outcomes waiting to be recorded, committed together (one commit per FLUSH
    rows instead of one per row) while nothing is sent meanwhile; before each message goes
    out, the outcomes so far are committed (deliver_domain flushes first). A worker dying
    before a flush leaves those rows claimed: they are attempted again later, so a message
    may arrive twice, never zero times; and since every delivered message is recorded before
    the next one starts, a worker process that dies sends again at most the one message it
    was sending: a crash of a worker with N processes duplicates at most N messages."""

    FLUSH = 50

    def __init__(self, *, delay_notice_after: timedelta | None = None) -> None:
        self.items: list[tuple[Claim, dict[int, Reply], str, str]] = []
        self.delay_notice_after = delay_notice_after

    def add(self, claim: Claim, replies: dict[int, Reply], *, temporary: str = "", mta: str = "") -> None:
        self.items.append((claim, replies, temporary, mta))
        if len(self.items) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.items:
            with transaction.atomic():
                self._record()

    def before_sending(self, claim: Claim) -> bool:
        """Commit the outcomes so far and renew `claim` (attempts.renew), in one transaction:
        what was delivered is recorded before the next message goes, and that one is still
        this worker's to send. False when it is not (another worker claimed it meanwhile)."""
        with transaction.atomic():
            self._record()
            return renew(claim)

    def _record(self) -> None:
        items, self.items = self.items, []
        for claim, replies, temporary, mta in _record_delivered(items) if items else []:
            _record(claim, replies, temporary=temporary, mta=mta)
            if self.delay_notice_after is not None:
                _delay_notice(claim, self.delay_notice_after, mta=mta)
        for claim, replies, _temporary, mta in items:
            if claim.relayed:
                _relayed_notice(claim, replies, mta=mta)


def _record_delivered(items):
    """Record, with a few set-based queries, the rows whose every pending recipient was
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
    by_reply: dict[str, list[int]] = {}
    rows_by_reply: dict[str, list[int]] = {}
    for row_id, (_claim, replies) in simple.items():
        for rid, reply in replies.items():
            by_reply.setdefault(reply.line, []).append(rid)
        rows_by_reply.setdefault(next(iter(replies.values())).line, []).append(row_id)
    for line, rids in by_reply.items():
        OutboundRecipient.objects.filter(id__in=rids, status=OutboundRecipient.Status.PENDING).update(
            status=OutboundRecipient.Status.DELIVERED, reply=line
        )
    for line, row_ids in rows_by_reply.items():
        # A row held meanwhile stays held (its recipients are recorded as delivered).
        OutboundDelivery.objects.filter(id__in=row_ids).update(
            status=Case(
                When(status=OutboundDelivery.Status.QUEUED, then=Value(OutboundDelivery.Status.DELIVERED)),
                default=F("status"),
            ),
            last_reply=line[:2000],
            updated_at=now,
        )
    return [item for item in items if item[0].id not in simple]


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
            original=_read(claim),
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
            original=_read(claim),
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
            original=_read(claim),
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


def _dial(host: Host, address: str, claim: Claim, remote: Remote, policy: Policy | None) -> Connection:
    """A session with `host` at `address` under the domain's MTA-STS `policy` (None: no
    policy in force), its TLS outcome recorded (mta_sts.record_result). A host the policy
    names is held to verified TLS; in enforce mode a failure there raises TLSFailed, in
    testing mode it is logged and the host is dialled again as without a policy (RFC 8461
    section 5). Raises ConnectFailed when the host takes no session."""
    common = dict(
        host=host.name,
        address=address,
        port=remote.port,
        helo_hostname=claim.helo_hostname,
        timeout=remote.timeout,
        source_address=remote.source_for(address),
        ca_file=remote.ca_file,
    )
    if policy is not None and policy.matches(host.name):
        try:
            conn = Connection(**common, tls_verify=True, require_tls=True)
        except TLSFailed as exc:
            record_result(domain=claim.domain, policy=policy, mx_host=host.name, result=exc.result)
            if policy.mode == "enforce":
                raise
            log.warning("MTA-STS policy of %s (testing) not met, delivering anyway: %s", claim.domain, exc)
        else:
            record_result(domain=claim.domain, policy=policy, mx_host=host.name, result="success")
            return conn
    elif policy is not None:
        # Only in testing mode: enforce mode never dials a host its policy does not name.
        record_result(domain=claim.domain, policy=policy, mx_host=host.name, result="validation-failure")
        log.warning(
            "MTA-STS policy of %s (testing) does not name MX host %s, delivering anyway",
            claim.domain,
            host.name,
        )
    conn = Connection(**common, tls_verify=remote.tls_verify)
    result = "success" if conn.tls else "starttls-not-supported"
    record_result(domain=claim.domain, policy=policy, mx_host=host.name, result=result)
    return conn


def _connect(
    hosts: list[Host], start: int, claim: Claim, remote: Remote, policy: Policy | None = None
) -> tuple[Connection | None, int, str]:
    """The first host from index `start` that takes a session (under `policy`, see _dial);
    (None, len, last error) if none."""
    error = ""
    for index in range(start, len(hosts)):
        host = hosts[index]
        for address in host.addresses:
            try:
                return _dial(host, address, claim, remote, policy), index, ""
            except ConnectFailed as exc:
                error = str(exc)
                log.info(
                    "connect to %s failed: %s",
                    host.name,
                    exc,
                    extra={"queue_id": claim.id, "domain": claim.domain, "mx": host.name, "address": address},
                )
    return None, len(hosts), error


def _send_options(claim: Claim) -> SendOptions:
    addresses = dict(claim.recipients)
    return SendOptions(
        ret=claim.dsn_ret,
        envid=claim.dsn_envid,
        requiretls=claim.requiretls,
        binarymime=claim.binarymime,
        notify={addresses[rid]: value for rid, value in claim.notify.items() if rid in addresses},
        orcpt={addresses[rid]: value for rid, value in claim.orcpt.items() if rid in addresses},
    )


def _send_one(conn: Connection, claim: Claim, data: bytes) -> tuple[dict[int, Reply], bool]:
    ids = {address: rid for rid, address in claim.recipients}
    answers, reusable = conn.send(
        envelope_from=claim.envelope_from,
        recipients=[a for _, a in claim.recipients],
        data=data,
        options=_send_options(claim),
    )
    replies = {ids[a]: Reply(code, text) for a, (code, text) in answers.items()}
    if not conn.offers_dsn:
        # RFC 3461 section 4.1: a host without DSN reports nothing; we say "relayed".
        claim.relayed.extend(
            rid
            for rid, reply in replies.items()
            if reply.code < 300 and wants(claim.notify.get(rid, ""), "SUCCESS")
        )
    for rid, reply in replies.items():
        if reply.code >= 400:
            log.info(
                "%s [%s] replied to %s: %s",
                conn.host,
                conn.address,
                dict(claim.recipients)[rid],
                reply.line,
                extra={
                    "queue_id": claim.id,
                    "domain": claim.domain,
                    "mx": conn.host,
                    "address": conn.address,
                },
            )
    return replies, reusable


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


def _deliver_domain(domain: str, claims: list[Claim], remote: Remote, outcomes: Outcomes) -> None:
    try:
        hosts = lookup(domain, resolver=remote.resolver)
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
        return
    hosts, policy, refusal = _apply_policy(domain, hosts, remote)
    if refusal:
        for claim in claims:
            outcomes.add(claim, {}, temporary=refusal)
        return
    conn: Connection | None = None
    index = 0
    unreachable = ""
    try:
        for claim in claims:
            if not claim.recipients:
                outcomes.add(claim, {})
                continue
            if unreachable:
                # Every host just failed: the other rows for this domain wait too.
                outcomes.add(claim, {}, temporary=unreachable)
                continue
            if not outcomes.before_sending(claim):
                log.info(
                    "delivery #%s was claimed again meanwhile: left to that attempt",
                    claim.id,
                    extra={"queue_id": claim.id, "domain": domain},
                )
                continue
            data = _read(claim)
            replies: dict[int, Reply] = {}
            error = ""
            while index < len(hosts):
                if conn is None:
                    conn, index, error = _connect(hosts, index, claim, remote, policy)
                    if conn is None:
                        break
                try:
                    replies, reusable = _send_one(conn, claim, data)
                    if not reusable or not conn.reset():
                        conn.close()
                        conn = None
                    break
                except ConnectFailed as exc:
                    error = str(exc)
                    log.info(
                        "session with %s broke: %s",
                        conn.host,
                        exc,
                        extra={
                            "queue_id": claim.id,
                            "domain": domain,
                            "mx": conn.host,
                            "address": conn.address,
                        },
                    )
                    conn = None
                    index += 1
            mta = conn.host if conn is not None else ""
            if replies:
                outcomes.add(claim, replies, mta=mta)
                done = sum(1 for r in replies.values() if 200 <= r.code < 300)
                log.info(
                    "delivery #%s to %s: %d of %d recipients accepted by %s",
                    claim.id,
                    domain,
                    done,
                    len(claim.recipients),
                    mta or domain,
                    extra={"queue_id": claim.id, "domain": domain, "mx": mta},
                )
            else:
                unreachable = f"451 4.4.1 {error or 'no host reachable'}"
                outcomes.add(claim, {}, temporary=unreachable)
                log.info(
                    "delivery #%s to %s deferred: %s",
                    claim.id,
                    domain,
                    error,
                    extra={"queue_id": claim.id, "domain": domain},
                )
    finally:
        if conn is not None:
            conn.close()


def deliver_claims(
    claims: list[Claim], *, remote: Remote, delay_notice_after: timedelta | None = None
) -> None:
    """Deliver every claimed row and record each outcome. Never raises for remote failures;
    an exception of our own leaves the rows claimed, due again at their next attempt time.

    With `delay_notice_after`, a row still waiting that long after it was queued sends its
    sender one delay notice."""
    by_domain: dict[str, list[Claim]] = {}
    for claim in claims:
        by_domain.setdefault(claim.domain, []).append(claim)
    outcomes = Outcomes(delay_notice_after=delay_notice_after)
    for domain, group in by_domain.items():
        _deliver_domain(domain, group, remote, outcomes)
    outcomes.flush()
