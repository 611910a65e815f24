"""``hisp demo [--keep DIR] [--attach FILE]``: a referral travels from a clinic to a hospital's EHR, for real.

Everything runs on 127.0.0.1 in this process, from files written to a temporary directory (or ``--keep DIR``):

1. a development PKI: one trust anchor per organisation (``Clinic Demo CA``, ``Hospital Demo CA``), an
   address-bound certificate for ``dr.smith@direct.clinic.example`` and ``dr.jones@direct.hospital.example``,
   and a TLS certificate for the listeners;
2. two HISPs (:class:`hisp.app.Node`), ``direct.clinic.example`` and ``direct.hospital.example``, each from its
   own configuration file with its own SQLite database; each trusts the other's anchor;
3. one DNS responder (:class:`hisp.adapters.dns_server.DnsServer`, what ``hisp dns serve`` runs) serving both
   domains' zones, built from the two configurations' ``[[domain]]`` tables: the CERT record of each user
   (so certificate discovery is real) and an MX record to ``mx.<domain>`` at 127.0.0.1;
4. the hospital's EHR endpoint, a maildir.

MX records cannot carry a port, and the two HISPs share 127.0.0.1, so each HISP's ``[relay] port`` is the
other's backbone port (``mode = "mx"`` with ``dns_server`` the responder): MX lookup and certificate discovery
both go through DNS as in production; only the port differs from 25.

Then dr.smith's EHR submits a referral (the synthetic C-CDA shipped with hisp, or ``--attach FILE``) over SMTP
with STARTTLS and AUTH; each step is printed as it happens (submitted, discovered certificate, signed,
encrypted, decrypted, verified with anchor X, relayed, delivered to the EHR maildir), then the first lines of
what the EHR received. Exit 0 only when the attachment delivered is byte-identical to the one sent.

The processed MDN back to the clinic belongs to the notifications issue and is not sent yet.

Spec: issue 5 ("``hisp demo``").
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import mimetypes
import os
import secrets
import shutil
import socket
import string
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import aiosmtplib
import click

from hisp.adapters.dns_server import DnsServer
from hisp.adapters.smtp_relay import client_tls_context
from hisp.app import Node
from hisp.commands.common import fail_cleanly
from hisp.commands.publish import publications
from hisp.config import load_config
from hisp.core import devca
from hisp.core.certs import private_key_to_pem
from hisp.core.mdn import FINAL_DELIVERY_FIELD, parse_mdn
from hisp.core.publish import Zones, ZoneSettings, build_zones
from hisp.core.smtp_policy import hash_password
from hisp.errors import HispError
from hisp.ports import Direction

__all__ = ["DemoSetup", "attachment_of", "demo", "prepare", "referral", "submit"]

CLINIC = "direct.clinic.example"
HOSPITAL = "direct.hospital.example"
SENDER = f"dr.smith@{CLINIC}"
RECIPIENT = f"dr.jones@{HOSPITAL}"
#: Seconds the demo waits for the delivery before giving up (the issue asks for under 30 s in all).
DELIVERY_DEADLINE = 25.0
#: The name in the listeners' demo TLS certificate (the client verifies it).
TLS_NAME = "smtp.hisp-demo.example"
#: The demo's queue: quick retries (seconds), a short lifetime, two workers per HISP.
DEMO_QUEUE = "retry_initial = 1\nretry_maximum = 5\nlifetime = 60\nworkers = 2\npoll_interval = 0.5\n"


def demo_password(length: int = 16) -> str:
    """A random password of ASCII letters and digits (``length`` characters, about 5.95 bits each).

    Letters and digits only, so that it can be pasted as a command-line argument (``swaks --auth-password``
    treats a value beginning with ``-`` as an option; ``token_urlsafe`` can produce one).
    """
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def _free_port() -> int:
    """A loopback port free for TCP and UDP now (the DNS responder needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise HispError("no free loopback port")


@dataclass
class _Site:
    domain: str
    directory: Path
    config: Path
    backbone: int
    submission: int | None


def _pem(path: Path, issued: devca.Issued) -> tuple[str, str]:
    cert, key = path.with_suffix(".pem"), path.with_suffix(".key")
    cert.write_bytes(issued.certificate.to_pem())
    key.write_bytes(private_key_to_pem(issued.private_key))
    key.chmod(0o600)
    return cert.name, key.name


def _write_site(
    root: Path, domain: str, user: str, own: devca.Issued, peer_anchor: Path, own_anchor: Path,
    tls: tuple[Path, Path], ports: dict[str, int], peer_backbone: int, dns_port: int, password_hash: str | None,
    endpoint: str, queue: str, notifications: str = "",
) -> _Site:
    directory = root / domain.split(".")[1]
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = _pem(directory / user.split("@")[0], own)
    (directory / "ehr").mkdir(exist_ok=True)
    submission = ""
    users = ""
    if password_hash is not None:
        submission = f"""
[listeners.submission]
host = "127.0.0.1"
port = {ports["submission"]}
tls_cert = "{tls[0]}"
tls_key = "{tls[1]}"
"""
        users = f"""
[[user]]
name = "{user.split("@")[0]}"
password_hash = "{password_hash}"
addresses = ["{user}"]
"""
    text = f"""# {domain}: written by `hisp demo`
[node]
name = "{domain.split(".")[1]}"
hostname = "mx.{domain}"

[trust]
revocation = "soft"

[[trust.anchor]]
file = "{peer_anchor}"
domains = ["{domain}"]

[[trust.anchor]]
file = "{own_anchor}"
domains = ["{domain}"]

[dns]
nameservers = ["ns1.{domain}"]
ttl = 60

[[domain]]
name = "{domain}"
addresses = ["{user}"]
endpoint = "{endpoint}"

[[domain.certificate]]
address = "{user}"
file = "{cert}"
key = "{key}"
publish = ["dns"]

[[domain.record]]
type = "MX"
value = "10 mx"

[[domain.record]]
name = "mx"
type = "A"
value = "127.0.0.1"

[[domain.record]]
name = "ns1"
type = "A"
value = "127.0.0.1"
{users}{submission}
[listeners.backbone]
host = "127.0.0.1"
port = {ports["backbone"]}
tls_cert = "{tls[0]}"
tls_key = "{tls[1]}"

[relay]
mode = "mx"
port = {peer_backbone}
dns_server = "127.0.0.1:{dns_port}"
timeout = 10

[storage]
url = "sqlite:///hisp.sqlite3"

[queue]
{queue or DEMO_QUEUE}
[notifications]
{notifications}"""
    config = directory / "hisp.toml"
    config.write_text(text, "utf-8")
    return _Site(domain, directory, config, ports["backbone"], ports.get("submission"))


def referral(attachment: bytes, filename: str, at: datetime, *, final_delivery: bool = False) -> bytes:
    """The referral as dr.smith's EHR writes it: a short note and the attachment (base64), CRLF.

    :param attachment: the file's bytes.
    :param filename: its name.
    :param at: the Date.
    :param final_delivery: ask for final-destination delivery notification (DN-1): a dispatched MDN comes back
        once the hospital's EHR has it.
    :returns: the message.
    """
    kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if filename.lower().endswith(".xml"):
        kind = "application/xml"
    boundary = f"referral-{secrets.token_hex(8)}"
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    head = "\r\n".join([
        f"From: Dr. Smith <{SENDER}>",
        f"To: Dr. Jones <{RECIPIENT}>",
        "Subject: Referral: cardiology consult",
        f"Date: {email.utils.format_datetime(at)}",
        f"Message-ID: <{secrets.token_hex(12)}@{CLINIC}>",
        *([f"Disposition-Notification-Options: {FINAL_DELIVERY_FIELD}=optional,true"] if final_delivery else []),
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Dr. Jones,",
        "",
        "Please see the attached referral for a cardiology consult.",
        "",
        "Dr. Smith",
        f"--{boundary}",
        f'Content-Type: {kind}; name="{filename}"',
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment; filename="{filename}"',
        "",
        "",
    ])
    return head.encode("ascii") + encoded + f"--{boundary}--\r\n".encode("ascii")


def attachment_of(delivered: bytes, filename: str) -> bytes | None:
    """The decoded attachment named ``filename`` in a delivered message, or None."""
    message = email.message_from_bytes(delivered, policy=email.policy.default)
    for part in message.walk():
        if part.get_filename() == filename:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None


class _Printer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, who: str, step: str, detail: str) -> None:
        click.echo(f"[{time.monotonic() - self.start:5.2f} s] {who:8} {step}: {detail}")


