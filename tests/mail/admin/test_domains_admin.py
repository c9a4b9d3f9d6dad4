"""Django admin for mail domains: public DKIM records shown, private keys never."""

import pytest
from django.utils import timezone

from dns_zones.models import Record
from dns_zones.services import zone_create
from mail.dkim.keys import txt_value
from mail.models import MailDomain
from mail.services.dkim_rotation import rotation_start
from mail.services.domains import domain_create

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(site_admin_client):
    return site_admin_client


def test_change_page_shows_public_records_never_private_keys(admin_client):
    zone_create(origin="example.com")
    domain = domain_create(name="example.com").domain
    page = admin_client.get(f"/mail/maildomain/{domain.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "PRIVATE KEY" not in body
    assert domain.dkim_rsa_private_key_pem.splitlines()[1] not in body
    assert 'name="dkim_private_key_pem"' not in body and 'name="dkim_rsa_private_key_pem"' not in body
    rsa = txt_value(domain.dkim_rsa_private_key_pem)
    assert (
        f"default-rsa._domainkey.example.com. 3600 IN TXT &quot;{rsa[:255]}&quot; &quot;{rsa[255:]}" in body
    )
    assert "Ed25519, RSA (private keys are not shown)" in body
    listing = admin_client.get("/mail/maildomain/")
    assert listing.status_code == 200 and "mail.example.com" in listing.content.decode()


def test_admin_changes_go_through_the_services(admin_client, tmp_path):
    zone_create(origin="example.com")
    domain = domain_create(name="example.com").domain
    keys = (domain.dkim_private_key_pem, domain.dkim_rsa_private_key_pem)
    form = {
        "enabled": "on",
        "submission_enabled": "on",
        "submission_auth": "none",
        "outbound_hostname": "smtp.example.com",
        # dkim_enabled left unticked: signing off, records withdrawn.
    }
    response = admin_client.post(f"/mail/maildomain/{domain.pk}/change/", form)
    assert response.status_code == 302
    domain.refresh_from_db()
    assert (
        domain.submission_enabled,
        domain.submission_auth,
        domain.outbound_hostname,
        domain.dkim_enabled,
    ) == (
        True,
        "none",
        "smtp.example.com",
        False,
    )
    assert (domain.dkim_private_key_pem, domain.dkim_rsa_private_key_pem) == keys
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 0
    text = (tmp_path / "everlock-mail/domains/example.com.toml").read_text()
    assert 'hostname = "smtp.example.com"' in text and 'auth = "none"' in text

    response = admin_client.post(f"/mail/maildomain/{domain.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert MailDomain.objects.count() == 0
    assert not (tmp_path / "everlock-mail/domains/example.com.toml").exists()


def test_admin_add_creates_like_the_console(admin_client):
    zone_create(origin="example.net")
    form = {
        "name": "example.net",
        "enabled": "on",
        "submission_auth": "authenticated",
        "outbound_hostname": "",
    }
    response = admin_client.post("/mail/maildomain/add/", form)
    assert response.status_code == 302
    domain = MailDomain.objects.get()
    assert (domain.name, domain.dkim_enabled, domain.outbound_hostname) == (
        "example.net",
        True,
        "mail.example.net",
    )
    assert Record.objects.filter(source="mail.dkim:example.net").count() == 2


@pytest.mark.parametrize(
    ("name", "hostname", "error"),
    [
        ("exa mple.com", "", "invalid domain name"),
        ("EXAMPLE.com", "", "mail domain example.com exists"),
        ("example.org", "bad host!", "hostname"),
    ],
)
def test_admin_add_refuses_bad_input_with_a_form_error(admin_client, name, hostname, error):
    domain_create(name="example.com")
    form = {"name": name, "enabled": "on", "submission_auth": "authenticated", "outbound_hostname": hostname}
    response = admin_client.post("/mail/maildomain/add/", form)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert list(MailDomain.objects.values_list("name", flat=True)) == ["example.com"]


def test_private_keys_stay_out_of_lists_history_and_deletion(admin_client):
    zone_create(origin="example.com")
    domain = domain_create(name="example.com").domain
    form = {
        "enabled": "on",
        "submission_enabled": "on",
        "submission_auth": "authenticated",
        "outbound_hostname": "mail.example.com",
        "dkim_enabled": "on",
    }
    assert admin_client.post(f"/mail/maildomain/{domain.pk}/change/", form).status_code == 302
    key_lines = {
        line
        for pem in (domain.dkim_private_key_pem, domain.dkim_rsa_private_key_pem)
        for line in pem.splitlines()[1:-1]
    }
    for url in (
        "/mail/maildomain/",
        f"/mail/maildomain/{domain.pk}/history/",
        f"/mail/maildomain/{domain.pk}/delete/",
        "/",
    ):
        body = admin_client.get(url).content.decode()
        assert "PRIVATE KEY" not in body, url
        assert not any(line in body for line in key_lines), url
    history = admin_client.get(f"/mail/maildomain/{domain.pk}/history/").content.decode()
    assert "Changed Submission enabled." in history


def test_change_page_lists_the_dns_records_and_sets_the_dns_policies(admin_client):
    zone_create(origin="example.com")
    domain = domain_create(name="example.com").domain
    body = admin_client.get(f"/mail/maildomain/{domain.pk}/change/").content.decode()
    assert "DNS records to publish" in body
    assert '<code style="word-break: break-all">example.com. 3600 IN MX 10 mail.example.com.</code>' in body
    assert (
        "_dmarc.example.com. 3600 IN TXT &quot;v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"
        in body
    )
    form = {
        "enabled": "on",
        "submission_auth": "authenticated",
        "outbound_hostname": "mail.example.com",
        "dkim_enabled": "on",
        "dmarc_policy": "reject",
        "mta_sts_mode": "enforce",
        "report_address": "Reports@Example.com",
    }
    assert admin_client.post(f"/mail/maildomain/{domain.pk}/change/", form).status_code == 302
    domain.refresh_from_db()
    assert (domain.dmarc_policy, domain.mta_sts_mode, domain.report_address) == (
        "reject",
        "enforce",
        "Reports@example.com",
    )
    assert Record.objects.get(name="_dmarc.example.com").data == (
        '"v=DMARC1; p=reject; rua=mailto:Reports@example.com"'
    )
    form["report_address"] = "not an address"
    response = admin_client.post(f"/mail/maildomain/{domain.pk}/change/", form)
    assert response.status_code == 200 and "invalid" in response.content.decode()


def test_tls_pages_list_what_the_workers_recorded(admin_client):
    for url in ("/mail/mtastspolicy/", "/mail/tlsresult/"):
        assert admin_client.get(url).status_code == 200, url
    assert admin_client.get("/mail/tlsresult/add/").status_code == 403


def test_change_page_shows_a_dkim_key_rotation(admin_client):
    zone_create(origin="example.com")
    domain = domain_create(name="example.com").domain
    body = admin_client.get(f"/mail/maildomain/{domain.pk}/change/").content.decode()
    assert "DKIM key rotation" in body and "none in progress" in body
    started = timezone.now()
    rotation_start(name="example.com", now=started)
    day = started.strftime("%Y%m%d")
    body = admin_client.get(f"/mail/maildomain/{domain.pk}/change/").content.decode()
    assert f"publishing new keys {day}, {day}-rsa: not yet visible through the resolver" in body
    # The new keys' records are listed with the others; their private keys are not shown.
    assert f"{day}-rsa._domainkey.example.com. 3600 IN TXT" in body
    assert "PRIVATE KEY" not in body
