#!/usr/bin/env python3
"""Benchmark the security agent's S/MIME work against the ``openssl cms`` command.

Run from the repository root::

    python3 bench/smime.py [--sizes 10k,1m,25m] [--repeat N] [--quick]

For each size it builds one plain RFC 5322 message (``multipart/mixed``: a short text part and a random
binary attachment of that size, base64-encoded) and measures, in this one run:

* ours: :meth:`hisp.core.agent.SecurityAgent.process_outgoing` (one sender, one recipient, recipient
  certificate validated against the test CA) and :meth:`~hisp.core.agent.SecurityAgent.process_incoming`
  of the sealed result;
* openssl: ``openssl cms -sign`` then ``-encrypt`` on the same plain message, and ``openssl cms -decrypt``
  then ``-verify`` on our sealed message, timed as subprocess wall time (process start-up included; the
  wall time of a no-op ``openssl version`` is printed so it can be subtracted);
* the peak RSS growth of each of our directions, measured in a fresh child process (this script with
  the internal ``--rss-child`` flag) from ``ru_maxrss``;
* the RSA-2048 private-operation rate of ``openssl speed`` and of Python's ``cryptography``.

It is a benchmark, not a test: the "targets" section prints PASS/MISS for information and the exit
status is 0 whenever the measurements ran. See ``bench/README.md`` for the columns.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

# Measure the hisp of the checkout this script lives in, whatever an editable install points at.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import hisp  # noqa: E402
from hisp.addresses import DirectAddress  # noqa: E402
from hisp.core.agent import SecurityAgent, StaticAnchors  # noqa: E402
from hisp.core.certs import (  # noqa: E402
    Certificate,
    Credential,
    load_certificate,
    load_private_key,
    private_key_to_pem,
)
from hisp.testing.pki import TestPKI, plain_message  # noqa: E402

SENDER = "dr.bench@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
DEFAULT_SIZES = "10k,1m,25m"
QUICK_SIZES = "10k,1m"
#: sizes at or above this count as "large": fewer repeats, reported as seconds per message.
LARGE = 10_000_000
#: below this time per message a direction is reported as messages per second.
RATE_BELOW_S = 0.1
#: targets (information only)
TARGET_RATIO = 1.5
TARGET_RSS_MULTIPLE = 3.0
TARGET_SIZE = 25_000_000
SMALL_SIZE = 10_000
#: a small message is "bounded by the RSA private operation" when it reaches this share of the RSA rate
#: (that is, the one private operation takes at least this share of the time per message).
RSA_BOUND_SHARE = 0.5
SUBPROCESS_TIMEOUT_S = 600

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 10**6,
    "mb": 10**6,
    "mi": 2**20,
    "mib": 2**20,
}


# -- sizes and messages ------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``10k`` -> 10000, ``1m`` -> 1000000, ``25m`` -> 25000000 (``ki``/``mi`` are binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10k, 1m, 25m)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size_label(size: int) -> str:
    """A short label: 10000 -> ``10k``, 25000000 -> ``25m``."""
    for unit, factor in (("m", 10**6), ("k", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}b"


def build_message(attachment_size: int) -> bytes:
    """A plain RFC 5322 message: multipart/mixed with a short text part and a random binary attachment."""
    boundary = "=_bench_boundary_7f3a9c"
    attachment = base64.encodebytes(os.urandom(attachment_size)).replace(b"\n", b"\r\n")
    body = b"".join(
        [
            b"This is a multi-part message in MIME format.\r\n",
            f"--{boundary}\r\n".encode(),
            b"Content-Type: text/plain; charset=us-ascii\r\n",
            b"Content-Transfer-Encoding: 7bit\r\n\r\n",
            b"Referral attached: summary of care and imaging for the scheduled consult.\r\n",
            b"Please confirm receipt.\r\n\r\n",
            f"--{boundary}\r\n".encode(),
            b'Content-Type: application/octet-stream; name="imaging.bin"\r\n',
            b"Content-Transfer-Encoding: base64\r\n",
            b'Content-Disposition: attachment; filename="imaging.bin"\r\n\r\n',
            attachment,
            f"--{boundary}--\r\n".encode(),
        ]
    )
    return plain_message(
        SENDER,
        RECIPIENT,
        subject=f"Referral with a {size_label(attachment_size)} attachment",
        body=body,
        message_id=f"<bench-{attachment_size}@direct.clinic.example>",
        content_type=f'multipart/mixed; boundary="{boundary}"',
    )


# -- material shared with openssl and the RSS children -----------------------------------------------


@dataclass
class Material:
    """The PKI and messages written to a directory for openssl and the RSS children."""

    root: Path
    at: datetime

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def attime(self) -> str:
        return str(int(self.at.timestamp()))


def write_pki(root: Path, at: datetime) -> tuple[Material, TestPKI]:
    """Make a TestPKI at ``at`` and write its CA, both users' certificates and keys as PEM files."""
    pki = TestPKI(at=at)
    material = Material(root, at)
    material.path("ca.pem").write_bytes(pki.ca.certificate.to_pem())
    for role, address in (("sender", SENDER), ("recipient", RECIPIENT)):
        issued = pki.user(address)
        material.path(f"{role}.pem").write_bytes(issued.certificate.to_pem())
        material.path(f"{role}.key").write_bytes(private_key_to_pem(issued.private_key))
    material.path("at.txt").write_text(at.isoformat())
    return material, pki


