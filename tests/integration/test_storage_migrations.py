"""Migrations: an empty database is brought to the newest revision, a second upgrade changes nothing, the migrated
schema is exactly the models', and the Alembic environment ships inside the package.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from hisp.adapters.storage import SqlStore, current_revision, default_url, head_revision, open_engine, upgrade
from hisp.adapters.storage.migrate import MIGRATIONS_DIR
from hisp.adapters.storage.models import Base
from hisp.errors import ConfigError, StorageError
from hisp.ports import Direction, Envelope

TABLES = {
    "messages",
    "recipients",
    "delivery_attempts",
    "notifications",
    "audit_events",
    "tracked_messages",
    "tracked_recipients",
    "tracking_events",
    "alembic_version",
}


def test_upgrade_an_empty_database_then_again(db_url: str) -> None:
    engine = open_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) == set()
        assert upgrade(db_url) == head_revision()
        assert set(inspect(engine).get_table_names()) == TABLES
        store = SqlStore(engine)
        stored = store.enqueue(
            Envelope(Direction.OUTGOING, "a@x.example", ("b@y.example",)), b"kept", now=datetime(2026, 1, 1, tzinfo=UTC)
        )
        assert upgrade(db_url) == head_revision()  # idempotent: nothing to do, data untouched
        assert upgrade(engine) == head_revision()
        assert store.raw(stored.id) == b"kept"
        assert set(inspect(engine).get_table_names()) == TABLES
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    upgrade(db_url)
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_the_alembic_environment_ships_in_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("r0001_*.py"))
    assert list((MIGRATIONS_DIR / "versions").glob("r0002_*.py"))
    assert head_revision() == "0002"


def test_default_url_is_a_sqlite_file_beside_the_config(tmp_path: Path) -> None:
    url = default_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'hisp.sqlite3'}"
    assert upgrade(url) == head_revision()
    assert (tmp_path / "hisp.sqlite3").is_file()


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "not a url"],
    ids=["memory", "memory-explicit", "mysql", "garbage"],
)
def test_unusable_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        open_engine(url)


def test_unreachable_database_raises_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        upgrade(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}")


def _alembic_info(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("alembic") and r.levelno <= logging.INFO]


def test_upgrade_of_a_fresh_sqlite_file_says_nothing_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every node start migrates: Alembic's "Context impl SQLiteImpl." and the like stay out of an INFO log."""
    caplog.set_level(logging.INFO)
    url = f"sqlite:///{tmp_path / 'hisp.sqlite3'}"
    assert upgrade(url) == head_revision()
    assert upgrade(url) == head_revision()  # and again, on a current database
    assert _alembic_info(caplog) == []
    assert logging.getLogger("alembic").level == logging.NOTSET  # put back afterwards
    engine = open_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES  # the migrations themselves ran as before
    finally:
        engine.dispose()


def test_upgrade_at_debug_keeps_alembic_s_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``hisp serve --log-level debug``: Alembic says what it runs."""
    caplog.set_level(logging.DEBUG, logger="hisp")
    caplog.set_level(logging.INFO)
    assert upgrade(f"sqlite:///{tmp_path / 'hisp.sqlite3'}") == head_revision()
    assert any(line.startswith("Running upgrade") for line in _alembic_info(caplog))


def test_an_operator_s_alembic_level_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="alembic")  # the operator's own logging configuration
    assert upgrade(f"sqlite:///{tmp_path / 'hisp.sqlite3'}") == head_revision()
    assert any(line.startswith("Running upgrade") for line in _alembic_info(caplog))
    assert logging.getLogger("alembic").level == logging.INFO
