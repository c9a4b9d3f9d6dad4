"""Every page of the admin web UI in headless chromium at 1280x900, on an installation with
realistic data: a hosted zone with RSA DKIM records, mail domains, users with grants, rules
that file, redirect and answer, local and sent messages, and queue rows that failed to
deliver with a long reply.

On every page: nothing scrolls sideways (the page, or a table inside it), and a page with
nothing to edit has no Save button. The README's screenshots are taken here: to the test's
tmp dir, or to EVERLOCK_SCREENSHOT_DIR when set (`EVERLOCK_SCREENSHOT_DIR=docs/screenshots`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from django.contrib import admin
from playwright.sync_api import Page, expect, sync_playwright

from tests.e2e.installation import ADMIN_PASSWORD, Everlock, message_from_alice, submit
from tests.ports import free_port

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}

RULES = """\
[[rule]]
name = "reports"
scope = "carol@example.com"
match = { header = "Subject", contains = "report" }
fileinto = "Reports"

[[rule]]
name = "sales to the team"
scope = "sales@example.com"
redirect = ["dana@example.com"]

[[rule]]
name = "away"
scope = "erin@example.com"
vacation = { days = 7, subject = "Away until Monday", body = "I am away until Monday." }
"""

CONSOLE = [
    "/dns zones create example.com",
    "/dns records add example.com @ MX 10 mail.example.com.",
    '/dns records add example.com @ TXT "v=spf1 mx -all"',
    "/mail domains create example.com",
    "/mail domains set example.com submission=on auth=on",
    "/mail domains create lists.example.org",
    "/mail domains set lists.example.org hostname=outbound-relay-for-mailing-lists.lists.example.org dkim=on",
    "/users add alice change-me",
    "/users grant alice smtp/mail/example.com:alice writer",
    "/users add newsletter-sender@lists.example.org change-me",
    "/users grant newsletter-sender@lists.example.org smtp/mail/lists.example.org writer",
    "/users add bob change-me",
    "/users grant bob admin admin",
    "/mail mailboxes create carol@example.com",
    "/mail mailboxes create sales@example.com",
    "/mail mailboxes create dana@example.com",
    "/mail mailboxes create erin@example.com",
    "/mail rules import",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A running installation filled through the console and submission; its admin URL."""
    tmp = tmp_path_factory.mktemp("admin-pages")
    http, ssh, submission, dns_port = free_port(), free_port(), free_port(), free_port(udp=True)
    everlock = Everlock(
        tmp / "server",
        EVERLOCK_HOSTNAME="mail.example.com",
        # Outbound MX lookups ask our own DNS server, which knows no example.net: nothing
        # leaves loopback, and the queue rows get a real failure reply.
        EVERLOCK_RESOLVER=f"127.0.0.1:{dns_port}",
    )
    try:
        everlock.start(
            [
                "--frontend-http", "--frontend-http-listen", f"127.0.0.1:{http}",
                "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ssh}", "--backend-admin-ssh",
                "--frontend-smtp-submission", "--frontend-smtp-submission-listen", f"127.0.0.1:{submission}",
                "--backend-mail-smtp",
                "--frontend-dns-listen", f"127.0.0.1:{dns_port}",
                "--admin-user", "admin", "--admin-password", ADMIN_PASSWORD,
            ],
            ssh_port=ssh,
            ready=f"HTTP admin listener on 127.0.0.1:{http}",
        )  # fmt: skip
        rules = everlock.data_dir / "everlock-mail" / "rules.toml"
        rules.parent.mkdir(exist_ok=True)
        rules.write_text(RULES)
        for line in CONSOLE:
            everlock.console(line)
        for to, subject in [
            ("carol@example.com, bob@example.net", "Quarterly report for the board, with the long appendix"),
            ("sales@example.com", "A question about prices"),
            ("erin@example.com", "Lunch on Friday?"),
            ("someone.with.a.long.address@subsidiary.example.net", "Invoice 2026-0042"),
        ]:
            assert submit(submission, "alice", message_from_alice(subject, to)) == {}
        # The remote rows have their first attempt (a DNS failure) recorded.
        deadline = time.monotonic() + 60
        while "attempts=1" not in everlock.console("/mail queue list") and time.monotonic() < deadline:
            time.sleep(0.2)
        yield f"http://127.0.0.1:{http}"
    finally:
        everlock.close()


@pytest.fixture(scope="module")
def page(site):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(15_000)
            page.goto(site + "/")
            page.fill("#id_username", "admin")
            page.fill("#id_password", ADMIN_PASSWORD)
            page.locator('input[type="submit"]').click()
            expect(page.locator("#site-name")).to_have_text("Everlock administration")
            yield page
        finally:
            browser.close()


