"""A running node fetches its trust bundles at start and says so when one cannot be had (TB-3).

An operator who configures a community's bundle must see, in the log, whether its anchors are in force: a bundle
that is never fetched means that community's messages are refused, and nothing else would say why.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hisp.addresses import HealthDomain
from hisp.app import Node
from hisp.commands.demo import CLINIC, prepare
from hisp.config import load_config
from hisp.core import devca
from hisp.testing.bundles import make_p7b
from hisp.testing.http import Route, serve_http

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def _with_bundle(config_text: str, url: str) -> str:
    bundle = f'\n[[trust.bundle]]\nname = "community"\nurl = "{url}"\nrefresh = 3600\ndomains = ["{CLINIC}"]\n'
    head, sep, rest = config_text.partition("\n[dns]")
    return head + bundle + sep + rest


@pytest.mark.parametrize("available", [True, False], ids=["served", "404"])
def test_bundle_fetched_at_start_or_its_absence_logged_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, available: bool
) -> None:
    setup = prepare(tmp_path, datetime.now(UTC))
    community = devca.create_ca("Community Anchor", at=datetime.now(UTC) - timedelta(days=1)).certificate
    with serve_http() as server:
        if available:
            server.set_route("/community.p7b", Route(body=make_p7b([community])))
        else:
            server.set_route("/community.p7b", Route(status=404, body=b"not here"))
        config = setup.clinic.config
        config.write_text(_with_bundle(config.read_text(), server.url("/community.p7b")))

        async def main() -> None:
            node = Node(load_config(config), environ=os.environ)
            await node.start()
            try:
                deadline = asyncio.get_running_loop().time() + 10
                while asyncio.get_running_loop().time() < deadline:
                    if any(r.path == "/community.p7b" for r in server.requests) and any(
                        "trust bundle community" in r.getMessage() for r in caplog.records
                    ):
                        break
                    await asyncio.sleep(0.05)
                assert node._stores is not None
                store = node._stores.store_for(HealthDomain.parse(CLINIC))
                anchors = {a.certificate.fingerprint_sha256 for a in store.incoming}
                assert (community.fingerprint_sha256 in anchors) is available
            finally:
                await node.stop(grace=5.0)

        with caplog.at_level(logging.INFO, logger="hisp.app"):
            asyncio.run(main())
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if "trust bundle community" in r.getMessage()]
    if available:
        assert (logging.INFO, "trust bundle community: updated") in messages
    else:
        assert any(level == logging.ERROR and "its anchors are not in force" in text for level, text in messages)
