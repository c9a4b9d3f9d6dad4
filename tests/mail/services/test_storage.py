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
