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


def test_mailboxes_quota_set_and_show():
    MailDomain.objects.create(name="example.com")
    run("/mail mailboxes create bob@example.com")
    assert (
        run("/mail mailboxes set bob@example.com quota=1G")
        == "mailbox bob@example.com: quota 1073741824 bytes"
    )
    assert run("/mail mailboxes show bob@example.com") == (
        "mailbox bob@example.com\n"
        "size 0 bytes, quota 1073741824 bytes\n"
        "FOLDER  MESSAGES  UNSEEN\n"
        "inbox   0         0\n"
        "sent    0         0"
    )
    assert run("/mail mailboxes set bob@example.com quota=none") == "mailbox bob@example.com: no quota"
    for bad, message in [
        ("quota=lots", "invalid size 'lots' (bytes, or a number with K, M, G or T; none for no limit)"),
        ("size=1G", "unknown setting 'size=1G' (expected quota=SIZE)"),
    ]:
        with pytest.raises(CommandError) as exc:
            run(f"/mail mailboxes set bob@example.com {bad}")
        assert str(exc.value) == message
    with pytest.raises(CommandError) as exc:
        run("/mail mailboxes set carol@example.com quota=1M")
    assert str(exc.value) == "no mailbox carol@example.com"
