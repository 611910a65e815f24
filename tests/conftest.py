"""Shared test helpers: where the fixtures live and the pinned validation time.

Fixtures are read in place from the shared fixture tree (see its MANIFEST.md for provenance); they are
never copied into this repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hisp.adapters.storage import SqlStore
from hisp.adapters.storage.testing import backends, scratch_database

#: The loopback server fixtures (bind_factory, slapd_factory) for every test directory.
pytest_plugins = ("hisp.testing.fixtures",)

#: The shared fixture tree (public test data from other projects, byte for byte).
FIXTURES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures").resolve()

#: The pinned "now" of the tests: several fixture certificates are valid then and expired later.
AT = datetime(2026, 11, 30, 12, tzinfo=UTC)


def fixture_bytes(relpath: str) -> bytes:
    """The bytes of a fixture file, e.g. ``fixture_bytes("ett/certificates/ett.healthit.gov.der")``."""
    return (FIXTURES / relpath).read_bytes()


@pytest.fixture(scope="session")
def at() -> datetime:
    """The pinned validation time :data:`AT`."""
    return AT


@pytest.fixture(params=backends())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A scratch database's URL, once per backend the run has (SQLite always, PostgreSQL when
    HISP_TEST_POSTGRES_URL is set), dropped afterwards: the storage tests' database."""
    with scratch_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[SqlStore]:
    """A store on :func:`db_url`, bodies over 1024 bytes spooled under ``tmp_path``."""
    opened = SqlStore.open(db_url, spool_dir=tmp_path / "spool", inline_max=1024)
    yield opened
    opened.close()


@pytest.fixture(autouse=True, scope="session")
def _loopback_only() -> object:
    """Tests talk to servers on loopback only: refuse, in this process, to resolve any other host name.

    Fixture certificates carry real CRL and AIA URLs (ca.directca.org, ...); a test that forgot
    ``revocation=off`` must fail here, not send a query off the machine.
    """
    import ipaddress
    import socket

    real = socket.getaddrinfo

    def guarded(host: object, *args: object, **kwargs: object) -> object:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "localhost", "localhost.localdomain"):
            try:
                loopback = ipaddress.ip_address(str(name).strip("[]")).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise socket.gaierror(socket.EAI_NONAME, f"test guard: only loopback hosts, not {name!r}")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", guarded)
        yield None
