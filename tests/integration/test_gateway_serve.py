"""``hisp serve`` as a process: killed with SIGKILL between the 250 reply and delivery, restarted, the message is
delivered exactly once; SIGTERM stops it cleanly (exit 0).

What this proves: DESIGN.md section 1 ("a message answered 250 is on disk first, and leaves the queue only
delivered or bounced") across a crash, with the lease bringing back the job the dead process held.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP

from hisp.adapters.smtp_relay import client_tls_context
from hisp.commands.demo import RECIPIENT, SENDER, prepare, referral
from hisp.testing.pki import seal
from hisp.testing.process import free_port

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "retry_initial = 0.5\nretry_maximum = 1\nlifetime = 120\nlease = 2\nworkers = 2\npoll_interval = 0.2\n"


def _start(config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hisp.cli", "serve", "-c", str(config), "--workers", "2", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError("hisp serve did not start listening")


class _Ehr:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append(bytes(envelope.original_content))  # type: ignore[attr-defined]
        return "250 2.0.0 Ok"


@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
def test_kill_9_between_250_and_delivery_then_delivered_exactly_once(tmp_path: Path) -> None:
    ehr_port = free_port()
    setup = prepare(tmp_path, datetime.now(UTC), hospital_endpoint=f"smtp://127.0.0.1:{ehr_port}", queue=QUEUE)
    at = datetime.now(UTC)
    sealed = seal(
        referral(b"<ClinicalDocument/>\n", "note.xml", at), [setup.issued["smith"].credential],
        [setup.issued["jones"].certificate], at=at,
    )
    server = _start(setup.hospital.config, setup.hospital.backbone)
    try:
        async def send() -> str:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.hospital.backbone, start_tls=False)
            await client.connect()
            await client.starttls(tls_context=client_tls_context())
            _, reply = await client.sendmail(SENDER, [RECIPIENT], sealed)
            await client.quit()
            return reply

        assert asyncio.run(send()).startswith("2.0.0 Ok: queued as")  # durable now; the EHR is still down
        time.sleep(0.5)  # a worker has claimed it and failed at least once
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(10)

    ehr = _Ehr()

    async def restart_and_receive() -> None:
        loop = asyncio.get_running_loop()
        sink = await loop.create_server(lambda: AioSMTP(ehr, decode_data=False), "127.0.0.1", ehr_port)
        restarted = await asyncio.to_thread(_start, setup.hospital.config, setup.hospital.backbone)
        try:
            deadline = loop.time() + 20
            while not ehr.received and loop.time() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(3)  # longer than the lease: a second copy would have come by now
        finally:
            restarted.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(restarted.wait, 15)
            sink.close()
            await sink.wait_closed()
        assert code == 0, restarted.stderr.read().decode() if restarted.stderr else ""

    asyncio.run(restart_and_receive())
    assert len(ehr.received) == 1
    assert ehr.received[0].startswith(b"X-Direct-Trust: pass;")
    assert os.path.exists(setup.hospital.directory / "hisp.sqlite3")
