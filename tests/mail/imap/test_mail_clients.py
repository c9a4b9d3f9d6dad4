"""Mail clients people use, against the real IMAP listener: mbsync (isync) syncing a mailbox
both ways, and neomutt reading a message (`python3 dev.py test` installs both)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mail.models import Message
from tests.mail.imap.test_imap_sessions import deliver


@pytest.fixture
def smtp_port(start_smtp, mail_users) -> int:
    return start_smtp().inbound_port


def mbsync(config: Path) -> str:
    done = subprocess.run(
        ["mbsync", "-c", str(config), "-a"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def maildir_files(folder: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") for p in (folder / sub).iterdir())


def test_mbsync_syncs_a_mailbox_both_ways(imap, smtp_port, tmp_path):
    deliver(smtp_port, "alice@example.com", "from the server", body="Delivered by SMTP.")
    deliver(smtp_port, "alice@example.com", "mark me read")
    local = tmp_path / "mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"IMAPAccount everlock\nHost 127.0.0.1\nPort {imap.port}\nUser alice\nPass alice-secret\n"
        "SSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount everlock\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel everything\nFar :remote:\nNear :local:\nPatterns INBOX Archive\n"
        "Create Both\nExpunge Both\nSyncState *\n"
    )
    mbsync(config)
    files = maildir_files(local / "INBOX")
    assert len(files) == 2
    texts = {path: path.read_bytes() for path in files}
    assert any(b"Delivered by SMTP." in text for text in texts.values())

    # On the near side: one message read, one written into Archive.
    read = next(path for path, text in texts.items() if b"Subject: mark me read" in text)
    read.rename(local / "INBOX" / "cur" / (read.name.split(":2,")[0] + ":2,S"))
    (local / "Archive" / "new").mkdir(parents=True, exist_ok=True)
    (local / "Archive" / "new" / "1.local").write_bytes(
        b"From: Alice <alice@example.com>\r\nSubject: kept locally\r\n\r\nWritten offline.\r\n"
    )
    mbsync(config)
    assert Message.objects.get(subject="mark me read").seen
    assert not Message.objects.get(subject="from the server").seen
    archived = Message.objects.get(subject="kept locally")
    assert (archived.folder.name, archived.folder.mailbox.address) == ("Archive", "alice@example.com")

    # And back: a flag set over IMAP reaches the maildir.
    client = imap.login()
    client.select("INBOX")
    typ, _ = client.uid("STORE", "1", "+FLAGS", r"(\Flagged)")
    assert typ == "OK"
    client.logout()
    mbsync(config)
    flagged = [p for p in maildir_files(local / "INBOX") if ":2," in p.name and "F" in p.name.split(":2,")[1]]
    assert len(flagged) == 1 and b"Delivered by SMTP." in flagged[0].read_bytes()


def test_neomutt_reads_a_message(imap, smtp_port, tmp_path):
    deliver(smtp_port, "alice@example.com", "for neomutt", body="Read me with neomutt.")
    out = tmp_path / "piped.txt"
    rc = tmp_path / "neomuttrc"
    rc.write_text(
        'set imap_user = "alice"\nset imap_pass = "alice-secret"\n'
        f'set folder = "imap://127.0.0.1:{imap.port}/"\nset spoolfile = "+INBOX"\n'
        "set ssl_starttls = no\nset ssl_force_tls = no\nset quit = yes\nset wait_key = no\n"
        'set header_cache = ""\nset message_cachedir = ""\n'
    )
    command = f"neomutt -n -F {rc} -e 'push \"<pipe-message>cat > {out}<enter><quit>\"'"
    # neomutt wants a terminal: `script` gives it one.
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "TERM": "xterm", "HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    text = out.read_text()
    assert "Subject: for neomutt" in text and "Read me with neomutt." in text
