"""Database engines for the store: SQLite (WAL) embedded, PostgreSQL (psycopg 3) for production.

SQLite is set up for one writer at a time with durable commits:

- ``journal_mode=WAL``: readers never block the writer; ``synchronous=FULL``: each commit fsyncs the WAL, so a
  committed enqueue survives power loss (NORMAL could lose the last commits, which would break the promise
  behind a 250 reply);
- every transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock at once, so a claim's read and
  its update are one atomic step (the SQLite equivalent of ``FOR UPDATE SKIP LOCKED``, serialised instead of
  skipping), and no transaction fails half-way on a lock upgrade; except on an engine made by
  :func:`read_only`, for transactions that only read: those start with a deferred ``BEGIN`` and read a
  snapshot (WAL), neither waiting for the writer's fsynced commit nor holding it up;
- ``busy_timeout``: a writer waits for the lock instead of failing; ``foreign_keys=ON``.

PostgreSQL runs at READ COMMITTED with ``pool_pre_ping``; the queue uses ``SELECT ... FOR UPDATE SKIP LOCKED``.

Spec: DESIGN.md section 3 ("Storage"), issue 5 ("SQLite in WAL mode is the embedded default").
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from hisp.errors import ConfigError

__all__ = ["DEFAULT_DATABASE_NAME", "default_url", "open_engine", "read_only"]

#: The SQLite file created beside the configuration file when no storage URL is configured.
DEFAULT_DATABASE_NAME = "hisp.sqlite3"

#: Milliseconds a SQLite writer waits for the lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_url(config_dir: Path) -> str:
    """The embedded default storage URL: a SQLite file beside the configuration.

    :param config_dir: the directory of the configuration file.
    :returns: ``sqlite:////abs/path/hisp.sqlite3``.

    Spec: issue 5 ("storage URL (default a SQLite file beside the config)").
    """
    return f"sqlite:///{(config_dir / DEFAULT_DATABASE_NAME).resolve()}"


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver must not open transactions on its own: BEGIN IMMEDIATE is emitted in _sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise ConfigError("SQLite database cannot use WAL mode (an in-memory database?)", mode=mode)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


#: The execution option that marks an engine's transactions as read-only (see :func:`read_only`).
_READ_ONLY = "hisp_read_only"


def _sqlite_begin(connection: Any) -> None:
    # A read-only transaction needs no write lock: deferred, it reads a WAL snapshot and never upgrades.
    # Sent on the driver's connection: a statement through SQLAlchemy costs more Python than the BEGIN itself,
    # and every transaction has one. Its failure (the lock not had within busy_timeout) is raised as
    # SQLAlchemy's OperationalError, as a statement's would be.
    statement = "BEGIN" if connection.get_execution_options().get(_READ_ONLY, False) else "BEGIN IMMEDIATE"
    try:
        connection.connection.driver_connection.execute(statement)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


def read_only(engine: Engine) -> Engine:
    """The same engine (pool, events) for transactions that only read: on SQLite they begin deferred instead of
    ``BEGIN IMMEDIATE`` (see the module docstring); on PostgreSQL nothing changes.

    A transaction on it must not write: on SQLite a write would have to upgrade its lock and could fail with
    ``SQLITE_BUSY`` (or read a snapshot older than the data it then changes).

    :param engine: from :func:`open_engine`.
    :returns: an engine sharing its connections.
    """
    return engine.execution_options(**{_READ_ONLY: True})


def open_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for a storage URL, set up as described in the module docstring.

    :param url: ``sqlite:///path`` (a file; WAL needs one) or ``postgresql+psycopg://user@host:port/db``.
    :param echo: log every statement (debugging).
    :returns: the engine; connections are opened lazily.
    :raises ConfigError: the URL cannot be parsed or names a database kind other than SQLite or PostgreSQL.

    Spec: DESIGN.md section 3 ("SQLite (WAL) is the embedded default; PostgreSQL is the production store").
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"storage URL cannot be parsed: {exc}") from exc
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ConfigError("storage URL: SQLite needs a file (WAL mode), not an in-memory database")
            engine = create_engine(
                parsed, echo=echo, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            )
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
            return engine
        if backend == "postgresql":
            return create_engine(parsed, echo=echo, pool_pre_ping=True)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise ConfigError(f"storage URL {parsed.render_as_string(hide_password=True)}: {exc}") from exc
    raise ConfigError(
        "storage URL must be sqlite:///FILE or postgresql+psycopg://...",
        url=parsed.render_as_string(hide_password=True),
    )
