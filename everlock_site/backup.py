"""`everlock backup DEST` and `everlock restore BACKUP`: a consistent copy of an installation.

A backup is a directory:

    manifest.json         what it holds (format, Everlock version, time, database engine,
                          the applied migrations, message count, what was left out)
    database.sqlite3      SQLite's online backup (sqlite3 backup API: a consistent copy
      or database.pgdump  while Everlock runs), or pg_dump's custom format for PostgreSQL
    messages/NAME         every stored message file the database copy refers to
    data/...              the rest of the data dir: secret key, SSH host key, TLS pair,
                          everlock-mail/ (rules.toml, domains/*.toml), ...
    configured-tls/       the files of EVERLOCK_TLS_CERT and EVERLOCK_TLS_KEY, when set

Consistency: the database is copied first, at one point in time (for PostgreSQL an exported
snapshot that pg_dump and the listing of message files share), then exactly the message
files that copy names. A message file is always on disk before its row commits
(mail.services.storage), so every file the copy names exists, unless the message was
deleted after the copy was taken: such files are listed in the manifest as missing (their
messages were deleted anyway). DKIM keys live in the database.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.files.base import File
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.recorder import MigrationRecorder

from everlock_site.cli import everlock_version
from mail.models import MessageContent
from mail.services.storage import message_storage

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "database.sqlite3"
PG_FILE = "database.pgdump"
# What of the data dir is not copied as files: the database (copied through its own API),
# the message files (copied by name), the embedded broker's spool (the queue rows are the
# truth, a lost kick is rescanned) and the metrics counters (per-process scratch files).
NOT_COPIED = frozenset({"messages", "broker", "metrics"})
# Data dir entries every process creates at start (settings): a data dir holding only
# these is empty for restore.
CREATED_AT_START = frozenset({"broker", "metrics", "secret_key"})


class BackupError(Exception):
    """The backup or restore cannot be done; the message says why and what to do."""


@dataclass
class BackupResult:
    destination: Path
    engine: str
    messages: int
    missing: list[str] = field(default_factory=list)
    data_files: int = 0

    def report(self) -> list[str]:
        """What `everlock backup` prints."""
        lines = [
            f"backup written to {self.destination}: {self.engine} database, {self.messages} messages, "
            f"{self.data_files} files of the data dir"
        ]
        if self.missing:
            lines.append(
                f"{len(self.missing)} messages were deleted while the backup ran and are left out "
                "(listed in manifest.json)"
            )
        return lines


def engine() -> str:
    vendor = connection.vendor
    if vendor not in ("sqlite", "postgresql"):
        raise BackupError(f"backups of a {vendor} database are not supported")
    return vendor


def _pg_command(program: str, *args: str) -> tuple[list[str], dict]:
    """`program` (pg_dump, pg_restore) with the connection options of the default database."""
    db = settings.DATABASES["default"]
    if shutil.which(program) is None:
        raise BackupError(f"{program} is not installed (Debian package postgresql-client)")
    command = [program, "--no-password"]
    for option, key in (("--host", "HOST"), ("--port", "PORT"), ("--username", "USER")):
        if db.get(key):
            command += [option, str(db[key])]
    env = dict(os.environ)
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    return [*command, *args, "--dbname", str(db["NAME"])], env


def _run(command: list[str], env: dict) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"{command[0]} failed: {done.stderr.strip() or done.returncode}")


def _sqlite_copy(destination: Path) -> list[str]:
    """SQLite's online backup of the database into `destination`; the message file names the
    copy refers to."""
    source = sqlite3.connect(settings.DATABASES["default"]["NAME"], timeout=30)
    target = sqlite3.connect(destination)
    try:
        with target:
            source.backup(target)
        table = MessageContent._meta.db_table
        column = MessageContent._meta.get_field("storage_name").column
        return [name for (name,) in target.execute(f'SELECT "{column}" FROM "{table}" ORDER BY id')]
    finally:
        target.close()
        source.close()


def _pg_copy(destination: Path) -> list[str]:
    """pg_dump of the database into `destination`, and the message file names, both from one
    exported snapshot (the same point in time)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cursor.execute("SELECT pg_export_snapshot()")
        (snapshot,) = cursor.fetchone()
        command, env = _pg_command(
            "pg_dump", "--format=custom", "--no-owner", f"--snapshot={snapshot}", f"--file={destination}"
        )
        _run(command, env)
        return list(MessageContent.objects.order_by("id").values_list("storage_name", flat=True))


