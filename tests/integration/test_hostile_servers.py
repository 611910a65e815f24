"""Targeted attacks against real loopback servers: every outcome is typed, bounded in time, and servers go on.

Hostile HTTP servers (raw sockets, so that they can lie: trickled status lines and headers, chunk sizes that
never end, redirects to non-ASCII paths and broken URLs, Content-Length lies, huge headers, 100 MB bodies)
against :func:`hisp.adapters.http.fetch`, the :class:`~hisp.adapters.bundles.BundleRefresher` and the IPKIX
fetch of certificate discovery (real BIND); hostile LDAP entries (real slapd); hostile DNS clients (slowloris,
trickles, 65535-byte frames, pipelining, compression loops, ANY/AXFR, non-IN classes) against our responder.

Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from conftest import AT

from hisp.adapters.bundles import BundleRefresher, RefreshStatus
from hisp.adapters.discovery import CertificateDiscovery
from hisp.adapters.dns import DnsClient
from hisp.adapters.http import fetch
from hisp.adapters.ldap import LdapClient, LdapSettings
from hisp.addresses import DirectAddress, HealthDomain
from hisp.core import devca
from hisp.core.discovery import LdapAnswer, Outcome, SrvRecord, Tier
from hisp.core.policy import policy_from_name
from hisp.core.publish import (
    MAX_UDP_PAYLOAD,
    DomainPublication,
    PublishedCertificate,
    PublishedRecord,
    Zones,
    ZoneSettings,
    build_zones,
)
from hisp.errors import DiscoveryUnavailable, HispError, InputError
from hisp.testing.bind import dns_query, run_named
from hisp.testing.bundles import make_p7b
from hisp.testing.http import serve_http
from hisp.testing.pki import TestPKI
from hisp.testing.responder import run_responder
from hisp.testing.slapd import run_slapd

pytestmark = pytest.mark.timeout(60)

POLICY = policy_from_name("direct-1.3")

# -- a raw HTTP server that can lie --------------------------------------------------------------------

Handler = Callable[[socket.socket, threading.Event], None]


@contextlib.contextmanager
def raw_server(handler: Handler) -> Iterator[int]:
    """Accept connections on 127.0.0.1 and give each to ``handler(conn, stopping)`` in a thread; yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(5)
            conn.recv(65536)  # the request (small, one segment on loopback)
            handler(conn, stopping)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stopping.set()
        thread.join(2)
        listener.close()


