"""The Django admin of users and grants, used by the bootstrap admin."""

from __future__ import annotations

import asyncssh
import pytest

from accounts.authentication import authenticate
from accounts.models import AccessGrant, User
from accounts.services import ssh_keys, user_add
from mail.models import Folder, Mailbox, MailDomain

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user_add(name="admin", password="change-me", is_admin=True)
    assert client.login(username="admin", password="change-me")
    return client


def test_bootstrap_admin_logs_in_through_the_login_form(client):
    user_add(name="admin", password="change-me", is_admin=True)
    response = client.post("/login/", {"username": "admin", "password": "change-me", "next": "/"})
    assert (response.status_code, response["Location"]) == (302, "/")
    assert client.get("/").status_code == 200


def test_user_change_page_has_grants_inline_and_keys(admin_client):
    alice, _ = user_add(name="alice", password="pw")
    AccessGrant.objects.create(user=alice, resource="smtp/mail/example.com:alice", role="writer")
    page = admin_client.get(f"/accounts/user/{alice.pk}/change/").content.decode()
    assert "smtp/mail/example.com:alice" in page
    assert 'name="grants-TOTAL_FORMS"' in page
    assert 'name="ssh_authorized_keys"' in page
    assert admin_client.get("/accounts/user/").status_code == 200
    assert admin_client.get("/accounts/accessgrant/").status_code == 200


def test_grant_form_stores_the_normal_form_and_refuses_bad_input(admin_client):
    MailDomain.objects.create(name="example.com")
    alice, _ = user_add(name="alice", password="pw")
    response = admin_client.post(
        "/accounts/accessgrant/add/",
        {"user": alice.pk, "scope": "example.com", "mailbox": "Alice", "role": "reader"},
    )
    assert response.status_code == 302
    assert list(AccessGrant.objects.values_list("resource", "role")) == [
        ("smtp/mail/example.com:alice", "reader")
    ]
    bad = admin_client.post(
        "/accounts/accessgrant/add/",
        {"user": alice.pk, "scope": "example.com", "mailbox": "al ice", "role": "reader"},
    )
    assert bad.status_code == 200
    assert "malformed resource" in bad.content.decode()
    assert AccessGrant.objects.count() == 1
    assert User.objects.count() == 2


