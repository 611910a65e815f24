#!/usr/bin/env python3
"""Benchmark the whole gateway: two HISPs on loopback, a message submitted at one, delivered at the other's EHR,
and its processed MDN back at the sender's mailbox; and the ceiling the SMTP libraries alone set, measured in
the same run.

Run from the repository root::

    python3 bench/gateway.py [--small 200] [--large 20] [--concurrency 8] [--workers 4] [--db URL] [--quick]
                             [--nodes process|inline] [--node-processes N]

Set up as ``hisp demo`` does (:func:`hisp.commands.demo.prepare`): a temporary PKI, a DNS responder in this
process serving both domains' CERT and MX records (discovery and MX lookup are real; the nodes reach it at the
port their ``[relay] dns_server`` names), two HISPs (``direct.clinic.example`` with submission and backbone
listeners and dr.smith's maildir, ``direct.hospital.example`` with a backbone listener and the EHR's maildir),
each with its own durable store: a SQLite file in WAL mode with ``synchronous = FULL`` (every 250 reply follows
an fsynced commit; each maildir delivery fsyncs the file and ``new/``), or, with ``--db
postgresql+psycopg://...``, one fresh schema per node in that PostgreSQL database (dropped afterwards).

``--nodes process`` (the default, as deployed: two HISPs are two servers): each node is its own ``hisp serve -c
CONFIG`` process (``python -m hisp.cli`` of this checkout, ``--workers N`` with ``--node-processes N``, the
default log level, stderr to a file), started before the timing and ready when its ready line is on stderr;
at the end each gets SIGTERM and must exit 0 (after an error or Ctrl-C too; with SIGKILL after 90 s; on Linux a
node also gets SIGTERM if this process dies first). ``--nodes inline``: both are :class:`hisp.app.Node`
objects in this process (one interpreter: the whole path shares one GIL).

The path of one message: submission (STARTTLS, AUTH) -> clinic queue -> discovery, sign + encrypt -> relay
(STARTTLS) -> hospital: decrypt, verify, trust, queued with its processed MDN in one transaction -> EHR maildir;
and the MDN: hospital queue -> discovery, sign + encrypt -> relay -> clinic: decrypt, verify, trust, matched to
the tracked message -> dr.smith's maildir. A message is finished when (a) it is in the hospital EHR's
``Maildir/new`` and (b) its processed MDN (``Original-Message-ID`` = its Message-ID) is in the clinic's
``ehr/Maildir/new``.

``--concurrency`` SMTP clients (aiosmtplib, STARTTLS with the certificate verified, then AUTH) each keep one
connection and submit messages one after the other from a shared list: ``--small`` referrals with a 10 kB
attachment, then ``--large`` with a 1 MB attachment (``k``/``m`` decimal, as in ``bench/smime.py``). A watcher
sees both maildirs: inline, woken by either node's "delivered" step and scanning every 20 ms; with node
processes, polling every 2 ms (a ``stat`` of each ``new/``, an ``os.scandir`` when it changed). Per size it
prints messages per second (finished messages / (last finish - start)), p50 and p99 of the end-to-end latency
(start of the submission, MAIL FROM, to the MDN seen in the clinic's mailbox), p50 and p99 of the EHR latency (to
the file in the hospital's ``Maildir/new``), the p50 of the submission's 250 reply, CPU seconds per message over
the timed window, and the RSA floor measured in the same run: ``openssl speed -seconds 2 rsa2048`` private
operations per second x ``os.cpu_count()`` / private operations per message (4: the clinic signs the message,
the hospital decrypts it, the hospital signs the MDN, the clinic decrypts it), with the ratio achieved / floor.
CPU is the whole path, both HISPs and the MDN: inline, ``getrusage(RUSAGE_SELF)`` of this one process; with node
processes, that of this process (DNS responder, clients, watcher) plus each node's process tree (the ``hisp
serve`` process and its descendants: utime + stime + cutime + cstime of ``/proc/PID/stat``, in clock ticks),
also printed by part, with "CPUs busy X% of N" (all of it over the window's wall time).

The library ceiling: after the nodes stop, a fresh process (this script with a hidden ``--library-reference``)
runs the SMTP transactions of one message with the bare libraries, no crypto and no storage: a stock aiosmtpd
server (STARTTLS required, DATA answered 250 and dropped), and then hisp's own listener
(:class:`hisp.adapters.smtp_server.SmtpListener`, aiosmtpd with hisp's bulk DATA reader, its ``accept``
answering 250 at once), each with ``--concurrency`` aiosmtplib clients on
connections set up before the timing (connect, STARTTLS, and for the submission AUTH PLAIN), for (a) the plain
10 kB message as submitted in this run, (b) it signed and encrypted (:class:`hisp.core.agent.SecurityAgent`
with the run's certificates) as relayed, (c) a processed MDN delivered in this run, sealed as relayed back;
200 transactions per leg (40 with ``--quick``), CPU ms per transaction = client + server (getrusage). The
ceiling is CPUs / (the three transactions' CPU, each leg on the cheaper of the two servers, + 4 private RSA
operations at the ``openssl speed`` rate): the
messages per second at most of any gateway that moves a message with these libraries (it leaves out
everything else: connection set-up, DNS, storage, MIME, the rest of CMS). It is printed with its ratio to
the RSA floor next to the target.

The target (issue 5: at least 0.5 of the floor on small messages, durability on) is printed as PASS/MISS for
information. The exit status is 0 whenever the measurements ran, 1 when a message was refused, or not
delivered or not answered by its MDN within ``--timeout`` (then the figures mean nothing), or a node process
failed to start or did not exit 0. Every delivered attachment is checked byte-identical to the one sent, after
the timing. ``--profile FILE`` (with ``--nodes inline``) runs cProfile over the timed runs (``--large 0`` for
the 10 kB one alone): the event loop thread and every thread of both nodes' worker pools, each thread's CPU time
(``--profile-clock wall`` for wall time, waits included); it writes the merged statistics to FILE and prints the
top functions. The figures of a profiled run are not representative (cProfile multiplies the cost of Python
calls; a sampling profiler such as ``py-spy record --native`` on a normal run distorts less).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import io
import json
import logging
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

# Measure the hisp of the checkout this script lives in, whatever an editable install points at.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiosmtplib  # noqa: E402

import hisp  # noqa: E402
from hisp.adapters.dns_server import DnsServer  # noqa: E402
from hisp.adapters.smtp_relay import client_tls_context  # noqa: E402
from hisp.app import Node  # noqa: E402
from hisp.commands.demo import RECIPIENT, SENDER, TLS_NAME, DemoSetup, attachment_of, prepare, referral  # noqa: E402
from hisp.config import load_config  # noqa: E402
from hisp.core.devca import Issued  # noqa: E402

_T = TypeVar("_T")

SMALL = 10_000
LARGE = 1_000_000
DEFAULT_SMALL_COUNT = 200
DEFAULT_LARGE_COUNT = 20
QUICK_SMALL_COUNT = 8
QUICK_LARGE_COUNT = 2
WARM_UP = 2
#: Private RSA operations per message on the whole path: the clinic signs the message, the hospital decrypts it,
#: the hospital signs the processed MDN, the clinic decrypts it.
PRIVATE_OPS_PER_MESSAGE = 4
#: The target of issue 5 (information only): small messages at this share of the RSA floor or better.
TARGET_SHARE = 0.5
#: Seconds between scans of the two maildirs when no "delivered" step woke the watcher (``--nodes inline``).
POLL_S = 0.02
#: Seconds between looks at the two maildirs with the nodes in their own processes (nothing wakes the watcher):
#: a ``stat`` of each ``new/``, and an ``os.scandir`` when it changed or changed lately.
PROCESS_POLL_S = 0.002
#: A directory modified less than this long ago is scanned again even if its mtime did not change (file times
#: have the kernel's coarse clock: two renames within one tick leave the same mtime).
RESCAN_WINDOW_NS = 50_000_000
#: Seconds to wait for a ``hisp serve`` process's ready line, and for its exit after SIGTERM.
NODE_START_TIMEOUT = 60.0
NODE_STOP_TIMEOUT = 90.0
#: Transactions per leg in the library reference (``--quick``: fewer).
REFERENCE_TRANSACTIONS = 200
QUICK_REFERENCE_TRANSACTIONS = 40
ATTACHMENT_NAME = "referral.bin"
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
#: The correlation field of an MDN (RFC 8098 section 3.2.9) and its disposition, in the notification part.
ORIGINAL_MESSAGE_ID = re.compile(rb"^Original-Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
PROCESSED = re.compile(rb"^Disposition:[^\r\n]*;[ \t]*processed\b", re.IGNORECASE | re.MULTILINE)


def queue_table(workers: int) -> str:
    """The body of both nodes' ``[queue]`` tables: quick retries (none are expected), ``workers`` workers."""
    return f"retry_initial = 1\nretry_maximum = 5\nlifetime = 900\nworkers = {workers}\npoll_interval = 0.5\n"


