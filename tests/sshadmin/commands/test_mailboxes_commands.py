import pytest

from mail.models import MailDomain
from sshadmin.commands import CommandError
from tests.sshadmin.commands.console import run

pytestmark = pytest.mark.django_db


def test_mailboxes_create_list_delete():
    MailDomain.objects.create(name="example.com")
    assert run("/mail mailboxes list") == "no mailboxes"
    assert run("/mail mailboxes create bob@example.com") == "mailbox bob@example.com created"
    assert run("/mail mailboxes create bob@example.com") == "mailbox bob@example.com already exists"
    assert run("/mail mailboxes list") == "MAILBOX          MESSAGES\nbob@example.com  0"
    assert run("/mail mailboxes list example.com") == "MAILBOX          MESSAGES\nbob@example.com  0"
    assert run("/mail mailboxes delete bob@example.com") == "mailbox bob@example.com deleted"
    with pytest.raises(CommandError) as exc:
        run("/mail mailboxes delete bob@example.com")
    assert str(exc.value) == "no mailbox bob@example.com"
    with pytest.raises(CommandError) as exc:
        run("/mail mailboxes create bob@example.net")
    assert str(exc.value) == "example.net is not a local mail domain"