@dataclass
class DemoSetup:
    """What :func:`prepare` wrote: two HISP configurations, the PKI, the ports, the edge user's password.

    :ivar clinic: the clinic's site (submission and backbone).
    :ivar hospital: the hospital's site (backbone only).
    :ivar anchors: PEM files by name: ``clinic-ca``, ``hospital-ca``, ``tls-ca``.
    :ivar password: dr.smith's SMTP AUTH password (user name ``dr.smith``).
    :ivar dns_port: the DNS responder's port (UDP and TCP).
    :ivar issued: the certificates issued, by name (``clinic-ca``, ``hospital-ca``, ``smith``, ``jones``).
    """

    clinic: _Site
    hospital: _Site
    anchors: dict[str, Path]
    password: str
    dns_port: int
    issued: dict[str, devca.Issued]

    def zones(self) -> Zones:
        """Both domains' zones (CERT, MX, A, SOA, NS), from the two configurations' ``[[domain]]`` tables."""
        configs = [load_config(self.clinic.config), load_config(self.hospital.config)]
        return build_zones(
            publications(configs[0], os.environ) + publications(configs[1], os.environ),
            ZoneSettings((f"ns1.{CLINIC}.",), 60, 60, 1, None),
        )


def prepare(
    root: Path, at: datetime, *, hospital_endpoint: str = "maildir:ehr/Maildir", queue: str = "",
    notifications: str = "",
) -> DemoSetup:
    """Write the demo's PKI and the two HISPs' configurations under ``root`` (tests reuse it).

    :param root: an existing directory.
    :param at: the issue time of the certificates.
    :param hospital_endpoint: the hospital domain's delivery endpoint.
    :param queue: the body of both ``[queue]`` tables (default :data:`DEMO_QUEUE`).
    :param notifications: the body of both ``[notifications]`` tables (default: empty, the defaults).
    :returns: what was written.
    :raises HispError: no free loopback port.
    """
    clinic_ca = devca.create_ca("Clinic Demo CA", at=at)
    hospital_ca = devca.create_ca("Hospital Demo CA", at=at)
    tls_ca = devca.create_ca("Demo TLS CA", at=at)
    smith = devca.issue_certificate(clinic_ca, at=at, address=SENDER)
    jones = devca.issue_certificate(hospital_ca, at=at, address=RECIPIENT)
    tls = devca.issue_certificate(tls_ca, at=at, domain=TLS_NAME)
    pki = root / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    anchors = {}
    for name, ca in (("clinic-ca", clinic_ca), ("hospital-ca", hospital_ca), ("tls-ca", tls_ca)):
        anchors[name] = pki / f"{name}.pem"
        anchors[name].write_bytes(ca.certificate.to_pem())
    tls_cert, tls_key = (pki / n for n in _pem(pki / "tls", tls))
    password = demo_password()
    dns_port = _free_port()
    ports = {"clinic": {"submission": _free_port(), "backbone": _free_port()}, "hospital": {"backbone": _free_port()}}
    clinic = _write_site(
        root, CLINIC, SENDER, smith, anchors["hospital-ca"], anchors["clinic-ca"], (tls_cert, tls_key),
        ports["clinic"], ports["hospital"]["backbone"], dns_port, hash_password(password), "maildir:ehr/Maildir",
        queue, notifications,
    )
    hospital = _write_site(
        root, HOSPITAL, RECIPIENT, jones, anchors["clinic-ca"], anchors["hospital-ca"], (tls_cert, tls_key),
        ports["hospital"], ports["clinic"]["backbone"], dns_port, None, hospital_endpoint, queue,
        notifications,
    )
    issued = {"clinic-ca": clinic_ca, "hospital-ca": hospital_ca, "smith": smith, "jones": jones}
    return DemoSetup(clinic, hospital, anchors, password, dns_port, issued)


