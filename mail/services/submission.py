"""Submission (RFC 6409): what an authenticated user may send, and accepting what they send.

The SMTP adapter (mail.smtp.submission) calls authorize_sender at MAIL FROM,
check_submission_recipient at RCPT, and at DATA accept_submission in the group commit (which
may run in the group commit: prepare_submission checks, completes and signs, then
commit_submission files); each raises mail.replies.SMTPReject with the reply to give.
"""

from __future__ import annotations

import email.utils
import logging
import secrets
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import transaction

from accounts.authentication import resolve_login, user_allows
from accounts.grants import mailbox_resource
from accounts.models import User
from mail import replies
from mail.addresses import Address, AddressError, parse_address
from mail.dkim.signing import sign_for_domain
from mail.message import ParsedMessage, parse_message
from mail.models import Mailbox, MailDomain
from mail.models.mailboxes import SENT
from mail.replies import SMTPReject
from mail.rules.plan import DeliveryPlan, Filing
from mail.services.delivery import (
    POSTMASTER,
    Planned,
    check_postmaster,
    file_planned,
    mailboxes_by_id,
    plan_recipients,
    remembered_rules,
    resolve_mailboxes,
)
from mail.services.directory import directory
from mail.services.dsn import notify_success
from mail.services.enqueue import enqueue_remote
from mail.services.mailboxes import ensure_mailbox
from mail.services.storage import StoredFiles
from mail.smtp.extensions import EnvelopeParams

log = logging.getLogger("mail.smtp")


@dataclass(frozen=True)
class Sender:
    """An envelope sender the user may use: the user, the address and its local domain.

    `user` is None for a client that did not authenticate: allowed only from a trusted
    network, for a domain whose submission auth is "none".
    """

    user: User | None
    address: Address
    domain: MailDomain


def remembered_login(login: str) -> User | None:
    """accounts.authentication.resolve_login through the directory's memory, checked
    against the latest change first (a new password or a deleted user drops it)."""
    directory.refresh()
    return directory.remember(("login", login), lambda: resolve_login(login))


def may_send_as(user: User, address: Address) -> MailDomain | None:
    """The domain of `address` when `user` may submit as it, else None.

    The domain must be an enabled local domain with submission on, and the user must hold
    writer on smtp/mail/D:LOCAL or smtp/mail/D. Without a user (no AUTH, from a trusted
    network) the domain's submission auth must be "none".
    """
    domain = MailDomain.objects.filter(name=address.domain, enabled=True, submission_enabled=True).first()
    if domain is None:
        return None
    if user is None:
        return domain if domain.submission_auth == MailDomain.SubmissionAuth.NONE else None
    if not user_allows(user, "writer", mailbox_resource(address.local, address.domain)):
        return None
    return domain


def authorize_sender(*, user: User | None, envelope_from: str) -> Sender:
    """Check MAIL FROM for `user` (None: a trusted client without AUTH). Raises SMTPReject
    (BAD_SENDER, SENDER_NOT_ALLOWED).

    Starts a mail transaction: the directory's memory is checked against the latest change
    here, and the RCPT and DATA decisions that follow may answer from it."""
    try:
        address = parse_address(envelope_from)
    except AddressError:
        raise SMTPReject(replies.BAD_SENDER) from None
    directory.refresh()
    key = ("send-as", user.pk if user is not None else None, address.key)
    domain = directory.remember(key, lambda: may_send_as(user, address))
    if domain is None:
        raise SMTPReject(replies.SENDER_NOT_ALLOWED)
    return Sender(user=user, address=address, domain=domain)


def remembered_sender(user: User, envelope_from: str) -> Sender | None:
    """What authorize_sender answered for `user` and `envelope_from` if the directory still
    remembers it, else None (then ask it). No I/O: fit for the event loop."""
    try:
        address = parse_address(envelope_from)
    except AddressError:
        return None
    domain = directory.get(("send-as", user.pk, address.key))
    return None if domain is None else Sender(user=user, address=address, domain=domain)


def _check_header_from(sender: Sender, parsed: ParsedMessage) -> None:
    values = parsed.values("From")
    addrs = parsed.from_addresses()
    if len(values) != 1 or len(addrs) != 1:
        raise SMTPReject(replies.ONE_FROM_REQUIRED)
    try:
        address = parse_address(addrs[0])
    except AddressError:
        raise SMTPReject(replies.FROM_NOT_ALLOWED) from None
    # The envelope sender was authorised at MAIL FROM; any other address is checked here.
    if address.key != sender.address.key and may_send_as(sender.user, address) is None:
        raise SMTPReject(replies.FROM_NOT_ALLOWED)


