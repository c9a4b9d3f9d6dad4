"""Local delivery: the one path both SMTP listeners use to file a message into mailboxes.

For each local recipient the mail rules (mail.rules.engine.plan_delivery) decide what
happens; this module carries the plan out. Every row of one SMTP transaction (the content,
the filed messages, the folders created on demand, the outgoing copies and their queue rows)
commits in one transaction, after the message bytes are durable (mail.services.storage).
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections import deque
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.parser import HeaderParser
from email.policy import compat32

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from mail import replies
from mail.addresses import Address, AddressError, parse_address
from mail.auth import results as authentication_results
from mail.auth import srs
from mail.auth.verdict import Summary
from mail.models import Folder, Mailbox, MailDomain, Message, MessageContent
from mail.replies import Reply, SMTPReject
from mail.rules.engine import CurrentRules, current_rules, plan_delivery
from mail.rules.plan import DeliveryPlan, MessageFacts, OutgoingMessage
from mail.services.directory import directory
from mail.services.enqueue import enqueue_remote
from mail.services.mailboxes import mailbox_usage
from mail.services.rows import RowInserter
from mail.services.storage import ContentWrites, StoredFiles, store_content

log = logging.getLogger("mail.smtp")

_HEADER_PARSER = HeaderParser(policy=compat32)
_MAX_FIELD = 998


@dataclass(frozen=True)
class ParsedMessage:
    """The header facts of a message that local delivery records and rules look at."""

    headers: tuple[tuple[str, str], ...]
    header_from: str
    header_to: str
    subject: str
    date: datetime | None
    message_id: str

    def values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def prepend(self, block: bytes) -> ParsedMessage:
        """The facts of the message with the header lines `block` put before its header:
        as parse_message(block + raw) tells them, without reading `raw` again."""
        if not block:
            return self
        added = parse_message(block + b"\r\n")
        names = {name.lower() for name, _ in added.headers}
        # The first field of a name is the one that counts, as parse_message reads them.
        return ParsedMessage(
            headers=added.headers + self.headers,
            header_from=added.header_from if "from" in names else self.header_from,
            header_to=added.header_to if "to" in names else self.header_to,
            subject=added.subject if "subject" in names else self.subject,
            date=added.date if "date" in names else self.date,
            message_id=added.message_id if "message-id" in names else self.message_id,
        )


def _text(value: str) -> str:
    if "=?" not in value:
        return value[:_MAX_FIELD]  # no encoded words (RFC 2047): the text is the value
    try:
        return str(make_header(decode_header(value)))[:_MAX_FIELD]
    except (UnicodeError, LookupError, ValueError):
        return value[:_MAX_FIELD]


# A field name (RFC 5322 section 3.6.8: printable ASCII but the colon).
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def _plain_header_fields(raw: bytes) -> tuple[tuple[str, str], ...] | None:
    """The header fields of `raw` as the email package's compat32 parser gives them, read
    directly when the header section is plain: ASCII, CRLF line endings, well-formed field
    names, a blank line after it. None for anything else (the parser then reads it)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    block = raw[:end]
    if not block.isascii():
        return None
    unfolded = block.replace(b"\r\n", b"")
    if b"\n" in unfolded or b"\r" in unfolded:
        return None  # a bare line end
    fields: list[list[str]] = []
    for line in block.decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            if not fields:
                return None
            fields[-1].append(line)  # a folded field goes on: kept as the parser keeps it
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            return None
        fields.append([name, value.lstrip(" \t")])
    return tuple((field[0], "\r\n".join(field[1:])) for field in fields)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse the header section of `raw` (RFC 5322); the body is not read."""
    headers = _plain_header_fields(raw)
    if headers is None:
        # Read as UTF-8 (RFC 6532: raw UTF-8 in fields, as SMTPUTF8 mail has), so that a
        # field is its text; bytes that are not UTF-8 stay undecodable (shown replaced).
        msg = _HEADER_PARSER.parsestr(raw.decode("utf-8", "surrogateescape"), headersonly=True)
        headers = tuple((name, str(value)) for name, value in msg.items())
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name.lower(), value)
    date = None
    if first.get("date"):
        try:
            date = email.utils.parsedate_to_datetime(first["date"])
            if date.tzinfo is None:
                date = None
        except (TypeError, ValueError, IndexError):
            date = None
    return ParsedMessage(
        headers=headers,
        header_from=_text(first.get("from", "")),
        header_to=_text(first.get("to", "")),
        subject=_text(first.get("subject", "")),
        date=date,
        message_id=first.get("message-id", "").strip()[:_MAX_FIELD],
    )


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


def _folder_ids(wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Folder ids for (mailbox id, name) pairs, creating missing folders."""
    if not wanted:
        return {}
    mailbox_ids = {m for m, _ in wanted}
    names = {n for _, n in wanted}

    def fetch() -> dict[tuple[int, str], int]:
        rows = (
            Folder.objects.filter(mailbox_id__in=mailbox_ids, name__in=names)
            .order_by()
            .values_list("mailbox_id", "name", "id")
        )
        return {(m, n): i for m, n, i in rows}

    found = fetch()
    missing = wanted - found.keys()
    if missing:
        Folder.objects.bulk_create(
            [Folder(mailbox_id=m, name=n) for m, n in sorted(missing)], ignore_conflicts=True
        )
        found = fetch()
    return found


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


