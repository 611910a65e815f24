"""``[limits.mime] max_parts`` at its edge through a real node (issue 2, caps from configuration): a Direct message
whose decrypted tree has exactly ``max_parts`` entities is accepted; with ``max_parts`` one lower it is refused
with 5xx, nothing stored, one reject event (run like tests/integration/test_gateway_mime_limits.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from test_gateway_nodes import ATTACHMENT, QUICK, Steps, node, run

from hisp.adapters.smtp_relay import client_tls_context
from hisp.commands.demo import RECIPIENT, SENDER, DemoSetup, prepare, referral
from hisp.core.agent import SecurityAgent
from hisp.core.mime import MimeLimits
from hisp.errors import MessageFormatError, TrustError
from hisp.ports import AuditKind, Direction
from hisp.testing.pki import TestPKI, seal

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def _entities(setup: DemoSetup, message: bytes, at: datetime) -> int:
    """The fewest max_parts the receiving agent needs for ``message`` (structure is checked before trust)."""
    unrelated = TestPKI(at=at, name="Unrelated Probe CA").anchors  # trust fails after the structure check
    for limit in range(1, 50):
        agent = SecurityAgent(limits=MimeLimits(max_parts=limit))
        try:
            agent.process_incoming(message, credentials=[setup.issued["jones"].credential],
                                   trust=unrelated, at=at)
        except MessageFormatError as exc:
            if "MIME parts" in exc.message or "body parts" in exc.message:
                continue
            raise
        except TrustError:
            return limit
        return limit
    raise AssertionError("no limit fits")


@pytest.mark.parametrize("over", [0, 1], ids=["exactly-at-max_parts", "one-over-max_parts"])
def test_max_parts_edge_through_a_node(tmp_path: Path, over: int) -> None:
    """AS-14 / issue 2: exactly at the bound is accepted (stored for the edge); one over is refused with 5xx at
    DATA, nothing stored, one reject event."""
    at = datetime.now(UTC)
    setup = prepare(tmp_path, at, queue=QUICK, notifications="send_mdn = false\n")  # no MDN left in flight
    message = seal(referral(ATTACHMENT, "note.xml", at), [setup.issued["smith"].credential],
                   [setup.issued["jones"].certificate], at=at)
    count = _entities(setup, message, at)
    with setup.hospital.config.open("a", encoding="utf-8") as config:
        config.write(f"\n[limits.mime]\nmax_parts = {count - over}\n")

    async def main() -> None:
        async with node(setup.hospital.config, Steps(), "hospital") as hospital:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.hospital.backbone, start_tls=False)
            await client.connect()
            await client.starttls(tls_context=client_tls_context())
            assert hospital.store is not None
            if over:
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await client.sendmail(SENDER, [RECIPIENT], message)
                assert refused.value.code >= 500 and "parts" in refused.value.message
                assert hospital.store.list_messages() == []
                assert [e.kind for e in hospital.store.events()] == [AuditKind.REJECT]
            else:
                await client.sendmail(SENDER, [RECIPIENT], message)
                assert len(hospital.store.list_messages(direction=Direction.INCOMING)) == 1
            await client.quit()

    run(main())