def _first_field_end(raw: bytes) -> int:
    """Where the first header field of `raw` ends (after its folded lines and their CRLF)."""
    end = raw.find(b"\r\n")
    while end >= 0 and raw[end + 2 : end + 3] in (b" ", b"\t"):
        end = raw.find(b"\r\n", end + 2)
    return len(raw) if end < 0 else end + 2


def _added_headers(parsed: ParsedMessage, domain: MailDomain) -> bytes:
    """The Message-Id and Date header lines a message lacks (RFC 6409 section 8: a
    submission server may add them)."""
    added = []
    if not parsed.values("Message-Id"):
        added.append(f"Message-Id: <{secrets.token_hex(16)}@{domain.effective_hostname}>\r\n")
    if not parsed.values("Date"):
        # RFC 5322 section 3.3: +0000, not the obsolete "GMT".
        added.append(f"Date: {email.utils.format_datetime(datetime.now(UTC))}\r\n")
    return "".join(added).encode()


@dataclass(frozen=True)
class Recipients:
    """The accepted recipients of one submission: local mailboxes and remote addresses."""

    mailboxes: tuple[Mailbox, ...] = ()
    remote: tuple[str, ...] = ()

    def add(self, accepted: Mailbox | str) -> Recipients:
        if isinstance(accepted, Mailbox):
            if any(m.id == accepted.id for m in self.mailboxes):
                return self
            return Recipients((*self.mailboxes, accepted), self.remote)
        if accepted in self.remote:
            return self
        return Recipients(self.mailboxes, (*self.remote, accepted))


@dataclass(frozen=True)
class Submission:
    """What a submission session accepted at DATA, as plain values (it may travel to the
    group commit's thread): the user, the envelope sender authorised at MAIL FROM and its domain,
    the recipients accepted at RCPT and the message."""

    user_id: int | None  # None: a trusted client without AUTH
    envelope_from: str
    domain_id: int
    mailbox_ids: tuple[int, ...]  # local recipients
    remote: tuple[str, ...]
    raw: bytes
    params: EnvelopeParams = field(default_factory=EnvelopeParams)

    @classmethod
    def of(
        cls, *, sender: Sender, recipients: Recipients, raw: bytes, params: EnvelopeParams | None = None
    ) -> Submission:
        return cls(
            user_id=sender.user.pk if sender.user is not None else None,
            envelope_from=str(sender.address),
            domain_id=sender.domain.id,
            mailbox_ids=tuple(m.id for m in recipients.mailboxes),
            remote=recipients.remote,
            raw=raw,
            params=params or EnvelopeParams(),
        )


@dataclass(frozen=True)
class PreparedSubmission:
    """A submitted message checked, completed and signed, ready to be committed."""

    raw: bytes
    parsed: ParsedMessage  # of `raw`, as it will be stored
    envelope_from: str
    domain_id: int
    sender_local: str
    # None: created at commit for an authenticated user; without AUTH, no sent copy is kept
    # unless the mailbox exists.
    sender_mailbox_id: int | None
    mailbox_ids: tuple[int, ...]  # local recipients
    remote: tuple[str, ...]
    helo_hostname: str
    authenticated: bool = True  # False: a trusted client without AUTH (the rules can tell)
    params: EnvelopeParams = field(default_factory=EnvelopeParams)


def _sender_of(submission: Submission) -> Sender:
    """The Sender authorised at MAIL FROM, read again (through the directory). Raises
    SENDER_NOT_ALLOWED when the user or the domain has gone since."""
    domain = directory.remember(
        ("domain", submission.domain_id), lambda: MailDomain.objects.filter(pk=submission.domain_id).first()
    )
    if domain is None:
        raise SMTPReject(replies.SENDER_NOT_ALLOWED)
    if submission.user_id is None:
        if domain.submission_auth != MailDomain.SubmissionAuth.NONE:
            raise SMTPReject(replies.SENDER_NOT_ALLOWED)
        return Sender(user=None, address=parse_address(submission.envelope_from), domain=domain)
    user = directory.remember(
        ("user", submission.user_id),
        lambda: User.objects.filter(pk=submission.user_id, is_active=True).first(),
    )
    if user is None:
        raise SMTPReject(replies.SENDER_NOT_ALLOWED)
    return Sender(user=user, address=parse_address(submission.envelope_from), domain=domain)