def _data_entries(data_dir: Path) -> list[Path]:
    """The data dir's entries a backup copies as files."""
    database = Path(settings.DATABASES["default"]["NAME"]) if connection.vendor == "sqlite" else None
    skipped = set(NOT_COPIED)
    if database is not None and database.parent == data_dir:
        skipped |= {database.name, f"{database.name}-wal", f"{database.name}-shm", f"{database.name}-journal"}
    return sorted(p for p in data_dir.iterdir() if p.name not in skipped)


def _copy_tree(source: Path, target: Path) -> int:
    """Copy a file or directory keeping modes; returns the number of files copied. A file
    that vanishes meanwhile (a running process's temporary file, such as the TLS store's) is
    left out."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not source.is_dir() or source.is_symlink():
        try:
            shutil.copy2(source, target, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        return 1
    target.mkdir(exist_ok=True, mode=0o700)
    copied = sum(_copy_tree(entry, target / entry.name) for entry in sorted(source.iterdir()))
    shutil.copystat(source, target)
    return copied


def backup(destination: Path) -> BackupResult:
    """Write a backup of this installation to the new directory `destination`.

    Raises BackupError when `destination` is inside the data dir, exists and is not empty,
    or a copy fails (a partial backup is removed).
    """
    kind = engine()
    if destination.is_relative_to(Path(settings.DATA_DIR)):
        raise BackupError(
            f"{destination} is inside the data dir {settings.DATA_DIR}: give a directory outside it"
        )
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise BackupError(f"{destination} exists and is not empty: give a new directory")
    destination.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return _write_backup(destination, kind)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _write_backup(destination: Path, kind: str) -> BackupResult:
    database = destination / (SQLITE_FILE if kind == "sqlite" else PG_FILE)
    names = _sqlite_copy(database) if kind == "sqlite" else _pg_copy(database)
    result = BackupResult(destination=destination, engine=kind, messages=0)
    storage = message_storage()
    for name in names:
        target = destination / "messages" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with storage.open(name, "rb") as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
        except FileNotFoundError:
            target.unlink(missing_ok=True)
            result.missing.append(name)
            continue
        result.messages += 1
    data_dir = Path(settings.DATA_DIR)
    for entry in _data_entries(data_dir):
        result.data_files += _copy_tree(entry, destination / "data" / entry.name)
    configured = {}
    if settings.EVERLOCK_TLS_CERT and settings.EVERLOCK_TLS_KEY:
        (destination / "configured-tls").mkdir()
        for key, path in (("cert", settings.EVERLOCK_TLS_CERT), ("key", settings.EVERLOCK_TLS_KEY)):
            shutil.copy2(path, destination / "configured-tls" / f"{key}.pem")
            configured[key] = str(path)
    manifest = {
        "format": FORMAT,
        "everlock": everlock_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": kind,
        "migrations": _applied_migrations(),
        "messages": result.messages,
        "missing_messages": result.missing,
        "configured_tls": configured,
    }
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.sync()  # the backup is on disk when we say it is done
    return result


def _applied_migrations() -> dict[str, str]:
    """{app: its latest applied migration}."""
    latest: dict[str, str] = {}
    for app, name in MigrationRecorder(connection).applied_migrations():
        latest[app] = max(latest.get(app, ""), name)
    return dict(sorted(latest.items()))


def read_manifest(source: Path) -> dict:
    """The manifest of the backup in `source`. Raises BackupError when it is not one."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source} is not an Everlock backup (no {MANIFEST})") from None
    except ValueError as exc:
        raise BackupError(f"{source / MANIFEST} is damaged: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"{source} has backup format {manifest.get('format')!r}; this Everlock reads {FORMAT}"
        )
    return manifest