async def submit(setup: DemoSetup, message: bytes, recipients: tuple[str, ...] = (RECIPIENT,)) -> str:
    """Submit ``message`` from dr.smith over SMTP with STARTTLS (certificate verified) and AUTH.

    :returns: the reply to DATA.
    :raises aiosmtplib.SMTPException: refused.
    """
    assert setup.clinic.submission is not None
    context = client_tls_context(verify=True, cafile=str(setup.anchors["tls-ca"]))
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=setup.clinic.submission, start_tls=False, timeout=20)
    await client.connect()
    try:
        await client.starttls(server_hostname=TLS_NAME, tls_context=context)
        await client.login("dr.smith", setup.password)
        _, reply = await client.sendmail(SENDER, list(recipients), message)
    finally:
        await client.quit()
    return reply


async def _run(root: Path, attachment: bytes, filename: str, *, kept: bool = False) -> bool:
    at = datetime.now(UTC)
    show = _Printer()
    show("demo", "workspace", str(root))
    setup = prepare(root, at)
    clinic, hospital = setup.clinic, setup.hospital
    show("demo", "PKI", f"anchors {setup.issued['clinic-ca'].certificate.subject} and "
         f"{setup.issued['hospital-ca'].certificate.subject}; address-bound certificates for {SENDER} and {RECIPIENT}")
    dns = DnsServer(setup.zones(), "127.0.0.1", setup.dns_port)
    await dns.start()
    show("dns", "serving", f"{CLINIC} and {HOSPITAL} (CERT, MX, A) on 127.0.0.1:{setup.dns_port}")
    nodes = [
        Node(load_config(clinic.config), environ=os.environ, observer=lambda s, d: show("clinic", s, d)),
        Node(load_config(hospital.config), environ=os.environ, observer=lambda s, d: show("hospital", s, d)),
    ]
    try:
        for node, site in zip(nodes, (clinic, hospital), strict=True):
            await node.start()
            show(site.domain.split(".")[1], "HISP up", ", ".join(f"{k} 127.0.0.1:{v}" for k, v in node.ports.items()))
        reply = await submit(setup, referral(attachment, filename, at, final_delivery=True))
        show("ehr", "sent", f"over STARTTLS + AUTH as dr.smith: {reply}")
        maildir = hospital.directory / "ehr" / "Maildir" / "new"
        deadline = time.monotonic() + DELIVERY_DEADLINE
        delivered: list[Path] = []
        while time.monotonic() < deadline:
            delivered = sorted(maildir.glob("*")) if maildir.is_dir() else []
            if delivered:
                break
            await asyncio.sleep(0.1)
        if not delivered:
            show("demo", "FAILED", f"nothing reached {maildir} within {DELIVERY_DEADLINE:g} s")
            return False
        data = delivered[0].read_bytes()
        click.echo(f"\n--- first lines of what the hospital EHR received ({delivered[0]}) ---")
        for line in data.split(b"\r\n")[:14]:
            click.echo("  " + line.decode("ascii", "replace")[:150])
        click.echo("---\n")
        received = attachment_of(data, filename)
        sent_digest = hashlib.sha256(attachment).hexdigest()
        if received is None:
            show("demo", "FAILED", f"the delivered message has no attachment {filename}")
            return False
        same = received == attachment
        show("demo", "attachment", f"{filename}: {len(received)} bytes, sha256 {hashlib.sha256(received).hexdigest()}"
             f" {'==' if same else '!='} sent {sent_digest}: {'byte-identical' if same else 'DIFFERENT'}")
        if not same:
            return False
        return await _show_mdns(show, clinic.directory / "ehr" / "Maildir" / "new", nodes[0], kept=kept)
    finally:
        for node in nodes:
            await node.stop(grace=5.0)
        await dns.close()


