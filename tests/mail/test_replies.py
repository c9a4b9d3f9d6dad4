"""Replies are values, importable without the SMTP server."""

import pickle
import subprocess
import sys

from mail import replies
from mail.replies import Reply, SMTPReject
from tests.mail.management.test_runsmtp_command import ROOT


def test_replies_import_no_server():
    code = (
        "import sys, mail.replies; "
        "print(sorted(m for m in sys.modules if m.startswith(('aiosmtpd', 'mail.smtp', 'django'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_reply_values():
    assert str(replies.UNKNOWN_USER) == "550 5.1.1 Mailbox unavailable"
    assert Reply(550, "5.1.1", "Mailbox unavailable") == replies.UNKNOWN_USER
    assert (replies.MAILBOX_CHANGED.temporary, replies.UNKNOWN_USER.temporary) == (True, False)
    error = SMTPReject(replies.BAD_SENDER)
    assert (error.reply, str(error)) == (replies.BAD_SENDER, "553 5.1.7 Invalid sender address")
    # It crosses process boundaries (Celery) as the same value.
    assert pickle.loads(pickle.dumps(error)).reply == replies.BAD_SENDER
    # Every name in the module that is a reply is a value, never an exception instance.
    assert not [name for name, value in vars(replies).items() if isinstance(value, BaseException)]