def installation_in_use() -> list[str]:
    """What the target of a restore already holds (empty when it is fresh)."""
    found = []
    tables = connection.introspection.table_names()
    if tables:
        found.append(f"the database has {len(tables)} tables")
    data_dir = Path(settings.DATA_DIR)
    entries = [p.name for p in data_dir.iterdir() if p.name not in CREATED_AT_START]
    if connection.vendor == "sqlite":
        database = Path(settings.DATABASES["default"]["NAME"]).name
        entries = [e for e in entries if not e.startswith(database)]
    messages = data_dir / "messages"
    if messages.is_dir() and not any(messages.rglob("*")):
        entries = [e for e in entries if e != "messages"]
    if entries:
        found.append(f"the data dir {data_dir} holds {', '.join(sorted(entries))}")
    return found


@dataclass
class RestoreResult:
    source: Path
    engine: str
    messages: int
    data_files: int
    configured_tls: dict

    def report(self) -> list[str]:
        """What `everlock restore` prints."""
        lines = [
            f"restored: {self.engine} database (migrated), {self.messages} messages, "
            f"{self.data_files} files of the data dir"
        ]
        if self.configured_tls:
            lines.append(
                f"the files of EVERLOCK_TLS_CERT ({self.configured_tls['cert']}) and EVERLOCK_TLS_KEY "
                f"({self.configured_tls['key']}) are in {self.source / 'configured-tls'}: put them back "
                "where the settings name them"
            )
        return lines


def restore(source: Path, *, force: bool = False) -> RestoreResult:
    """Restore the backup in `source` into this installation (its DATABASE_URL and data dir),
    then migrate the database to this version.

    Refuses (BackupError) an installation that already holds data unless `force`, and a
    backup of another database engine (copy across engines with `everlock copydb`).
    """
    manifest = read_manifest(source)
    kind = engine()
    if manifest["database"] != kind:
        raise BackupError(
            f"the backup holds a {manifest['database']} database and this installation uses {kind}: "
            f"restore it into a {manifest['database']} installation, then copy it with everlock copydb"
        )
    in_use = installation_in_use()
    if in_use and not force:
        raise BackupError(
            "; ".join(in_use) + ": restore into a fresh installation, or give --force to replace it"
        )
    data_dir = Path(settings.DATA_DIR)
    if kind == "sqlite":
        _restore_sqlite(source / SQLITE_FILE)
    else:
        _restore_pg(source / PG_FILE, clean=bool(in_use))
    files = 0
    for entry in sorted((source / "data").iterdir()) if (source / "data").is_dir() else []:
        target = data_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        files += _copy_tree(entry, target)
    messages = _restore_messages(source / "messages", replace=force)
    os.sync()
    call_command("migrate", interactive=False, verbosity=0)
    call_command("createcachetable", verbosity=0)
    return RestoreResult(
        source=source,
        engine=kind,
        messages=messages,
        data_files=files,
        configured_tls=manifest.get("configured_tls", {}),
    )


def _restore_sqlite(database: Path) -> None:
    target = Path(settings.DATABASES["default"]["NAME"])
    connection.close()
    # Written beside the target, then renamed over it: never a half-copied database.
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".restore-", delete=False) as tmp:
        temporary = Path(tmp.name)
    try:
        source = sqlite3.connect(database)
        copy = sqlite3.connect(temporary)
        try:
            with copy:
                source.backup(copy)
        finally:
            copy.close()
            source.close()
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _restore_pg(dump: Path, *, clean: bool) -> None:
    connection.close()
    options = ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    if clean:
        options += ["--clean", "--if-exists"]
    command, env = _pg_command("pg_restore", *options)
    _run([*command, str(dump)], env)


def _restore_messages(directory: Path, *, replace: bool) -> int:
    """Store every file under `directory` under its own name in the messages storage."""
    storage = message_storage()
    count = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []:
        name = path.relative_to(directory).as_posix()
        if replace and storage.exists(name):
            storage.delete(name)
        with open(path, "rb") as fh:
            saved = storage.save(name, File(fh))
        if saved != name:
            raise BackupError(f"the messages storage stored {name} as {saved}")
        count += 1
    return count
