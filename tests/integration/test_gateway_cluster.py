"""Several ``hisp serve`` processes on one PostgreSQL database sharing the queue, and SIGHUP.

What this proves (issue 5, "two nodes on one PostgreSQL sharing the queue"; DESIGN.md section 1):

- two nodes sharing one database and one spool directory: messages submitted to either node's backbone are
  each delivered exactly once (maildir files and ``deliver`` audit events counted), large bodies go through
  the shared spool, and both nodes do part of the work;
- SIGKILL of one node while it holds claimed jobs (one in the middle of an SMTP transaction with the EHR):
  the other node reclaims them when their lease expires, and every message reaches the EHR exactly once;
- SIGHUP (``systemctl reload``): the node stays up and serving, trust anchors added to the configuration are
  in force at once, and a broken configuration is reported while the running one is kept.

The PostgreSQL tests run only when ``HISP_TEST_POSTGRES_URL`` is set (a fresh schema per test).
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope, Session

from hisp.adapters.smtp_relay import client_tls_context
from hisp.adapters.storage import SqlStore
from hisp.adapters.storage.testing import postgres_url, scratch_database
from hisp.commands.demo import RECIPIENT, SENDER, DemoSetup, attachment_of, prepare, referral
from hisp.ports import AuditKind, Direction, RecipientState
from hisp.testing.pki import seal
from hisp.testing.process import free_port

ROOT = Path(__file__).resolve().parents[2]
#: These nodes run without the clinic's HISP: processed MDNs to it would only be retried (and slow the stop).
NO_MDN = "send_mdn = false\n"
QUEUE = "retry_initial = 0.5\nretry_maximum = 1\nlifetime = 120\nlease = 2\nworkers = 2\npoll_interval = 0.2\n"
postgres = pytest.mark.skipif(postgres_url() is None, reason="HISP_TEST_POSTGRES_URL is not set")
pytestmark = pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")


def start(config: Path, port: int, log: Path, workers: int = 2) -> subprocess.Popen[bytes]:
    """``hisp serve -c config`` in a new process (one process, ``workers`` worker tasks: ``[queue] workers`` is
    set in the file), once it listens on ``port``; stderr goes to ``log``."""
    config.write_text(re.sub(r"(?m)^workers = \d+$", f"workers = {workers}", config.read_text()))
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "hisp.cli", "serve", "-c", str(config), "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"hisp serve did not start listening: {log.read_text()}")


@contextmanager
def serving(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    """Stop every process still running at the end (SIGTERM, then SIGKILL)."""
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def node_configs(setup: DemoSetup, url: str, spool: Path) -> list[tuple[Path, int]]:
    """Two nodes of the hospital HISP on one database and one spool: ``hospital-a`` and ``hospital-b``, each with
    its own backbone port and host name (its EHLO name towards the EHR)."""
    text = setup.hospital.config.read_text()
    assert text.count(f"port = {setup.hospital.backbone}\n") == 1
    made = []
    for name, port in (("a", setup.hospital.backbone), ("b", free_port())):
        config = setup.hospital.config.with_name(f"hisp-{name}.toml")
        config.write_text(
            text.replace('name = "hospital"', f'name = "hospital-{name}"')
            .replace('hostname = "mx.direct.hospital.example"', f'hostname = "{name}.mx.direct.hospital.example"')
            .replace(f"port = {setup.hospital.backbone}\n", f"port = {port}\n")
            .replace('url = "sqlite:///hisp.sqlite3"', f'url = "{url}"\nspool_dir = "{spool}"')
        )
        made.append((config, port))
    return made


def sealed_for(setup: DemoSetup, attachment: bytes, *, to: bytes | None = None) -> bytes:
    """A referral from dr.smith to dr.jones carrying ``attachment``, signed and encrypted as a peer HISP sends it."""
    at = datetime.now(UTC)
    plain = referral(attachment, "note.xml", at)
    if to is not None:
        plain = plain.replace(f"To: Dr. Jones <{RECIPIENT}>".encode(), b"To: " + to)
    return seal(plain, [setup.issued["smith"].credential], [setup.issued["jones"].certificate], at=at)


async def send(port: int, message: bytes) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=20)
    await client.connect()
    try:
        await client.starttls(tls_context=client_tls_context())
        _, reply = await client.sendmail(SENDER, [RECIPIENT], message)
    finally:
        await client.quit()
    return reply


def document(index: int, size: int) -> bytes:
    head = f"<ClinicalDocument n='{index}'>".encode()
    return head + b"x" * max(0, size - len(head)) + b"</ClinicalDocument>\n"


@postgres
def test_two_nodes_share_the_queue_and_spool_each_message_delivered_once(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUEUE, notifications=NO_MDN)
    spool = tmp_path / "shared-spool"
    maildir = setup.hospital.directory / "ehr" / "Maildir" / "new"
    # every third message is larger than the 64 KiB kept in the database: its body goes to the shared spool
    sent = {document(i, 100_000 if i % 3 == 0 else 2_000) for i in range(12)}
    with scratch_database("postgresql", tmp_path) as url:
        (config_a, port_a), (config_b, port_b) = node_configs(setup, url, spool)
        a = start(config_a, port_a, tmp_path / "a.log")
        b = start(config_b, port_b, tmp_path / "b.log")
        with serving(a, b):
            async def submit_all() -> list[str]:
                ports = [port_a, port_b]
                return await asyncio.gather(
                    *(send(ports[i % 2], sealed_for(setup, doc)) for i, doc in enumerate(sorted(sent)))
                )

            replies = asyncio.run(submit_all())
            assert all(r.startswith("2.0.0 Ok: queued as") for r in replies), replies
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(list(maildir.glob("*"))) < len(sent):
                time.sleep(0.1)
            time.sleep(1.0)  # a duplicate would land now
        delivered = [attachment_of(f.read_bytes(), "note.xml") for f in maildir.glob("*")]
        assert len(delivered) == len(sent) and set(delivered) == sent

        store = SqlStore.open(url, spool_dir=spool, migrate=False)
        try:
            messages = store.list_messages(direction=Direction.INCOMING)
            assert len(messages) == len(sent)
            assert all(r.state is RecipientState.DELIVERED for m in messages for r in m.recipients)
            assert sum(m.spooled for m in messages) == 4  # the 100 KB ones, in the one spool both nodes use
            assert len([f for f in spool.rglob("*") if f.is_file()]) == 4
            delivers = [e for e in store.events() if e.kind is AuditKind.DELIVER]
            assert sorted(e.message_id or "" for e in delivers) == sorted(m.id for m in messages)  # one each
            accepts = [e for e in store.events() if e.kind is AuditKind.ACCEPT]
            assert {e.node for e in accepts} == {"hospital-a", "hospital-b"}
            assert {e.node for e in delivers} == {"hospital-a", "hospital-b"}  # both nodes did part of the work
            for message in messages:
                assert store.raw(message.id).startswith(b"X-Direct-Trust: pass;")  # any node can read any body
        finally:
            store.close()
    assert "hisp: node hospital-a ready" in (tmp_path / "a.log").read_text()


class SlowEhr:
    """The EHR's SMTP server, shared by both nodes. A RCPT from the node named ``stall`` (its EHLO name) is not
    answered until :attr:`release` is set (an EHR stuck mid-transaction); the others take ``delay`` seconds.
    Keeps each message with the EHLO name of the node that sent it."""

    def __init__(self, stall: str, delay: float) -> None:
        self.stall = stall
        self.delay = delay
        self.release = asyncio.Event()
        self.waiting: list[str] = []
        self.received: list[tuple[str, bytes]] = []

    async def handle_RCPT(
        self, server: AioSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        who = str(session.host_name)
        self.waiting.append(who)
        try:
            if who == self.stall:
                await self.release.wait()
            else:
                await asyncio.sleep(self.delay)
        finally:
            self.waiting.remove(who)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((str(session.host_name), bytes(envelope.original_content or b"")))
        return "250 2.0.0 Ok"


@postgres
def test_node_killed_with_claims_the_other_reclaims_them_each_message_delivered_once(tmp_path: Path) -> None:
    ehr_port = free_port()
    setup = prepare(
        tmp_path, datetime.now(UTC), hospital_endpoint=f"smtp://127.0.0.1:{ehr_port}", queue=QUEUE,
        notifications=NO_MDN,
    )
    sent = [document(i, 1_000) for i in range(8)]
    ehr = SlowEhr(stall="a.mx.direct.hospital.example", delay=0.2)
    with scratch_database("postgresql", tmp_path) as url:
        (config_a, port_a), (config_b, port_b) = node_configs(setup, url, tmp_path / "shared-spool")

        async def submit(port: int, documents: list[bytes]) -> None:
            replies = await asyncio.gather(*(send(port, sealed_for(setup, doc)) for doc in documents))
            assert all(r.startswith("2.0.0 Ok: queued as") for r in replies), replies

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            sink = await loop.create_server(lambda: AioSMTP(ehr, decode_data=False), "127.0.0.1", ehr_port)
            a = await asyncio.to_thread(start, config_a, port_a, tmp_path / "a.log", 1)
            b: subprocess.Popen[bytes] | None = None
            try:
                with serving(a):
                    await submit(port_a, sent[:3])
                    deadline = loop.time() + 15
                    while ehr.stall not in ehr.waiting:  # node a holds a claim, mid-transaction with the EHR
                        assert loop.time() < deadline, "node a never began a delivery"
                        await asyncio.sleep(0.02)
                    b = await asyncio.to_thread(start, config_b, port_b, tmp_path / "b.log", 2)
                    with serving(b):
                        await asyncio.gather(submit(port_a, sent[3:5]), submit(port_b, sent[5:]))
                        a.send_signal(signal.SIGKILL)  # with its claims, one of them in the middle of SMTP
                        await asyncio.to_thread(a.wait, 10)
                        deadline = loop.time() + 30
                        while len(ehr.received) < len(sent) and loop.time() < deadline:
                            await asyncio.sleep(0.1)
                        await asyncio.sleep(1.0)  # a second copy would arrive now
            finally:
                ehr.release.set()
                sink.close()
                await sink.wait_closed()

        asyncio.run(scenario())
        documents = [attachment_of(data, "note.xml") for _, data in ehr.received]
        assert sorted(d or b"" for d in documents) == sorted(sent)  # every message, exactly once
        assert {who for who, _ in ehr.received} == {"b.mx.direct.hospital.example"}
        assert all(data.startswith(b"X-Direct-Trust: pass;") for _, data in ehr.received)

        store = SqlStore.open(url, migrate=False)
        try:
            messages = store.list_messages(direction=Direction.INCOMING)
            assert len(messages) == len(sent)
            assert all(r.state is RecipientState.DELIVERED for m in messages for r in m.recipients)
            delivers = [e for e in store.events() if e.kind is AuditKind.DELIVER]
            assert sorted(e.message_id or "" for e in delivers) == sorted(m.id for m in messages)  # one each
            assert {e.node for e in store.events() if e.kind is AuditKind.ACCEPT} == {"hospital-a", "hospital-b"}
            reclaimed = [
                (m.id, a) for m in messages for a in store.show(m.id).attempts if "reclaimed by hospital-b" in a.reply
            ]
            assert reclaimed, "node b reclaimed nothing"
            for message_id, attempt in reclaimed:
                assert attempt.node == "hospital-a"  # the lost attempt is the dead node's
                (deliver,) = [e for e in delivers if e.message_id == message_id]
                assert deliver.node == "hospital-b"
        finally:
            store.close()


def test_sighup_reloads_trust_keeps_serving_and_survives_a_broken_config(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUEUE, notifications=NO_MDN)
    config = setup.hospital.config
    full = config.read_text()
    clinic_anchor = f'[[trust.anchor]]\nfile = "{setup.anchors["clinic-ca"]}"\ndomains = ["direct.hospital.example"]\n'
    assert clinic_anchor in full
    config.write_text(full.replace(clinic_anchor, ""))  # at start the hospital does not trust the clinic yet
    log = tmp_path / "serve.log"
    maildir = setup.hospital.directory / "ehr" / "Maildir" / "new"

    def hup_and_wait(needle: str, count: int) -> None:
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while log.read_text().count(needle) < count:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    process = start(config, setup.hospital.backbone, log)
    with serving(process):
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            asyncio.run(send(setup.hospital.backbone, sealed_for(setup, b"<first/>")))
        assert refused.value.code == 554 and "untrusted" in refused.value.message

        config.write_text(full)
        hup_and_wait("hisp: configuration reloaded", 1)
        assert asyncio.run(send(setup.hospital.backbone, sealed_for(setup, b"<second/>"))).startswith("2.0.0 Ok")

        config.write_text(full.replace("[queue]", "[queue\n"))  # not TOML any more
        hup_and_wait("hisp: configuration reload failed", 1)
        assert "keeping the running configuration" in log.read_text()
        assert "not valid TOML" in log.read_text()
        assert asyncio.run(send(setup.hospital.backbone, sealed_for(setup, b"<third/>"))).startswith("2.0.0 Ok")

        config.write_text(full.replace(clinic_anchor, clinic_anchor.replace("clinic-ca.pem", "missing.pem")))
        hup_and_wait("hisp: configuration reload failed", 2)  # an anchor file that is gone: still the old trust
        assert asyncio.run(send(setup.hospital.backbone, sealed_for(setup, b"<fourth/>"))).startswith("2.0.0 Ok")

        deadline = time.monotonic() + 15
        while len(list(maildir.glob("*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered = sorted(attachment_of(f.read_bytes(), "note.xml") or b"" for f in maildir.glob("*"))
        assert delivered == [b"<fourth/>", b"<second/>", b"<third/>"]
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log.read_text()
    assert "hisp: stopped" in log.read_text()
