"""`manage.py runimap` as a real process: both listeners, a login over each, SIGTERM ends it."""

from __future__ import annotations

import imaplib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mail.smtp.conftest import tls_context
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
SETUP = (
    "from accounts.services import grant_add, user_add; "
    "from mail.models import MailDomain; "
    "MailDomain.objects.create(name='example.com'); "
    "user_add(name='carol', password='carol-secret-1'); "
    "grant_add(name='carol', resource='smtp/mail/example.com:carol', role='writer')"
)


def test_runimap_serves_both_listeners_until_sigterm(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(EVERLOCK_DATA_DIR=str(tmp_path), EVERLOCK_LOG="info")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=ROOT, check=True, timeout=120)
    subprocess.run([*manage, "shell", "-v0", "-c", SETUP], env=env, cwd=ROOT, check=True, timeout=120)
    plain, tls = free_port("127.0.0.1"), free_port("127.0.0.1")
    log_path = tmp_path / "imap.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*manage, "runimap", "--listen", f"127.0.0.1:{plain}", "--tls-listen", f"127.0.0.1:{tls}"],
            env=env,
            cwd=ROOT,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while f"IMAP listener (implicit TLS) on 127.0.0.1:{tls}" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        client = imaplib.IMAP4("127.0.0.1", plain, timeout=10)
        assert client.login("carol", "carol-secret-1")[0] == "OK"
        assert client.select("INBOX") == ("OK", [b"0"])
        client.logout()
        client = imaplib.IMAP4_SSL("127.0.0.1", tls, ssl_context=tls_context(), timeout=10)
        assert client.login("carol@example.com", "carol-secret-1")[0] == "OK"
        client.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log_path.read_text()
