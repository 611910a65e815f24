"""Test databases for the storage tests: a SQLite file always, PostgreSQL when ``HISP_TEST_POSTGRES_URL`` is set.

Each PostgreSQL test database is a fresh schema (``hisp_test_<random>``) selected through the connection's
``search_path``, dropped with everything in it afterwards, so that concurrent runs never collide.

Never point ``HISP_TEST_POSTGRES_URL`` at a database that matters: tests create and drop schemas in it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, text

__all__ = ["POSTGRES_ENV", "backends", "postgres_url", "scratch_database"]

#: The environment variable naming the PostgreSQL server the tests may use.
POSTGRES_ENV = "HISP_TEST_POSTGRES_URL"


def postgres_url() -> str | None:
    """The PostgreSQL URL from the environment, or ``None``."""
    return os.environ.get(POSTGRES_ENV) or None


def backends() -> list[str]:
    """``["sqlite"]``, plus ``"postgresql"`` when :data:`POSTGRES_ENV` is set."""
    return ["sqlite", "postgresql"] if postgres_url() else ["sqlite"]


@contextmanager
def scratch_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test; yields its URL.

    :param backend: ``"sqlite"`` (a file in ``tmp_path``) or ``"postgresql"`` (a new schema, dropped after).
    :param tmp_path: the test's temporary directory.
    :raises RuntimeError: ``"postgresql"`` without :data:`POSTGRES_ENV`, or an unknown backend.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'hisp.sqlite3'}"
        return
    base = postgres_url()
    if backend != "postgresql" or base is None:
        raise RuntimeError(f"no test database for {backend!r} (set {POSTGRES_ENV} for PostgreSQL)")
    schema = f"hisp_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in base else "?"
        try:
            yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
