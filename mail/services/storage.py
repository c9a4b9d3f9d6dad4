"""Message bytes: written once through the `messages` storage, durable before any row commits.

A MessageContent row only ever names a file that is already on stable storage: the file is
written and fsynced (with its directory) first, then the row is inserted in the caller's
transaction; if that transaction rolls back, the file is removed again.

The files of a group commit's batch (ContentWrites) are made durable together: by default
with one syncfs(2) of the messages filesystem once they are all written, which costs about
as much as a single fsync; with EVERLOCK_MESSAGE_SYNC=file (or where there is no syncfs), by
an fsync per file, side by side, and one per directory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, storages

from mail.models import MessageContent

log = logging.getLogger("mail.smtp")


def message_storage():
    return storages["messages"]


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_name() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y/%m/%d}/{now:%H%M%S}-{secrets.token_hex(8)}.eml"


def write_content(raw: bytes, *, sync_directory: bool = True) -> str:
    """Write `raw` to a new file of the messages storage and sync it; return its name.

    For a local filesystem storage the file and (unless the caller syncs it later with
    sync_directories) its directory are fsynced; remote storages (S3-compatible) are durable
    once save() returns. Raises OSError when storage fails.
    """
    storage = message_storage()
    name = _new_name()
    if isinstance(storage, FileSystemStorage):
        path = storage.path(name)
        if os.path.isdir(os.path.dirname(path)):
            _write_new_file(path, raw, mode=storage.file_permissions_mode)
            saved = name
        else:
            # The first file of a directory: the storage creates it with its permissions.
            saved = storage.save(name, ContentFile(raw))
            path = storage.path(saved)
            _fsync_path(path)
    else:
        return storage.save(name, ContentFile(raw))
    if sync_directory:
        _fsync_path(os.path.dirname(path))
    return saved


def _write_new_file(path: str, raw: bytes, *, mode: int | None, sync: bool = True) -> None:
    """Create `path` (never an existing file), write `raw` and fsync it (unless `sync` is
    false): what FileSystemStorage.save() does for a name known to be free, in four calls."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask, as the storage does
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(path)
        raise


def _load_syncfs():
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux
        return None


_syncfs = _load_syncfs()


def sync_filesystem(path: str) -> None:
    """syncfs(2): every file written on the filesystem of `path`, with its directory entry,
    is on stable storage when this returns. Raises OSError (a write-back error included)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
    finally:
        os.close(fd)


def sync_whole_filesystem() -> bool:
    """Whether ContentWrites syncs the filesystem once (EVERLOCK_MESSAGE_SYNC=filesystem,
    where syncfs exists) rather than each file."""
    return settings.EVERLOCK_MESSAGE_SYNC == "filesystem" and _syncfs is not None


# Writers for ContentWrites, per file: the fsyncs of many files wait side by side, and the
# filesystem makes them durable in one journal commit instead of one after another.
_file_writers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="message-files")


class ContentWrites:
    """The message files of a batch, written while the caller inserts their rows: the names
    are known at once, and wait() returns once every file is durable. Call wait() before the
    commit, or settle() when giving up (then remove `files`).

    Every name is added to `files` at once, so a failed transaction removes them all."""

    def __init__(self, raws: list[bytes], *, files: StoredFiles):
        storage = message_storage()
        local = isinstance(storage, FileSystemStorage)
        whole = local and sync_whole_filesystem()
        self.names: list[str] = []
        self._pending = []
        self._unsynced: str | None = None  # a path on the filesystem to sync
        try:
            for raw in raws:
                name = _new_name()
                path = storage.path(name) if local else ""
                if local and os.path.isdir(os.path.dirname(path)):
                    mode = storage.file_permissions_mode
                    if whole:
                        _write_new_file(path, raw, mode=mode, sync=False)
                        self._unsynced = os.path.dirname(path)
                    else:
                        self._pending.append(_file_writers.submit(_write_new_file, path, raw, mode=mode))
                else:
                    name = write_content(raw, sync_directory=False)  # a new directory; a remote storage
                self.names.append(name)
                files.names.append(name)
            if self._unsynced is not None:
                # Every file is written: the sync of their filesystem runs while the caller
                # inserts the rows.
                self._pending.append(_file_writers.submit(sync_filesystem, self._unsynced))
        except BaseException:
            self.settle()
            raise

    def settle(self) -> OSError | None:
        """Wait for every write to end; return the first failure."""
        failure = None
        for future in self._pending:
            try:
                future.result()
            except OSError as exc:
                failure = failure or exc
        return failure

    def wait(self) -> None:
        """Return once every file and its directory entry is durable; raise the first
        OSError of a write."""
        failure = self.settle()
        if failure is not None:
            raise failure
        if self._unsynced is None:  # else the filesystem's sync covered the directories
            sync_directories(self.names)


def sync_directories(names: list[str]) -> None:
    """fsync the directories holding `names` (files written with sync_directory=False), each
    once: what makes their directory entries durable (for a local filesystem storage)."""
    storage = message_storage()
    try:
        directories = {os.path.dirname(storage.path(name)) for name in names}
    except NotImplementedError:
        return
    for directory in directories:
        _fsync_path(directory)


def delete_content_file(name: str) -> None:
    """Remove a stored file whose row never committed; failures are logged, not raised."""
    try:
        message_storage().delete(name)
    except OSError:
        log.warning("could not remove orphaned message file %s", name, exc_info=True)


class StoredFiles:
    """The files written for one transaction, removed again unless it commits.

        with StoredFiles() as files, transaction.atomic():
            content = store_content(raw, files=files)

    Leaving the block by an exception (including a failed COMMIT) deletes every file written.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def __enter__(self) -> StoredFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for name in self.names:
                delete_content_file(name)


def store_content(raw: bytes, *, files: StoredFiles) -> MessageContent:
    """Store `raw` durably and insert its MessageContent row in the current transaction."""
    name = write_content(raw)
    files.names.append(name)
    return MessageContent.objects.create(storage_name=name, size=len(raw))


def sweep_orphan_files(*, older_than: float, now: float | None = None) -> int:
    """Remove the message files that no MessageContent row names and that were last
    written more than `older_than` seconds ago; return how many were removed.

    A file is written and synced before its row commits, so a process killed in between
    leaves a file without a row. `older_than` must exceed the longest transaction that could
    still commit such a row (a group commit lasts seconds): a younger file may be one whose
    row is about to commit, and is never touched. Only a local filesystem storage is swept.
    """
    storage = message_storage()
    if not isinstance(storage, FileSystemStorage):
        return 0
    root = storage.path("")
    cutoff = (time.time() if now is None else now) - older_than
    old: list[str] = []
    for directory, _, files in os.walk(root):
        for file_name in files:
            path = os.path.join(directory, file_name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    old.append(os.path.relpath(path, root))
            except FileNotFoundError:
                continue
    removed = 0
    for start in range(0, len(old), 500):
        batch = old[start : start + 500]
        named = set(
            MessageContent.objects.filter(storage_name__in=batch).values_list("storage_name", flat=True)
        )
        for name in batch:
            if name not in named:
                delete_content_file(name)
                removed += 1
    if removed:
        log.warning("removed %d message files without a row (older than %.0f s)", removed, older_than)
    return removed


def read_content(content: MessageContent) -> bytes:
    with message_storage().open(content.storage_name, "rb") as fh:
        return fh.read()