@pytest.mark.parametrize(
    ("scope", "mailbox", "error"),
    [
        ("example.net", "", "no mail domain example.net (create it under Mail domains first)"),
        ("example.net", "bob", "no mail domain example.net (create it under Mail domains first)"),
        ("admin", "bob", "a mailbox belongs to a mail domain: pick the domain"),
        ("", "", "This field is required."),
    ],
)
def test_grant_form_refuses_unknown_domains_and_stray_mailboxes(admin_client, scope, mailbox, error):
    MailDomain.objects.create(name="example.com")
    alice, _ = user_add(name="alice", password="pw")
    response = admin_client.post(
        "/accounts/accessgrant/add/", {"user": alice.pk, "scope": scope, "mailbox": mailbox, "role": "writer"}
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not AccessGrant.objects.exists()


@pytest.mark.parametrize(
    ("scope", "resource"), [("admin", "admin"), ("smtp", "smtp"), ("example.com", "smtp/mail/example.com")]
)
def test_grant_picker_offers_the_installation_all_mail_and_each_domain(admin_client, scope, resource):
    MailDomain.objects.create(name="example.com")
    alice, _ = user_add(name="alice", password="pw")
    page = admin_client.get("/accounts/accessgrant/add/").content.decode()
    assert f'<option value="{scope}">' in page
    assert "writer: reader, and send as their addresses (submission)" in page  # the roles explained
    response = admin_client.post(
        "/accounts/accessgrant/add/", {"user": alice.pk, "scope": scope, "mailbox": "", "role": "admin"}
    )
    assert response.status_code == 302
    assert list(AccessGrant.objects.values_list("resource", flat=True)) == [resource]
    grant = AccessGrant.objects.get()
    page = admin_client.get(f"/accounts/accessgrant/{grant.pk}/change/").content.decode()
    assert f'<option value="{scope}" selected>' in page


def test_user_page_shows_what_everlock_uses(admin_client):
    alice, _ = user_add(name="alice", password="pw")
    page = admin_client.get(f"/accounts/user/{alice.pk}/change/").content.decode()
    for shown in ('name="username"', 'name="is_active"', 'name="admin"', 'name="ssh_authorized_keys"',
                  'name="grants-TOTAL_FORMS"', "Reset password"):  # fmt: skip
        assert shown in page, shown
    for hidden in ('name="groups"', 'name="user_permissions"', 'name="is_staff"', 'name="first_name"',
                   'name="last_name"', 'name="email"', 'name="is_superuser"'):  # fmt: skip
        assert hidden not in page, hidden
    response = admin_client.post(
        f"/accounts/user/{alice.pk}/change/", {**change_form(alice), **grants_inline(), "admin": "on"}
    )
    assert response.status_code == 302, response.content.decode()
    alice.refresh_from_db()
    assert (alice.is_staff, alice.is_superuser) == (True, True)
    response = admin_client.post(
        f"/accounts/user/{alice.pk}/change/", {**change_form(alice), **grants_inline()}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert (alice.is_staff, alice.is_superuser) == (False, False)


# The management form of the (empty) grants inline, as the add page sends it.
INLINE_EMPTY = {"grants-TOTAL_FORMS": "0", "grants-INITIAL_FORMS": "0"}


def test_user_added_in_the_admin_gets_the_stored_login_form(admin_client):
    response = admin_client.post(
        "/accounts/user/add/",
        {
            "username": "Alice@BÜCHER.example",
            "password1": "a long enough password",
            "password2": "a long enough password",
            "usable_password": "true",
            **INLINE_EMPTY,
        },
    )
    assert response.status_code == 302, response.content.decode()
    alice = User.objects.get(username="alice@xn--bcher-kva.example")
    assert alice.check_password("a long enough password")
    again = admin_client.post(
        "/accounts/user/add/",
        {
            "username": "ALICE@xn--bcher-kva.example",
            "password1": "another password",
            "password2": "another password",
            "usable_password": "true",
            **INLINE_EMPTY,
        },
    )
    assert again.status_code == 200
    assert "user alice@xn--bcher-kva.example already exists" in again.content.decode()
    assert User.objects.count() == 2


def grants_inline(*rows, initial: int = 0) -> dict:
    """The grants inline of the user change page, as the browser posts it."""
    data = {"grants-TOTAL_FORMS": str(len(rows)), "grants-INITIAL_FORMS": str(initial)}
    for i, row in enumerate(rows):
        data.update({f"grants-{i}-{key}": value for key, value in row.items()})
    return data


def change_form(user: User) -> dict:
    return {
        "username": user.username,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "ssh_authorized_keys": "",
    }


def test_grants_given_in_the_admin_create_the_mailbox_like_the_console(admin_client):
    MailDomain.objects.create(name="example.com")
    alice, _ = user_add(name="alice", password="pw")
    response = admin_client.post(
        f"/accounts/user/{alice.pk}/change/",
        {
            **change_form(alice),
            **grants_inline(
                {"scope": "example.com", "mailbox": "alice", "role": "writer", "user": alice.pk},
            ),
        },
    )
    assert response.status_code == 302, response.content.decode()
    assert list(alice.grants.values_list("resource", "role")) == [("smtp/mail/example.com:alice", "writer")]
    assert sorted(Folder.objects.filter(mailbox__local_part="alice").values_list("name", flat=True)) == [
        "inbox",
        "sent",
    ]
    listing = admin_client.get("/accounts/user/").content.decode()
    assert "smtp/mail/example.com:alice writer" in listing

    grant = alice.grants.get()
    response = admin_client.post(
        f"/accounts/user/{alice.pk}/change/",
        {
            **change_form(alice),
            **grants_inline(
                {
                    "id": grant.pk,
                    "scope": "example.com",
                    "mailbox": "alice",
                    "role": "writer",
                    "user": alice.pk,
                    "DELETE": "on",
                },
                initial=1,
            ),
        },
    )
    assert response.status_code == 302, response.content.decode()
    assert not alice.grants.exists()


def test_grant_admin_changes_and_revokes_through_the_service(admin_client):
    MailDomain.objects.create(name="example.com")
    alice, _ = user_add(name="alice", password="pw")
    response = admin_client.post(
        "/accounts/accessgrant/add/",
        {"user": alice.pk, "scope": "example.com", "mailbox": "alice", "role": "reader"},
    )
    assert response.status_code == 302
    assert [m.address for m in Mailbox.objects.all()] == ["alice@example.com"]
    grant = AccessGrant.objects.get()
    response = admin_client.post(
        f"/accounts/accessgrant/{grant.pk}/change/",
        {"user": alice.pk, "scope": "example.com", "mailbox": "bob", "role": "writer"},
    )
    assert response.status_code == 302
    assert list(AccessGrant.objects.values_list("resource", "role")) == [
        ("smtp/mail/example.com:bob", "writer")
    ]
    assert sorted(m.address for m in Mailbox.objects.all()) == ["alice@example.com", "bob@example.com"]
    grant = AccessGrant.objects.get()
    response = admin_client.post(f"/accounts/accessgrant/{grant.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not AccessGrant.objects.exists()


def test_user_added_in_the_admin_needs_a_password_and_logs_in(admin_client):
    form = {"username": "bob", "password1": "", "password2": "", **INLINE_EMPTY}
    refused = admin_client.post("/accounts/user/add/", form)
    assert refused.status_code == 200
    assert "This field is required." in refused.content.decode()
    assert not User.objects.filter(username="bob").exists()
    form.update(password1="bob's password", password2="bob's password")
    response = admin_client.post("/accounts/user/add/", form)
    assert response.status_code == 302
    bob = User.objects.get(username="bob")
    assert not (bob.is_staff or bob.is_superuser)
    assert authenticate("bob", "bob's password", client_address="127.0.0.1", service="smtp") == bob


def test_user_deleted_in_the_admin_loses_its_grants(admin_client):
    alice, _ = user_add(name="alice", password="pw")
    AccessGrant.objects.create(user=alice, resource="smtp/mail/example.com:alice", role="writer")
    response = admin_client.post(f"/accounts/user/{alice.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(username="alice").exists()
    assert not AccessGrant.objects.exists()


def test_authorized_keys_are_checked_line_by_line(admin_client):
    alice, _ = user_add(name="alice", password="pw")
    good = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    page = f"/accounts/user/{alice.pk}/change/"
    response = admin_client.post(
        page,
        {**change_form(alice), **grants_inline(), "ssh_authorized_keys": f"# laptop\n{good}ssh-rsa AAAA\n"},
    )
    assert response.status_code == 200
    assert "line 3: not a valid ssh-rsa public key" in response.content.decode()
    alice.refresh_from_db()
    assert alice.ssh_authorized_keys == ""
    response = admin_client.post(
        page, {**change_form(alice), **grants_inline(), "ssh_authorized_keys": f"# laptop\n{good}"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert [k.fingerprint for k in ssh_keys(name="alice")] == [
        asyncssh.import_public_key(good).get_fingerprint()
    ]
