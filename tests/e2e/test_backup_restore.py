"""`everlock backup` of a running installation, `everlock restore` into a fresh data dir (and
database), and the same messages read there over IMAP and in the console."""

from __future__ import annotations

import json
import smtplib
import subprocess

import pytest
from imapclient import IMAPClient

from tests.e2e.installation import EVERLOCK, Everlock
from tests.ports import free_port

pytestmark = pytest.mark.e2e

RULES = """[[rule]]
name = "reports"
scope = "carol@example.com"
match = { header = "Subject", contains = "report" }
fileinto = "Reports"
"""


def everlock_command(installation: Everlock, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EVERLOCK), *args],
        cwd=installation.data_dir,
        env=installation.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def start(installation: Everlock) -> dict[str, int]:
    ports = {name: free_port() for name in ("ssh", "smtp", "submission", "imap")}
    installation.start(
        [
            "--frontend-ssh", "--frontend-ssh-listen", f"127.0.0.1:{ports['ssh']}",
            "--backend-admin-ssh", "--backend-mail-smtp",
            "--frontend-smtp", "--frontend-smtp-listen", f"127.0.0.1:{ports['smtp']}",
            "--frontend-smtp-submission",
            "--frontend-smtp-submission-listen", f"127.0.0.1:{ports['submission']}",
            "--frontend-imap-listen", f"127.0.0.1:{ports['imap']}",
            "--admin-user", "admin", "--admin-password", "change-me",
        ],
        ssh_port=ports["ssh"],
        ready=f"IMAP listener (STARTTLS) on 127.0.0.1:{ports['imap']}",
    )  # fmt: skip
    return ports


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "zoe@example.net",
            ["carol@example.com"],
            f"From: zoe@example.net\r\nSubject: {subject}\r\n\r\nBody of {subject}.\r\n".encode(),
        )


def mailbox(port: int) -> dict[str, tuple[int, list[tuple[int, tuple, bytes]]]]:
    """{folder: (UIDVALIDITY, [(uid, flags, message bytes)])} of carol's INBOX and Reports."""
    seen = {}
    with IMAPClient("127.0.0.1", port=port, ssl=False, timeout=30) as client:
        client.login("carol", "carol-secret-1")
        for folder in ("INBOX", "Reports"):
            uidvalidity = client.select_folder(folder, readonly=True)[b"UIDVALIDITY"]
            fetched = client.fetch(client.search("ALL"), ["FLAGS", "BODY.PEEK[]"])  # by UID
            seen[folder] = (
                uidvalidity,
                sorted(
                    (uid, tuple(sorted(data[b"FLAGS"])), data[b"BODY[]"]) for uid, data in fetched.items()
                ),
            )
    return seen


def populate(installation: Everlock) -> dict[str, int]:
    """Start `installation` and give it carol's mail: three messages in, a rule filing one
    into Reports, one flagged \\Seen and \\Flagged, one expunged; DKIM keys for example.com.
    Returns its ports."""
    ports = start(installation)
    for line in (
        "/mail domains create example.com",
        "/users add carol carol-secret-1",
        "/users grant carol smtp/mail/example.com:carol writer",
        "/mail domains set example.com dkim=on",
    ):
        installation.console(line)
    (installation.data_dir / "everlock-mail" / "rules.toml").write_text(RULES)
    installation.console("/mail rules import")
    for subject in ("first", "monthly report", "second"):
        send(ports["smtp"], subject)
    with IMAPClient("127.0.0.1", port=ports["imap"], ssl=False, timeout=30) as client:
        client.login("carol", "carol-secret-1")
        client.select_folder("INBOX")
        uids = client.search("ALL")
        client.add_flags(uids[:1], [b"\\Seen", b"\\Flagged"])
        client.delete_messages(uids[1:2])
        client.expunge()
    return ports


@pytest.fixture
def original(tmp_path):
    installation = Everlock(tmp_path / "original")
    try:
        yield installation, populate(installation)
    finally:
        installation.close()