async def _show_mdns(show: _Printer, maildir: Path, clinic: Node, *, kept: bool) -> bool:
    """Wait until the clinic's HISP has the processed and dispatched MDNs for the referral; show what it did with
    each (forwarded to dr.smith's mailbox, or recorded: the edge gets at most one terminal notice, DN-8) and the
    tracking state. True when both came back and the referral is tracked as dispatched."""
    store = clinic.store
    assert store is not None
    loop = asyncio.get_running_loop()
    (sent,) = await loop.run_in_executor(None, lambda: store.list_messages(direction=Direction.OUTGOING, limit=1))
    deadline = time.monotonic() + DELIVERY_DEADLINE
    while True:
        tracked = await loop.run_in_executor(None, store.tracking, sent.id)
        history = [record for r in tracked.track.recipients.values() for record in r.history]
        events = {record.event.value for record in history}
        if tracked.complete and {"processed", "dispatched"} <= events:
            break
        if time.monotonic() > deadline:
            show("demo", "FAILED", f"no processed and dispatched MDNs within {DELIVERY_DEADLINE:g} s (saw "
                 f"{sorted(events) or 'none'})")
            return False
        await asyncio.sleep(0.1)
    for record in history:
        what = {"forward": "forwarded to dr.smith's mailbox", "record": "recorded (dr.smith already has the final "
                "notice)", "consume": "recorded (consumed)", "drop": "duplicate, dropped"}.get(record.action.value,
                                                                                             record.action.value)
        show("clinic", "MDN", f"{record.event.value}: {record.detail}: {what}")
    forwarded = sum(record.action.value == "forward" for record in history)
    while len(list(maildir.glob("*")) if maildir.is_dir() else []) < forwarded and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the forwarded MDNs are on their way to the mailbox through the queue
    for path in sorted(maildir.glob("*")) if maildir.is_dir() else []:
        mdn = parse_mdn(path.read_bytes())
        if mdn.disposition:
            show("ehr", "MDN", f"dr.smith's mailbox: {mdn.disposition} from {mdn.final_recipient} about "
                 f"{mdn.original_message_id}" + (f" ({FINAL_DELIVERY_FIELD})" if mdn.final_delivery else ""))
    states = ", ".join(f"{r.address} {r.state.value}" for r in tracked.track.recipients.values())
    hint = (f"`hisp track {sent.id} -c {clinic.config.path}` shows the history" if kept
            else "run the demo with --keep DIR, then `hisp track` shows the history")
    show("clinic", "tracking", f"{tracked.header_message_id} ({tracked.track.mode.value}): {states} ({hint})")
    return all(r.state.value == "dispatched" for r in tracked.track.recipients.values())


