import pytest

from accounts.models import User
from mail.models import MailDomain
from mail.services.delivery import deliver_inbound
from mail.services.mailboxes import ensure_mailbox

pytestmark = pytest.mark.django_db


def test_admin_lists_and_shows_messages(client):
    domain = MailDomain.objects.create(name="example.com")
    mailbox = ensure_mailbox(domain=domain, local_part="bob")
    (message,) = deliver_inbound(
        raw=b"From: carol@example.net\r\nSubject: Admin view\r\n\r\n<b>body</b>\r\n",
        envelope_from="carol@example.net",
        mailbox_ids=[mailbox.id],
    )
    client.force_login(User.objects.create_superuser("root", password="x"))
    listing = client.get("/mail/message/")
    assert listing.status_code == 200
    assert b"Admin view" in listing.content and b"bob@example.com" in listing.content
    detail = client.get(f"/mail/message/{message.pk}/change/")
    assert detail.status_code == 200
    assert b"&lt;b&gt;body&lt;/b&gt;" in detail.content
