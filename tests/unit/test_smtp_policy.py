"""The pure SMTP rules: line endings, replies, sender ownership, AS-13, MX order, passwords, endpoint URLs."""

from __future__ import annotations

import base64
import random
import re

import pytest

from hisp.adapters.edge import EndpointKind, parse_endpoint
from hisp.core.smtp_policy import (
    REPLIES,
    DeliveryOutcome,
    MxHost,
    check_routing,
    classify_reply,
    find_bare_line_ending,
    hash_password,
    header_from_addresses,
    normalize_mailbox,
    order_mx,
    parse_password_hash,
    parse_reply,
    sender_allowed,
    verify_password,
)
from hisp.errors import ConfigError, PermanentDeliveryError, PolicyViolation

LINE_ENDINGS = [
    (b"", -1), (b"a\r\nb\r\n", -1), (b"a\nb\r\n", 1), (b"\n", 0), (b"a\rb\r\n", 1), (b"a\r\n\r", 3),
    (b"x\r\n.\n", 4), (b"a\r\r\n", 1),
]


@pytest.mark.parametrize(("data", "offset"), LINE_ENDINGS, ids=[repr(d) for d, _ in LINE_ENDINGS])
def test_find_bare_line_ending(data: bytes, offset: int) -> None:
    assert find_bare_line_ending(data) == offset


def test_replies_are_well_formed_with_enhanced_status() -> None:
    for name, reply in REPLIES.items():
        parsed = parse_reply(str(reply))
        assert parsed == reply, name
        assert reply.status[0] == str(reply.code)[0], name


@pytest.mark.parametrize("text", ["", "OK", "25", "2500 x", "250 ok\r\n250 x", "199 x", "600 x"])
def test_parse_reply_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reply(text)


def test_parse_reply_without_enhanced_status() -> None:
    assert parse_reply("451 try later") == parse_reply("451 4.0.0 try later")


def test_sender_rules() -> None:
    allowed = frozenset({"dr.smith@direct.clinic.example"})
    assert sender_allowed(allowed, "<Dr.Smith@Direct.Clinic.Example>")
    assert not sender_allowed(allowed, "boss@direct.clinic.example")
    assert not sender_allowed(allowed, "<>")
    assert normalize_mailbox("<>") == ""
    raw = b"From: A <Dr.Smith@direct.clinic.example>\r\nTo: x@y.example\r\n\r\nFrom: not@header.example\r\n"
    assert header_from_addresses(raw) == ("dr.smith@direct.clinic.example",)
    assert header_from_addresses(b"Subject: none\r\n\r\n") == ()


ROUTING = [
    ("ok", "a@x.example", ["b@y.example"], [("From", "a@x.example"), ("To", "B@y.example")], None),
    ("sender-header", "a@x.example", ["b@y.example"], [("From", "o@x.example"), ("Sender", "a@x.example"),
                                                       ("Cc", "b@y.example")], None),
    ("mail-from-mismatch", "z@x.example", ["b@y.example"], [("From", "a@x.example"), ("To", "b@y.example")],
     "sender"),
    ("rcpt-not-listed", "a@x.example", ["c@y.example"], [("From", "a@x.example"), ("To", "b@y.example")],
     "recipient"),
    ("bcc", "a@x.example", ["b@y.example"], [("From", "a@x.example"), ("To", "b@y.example"),
                                              ("Bcc", "c@y.example")], "bcc"),
]


@pytest.mark.parametrize(("mail_from", "rcpts", "headers", "rule"), [r[1:] for r in ROUTING],
                         ids=[r[0] for r in ROUTING])
def test_check_routing_as13(mail_from: str, rcpts: list[str], headers: list[tuple[str, str]],
                            rule: str | None) -> None:
    if rule is None:
        check_routing(mail_from, rcpts, headers)
        return
    with pytest.raises(PolicyViolation) as caught:
        check_routing(mail_from, rcpts, headers)
    assert caught.value.context["rule"] == rule
    assert caught.value.smtp_reply().startswith("554 5.7.1 AS-13")


def test_check_routing_null_sender_only_when_allowed() -> None:
    headers = [("From", "mailer-daemon@x.example"), ("To", "b@y.example")]
    check_routing("", ["b@y.example"], headers, allow_null_sender=True)
    with pytest.raises(PolicyViolation):
        check_routing("", ["b@y.example"], headers)


def test_order_mx() -> None:
    records = [(20, "B.example."), (10, "a.example."), (10, "c.example."), (20, "b.example")]
    hosts = order_mx("d.example", records, rng=random.Random(3))
    assert [h.preference for h in hosts] == [10, 10, 20]
    assert {h.name for h in hosts[:2]} == {"a.example", "c.example"}
    orders = {tuple(h.name for h in order_mx("d.example", records, rng=random.Random(seed))[:2]) for seed in range(20)}
    assert len(orders) == 2  # equal preferences are tried in random order (RFC 5321 section 5.1)
    assert order_mx("D.example.", []) == (MxHost("d.example", 0, implicit=True),)
    with pytest.raises(PermanentDeliveryError):
        order_mx("d.example", [(0, "")])


