"""The product doc's mail domain commands typed into the real console with the OpenSSH client."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import tomllib

import asyncssh
import pytest

from accounts.models import User
from dns_zones.models import Record
from everlock_site.listen import ListenAddress
from mail.models import MailDomain
from sshadmin.server import start_console

pytestmark = pytest.mark.django_db(transaction=True)


class ConsoleThread:
    """The admin console listener on 127.0.0.1 (ephemeral port) on a loop in a thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_console(listens={"ssh": ListenAddress("127.0.0.1", 0)}), self.loop
        )
        self.acceptor = future.result(timeout=30)
        self.port = self.acceptor.sockets[0].getsockname()[1]

    def stop(self):
        async def shutdown():
            self.acceptor.close()
            await self.acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def console(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.EVERLOCK_DNS = True
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = tmp_path / "id_ed25519"
    key_path.write_bytes(key.export_private_key())
    key_path.chmod(0o600)
    admin = User.objects.create_superuser("admin", password="change-me")
    admin.ssh_authorized_keys = key.export_public_key().decode()
    admin.save()
    server = ConsoleThread()

    def ssh(stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "/usr/bin/ssh",
                "-T",
                "-p",
                str(server.port),
                "-i",
                str(key_path),
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "admin@127.0.0.1",
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    yield ssh
    server.stop()


def test_product_doc_domain_commands(console, tmp_path):
    out = console(
        "/dns zones create example.com\n"
        "/mail domains create example.com\n"
        "/mail domains set example.com submission=on auth=on\n"
        "/mail domains list\n"
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines()[1:] == [
        "mail domain example.com created",
        "outbound hostname mail.example.com",
        "DKIM on: Ed25519 key (selector default) and RSA-2048 key (selector default-rsa)",
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com",
        "DKIM TXT published in hosted zone example.com: default-rsa._domainkey.example.com",
        "MX, SPF, DMARC, MTA-STS, TLS-RPT, SRV and autoconfig records published in hosted zone example.com"
        " (/mail domains records example.com lists them)",
        "mail domain example.com: submission=on",
        "DOMAIN       ENABLED  SUBMISSION  AUTH           DKIM  HOSTNAME",
        "example.com  on       on          authenticated  on    mail.example.com",
    ]
    out = console(
        "/mail domains set example.com dkim=off\n"
        "/mail domains set example.com dkim=on\n"
        "/mail domains set example.com hostname=mail.example.com\n"
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [
        "mail domain example.com: dkim=off",
        "DKIM off for example.com: signing stopped, DKIM TXT records withdrawn",
        "mail domain example.com: dkim=on",
        "DKIM TXT published in hosted zone example.com: default._domainkey.example.com",
        "DKIM TXT published in hosted zone example.com: default-rsa._domainkey.example.com",
        "mail domain example.com unchanged",
    ]
    assert Record.objects.filter(source="mail.dkim:example.com").count() == 2

    # The file on disk has exactly the doc's example's shape.
    domain = MailDomain.objects.get()
    text = (tmp_path / "everlock-mail/domains/example.com.toml").read_text()
    assert text == (
        "enabled = true\n\n"
        '[submission]\nenabled = true\nauth = "authenticated"\n\n'
        '[outbound]\nhostname = "mail.example.com"\n\n'
        '[outbound.dkim]\nenabled = true\nselector = "default"\n'
        f'private_key_pem = """\n{domain.dkim_private_key_pem}"""\n'
        'rsa_selector = "default-rsa"\n'
        f'rsa_private_key_pem = """\n{domain.dkim_rsa_private_key_pem}"""\n'
    )
    assert tomllib.loads(text)["outbound"]["dkim"]["rsa_private_key_pem"] == domain.dkim_rsa_private_key_pem

    shown = console("/mail domains show example.com\n")
    assert shown.returncode == 0
    assert "PRIVATE KEY" not in shown.stdout
    assert shown.stdout.startswith('enabled = true\n\n[submission]\nenabled = true\nauth = "authenticated"\n')

    bad = console("/mail domains set example.com submission=off colour=blue\n")
    assert bad.returncode == 1
    assert bad.stderr == (
        "error: unknown setting 'colour' (keys: submission, auth, dkim, hostname, enabled, postmaster, "
        "dmarc, reports, mta-sts)\n"
        "usage: /mail domains set DOMAIN KEY=VALUE...\n"
    )
    assert MailDomain.objects.get().submission_enabled is True
