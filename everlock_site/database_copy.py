"""`everlock copydb --to URL`: copy the installation's database into another one, typically
from the default SQLite file to PostgreSQL.

The target is migrated to this version, then every model's rows are copied through Django's
serialization, saved raw (as `loaddata` does): primary keys, IMAP UIDs and UIDVALIDITY,
flags, the outbound queue with its attempt times, DKIM keys and every timestamp arrive as
they were. It all happens in one transaction on the target, with foreign keys checked at
its end, and the target's sequences are moved past the copied ids. The message files stay
where they are: the data dir is shared by both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import environ
from django.apps import apps
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core import serializers
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from kombu.utils.url import maybe_sanitize_url

TARGET = "copydb-target"
# Rows saved per serialization batch (memory, not transactions: the copy is one transaction).
BATCH = 500
# Rows `migrate` itself creates in a fresh database, replaced by the source's own (whose ids
# the other rows refer to).
MIGRATE_CREATES = (Permission, ContentType)


class CopyError(Exception):
    """The copy cannot be made; the message says why."""


@dataclass
class CopyResult:
    target: str
    rows: dict[str, int] = field(default_factory=dict)

    def report(self) -> list[str]:
        """What `everlock copydb` prints."""
        return [
            *(f"{label}: {count}" for label, count in self.rows.items() if count),
            f"copied {sum(self.rows.values())} rows to {self.target}",
            "to use it, give every Everlock process that URL as DATABASE_URL and restart them",
        ]


def _connect(url: str) -> None:
    try:
        config = environ.Env.db_url_config(url)
    except Exception as exc:  # django-environ raises several kinds for a bad URL
        raise CopyError(f"--to: not a database URL: {exc}") from None
    default = dict(connections.settings[DEFAULT_DB_ALIAS])
    connections.settings[TARGET] = connections.configure_settings(
        {DEFAULT_DB_ALIAS: default, TARGET: config}
    )[TARGET]


def _same_database(source, target) -> bool:
    keys = ("ENGINE", "NAME", "HOST", "PORT")
    return all(source.settings_dict.get(k) == target.settings_dict.get(k) for k in keys)


def _models() -> list:
    """Every concrete model with a table of its own (many-to-many rows go with their model)."""
    return [m for m in apps.get_models() if m._meta.managed and not m._meta.proxy]


def _rows(model) -> Iterator[list]:
    """The source's rows of `model` in batches, by primary key."""
    rows = model._base_manager.using(DEFAULT_DB_ALIAS).order_by("pk").iterator(chunk_size=BATCH)
    while batch := list(islice(rows, BATCH)):
        yield batch


def copy_database(url: str) -> CopyResult:
    """Copy every row of the default database into the (empty) database at `url`.

    Raises CopyError when `url` does not parse, names the source itself, or its database
    already holds data.
    """
    _connect(url)
    source, target = connections[DEFAULT_DB_ALIAS], connections[TARGET]
    if _same_database(source, target):
        raise CopyError("--to names the database Everlock uses now")
    shown = maybe_sanitize_url(url)
    try:
        target.ensure_connection()
    except Exception as exc:
        raise CopyError(f"cannot connect to {shown}: {exc}") from None
    call_command("migrate", database=TARGET, interactive=False, verbosity=0)
    call_command("createcachetable", database=TARGET, verbosity=0)
    models = _models()
    holding = [
        m._meta.label for m in models if m not in MIGRATE_CREATES and m._base_manager.using(TARGET).exists()
    ]
    if holding:
        raise CopyError(f"{shown} already holds data ({', '.join(holding)}): copy into an empty database")
    result = CopyResult(target=shown)
    with transaction.atomic(using=TARGET), target.constraint_checks_disabled():
        for model in MIGRATE_CREATES:
            model._base_manager.using(TARGET).all().delete()
        for model in models:
            count = 0
            for batch in _rows(model):
                data = serializers.serialize("python", batch)
                for copied in serializers.deserialize("python", data, using=TARGET):
                    copied.save(using=TARGET)
                count += len(batch)
            result.rows[model._meta.label] = count
        target.check_constraints()
        with target.cursor() as cursor:
            for statement in target.ops.sequence_reset_sql(no_style(), models):
                cursor.execute(statement)
    return result