def progress(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# -- the RSA floor -----------------------------------------------------------------------------------


def openssl_rsa_sign_rate(seconds: int = 2) -> tuple[float | None, str]:
    """``openssl speed -seconds N rsa2048``: (private operations per second, the line it came from)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None, "openssl not found"
    try:
        result = subprocess.run(
            [openssl, "speed", "-seconds", str(seconds), "rsa2048"],
            capture_output=True, timeout=60 + 4 * seconds, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "timed out"
    header: list[str] | None = None
    lines = result.stdout.decode(errors="replace").splitlines()
    for line in lines:
        tokens = line.split()
        if "sign/s" in tokens:
            header = tokens
            continue
        match = re.match(r"\s*rsa\s+2048\s+bits\s+(.*)$", line)
        if header is not None and match:
            columns = dict(zip(header, match.group(1).split(), strict=False))
            with contextlib.suppress(KeyError, ValueError):
                return float(columns["sign/s"]), line.strip()
            break
    return None, "could not parse: " + " | ".join(lines[-3:])


# -- profiling the nodes' worker threads ---------------------------------------------------------------


class ProfilingExecutor(ThreadPoolExecutor):
    """A thread pool that runs every task under its thread's own :class:`cProfile.Profile` (for ``--profile``)."""

    def __init__(self, profiles: list[cProfile.Profile], clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self._profiles = profiles
        self._local = threading.local()
        self._lock = threading.Lock()
        self.enabled = False

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        return super().submit(self._profiled, fn, *args, **kwargs)

    def _profiled(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if not self.enabled:
            return fn(*args, **kwargs)
        profile = getattr(self._local, "profile", None)
        if profile is None:
            profile = self._local.profile = cProfile.Profile(self.clock)
            with self._lock:
                self._profiles.append(profile)
        profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            profile.disable()


# -- PostgreSQL schemas ------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schemas(base: str, names: Sequence[str]) -> Iterator[list[str]]:
    """One fresh schema per name in the database ``base`` (dropped afterwards); yields their URLs."""
    from sqlalchemy import create_engine, text

    schemas = [f"hisp_bench_{name}_{uuid.uuid4().hex[:12]}" for name in names]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for schema in schemas:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in base else "?"
        try:
            yield [f"{base}{separator}options={quote(f'-csearch_path={schema}')}" for schema in schemas]
        finally:
            with admin.connect() as connection:
                for schema in schemas:
                    connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


def use_storage(config: Path, url: str) -> None:
    """Point a configuration written by :func:`prepare` at another storage URL."""
    text = config.read_text("utf-8")
    replaced = re.sub(r'(?m)^url = "sqlite:///hisp\.sqlite3"$', lambda _m: f'url = "{url}"', text)
    if replaced == text:
        raise RuntimeError(f"{config}: no [storage] url to replace")
    config.write_text(replaced, "utf-8")


# -- nodes in their own processes ---------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime + cutime + cstime in clock ticks) of a process, from ``/proc/PID/stat`` (the
    process's figures cover all its threads, live and ended; cutime/cstime its children it has waited for)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces and parentheses
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def tree_ticks(root: int) -> dict[int, int]:
    """CPU clock ticks of ``root`` and each of its descendants, by pid (one pass over ``/proc``)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None:
                parents[int(name)], ticks[int(name)] = stat
    if root not in ticks:
        return {}
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        found[pid] = ticks[pid]
        todo.extend(children.get(pid, ()))
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the node gets SIGTERM if this benchmark dies without stopping it (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NodeProcess:
    """One HISP as ``hisp serve -c CONFIG [--workers N]``: its own interpreter (and with N > 1 its own children),
    stderr to ``LOG``; ready when its ready line is there; stopped with SIGTERM."""

    def __init__(self, name: str, config: Path, log: Path, processes: int, log_level: str | None = None) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.processes = processes
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_line = ""
        self.exit_status: int | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "hisp.cli", "serve", "-c", str(self.config)]
        if self.processes > 1:
            command += ["--workers", str(self.processes)]
        if self.log_level is not None:
            command += ["--log-level", self.log_level]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.config.parent,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""

    async def wait_ready(self, timeout: float = NODE_START_TIMEOUT) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text("utf-8", "replace").splitlines():
                if line.startswith("hisp: node ") and " ready: " in line:
                    self.ready_line = line
                    return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: hisp serve exited {self.process.returncode} before it was ready:\n{self.tail()}"
                )
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.name}: hisp serve not ready within {timeout:g} s:\n{self.tail()}")

    def ticks(self) -> dict[int, int]:
        return tree_ticks(self.process.pid) if self.process is not None else {}

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = NODE_STOP_TIMEOUT) -> int | None:
        """The exit status after SIGTERM (None: not started); killed (with its process group) after ``timeout``."""
        if self.process is None:
            return None
        try:
            self.exit_status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the node and its children only
            self.exit_status = self.process.wait()
        return self.exit_status


class ProcessCpu:
    """CPU seconds of this process (``getrusage``) and of each node's process tree (``/proc``), by part; the
    difference of two readings counts every process of the tree (one that ended and was waited for is in its
    parent's cutime/cstime, and its own last reading is subtracted)."""

    def __init__(self, nodes: Sequence[NodeProcess]) -> None:
        self.nodes = nodes

    def __call__(self) -> dict[str, tuple[float, dict[int, int]]]:
        parts: dict[str, tuple[float, dict[int, int]]] = {"bench": (cpu_seconds(), {})}
        for node in self.nodes:
            ticks = node.ticks()
            parts[node.name] = (sum(ticks.values()) / CLOCK_TICKS, ticks)
        return parts


def cpu_difference(
    before: dict[str, tuple[float, dict[int, int]]], after: dict[str, tuple[float, dict[int, int]]]
) -> dict[str, float]:
    """CPU seconds by part between two readings of :class:`ProcessCpu` (or of :func:`inline_cpu`)."""
    result = {}
    for part, (seconds, ticks) in after.items():
        old_seconds, old_ticks = before.get(part, (0.0, {}))
        if ticks or old_ticks:  # a process tree: every pid seen at either reading
            result[part] = (sum(ticks.values()) - sum(old_ticks.values())) / CLOCK_TICKS
        else:
            result[part] = seconds - old_seconds
    return result


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from the ``cpu`` line of ``/proc/stat`` (busy = all
    but idle and iowait), or None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat", "rb") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    total = sum(values)
    return total - values[3] - values[4], total


def inline_cpu() -> dict[str, tuple[float, dict[int, int]]]:
    return {"this process": (cpu_seconds(), {})}


# -- the library reference: the same SMTP transactions with the bare libraries -----------------------


def seal(plain: bytes, sender: Issued, recipient: Issued, recipient_address: str) -> bytes:
    """``plain`` signed with ``sender``'s credential and encrypted to ``recipient``'s certificate, as a HISP
    relays it (:class:`hisp.core.agent.SecurityAgent`; the certificate is not validated against anchors)."""
    from hisp.addresses import DirectAddress
    from hisp.core.agent import SecurityAgent

    result = SecurityAgent().process_outgoing(
        plain,
        sender=[sender.credential],
        recipients={DirectAddress.parse(recipient_address): [recipient.certificate]},
        at=datetime.now(UTC),
        trust=None,
    )
    return result.message


def library_reference(root: Path, setup: DemoSetup, report: Report, settings: Settings) -> list[Leg]:
    """Run :func:`reference_main` in a fresh interpreter on the three messages of one path: the plain message as
    submitted, it sealed as relayed, the processed MDN sealed as relayed back."""
    smith, jones = setup.issued["smith"], setup.issued["jones"]
    sealed = seal(report.sample_plain, smith, jones, RECIPIENT)
    sealed_mdn = seal(report.sample_mdn, jones, smith, SENDER) if report.sample_mdn else b""
    if not sealed_mdn:
        raise RuntimeError("no processed MDN was delivered to measure")
    directory = root / "reference"
    directory.mkdir(exist_ok=True)
    legs = [
        Leg("submission", len(report.sample_plain), True),
        Leg("relay", len(sealed), False),
        Leg("MDN relay", len(sealed_mdn), False),
    ]
    files = []
    for leg, data in zip(legs, (report.sample_plain, sealed, sealed_mdn), strict=True):
        path = directory / f"{leg.name.replace(' ', '-')}.eml"
        path.write_bytes(data)
        files.append(str(path))
    tls_dir = setup.anchors["tls-ca"].parent
    spec = {
        "cert": str(tls_dir / "tls.pem"),
        "key": str(tls_dir / "tls.key"),
        "cafile": str(setup.anchors["tls-ca"]),
        "server_name": TLS_NAME,
        "transactions": settings.reference_transactions,
        "concurrency": settings.concurrency,
        "legs": [{"name": leg.name, "file": f, "auth": leg.auth} for leg, f in zip(legs, files, strict=True)],
    }
    spec_path = directory / "spec.json"
    spec_path.write_text(json.dumps(spec), "utf-8")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--library-reference", str(spec_path)],
        capture_output=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"library reference exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    measured = json.loads(result.stdout.decode().strip().splitlines()[-1])
    for leg, figures in zip(legs, measured, strict=True):
        leg.cpu_ms, leg.rate = figures["stock"]["cpu_ms"], figures["stock"]["rate"]
        leg.hisp_cpu_ms, leg.hisp_rate = figures["hisp"]["cpu_ms"], figures["hisp"]["rate"]
    return legs


async def reference_leg(
    spec: dict[str, Any],
    leg: dict[str, Any],
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    kind: str = "stock",
) -> dict[str, float]:
    """One leg: a server and ``concurrency`` aiosmtplib clients, each on one connection set up before the timing
    (connect, STARTTLS, AUTH), sending the message ``transactions`` times in all. ``kind`` ``"stock"``: a stock
    aiosmtpd server (STARTTLS required; AUTH LOGIN/PLAIN accepting anyone when ``auth``; DATA answered 250 and
    dropped); ``"hisp"``: hisp's own :class:`hisp.adapters.smtp_server.SmtpListener` (submission with an
    authenticator that accepts the user at once when ``auth``, else backbone), its ``accept`` answering 250 at once
    (no storage). Returns CPU ms per transaction (``getrusage(RUSAGE_SELF)``: client and server, this process) and
    transactions per second."""
    from aiosmtpd.smtp import SMTP as Server
    from aiosmtpd.smtp import AuthResult

    from hisp.adapters.smtp_server import EdgeUser, ListenerKind, ListenerSettings, SmtpEnvelope, SmtpListener

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    def accept_anyone(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        return AuthResult(success=True)

    user = EdgeUser.create("dr.smith", "unused", [SENDER])

    async def authenticate(name: str, password: bytes) -> EdgeUser | None:
        return user

    async def accept(envelope: SmtpEnvelope, raw: bytes) -> str:
        return "250 2.0.0 Ok: queued"

    message = Path(leg["file"]).read_bytes()
    auth = bool(leg["auth"])
    loop = asyncio.get_running_loop()
    listener: SmtpListener | None = None
    if kind == "hisp":
        settings = ListenerSettings(
            ListenerKind.SUBMISSION if auth else ListenerKind.BACKBONE, hostname=spec["server_name"],
            tls_context=server_context, auth_failure_delay=0.0,
        )  # fmt: skip
        listener = SmtpListener(
            settings, accept, authenticator=authenticate if auth else None,
            is_hosted=None if auth else (lambda address: True),
        )  # fmt: skip
        await listener.start()
        port = listener.port
        server = None
    else:
        server = await loop.create_server(
            lambda: Server(
                Handler(), hostname=spec["server_name"], tls_context=server_context, require_starttls=True,
                authenticator=accept_anyone if auth else None, auth_require_tls=True, auth_required=auth,
            ),
            "127.0.0.1", 0,
        )  # fmt: skip
        port = server.sockets[0].getsockname()[1]
    clients = []
    try:
        for _ in range(spec["concurrency"]):
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
            await client.connect()
            await client.starttls(server_hostname=spec["server_name"], tls_context=client_context)
            if auth:
                await client.login("dr.smith", "secret")
            await client.sendmail(SENDER, [RECIPIENT], message)  # warm-up, not counted
            clients.append(client)
        todo = spec["transactions"]

        async def send(client: aiosmtplib.SMTP) -> None:
            nonlocal todo
            while todo > 0:
                todo -= 1
                await client.sendmail(SENDER, [RECIPIENT], message)

        before = cpu_seconds()
        started = time.perf_counter()
        await asyncio.gather(*(send(client) for client in clients))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - before
    finally:
        for client in clients:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await client.quit()
        if server is not None:
            server.close()
            await server.wait_closed()
        if listener is not None:
            await listener.close()
    return {"cpu_ms": cpu / spec["transactions"] * 1e3, "rate": spec["transactions"] / elapsed}


def reference_main(spec_path: Path) -> int:
    """``--library-reference SPEC``: measure each leg of SPEC (written by :func:`library_reference`); print one
    JSON line, a list of ``{"cpu_ms", "rate"}``."""
    spec = json.loads(spec_path.read_text("utf-8"))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(spec["cert"], spec["key"])
    client_context = ssl.create_default_context(cafile=spec["cafile"])

    async def measure() -> list[dict[str, dict[str, float]]]:
        return [
            {kind: await reference_leg(spec, leg, server_context, client_context, kind) for kind in ("stock", "hisp")}
            for leg in spec["legs"]
        ]

    print(json.dumps(asyncio.run(measure())))
    return 0


# -- one run -----------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One size: what was sent and when each message was submitted, accepted, delivered to the EHR and answered by
    its processed MDN at the sender's mailbox (perf_counter)."""

    size: int
    count: int
    concurrency: int
    plain_bytes: int = 0
    start: float = 0.0
    end: float = 0.0
    cpu_s: float = 0.0
    submitted: dict[int, float] = field(default_factory=dict)
    accepted: dict[int, float] = field(default_factory=dict)
    delivered: dict[int, float] = field(default_factory=dict)
    notified: dict[int, float] = field(default_factory=dict)
    files: dict[int, Path] = field(default_factory=dict)
    mdn_files: dict[int, Path] = field(default_factory=dict)
    #: CPU seconds of the timed window by part (this process; with ``--nodes process`` each node's process tree).
    cpu_parts: dict[str, float] = field(default_factory=dict)
    #: The whole machine over the timed window (``/proc/stat``): share of all CPUs busy, by any process.
    machine_busy: float = float("nan")
    refused: list[str] = field(default_factory=list)
    intact: int = 0

    @property
    def label(self) -> str:
        return f"{self.size // 1000}k" if self.size < 1_000_000 else f"{self.size // 1_000_000}m"

    @property
    def finished(self) -> dict[int, float]:
        """Messages both in the EHR's maildir and answered by their MDN: when the later of the two was seen."""
        return {i: max(t, self.notified[i]) for i, t in self.delivered.items() if i in self.notified}

    @property
    def latencies(self) -> list[float]:
        """End to end: start of the submission -> the processed MDN in the sender's mailbox."""
        return sorted(t - self.submitted[i] for i, t in self.finished.items() if i in self.submitted)

    @property
    def ehr_latencies(self) -> list[float]:
        """Start of the submission -> the message in the hospital EHR's maildir."""
        return sorted(self.delivered[i] - self.submitted[i] for i in self.delivered if i in self.submitted)

    @property
    def accept_latencies(self) -> list[float]:
        return sorted(self.accepted[i] - self.submitted[i] for i in self.accepted)

    @property
    def rate(self) -> float:
        done = len(self.finished)
        return done / (self.end - self.start) if done and self.end > self.start else 0.0

    @property
    def cpu_per_message(self) -> float:
        done = len(self.finished)
        return self.cpu_s / done if done else float("nan")


def percentile(values: Sequence[float], share: float) -> float:
    """Linear interpolation between the closest ranks (``values`` sorted)."""
    if not values:
        return float("nan")
    position = (len(values) - 1) * share
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def message_id_of(path: Path) -> bytes | None:
    """The Message-ID of a delivered file, from its header section."""
    with path.open("rb") as handle:
        head = handle.read(16384)
    end = head.find(b"\r\n\r\n")
    match = MESSAGE_ID.search(head if end < 0 else head[:end])
    return match.group(1) if match else None


def original_message_id_of(path: Path) -> bytes | None:
    """The Original-Message-ID of a processed MDN delivered to the sender's mailbox (None for anything else)."""
    data = path.read_bytes()[:65536]
    match = ORIGINAL_MESSAGE_ID.search(data)
    return match.group(1) if match and PROCESSED.search(data) else None


class Watcher:
    """Sees messages arrive in the hospital EHR's ``Maildir/new`` and their processed MDNs in the clinic's.

    With the nodes in this process (``--nodes inline``) it is woken by either node's "delivered" step and scans
    every :data:`POLL_S` meanwhile. With the nodes in their own processes nothing can wake it: every ``poll``
    seconds it ``stat``s both ``new/`` directories and scans one (``os.scandir``) when its mtime changed, when it
    changed less than :data:`RESCAN_WINDOW_NS` ago (file times have the kernel's coarse clock) and at least every
    0.25 s."""

    def __init__(self, ehr_new: Path, mdn_new: Path, poll: float = POLL_S, *, always_scan: bool = True) -> None:
        self.ehr_new = ehr_new
        self.mdn_new = mdn_new
        self.poll = poll
        self.always_scan = always_scan
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.seen: set[str] = set()
        self._mtimes: dict[Path, int] = {}
        self._scanned: dict[Path, float] = {}

    def observer(self, step: str, _detail: str) -> None:
        if step == "delivered":
            self.loop.call_soon_threadsafe(self.wake.set)

    def _should_scan(self, directory: Path, now: float) -> bool:
        if self.always_scan:
            return True
        try:
            mtime = os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            return False
        changed = mtime != self._mtimes.get(directory)
        recent = time.time_ns() - mtime < RESCAN_WINDOW_NS
        stale = now - self._scanned.get(directory, 0.0) > 0.25
        if changed or recent or stale:
            self._mtimes[directory] = mtime
            self._scanned[directory] = now
            return True
        return False

    def _new(self, directory: Path, now: float) -> Iterator[Path]:
        if not self._should_scan(directory, now) or not directory.is_dir():
            return
        for entry in os.scandir(directory):
            if entry.name not in self.seen:
                self.seen.add(entry.name)
                yield Path(entry.path)

    async def collect(self, phase: Phase, ids: dict[bytes, int], deadline: float) -> None:
        expected = phase.count - len(phase.refused)
        while (len(phase.delivered) < expected or len(phase.notified) < expected) and time.perf_counter() < deadline:
            if self.always_scan:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.poll)
                self.wake.clear()
            else:
                await asyncio.sleep(self.poll)
            now = time.perf_counter()
            for path in self._new(self.ehr_new, now):
                index = ids.get(message_id_of(path) or b"")
                if index is not None and index not in phase.delivered:
                    phase.delivered[index] = now
                    phase.files[index] = path
            for path in self._new(self.mdn_new, now):
                index = ids.get(original_message_id_of(path) or b"")
                if index is not None and index not in phase.notified:
                    phase.notified[index] = now
                    phase.mdn_files[index] = path
            expected = phase.count - len(phase.refused)


async def open_client(setup: DemoSetup, context: ssl.SSLContext) -> aiosmtplib.SMTP:
    assert setup.clinic.submission is not None
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.clinic.submission, start_tls=False, timeout=300)
    await client.connect()
    await client.starttls(server_hostname=TLS_NAME, tls_context=context)
    await client.login("dr.smith", setup.password)
    return client


async def submitter(client: aiosmtplib.SMTP, todo: list[int], messages: list[bytes], phase: Phase) -> None:
    try:
        while todo:
            index = todo.pop()
            phase.submitted[index] = time.perf_counter()
            try:
                await client.sendmail(SENDER, [RECIPIENT], messages[index])
            except aiosmtplib.SMTPException as exc:
                phase.refused.append(f"message {index}: {exc}")
                continue
            phase.accepted[index] = time.perf_counter()
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()


async def run_phase(
    setup: DemoSetup,
    watcher: Watcher,
    phase: Phase,
    timeout: float,
    cpu_now: Callable[[], dict[str, tuple[float, dict[int, int]]]],
    profiling: tuple[cProfile.Profile, list[ProfilingExecutor]] | None = None,
) -> bytes:
    """Submit the phase's messages and watch them finish; returns the first message (all are the same size)."""
    at = datetime.now(UTC)
    attachment = os.urandom(phase.size)
    messages = [referral(attachment, ATTACHMENT_NAME, at) for _ in range(phase.count)]
    phase.plain_bytes = len(messages[0])
    ids: dict[bytes, int] = {}
    for index, message in enumerate(messages):
        found = MESSAGE_ID.search(message)
        assert found is not None
        ids[found.group(1)] = index
    context = client_tls_context(verify=True, cafile=str(setup.anchors["tls-ca"]))
    clients = await asyncio.gather(*(open_client(setup, context) for _ in range(phase.concurrency)))
    todo = list(reversed(range(phase.count)))
    if profiling is not None:
        profiling[0].enable()
        for executor in profiling[1]:
            executor.enabled = True
    machine_before = machine_ticks()
    cpu_before = cpu_now()
    phase.start = time.perf_counter()
    deadline = phase.start + timeout
    watching = asyncio.create_task(watcher.collect(phase, ids, deadline))
    await asyncio.gather(*(submitter(client, todo, messages, phase) for client in clients))
    await watching
    phase.cpu_parts = cpu_difference(cpu_before, cpu_now())
    machine_after = machine_ticks()
    if machine_before is not None and machine_after is not None and machine_after[1] > machine_before[1]:
        phase.machine_busy = (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
    phase.cpu_s = sum(phase.cpu_parts.values())
    if profiling is not None:
        profiling[0].disable()
        for executor in profiling[1]:
            executor.enabled = False
    phase.end = max(phase.finished.values(), default=phase.start)
    # After the timing: each delivered attachment must be the one sent.
    phase.intact = sum(
        1 for path in phase.files.values() if attachment_of(path.read_bytes(), ATTACHMENT_NAME) == attachment
    )
    return messages[0]


@dataclass
class Settings:
    small: int
    large: int
    concurrency: int
    workers: int
    db: str | None
    timeout: float
    profile: Path | None
    profile_clock: str = "cpu"
    rsa_seconds: int = 2
    nodes: str = "process"
    node_processes: int = 1
    node_log_level: str | None = None
    reference_transactions: int = REFERENCE_TRANSACTIONS


@dataclass
class Leg:
    """One SMTP transaction of a message's path, measured with the bare libraries (the library reference)."""

    name: str
    size: int
    auth: bool
    #: with a stock aiosmtpd server
    cpu_ms: float = float("nan")
    rate: float = float("nan")
    #: with hisp's own listener (aiosmtpd under hisp.adapters.smtp_server: its bulk DATA reader, path shortcut,
    #: policy checks), accepting every message at once
    hisp_cpu_ms: float = float("nan")
    hisp_rate: float = float("nan")

    @property
    def best_cpu_ms(self) -> float:
        """The cheaper of the two servers: the ceiling is computed on the figure most favourable to the target."""
        return min(self.cpu_ms, self.hisp_cpu_ms) if self.hisp_cpu_ms == self.hisp_cpu_ms else self.cpu_ms


@dataclass
class Report:
    settings: Settings
    phases: list[Phase] = field(default_factory=list)
    rsa_sign: float | None = None
    rsa_line: str = ""
    warm_up_s: float = 0.0
    storage: str = ""
    profile_text: str = ""
    node_lines: list[str] = field(default_factory=list)
    node_exits: dict[str, int | None] = field(default_factory=dict)
    #: One plain 10 kB message as submitted and one processed MDN as delivered to the sender (for the reference).
    sample_plain: bytes = b""
    sample_mdn: bytes = b""
    legs: list[Leg] = field(default_factory=list)
    reference_error: str = ""
    load_before: str = ""
    load_after: str = ""


def watcher_for(setup: DemoSetup, settings: Settings) -> Watcher:
    ehr = setup.hospital.directory / "ehr" / "Maildir" / "new"
    mdn = setup.clinic.directory / "ehr" / "Maildir" / "new"
    if settings.nodes == "inline":
        return Watcher(ehr, mdn)
    return Watcher(ehr, mdn, PROCESS_POLL_S, always_scan=False)


async def run_phases(
    setup: DemoSetup,
    watcher: Watcher,
    settings: Settings,
    report: Report,
    cpu_now: Callable[[], dict[str, tuple[float, dict[int, int]]]],
    profiling: tuple[cProfile.Profile, list[ProfilingExecutor]] | None = None,
) -> None:
    """The warm-up, then each size's timed run."""
    progress(f"warm-up: {WARM_UP} messages")
    warm = Phase(SMALL, WARM_UP, 1)
    started = time.perf_counter()
    await run_phase(setup, watcher, warm, settings.timeout, cpu_now)
    report.warm_up_s = time.perf_counter() - started
    if len(warm.finished) < WARM_UP:
        raise RuntimeError(
            f"warm-up: {len(warm.delivered)} of {WARM_UP} delivered, {len(warm.notified)} MDNs back; "
            f"refused: {warm.refused}"
        )
    for size, count in ((SMALL, settings.small), (LARGE, settings.large)):
        if count <= 0:
            continue
        phase = Phase(size, count, min(settings.concurrency, count))
        progress(f"{phase.label}: {count} messages, {phase.concurrency} connections")
        first = await run_phase(setup, watcher, phase, settings.timeout, cpu_now, profiling)
        report.phases.append(phase)
        if size == SMALL:
            report.sample_plain = first
            if phase.mdn_files:
                report.sample_mdn = next(iter(phase.mdn_files.values())).read_bytes()


async def run_inline(setup: DemoSetup, settings: Settings, report: Report) -> None:
    """Both nodes as :class:`hisp.app.Node` objects in this process (``--nodes inline``)."""
    watcher = watcher_for(setup, settings)
    nodes = [
        Node(load_config(setup.clinic.config), environ=os.environ, observer=watcher.observer),
        Node(load_config(setup.hospital.config), environ=os.environ, observer=watcher.observer),
    ]
    profiling: tuple[cProfile.Profile, list[ProfilingExecutor]] | None = None
    profiles: list[cProfile.Profile] = []
    if settings.profile is not None:
        # cpu: each thread's own CPU time (what CPU s/msg is made of); wall: also the time spent waiting
        # (fsync, SQLite's lock, the network), attributed to the function that waited.
        clock = time.thread_time if settings.profile_clock == "cpu" else time.perf_counter
        executors = []
        for node in nodes:
            # Bench-only: swap in a profiling pool before start() hands the node's pool to its pipeline.
            executor = ProfilingExecutor(
                profiles, clock, max_workers=node._executor._max_workers, thread_name_prefix="hisp-work"
            )
            node._executor.shutdown(wait=False)
            node._executor = executor
            executors.append(executor)
        main_profile = cProfile.Profile(clock)
        profiles.append(main_profile)
        profiling = (main_profile, executors)
    try:
        for node in nodes:
            await node.start()
        await run_phases(setup, watcher, settings, report, inline_cpu, profiling)
    finally:
        for node in nodes:
            await node.stop(grace=10.0)
    if profiling is not None and settings.profile is not None:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(str(settings.profile))
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        report.profile_text = out.getvalue()


async def run_processes(setup: DemoSetup, settings: Settings, report: Report) -> None:
    """Each node as its own ``hisp serve`` process (``--nodes process``, the default)."""
    watcher = watcher_for(setup, settings)
    nodes = [
        NodeProcess(
            site.domain.split(".")[1],
            site.config,
            site.directory / "serve.log",
            settings.node_processes,
            settings.node_log_level,
        )
        for site in (setup.clinic, setup.hospital)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            await node.wait_ready()
            pid = node.process.pid if node.process is not None else "?"
            report.node_lines.append(f"{node.name} (pid {pid}): {node.ready_line}")
        await run_phases(setup, watcher, settings, report, ProcessCpu(nodes))
    finally:
        # Stop both whatever happened (an error, KeyboardInterrupt): SIGTERM, then wait for each exit status.
        for node in nodes:
            node.terminate()
        for node in nodes:
            report.node_exits[node.name] = status = await asyncio.to_thread(node.wait)
            if status != 0:
                progress(f"{node.name}: hisp serve exited {status}; the end of its stderr:\n{node.tail()}")


async def run_nodes(root: Path, settings: Settings, report: Report, urls: Sequence[str] | None = None) -> None:
    setup = prepare(root, datetime.now(UTC), queue=queue_table(settings.workers))
    if urls is not None:  # PostgreSQL: point both configurations at their schemas before the nodes start
        use_storage(setup.clinic.config, urls[0])
        use_storage(setup.hospital.config, urls[1])
    # The DNS responder stays in this process: the nodes reach it at the port their [relay] dns_server names.
    dns = DnsServer(setup.zones(), "127.0.0.1", setup.dns_port)
    await dns.start()
    try:
        if settings.nodes == "inline":
            await run_inline(setup, settings, report)
        else:
            await run_processes(setup, settings, report)
    finally:
        await dns.close()
    if report.sample_plain:
        progress(f"library reference: {settings.reference_transactions} transactions per leg, in a fresh process")
        try:
            report.legs = library_reference(root, setup, report, settings)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            report.reference_error = str(exc)


def run(settings: Settings) -> Report:
    report = Report(settings)
    report.load_before = load_average()
    progress(f"openssl speed -seconds {settings.rsa_seconds} rsa2048")
    report.rsa_sign, report.rsa_line = openssl_rsa_sign_rate(settings.rsa_seconds)
    with tempfile.TemporaryDirectory(prefix="hisp-bench-gateway-") as tmp:
        root = Path(tmp)
        if settings.db is None:
            report.storage = "SQLite per node, WAL, synchronous=FULL (fsync before every 250 reply)"
            asyncio.run(run_nodes(root, settings, report))
        else:
            with postgres_schemas(settings.db, ["clinic", "hospital"]) as urls:
                report.storage = "PostgreSQL, one schema per node (synchronous_commit as the server has it)"
                asyncio.run(run_nodes(root, settings, report, urls))
    report.load_after = load_average()
    return report


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# -- output ------------------------------------------------------------------------------------------


def floor_rate(report: Report) -> float | None:
    if report.rsa_sign is None:
        return None
    return report.rsa_sign * (os.cpu_count() or 1) / PRIVATE_OPS_PER_MESSAGE


def library_ceiling(report: Report) -> float | None:
    """Messages per second at most for a gateway built on these libraries: CPUs / (the three transactions' CPU
    + the private RSA operations at openssl's rate)."""
    if not report.legs or report.rsa_sign is None:
        return None
    seconds = sum(leg.best_cpu_ms for leg in report.legs) / 1e3 + PRIVATE_OPS_PER_MESSAGE / report.rsa_sign
    return (os.cpu_count() or 1) / seconds


def print_report(report: Report) -> None:
    s = report.settings
    cpus = os.cpu_count() or 1
    floor = floor_rate(report)
    print("hisp gateway benchmark: two HISPs on loopback, the whole path and the processed MDN back")
    print("  (submission STARTTLS+AUTH -> clinic queue -> discovery, sign+encrypt -> relay STARTTLS -> hospital:")
    print("   decrypt, verify, trust -> queue -> EHR maildir; processed MDN: hospital queue -> sign+encrypt ->")
    print("   relay -> clinic: decrypt, verify, trust, matched to the tracked message -> dr.smith's maildir)")
    print(f"hisp from {Path(hisp.__file__).resolve().parent}")
    print(
        f"python {platform.python_version()} on {platform.machine()} {platform.system()}, {cpus} CPUs; "
        f"load average {report.load_before} at the start, {report.load_after} at the end"
    )
    print(f"storage: {report.storage}; maildir delivery fsyncs the file and new/")
    if s.nodes == "inline":
        where = "both in this process (--nodes inline)"
    else:
        per = "hisp serve" + (f" --workers {s.node_processes}" if s.node_processes > 1 else "")
        per += f" --log-level {s.node_log_level}" if s.node_log_level else " at its default log level"
        where = f"each its own process ({per}; --nodes process), this process runs the DNS responder and clients"
    print(
        f"nodes: {s.workers} queue workers each, {where}; submission: {s.concurrency} connections, "
        "one message per transaction"
    )
    for line in report.node_lines:
        print(f"  {line}")
    if report.node_exits:
        print("  after SIGTERM: " + ", ".join(f"{name} exited {status}" for name, status in report.node_exits.items()))
    print(f"warm-up: {WARM_UP} messages in {report.warm_up_s:.2f} s (not counted)")
    rsa = "n/a" if report.rsa_sign is None else f"{report.rsa_sign:,.1f}"
    print(f"openssl speed -seconds {s.rsa_seconds} rsa2048: {rsa} private ops/s   [{report.rsa_line}]")
    if floor is not None:
        print(
            f"RSA floor: {rsa} ops/s x {cpus} CPUs / {PRIVATE_OPS_PER_MESSAGE} private ops per message "
            f"(message signed, decrypted; MDN signed, decrypted) = {floor:,.1f} msg/s"
        )
    print()
    header = (
        f"{'size':>4}  {'plain':>9}  {'msgs':>4}  {'ok':>4}  {'mdn':>4}  {'msg/s':>7}  {'p50 ms':>8}  {'p99 ms':>8}  "
        f"{'EHR p50':>8}  {'EHR p99':>8}  {'250 p50':>7}  {'CPU s/msg':>9}  {'floor':>7}  {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for phase in report.phases:
        latencies = phase.latencies
        ehr = phase.ehr_latencies
        accepts = phase.accept_latencies
        ratio = "n/a" if floor is None else f"{phase.rate / floor:.3f}"
        plain = f"{phase.plain_bytes / 1e3:.1f} kB" if phase.plain_bytes < 1e6 else f"{phase.plain_bytes / 1e6:.2f} MB"
        print(
            f"{phase.label:>4}  {plain:>9}  {phase.count:>4}  {phase.intact:>4}  {len(phase.notified):>4}  "
            f"{phase.rate:>7.1f}  {percentile(latencies, 0.5) * 1e3:>8.1f}  {percentile(latencies, 0.99) * 1e3:>8.1f}  "
            f"{percentile(ehr, 0.5) * 1e3:>8.1f}  {percentile(ehr, 0.99) * 1e3:>8.1f}  "
            f"{percentile(accepts, 0.5) * 1e3:>7.1f}  {phase.cpu_per_message:>9.4f}  "
            f"{'n/a' if floor is None else f'{floor:.1f}':>7}  {ratio:>6}"
        )
    print()
    print("msg/s = finished / (last finish - start), finished = in the EHR's maildir and its processed MDN in the")
    print("sender's; p50/p99 = start of submission -> MDN in dr.smith's Maildir/new (end to end); EHR p50/p99 =")
    print("start of submission -> file in the hospital EHR's Maildir/new; 250 p50 = submission to the clinic's 250")
    print("reply; ok = delivered with the attachment byte-identical; mdn = processed MDNs back at the sender.")
    if s.nodes == "inline":
        print("CPU s/msg = getrusage(RUSAGE_SELF) user+system of this one process, which runs both HISP nodes, the")
        print("DNS responder, the submission clients and the watcher: the CPU of the whole path and of the MDN.")
    else:
        print("CPU s/msg = user+system over the timed window of this process (getrusage: DNS responder, submission")
        print("clients, watcher) plus each node's process tree (/proc/PID/stat utime+stime+cutime+cstime of the")
        print("hisp serve process and its descendants, in clock ticks): the whole path and the MDN, both HISPs.")
    for phase in report.phases:
        if phase.intact != len(phase.delivered):
            print(f"  {phase.label}: {len(phase.delivered) - phase.intact} attachments DIFFER from the sent one")
        if len(phase.notified) < phase.count:
            print(f"  {phase.label}: {phase.count - len(phase.notified)} messages without their MDN back")
        for refusal in phase.refused[:5]:
            print(f"  {phase.label}: refused: {refusal}")
    if report.rsa_sign is not None:
        for phase in report.phases:
            if phase.finished:
                rsa_cpu = PRIVATE_OPS_PER_MESSAGE / report.rsa_sign
                done = len(phase.finished)
                parts = ", ".join(f"{name} {cpu / done * 1e3:.2f}" for name, cpu in phase.cpu_parts.items())
                print(
                    f"  {phase.label}: the {PRIVATE_OPS_PER_MESSAGE} private RSA ops are {rsa_cpu * 1e3:.2f} ms of "
                    f"{phase.cpu_per_message * 1e3:.2f} ms CPU per message "
                    f"({rsa_cpu / phase.cpu_per_message:.0%}; ms by process: {parts}); CPUs busy "
                    f"{phase.cpu_s / (phase.end - phase.start) / cpus:.0%} of {cpus} (the machine, all processes: "
                    f"{phase.machine_busy:.0%})"
                )
    ceiling = library_ceiling(report)
    if report.legs:
        print()
        print("library ceiling (a fresh process; the same SMTP transactions with the bare libraries: a stock aiosmtpd")
        print("server, and hisp's own listener accepting at once; aiosmtplib clients, STARTTLS,")
        print(f"{s.concurrency} connections set up before the timing, no crypto, no storage;")
        print(f"{s.reference_transactions} transactions per leg and server; CPU = client + server, getrusage; the")
        print("ceiling takes the cheaper server of each leg):")
        for leg in report.legs:
            auth = " + AUTH PLAIN" if leg.auth else ""
            print(
                f"  {leg.name:<10} {leg.size / 1e3:6.1f} kB  STARTTLS{auth:<12}  ms CPU per transaction: stock "
                f"{leg.cpu_ms:6.2f} ({leg.rate:,.0f}/s), hisp listener {leg.hisp_cpu_ms:6.2f} ({leg.hisp_rate:,.0f}/s)"
            )
        if ceiling is not None and report.rsa_sign is not None and floor is not None:
            smtp_ms = sum(leg.best_cpu_ms for leg in report.legs)
            rsa_ms = PRIVATE_OPS_PER_MESSAGE / report.rsa_sign * 1e3
            print(
                f"  per message: {smtp_ms:.2f} ms SMTP + {rsa_ms:.2f} ms for {PRIVATE_OPS_PER_MESSAGE} RSA private "
                f"ops = {smtp_ms + rsa_ms:.2f} ms; ceiling = {cpus} CPUs / {smtp_ms + rsa_ms:.2f} ms = "
                f"{ceiling:,.1f} msg/s = {ceiling / floor:.3f} of the RSA floor"
            )
    elif report.reference_error:
        print(f"library ceiling: not measured: {report.reference_error}")
    print()
    print("targets (information only; the exit status does not depend on them):")
    small = next((p for p in report.phases if p.size == SMALL), None)
    if small is None or floor is None or not small.finished:
        print(f"  n/a   10k at >= {TARGET_SHARE} of the RSA floor: not measured")
    else:
        share = small.rate / floor
        print(
            f"  {'PASS' if share >= TARGET_SHARE else 'MISS'}  10k at >= {TARGET_SHARE} of the RSA floor, "
            f"durability on: {share:.3f} ({small.rate:,.1f} msg/s vs {floor:,.1f} msg/s)"
        )
        if ceiling is not None:
            limit = ceiling / floor
            if limit < TARGET_SHARE:
                verdict = f"the {TARGET_SHARE} target is above what aiosmtpd/aiosmtplib alone allow"
            else:
                verdict = f"aiosmtpd/aiosmtplib alone allow the {TARGET_SHARE} target"
            print(
                f"        library ceiling {limit:.3f} of the floor ({ceiling:,.1f} msg/s): {verdict}; "
                f"this run reached {small.rate / ceiling:.1%} of the ceiling"
            )
    if report.profile_text:
        print()
        print(
            f"profile of the timed runs ({s.profile_clock} time; merged: event loop + both nodes' worker threads; "
            f"written to {s.profile}):"
        )
        print(report.profile_text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark two hisp nodes on loopback, end to end.")
    parser.add_argument(
        "--small", type=int, default=None, help=f"messages with a 10 kB attachment (default {DEFAULT_SMALL_COUNT})"
    )
    parser.add_argument(
        "--large", type=int, default=None, help=f"messages with a 1 MB attachment (default {DEFAULT_LARGE_COUNT})"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="submission connections (default 8)")
    parser.add_argument("--workers", type=int, default=4, help="queue workers per node (default 4)")
    parser.add_argument(
        "--db", default=None, help="a PostgreSQL URL (postgresql+psycopg://...): one schema per node, dropped after"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per size (default 600)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the timed runs (both sizes unless one count is 0); pstats to this file",
    )
    parser.add_argument(
        "--profile-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="with --profile: each thread's CPU time (default) or wall time (waits included)",
    )
    parser.add_argument(
        "--nodes",
        choices=("process", "inline"),
        default="process",
        help="process (default): each node is its own `hisp serve` process; inline: both as hisp.app.Node objects "
        "in this process (one interpreter, one GIL)",
    )
    parser.add_argument(
        "--node-processes",
        type=int,
        default=1,
        help="with --nodes process: processes per node (`hisp serve --workers N`, default 1)",
    )
    parser.add_argument(
        "--node-log-level",
        choices=("debug", "info", "warning", "error"),
        default=None,
        help="with --nodes process: `hisp serve --log-level` (default: its default, info)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SMALL_COUNT} small and {QUICK_LARGE_COUNT} large messages, openssl speed for 1 s, "
        f"{QUICK_REFERENCE_TRANSACTIONS} library reference transactions per leg (smoke run)",
    )
    parser.add_argument("--library-reference", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # aiosmtpd logs a warning about its own use of a deprecated attribute on each AUTH: not ours, not news.
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())
    if args.library_reference is not None:  # the reference run, in its own process (see library_reference)
        return reference_main(args.library_reference)
    small = args.small if args.small is not None else (QUICK_SMALL_COUNT if args.quick else DEFAULT_SMALL_COUNT)
    large = args.large if args.large is not None else (QUICK_LARGE_COUNT if args.quick else DEFAULT_LARGE_COUNT)
    if min(small, large) < 0 or args.concurrency < 1 or args.workers < 1:
        parser.error("counts must be >= 0, --concurrency and --workers >= 1")
    if args.node_processes < 1:
        parser.error("--node-processes must be >= 1")
    if args.nodes == "inline" and (args.node_processes != 1 or args.node_log_level is not None):
        parser.error("--node-processes and --node-log-level need --nodes process")
    if args.profile is not None and args.nodes != "inline":
        parser.error("--profile profiles nodes in this process: add --nodes inline")
    # SIGTERM ends this run as Ctrl-C does, through the clean-up that stops the node processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    settings = Settings(
        small,
        large,
        args.concurrency,
        args.workers,
        args.db,
        args.timeout,
        args.profile,
        args.profile_clock,
        rsa_seconds=1 if args.quick else 2,
        nodes=args.nodes,
        node_processes=args.node_processes,
        node_log_level=args.node_log_level,
        reference_transactions=QUICK_REFERENCE_TRANSACTIONS if args.quick else REFERENCE_TRANSACTIONS,
    )
    try:
        report = run(settings)
    except RuntimeError as exc:  # a node that did not start, a warm-up that did not finish
        print(f"gateway benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the nodes were stopped on the way out
        print("gateway benchmark interrupted", file=sys.stderr)
        return 130
    print_report(report)
    failed = any(
        len(p.delivered) < p.count or p.intact < len(p.delivered) or len(p.notified) < p.count for p in report.phases
    ) or any(status != 0 for status in report.node_exits.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