def prepare_submission(*, submission: Submission) -> PreparedSubmission:
    """Check the From header, add Message-Id and Date when missing, DKIM-sign. Writes nothing.

    Raises SMTPReject for a From header the user may not use or several From addresses.
    """
    sender = _sender_of(submission)
    raw = submission.raw
    parsed = parse_message(raw)
    _check_header_from(sender, parsed)
    added = _added_headers(parsed, sender.domain)
    # RFC 6376 section 5: sign last, over the completed header (both keys when present).
    signatures = sign_for_domain(sender.domain, added + raw)
    sender_mailbox = directory.remember(("mailbox", sender.address.key), lambda: _sender_mailbox(sender))
    # Below our own Received field, which the listener put first: a trace field stays on
    # top of what this hop adds (RFC 5321 section 4.4).
    trace = _first_field_end(raw) if raw[:9].lower() == b"received:" else 0
    return PreparedSubmission(
        raw=raw[:trace] + signatures + added + raw[trace:],
        parsed=parsed.prepend(signatures + added),
        envelope_from=submission.envelope_from,
        domain_id=sender.domain.id,
        sender_local=sender.address.local,
        sender_mailbox_id=None if sender_mailbox is None else sender_mailbox.id,
        mailbox_ids=submission.mailbox_ids,
        remote=submission.remote,
        helo_hostname=sender.domain.effective_hostname,
        authenticated=sender.user is not None,
        params=submission.params,
    )


def accept_submission(*, submission: Submission, files: StoredFiles | None = None) -> None:
    """prepare_submission then commit_submission: a submission's DATA, run in the group
    commit. Raises SMTPReject (the From header, a rule); otherwise nothing is committed when
    it raises."""
    directory.refresh()
    commit_submission(prepared=prepare_submission(submission=submission), files=files)


def accept_submission_many(*, items: list[dict], files: StoredFiles) -> list[None]:
    """accept_submission for many messages at once (the group commit's fast path): each
    prepared, then all committed with commit_submission_many. Raises on the first problem
    of any message; the caller then takes them one by one, so each gets its own answer."""
    directory.refresh()
    prepared = [prepare_submission(submission=item["submission"]) for item in items]
    return commit_submission_many(items=[{"prepared": p} for p in prepared], files=files)


accept_submission.many = accept_submission_many


def _sender_mailbox(sender: Sender) -> Mailbox | None:
    return (
        Mailbox.objects.filter(domain=sender.domain, local_part=sender.address.local.casefold())
        .order_by()
        .first()
    )


def commit_submission(*, prepared: PreparedSubmission, files: StoredFiles | None = None) -> None:
    """In one transaction: store the message, deliver it to local mailboxes, queue remote
    recipients, file a copy in the sender's `sent` folder.

    Raises SMTPReject when a local recipient's rule rejects the message; any other
    exception means nothing was committed and no stored file remains. With `files` (group
    commit), the caller owns the outer transaction and removes those files if it does not
    commit.
    """
    raw, envelope_from, parsed = prepared.raw, prepared.envelope_from, prepared.parsed
    with nullcontext(files) if files is not None else StoredFiles() as files, transaction.atomic():
        wanted = {*prepared.mailbox_ids, *filter(None, [prepared.sender_mailbox_id])}
        boxes = mailboxes_by_id(wanted)
        planned = plan_recipients(
            mailboxes=[boxes[i] for i in prepared.mailbox_ids],
            parsed=parsed,
            raw=raw,
            envelope_from=envelope_from,
            authenticated=prepared.authenticated,
        )
        if prepared.sender_mailbox_id is not None:
            sender_box = boxes[prepared.sender_mailbox_id]
        elif prepared.authenticated:
            domain = MailDomain.objects.get(id=prepared.domain_id)
            sender_box = ensure_mailbox(domain=domain, local_part=prepared.sender_local)
        else:
            sender_box = None
        if sender_box is not None:
            planned.append((sender_box, DeliveryPlan(filings=[Filing(SENT, seen=True)])))
        # Stored even without a local copy: the queue sends it to the remote recipients.
        (filed,) = file_planned([Planned(raw, parsed, envelope_from, planned, keep=True)], files=files)
        if prepared.remote:
            enqueue_remote(
                content=filed.content,
                envelope_from=envelope_from,
                recipients=list(prepared.remote),
                helo_hostname=prepared.helo_hostname,
                params=prepared.params,
            )
        if prepared.params.success_wanted():
            notify_success(
                reporting_host=prepared.helo_hostname,
                envelope_from=envelope_from,
                original=raw,
                recipients=prepared.params.success_wanted(),
                params=prepared.params,
            )


