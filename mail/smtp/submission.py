"""The submission listener (port 587, RFC 6409): authenticated users sending mail.

AUTH PLAIN and LOGIN (RFC 4954) are required before MAIL, except for clients in
EVERLOCK_SUBMISSION_TRUSTED_NETWORKS sending as a domain with auth=off; the envelope sender
must be an address the user may send as; remote recipients are queued, local ones delivered.
"""

from __future__ import annotations

from accounts.authentication import Throttled, authenticate
from accounts.models import User
from mail import replies
from mail.replies import SMTPReject
from mail.services.submission import (
    Recipients,
    Submission,
    accept_submission,
    authorize_sender,
    check_submission_recipient,
    remembered_login,
    remembered_recipient,
    remembered_sender,
)
from mail.smtp.handler import BaseHandler, check_data, envelope_params, mail_params, received_header
from mail.smtp.server import call_batched, call_service, peer_host


def authenticate_login(*, login: str, password: str, client_address: str) -> User | None:
    """The user `login`/`password` names, or None.

    Raises SMTPReject AUTH_THROTTLED when the login throttle refuses the attempt.
    """
    try:
        user = authenticate(
            login, password, client_address=client_address, service="smtp", resolve=remembered_login
        )
    except Throttled:
        raise SMTPReject(replies.AUTH_THROTTLED) from None
    return user


# How long after a successful AUTH its check of the directory also answers the MAIL FROM
# that follows from memory (the client's next command, as a rule). Every later MAIL FROM of
# the session, and one that comes later than this, checks the directory again.
AUTH_CHECK_HOLDS = 1.0


class SubmissionHandler(BaseHandler):
    authenticate = staticmethod(authenticate_login)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if session.authenticated:
            sender = None
            if server.loop.time() - session.authenticated_at < AUTH_CHECK_HOLDS:
                sender = remembered_sender(session.auth_data, address)
            session.authenticated_at = float("-inf")  # the AUTH's check counts once
            if sender is not None:
                ok, result = True, sender
            else:
                ok, result = await call_service(
                    authorize_sender, user=session.auth_data, envelope_from=address
                )
        elif self.config.trusts(peer_host(session.peer)):
            # A program on a trusted network, without AUTH: only as a domain with auth=off.
            ok, result = await call_service(authorize_sender, user=None, envelope_from=address)
            if not ok and result == replies.SENDER_NOT_ALLOWED:
                return replies.AUTH_REQUIRED
        else:
            return replies.AUTH_REQUIRED
        if not ok:
            return result
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.sender = result
        envelope.accepted = Recipients()
        envelope.local_rcpts = []
        return replies.SENDER_OK

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        try:
            address.encode("utf-8")
        except UnicodeEncodeError:
            return replies.BAD_RECIPIENT
        # Answered from the directory's memory when it can (refreshed at MAIL FROM).
        result = remembered_recipient(address)
        if result is None:
            ok, result = await call_service(check_submission_recipient, recipient=address)
            if not ok:
                return result
        envelope.accepted = envelope.accepted.add(result)
        if not isinstance(result, str):
            envelope.local_rcpts.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content
        try:
            check_data(raw, max_hops=self.config.max_hops, binary=mail_params(envelope).binarymime)
        except SMTPReject as exc:
            return exc.reply
        # Checking, signing and filing all run in the group commit's thread.
        raw = received_header(server=server, session=session, envelope=envelope) + raw
        submission = Submission.of(
            sender=envelope.sender,
            recipients=envelope.accepted,
            raw=raw,
            params=envelope_params(envelope, delivered_here=envelope.local_rcpts),
        )
        ok, result = await call_batched(self.committer, accept_submission, submission=submission)
        return replies.ACCEPTED if ok else result
