"""Property tests on network-facing parsers: hostile DNS queries, redirects, bundles and configuration files.

Every failure must be a :class:`~hisp.errors.HispError` (for the configuration: a
:class:`~hisp.errors.ConfigError` naming the key) or a clear result; never a bare exception, never an answer
larger than the client allows over UDP.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rdataclass
import pytest
from conftest import AT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.adapters.http import fetch
from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import load_config, parse_config
from hisp.core import devca
from hisp.core.bundles import parse_bundle
from hisp.core.discovery import SrvRecord, decode_cert_rdata, order_srv
from hisp.core.policy import policy_from_name
from hisp.core.publish import (
    MAX_UDP_PAYLOAD,
    DomainPublication,
    Outcome,
    PublishedCertificate,
    PublishedRecord,
    Zones,
    ZoneSettings,
    build_zones,
)
from hisp.errors import ConfigError, HispError
from hisp.testing.bundles import make_p7b, pem_armor
from hisp.testing.pki import TestPKI

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- our DNS responder's core -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zones() -> Zones:
    pki = TestPKI(AT)
    domain = HealthDomain.parse("hostile.example")
    owner = DirectAddress.parse("big@hostile.example")
    certs = tuple(PublishedCertificate(pki.user(f"u{n}@hostile.example").certificate, domain, owner) for n in range(4))
    records = (
        PublishedRecord("hostile.example.", "TXT", '"' + "t" * 250 + '"', 60),
        PublishedRecord("_ldap._tcp.hostile.example.", "SRV", "0 0 389 ldap.hostile.example.", 60),
    )
    return build_zones([DomainPublication(domain, certs, records)], ZoneSettings(("ns1.hostile.example.",)))


NAMES = st.sampled_from(["big.hostile.example", "hostile.example", "x.y.hostile.example", "_ldap._tcp.hostile.example",
                         "other.example", ".", "a" * 63 + ".hostile.example"])
TYPES = st.sampled_from(["A", "ANY", "CERT", "TXT", "SRV", "AXFR", "IXFR", "SOA", "NS", "OPT", "TSIG", "TYPE65280"])


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    query = dns.message.make_query(
        draw(NAMES), draw(TYPES), rdclass=draw(st.sampled_from([dns.rdataclass.IN, dns.rdataclass.CH, 255, 254])),
        use_edns=draw(st.sampled_from([None, 0, 1])), payload=draw(st.integers(0, 65535)),
        options=[dns.edns.GenericOption(draw(st.integers(0, 65535)), draw(st.binary(max_size=64)))
                 for _ in range(draw(st.integers(0, 3)))],
    )
    query.id = draw(st.integers(0, 65535))
    wire = bytearray(query.to_wire())
    for _ in range(draw(st.integers(0, 4))):  # flips, inserts, deletes, header counts
        kind = draw(st.sampled_from(["flip", "insert", "delete", "count"]))
        position = draw(st.integers(0, max(0, len(wire) - 1)))
        if kind == "flip" and wire:
            wire[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            wire[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and wire:
            del wire[position]
        elif kind == "count" and len(wire) >= 12:
            index = draw(st.sampled_from([4, 6, 8, 10]))
            wire[index : index + 2] = draw(st.integers(0, 65535)).to_bytes(2, "big")
    if draw(st.booleans()):  # a compression pointer loop somewhere after the header
        at = draw(st.integers(12, max(12, len(wire))))
        wire[at:at] = (0xC000 | at).to_bytes(2, "big")
    return bytes(wire)


@FAST
@given(wire=queries(), tcp=st.booleans())
def test_responder_core_answers_or_drops_within_the_udp_limit(zones: Zones, wire: bytes, tcp: bool) -> None:
    reply = zones.answer(wire, tcp=tcp)  # never raises
    if reply.wire is None:
        assert reply.outcome is Outcome.DROPPED
        return
    assert len(reply.wire) <= 65535
    parsed = dns.message.from_wire(reply.wire)
    assert parsed.flags & dns.flags.QR and parsed.id == int.from_bytes(wire[:2], "big")
    if not tcp:
        # never amplify past what the client allows: 512, or its EDNS size capped at MAX_UDP_PAYLOAD
        query = dns.message.from_wire(wire)
        limit = max(512, min(query.payload, MAX_UDP_PAYLOAD)) if query.edns >= 0 else 512
        assert len(reply.wire) <= limit
        if reply.outcome is Outcome.TRUNCATED:
            assert parsed.flags & dns.flags.TC and not parsed.answer


@FAST
@given(st.binary(max_size=5000), st.booleans())
def test_responder_core_random_bytes(zones: Zones, wire: bytes, tcp: bool) -> None:
    reply = zones.answer(wire, tcp=tcp)
    assert reply.wire is None or len(reply.wire) <= (65535 if tcp else MAX_UDP_PAYLOAD)


# -- discovery's pure parts ---------------------------------------------------------------------------------


@FAST
@given(
    cert_type=st.sampled_from([1, 4, 253, 0, 65535]),
    url=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda t: ("http://" + t).encode("utf-8"))),
)
def test_cert_rdata_urls_never_raise(cert_type: int, url: bytes) -> None:
    record = decode_cert_rdata(cert_type.to_bytes(2, "big") + b"\0\0\0" + url)
    assert record.describe()
    if record.url is not None:
        assert record.url.isascii() and record.url.startswith(("http://", "https://"))


@FAST
@given(
    st.lists(
        st.builds(SrvRecord, st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 65535),
                  st.sampled_from([".", "", "_ldap._tcp.h.example.", "LDAP.h.example.", "ldap.h.example."])),
        max_size=300,
    )
)
def test_order_srv_hostile_sets(records: list[SrvRecord]) -> None:
    kept, notes = order_srv(records, owner="_ldap._tcp.h.example.", limit=8)
    assert len(kept) <= 8 and len(kept) + len(notes) == len(records)
    assert all(r.target not in (".", "", "_ldap._tcp.h.example.") and r.port for r in kept)


# -- HTTP: whatever a server puts in Location, the outcome is typed ------------------------------------------


@contextlib.contextmanager
def _redirecting_server() -> Iterator[tuple[int, list[bytes]]]:
    """Answer every request with a 302 to the next Location in the shared list (then 404)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(32)
    listener.settimeout(0.1)
    locations: list[bytes] = []
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(2)
                conn.recv(65536)
                if locations:
                    head = b"HTTP/1.1 302 Found\r\nLocation: " + locations.pop(0) + b"\r\n"
                else:
                    head = b"HTTP/1.1 404 Not Found\r\n"
                conn.sendall(head + b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), locations
    finally:
        stopping.set()
        thread.join(2)
        listener.close()