class Ours:
    """Our agent with the sender's and recipient's credentials (built from a TestPKI or from files)."""

    def __init__(self, at: datetime, ca: Certificate, sender: Credential, recipient: Credential) -> None:
        self.at = at
        self.agent = SecurityAgent()
        self.anchors = StaticAnchors((ca,))
        self.sender = sender
        self.recipient = recipient
        self.recipients = {DirectAddress.parse(RECIPIENT): [recipient.certificate]}

    @classmethod
    def from_files(cls, root: Path) -> Ours:
        at = datetime.fromisoformat((root / "at.txt").read_text())
        ca = load_certificate((root / "ca.pem").read_bytes())
        creds = [
            Credential(
                load_certificate((root / f"{role}.pem").read_bytes()),
                load_private_key((root / f"{role}.key").read_bytes()),
                (ca,),
            )
            for role in ("sender", "recipient")
        ]
        return cls(at, ca, creds[0], creds[1])

    def outgoing(self, plain: bytes) -> bytes:
        result = self.agent.process_outgoing(
            plain,
            sender=[self.sender],
            recipients=self.recipients,
            at=self.at,
            trust=self.anchors,
        )
        return result.message

    def incoming(self, sealed: bytes) -> bytes:
        result = self.agent.process_incoming(
            sealed,
            credentials=[self.recipient],
            trust=self.anchors,
            at=self.at,
        )
        if str(result.sender) != SENDER:
            raise AssertionError(f"incoming: unexpected sender {result.sender}")
        return result.message


# -- timing ------------------------------------------------------------------------------------------


def best_seconds(fn: Callable[[], object], repeat: int, min_time: float) -> float:
    """Best time per call over ``repeat`` rounds; each round calls ``fn`` until ``min_time`` has elapsed."""
    best = math.inf
    for _ in range(max(1, repeat)):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / calls)
    return best


class OpensslError(RuntimeError):
    """An openssl command failed."""


