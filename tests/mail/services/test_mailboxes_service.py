import pytest

from accounts.services import grant_add, user_add
from mail.models import Folder, Mailbox, MailDomain
from mail.services.mailboxes import (
    MailboxError,
    ensure_mailboxes_for_domain,
    mailbox_create,
    mailbox_delete,
    mailbox_list,
)

pytestmark = pytest.mark.django_db


def test_grant_creates_the_mailbox_with_inbox_and_sent():
    domain = MailDomain.objects.create(name="example.com")
    user_add(name="alice", password="x")
    grant_add(name="alice", resource="smtp/mail/example.com:Alice", role="writer")
    mailbox = Mailbox.objects.get()
    assert (mailbox.domain, mailbox.local_part) == (domain, "alice")
    assert sorted(Folder.objects.values_list("name", flat=True)) == ["inbox", "sent"]


def test_domain_created_after_grants_gets_their_mailboxes():
    user_add(name="alice", password="x")
    grant_add(name="alice", resource="smtp/mail/example.com:alice", role="writer")
    grant_add(name="alice", resource="smtp/mail/example.com", role="writer")
    assert not Mailbox.objects.exists()
    domain = MailDomain.objects.create(name="example.com")
    assert [m.address for m in ensure_mailboxes_for_domain(domain=domain)] == ["alice@example.com"]
    assert ensure_mailboxes_for_domain(domain=domain)[0].pk == Mailbox.objects.get().pk


def test_create_list_delete():
    MailDomain.objects.create(name="example.com")
    mailbox, created = mailbox_create(address="Bob@Example.com")
    assert (mailbox.address, created) == ("bob@example.com", True)
    assert mailbox_create(address="bob@example.com")[1] is False
    assert [m.address for m in mailbox_list()] == ["bob@example.com"]
    assert mailbox_list(domain="example.net") == []
    assert mailbox_delete(address="bob@example.com") is True
    assert mailbox_delete(address="bob@example.com") is False
    assert not Folder.objects.exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [("bob@example.net", "example.net is not a local mail domain"), ("bob", "invalid address 'bob'")],
)
def test_create_refuses(address, message):
    MailDomain.objects.create(name="example.com")
    with pytest.raises(MailboxError) as exc:
        mailbox_create(address=address)
    assert str(exc.value) == message


def test_list_takes_the_domain_in_any_case_or_idna_form():
    MailDomain.objects.create(name="xn--bcher-kva.example")
    mailbox_create(address="bob@bücher.example")
    assert [m.address for m in mailbox_list(domain="BÜCHER.example.")] == ["bob@xn--bcher-kva.example"]
    with pytest.raises(MailboxError) as exc:
        mailbox_list(domain="bad..name")
    assert str(exc.value).startswith("invalid domain name 'bad..name': ")
