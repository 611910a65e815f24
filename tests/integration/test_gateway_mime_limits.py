"""``[limits.mime]`` reaches the security agent of a running node (issue 2, "caps from configuration")."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from test_gateway_nodes import ATTACHMENT, QUICK, Steps, node, run

from hisp.adapters.smtp_relay import client_tls_context
from hisp.commands.demo import RECIPIENT, SENDER, prepare, referral
from hisp.ports import AuditKind, Direction
from hisp.testing.pki import seal

pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


@pytest.mark.parametrize("max_parts", [3, 1000], ids=["3-parts-refused", "1000-parts-accepted"])
def test_configured_part_limit_refuses_a_message_over_it(tmp_path: Path, max_parts: int) -> None:
    """A node configured with ``[limits.mime] max_parts = 3`` refuses (5xx, nothing stored) a Direct message whose
    decrypted MIME tree has more entities; the same message is accepted under a limit it fits."""
    at = datetime.now(UTC)
    setup = prepare(tmp_path, at, queue=QUICK)
    with setup.hospital.config.open("a", encoding="utf-8") as config:
        config.write(f"\n[limits.mime]\nmax_parts = {max_parts}\n")
    message = seal(referral(ATTACHMENT, "note.xml", at), [setup.issued["smith"].credential],
                   [setup.issued["jones"].certificate], at=at)

    async def main() -> None:
        async with node(setup.hospital.config, Steps(), "hospital") as hospital:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.hospital.backbone, start_tls=False)
            await client.connect()
            await client.starttls(tls_context=client_tls_context())
            assert hospital.store is not None
            if max_parts == 3:
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await client.sendmail(SENDER, [RECIPIENT], message)
                assert refused.value.code >= 500 and "parts" in refused.value.message, refused.value.message
                assert hospital.store.list_messages() == []
                (event,) = hospital.store.events()
                assert event.kind is AuditKind.REJECT
            else:
                await client.sendmail(SENDER, [RECIPIENT], message)
                assert len(hospital.store.list_messages(direction=Direction.INCOMING)) == 1  # and its MDN
            await client.quit()

    run(main())
