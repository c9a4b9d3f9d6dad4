"""Mailboxes, folders and messages in the Django admin: browsable, messages read-only."""

import pytest

from accounts.models import User
from mail.models import Folder, Mailbox, MailDomain
from mail.services.delivery import deliver_inbound
from mail.services.mailboxes import ensure_mailbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("root", password="x"))
    return client


def test_mailbox_added_in_the_admin_gets_its_folders(admin_client):
    MailDomain.objects.create(name="example.com")
    response = admin_client.post("/mail/mailbox/add/", {"address": "Alice@EXAMPLE.com", **FOLDERS_EMPTY})
    assert response.status_code == 302, response.content.decode()
    mailbox = Mailbox.objects.get()
    assert mailbox.address == "alice@example.com"
    assert sorted(mailbox.folders.values_list("name", flat=True)) == ["inbox", "sent"]


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("alice@example.net", "example.net is not a local mail domain"),
        ("no-at-sign", "no-at-sign"),
        ("alice@example.com", "mailbox alice@example.com exists"),
    ],
)
def test_mailbox_form_refuses_bad_addresses(admin_client, address, error):
    ensure_mailbox(domain=MailDomain.objects.create(name="example.com"), local_part="alice")
    response = admin_client.post("/mail/mailbox/add/", {"address": address, **FOLDERS_EMPTY})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert Mailbox.objects.count() == 1


# The management form of the folders inline, as the add page sends it.
FOLDERS_EMPTY = {"folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0"}


def test_mailboxes_and_folders_link_to_their_messages(admin_client):
    mailbox = ensure_mailbox(domain=MailDomain.objects.create(name="example.com"), local_part="bob")
    other = ensure_mailbox(domain=mailbox.domain, local_part="carol")
    for subject in ("one", "two"):
        deliver_inbound(
            raw=f"Subject: {subject}\r\n\r\nbody\r\n".encode(),
            envelope_from="dave@example.net",
            mailbox_ids=[mailbox.id],
        )
    deliver_inbound(raw=b"Subject: three\r\n\r\nx\r\n", envelope_from="", mailbox_ids=[other.id])
    listing = admin_client.get("/mail/mailbox/?q=bob").content.decode()
    assert f'<a href="/mail/message/?folder__mailbox__id__exact={mailbox.pk}">2</a>' in listing
    assert "carol@example.com" not in listing
    inbox = Folder.objects.get(mailbox=mailbox, name="inbox")
    page = admin_client.get(f"/mail/mailbox/{mailbox.pk}/change/").content.decode()
    assert f'<a href="/mail/message/?folder__id__exact={inbox.pk}">2</a>' in page
    messages = admin_client.get(f"/mail/message/?folder__id__exact={inbox.pk}")
    assert messages.status_code == 200
    body = messages.content.decode()
    assert "one" in body and "two" in body and "three" not in body
    folder_page = admin_client.get(f"/mail/folder/{inbox.pk}/change/")
    assert folder_page.status_code == 200
    assert 'name="name"' not in folder_page.content.decode()


def test_messages_are_read_only_with_escaped_headers(admin_client):
    mailbox = ensure_mailbox(domain=MailDomain.objects.create(name="example.com"), local_part="bob")
    (message,) = deliver_inbound(
        raw=b"From: <script>alert(1)</script> <carol@example.net>\r\nSubject: hi\r\n\r\nsecret body\r\n",
        envelope_from="carol@example.net",
        mailbox_ids=[mailbox.id],
    )
    page = admin_client.get(f"/mail/message/{message.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "<script>alert(1)</script>" not in body
    headers = body.split('<div class="readonly"><pre>')[1].split("</pre>")[0]
    assert headers == "From: &lt;script&gt;alert(1)&lt;/script&gt; &lt;carol@example.net&gt;\nSubject: hi"
    assert "secret body" in body
    assert 'name="_save"' not in body and 'name="seen"' not in body
    response = admin_client.post(f"/mail/message/{message.pk}/change/", {"seen": "on"})
    assert response.status_code == 403
    assert admin_client.post(f"/mail/message/{message.pk}/delete/", {"post": "yes"}).status_code == 403
    message.refresh_from_db()
    assert not message.seen


def test_quota_is_set_on_the_mailbox_page_and_flags_show_on_messages(admin_client):
    mailbox = ensure_mailbox(domain=MailDomain.objects.create(name="example.com"), local_part="bob")
    (message,) = deliver_inbound(
        raw=b"Subject: one\r\n\r\nbody\r\n", envelope_from="", mailbox_ids=[mailbox.id]
    )
    folders = list(mailbox.folders.order_by("name"))
    form = {
        "quota": "1048576",
        "folders-TOTAL_FORMS": str(len(folders)),
        "folders-INITIAL_FORMS": str(len(folders)),
        **{f"folders-{i}-id": str(folder.pk) for i, folder in enumerate(folders)},
        **{f"folders-{i}-mailbox": str(mailbox.pk) for i, folder in enumerate(folders)},
    }
    response = admin_client.post(f"/mail/mailbox/{mailbox.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()
    mailbox.refresh_from_db()
    assert mailbox.quota == 1048576
    page = admin_client.get(f"/mail/mailbox/{mailbox.pk}/change/").content.decode()
    assert f"{message.size} bytes" in page
    type(message).objects.filter(pk=message.pk).update(seen=True, keywords="$Work")
    page = admin_client.get(f"/mail/message/{message.pk}/change/").content.decode()
    assert "\\Seen $Work" in page