@pytest.mark.parametrize(("code", "outcome"), [(250, DeliveryOutcome.DELIVERED), (421, DeliveryOutcome.TRANSIENT),
                                               (452, DeliveryOutcome.TRANSIENT), (550, DeliveryOutcome.PERMANENT),
                                               (554, DeliveryOutcome.PERMANENT)])
def test_classify_reply(code: int, outcome: DeliveryOutcome) -> None:
    assert classify_reply(code) is outcome


def test_password_hash_roundtrip() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$32768$8$1$")
    assert verify_password("s3cret", stored)
    assert verify_password(b"s3cret", stored)
    assert not verify_password("S3cret", stored)
    assert hash_password("s3cret") != stored  # random salt
    assert hash_password("x", salt=b"0" * 16) == hash_password("x", salt=b"0" * 16)


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$3$8$1$AA==$AA==", "scrypt$1024$8$1$!!$AA==",
                                    "bcrypt$1$1$1$AA==$AA==", "scrypt$1048576$64$1$AA==$AA=="])
def test_verify_password_refuses_malformed_hash(stored: str) -> None:
    with pytest.raises(ConfigError):
        verify_password("x", stored)


def test_hash_password_refuses_empty() -> None:
    with pytest.raises(ValueError):
        hash_password("")


@pytest.mark.parametrize("salt", [b"", b"0" * 15, b"0" * 17])
def test_hash_password_refuses_a_salt_of_another_length(salt: bytes) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        hash_password("x", salt=salt)


def test_parse_password_hash_reads_what_hash_password_writes() -> None:
    stored = hash_password("s3cret", salt=b"0123456789abcdef")
    parsed = parse_password_hash(stored)
    assert (parsed.n, parsed.r, parsed.p, parsed.salt) == (2**15, 8, 1, b"0123456789abcdef")
    assert len(parsed.digest) == 32 and base64.b64encode(parsed.digest).decode() == stored.rsplit("$", 1)[1]
    assert "0123456789abcdef" not in repr(parsed)  # salt and digest stay out of logs
    # another cost in bounds is still a hash this module can check (made with other parameters)
    assert parse_password_hash(stored.replace("$32768$", "$16384$", 1)).n == 16384


_SALT16, _HASH32 = base64.b64encode(b"s" * 16).decode(), base64.b64encode(b"h" * 32).decode()


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        ("scrypt$16384$8$1$SALT$HASH", "salt decodes to 3 bytes, not 16"),  # the README's old placeholder
        (f"scrypt$16384$8$1${_SALT16}$HASH", "hash decodes to 3 bytes, not 32"),
        (f"scrypt$16384$8$1${base64.b64encode(b's' * 15).decode()}${_HASH32}", "salt decodes to 15 bytes"),
        (f"scrypt$16384$8$1${_SALT16}${base64.b64encode(b'h' * 33).decode()}", "hash decodes to 33 bytes"),
        (f"scrypt$16384$8$1$!!!!${_HASH32}", "salt is not base64"),
        (f"scrypt$16384$8$1${_SALT16}$", "hash decodes to 0 bytes"),
        (f"scrypt$16384$8$1${_SALT16}${_HASH32[:-1]}", "hash is not base64"),
        (f"scrypt$N$8$1${_SALT16}${_HASH32}", "decimal integers"),
        (f"scrypt$+16384$8$1${_SALT16}${_HASH32}", "decimal integers"),
        (f"scrypt$016384$8$1${_SALT16}${_HASH32}", "decimal integers"),
        (f"scrypt$1000$8$1${_SALT16}${_HASH32}", "out of bounds"),  # not a power of two
        (f"scrypt$16384$64$1${_SALT16}${_HASH32}", "out of bounds"),
        (f"scrypt$1048576$8$1${_SALT16}${_HASH32}", "out of bounds"),  # 1 GiB of memory
        (f"bcrypt$16384$8$1${_SALT16}${_HASH32}", "not scrypt"),
        (f"scrypt$16384$8$1${_SALT16}${_HASH32}$x", "not scrypt"),
        ("", "not scrypt"),
    ],
)
def test_parse_password_hash_refuses_what_hash_password_never_writes(stored: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_password_hash(stored)
    with pytest.raises(ConfigError, match="hisp user add"):
        verify_password("x", stored)


ENDPOINTS = [
    ("smtp://ehr.local:2525", EndpointKind.SMTP, "ehr.local", 2525, None),
    ("lmtp://127.0.0.1:24", EndpointKind.LMTP, "127.0.0.1", 24, None),
    ("lmtp:/run/dovecot/lmtp", EndpointKind.LMTP, None, None, "/run/dovecot/lmtp"),
    ("maildir:/var/mail/ehr", EndpointKind.MAILDIR, None, None, "/var/mail/ehr"),
]


@pytest.mark.parametrize(("url", "kind", "host", "port", "path"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_parse_endpoint(url: str, kind: EndpointKind, host: str | None, port: int | None, path: str | None) -> None:
    endpoint = parse_endpoint(url)
    assert (endpoint.kind, endpoint.host, endpoint.port, endpoint.path, str(endpoint)) == (kind, host, port, path, url)


@pytest.mark.parametrize("url", ["http://x:1", "smtp://host", "smtp://:25", "maildir:relative/path", "lmtp:x",
                                 "smtp://h:99999", "smtp://h:25/path", "maildir://host/path"])
def test_parse_endpoint_refuses(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoint(url)
