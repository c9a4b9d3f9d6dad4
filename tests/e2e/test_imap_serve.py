"""`everlock serve` with IMAP: mail sent to port 25 read with curl over both IMAP listeners,
and pushed to a client in IDLE by the other processes (SMTP filing, console)."""

from __future__ import annotations

import smtplib
import subprocess
import time

import pytest
from imapclient import IMAPClient

from tests.e2e.installation import ADMIN_PASSWORD, Everlock
from tests.ports import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    ports = {name: free_port("127.0.0.1") for name in ("ssh", "smtp", "imap", "imaps")}
    everlock = Everlock(tmp_path_factory.mktemp("imap-site"), EVERLOCK_LOG="mail.imap=info")
    try:
        everlock.start(
            [
                "--frontend-ssh",
                "--frontend-ssh-listen",
                f"127.0.0.1:{ports['ssh']}",
                "--backend-admin-ssh",
                "--frontend-smtp",
                "--frontend-smtp-listen",
                f"127.0.0.1:{ports['smtp']}",
                "--backend-mail-smtp",
                "--frontend-imap-listen",
                f"127.0.0.1:{ports['imap']}",
                "--frontend-imaps-listen",
                f"127.0.0.1:{ports['imaps']}",
                "--admin-user",
                "admin",
                "--admin-password",
                ADMIN_PASSWORD,
            ],
            ssh_port=ports["ssh"],
            ready=f"IMAP listener (implicit TLS) on 127.0.0.1:{ports['imaps']}",
        )
        for line in (
            "/mail domains create example.com",
            "/users add carol carol-secret-1",
            "/users grant carol smtp/mail/example.com:carol writer",
        ):
            everlock.console(line)
        yield everlock, ports
    finally:
        everlock.close()


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "zoe@example.net",
            ["carol@example.com"],
            (
                f"From: zoe@example.net\r\nTo: carol@example.com\r\nSubject: {subject}\r\n\r\nHi Carol.\r\n"
            ).encode(),
        )


def test_serve_starts_both_imap_listeners_and_curl_reads_mail(site):
    everlock, ports = site
    assert everlock.wait_for_log(f"IMAP listener (STARTTLS) on 127.0.0.1:{ports['imap']}")
    send(ports["smtp"], "read with curl")
    for url, extra in (
        (f"imap://127.0.0.1:{ports['imap']}/INBOX;UID=1", []),
        (f"imaps://127.0.0.1:{ports['imaps']}/INBOX;UID=1", ["--insecure"]),
    ):
        done = subprocess.run(
            ["curl", "--silent", "--show-error", "--user", "carol:carol-secret-1", *extra, url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "Subject: read with curl" in done.stdout and "Hi Carol." in done.stdout


def test_idle_hears_of_mail_filed_by_the_smtp_process(site):
    everlock, ports = site
    with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False, timeout=30) as client:
        client.login("carol@example.com", "carol-secret-1")
        before = client.select_folder("INBOX")[b"EXISTS"]
        client.idle()
        sent = time.monotonic()
        send(ports["smtp"], "pushed")
        responses = client.idle_check(timeout=10)
        waited = time.monotonic() - sent
        client.idle_done()
    assert (before + 1, b"EXISTS") in responses, (responses, waited)
    listing = everlock.console("/mail messages list carol@example.com inbox")
    assert "pushed" in listing
