"""Many rows of one model in one INSERT, from plain tuples: how filing
(mail.services.filing) inserts messages and their contents.

QuerySet.bulk_create builds a model instance per row and runs every value of every field
through the field's preparation, which costs several times the insert itself. For the two
tables filing fills per message, the values are already what the column holds, so only the
fields whose database form differs (date-times, bytes) are converted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connection, models


class RowInserter:
    """INSERT INTO the table of `model` the columns of `fields` (their names, in the order
    the rows give them). No model defaults are applied: `fields` must name every column
    that may not be NULL, auto_now_add ones included."""

    def __init__(self, model: type[models.Model], fields: Sequence[str]):
        self.model = model
        self.fields = [model._meta.get_field(name) for name in fields]

    @functools.cached_property
    def _converters(self) -> list[tuple[int, Callable[[Any], Any]]]:
        # The fields whose Python value is not what the driver takes as it is.
        return [
            (i, field.get_db_prep_save)
            for i, field in enumerate(self.fields)
            if isinstance(field, models.DateTimeField | models.BinaryField)
        ]

    @functools.cache  # noqa: B019 (a few inserters, each as long-lived as the process)
    def _statement(self, vendor: str, rows: int, returning: bool) -> str:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in self.fields)
        row = "(" + ", ".join(["%s"] * len(self.fields)) + ")"
        sql = f"INSERT INTO {quote(self.model._meta.db_table)} ({columns}) VALUES " + ", ".join([row] * rows)
        if returning:
            sql += f" RETURNING {quote(self.model._meta.pk.column)}"
        return sql

    def insert(self, rows: Sequence[Sequence[Any]], *, returning_ids: bool = False) -> list[int]:
        """Insert `rows` in the current transaction; with `returning_ids`, return the new
        primary keys in the order of `rows` (as bulk_create does on SQLite and PostgreSQL)."""
        ids: list[int] = []
        if not rows:
            return ids
        converters = self._converters
        per_statement = max(1, connection.ops.bulk_batch_size(self.fields, rows))
        returning = returning_ids and connection.features.can_return_rows_from_bulk_insert
        if returning_ids and not returning:
            per_statement = 1  # an older SQLite: one row at a time, its id from lastrowid
        with connection.cursor() as cursor:
            for start in range(0, len(rows), per_statement):
                chunk = rows[start : start + per_statement]
                params: list[Any] = []
                last: dict[int, tuple[Any, Any]] = {}  # column: (value, its database form)
                for row in chunk:
                    if converters:
                        row = list(row)
                        for i, prepare in converters:
                            # Rows of one batch share values (its time): converted once.
                            value = row[i]
                            seen = last.get(i)
                            if seen is None or seen[0] is not value:
                                seen = last[i] = (value, prepare(value, connection))
                            row[i] = seen[1]
                    params.extend(row)
                cursor.execute(self._statement(connection.vendor, len(chunk), returning), params)
                if returning:
                    ids.extend(pk for (pk,) in cursor.fetchall())
                elif returning_ids:
                    ids.append(cursor.lastrowid)
        return ids
