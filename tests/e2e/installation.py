"""An Everlock installation for end-to-end tests: `everlock serve` as its own process.

Each installation has its own data dir and its own database (SQLite in the data dir, or a
new PostgreSQL database when the test run's DATABASE_URL names PostgreSQL), and the embedded
broker (or EVERLOCK_TEST_BROKER_URL with a queue of its own). Its console is driven with the
OpenSSH client, its log is read from the process's stderr.
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

from tests.log_lines import log_lines
from tests.postgres import create_database, drop_database, is_postgres
from tests.sshadmin.openssh import ssh_exec

EVERLOCK = Path(sys.executable).parent / "everlock"
ADMIN_PASSWORD = "change-me"


def submit(port: int, login: str, message: EmailMessage, password: str = "change-me") -> dict:
    """Send `message` as a mail client set up as the product doc says: the submission port on
    127.0.0.1, STARTTLS (the self-signed certificate accepted), then AUTH. Returns the
    refused recipients, as smtplib does."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        client.login(login, password)
        return client.send_message(message)


def message_from_alice(subject: str, to: str) -> EmailMessage:
    """A message as alice@example.com's mail client writes it."""
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Numbers attached in spirit.\n")
    return message


class Everlock:
    """One installation: `start(flags)` runs `everlock serve`, `console(line)` runs a console
    command over ssh, `log` is what the process printed so far; close() stops everything and
    drops the database."""

    def __init__(self, data_dir: Path, **env: str):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE", "EVERLOCK_LOG", "RUST_LOG")
        }
        self.env.update(EVERLOCK_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **env)
        self.pg_url = os.environ.get("DATABASE_URL", "")
        self.pg_name = ""
        if is_postgres(self.pg_url):
            self.pg_name = f"everlock_e2e_{uuid.uuid4().hex[:10]}"
            self.env["DATABASE_URL"] = create_database(self.pg_url, self.pg_name)
        if os.environ.get("EVERLOCK_TEST_BROKER_URL"):
            self.env["CELERY_BROKER_URL"] = os.environ["EVERLOCK_TEST_BROKER_URL"]
            self.env["EVERLOCK_CELERY_QUEUE"] = f"everlock-e2e-{uuid.uuid4().hex[:12]}"
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.ssh_port = 0

    def start(self, flags: list[str], *, ssh_port: int, ready: str) -> None:
        """Run `everlock serve FLAGS` in the data dir; returns once the log shows `ready`."""
        self.ssh_port = ssh_port
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(EVERLOCK), "serve", *flags],
                cwd=self.data_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for_log(ready, timeout=120)

    @property
    def log(self) -> list[str]:
        """The log's lines so far, each without its timestamp (checked: ISO 8601)."""
        return log_lines(self.log_path.read_text())

    def wait_for_log(self, text: str, timeout: float = 30) -> str:
        """The first log line containing `text`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log
            found = next((line for line in lines if text in line), None)
            if found is not None:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log:\n" + "\n".join(lines))
            time.sleep(0.05)

    def console(self, line: str) -> str:
        """Run one console command through the OpenSSH client; its output (it must succeed)."""
        result = ssh_exec(self.ssh_port, line, tmp=self.data_dir, password=ADMIN_PASSWORD)
        assert (result.returncode, result.stderr) == (0, ""), (line, result)
        return result.stdout

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        if self.pg_name:
            drop_database(self.pg_url, self.pg_name)
