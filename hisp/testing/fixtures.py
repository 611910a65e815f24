"""pytest fixtures for the loopback server harnesses (registered by ``tests/conftest.py``).

- ``bind_factory``: a :class:`hisp.testing.bind.BindFactory`; ``bind_factory({origin: zone_text})`` starts a
  ``named`` and returns its :class:`~hisp.testing.bind.BindServer`.
- ``slapd_factory``: a :class:`hisp.testing.slapd.SlapdFactory`; ``slapd_factory("ou=dcdt", ldif=...)`` starts a
  ``slapd`` and returns its :class:`~hisp.testing.slapd.SlapdServer`.

Every server a test started is stopped (and its directory removed) when the test ends, pass or fail. Tests
fail, never skip, when the program is not installed (``.ci/run`` installs it): a skipped server test proves nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from hisp.testing.bind import BindFactory
from hisp.testing.slapd import SlapdFactory

__all__ = ["bind_factory", "slapd_factory"]


@pytest.fixture
def bind_factory() -> Iterator[BindFactory]:
    """Start BIND servers on demand; all are stopped after the test. Skips when ``named`` is missing."""
    if shutil.which("named") is None:
        pytest.fail("BIND named is not installed: apt-get install bind9 bind9-dnsutils (.ci/run does)")
    factory = BindFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def slapd_factory() -> Iterator[SlapdFactory]:
    """Start OpenLDAP servers on demand; all are stopped after the test. Skips when ``slapd`` is missing."""
    if shutil.which("slapd") is None:
        pytest.fail("OpenLDAP slapd is not installed: apt-get install slapd ldap-utils (.ci/run does)")
    factory = SlapdFactory()
    try:
        yield factory
    finally:
        factory.close()