def commit_submission_many(*, items: list[dict], files: StoredFiles) -> list[None]:
    """commit_submission for many messages at once, in the caller's transaction, with a
    fixed number of queries however many messages: the group commit's fast path.

    `items` are commit_submission keyword arguments. Raises on the first problem of any
    message (a rule rejection, a sender without a mailbox yet); the caller then rolls back
    and commits them one by one, so each gets its own answer.
    """
    batch: list[PreparedSubmission] = [item["prepared"] for item in items]
    if any(prepared.sender_mailbox_id is None and prepared.authenticated for prepared in batch):
        raise ValueError("a sender's first message creates the mailbox on the one-by-one path")
    if any(prepared.params.success_wanted() for prepared in batch):
        raise ValueError("a success DSN is filed on the one-by-one path")
    boxes = mailboxes_by_id(
        {i for p in batch for i in (*p.mailbox_ids, p.sender_mailbox_id) if i is not None}
    )
    rules = remembered_rules()  # the caller refreshed the directory
    entries = []
    for prepared in batch:
        planned = plan_recipients(
            mailboxes=[boxes[i] for i in prepared.mailbox_ids],
            parsed=prepared.parsed,
            raw=prepared.raw,
            envelope_from=prepared.envelope_from,
            authenticated=prepared.authenticated,
            rules=rules,
        )
        if prepared.sender_mailbox_id is not None:
            sent = DeliveryPlan(filings=[Filing(SENT, seen=True)])
            planned.append((boxes[prepared.sender_mailbox_id], sent))
        entries.append(Planned(prepared.raw, prepared.parsed, prepared.envelope_from, planned, keep=True))
    stored = file_planned(entries, files=files)
    for prepared, filed in zip(batch, stored, strict=True):
        if prepared.remote:
            enqueue_remote(
                content=filed.content,
                envelope_from=prepared.envelope_from,
                recipients=list(prepared.remote),
                helo_hostname=prepared.helo_hostname,
                params=prepared.params,
            )
    return [None] * len(items)


commit_submission.many = commit_submission_many


def submit_message(*, user: User, envelope_from: str, recipients: list[str], raw: bytes) -> None:
    """The whole submission in one call, as the SMTP session makes it decision by decision:
    authorize_sender, check_submission_recipient per recipient, accept_submission."""
    sender = authorize_sender(user=user, envelope_from=envelope_from)
    accepted = Recipients()
    for recipient in recipients:
        accepted = accepted.add(check_submission_recipient(recipient=recipient))
    accept_submission(submission=Submission.of(sender=sender, recipients=accepted, raw=raw))


def check_submission_recipient(*, recipient: str) -> Mailbox | str:
    """Check RCPT TO on submission: the local mailbox, or the remote address (any valid one).

    Raises SMTPReject: BAD_RECIPIENT for an invalid address, UNKNOWN_USER for a missing
    mailbox of an enabled local domain (or no mailbox for the bare <Postmaster>).
    """
    if recipient.casefold() == POSTMASTER:
        # The bare <Postmaster> (RFC 5321 section 4.5.1) is accepted on every port.
        mailbox_id, _ = check_postmaster()
        return Mailbox.objects.select_related("domain").get(id=mailbox_id)
    try:
        address = parse_address(recipient)
    except AddressError:
        raise SMTPReject(replies.BAD_RECIPIENT) from None
    accepted = directory.remember(("rcpt", address.key), lambda: _resolve_recipient(address))
    if accepted is None:
        raise SMTPReject(replies.UNKNOWN_USER)
    return accepted


def _resolve_recipient(address: Address) -> Mailbox | str | None:
    boxes, remote = resolve_mailboxes([str(address)])
    if boxes:
        return next(iter(boxes.values()))
    return remote[0] if remote else None


def remembered_recipient(recipient: str) -> Mailbox | str | None:
    """What check_submission_recipient answered for `recipient` if the directory still
    remembers it, else None (then ask it). No I/O: fit for the event loop."""
    try:
        return directory.get(("rcpt", parse_address(recipient).key))
    except AddressError:
        return None