def _remembered_folder_ids(wanted: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """_folder_ids through the directory's memory (a folder goes only with its mailbox)."""
    found = {key: directory.get(("folder", *key)) for key in wanted}
    missing = {key for key, folder_id in found.items() if folder_id is None}
    if missing:
        for key, folder_id in _folder_ids(missing).items():
            found[key] = directory.remember(("folder", *key), lambda i=folder_id: i)
    return found


def remembered_rules() -> CurrentRules:
    """current_rules() through the directory's memory (call directory.refresh() first): a
    RuleSet saved or deleted anywhere drops it, so the group commit asks no query for the
    rules while they stay the same."""
    return directory.remember(("rules",), current_rules)


def _header_block(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in pairs)


def file_planned(
    *,
    content: MessageContent,
    parsed: ParsedMessage,
    envelope_from: str,
    planned: list[tuple[Mailbox, DeliveryPlan]],
    files: StoredFiles,
) -> list[Message]:
    """Carry out plans inside the caller's transaction: file copies, send rule messages.

    Rule messages to local mailboxes are delivered through those mailboxes' rules in turn,
    following redirects through any chain (see _follow_outgoing). Returns the copies filed
    for `planned` itself."""
    messages = _file_copies(content=content, parsed=parsed, envelope_from=envelope_from, planned=planned)
    _follow_outgoing(
        [
            _Sent(outgoing, mailbox, (mailbox.address,), content, parsed, bool(plan.folders()))
            for mailbox, plan in planned
            for outgoing in plan.outgoing
        ],
        files=files,
    )
    return messages


def _file_copies(
    *,
    content: MessageContent,
    parsed: ParsedMessage,
    envelope_from: str,
    planned: list[tuple[Mailbox, DeliveryPlan]],
) -> list[Message]:
    wanted = {(mb.id, f.folder) for mb, plan in planned for f in plan.folders()}
    folders = _folder_ids(wanted)
    messages = []
    for mailbox, plan in planned:
        prepended = _header_block(plan.add_headers)
        for filing in plan.folders():
            messages.append(
                Message(
                    folder_id=folders[(mailbox.id, filing.folder)],
                    content=content,
                    prepended_headers=prepended,
                    envelope_from=envelope_from[:320],
                    envelope_to=mailbox.address[:320],
                    header_from=parsed.header_from,
                    header_to=parsed.header_to,
                    subject=parsed.subject,
                    date=parsed.date,
                    message_id=parsed.message_id,
                    size=content.size + len(prepended),
                    seen=filing.seen,
                    flagged=filing.flagged,
                )
            )
    Message.objects.bulk_create(messages)
    return messages


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
        # Stored once for all its targets; not at all when none can take it.
        content = store_content(outgoing.data, files=files) if boxes or remote else None
        parsed = parse_message(outgoing.data)
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
            _file_copies(
                content=content,
                parsed=parsed,
                envelope_from=outgoing.envelope_from,
                planned=[(mailbox, plan)],
            )
            queue.extend(
                _Sent(
                    next_out, mailbox, (*sent.chain, mailbox.address), content, parsed, bool(plan.folders())
                )
                for next_out in plan.outgoing
            )
        if remote:
            enqueue_remote(
                content=content,
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
            _file_copies(
                content=sent.received,
                parsed=sent.received_parsed,
                envelope_from=outgoing.envelope_from,
                planned=[(sent.sender, DeliveryPlan())],
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
) -> list[Message]:
    """Deliver a message received on port 25 to local mailboxes, committed before returning.

    `raw` already carries the Return-Path and Received headers (and the Authentication-Results
    of `checked`, the inbound checks' summary, None when they did not run). Raises SMTPReject when a
    rule rejects the message (nothing is stored); any other exception means nothing was
    committed and no stored file remains. With `files` (group commit), the caller owns the
    outer transaction and removes those files if it does not commit.
    """
    parsed = parse_message(raw)
    mailboxes = list(Mailbox.objects.select_related("domain").filter(id__in=mailbox_ids).order_by())
    if len(mailboxes) != len(set(mailbox_ids)):
        # Deleted since RCPT: the client retries, and RCPT then answers for the mailbox.
        raise SMTPReject(replies.MAILBOX_CHANGED)
    with nullcontext(files) if files is not None else StoredFiles() as files, transaction.atomic():
        # The rules run inside the transaction: what they remember (vacation replies sent,
        # redirects made) commits or rolls back with the delivery.
        planned = plan_recipients(
            mailboxes=mailboxes,
            parsed=parsed,
            raw=raw,
            envelope_from=envelope_from,
            authenticated=False,
            checked=checked,
        )
        if all(not plan.folders() and not plan.outgoing for _, plan in planned):
            return []
        content = store_content(raw, files=files)
        return file_planned(
            content=content, parsed=parsed, envelope_from=envelope_from, planned=planned, files=files
        )


def deliver_inbound_many(*, items: list[dict], files: StoredFiles) -> list[list[int]]:
    """deliver_inbound for many messages at once, in the caller's transaction, with a
    fixed number of queries however many messages: the group commit's fast path.

    `items` are deliver_inbound keyword arguments; returns the ids of each message's filed
    copies. Raises on the first problem of any
    message (a rule rejection included); the caller then rolls back and delivers them one by
    one, so each gets its own answer.
    """
    parsed = [parse_message(item["raw"]) for item in items]
    directory.refresh()
    boxes = mailboxes_by_id({i for item in items for i in item["mailbox_ids"]})
    rules = remembered_rules()
    plans = []
    for item, facts in zip(items, parsed, strict=True):
        plans.append(
            plan_recipients(
                mailboxes=[boxes[i] for i in item["mailbox_ids"] if i in boxes],
                parsed=facts,
                raw=item["raw"],
                envelope_from=item["envelope_from"],
                authenticated=False,
                rules=rules,
                checked=item.get("checked"),
            )
        )
    stored = store_and_file_many(
        [
            (item["raw"], facts, item["envelope_from"], planned)
            for item, facts, planned in zip(items, parsed, plans, strict=True)
        ],
        files=files,
    )
    return [messages for _, messages in stored]


def store_and_file_many(
    entries: list[tuple[bytes, ParsedMessage, str, list[tuple[Mailbox, DeliveryPlan]]]], *, files: StoredFiles
) -> list[tuple[MessageContent | None, list[int]]]:
    """Store many messages and file each by its plans, in the caller's transaction, with a
    fixed number of queries however many messages: the group commit's fast paths.

    `entries` are (raw, parsed, envelope_from, planned). Returns each message's content row
    and the ids of its filed copies ((None, []) for one the rules discard for everyone). Raises
    ValueError when a plan sends rule messages (those go the one-by-one way); any other
    exception leaves the caller to roll back and remove `files`.
    """
    if any(plan.outgoing for _, _, _, planned in entries for _, plan in planned):
        raise ValueError("rule messages are sent on the one-by-one path")
    # A message the rules discard for every recipient is not stored at all.
    kept = [entry for entry in entries if any(plan.folders() for _, plan in entry[3])]
    # The files are written and synced while their rows go in; the commit waits for both.
    writes = ContentWrites([raw for raw, _, _, _ in kept], files=files)
    try:
        filed = iter(_file_many(kept, writes.names))
    except BaseException:
        writes.settle()  # nothing still writing when the caller removes the files
        raise
    writes.wait()
    return [next(filed) if any(plan.folders() for _, plan in entry[3]) else (None, []) for entry in entries]


_CONTENT_ROWS = RowInserter(MessageContent, ["storage_name", "size", "created_at"])
_MESSAGE_ROWS = RowInserter(
    Message,
    [
        "folder",
        "content",
        "prepended_headers",
        "envelope_from",
        "envelope_to",
        "header_from",
        "header_to",
        "subject",
        "date",
        "message_id",
        "size",
        "received_at",
        "seen",
        "flagged",
    ],
)


def _file_many(
    entries: list[tuple[bytes, ParsedMessage, str, list[tuple[Mailbox, DeliveryPlan]]]], names: list[str]
) -> list[tuple[MessageContent, list[int]]]:
    now = timezone.now()
    sizes = [len(raw) for raw, _, _, _ in entries]
    content_ids = _CONTENT_ROWS.insert(
        [(name, size, now) for name, size in zip(names, sizes, strict=True)], returning_ids=True
    )
    folders = _remembered_folder_ids(
        {(mb.id, f.folder) for _, _, _, planned in entries for mb, plan in planned for f in plan.folders()}
    )
    rows = []
    for (_, facts, envelope_from, planned), content_id, size in zip(entries, content_ids, sizes, strict=True):
        for mailbox, plan in planned:
            prepended = _header_block(plan.add_headers)
            rows.extend(
                (
                    folders[(mailbox.id, filing.folder)],
                    content_id,
                    prepended,
                    envelope_from[:320],
                    mailbox.address[:320],
                    facts.header_from,
                    facts.header_to,
                    facts.subject,
                    facts.date,
                    facts.message_id,
                    size + len(prepended),
                    now,
                    filing.seen,
                    filing.flagged,
                )
                for filing in plan.folders()
            )
    message_ids = iter(_MESSAGE_ROWS.insert(rows, returning_ids=True))
    stored = []
    for (_, _, _, planned), name, content_id, size in zip(entries, names, content_ids, sizes, strict=True):
        content = MessageContent(id=content_id, storage_name=name, size=size, created_at=now)
        filed = [next(message_ids) for _, plan in planned for _ in plan.folders()]
        stored.append((content, filed))
    return stored


deliver_inbound.many = deliver_inbound_many
