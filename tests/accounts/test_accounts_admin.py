"""The Django admin of users and grants, used by the bootstrap admin."""

from __future__ import annotations

import pytest

from accounts.models import AccessGrant, User
from accounts.services import user_add

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
    alice, _ = user_add(name="alice", password="pw")
    response = admin_client.post(
        "/accounts/accessgrant/add/",
        {"user": alice.pk, "resource": "smtp/mail/EXAMPLE.com:Alice", "role": "reader"},
    )
    assert response.status_code == 302
    assert list(AccessGrant.objects.values_list("resource", "role")) == [
        ("smtp/mail/example.com:alice", "reader")
    ]
    bad = admin_client.post(
        "/accounts/accessgrant/add/",
        {"user": alice.pk, "resource": "smtp/mail/exa_mple.com", "role": "reader"},
    )
    assert bad.status_code == 200
    assert "malformed resource" in bad.content.decode()
    assert AccessGrant.objects.count() == 1
    assert User.objects.count() == 2


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