def run_openssl(openssl: str, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([openssl, *map(str, args)], capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise OpensslError(
            f"openssl {' '.join(map(str, args[:2]))} failed: {result.stderr.decode(errors='replace').strip()}"
        )
    return result


def openssl_outgoing(openssl: str, m: Material, label: str) -> None:
    """Sign (detached, SHA-256, binary) then encrypt (AES-128-CBC, RSA-OAEP SHA-256), file to file."""
    run_openssl(
        openssl, "cms", "-sign", "-md", "sha256", "-binary",
        "-in", m.path(f"plain-{label}.eml"), "-signer", m.path("sender.pem"), "-inkey", m.path("sender.key"),
        "-out", m.path(f"ossl-signed-{label}.eml"),
    )  # fmt: skip
    run_openssl(
        openssl, "cms", "-encrypt", "-aes128", "-binary",
        "-in", m.path(f"ossl-signed-{label}.eml"), "-out", m.path(f"ossl-sealed-{label}.eml"),
        "-recip", m.path("recipient.pem"),
        "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
    )  # fmt: skip


def openssl_incoming(openssl: str, m: Material, label: str) -> None:
    """Decrypt our sealed message, then verify its signature against the CA."""
    run_openssl(
        openssl, "cms", "-decrypt", "-binary",
        "-in", m.path(f"sealed-{label}.eml"), "-recip", m.path("recipient.pem"), "-inkey", m.path("recipient.key"),
        "-out", m.path(f"ossl-decrypted-{label}.eml"),
    )  # fmt: skip
    # No -binary here: in binary mode OpenSSL 3.0's multipart reader rejoins the lines of the signed part
    # with bare LF, so a CRLF-canonical multipart/signed (ours, as RFC 8551 requires) fails its digest.
    run_openssl(
        openssl, "cms", "-verify",
        "-in", m.path(f"ossl-decrypted-{label}.eml"), "-CAfile", m.path("ca.pem"), "-attime", m.attime,
        "-out", m.path(f"ossl-verified-{label}.eml"),
    )  # fmt: skip


def openssl_startup(openssl: str, runs: int) -> float:
    """Best wall time of ``openssl version`` (process start-up and exit)."""
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([openssl, "version"], capture_output=True, check=True, timeout=60)
        best = min(best, time.perf_counter() - start)
    return best


# -- RSA -----------------------------------------------------------------------------------------------


def openssl_rsa_speed(openssl: str, seconds: int) -> tuple[float | None, str]:
    """``openssl speed -seconds N rsa2048``: (sign/s, the line it came from)."""
    try:
        result = subprocess.run(
            [openssl, "speed", "-seconds", str(seconds), "rsa2048"],
            capture_output=True, timeout=60 + 4 * seconds, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, "timed out"
    lines = result.stdout.decode(errors="replace").splitlines()
    header: list[str] | None = None
    for line in lines:
        tokens = line.split()
        if "sign/s" in tokens:
            header = tokens
            continue
        match = re.match(r"\s*rsa\s+2048\s+bits\s+(.*)$", line)
        if header is not None and match:
            values = match.group(1).split()
            columns = dict(zip(header, values, strict=False))
            try:
                return float(columns["sign/s"]), line.strip()
            except (KeyError, ValueError):
                break
    return None, "could not parse: " + " | ".join(lines[-3:])


def python_rsa_rates(seconds: float) -> tuple[float, float]:
    """cryptography's RSA-2048 private operations per second: (PKCS#1 v1.5 SHA-256 sign, OAEP decrypt)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data = b"x" * 64
    sign_s = best_seconds(lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256()), 1, seconds)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ciphertext = key.public_key().encrypt(b"k" * 16, oaep)
    decrypt_s = best_seconds(lambda: key.decrypt(ciphertext, oaep), 1, seconds / 2)
    return 1 / sign_s, 1 / decrypt_s


# -- peak RSS in a fresh child -------------------------------------------------------------------------


def rss_child(root: Path, direction: str, label: str) -> None:
    """Internal: print JSON {before_kib, after_kib} around one message's work in this fresh process."""
    ours = Ours.from_files(root)
    # Warm up with a tiny message so that lazy imports and caches are in the baseline, not the growth.
    ours.incoming(ours.outgoing((root / "plain-warm.eml").read_bytes()))
    data = (root / (f"plain-{label}.eml" if direction == "out" else f"sealed-{label}.eml")).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if direction == "out":
        ours.outgoing(data)
    else:
        ours.incoming(data)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after}))


#: Runs its arguments as a command. Linux carries a process's peak RSS across fork + exec (the exec'ing
#: process's high-water mark becomes the new program's ``ru_maxrss``), so a child started directly by this
#: (large) process would report our peak as its own baseline. Started by this small trampoline, the
#: child inherits only the trampoline's few MB, below its own idle RSS.
TRAMPOLINE = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], check=False).returncode)"


