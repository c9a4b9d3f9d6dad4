"""What the submission listener remembers (who a login is, what a user may send as, which
mailbox an address is) gives way to every change: the next decision sees it."""

import smtplib

import pytest
from django.core.cache import cache

from accounts.services import grant_add, grant_revoke, user_delete, user_set_password
from mail.models import MailDomain
from mail.services.directory import STAMP_KEY
from mail.services.mailboxes import mailbox_delete

SENDER_REFUSED = (553, b"5.7.1 Sender address not allowed for this user")


def logged_in(smtp, password: str = "change-me") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", smtp.submission_port, timeout=10)
    try:
        client.ehlo("client.example.com")
        client.login("alice", password)
    except smtplib.SMTPException:
        client.quit()
        raise
    return client


def test_a_revoked_grant_refuses_the_next_mail_from(smtp, example_com):
    with logged_in(smtp) as client:
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        client.rset()
        assert grant_revoke(name="alice", resource="smtp/mail/example.com:alice")
        assert client.mail("alice@example.com") == SENDER_REFUSED


def test_the_check_at_auth_answers_only_the_mail_from_right_after_it(smtp, example_com, monkeypatch):
    with logged_in(smtp) as client:  # the directory remembers that alice may send as herself
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
    # The first MAIL FROM within AUTH_CHECK_HOLDS of the AUTH goes by the directory as the
    # AUTH found it; the next one asks again.
    with logged_in(smtp) as client:
        assert grant_revoke(name="alice", resource="smtp/mail/example.com:alice")
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
        client.rset()
        assert client.mail("alice@example.com") == SENDER_REFUSED
    grant_add(name="alice", resource="smtp/mail/example.com:alice", role="writer")
    with logged_in(smtp) as client:
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
    # A MAIL FROM later than that asks as well.
    monkeypatch.setattr("mail.smtp.submission.AUTH_CHECK_HOLDS", 0.0)
    with logged_in(smtp) as client:
        assert grant_revoke(name="alice", resource="smtp/mail/example.com:alice")
        assert client.mail("alice@example.com") == SENDER_REFUSED


def test_a_deleted_mailbox_is_unknown_at_the_next_rcpt(smtp, example_com):
    with logged_in(smtp) as client:
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("bob@example.com") == (250, b"2.1.5 Recipient OK")
        client.rset()
        assert mailbox_delete(address="bob@example.com")
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
        assert client.rcpt("bob@example.com") == (550, b"5.1.1 Mailbox unavailable")


def test_a_new_password_or_a_deleted_user_ends_the_old_login(smtp, example_com):
    logged_in(smtp).quit()
    user_set_password(name="alice", password="new-secret")
    with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        logged_in(smtp)
    assert exc.value.smtp_code == 535
    logged_in(smtp, "new-secret").quit()
    user_delete(name="alice")
    with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        logged_in(smtp, "new-secret")
    assert exc.value.smtp_code == 535


def test_a_change_announced_by_another_process_is_seen(smtp, example_com):
    with logged_in(smtp) as client:
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
        client.rset()
        # Another process changes the row and stores a new stamp in the shared cache; here
        # only the stamp tells this process, since no signal of its own fires.
        MailDomain.objects.filter(pk=example_com.pk).update(submission_enabled=False)
        assert client.mail("alice@example.com") == (250, b"2.1.0 Sender OK")
        client.rset()
        cache.set(STAMP_KEY, "another-process", None)
        assert client.mail("alice@example.com") == SENDER_REFUSED