def trickle(head: bytes, drip: bytes, interval: float = 0.1) -> Handler:
    """Send ``head``, then ``drip`` one byte at a time for 4 s (a bounded client must give up long before)."""

    def handler(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(head)
        index = 0
        end = time.monotonic() + 4
        while not stopping.wait(interval) and time.monotonic() < end:
            conn.sendall(drip[index % len(drip) : index % len(drip) + 1])
            index += 1

    return handler


def reply(raw: bytes, *, keep_open: bool = False) -> Handler:
    def handler(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(raw)
        if keep_open:
            stopping.wait(10)

    return handler


def redirect(location: bytes) -> Handler:
    return reply(b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n")


def _timed_fetch(url: str, timeout: float = 1.0, max_bytes: int = 100_000) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fetch(url, timeout=timeout, max_bytes=max_bytes)
    except BaseException as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize(
    ("head", "drip"),
    [
        (b"", b"HTTP/1.1 200 OK"),  # the status line, one byte at a time
        (b"HTTP/1.1 200 OK\r\n", b"X-Slow: aaaa"),  # one header line that never ends
        (b"HTTP/1.1 200 OK\r\n", b"X: a\r\n"),  # endless short headers (100-header limit far away)
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"0"),  # a chunk-size line that never ends
    ],
    ids=["status-line", "header-line", "many-headers", "chunk-size"],
)
def test_fetch_trickling_server_is_bounded_by_the_total_timeout(head: bytes, drip: bytes) -> None:
    # the module promises: "a server that trickles bytes cannot stretch it"
    with raw_server(trickle(head, drip, 0.05)) as port:
        error, elapsed = _timed_fetch(f"http://127.0.0.1:{port}/", timeout=1.0)
    assert isinstance(error, DiscoveryUnavailable), repr(error)
    assert elapsed < 2.5, f"fetch with a 1 s budget took {elapsed:.1f} s"


def test_fetch_trickled_body_without_length_is_not_a_success() -> None:
    # framing by close: cut off at the deadline, the partial body must not be returned as the whole
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    with raw_server(trickle(head, b"abcdef", 0.05)) as port:
        error, elapsed = _timed_fetch(f"http://127.0.0.1:{port}/", timeout=1.0)
    assert isinstance(error, DiscoveryUnavailable), repr(error)
    assert elapsed < 2.5


@pytest.mark.parametrize(
    "location",
    [
        b"/\xe9t\xe9",  # non-ASCII path (latin-1 header byte)
        b"http://127.0.0.1:1/caf\xe9",
        b"http://[::1/",  # broken IPv6 literal
        b"http://[zz]/",
        b"http://127.0.0.1:99999/",
        b"ftp://127.0.0.1/x",
        b"file:///etc/passwd",
        b"javascript:alert(1)",
        b"/a\x7fb",
        b"//",
        b"http:///nohost",
    ],
)
def test_fetch_hostile_redirects_are_typed(location: bytes) -> None:
    with raw_server(redirect(location)) as port:
        error, elapsed = _timed_fetch(f"http://127.0.0.1:{port}/")
    assert isinstance(error, HispError), repr(error)
    assert elapsed < 2.5


def test_fetch_redirect_loop_and_idna_host_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_http() as server:
        server.set_route("/a", status=302, headers={"Location": "/b"})
        server.set_route("/b", status=301, headers={"Location": server.url("/a")})
        with pytest.raises(InputError, match="redirects"):
            fetch(server.url("/a"), timeout=2, max_bytes=1000)
        # CPython's getaddrinfo IDNA-encodes the host first: a 64-octet label raises UnicodeError before any
        # lookup. The test guard (conftest) refuses non-loopback names before that step; put it back in front.
        guarded = socket.getaddrinfo

        def idna_first(host: object, *args: object, **kwargs: object) -> object:
            if isinstance(host, str):
                host.encode("idna")
            return guarded(host, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "getaddrinfo", idna_first)
        server.set_route("/idna", status=302, headers={"Location": "http://" + "a" * 64 + ".invalid/"})
        with pytest.raises(HispError):
            fetch(server.url("/idna"), timeout=2, max_bytes=1000)


def test_fetch_lies_and_floods_are_typed_and_bounded() -> None:
    cases: list[tuple[bytes, type[HispError]]] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 90\r\n\r\nshort", DiscoveryUnavailable),  # then silence
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", InputError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", InputError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", InputError),
        (b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 200 + b"\r\n", DiscoveryUnavailable),  # > 100 headers
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", DiscoveryUnavailable),  # > 64 KiB line
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n" + b"\x1f\x8b" + b"\0" * 18,
         HispError),
        (b"NOT HTTP AT ALL\r\n\r\n", DiscoveryUnavailable),
        (b"HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n", DiscoveryUnavailable)  # >= 500,
    ]
    for raw, expected in cases:
        with raw_server(reply(raw, keep_open=True)) as port:
            error, elapsed = _timed_fetch(f"http://127.0.0.1:{port}/", timeout=1.0, max_bytes=100)
        if expected is HispError and error is None:
            continue  # gzip: bytes returned as is (identity was asked for), never decoded: fine
        assert isinstance(error, expected), (raw[:60], repr(error))
        assert elapsed < 2.5, raw[:60]
    # 100 MB, announced and not announced: refused as soon as it passes the limit
    big = b"x" * (100 * 1024 * 1024)
    with serve_http() as server:
        server.set_route("/announced", body=big)
        server.set_route("/unannounced", body=big, omit_length=True)
        for path in ("/announced", "/unannounced"):
            error, elapsed = _timed_fetch(server.url(path), timeout=5.0, max_bytes=64 * 1024)
            assert isinstance(error, InputError), repr(error)
            assert elapsed < 3


