"""Run the store's Alembic migrations from code: :func:`upgrade` at start-up, no ``alembic.ini`` needed.

Alembic logs its set-up at INFO on every run ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.",
"setup plugin ...", "Running upgrade ..."), which is noise in an operator's log at every node start. While this
module runs Alembic, the ``alembic`` loggers are raised to WARNING unless the ``hisp`` logger is enabled for
DEBUG (``hisp serve --log-level debug``) or the operator has set a level on the ``alembic`` logger; the level is
put back afterwards. What the migrations do is not changed; only what Alembic says about them.

Spec: issue 5 ("Alembic migrations"); DESIGN.md section 3 (several nodes may share one PostgreSQL).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from hisp.adapters.storage.engine import open_engine
from hisp.errors import StorageError

__all__ = ["MIGRATIONS_DIR", "current_revision", "head_revision", "upgrade"]

#: The Alembic script directory inside the package (shipped in the wheel).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: PostgreSQL advisory lock key held while migrating, so nodes starting together migrate one at a time.
_LOCK_KEY = 0x4849_5350  # "HISP"


#: Alembic's root logger; ``alembic.runtime.migration``, ``alembic.runtime.plugins`` and the others inherit its level.
_ALEMBIC_LOGGER = "alembic"

_quiet_lock = threading.Lock()
_quiet_depth = 0  # callers inside _quiet_alembic (threads may migrate several databases at once)
_quiet_saved: int | None = None  # the alembic logger's level before the outermost caller raised it


@contextlib.contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Raise the ``alembic`` logger to WARNING for the duration, unless ``hisp`` logs at DEBUG.

    Leaves the logger alone when ``hisp`` is enabled for DEBUG or the ``alembic`` logger already has a level of
    its own (an operator's logging configuration wins). Re-entrant and thread-safe: the level is set by the
    first caller in and restored by the last one out.
    """
    global _quiet_depth, _quiet_saved
    logger = logging.getLogger(_ALEMBIC_LOGGER)
    with _quiet_lock:
        if _quiet_depth == 0:
            if logging.getLogger("hisp").isEnabledFor(logging.DEBUG) or logger.level != logging.NOTSET:
                _quiet_saved = None
            else:
                _quiet_saved = logger.level
                logger.setLevel(logging.WARNING)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                logger.setLevel(_quiet_saved)
                _quiet_saved = None


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision the code knows.

    :raises StorageError: the migrations directory is missing or has several heads.
    """
    try:
        head = ScriptDirectory.from_config(_config()).get_current_head()
    except Exception as exc:  # alembic raises CommandError and others for a broken script directory
        raise StorageError(f"store migrations unreadable: {exc}") from exc
    if head is None:
        raise StorageError("store migrations have no head revision")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision a database is at, ``None`` for an empty one.

    :raises StorageError: the database cannot be read.
    """
    try:
        with _quiet_alembic(), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StorageError(f"store revision cannot be read: {exc}") from exc


def upgrade(engine_url: str | Engine, revision: str = "head") -> str | None:
    """Bring a database to ``revision`` (default the newest); a database already there is left unchanged.

    Runs in one transaction (DDL is transactional on PostgreSQL and SQLite); on PostgreSQL it holds an advisory
    lock meanwhile, so that several nodes starting at once do not race. Alembic's INFO records are suppressed
    unless the ``hisp`` logger is at DEBUG (see the module docstring).

    :param engine_url: a storage URL (see :func:`~hisp.adapters.storage.engine.open_engine`) or an engine.
    :param revision: an Alembic revision id, or ``"head"``.
    :returns: the revision the database is at afterwards.
    :raises ConfigError: the URL is not usable.
    :raises StorageError: the database cannot be reached or a migration failed (nothing was changed).

    Spec: issue 5 ("SQLAlchemy 2 models and Alembic migrations"), DESIGN.md section 3.
    """
    engine = open_engine(engine_url) if isinstance(engine_url, str) else engine_url
    config = _config()
    try:
        with _quiet_alembic(), engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return current_revision(engine)
    except StorageError:
        raise
    except Exception as exc:  # SQLAlchemyError, alembic's CommandError, a failing migration script
        raise StorageError(f"store migration to {revision} failed: {exc}") from exc
    finally:
        if isinstance(engine_url, str):
            engine.dispose()
