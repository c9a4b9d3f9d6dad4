"""The admin web UI's site: the dashboard front page, what is a top-level entry, the wording,
read-only pages without Save, and the rules editor's test and language pages."""

from __future__ import annotations

import html
import re

import pytest
from django.utils import timezone

from dns_zones.services import record_add, zone_create
from mail.delivery.queue import queue_hold
from mail.models import OutboundDelivery, OutboundRecipient
from mail.services.domains import domain_create, domain_set
from mail.services.mailboxes import mailbox_create
from mail.services.rules import set_rules
from tests.mail.delivery.delivery_world import queue_message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(site_admin_client):
    return site_admin_client


def text(page: str) -> str:
    """The visible text of a page, whitespace collapsed."""
    return re.sub(r" ([,:)])", r"\1", re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_dashboard_shows_the_queue_and_the_last_day(admin_client):
    domain_create(name="example.com")
    mailbox_create(address="alice@example.com")
    [old] = queue_message(["bob@example.net"])
    OutboundDelivery.objects.filter(id=old.id).update(
        last_reply="451 4.4.1 mx.example.net: connection refused"
    )
    [held] = queue_message(["carol@example.org"])
    queue_hold(id=held.id)
    [done] = queue_message(["dave@example.net", "erin@example.net", "frank@example.net"])
    OutboundDelivery.objects.filter(id=done.id).update(status="failed", updated_at=timezone.now())
    OutboundRecipient.objects.filter(
        delivery=done, address__in=["dave@example.net", "erin@example.net"]
    ).update(status="delivered")
    OutboundRecipient.objects.filter(delivery=done, address="frank@example.net").update(status="failed")

    page = admin_client.get("/").content.decode()
    shown = text(page)
    assert "Waiting 2 (1 held)" in shown
    assert f"Oldest entry #{old.id} to example.net, queued" in shown
    assert "451 4.4.1 mx.example.net: connection refused" in shown
    assert f'href="/mail/outbounddelivery/{old.id}/change/"' in page
    assert "Delivered (last 24 hours) 2 recipients" in shown
    assert "Bounced (last 24 hours) 1 recipient " in shown


def test_dashboard_shows_each_domains_dns(admin_client):
    zone_create(origin="example.com")
    record_add(origin="example.com", name="@", rtype="TXT", ttl=3600, data='"v=spf1 a mx -all"')
    domain_create(name="example.com")  # DKIM on, its records published in the hosted zone
    domain_create(name="example.org")  # hosted elsewhere
    domain_set(name="example.org", dkim_enabled=True)

    page = admin_client.get("/").content.decode()
    hosted = text(re.search(r'<table class="domain-dns" id="dns-example.com">.*?</table>', page, re.S)[0])
    assert "example.com: 1 record missing" in hosted
    # The mail host's address is the administrator's to publish.
    assert "A/AAAA mail.example.com the mail host resolves missing in zone example.com" in hosted
    for served in (
        "MX example.com mail for the domain is delivered here served by zone example.com",
        # The administrator's own SPF record stands in for the derived one.
        "TXT example.com SPF: only the MX hosts send for the domain served by zone example.com",
        "TXT _dmarc.example.com DMARC policy and where aggregate reports go served by zone example.com",
        "TXT _mta-sts.example.com MTA-STS policy id served by zone example.com",
        "CNAME mta-sts.example.com MTA-STS policy host served by zone example.com",
        "SRV _imaps._tcp.example.com mail clients find imaps (RFC 6186) served by zone example.com",
        "CNAME autoconfig.example.com mail client autoconfiguration served by zone example.com",
        "TXT default._domainkey.example.com DKIM public key served by zone example.com",
        "TXT default-rsa._domainkey.example.com DKIM public key served by zone example.com",
    ):
        assert served in hosted
    elsewhere = text(re.search(r'<table class="domain-dns" id="dns-example.org">.*?</table>', page, re.S)[0])
    assert "example.org: 13 records to publish with the DNS provider" in elsewhere
    assert "TXT default-rsa._domainkey.example.org DKIM public key not hosted here" in elsewhere


def test_index_lists_what_a_sysadmin_uses(admin_client):
    page = admin_client.get("/").content.decode()
    assert "View site" not in page
    assert ">Mailboxes<" in page and "Mailboxs" not in page
    for internal in ("/mail/messagecontent/", "/mail/redirectrecord/", "/mail/folder/"):
        assert f'href="{internal}"' not in page, internal
        assert admin_client.get(internal).status_code == 200  # still reachable from the pages linking them
    entries = ["/mail/maildomain/", "/mail/mailbox/", "/mail/message/", "/mail/outbounddelivery/"]
    entries += ["/mail/ruleset/", "/accounts/user/", "/accounts/accessgrant/", "/dns_zones/zone/"]
    for entry in entries:
        assert f'href="{entry}"' in page, entry


def test_messages_filter_says_folder(admin_client):
    page = text(admin_client.get("/mail/message/").content.decode())
    assert "By folder" in page and "By name" not in page


def test_read_only_pages_have_no_save_button(admin_client):
    domain_create(name="example.com")
    mailbox, _ = mailbox_create(address="alice@example.com")
    [row] = queue_message(["bob@example.net"])
    body = admin_client.get(f"/mail/outbounddelivery/{row.id}/change/").content.decode()
    assert 'name="_save"' not in body and 'name="_continue"' not in body
    # The queue's actions still apply from the list.
    response = admin_client.post(
        "/mail/outbounddelivery/", {"action": "hold", "_selected_action": [row.id], "index": "0"}
    )
    assert response.status_code == 302
    assert OutboundDelivery.objects.get(id=row.id).status == "held"
    # A mailbox page has its quota to edit: it keeps its Save button.
    assert 'name="_save"' in admin_client.get(f"/mail/mailbox/{mailbox.pk}/change/").content.decode()


def test_rules_editor_names_line_and_reason(admin_client):
    response = admin_client.post("/mail/ruleset/add/", {"text": '[[rule]]\nname = "x"\nfileinto "Junk"\n'})
    assert response.status_code == 200
    assert "rules.toml: Expected &#x27;=&#x27; after a key in a key/value pair (at line 3, column 10)" in (
        response.content.decode()
    )


def test_rules_test_page_runs_the_rules_in_force(admin_client):
    domain_create(name="example.com")
    mailbox_create(address="carol@example.com")
    set_rules(
        text='[[rule]]\nname = "reports"\nscope = "carol@example.com"\n'
        'match = { header = "Subject", contains = "report" }\nfileinto = "Reports"\n'
    )
    editor = admin_client.get("/mail/ruleset/").content.decode()
    assert 'href="/mail/ruleset/test/"' in editor and 'href="/mail/ruleset/language/"' in editor
    response = admin_client.post(
        "/mail/ruleset/test/",
        {
            "recipient": "carol@example.com",
            "message": "Subject: Monthly report\r\n\r\nNumbers.\r\n",
            "_test": "Test",
        },
    )
    assert response.status_code == 200
    result = re.search(
        r'<div class="module" id="rules-test-result">.*?<pre>(.*?)</pre>', response.content.decode(), re.S
    )
    assert html.unescape(result[1]) == "rule 'reports' matches\n  file into 'Reports'\nfiled into: Reports\n"
    refused = admin_client.post(
        "/mail/ruleset/test/", {"recipient": "not an address", "message": "Subject: x\r\n"}
    )
    assert "recipient:" in text(refused.content.decode())
    assert 'id="rules-test-result"' not in refused.content.decode()


def test_rules_language_page_shows_the_docs(admin_client):
    page = admin_client.get("/mail/ruleset/language/").content.decode()
    assert "# Mail rules (`rules.toml`)" in page
    assert "### `fileinto`" in page
