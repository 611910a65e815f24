"""``hisp serve`` as a process: killed with SIGKILL between the 250 reply and delivery, restarted, the message is
delivered exactly once; SIGTERM stops it cleanly (exit 0). ``hisp serve --workers 2``: two processes of one node.

What this proves: DESIGN.md section 1 ("a message answered 250 is on disk first, and leaves the queue only
delivered or bounced") across a crash, with the lease bringing back the job the dead process held. Issue 5
("``--workers N`` runs N processes (listening sockets shared with SO_REUSEPORT ...) so a node uses all its
cores"): with ``--workers 2`` two child processes listen on the same submission and backbone ports, a referral
submitted over SMTP reaches the EHR exactly once (and its MDNs come back through the shared backbone port),
SIGHUP reaches both children, SIGTERM stops all of them with exit status 0, a child that dies stops the node with
exit status 1, and port 0 is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from click.testing import CliRunner

from hisp.adapters.dns_server import DnsServer
from hisp.adapters.smtp_relay import client_tls_context
from hisp.adapters.storage import SqlStore
from hisp.app import Node
from hisp.cli import main
from hisp.commands.demo import RECIPIENT, SENDER, attachment_of, prepare, referral, submit
from hisp.config import load_config
from hisp.ports import AuditKind, Direction
from hisp.testing.pki import seal
from hisp.testing.process import free_port

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "retry_initial = 0.5\nretry_maximum = 1\nlifetime = 120\nlease = 2\nworkers = 2\npoll_interval = 0.2\n"


def _start(config: Path, port: int) -> subprocess.Popen[bytes]:
    """``hisp serve`` in one process (its ``[queue] workers`` = 2 worker tasks), once it listens on ``port``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hisp.cli", "serve", "-c", str(config), "--log-level", "warning"],
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
    # the clinic's HISP is not running: no processed MDNs to it (they would only be retried, slowing the stop)
    setup = prepare(
        tmp_path, datetime.now(UTC), hospital_endpoint=f"smtp://127.0.0.1:{ehr_port}", queue=QUEUE,
        notifications="send_mdn = false\n",
    )
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


# -- hisp serve --workers 2: two processes of one node ---------------------------------------------------------

#: Seconds allowed for a start or a stop: generous (a loaded 2-core machine starts three interpreters), never a
#: timing assertion: the tests wait for what the processes say, not for a duration.
PATIENCE = 90.0
ATTACHMENT = b"<ClinicalDocument>two processes</ClinicalDocument>\n" * 20