@click.command("demo")
@click.option("--keep", "keep", type=click.Path(file_okay=False), default=None,
              help="Write the PKI, configurations, databases and maildirs here and keep them.")
@click.option("--attach", "attach", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Send this file instead of the synthetic C-CDA referral note.")
@fail_cleanly
def demo(keep: str | None, attach: str | None) -> None:
    """Send a referral from a clinic's HISP to a hospital's EHR through two real HISPs on 127.0.0.1."""
    if attach is not None:
        attachment, filename = Path(attach).read_bytes(), Path(attach).name
    else:
        attachment = resources.files("hisp").joinpath("data/referral.xml").read_bytes()
        filename = "referral.xml"
    # aiosmtpd warns about its own use of a deprecated attribute on each AUTH: not ours to fix, not for the demo.
    warnings.filterwarnings("ignore", message="Session.login_data is deprecated")
    root = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="hisp-demo-"))
    if keep and root.is_dir() and any(root.iterdir()):
        raise click.BadParameter(f"{root} is not empty: give a new or empty directory", param_hint="--keep")
    root.mkdir(parents=True, exist_ok=True)
    try:
        ok = asyncio.run(_run(root, attachment, filename, kept=keep is not None))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if not ok:
        raise SystemExit(1)
    click.echo(
        "demo: done: the referral reached the hospital EHR intact, and the processed and dispatched MDNs came back"
        + (f"; files kept in {root}" if keep else f"; its files in {root} are removed (--keep DIR keeps them)")
    )