# Elements wider than their box that scroll sideways (the page itself, or a scrolling table).
SIDEWAYS = """() => {
    const out = [];
    if (document.documentElement.scrollWidth > window.innerWidth) {
        out.push(`page ${document.documentElement.scrollWidth}px`);
    }
    for (const el of document.querySelectorAll("*")) {
        const style = getComputedStyle(el);
        if (["auto", "scroll"].includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1) {
            out.push(`${el.tagName.toLowerCase()}.${el.className} ${el.scrollWidth}px > ${el.clientWidth}px`);
        }
    }
    return out;
}"""

# Form controls a person can change on a change page (not the hidden ones, not the list's
# action picker, not the search box).
EDITABLE = """() => [...document.querySelectorAll(
    "#content-main form input:not([type=hidden]):not([type=submit]):not([type=button]), "
    + "#content-main form select, #content-main form textarea")]
    .filter(el => !el.disabled && el.offsetParent !== null).length"""


def admin_pages(page: Page, site: str) -> list[str]:
    """Every admin page: the dashboard, and per registered model its list, its add page when
    adding is allowed, and the change page of its first row."""
    urls = [site + "/", site + "/mail/ruleset/test/", site + "/mail/ruleset/language/"]
    for model in admin.site._registry:
        listing = f"{site}/{model._meta.app_label}/{model._meta.model_name}/"
        urls.append(listing)
        page.goto(listing)
        add = page.locator(".object-tools a.addlink")
        if add.count():
            urls.append(add.first.get_attribute("href"))
        first = page.locator("#result_list tbody tr a").first
        if first.count():
            urls.append(first.get_attribute("href"))
    return [url if url.startswith("http") else site + url for url in urls]


def test_no_admin_page_scrolls_sideways_or_offers_save_without_fields(site, page):
    urls = admin_pages(page, site)
    assert len(urls) >= 30, urls
    wide, save_without_fields = {}, []
    for url in urls:
        response = page.goto(url)
        assert response.status == 200, url
        sideways = page.evaluate(SIDEWAYS)
        if sideways:
            wide[url] = sideways
        if page.locator('input[name="_save"]').count() and page.evaluate(EDITABLE) == 0:
            save_without_fields.append(url)
    assert wide == {}
    assert save_without_fields == []


def test_dashboard_and_screenshots(site, page, tmp_path):
    shots = Path(os.environ.get("EVERLOCK_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    page.goto(site + "/")
    expect(page.locator("#queue-module .queue-waiting")).to_have_text("2")
    # Everything derived is served; the mail host's address is the administrator's to add.
    expect(page.locator("#dns-example\\.com caption")).to_contain_text("1 record missing")
    expect(page.locator("#dns-example\\.com tr.dns-missing")).to_contain_text("A/AAAA mail.example.com")
    expect(page.locator("#dns-example\\.com")).to_contain_text("_mta-sts.example.com")
    expect(page.locator("#dns-lists\\.example\\.org caption")).to_contain_text(
        "13 records to publish with the DNS provider"
    )
    page.screenshot(path=shots / "admin-index.png", full_page=True)

    page.goto(site + "/mail/maildomain/")
    page.locator("#result_list").get_by_role("link", name="example.com", exact=True).click()
    expect(page.locator(".field-dkim_dns_records")).to_contain_text("default-rsa._domainkey.example.com.")
    page.screenshot(path=shots / "mail-domain.png", full_page=True)

    page.goto(site + "/accounts/user/")
    expect(page.locator("#result_list")).to_contain_text("smtp/mail/example.com:alice writer")
    page.screenshot(path=shots / "users.png")
    page.locator("#result_list").get_by_role("link", name="alice", exact=True).click()
    expect(page.locator("#id_grants-0-scope")).to_have_value("example.com")
    expect(page.locator("#id_grants-0-mailbox")).to_have_value("alice")
    page.screenshot(path=shots / "user.png", full_page=True)

    page.goto(site + "/mail/outbounddelivery/")
    expect(page.locator("#result_list thead")).to_contain_text("Next attempt")
    expect(page.locator("#result_list thead")).to_contain_text("Last reply")
    expect(page.locator("#result_list tbody tr").first.locator(".field-last_reply_summary")).to_contain_text(
        "4"
    )
    page.screenshot(path=shots / "outbound-queue.png")

    page.goto(site + "/mail/message/?folder__name=Reports")
    expect(page.locator("#changelist-filter")).to_contain_text("By folder")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.screenshot(path=shots / "messages.png")

    page.goto(site + "/mail/ruleset/test/")
    page.fill("#id_recipient", "carol@example.com")
    page.fill("#id_message", "Subject: Monthly report\n\nNumbers.\n")
    page.locator('input[name="_test"]').click()
    expect(page.locator("#rules-test-result pre")).to_have_text(
        "rule 'reports' matches\n  file into 'Reports'\nfiled into: Reports\n"
    )
    page.screenshot(path=shots / "rules-test.png")

    # The README shows each of them.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert set(re.findall(r"\(docs/screenshots/([\w-]+\.png)\)", readme)) == {
        p.name for p in shots.glob("*.png")
    }