def _serve(config: Path, log: Path, workers: int) -> subprocess.Popen[bytes]:
    """``hisp serve -c config --workers N`` in a new process; its stderr and its children's go to ``log``."""
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "hisp.cli", "serve", "-c", str(config), "--workers", str(workers),
             "--log-level", "warning"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End a supervisor left running by a failed test: SIGTERM (forwarded), then SIGKILL (its children then see
    their supervisor gone and stop on their own)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def _wait_log(process: subprocess.Popen[bytes], log: Path, needle: str, count: int = 1) -> str:
    """The log once ``needle`` appears ``count`` times in it; fails if the process exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while True:
        text = log.read_text()
        if text.count(needle) >= count:
            return text
        assert process.poll() is None, f"exited {process.returncode} before {needle!r}:\n{text}"
        assert loop.time() < deadline, f"no {needle!r} within {PATIENCE:g} s:\n{text}"
        await asyncio.sleep(0.1)


async def _wait_files(directory: Path) -> list[Path]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while loop.time() < deadline:
        files = sorted(directory.glob("*")) if directory.is_dir() else []
        if files:
            return files
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing in {directory} within {PATIENCE:g} s")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc/*/stat``; Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` itself holds a listening socket on (its fds matched to ``/proc/net/tcp*``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
def test_workers_2_two_processes_share_the_ports_deliver_once_reload_and_stop_cleanly(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUEUE)
    clinic = setup.clinic
    assert clinic.submission is not None
    log = tmp_path / "clinic.log"
    hospital_maildir = setup.hospital.directory / "ehr" / "Maildir" / "new"

    async def scenario() -> tuple[int, list[int]]:
        dns = DnsServer(setup.zones(), "127.0.0.1", setup.dns_port)
        await dns.start()
        hospital = Node(load_config(setup.hospital.config), environ=os.environ)  # the peer, in this process
        await hospital.start()
        process = _serve(clinic.config, log, 2)
        try:
            text = await _wait_log(process, log, " ready: ")
            (ready,) = [line for line in text.splitlines() if " ready: " in line]  # the supervisor's, only
            assert ready.startswith(
                f"hisp: node clinic ready: submission on port {clinic.submission}, backbone on port {clinic.backbone}; "
                "2 processes (pids "
            ), ready
            children = _children(process.pid)
            assert len(children) == 2 and all(f"{pid}" in ready for pid in children), (children, ready)
            for pid in children:  # each child holds its own listening socket on both ports
                assert {clinic.submission, clinic.backbone} <= _listening_ports(pid), pid

            reply = await submit(setup, referral(ATTACHMENT, "note.xml", datetime.now(UTC)))
            assert reply.startswith("2.0.0 Ok: queued as")
            (delivered,) = await _wait_files(hospital_maildir)
            assert attachment_of(delivered.read_bytes(), "note.xml") == ATTACHMENT
            await _wait_files(clinic.directory / "ehr" / "Maildir" / "new")  # an MDN, in on the shared backbone

            process.send_signal(signal.SIGHUP)  # forwarded: each child reloads and says so
            text = await _wait_log(process, log, "configuration reloaded", 2)
            assert "hisp: process 1: configuration reloaded" in text
            assert "hisp: process 2: configuration reloaded" in text

            process.send_signal(signal.SIGTERM)  # forwarded: each child finishes and exits 0, then the supervisor
            code = await asyncio.to_thread(process.wait, PATIENCE)
        finally:
            await asyncio.to_thread(_stop, process)
            await hospital.stop(grace=5.0)
            await dns.close()
        return code, children

    code, children = asyncio.run(scenario())
    text = log.read_text()
    assert code == 0, text
    assert not any(_running(pid) for pid in children)
    assert "hisp: process 1: stopped\n" in text and "hisp: process 2: stopped\n" in text
    assert "hisp: stopped\n" in text
    assert len(list(hospital_maildir.iterdir())) == 1  # exactly once
    store = SqlStore.open(load_config(clinic.config).storage.url or "", migrate=False)
    try:
        (sent,) = store.list_messages(direction=Direction.OUTGOING)
        relays = [e for e in store.events() if e.kind is AuditKind.RELAY and e.message_id == sent.id]
        assert len(relays) == 1, relays  # relayed to the hospital once
    finally:
        store.close()


def test_workers_2_a_child_that_dies_stops_the_other_and_exits_1(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUEUE)
    log = tmp_path / "hospital.log"

    async def scenario() -> tuple[int, list[int]]:
        process = _serve(setup.hospital.config, log, 2)
        try:
            await _wait_log(process, log, " ready: ")
            children = _children(process.pid)
            assert len(children) == 2, children
            os.kill(children[0], signal.SIGKILL)  # still our supervisor's child: not reaped, so not reused
            code = await asyncio.to_thread(process.wait, PATIENCE)
        finally:
            await asyncio.to_thread(_stop, process)
        return code, children

    code, children = asyncio.run(scenario())
    text = log.read_text()
    assert code == 1, text
    assert f"(pid {children[0]}) died unexpectedly (killed by SIGKILL); stopped the other processes" in text
    assert "stopped\n" in text.split("died unexpectedly")[0]  # the other one stopped first, cleanly
    assert not any(_running(pid) for pid in children)


def test_workers_2_with_port_0_refused_exit_1(tmp_path: Path) -> None:
    setup = prepare(tmp_path, datetime.now(UTC), queue=QUEUE)
    config = setup.hospital.config
    text = config.read_text()
    assert text.count(f"port = {setup.hospital.backbone}\n") == 1
    config.write_text(text.replace(f"port = {setup.hospital.backbone}\n", "port = 0\n"))
    result = subprocess.run(
        [sys.executable, "-m", "hisp.cli", "serve", "-c", str(config), "--workers", "2"],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        f"hisp: {config}: [listeners.backbone] port = 0 cannot be shared by 2 processes (--workers 2): "
        "configure a fixed port, or run one process"
    )
    assert not (setup.hospital.directory / "hisp.sqlite3").exists()  # refused before anything was opened


def test_serve_help_explains_log_level_sighup_and_exit_statuses() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "SIGHUP" in text and "reload the trust anchors and bundles" in text
    assert "Exit status: 0 after a clean stop, 1 " in text and "2 usage" in text
    log_level = text[text.index("--log-level"):]
    assert "Least severe log records" in log_level.split("[default: info]")[0]
