"""Adversarial probes of ``[limits.mime]`` (hisp.config._mime_limits, the SecurityAgent's MimeLimits): each bound
at its edge (exactly at: accepted; one over: refused), and what one HISP seals against what an identically
configured HISP accepts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hisp.addresses import DirectAddress
from hisp.config import parse_config
from hisp.core.agent import SecurityAgent
from hisp.core.mime import MimeLimits, check_structure
from hisp.errors import ConfigError, MessageFormatError
from hisp.testing.pki import TestPKI

A, B = "dr.a@h.example", "dr.b@c.example"


def _parts(n: int) -> bytes:
    """A multipart/mixed with ``n`` entities in all (the top one included)."""
    inner = "".join(f"--bb\r\nContent-Type: text/plain\r\n\r\np{i}\r\n" for i in range(n - 1)) + "--bb--\r\n"
    return f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=bb\r\n\r\n{inner}".encode()


def _depth(d: int) -> bytes:
    raw = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for i in range(d):
        head = f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        raw = head + raw + f"\r\n--b{i}--\r\n".encode()
    return b"MIME-Version: 1.0\r\n" + raw


def _headers(h: int) -> bytes:
    return ("".join(f"X-H{i}: v\r\n" for i in range(h - 1)) + "Content-Type: text/plain\r\n\r\nbody\r\n").encode()


def _header_bytes(n: int) -> bytes:
    """An entity whose header fields (each with its CRLF, the blank line not counted) take ``n`` bytes."""
    base = "Content-Type: text/plain\r\nX-Pad: "
    return (base + "a" * (n - len(base) - 2) + "\r\n\r\nbody\r\n").encode()


def _bytes(n: int) -> bytes:
    base = b"Content-Type: text/plain\r\n\r\n"
    return base + b"a" * (n - len(base))


@pytest.mark.parametrize(
    ("make", "limit", "field"),
    [
        (_parts, 5, "max_parts"),
        (_depth, 3, "max_depth"),
        (_headers, 10, "max_headers"),
        (_header_bytes, 200, "max_header_bytes"),
        (_bytes, 1000, "max_message_bytes"),
    ],
)
def test_each_bound_holds_exactly_at_its_edge(make, limit: int, field: str) -> None:  # type: ignore[no-untyped-def]
    """AS-14 / DESIGN 6.3 (bounded parsing): exactly at a configured bound is accepted, one over is refused."""
    limits = MimeLimits(**{field: limit})
    check_structure(make(limit), limits)
    with pytest.raises(MessageFormatError):
        check_structure(make(limit + 1), limits)


def test_listener_equal_to_max_bytes_is_allowed_one_over_refused() -> None:
    """issue 2 (caps from configuration): a listener may take messages exactly as large as the agent parses;
    one byte more is refused at load."""
    ok = "[limits.mime]\nmax_bytes = 100000\n[listeners.backbone]\nport = 0\nmax_message_size = 100000\n"
    assert parse_config(ok).limits.mime.max_message_bytes == 100000
    with pytest.raises(ConfigError, match="max_message_size"):
        parse_config(ok.replace("max_message_size = 100000", "max_message_size = 100001"))


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(at=datetime.now(UTC), name="Limits Probe CA")


def _seal_and_open(pki: TestPKI, plain: bytes, limits: MimeLimits) -> str:
    """Seal under ``limits`` and open under the same: ``"opened"``, or ``"refused before sealing: ..."`` when the
    sealing side refuses it (the sealed form would exceed them). Never: sealed, then refused by the peer."""
    at = pki.at
    agent = SecurityAgent(limits=limits)
    try:
        sealed = agent.process_outgoing(
            plain, sender=[pki.user(A).credential], recipients={DirectAddress.parse(B): [pki.user(B).certificate]},
            at=at,
        )
    except MessageFormatError as exc:
        return f"refused before sealing: {exc.message}"
    agent.process_incoming(sealed.message, credentials=[pki.user(B).credential], trust=pki.anchors, at=at)
    return "opened"


_HEAD = f"From: {A}\r\nTo: {B}\r\nSubject: s\r\nMessage-ID: <l@h.example>\r\nDate: Mon, 30 Nov 2026 09:00:00 +0000\r\n"


def test_what_we_seal_under_max_parts_opens_at_a_peer_with_the_same_limits(pki: TestPKI) -> None:
    """AS-14 / issue 2: what a node accepts for sending (250 and sealed) at its max_parts must be accepted by an
    identically configured receiving node (or refused at submission); today it is bounced by the peer."""
    plain = _HEAD.encode() + _parts(5)
    outcome = _seal_and_open(pki, plain, MimeLimits(max_parts=5))
    assert outcome.startswith("refused before sealing: ") and "counting what sealing adds" in outcome, outcome
    assert _seal_and_open(pki, _HEAD.encode() + _parts(2), MimeLimits(max_parts=5)) == "opened"


def test_what_we_seal_under_max_bytes_opens_at_a_peer_with_the_same_limits(pki: TestPKI) -> None:
    """AS-14 / issue 2: a message sealed at max_bytes must open under the same max_bytes (or be refused before
    sealing, when the sealed size would exceed the bound)."""
    limit = 20_000
    head = (_HEAD + "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode()
    plain = head + (b"a" * 70 + b"\r\n") * ((limit - len(head)) // 72)
    plain += b"a" * (limit - len(plain))
    outcome = _seal_and_open(pki, plain, MimeLimits(max_message_bytes=limit))
    assert outcome.startswith("refused before sealing: the sealed message would be "), outcome
    assert _seal_and_open(pki, plain[: limit // 2], MimeLimits(max_message_bytes=limit)) == "opened"
