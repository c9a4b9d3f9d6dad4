"""The inbound listener (port 25): mail from other servers to our local mailboxes.

No AUTH here. RCPT is accepted only for mailboxes of enabled local domains; everything
else is relaying (RFC 5321 section 3.6.2) and refused.
"""

from __future__ import annotations

from mail import replies
from mail.auth import srs
from mail.auth.checker import checks_from_settings
from mail.replies import SMTPReject
from mail.services.delivery import (
    POSTMASTER,
    check_bounce_recipient,
    check_local_recipient,
    check_postmaster,
    check_room,
    deliver_inbound,
    forward_bounce,
    remembered_local_recipient,
)
from mail.services.dsn import deliver_inbound_reporting
from mail.smtp.handler import (
    BaseHandler,
    check_data,
    envelope_address,
    envelope_params,
    mail_params,
    received_header,
)
from mail.smtp.server import call_batched, call_service, peer_host

_FROM_SETTINGS = object()


def sender_of_path(address: str) -> str:
    return "" if address == "<>" else address


def sender_of(envelope) -> str:
    return sender_of_path(envelope.mail_from)


class InboundHandler(BaseHandler):
    def __init__(self, config, committer, *, checks=_FROM_SETTINGS):
        super().__init__(config, committer)
        # mail.auth.checker.InboundChecks, or None for no checks.
        self.checks = checks_from_settings() if checks is _FROM_SETTINGS else checks

    async def handle_CONNECT(self, server, session):
        """The greeting's refusal for a client a DNSBL lists (mail.smtp.server asks before it
        greets), or None."""
        if self.checks is None:
            return None
        return await self.checks.dnsbl_refusal(peer_host(session.peer))

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # "<>" is the null sender of bounces (RFC 5321 section 4.5.5); aiosmtpd needs a
        # non-empty mail_from, so it is kept as "<>" in the envelope.
        if address != "<>":
            try:
                envelope_address(address, invalid=replies.BAD_SENDER)
            except SMTPReject as exc:
                return exc.reply
        if self.checks is not None:
            envelope.auth = self.checks.begin(
                ip=peer_host(session.peer), helo=session.host_name or "", mail_from=sender_of_path(address)
            )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.mailbox_ids = []
        return replies.SENDER_OK

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if address.casefold() == POSTMASTER:
            # The bare <Postmaster> (RFC 5321 section 4.5.1), without a domain.
            ok, result = await call_service(check_postmaster)
            if not ok:
                return result
        else:
            try:
                parsed = envelope_address(address, invalid=replies.BAD_RECIPIENT)
            except SMTPReject as exc:
                return exc.reply
            if srs.is_srs(parsed.local):
                # A bounce of mail a rule sent on (mail.auth.srs): sent on to its sender.
                ok, result = await call_service(
                    check_bounce_recipient, address=parsed, null_sender=envelope.mail_from == "<>"
                )
                if not ok:
                    return result
                envelope.bounce_to = [*getattr(envelope, "bounce_to", ()), result]
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(rcpt_options)
                return replies.RECIPIENT_OK
            # Answered from the directory's memory when it can.
            result = remembered_local_recipient(parsed)
            if result is None:
                ok, result = await call_service(check_local_recipient, address=parsed)
                if not ok:
                    return result
            elif result[1] is not None:
                ok, full = await call_service(check_room, mailbox_id=result[0], quota=result[1])
                if not ok:
                    return full
        mailbox_id = result[0]
        if mailbox_id not in envelope.mailbox_ids:
            envelope.mailbox_ids.append(mailbox_id)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        try:
            check_data(raw, max_hops=self.config.max_hops, binary=mail_params(envelope).binarymime)
        except SMTPReject as exc:
            return exc.reply
        results, summary, parsed = b"", None, None
        if self.checks is not None:
            checked = await self.checks.finish(
                envelope.auth, raw, recipient_domain=envelope.rcpt_tos[0].rpartition("@")[2].lower()
            )
            if checked.verdict.reply is not None:
                return checked.verdict.reply
            raw, results, summary, parsed = (
                checked.raw,
                checked.header,
                checked.verdict.summary,
                checked.parsed,
            )
        return_path = f"Return-Path: <{sender_of(envelope)}>\r\n".encode()
        added = return_path + results + received_header(server=server, session=session, envelope=envelope)
        raw = added + raw
        if parsed is not None:
            # Parsed once, by the checks; filing reads only the fields added here.
            parsed = parsed.prepend(added)
        if getattr(envelope, "bounce_to", None):
            ok, result = await call_service(
                forward_bounce, raw=raw, recipients=envelope.bounce_to, helo_hostname=self.config.hostname
            )
            if not ok or not envelope.mailbox_ids:
                return replies.ACCEPTED if ok else result
        params = envelope_params(envelope, delivered_here=envelope.rcpt_tos)
        if params.success_wanted():
            ok, result = await call_batched(
                self.committer,
                deliver_inbound_reporting,
                raw=raw,
                envelope_from=sender_of(envelope),
                mailbox_ids=list(envelope.mailbox_ids),
                params=params,
                reporting_host=self.config.hostname,
                checked=summary,
                parsed=parsed,
            )
            return replies.ACCEPTED if ok else result
        ok, result = await call_batched(
            self.committer,
            deliver_inbound,
            raw=raw,
            envelope_from=sender_of(envelope),
            mailbox_ids=list(envelope.mailbox_ids),
            checked=summary,
            parsed=parsed,
        )
        return replies.ACCEPTED if ok else result