def measure_rss(root: Path, direction: str, label: str) -> int | None:
    """Peak RSS growth in bytes of one direction for one size, in a fresh interpreter (None on failure)."""
    child = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(root), direction, label]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", TRAMPOLINE, *child],
        capture_output=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        print(f"rss child {direction} {label} failed: {result.stderr.decode(errors='replace')[-500:]}", file=sys.stderr)
        return None
    data = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return (int(data["after_kib"]) - int(data["before_kib"])) * 1024


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One size and direction."""

    size: int
    direction: str  # "out" or "in"
    message_bytes: int
    ours_s: float
    openssl_s: float | None = None
    rss_growth: int | None = None
    openssl_error: str | None = None


@dataclass
class Report:
    """Everything measured in one run."""

    rows: list[Row] = field(default_factory=list)
    sizes: list[tuple[int, int, int]] = field(default_factory=list)  # attachment, plain, sealed bytes
    startup_s: float | None = None
    openssl_version: str = "not found"
    openssl_rsa_sign: float | None = None
    openssl_rsa_line: str = ""
    python_rsa_sign: float | None = None
    python_rsa_decrypt: float | None = None


def progress(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def run(sizes: Sequence[int], repeat: int | None, quick: bool) -> Report:
    report = Report()
    openssl = shutil.which("openssl")
    min_time = 0.2 if quick else 0.5
    with tempfile.TemporaryDirectory(prefix="hisp-bench-") as tmp:
        root = Path(tmp)
        material, pki = write_pki(root, datetime.now(UTC))
        ours = Ours(material.at, pki.ca.certificate, pki.user(SENDER).credential, pki.user(RECIPIENT).credential)
        material.path("plain-warm.eml").write_bytes(build_message(1000))
        ours.incoming(ours.outgoing(build_message(1000)))  # warm-up: lazy imports, caches

        if openssl:
            report.openssl_version = (
                subprocess.run([openssl, "version"], capture_output=True, check=False, timeout=60)
                .stdout.decode()
                .strip()
            )
            report.startup_s = openssl_startup(openssl, 5 if quick else 20)
            progress("openssl speed -seconds 2 rsa2048")
            report.openssl_rsa_sign, report.openssl_rsa_line = openssl_rsa_speed(openssl, 2)
        progress("python RSA-2048 private operations")
        report.python_rsa_sign, report.python_rsa_decrypt = python_rsa_rates(1.0 if quick else 2.0)

        for size in sizes:
            label = size_label(size)
            rounds = repeat if repeat is not None else (1 if quick else (2 if size >= LARGE else 3))
            round_time = 0.0 if size >= LARGE else min_time
            progress(f"{label}: building message")
            plain = build_message(size)
            material.path(f"plain-{label}.eml").write_bytes(plain)
            sealed = ours.outgoing(plain)
            material.path(f"sealed-{label}.eml").write_bytes(sealed)
            report.sizes.append((size, len(plain), len(sealed)))

            progress(f"{label}: ours ({rounds} x)")
            out_row = Row(size, "out", len(plain), best_seconds(partial(ours.outgoing, plain), rounds, round_time))
            in_row = Row(size, "in", len(plain), best_seconds(partial(ours.incoming, sealed), rounds, round_time))
            del sealed
            if openssl:
                progress(f"{label}: openssl cms ({rounds} x)")
                for row, work in ((out_row, openssl_outgoing), (in_row, openssl_incoming)):
                    try:
                        row.openssl_s = best_seconds(partial(work, openssl, material, label), rounds, round_time)
                    except (OpensslError, subprocess.TimeoutExpired) as exc:
                        row.openssl_error = str(exc)
            progress(f"{label}: peak RSS in fresh processes")
            out_row.rss_growth = measure_rss(root, "out", label)
            in_row.rss_growth = measure_rss(root, "in", label)
            report.rows.extend([out_row, in_row])
            for name in list(root.iterdir()):
                if name.name.endswith(f"-{label}.eml"):
                    name.unlink()
    return report


# -- output ------------------------------------------------------------------------------------------


def fmt_speed(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < RATE_BELOW_S:
        return f"{1 / seconds:,.1f} msg/s"
    return f"{seconds:.3f} s/msg"


def fmt_ratio(ours: float, other: float | None) -> str:
    return "n/a" if other is None or other <= 0 else f"{ours / other:.2f}x"


def fmt_mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def net_openssl(row: Row, startup: float | None) -> float | None:
    """openssl's time less two process start-ups (two commands per direction)."""
    if row.openssl_s is None or startup is None:
        return None
    return max(row.openssl_s - 2 * startup, 1e-9)


