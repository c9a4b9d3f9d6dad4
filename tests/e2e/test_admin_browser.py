"""The admin web UI in a real browser: Debian's chromium, headless, driven by Playwright.

The bootstrap admin logs into `everlock serve --frontend-http`, hosts a zone, creates a mail
domain (DKIM set up as by /mail domains create) and a user with a grant on a mailbox; the
user then sends over submission with smtplib, and the admin finds the message in the sent
folder and the remote copy in the outbound queue, which it holds.

The README's screenshots are taken by test_admin_pages.py, on an installation with more data.
"""

from __future__ import annotations

import email.policy
import re
import smtplib
import ssl
import time
from email.message import EmailMessage

import dns.message
import dns.query
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.e2e.installation import ADMIN_PASSWORD, Everlock
from tests.ports import free_port

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture
def server(tmp_path):
    http, submission, dns_port = free_port(), free_port(), free_port(udp=True)
    everlock = Everlock(
        tmp_path / "server",
        EVERLOCK_LOG="info",
        EVERLOCK_HOSTNAME="mail.example.com",
        # Outbound MX lookups ask our own DNS server: nothing leaves loopback.
        EVERLOCK_RESOLVER=f"127.0.0.1:{dns_port}",
    )
    try:
        flags = [
            "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{http}",
            "--frontend-smtp-submission", "--frontend-smtp-submission-listen", f"127.0.0.1:{submission}",
            "--backend-mail-smtp",
            "--frontend-dns-listen", f"127.0.0.1:{dns_port}",
            "--admin-user", "admin", "--admin-password", ADMIN_PASSWORD,
        ]  # fmt: skip
        everlock.start(
            flags,
            ssh_port=0,
            ready=f"HTTP admin listener on 127.0.0.1:{http}",
        )
        everlock.ports = {"http": http, "submission": submission, "dns": dns_port}
        yield everlock
    finally:
        everlock.close()


@pytest.fixture
def page():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def save_form(page: Page) -> None:
    page.locator('input[name="_save"]').click()


def dkim_txt(dns_port: int, name: str) -> str:
    query = dns.message.make_query(name, "TXT")
    answer = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=5)
    return "".join(s.decode() for rrset in answer.answer for rdata in rrset for s in rdata.strings)


def test_admin_sets_up_a_domain_and_user_that_work_over_smtp(server, page):
    base = f"http://127.0.0.1:{server.ports['http']}"

    # The bootstrap admin logs in.
    page.goto(base + "/")
    expect(page).to_have_title("Log in | Everlock")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.locator('input[type="submit"]').click()
    expect(page.locator("#site-name")).to_have_text("Everlock administration")

    # Host the zone, then create the mail domain in it: DKIM is set up and published.
    page.goto(base + "/dns_zones/zone/add/")
    page.fill("#id_origin", "example.com")
    page.fill("#id_primary_ns", "ns1.example.com")
    page.fill("#id_hostmaster", "hostmaster.example.com")
    save_form(page)
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    page.goto(base + "/mail/maildomain/add/")
    page.fill("#id_name", "Example.COM")
    page.check("#id_submission_enabled")
    save_form(page)
    expect(page.locator(".messagelist")).to_contain_text(
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com"
    )
    page.locator("#result_list").get_by_role("link", name="example.com", exact=True).click()
    records = page.locator(".field-dkim_dns_records")
    expect(records).to_contain_text("default._domainkey.example.com. 3600 IN TXT")
    expect(records).to_contain_text("default-rsa._domainkey.example.com. 3600 IN TXT")
    expect(page.locator(".field-dkim_keys")).to_have_text(
        re.compile("Ed25519, RSA \\(private keys are not shown\\)")
    )
    assert "PRIVATE KEY" not in page.content()
    published = records.locator("code").first.inner_text()
    assert dkim_txt(server.ports["dns"], "default._domainkey.example.com") in published.replace('" "', "")

    # A user with a password and a grant on its mailbox, in one form.
    page.goto(base + "/accounts/user/add/")
    page.fill("#id_username", "alice")
    page.fill("#id_password1", "alice's password")
    page.fill("#id_password2", "alice's password")
    page.get_by_role("button", name="Add another Access grant").click()
    page.select_option("#id_grants-0-scope", "example.com")
    page.fill("#id_grants-0-mailbox", "alice")
    page.select_option("#id_grants-0-role", "writer")
    save_form(page)
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    page.goto(base + "/accounts/user/")
    expect(page.locator("#result_list")).to_contain_text("smtp/mail/example.com:alice writer")

    # The grant takes effect: alice sends as alice@example.com over submission.
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "alice@example.com, bob@example.net"
    message["Subject"] = "Hello from the admin test"
    message.set_content("Sent with the account the admin web UI made.\n")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.starttls(context=ssl._create_unverified_context())
        client.login("alice", "alice's password")
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt("alice@example.com")[0] == 250
        assert client.rcpt("bob@example.net")[0] == 250
        code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))
        assert (code, reply[:14]) == (250, b"2.0.0 Accepted")

    # The sent copy, DKIM-signed, in the admin's message list.
    page.goto(base + "/mail/message/?folder__name=sent")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("alice@example.com")
    expect(rows.first).to_contain_text("Hello from the admin test")
    rows.first.locator("th a").click()
    expect(page.locator(".field-headers")).to_contain_text("DKIM-Signature: v=1; a=ed25519-sha256;")
    expect(page.locator(".field-folder")).to_contain_text("alice@example.com/sent")

    # The copy for example.net waits in the outbound queue (no MX here); the admin holds it.
    queued = page.locator("#result_list tbody tr")
    deadline = time.monotonic() + 30
    while True:  # until the first attempt is recorded
        page.goto(base + "/mail/outbounddelivery/")
        expect(queued).to_have_count(1)
        if queued.first.locator(".field-attempts").inner_text() == "1" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    expect(queued.first.locator(".field-last_reply_summary")).to_contain_text("451 4.4.3")
    expect(queued.first).to_contain_text("bob@example.net")
    queued.first.locator('input[name="_selected_action"]').check()
    page.select_option('select[name="action"]', "hold")
    page.locator('button[name="index"]').click()
    expect(page.locator(".messagelist")).to_contain_text("1 queue entry held")
    expect(queued.first.locator(".field-status")).to_have_text("Held")
    page.goto(base + "/")
    expect(page.locator("#recent-actions-module")).to_contain_text("example.com")
    expect(page.locator("#queue-module .queue-waiting")).to_have_text("1 (1 held)")
