"""Fixtures shared by the storage tests: every backend the run has (SQLite always, PostgreSQL when
HISP_TEST_POSTGRES_URL is set), each a scratch database dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hisp.adapters.storage import SqlStore
from hisp.adapters.storage.testing import backends, scratch_database


@pytest.fixture(params=backends())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A scratch database's URL, once per backend."""
    with scratch_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[SqlStore]:
    """A store on :func:`db_url`, bodies over 1024 bytes spooled under ``tmp_path``."""
    opened = SqlStore.open(db_url, spool_dir=tmp_path / "spool", inline_max=1024)
    yield opened
    opened.close()