def print_report(report: Report) -> None:
    print("hisp S/MIME benchmark")
    print(f"hisp from {Path(hisp.__file__).resolve().parent}")
    print(
        f"python {platform.python_version()} on {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} CPUs; {report.openssl_version}"
    )
    if report.startup_s is not None:
        print(f"openssl process start-up (no-op `openssl version`, best wall time): {report.startup_s * 1e3:.1f} ms")
    print("messages (attachment -> plain message -> our sealed message):")
    for size, plain, sealed in report.sizes:
        print(f"  {size_label(size):>5}: {fmt_mb(size)} -> {fmt_mb(plain)} -> {fmt_mb(sealed)}")
    print()
    header = (
        f"{'size':>5}  {'dir':<3}  {'ours':>14}  {'openssl cms':>14}  {'openssl net':>14}  "
        f"{'ours/openssl':>12}  {'ours/net':>9}  {'peak RSS growth':>15}  {'x msg':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in report.rows:
        net = net_openssl(row, report.startup_s)
        rss = "n/a" if row.rss_growth is None else fmt_mb(row.rss_growth)
        multiple = "n/a" if row.rss_growth is None else f"{row.rss_growth / row.message_bytes:.2f}"
        print(
            f"{size_label(row.size):>5}  {row.direction:<3}  {fmt_speed(row.ours_s):>14}  "
            f"{fmt_speed(row.openssl_s):>14}  {fmt_speed(net):>14}  {fmt_ratio(row.ours_s, row.openssl_s):>12}  "
            f"{fmt_ratio(row.ours_s, net):>9}  {rss:>15}  {multiple:>6}"
        )
        if row.openssl_error:
            print(f"       openssl error: {row.openssl_error}")
    print()
    print("ratio ours/openssl (time per message; >1 means we are slower):")
    for row in report.rows:
        net = net_openssl(row, report.startup_s)
        print(
            f"  ratio {size_label(row.size):>5} {'outgoing' if row.direction == 'out' else 'incoming':<8} "
            f"{fmt_ratio(row.ours_s, row.openssl_s):>8}  (net of start-up {fmt_ratio(row.ours_s, net)})"
        )
    print()
    print("RSA-2048 private operations per second:")
    rsa_openssl = "n/a" if report.openssl_rsa_sign is None else f"{report.openssl_rsa_sign:,.1f} sign/s"
    print(f"  openssl speed -seconds 2 rsa2048: {rsa_openssl}   [{report.openssl_rsa_line}]")
    if report.python_rsa_sign is not None and report.python_rsa_decrypt is not None:
        print(
            f"  python cryptography:              {report.python_rsa_sign:,.1f} sign/s (PKCS#1 v1.5 SHA-256), "
            f"{report.python_rsa_decrypt:,.1f} decrypt/s (OAEP SHA-256)"
        )
    print()
    print_targets(report)


def print_targets(report: Report) -> None:
    print("targets (information only; the exit status does not depend on them):")
    by_key = {(row.size, row.direction): row for row in report.rows}
    names = {"out": "outgoing", "in": "incoming"}

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "MISS")

    for direction in ("out", "in"):
        row = by_key.get((TARGET_SIZE, direction))
        if row is None or row.openssl_s is None:
            print(f"  n/a   25m {names[direction]} within {TARGET_RATIO}x of openssl cms: not measured in this run")
            continue
        ratio = row.ours_s / row.openssl_s
        print(
            f"  {verdict(ratio <= TARGET_RATIO)}  25m {names[direction]} within {TARGET_RATIO}x of openssl cms: "
            f"{ratio:.2f}x ({row.ours_s:.3f} s vs {row.openssl_s:.3f} s)"
        )

    largest = max((row.size for row in report.rows), default=None)
    for direction in ("out", "in"):
        row = by_key.get((largest, direction)) if largest is not None else None
        if row is None or row.rss_growth is None:
            print(f"  n/a   {names[direction]} peak RSS growth under {TARGET_RSS_MULTIPLE}x the message: not measured")
            continue
        multiple = row.rss_growth / row.message_bytes
        # judged on 25m only: a smaller message's growth is mostly the allocator's granularity, for information
        judged = largest == TARGET_SIZE
        note = "" if judged else " (information: largest size of this run; the target is for 25m)"
        label = verdict(multiple < TARGET_RSS_MULTIPLE) if judged else "info"
        print(
            f"  {label}  {size_label(row.size)} {names[direction]} peak RSS growth "
            f"under {TARGET_RSS_MULTIPLE}x the message: {multiple:.2f}x "
            f"({fmt_mb(row.rss_growth)} for a {fmt_mb(row.message_bytes)} message){note}"
        )

    rsa = report.openssl_rsa_sign
    for direction, op in (("out", "sign"), ("in", "decrypt")):
        row = by_key.get((SMALL_SIZE, direction))
        if row is None or rsa is None:
            print(f"  n/a   10k {names[direction]} bounded by the RSA private operation: not measured")
            continue
        rate = 1 / row.ours_s
        share = rate / rsa
        print(
            f"  {verdict(share >= RSA_BOUND_SHARE)}  10k {names[direction]} bounded by the RSA private operation "
            f"(one {op}): {rate:,.1f} msg/s = {share:.0%} of {rsa:,.1f} RSA-2048 private ops/s "
            f"(PASS at >= {RSA_BOUND_SHARE:.0%})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark hisp's S/MIME agent against openssl cms.")
    parser.add_argument("--sizes", default=None, help=f"attachment sizes (default {DEFAULT_SIZES})")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds per measurement, best reported (default 3; 2 for sizes >= 10m; 1 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_SIZES}, one round each (smoke run)")
    parser.add_argument("--rss-child", nargs=3, metavar=("DIR", "DIRECTION", "LABEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        root, direction, label = args.rss_child
        rss_child(Path(root), direction, label)
        return 0
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = [parse_size(s) for s in (args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)).split(",")]
    report = run(sizes, args.repeat, args.quick)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
