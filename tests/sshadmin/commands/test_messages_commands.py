import re

import pytest

from mail.models import MailDomain
from mail.services.delivery import deliver_inbound
from mail.services.mailboxes import mailbox_create
from sshadmin.commands import CommandError
from tests.sshadmin.commands.console import run

pytestmark = pytest.mark.django_db

RAW = (
    b"From: Bob <bob@example.net>\r\nTo: carol@example.com\r\nSubject: Lunch?\r\n"
    b"Message-Id: <m1@example.net>\r\n\r\nAt noon.\r\n"
)


def test_messages_list_and_show():
    MailDomain.objects.create(name="example.com")
    carol, _ = mailbox_create(address="carol@example.com")
    assert run("/mail messages list carol@example.com") == "no messages in carol@example.com"
    (message,) = deliver_inbound(raw=RAW, envelope_from="bob@example.net", mailbox_ids=[carol.id])

    listing = run("/mail messages list Carol@example.com")
    width = max(2, len(str(message.id)))
    assert listing == (
        f"{'ID'.ljust(width)}  FOLDER  FLAGS  FROM                   SUBJECT\n"
        f"{str(message.id).ljust(width)}  inbox   -      Bob <bob@example.net>  Lunch?"
    )
    assert run("/mail messages list carol@example.com inbox") == listing
    assert run("/mail messages list carol@example.com sent") == "no messages in carol@example.com sent"
    assert run(f"/mail messages show {message.id}") == RAW.decode()
    # Flags as a mail client leaves them.
    type(message).objects.filter(pk=message.pk).update(seen=True, flagged=True, keywords="$Work")
    assert run("/mail messages list carol@example.com").splitlines()[1] == (
        f"{str(message.id).ljust(width)}  inbox   \\Seen \\Flagged $Work  Bob <bob@example.net>  Lunch?"
    )


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/mail messages list dave@example.com", "no mailbox dave@example.com"),
        ("/mail messages show 999999", "no message 999999"),
        ("/mail messages show x", "message id must be a number, got 'x'"),
    ],
)
def test_messages_errors(line, error):
    MailDomain.objects.create(name="example.com")
    with pytest.raises(CommandError, match=re.escape(error)):
        run(line)
