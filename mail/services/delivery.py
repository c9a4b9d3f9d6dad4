"""Local delivery: what both SMTP listeners, the DSNs and bounces sent on do with a message
for local mailboxes.

For each local recipient the mail rules (mail.rules.engine.plan_delivery) decide what
happens; this module carries the plans out, filing every copy through
mail.services.filing.file_messages (one call for a group commit's whole batch). Every row of
one SMTP transaction (the content, the filed messages, the folders created on demand, the
outgoing copies and their queue rows) commits in one transaction, after the message bytes
are durable (mail.services.storage).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

from django.db import transaction

from accounts.models import User
from mail import replies
from mail.addresses import Address, AddressError, parse_address
from mail.auth import results as authentication_results
from mail.auth import srs
from mail.auth.verdict import Summary
from mail.message import ParsedMessage, parse_message
from mail.models import Mailbox, MailDomain, Message, MessageContent
from mail.replies import Reply, SMTPReject
from mail.rules.engine import CurrentRules, current_rules, plan_delivery
from mail.rules.plan import DeliveryPlan, MessageFacts, OutgoingMessage
from mail.services.directory import directory
from mail.services.enqueue import enqueue_remote
from mail.services.filing import Copy, Filed, NewMessage, file_messages
from mail.services.mailboxes import mailbox_usage
from mail.services.storage import StoredFiles, store_content

log = logging.getLogger("mail.smtp")


def local_domain(name: str) -> MailDomain | None:
    """The enabled local mail domain `name` (normal form), or None."""
    return MailDomain.objects.filter(name=name, enabled=True).first()


def check_room(*, mailbox_id: int, quota: int | None) -> None:
    """Raises SMTPReject 452 4.2.2 when the mailbox has reached its quota (bytes; None: no
    limit). A message accepted below the quota is delivered whole, even past it."""
    if quota is not None and mailbox_usage(mailbox_id) >= quota:
        raise SMTPReject(replies.MAILBOX_FULL)


def check_local_recipient(address: Address) -> tuple[int, int | None]:
    """The id and quota of the mailbox `address` is delivered to, remembered in the
    directory (remembered_local_recipient answers from there on the event loop).

    Raises SMTPReject: RELAY_DENIED when the domain is not an enabled local domain,
    UNKNOWN_USER when it is but has no such mailbox, 452 4.2.2 when the mailbox has reached its
    quota.
    """
    directory.refresh()
    found = directory.remember(("local-rcpt", address.key), lambda: _local_mailbox(address))
    if found is not None:
        check_room(mailbox_id=found[0], quota=found[1])
        return found
    domain = MailDomain.objects.filter(name=address.domain, enabled=True).first()
    if domain is None:
        raise SMTPReject(replies.RELAY_DENIED)
    if address.local.casefold() == POSTMASTER:
        return check_postmaster(domain=domain)
    raise SMTPReject(replies.UNKNOWN_USER)


def _local_mailbox(address: Address) -> tuple[int, int | None] | None:
    return (
        Mailbox.objects.filter(
            domain__name=address.domain, domain__enabled=True, local_part=address.local.casefold()
        )
        .order_by()
        .values_list("id", "quota")
        .first()
    )


def remembered_local_recipient(address: Address) -> tuple[int, int | None] | None:
    """What check_local_recipient answered for `address` if the directory still remembers
    it, else None (then ask it). No I/O: fit for the event loop."""
    return directory.get(("local-rcpt", address.key))


def check_bounce_recipient(*, address: Address, null_sender: bool) -> str:
    """The original sender an SRS address of ours (mail.auth.srs) stands for, when a bounce
    (null sender, RFC 5321 section 4.5.5) is sent to it. Raises SMTPReject: UNKNOWN_USER for
    anything else (another sender, an address that does not reverse), RELAY_DENIED when the
    domain is not ours."""
    if not MailDomain.objects.filter(name=address.domain, enabled=True).exists():
        raise SMTPReject(replies.RELAY_DENIED)
    original = srs.reverse(str(address)) if null_sender else None
    if original is None:
        raise SMTPReject(replies.UNKNOWN_USER)
    return original


def forward_bounce(*, raw: bytes, recipients: list[str], helo_hostname: str) -> None:
    """Send a bounce that came back to SRS addresses on to the original senders, once: from
    the null sender, so nothing bounces again. A local sender gets it in its mailbox, a
    remote one through the queue. Committed before returning."""
    boxes, remote = resolve_mailboxes(recipients)
    with StoredFiles() as files, transaction.atomic():
        if boxes:
            deliver_inbound(
                raw=raw, envelope_from="", mailbox_ids=[m.id for m in boxes.values()], files=files
            )
        if remote:
            content = store_content(raw, files=files)
            enqueue_remote(content=content, envelope_from="", recipients=remote, helo_hostname=helo_hostname)


# RFC 5321 section 4.5.1: postmaster@ every domain we take mail for, and the bare
# <Postmaster>, must be accepted.
POSTMASTER = "postmaster"


def check_postmaster(*, domain: MailDomain | None = None) -> tuple[int, int | None]:
    """The id and quota of the mailbox that takes postmaster mail: for `domain`, its `postmaster`
    mailbox when set, else its postmaster mailbox; otherwise (and for the bare <Postmaster>)
    the first admin's mailbox (the one named by an address login, else the first mailbox
    the admin holds a grant on).

    Raises SMTPReject UNKNOWN_USER when there is none, 452 4.2.2 when it is at its quota.
    """
    if domain is not None:
        found = (
            Mailbox.objects.filter(domain=domain, local_part=domain.postmaster or POSTMASTER)
            .order_by()
            .values_list("id", "quota")
            .first()
        )
        if found is not None:
            check_room(mailbox_id=found[0], quota=found[1])
            return found
    admin = User.objects.filter(is_superuser=True, is_active=True).order_by("id").first()
    candidates: list[tuple[str, str]] = []
    if admin is not None:
        if "@" in admin.username:
            local, _, domain_name = admin.username.rpartition("@")
            candidates.append((domain_name, local))
        for resource in admin.grants.order_by("id").values_list("resource", flat=True):
            path, _, local = resource.partition(":")
            if local and path.startswith("smtp/mail/"):
                candidates.append((path.removeprefix("smtp/mail/"), local))
    for domain_name, local in candidates:
        found = (
            Mailbox.objects.filter(
                domain__name=domain_name, domain__enabled=True, local_part=local.casefold()
            )
            .order_by()
            .values_list("id", "quota")
            .first()
        )
        if found is not None:
            check_room(mailbox_id=found[0], quota=found[1])
            return found
    raise SMTPReject(replies.UNKNOWN_USER)


def resolve_mailboxes(addresses: Iterable[str]) -> tuple[dict[str, Mailbox], list[str]]:
    """Split `addresses` into local mailboxes (by address key) and remote addresses.

    Addresses in an enabled local domain without a mailbox are in neither: they are logged.
    """
    parsed: list[Address] = []
    remote: list[str] = []
    for text in addresses:
        try:
            parsed.append(parse_address(text))
        except AddressError:
            log.warning("dropping invalid recipient %r", text)
    domains = {a.domain for a in parsed}
    local_domains = set(
        MailDomain.objects.filter(name__in=domains, enabled=True).values_list("name", flat=True)
    )
    wanted = [a for a in parsed if a.domain in local_domains]
    boxes: dict[str, Mailbox] = {}
    if wanted:
        qs = Mailbox.objects.select_related("domain").filter(
            domain__name__in={a.domain for a in wanted}, local_part__in={a.local.casefold() for a in wanted}
        )
        by_key = {f"{m.local_part}@{m.domain.name}": m for m in qs}
        for a in wanted:
            if a.key in by_key:
                boxes[a.key] = by_key[a.key]
            else:
                log.warning("no mailbox for local recipient %s", a)
    remote = [str(a) for a in parsed if a.domain not in local_domains]
    return boxes, remote


def received_results(headers: tuple[tuple[str, str], ...], domain: MailDomain | None) -> Summary | None:
    """What the inbound checks recorded for stored mail to `domain`, read from the message's
    topmost Authentication-Results when it is ours (authserv-id the domain's hostname); None
    for a message we did not check."""
    outcomes = authentication_results.ours(headers, domain.effective_hostname) if domain else None
    if outcomes is None:
        return None
    quarantined = any(
        o.method == "dmarc" and o.result == "fail" and o.get("policy.dmarc") == "quarantine" for o in outcomes
    )
    return Summary(tuple(f"{o.method}={o.result}" for o in outcomes), quarantined)


def stored_results(message: Message, raw: bytes) -> list[str]:
    """The inbound checks' results of stored `message` (whose bytes are `raw`), one
    "method=result property=value..." line each, as its Authentication-Results of ours
    records them; [] for a message that was not checked here."""
    domain = message.folder.mailbox.domain
    outcomes = authentication_results.ours(parse_message(raw).headers, domain.effective_hostname)
    return [str(o) for o in outcomes or ()]


def plan_recipients(
    *,
    mailboxes: list[Mailbox],
    parsed: ParsedMessage,
    raw: bytes,
    envelope_from: str,
    authenticated: bool,
    rules: CurrentRules | None = None,
    checked: Summary | None = None,
) -> list[tuple[Mailbox, DeliveryPlan]]:
    """The rules' plan for each mailbox; call inside the delivery's transaction (the rules
    record their memory there). Raises SMTPReject when a rule rejects the message.

    `rules` is current_rules(), read once for all the messages a caller delivers at once;
    `checked` is what the inbound checks found (mail.auth), None for mail they did not check."""
    if rules is None:
        rules = current_rules()
    planned = []
    for mailbox in mailboxes:
        plan = plan_delivery(
            MessageFacts(
                envelope_from=envelope_from,
                recipient=mailbox.address,
                headers=parsed.headers,
                size=len(raw),
                authenticated=authenticated,
                raw=raw,
                auth=checked.results if checked is not None else None,
                quarantined=checked is not None and checked.quarantined,
            ),
            compiled=rules,
        )
        if plan.reject is not None:
            r = plan.reject
            raise SMTPReject(Reply(r.code, r.enhanced, r.text))
        for refusal in plan.refused:
            log.warning("rule of %s: %s; kept in inbox", mailbox.address, refusal)
        if plan.discard and not plan.outgoing:
            log.info(
                "message for %s discarded by rule %s", mailbox.address, ", ".join(map(repr, plan.matched))
            )
        planned.append((mailbox, plan))
    return planned


def mailboxes_by_id(ids: set[int]) -> dict[int, Mailbox]:
    """The mailboxes `ids` names, with their domains, through the directory's memory (call
    directory.refresh() first). Raises MAILBOX_CHANGED when one was deleted since RCPT."""
    found = {i: directory.get(("mailbox-id", i)) for i in ids}
    missing = {i for i, mailbox in found.items() if mailbox is None}
    if missing:
        for mailbox in Mailbox.objects.select_related("domain").filter(id__in=missing).order_by():
            found[mailbox.id] = directory.remember(("mailbox-id", mailbox.id), lambda m=mailbox: m)
    if any(mailbox is None for mailbox in found.values()):
        raise SMTPReject(replies.MAILBOX_CHANGED)
    return found


def remembered_rules() -> CurrentRules:
    """current_rules() through the directory's memory (call directory.refresh() first): a
    RuleSet saved or deleted anywhere drops it, so the group commit asks no query for the
    rules while they stay the same."""
    return directory.remember(("rules",), current_rules)


def _header_block(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in pairs)


def copies_of(planned: list[tuple[Mailbox, DeliveryPlan]]) -> tuple[Copy, ...]:
    """The copies the plans file: one per folder each plan names, with its flags and the
    header lines its rules add."""
    copies = []
    for mailbox, plan in planned:
        prepended = _header_block(plan.add_headers)
        copies.extend(
            Copy(
                mailbox_id=mailbox.id,
                address=mailbox.address,
                folder=filing.folder,
                seen=filing.seen,
                flagged=filing.flagged,
                prepended=prepended,
            )
            for filing in plan.folders()
        )
    return tuple(copies)


@dataclass(frozen=True)
class Planned:
    """A message and what the rules planned for each of its local recipients; `keep`: stored
    even when no plan files or sends it (the queue needs it for remote recipients)."""

    raw: bytes
    parsed: ParsedMessage
    envelope_from: str
    planned: list[tuple[Mailbox, DeliveryPlan]]
    keep: bool = False

    def stored(self) -> bool:
        return self.keep or any(plan.folders() or plan.outgoing for _, plan in self.planned)


def file_planned(batch: list[Planned], *, files: StoredFiles) -> list[Filed | None]:
    """Carry out the plans of `batch` in the caller's transaction: store each message that
    is filed, sent on or kept, and file its copies, all with one file_messages call; then send
    the rule messages (see _follow_outgoing). Returns, for each, what was filed, or None for
    a message the rules discard for every recipient (not stored at all)."""
    kept = [entry for entry in batch if entry.stored()]
    filed = iter(
        file_messages(
            [
                NewMessage(
                    parsed=entry.parsed,
                    copies=copies_of(entry.planned),
                    envelope_from=entry.envelope_from,
                    raw=entry.raw,
                )
                for entry in kept
            ],
            files=files,
        )
    )
    results = [next(filed) if entry.stored() else None for entry in batch]
    _follow_outgoing(
        [
            _Sent(outgoing, mailbox, (mailbox.address,), result.content, entry.parsed, bool(plan.folders()))
            for entry, result in zip(batch, results, strict=True)
            if result is not None
            for mailbox, plan in entry.planned
            for outgoing in plan.outgoing
        ],
        files=files,
    )
    return results


@dataclass(frozen=True)
class _Sent:
    """A rule message on its way: who sent it, the mailboxes it passed through (`chain`,
    the sender last), what that mailbox received, and whether the sender kept a copy."""

    outgoing: OutgoingMessage
    sender: Mailbox
    chain: tuple[str, ...]
    received: MessageContent
    received_parsed: ParsedMessage
    kept: bool


def _sent_on_sender(outgoing: OutgoingMessage, domain: str) -> str:
    """The envelope sender of a rule message going to another server. A redirect's original
    sender is rewritten with SRS to an address of `domain`, so that SPF passes at the next
    hop and a bounce comes back here to be sent on once (forward_bounce); an original sender
    that passed neither SPF nor DMARC is replaced by the null sender instead: a bounce must
    not reach an address that may be forged (backscatter)."""
    if not outgoing.carries_message or not outgoing.envelope_from:
        return outgoing.envelope_from
    return srs.forward(outgoing.envelope_from, domain) if outgoing.sender_verified else ""


def _follow_outgoing(pending: list[_Sent], *, files: StoredFiles) -> None:
    """Send rule messages in the caller's transaction, following local redirects.

    A local target gets the message through its own rules, and what those send is followed
    in turn, through any chain. A chain stops at a loop (a target the message already passed
    through) or after the rules' max_redirect_hops mailboxes; a redirected message that
    cannot reach a local target for that or any other reason (no such mailbox, a rule of the
    target rejects it) is filed into the inbox of the mailbox that redirected it, unless that
    mailbox kept a copy, and the reason is logged. So every recipient's message ends stored,
    queued or (by the queue) bounced; only a `discard` rule drops it, and that is logged too.
    Remote targets are queued; their bounces never leave the installation (enqueue_remote's
    `bounce_outside`), since the original sender may be forged (backscatter).
    """
    if not pending:
        return
    queue = deque(pending)
    max_hops = current_rules().rules.limits["max_redirect_hops"]
    while queue:
        sent = queue.popleft()
        outgoing = sent.outgoing
        boxes, remote = resolve_mailboxes(outgoing.recipients)
        parsed = parse_message(outgoing.data)
        targets: list[tuple[Mailbox, DeliveryPlan]] = []
        failures = [
            f"{target}: no such mailbox"
            for target in outgoing.recipients
            if not _reached(target, boxes, remote)
        ]
        for mailbox in boxes.values():
            trail = " -> ".join((*sent.chain, mailbox.address))
            if mailbox.address in sent.chain:
                failures.append(f"{mailbox.address}: redirect loop {trail}")
                continue
            if len(sent.chain) > max_hops:
                failures.append(f"{mailbox.address}: more than {max_hops} redirect hops ({trail})")
                continue
            try:
                [(_, plan)] = plan_recipients(
                    mailboxes=[mailbox],
                    parsed=parsed,
                    raw=outgoing.data,
                    envelope_from=outgoing.envelope_from,
                    authenticated=False,
                )
            except SMTPReject as exc:
                failures.append(f"{mailbox.address}: refused by a rule: {exc.reply}")
                continue
            targets.append((mailbox, plan))
        # Stored once for all its targets; not at all when none can take it.
        if targets or remote:
            (filed,) = file_messages(
                [
                    NewMessage(
                        parsed=parsed,
                        copies=copies_of(targets),
                        envelope_from=outgoing.envelope_from,
                        raw=outgoing.data,
                    )
                ],
                files=files,
            )
            queue.extend(
                _Sent(
                    next_out,
                    mailbox,
                    (*sent.chain, mailbox.address),
                    filed.content,
                    parsed,
                    bool(plan.folders()),
                )
                for mailbox, plan in targets
                for next_out in plan.outgoing
            )
        if remote:
            enqueue_remote(
                content=filed.content,
                envelope_from=_sent_on_sender(outgoing, sent.sender.domain.name),
                recipients=remote,
                helo_hostname=sent.sender.domain.effective_hostname,
                bounce_outside=not outgoing.carries_message,
            )
        if not failures:
            continue
        if outgoing.carries_message and not sent.kept:
            log.warning(
                "redirect by %s not followed (%s): filed into its inbox",
                sent.sender.address,
                "; ".join(failures),
            )
            file_messages(
                [
                    NewMessage(
                        parsed=sent.received_parsed,
                        copies=copies_of([(sent.sender, DeliveryPlan())]),
                        envelope_from=outgoing.envelope_from,
                        content=sent.received,
                    )
                ],
                files=files,
            )
        else:
            log.info("rule message from %s not delivered to %s", sent.sender.address, "; ".join(failures))


def _reached(target: str, boxes: dict[str, Mailbox], remote: list[str]) -> bool:
    try:
        address = parse_address(target)
    except AddressError:
        return False
    return address.key in boxes or str(address) in remote


def deliver_inbound(
    *,
    raw: bytes,
    envelope_from: str,
    mailbox_ids: list[int],
    files: StoredFiles | None = None,
    checked: Summary | None = None,
    parsed: ParsedMessage | None = None,
) -> list[Message]:
    """Deliver a message received on port 25 to local mailboxes, committed before returning;
    the copies filed.

    `raw` already carries the Return-Path and Received headers (and the Authentication-Results
    of `checked`, the inbound checks' summary, None when they did not run); `parsed` is
    parse_message(raw) when the caller has it. Raises SMTPReject when a rule rejects the
    message (nothing is stored), MAILBOX_CHANGED when a mailbox was deleted since RCPT (the
    client retries, and RCPT then answers for it); any other exception means nothing was
    committed and no stored file remains. With `files` (group commit), the caller owns the
    outer transaction and removes those files if it does not commit.
    """
    item = {"raw": raw, "envelope_from": envelope_from, "mailbox_ids": mailbox_ids, "checked": checked}
    if parsed is None:
        parsed = parse_message(raw)  # before the transaction: it holds no lock meanwhile
    with nullcontext(files) if files is not None else StoredFiles() as files, transaction.atomic():
        (filed,) = _deliver(items=[{**item, "parsed": parsed}], files=files)
        return [] if filed is None else filed.messages()


def deliver_inbound_many(*, items: list[dict], files: StoredFiles) -> list[list[int]]:
    """deliver_inbound for many messages at once (a group commit's batch), in the caller's
    transaction, with a fixed number of queries however many messages (but for the rule
    messages they send); the ids of each message's copies.

    `items` are deliver_inbound keyword arguments. Raises on the first problem of any
    message (a rule rejection included); the caller then rolls back and delivers them one by
    one, so each gets its own answer.
    """
    return [[] if filed is None else filed.message_ids for filed in _deliver(items=items, files=files)]


def _deliver(*, items: list[dict], files: StoredFiles) -> list[Filed | None]:
    directory.refresh()
    boxes = mailboxes_by_id({i for item in items for i in item["mailbox_ids"]})
    rules = remembered_rules()
    batch = []
    for item in items:
        parsed = item.get("parsed") or parse_message(item["raw"])
        # The rules run inside the transaction: what they remember (vacation replies sent,
        # redirects made) commits or rolls back with the delivery.
        planned = plan_recipients(
            mailboxes=[boxes[i] for i in dict.fromkeys(item["mailbox_ids"])],
            parsed=parsed,
            raw=item["raw"],
            envelope_from=item["envelope_from"],
            authenticated=False,
            rules=rules,
            checked=item.get("checked"),
        )
        batch.append(Planned(item["raw"], parsed, item["envelope_from"], planned))
    return file_planned(batch, files=files)


deliver_inbound.many = deliver_inbound_many