def test_backup_of_a_running_installation_restores_into_a_fresh_one(original, tmp_path):
    installation, ports = original
    before = mailbox(ports["imap"])
    assert [len(before["INBOX"][1]), len(before["Reports"][1])] == [1, 1]
    domain_before = installation.console("/mail domains show example.com")
    listed_before = installation.console("/mail messages list carol@example.com")

    backup = tmp_path / "backup"
    made = everlock_command(installation, "backup", str(backup))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"backup written to {backup}: ")
    assert " database, 2 messages, " in made.stdout
    manifest = json.loads((backup / "manifest.json").read_text())
    assert (manifest["format"], manifest["messages"], manifest["missing_messages"]) == (1, 2, [])
    assert manifest["migrations"]["mail"].startswith("00")
    assert (backup / "data" / "everlock-mail" / "rules.toml").read_text() == RULES
    assert (backup / "data" / "tls" / "key.pem").exists()
    # A backup is never written over another.
    again = everlock_command(installation, "backup", str(backup))
    assert (again.returncode, again.stderr.strip()) == (
        1,
        f"CommandError: {backup} exists and is not empty: give a new directory",
    )
    inside = everlock_command(installation, "backup", "nested")  # run in the data dir
    assert (inside.returncode, inside.stderr.strip()) == (
        1,
        f"CommandError: {installation.data_dir / 'nested'} is inside the data dir {installation.data_dir}: "
        "give a directory outside it",
    )
    installation.stop()

    fresh = Everlock(tmp_path / "restored")
    try:
        restored = everlock_command(fresh, "restore", str(backup))
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.startswith("restored: ")
        assert ", 2 messages, " in restored.stdout
        # Once restored, the installation holds data: another restore needs --force.
        refused = everlock_command(fresh, "restore", str(backup))
        assert refused.returncode == 1
        assert refused.stderr.strip().endswith(
            ": restore into a fresh installation, or give --force to replace it"
        )
        forced = everlock_command(fresh, "restore", "--force", str(backup))
        assert forced.returncode == 0, forced.stderr

        new_ports = start(fresh)
        assert mailbox(new_ports["imap"]) == before
        assert fresh.console("/mail messages list carol@example.com") == listed_before
        assert fresh.console("/mail domains show example.com") == domain_before
        assert (fresh.data_dir / "everlock-mail" / "rules.toml").read_text() == RULES
        # New mail continues the UIDs where the original left off.
        send(new_ports["smtp"], "after the restore")
        after = mailbox(new_ports["imap"])
        assert after["INBOX"][0] == before["INBOX"][0]
        assert after["INBOX"][1][:-1] == before["INBOX"][1]
        assert after["INBOX"][1][-1][0] > max(uid for uid, _, _ in before["INBOX"][1])
    finally:
        fresh.close()


def test_restore_refuses_what_is_not_a_backup(tmp_path):
    fresh = Everlock(tmp_path / "fresh")
    try:
        (tmp_path / "empty").mkdir()
        result = everlock_command(fresh, "restore", str(tmp_path / "empty"))
        assert (result.returncode, result.stderr.strip()) == (
            1,
            f"CommandError: {tmp_path / 'empty'} is not an Everlock backup (no manifest.json)",
        )
        other = tmp_path / "other-engine"
        other.mkdir()
        engine = "sqlite" if "DATABASE_URL" in fresh.env else "postgresql"
        this = "postgresql" if engine == "sqlite" else "sqlite"
        (other / "manifest.json").write_text(json.dumps({"format": 1, "database": engine}))
        result = everlock_command(fresh, "restore", str(other))
        assert (result.returncode, result.stderr.strip()) == (
            1,
            f"CommandError: the backup holds a {engine} database and this installation uses {this}: "
            f"restore it into a {engine} installation, then copy it with everlock copydb",
        )
    finally:
        fresh.close()