# -- the bundle refresher keeps its last good bundle ------------------------------------------------------


def test_bundle_refresher_survives_hostile_servers(tmp_path: Path) -> None:
    anchor = devca.create_ca("Hostile Test Anchor", at=AT - timedelta(days=1)).certificate
    good = make_p7b([anchor])
    with serve_http() as server:
        server.set_route("/b.p7b", body=good, etag='"v1"')
        refresher = BundleRefresher(
            server.url("/b.p7b"), cache_dir=tmp_path, refresh_interval=60, policy=POLICY, timeout=1.0
        )
        assert refresher.refresh(AT).status is RefreshStatus.UPDATED
        hostile: list[tuple[str, Handler]] = [
            ("non-ascii redirect", redirect(b"/\xe9")),
            ("broken url redirect", redirect(b"http://[::1/")),
            ("trickled headers", trickle(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n", 0.05)),
            ("garbage bundle", reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x30\x80\x30\x80")),
        ]
        for name, handler in hostile:
            with raw_server(handler) as port:
                refresher.url = f"http://127.0.0.1:{port}/b.p7b"
                started = time.monotonic()
                outcome = refresher.refresh(AT, force=True)
                assert time.monotonic() - started < 3, name
            assert outcome.status is RefreshStatus.KEPT_LAST_GOOD, name
            assert outcome.bundle is not None and outcome.bundle.anchors == (anchor,), name
        # a cache whose metadata was tampered with (validators of the wrong type or with line breaks)
        refresher.url = server.url("/b.p7b")
        for etag in (["x"], {"a": 1}, 7, 'v"\r\nX-Injected: 1', "\u20ac"):
            meta = json.loads(refresher.metadata_path.read_text())
            meta["etag"] = etag
            meta["last_modified"] = etag
            refresher.metadata_path.write_text(json.dumps(meta))
            reloaded = BundleRefresher(
                server.url("/b.p7b"), cache_dir=tmp_path, refresh_interval=60, policy=POLICY, timeout=1.0,
                name=refresher.name,
            )
            assert reloaded.load_cached(AT) is not None
            outcome = reloaded.refresh(AT, force=True)
            assert outcome.status in (RefreshStatus.UNCHANGED, RefreshStatus.UPDATED), (etag, outcome)
            assert not any("X-Injected" in k for r in server.requests for k in r.headers)


# -- discovery: IPKIX records pointing at hostile HTTP servers, via a real BIND -----------------------------


def test_discovery_ipkix_to_hostile_http_ends_clearly() -> None:
    pki = TestPKI(at=AT, name="Hostile IPKIX CA")
    zone = "hostile.example"
    domain_cert = pki.domain(zone).certificate

    def ipkix(owner: str, url: str) -> str:
        return f"{owner} IN CERT IPKIX 0 0 {base64.b64encode(url.encode()).decode()}\n"

    with (
        serve_http() as server,
        raw_server(redirect(b"/\xe9t\xe9")) as nonascii,
        raw_server(redirect(b"http://[::1/")) as broken,
        raw_server(trickle(b"HTTP/1.1 200 OK\r\n", b"X-A: b\r\n", 0.05)) as slow,
    ):
        server.set_route("/hang", hang=True)
        server.set_route("/huge", body=b"\x30" * (2 * 1024 * 1024))
        records = "".join([
            f"@ IN CERT PKIX 0 0 {base64.b64encode(domain_cert.der).decode()}\n",
            ipkix("nonascii", f"http://127.0.0.1:{nonascii}/c.der"),
            ipkix("broken", f"http://127.0.0.1:{broken}/c.der"),
            ipkix("slow", f"http://127.0.0.1:{slow}/c.der"),
            ipkix("hang", server.url("/hang")),
            ipkix("huge", server.url("/huge")),
            "cname1 IN CNAME cname2\ncname2 IN CNAME cname1\n",
        ])
        with run_named({zone: records}) as named:
            dns = DnsClient(named.address, timeout=1.0, lifetime=2.0)
            discovery = CertificateDiscovery(
                dns=dns, ldap=LdapClient(dns, LdapSettings(connect_timeout=1.0, receive_timeout=1.0)),
                trust=pki.anchors, fetch_timeout=1.0, budget=10.0,  # type: ignore[arg-type]
            )
            for user in ("nonascii", "broken", "slow", "hang", "huge", "cname1"):
                started = time.monotonic()
                result = asyncio.run(discovery.lookup(f"{user}@{zone}", at=AT))
                assert time.monotonic() - started < 4, user
                # the address tier fails on its URL; the domain-bound certificate is used (CD-8 fall back)
                # only when the address tier found nothing certain
                assert result.outcome in (Outcome.FOUND, Outcome.UNAVAILABLE, Outcome.NOT_FOUND), user
                tier = result.tier(Tier.DNS_ADDRESS)
                assert tier is not None, user
                if user != "cname1":
                    assert tier.errors or any(r.defect for r in tier.records), (user, result.explain())


# -- LDAP: thousands of matching entries, huge values, garbage PKCS#7 --------------------------------------


def test_ldap_hostile_entries_are_bounded() -> None:
    garbage_p7 = b"\x30\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x80" + b"\x30\x80" * 500
    huge = b"\x30\x82\xff\xff" + b"A" * 300_000
    entries = []
    for n in range(300):
        value = huge if n == 0 else garbage_p7
        entries.append(
            f"dn: cn=u{n},ou=hostile\nobjectClass: inetOrgPerson\ncn: u{n}\nsn: u{n}\nmail: many@h.example\n"
            f"userSMIMECertificate:: {base64.b64encode(value).decode()}\n\n"
        )
    with run_slapd("ou=hostile", ldif="".join(entries)) as slapd:
        dns = DnsClient(("127.0.0.1", 9), timeout=0.5, lifetime=0.5)  # never asked: the target is an IP
        client = LdapClient(dns, LdapSettings(connect_timeout=1.0, receive_timeout=2.0, size_limit=16))

        async def search() -> LdapAnswer:
            async with client.session() as session:
                return await session.search(SrvRecord(0, 0, slapd.port, "127.0.0.1."), "many@h.example")

        started = time.monotonic()
        answer = asyncio.run(search())
        assert time.monotonic() - started < 10
        assert len(answer.entries) <= 16
        assert any("more than 16 entries" in d for d in answer.defects)
        assert all(len(v) <= 64 * 1024 for e in answer.entries for _, v in e.values)
        assert any("bytes ignored" in d for d in answer.defects) or all(e.dn != "cn=u0,ou=hostile" for e in
                                                                        answer.entries)


# -- our DNS responder under hostile clients -------------------------------------------------------------


@pytest.fixture(scope="module")
def big_zones() -> Zones:
    pki = TestPKI(AT)
    domain = HealthDomain.parse("hostile.example")
    owner = DirectAddress.parse("big@hostile.example")
    certs = tuple(
        PublishedCertificate(pki.user(f"u{n}@hostile.example").certificate, domain, owner) for n in range(20)
    )
    txt = tuple(PublishedRecord("hostile.example.", "TXT", f'"{n}' + "x" * 250 + '"', 60) for n in range(4))
    return build_zones([DomainPublication(domain, certs, txt)], ZoneSettings(("ns1.hostile.example.",)))


def _udp(port: int, wire: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_responder_never_amplifies_and_refuses_what_it_must(big_zones: Zones) -> None:
    with run_responder(big_zones) as server:
        queries = [
            dns.message.make_query("big.hostile.example", "ANY"),
            dns.message.make_query("big.hostile.example", "CERT", use_edns=0, payload=65535),
            dns.message.make_query("hostile.example", "ANY", use_edns=0, payload=4096,
                                   options=[dns.edns.GenericOption(65001, b"\xff" * 200)] * 5),
            dns.message.make_query("hostile.example", "TXT", use_edns=0, payload=1),
        ]
        for query in queries:
            wire = query.to_wire()
            answer = _udp(server.port, wire)
            assert answer is not None
            limit = 512 if query.edns < 0 else max(512, min(query.payload, MAX_UDP_PAYLOAD))
            assert len(answer) <= limit
            parsed = dns.message.from_wire(answer)
            if not parsed.answer:
                assert parsed.flags & dns.flags.TC
        # over TCP the whole answer comes back
        full = dns_query(server.host, server.port, "big.hostile.example", "CERT", tcp=True)
        assert len(full.answer[0]) == 20
        # AXFR (TCP), CHAOS class, thousands of questions, compression loop in the question
        refused = dns_query(server.host, server.port, "hostile.example", "AXFR", tcp=True)
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
        chaos = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)
        reply_wire = _udp(server.port, chaos.to_wire())
        assert reply_wire is not None and dns.message.from_wire(reply_wire).rcode() == dns.rcode.REFUSED
        one = dns.message.make_query("hostile.example", "A").to_wire()
        many = bytearray(one[:12]) + one[12:] * 150  # 150 questions, under the 4096-byte query limit
        many[4:6] = struct.pack("!H", 150)
        formerr = _udp(server.port, bytes(many))
        assert formerr is not None and len(formerr) <= 512
        assert dns.message.from_wire(formerr).rcode() == dns.rcode.FORMERR
        loop = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c" + b"\x00\x01\x00\x01"
        assert _udp(server.port, loop, timeout=0.3) is None
        assert _udp(server.port, one) is not None  # still answering


def test_responder_tcp_slowloris_trickle_and_huge_frames(big_zones: Zones) -> None:
    good = dns.message.make_query("big.hostile.example", "CERT").to_wire()
    with run_responder(big_zones, tcp_idle_timeout=0.5, max_tcp_clients=4) as server:
        address = ("127.0.0.1", server.port)
        # pipelined: three queries in one segment, three answers in order
        with socket.create_connection(address, timeout=3) as conn:
            conn.sendall((struct.pack("!H", len(good)) + good) * 3)
            for _ in range(3):
                (length,) = struct.unpack("!H", _recv_exactly(conn, 2))
                assert dns.message.from_wire(_recv_exactly(conn, length)).answer
        # a 65535-byte frame (over the query limit): closed without reading it all
        with socket.create_connection(address, timeout=3) as conn:
            conn.sendall(struct.pack("!H", 65535) + b"\0" * 65535)
            assert conn.recv(10) == b""
        # a trickling client: one byte every 0.1 s never completes a query; closed within the idle timeout
        with socket.create_connection(address, timeout=3) as conn:
            frame = struct.pack("!H", len(good)) + good
            started = time.monotonic()
            with contextlib.suppress(OSError):
                for byte in frame:
                    conn.sendall(bytes([byte]))
                    time.sleep(0.1)
                    if time.monotonic() - started > 2:
                        break
            conn.settimeout(2)
            with contextlib.suppress(ConnectionError):
                assert conn.recv(10) == b""
            assert time.monotonic() - started < 3.5
        # slowloris: every TCP slot held; UDP keeps answering, and TCP answers again once they are gone
        holders = [socket.create_connection(address, timeout=3) for _ in range(6)]
        try:
            assert _udp(server.port, good) is not None
        finally:
            for conn in holders:
                conn.close()
        time.sleep(0.7)
        assert dns_query(server.host, server.port, "big.hostile.example", "CERT", tcp=True).answer
