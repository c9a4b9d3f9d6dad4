"""Throwaway PostgreSQL databases for tests that run Everlock in other processes.

Such processes cannot share the test run's database (pytest-django's test database lives
inside the test's transaction), so each gets a database of its own on the same server.
"""

from __future__ import annotations

import psycopg


def _admin_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def create_database(url: str, name: str) -> str:
    """Create the database `name` on the server of `url`; return its URL."""
    with psycopg.connect(_admin_url(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{url.rsplit('/', 1)[0]}/{name}"


def drop_database(url: str, name: str) -> None:
    """Drop the database `name` on the server of `url`, closing its connections."""
    with psycopg.connect(_admin_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
