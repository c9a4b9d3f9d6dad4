"""Delivery status notifications (RFC 3464): failures and delays of the queue, and the
success reports RFC 3461 NOTIFY=SUCCESS asks for.

A DSN goes to the envelope sender: filed into the inbox of a local sender through local
delivery (mail.services.delivery), queued (with a null sender, so it can never bounce back)
for a remote one (mail.services.enqueue), and never sent for a message whose own sender was
null (RFC 5321 section 4.5.5).
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from mail.auth import srs
from mail.auth.verdict import Summary
from mail.message import ParsedMessage
from mail.models import Message
from mail.replies import SMTPReject
from mail.services.delivery import deliver_inbound, resolve_mailboxes
from mail.services.enqueue import enqueue_remote
from mail.services.storage import StoredFiles, store_content
from mail.smtp.extensions import EnvelopeParams, xtext_encode

log = logging.getLogger("mail.delivery")


def _status(reply: str) -> str:
    # The enhanced status code (RFC 3463) when the reply has one, else a generic one.
    parts = reply.split()
    if len(parts) > 1 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return "5.0.0" if reply[:1] == "5" else "4.0.0"


# RFC 3464 section 2.3.3 actions: the text that opens the report, and its subject.
_ACTIONS = {
    "failed": ("could not be delivered.", "Undelivered Mail Returned to Sender"),
    "delayed": ("has not been delivered yet; delivery will be retried.", "Delivery delayed"),
    "delivered": ("was delivered.", "Successful Mail Delivery Report"),
    # RFC 3461 section 4.1: relayed to a host that does not offer DSN, so no later report.
    "relayed": ("was relayed to a server that sends no delivery reports.", "Successful Mail Delivery Report"),
}


@dataclass(frozen=True, kw_only=True)
class Report:
    """One delivery status notification: what build_dsn writes and send_dsn delivers.

    `recipients` are (recipient, remote MTA or "", last reply); `action` is RFC 3464's
    (failed, delayed, delivered, relayed) for all of them; `arrival` is when the message
    came in. The original message's header goes back with the report, or the whole message
    with `ret` FULL (RFC 3461 section 4.3); `envid` and `orcpts` (recipient:
    "rfc822;address") are the sender's ENVID and ORCPT, echoed back (RFC 3464 sections
    2.2.1, 2.3.1).
    """

    reporting_host: str
    envelope_from: str
    original: bytes
    recipients: tuple[tuple[str, str, str], ...]
    arrival: datetime
    action: str = "failed"
    ret: str = ""
    envid: str = ""
    orcpts: Mapping[str, str] = field(default_factory=dict)


def build_dsn(report: Report) -> bytes:
    """The bytes of a multipart/report DSN (RFC 3464 section 2) for `report`."""
    reporting_host, envelope_from, original = report.reporting_host, report.envelope_from, report.original
    failed, arrival, action = report.recipients, report.arrival, report.action
    ret, envid, orcpts = report.ret, report.envid, report.orcpts
    opening, subject = _ACTIONS[action]
    boundary = email.utils.make_msgid(domain=reporting_host).strip("<>").replace("@", ".")
    lines = [f"The message you sent to {', '.join(r for r, _, _ in failed)} " + opening, ""]
    for rcpt, mta, reply in failed:
        lines.append(f"<{rcpt}>: {reply}" + (f" (from {mta})" if mta else ""))
    human = "\r\n".join(lines) + "\r\n"
    status = [f"Reporting-MTA: dns; {reporting_host}"]
    if envid:
        status.append(f"Original-Envelope-Id: {xtext_encode(envid)}")
    status += [f"Arrival-Date: {email.utils.format_datetime(arrival)}", ""]
    for rcpt, mta, reply in failed:
        if rcpt in orcpts:
            addr_type, _, address = orcpts[rcpt].partition(";")
            status.append(f"Original-Recipient: {addr_type}; {xtext_encode(address)}")
        status += [
            f"Final-Recipient: rfc822; {rcpt}",
            f"Action: {action}",
            f"Status: {_ACTION_STATUS.get(action) or _status(reply)}",
        ]
        if mta:
            status.append(f"Remote-MTA: dns; {mta}")
        if reply[:1] in "245" and reply[:3].isdigit():
            status.append(f"Diagnostic-Code: smtp; {reply}")
        status.append("")
    if ret == "FULL":
        returned = b"Content-Type: message/rfc822\r\n\r\n" + original
    else:
        header_end = original.find(b"\r\n\r\n")
        returned = b"Content-Type: text/rfc822-headers\r\n\r\n" + (
            original if header_end < 0 else original[: header_end + 2]
        )
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_host}>",
        f"To: <{envelope_from}>",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(email.utils.localtime())}",
        f"Message-Id: {email.utils.make_msgid(domain=reporting_host)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    parts = (
        "\r\n".join(head).encode()
        + b"\r\n"
        + human.encode()
        + f"\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n".encode()
        + "\r\n".join(status).encode()
        + b"\r\n"
        + f"--{boundary}\r\n".encode()
        + returned
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return parts


# Statuses that do not come from a reply (RFC 3463): delayed, and the two successes.
_ACTION_STATUS = {"delayed": "4.0.0", "delivered": "2.0.0", "relayed": "2.0.0"}


def send_dsn(report: Report, *, outside: bool = True) -> bool:
    """Deliver `report` to its envelope sender in the caller's transaction. Returns whether
    one was filed or queued (False for a null sender, no recipients, or a local sender
    without a mailbox).

    With `outside` False (the bounce of a rule redirect, whose sender may be forged), a
    remote sender gets nothing: the DSN is dropped and logged, never queued (backscatter)."""
    if not report.envelope_from or not report.recipients:
        return False
    if srs.is_srs(report.envelope_from):
        original_sender = srs.reverse(report.envelope_from)
        if original_sender:
            # A redirect we sent on with an SRS sender (mail.auth.srs): the bounce goes to the
            # original sender, which passed SPF or DMARC when the message came in.
            report, outside = dataclasses.replace(report, envelope_from=original_sender), True
    envelope_from, reporting_host = report.envelope_from, report.reporting_host
    raw = b"Return-Path: <>\r\n" + build_dsn(report)
    boxes, remote = resolve_mailboxes([envelope_from])
    if boxes:
        try:
            with transaction.atomic():
                deliver_inbound(raw=raw, envelope_from="", mailbox_ids=[m.id for m in boxes.values()])
        except SMTPReject as exc:
            log.info("DSN to %s refused by a rule: %s", envelope_from, exc)
            return False
        return True
    if remote and not outside:
        log.warning(
            "DSN of a redirected message not sent to the remote sender %s (backscatter)", envelope_from
        )
        return False
    if remote:
        with StoredFiles() as files, transaction.atomic():
            content = store_content(raw, files=files)
            enqueue_remote(content=content, envelope_from="", recipients=remote, helo_hostname=reporting_host)
        return True
    log.info("no mailbox for the sender %s: DSN dropped", envelope_from)
    return False


def wants(notify: str, event: str) -> bool:
    """Whether a recipient's stored NOTIFY (RFC 3461 section 4.1) asks for a DSN on `event`
    (SUCCESS, FAILURE or DELAY): without NOTIFY, failures and delays are reported."""
    if not notify:
        return event in ("FAILURE", "DELAY")
    return event in notify.split(",")


def notify_success(
    *,
    reporting_host: str,
    envelope_from: str,
    original: bytes,
    recipients: list[str],
    params: EnvelopeParams,
    action: str = "delivered",
    mta: str = "",
    reply: str = "250 2.0.0 Delivered",
) -> bool:
    """A success DSN (RFC 3461 section 4.1 NOTIFY=SUCCESS) for `recipients`, in the caller's
    transaction: `delivered` into a local mailbox, or `relayed` to a host without DSN."""
    return send_dsn(
        Report(
            reporting_host=reporting_host,
            envelope_from=envelope_from,
            original=original,
            recipients=tuple((r, mta, reply) for r in recipients),
            arrival=timezone.now(),
            action=action,
            ret=params.mail.ret,
            envid=params.mail.envid,
            orcpts={r: params.rcpt(r).orcpt for r in recipients if params.rcpt(r).orcpt},
        )
    )


def deliver_inbound_reporting(
    *,
    raw: bytes,
    envelope_from: str,
    mailbox_ids: list[int],
    params: EnvelopeParams,
    reporting_host: str,
    files: StoredFiles | None = None,
    checked: Summary | None = None,
    parsed: ParsedMessage | None = None,
) -> list[Message]:
    """deliver_inbound, and in the same transaction the success DSN (RFC 3461 section 4.1,
    Action: delivered) its recipients that gave NOTIFY=SUCCESS asked for: unless the inbound
    checks found that the sender passed neither SPF nor DMARC (it may be forged, and the
    report would be backscatter)."""
    with transaction.atomic():
        messages = deliver_inbound(
            raw=raw,
            envelope_from=envelope_from,
            mailbox_ids=mailbox_ids,
            files=files,
            checked=checked,
            parsed=parsed,
        )
        if checked is not None and not checked.sender_verified:
            log.info("no success DSN to %s: it passed neither SPF nor DMARC", envelope_from)
            return messages
        notify_success(
            reporting_host=reporting_host,
            envelope_from=envelope_from,
            original=raw,
            recipients=params.success_wanted(),
            params=params,
        )
    return messages
