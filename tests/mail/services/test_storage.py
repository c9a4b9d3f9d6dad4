"""Message files of a batch (ContentWrites): written, durable at wait(), removed with a
failed transaction; by one syncfs of the filesystem or by an fsync per file."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mail.services.storage import ContentWrites, StoredFiles, message_storage, sync_whole_filesystem

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("mode", ["filesystem", "file"])
def test_batch_files_are_written_whole_and_private(settings, mode):
    settings.EVERLOCK_MESSAGE_SYNC = mode
    assert sync_whole_filesystem() is (mode == "filesystem" and sys.platform == "linux")
    raws = [b"Subject: %d\r\n\r\n" % n + b"x" * (n * 1000) for n in range(5)]
    files = StoredFiles()
    writes = ContentWrites(raws, files=files)
    writes.wait()
    assert files.names == writes.names
    storage = message_storage()
    for name, raw in zip(writes.names, raws, strict=True):
        assert storage.open(name).read() == raw
        assert stat.S_IMODE(os.stat(storage.path(name)).st_mode) == 0o600


@pytest.mark.parametrize("mode", ["filesystem", "file"])
def test_files_of_a_failed_transaction_are_removed(settings, mode):
    settings.EVERLOCK_MESSAGE_SYNC = mode
    storage = message_storage()
    with pytest.raises(RuntimeError), StoredFiles() as files:
        writes = ContentWrites([b"one\r\n", b"two\r\n"], files=files)
        writes.wait()
        names = list(writes.names)
        raise RuntimeError("the commit failed")
    assert names and not any(storage.exists(name) for name in names)


def test_an_unknown_sync_mode_is_refused_at_start(tmp_path):
    env = {**os.environ, "EVERLOCK_DATA_DIR": str(tmp_path), "EVERLOCK_MESSAGE_SYNC": "sometimes"}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert 'EVERLOCK_MESSAGE_SYNC is "filesystem" or "file": \'sometimes\'' in done.stderr


@pytest.fixture
def messages_dir(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "messages": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "messages"), "file_permissions_mode": 0o600},
        },
    }
    return tmp_path / "messages"


def test_sweep_removes_only_old_files_without_a_row(db, messages_dir):
    from django.db import transaction

    from mail.models import MessageContent
    from mail.services.storage import store_content, sweep_orphan_files, write_content

    with StoredFiles() as files, transaction.atomic():
        kept = store_content(b"Subject: committed\r\n\r\n", files=files).storage_name
    old_orphan = write_content(b"Subject: its writer was killed\r\n\r\n")
    young_orphan = write_content(b"Subject: its row may still commit\r\n\r\n")
    day_ago = os.stat(messages_dir / kept).st_mtime - 86400
    for name in (kept, old_orphan):
        os.utime(messages_dir / name, (day_ago, day_ago))
    assert sweep_orphan_files(older_than=3600) == 1
    assert sorted(p.name for p in messages_dir.rglob("*.eml")) == sorted(
        Path(n).name for n in (kept, young_orphan)
    )
    assert MessageContent.objects.get().storage_name == kept
    assert sweep_orphan_files(older_than=3600) == 0