LOCATION = st.one_of(
    st.binary(min_size=1, max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b and not b.isspace()),
    st.builds(lambda p, t: p + t, st.sampled_from([b"http://", b"https://", b"/", b"//", b"http://[", b"ftp://",
                                                   b"http://127.0.0.1:"]),
              st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b)),
)


@SLOW
@given(location=LOCATION)
def test_fetch_any_redirect_is_typed(location: bytes) -> None:
    with _redirecting_server() as (port, locations):
        locations.append(location)
        with contextlib.suppress(HispError):  # anything else escapes and fails the test
            fetch(f"http://127.0.0.1:{port}/", timeout=1.0, max_bytes=1000)


# -- trust bundles ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_der() -> bytes:
    return make_p7b([devca.create_ca(f"Prop Anchor {n}", at=AT - timedelta(days=1)).certificate for n in "AB"])


@FAST
@given(data=st.data(), pem=st.booleans())
def test_parse_bundle_mutations_are_typed(bundle_der: bytes, data: st.DataObject, pem: bool) -> None:
    raw = bytearray(pem_armor(bundle_der) if pem else bundle_der)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[position] = data.draw(st.integers(0, 255))
        else:
            del raw[position : position + data.draw(st.integers(1, 64))]
    try:
        bundle = parse_bundle(bytes(raw), source="prop", at=AT, policy=policy_from_name("direct-1.3"))
    except HispError:
        return
    assert bundle.anchors


# -- configuration ------------------------------------------------------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string (\\uXXXX escapes included)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


SCALARS = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
    st.sampled_from(["", "/", ".", "..", "/dev/null", "/proc/self", "a" * 300, "x" * 5000, "a\u0000b", "loop",
                     "http://[::1", "https://", "ftp://x", "dns", "ldap", "incoming", "@", "hostile.example"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
KEYS = {
    "trust": ["policy", "revocation", "clock_skew", "cache_dir", "anchor", "bundle", "domain"],
    "trust.anchor": ["file", "domains", "addresses", "directions"],
    "trust.bundle": ["name", "url", "refresh", "signer", "domains", "directions"],
    "dns": ["ttl", "negative_ttl", "nameservers", "hostmaster", "serial"],
    "ldap": ["base"],
    "domain": ["name", "addresses", "certificate", "record"],
    "domain.certificate": ["file", "key", "pkcs12", "address", "publish", "passphrase_env", "passphrase_file"],
    "domain.record": ["name", "type", "value", "ttl"],
}


@st.composite
def hostile_configs(draw: st.DrawFn) -> str:
    lines = ['[dns]', 'nameservers = ["ns1.hostile.example"]']
    table = draw(st.sampled_from(sorted(KEYS)))
    array = table in ("trust.anchor", "trust.bundle", "domain", "domain.certificate", "domain.record")
    if table.startswith("domain."):
        lines += ["[[domain]]", 'name = "hostile.example"']
    lines.append(f"[[{table}]]" if array else f"[{table}]")
    defaults = {"trust.anchor": {"file": "a.pem", "domains": ["hostile.example"]},
                "trust.bundle": {"name": "b", "url": "https://b.example/b.p7b", "domains": ["hostile.example"]},
                "domain": {"name": "hostile.example"}, "domain.certificate": {"file": "c.pem"},
                "domain.record": {"type": "TXT", "value": '"x"'}}.get(table, {})
    entries: dict[str, object] = dict(defaults)
    for key in draw(st.lists(st.sampled_from([*KEYS[table], "unknown"]), min_size=1, max_size=3, unique=True)):
        entries[key] = draw(VALUES)
    if table == "dns":
        lines = ["[dns]"]  # its own [dns] table, not the default one
    lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in entries.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile-config")
    os.symlink(base / "loop2", base / "loop")
    os.symlink(base / "loop", base / "loop2")
    (base / "c.pem").write_bytes(b"not a certificate")
    return base


@FAST
@given(text=hostile_configs())
def test_parse_config_hostile_values_only_config_error(config_dir: Path, text: str) -> None:
    try:
        parse_config(text, base=config_dir)
    except ConfigError as exc:
        assert exc.context.get("file") == "<config>"
    except Exception as exc:  # the point: report what escaped, with the TOML
        raise AssertionError(f"{type(exc).__name__}: {exc}\n--- TOML ---\n{text}") from None


@settings(max_examples=6, deadline=None)
@given(depth=st.integers(100, 3000), kind=st.sampled_from(["[", "{a = ", "[{a = "]))
def test_parse_config_deep_nesting_is_config_error(depth: int, kind: str) -> None:
    close = {"[": "]", "{a = ": "}", "[{a = ": "}]"}[kind]
    with pytest.raises(ConfigError):
        parse_config("x = " + kind * depth + "1" + close * depth)


def test_load_config_hostile_paths(config_dir: Path) -> None:
    (config_dir / "latin1.toml").write_bytes(b"[dns]\nhostmaster = \"\xe9\"\n")
    for path in (config_dir / "loop", config_dir, config_dir / "missing.toml", Path("a\x00b"),
                 config_dir / ("n" * 5000), config_dir / "latin1.toml", Path("/dev/null/x")):
        with pytest.raises(ConfigError):
            load_config(path)


def test_parse_config_hostile_paths_name_the_key(config_dir: Path) -> None:
    head = '[dns]\nnameservers = ["ns1.hostile.example"]\n[[domain]]\nname = "hostile.example"\n'
    cases = {
        "domain[0].certificate[0].file": head + '[[domain.certificate]]\nfile = "' + "n" * 5000 + '"\n',
        "domain[0].certificate[0].key": head + '[[domain.certificate]]\nfile = "c.pem"\nkey = "'
        + "/".join(["k" * 300] * 3) + '"\n',
        "domain[0].certificate[0].pkcs12": head + '[[domain.certificate]]\npkcs12 = "' + "p" * 5000 + '"\n',
        "trust.bundle[0].url": '[[trust.bundle]]\nname = "b"\nurl = "http://[::1/b"\ndomains = ["hostile.example"]\n',
    }
    for key, text in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(text, base=config_dir)
        assert caught.value.context.get("key") == key, (key, caught.value)


def test_passphrase_file_with_nul_is_config_error(config_dir: Path) -> None:
    (config_dir / "p.p12").write_bytes(b"not pkcs12")
    text = ('[[domain]]\nname = "hostile.example"\n[[domain.certificate]]\npkcs12 = "p.p12"\npublish = []\n'
            'passphrase_file = "a\\u0000b"\n')
    passphrase = parse_config(text, base=config_dir).domains[0].certificates[0].passphrase
    assert passphrase is not None
    with pytest.raises(ConfigError):
        passphrase.read({})
