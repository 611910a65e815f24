"""Publishing our certificates against real clients and servers (CD-11; DCDT hosting cases H1-H4).

Our responder (``hisp dns serve``'s server) is asked by ``dig`` and dnspython; the ``hisp dns zone`` output is
loaded by BIND ``named`` and must answer the same; the ``hisp ldap ldif`` output is loaded by ``ldapadd`` into
OpenLDAP ``slapd`` and found by an ldap3 search, as DCDT's hosting lookup does. Hostile input must leave the
responder answering.

H1-H4 are also run through our own discovery (:class:`~hisp.adapters.discovery.CertificateDiscovery` and
``hisp discover``), the way a peer HISP finds us: ``named`` serves the ``hisp dns zone`` output of the hosted
domain with its ``_ldap._tcp`` SRV record pointing at the test ``slapd`` (loaded with ``hisp ldap ldif``
output), once as configured (certificates in DNS and LDAP: DNS decides, H1/H2) and once with the certificates
published in LDAP only (H3/H4), so that the LDAP tiers decide.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import ldap3
import pytest
from click.testing import CliRunner
from conftest import AT

from hisp.adapters.discovery import CertificateDiscovery
from hisp.adapters.dns import DnsClient
from hisp.adapters.ldap import LdapClient, LdapSettings
from hisp.addresses import DirectAddress
from hisp.cli import main
from hisp.commands.publish import zones_from_config
from hisp.config import load_config
from hisp.core.certs import CertBinding, Certificate, load_certificates
from hisp.core.discovery import DiscoveryResult, Outcome, Tier, TierStatus
from hisp.core.publish import Zones
from hisp.testing.bind import BindServer, dns_query, run_dig, run_named, start_named
from hisp.testing.hosting import HostedDomain, write_hosted_domain
from hisp.testing.pki import TestPKI
from hisp.testing.responder import RunningResponder, run_responder
from hisp.testing.slapd import SlapdServer, run_slapd

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(AT)


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> HostedDomain:
    return write_hosted_domain(tmp_path_factory.mktemp("hosted"), pki)


@pytest.fixture(scope="module")
def zones(hosted: HostedDomain) -> Zones:
    return zones_from_config(load_config(hosted.config_path), hosted.environ)


@pytest.fixture(scope="module")
def responder(zones: Zones) -> Iterator[RunningResponder]:
    with run_responder(zones) as running:
        yield running


@pytest.fixture(scope="module")
def directory(hosted: HostedDomain) -> Iterator[SlapdServer]:
    result = CliRunner().invoke(main, ["ldap", "ldif", "-c", str(hosted.config_path)], env=hosted.environ)
    assert result.exit_code == 0, result.output
    with run_slapd(hosted.ldap_base, ldif=result.stdout) as server:
        yield server


def _dig(server: RunningResponder, *args: str) -> str:
    return run_dig(server.host, server.port, *args)


def _flags(output: str) -> set[str]:
    return set(output.split(";; flags:")[1].split(";")[0].split())


def _cert_answer(host: str, port: int, name: str) -> list[Certificate]:
    response = dns_query(host, port, name, "CERT", tcp=True)
    assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and response.flags & dns.flags.AA
    return [Certificate.from_der(bytes(r.certificate)) for rrset in response.answer for r in rrset]


def test_responder_answers_dig(responder: RunningResponder, hosted: HostedDomain) -> None:
    assert _dig(responder, "mail.hosted.example", "A", "+short").strip() == "192.0.2.25"
    assert _dig(responder, "_ldap._tcp.hosted.example", "SRV", "+short").strip() == "0 100 389 ldap.hosted.example."
    one = _dig(responder, "d1.hosted.example", "CERT")
    assert "status: NOERROR" in one and "ANSWER: 1" in one and "aa" in _flags(one)
    # two certificates (about 1.7 KB): truncated over UDP, whole over TCP (RFC 1035 4.2; DCDT D14)
    truncated = _dig(responder, "d2.hosted.example", "CERT", "+ignore")
    assert "tc" in _flags(truncated) and "ANSWER: 0" in truncated
    assert "tc" in _flags(_dig(responder, "d1.hosted.example", "CERT", "+ignore", "+noedns"))  # > 512 bytes
    assert "ANSWER: 2" in _dig(responder, "d2.hosted.example", "CERT", "+tcp")
    assert "ANSWER: 2" in _dig(responder, "d2.hosted.example", "CERT")  # dig retries over TCP by itself
    assert "status: NXDOMAIN" in _dig(responder, "nobody.hosted.example", "CERT")
    nodata = _dig(responder, "d1.hosted.example", "A")
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata and "AUTHORITY: 1" in nodata
    assert "status: REFUSED" in _dig(responder, "example.com", "A")


def test_responder_answers_dnspython(responder: RunningResponder, hosted: HostedDomain) -> None:
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [responder.host], responder.port, 3
    answer = resolver.resolve("d2.hosted.example", "CERT")  # UDP, TC, then TCP
    assert {bytes(r.certificate) for r in answer} == {c.der for c in hosted.pair}
    assert {(r.certificate_type, r.key_tag, r.algorithm) for r in answer} == {(1, 0, 0)}
    udp = dns_query(responder.host, responder.port, "d2.hosted.example", "CERT", payload=4096)
    assert udp.flags & dns.flags.TC and not udp.answer
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("d3.hosted.example", "CERT")


QUESTIONS = [
    ("hosted.example", "SOA"),
    ("hosted.example", "NS"),
    ("hosted.example", "MX"),
    ("hosted.example", "CERT"),
    ("d1.hosted.example", "CERT"),
    ("d2.hosted.example", "CERT"),
    ("d1.hosted.example", "A"),
    ("mail.hosted.example", "A"),
    ("_ldap._tcp.hosted.example", "SRV"),
    ("_tcp.hosted.example", "SRV"),
    ("nobody.hosted.example", "CERT"),
]


def _normalised(output: str) -> tuple[str, list[str]]:
    status = output.split("status: ")[1].split(",")[0]
    records = [" ".join(line.split()) for line in output.splitlines() if line and not line.startswith(";")]
    return status, sorted(records)


def test_zone_file_loaded_by_named_answers_the_same(responder: RunningResponder, hosted: HostedDomain) -> None:
    result = CliRunner().invoke(main, ["dns", "zone", "-c", str(hosted.config_path)], env=hosted.environ)
    assert result.exit_code == 0, result.output
    with run_named({hosted.domain: result.stdout}) as named:
        for name, rdtype in QUESTIONS:
            ours = _normalised(_dig(responder, name, rdtype, "+tcp", "+noall", "+comments", "+answer", "+authority"))
            bind = _normalised(named.dig(name, rdtype, "+tcp", "+noall", "+comments", "+answer", "+authority"))
            assert ours == bind, (name, rdtype)
        truncated = named.dig("d2.hosted.example", "CERT", "+ignore")
        assert "tc" in _flags(truncated)


@pytest.mark.parametrize(
    ("case", "local", "binding"),
    [("H1", "d1", CertBinding.ADDRESS), ("H2", "d3", CertBinding.DOMAIN)],
    ids=["H1-address-bound-DNS", "H2-domain-bound-DNS"],
)
def test_hosting_dns(
    responder: RunningResponder, hosted: HostedDomain, case: str, local: str, binding: CertBinding
) -> None:
    address = DirectAddress.parse(hosted.address(local))
    # DCDT's order: CERT at the address's owner name, then at the domain (conformance.md 1.3)
    found = _cert_answer(responder.host, responder.port, address.dns_name())
    if not found:
        found = _cert_answer(responder.host, responder.port, address.domain.dns_name())
    expected = hosted.address_certificate if binding is CertBinding.ADDRESS else hosted.domain_certificate
    assert found == [expected]
    assert found[0].binding_for(address) is binding
    assert found[0].is_valid_at(AT)


@pytest.mark.parametrize(
    ("case", "mail", "binding"),
    [("H3", "d1@hosted.example", CertBinding.ADDRESS), ("H4", "hosted.example", CertBinding.DOMAIN)],
    ids=["H3-address-bound-LDAP", "H4-domain-bound-LDAP"],
)
def test_hosting_ldap(directory: SlapdServer, hosted: HostedDomain, case: str, mail: str, binding: CertBinding) -> None:
    server = ldap3.Server(directory.host, port=directory.port, get_info=ldap3.DSA, connect_timeout=3)
    with ldap3.Connection(server, auto_bind=True, receive_timeout=3) as connection:  # anonymous
        (base,) = connection.server.info.naming_contexts
        # DCDT's filter (conformance.md 1.3)
        search = f"(&(mail={mail})(|(userCertificate;binary=*)(userCertificate=*)))"
        connection.search(base, search, attributes=["mail", "userCertificate;binary"])
        (entry,) = [e for e in connection.response if e["type"] == "searchResEntry"]
    (der,) = entry["raw_attributes"]["userCertificate;binary"]
    expected = hosted.address_certificate if binding is CertBinding.ADDRESS else hosted.domain_certificate
    assert der == expected.der
    address = DirectAddress.parse(mail if "@" in mail else hosted.address("d3"))
    assert Certificate.from_der(der).binding_for(address) is binding


# -- H1-H4 through our own discovery ---------------------------------------------------------------------


@dataclass
class Published:
    """Two ``named`` serving ``hisp dns zone`` output: as configured, and with certificates in LDAP only."""

    both: BindServer
    ldap_only: BindServer
    directory: SlapdServer


def _variant(hosted: HostedDomain, name: str, port: int, *, ldap_only: bool) -> Path:
    """The hosted configuration with ``_ldap._tcp`` pointing at the test slapd (``ldap.<domain>`` = loopback)."""
    text = hosted.config_path.read_text()
    srv = f'value = "0 100 389 ldap.{hosted.domain}."'
    assert text.count(srv) == 1
    text = text.replace(srv, f'value = "0 100 {port} ldap.{hosted.domain}."')
    if ldap_only:
        assert text.count('publish = ["dns", "ldap"]') == 2
        text = text.replace('publish = ["dns", "ldap"]', 'publish = ["ldap"]')
    text += '\n[[domain.record]]\nname = "ldap"\ntype = "A"\nvalue = "127.0.0.1"\n'
    path = hosted.config_path.with_name(name)  # beside the original: the certificate paths are relative
    path.write_text(text)
    return path


def _zone(hosted: HostedDomain, config: Path) -> str:
    result = CliRunner().invoke(main, ["dns", "zone", "-c", str(config)], env=hosted.environ)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def published(hosted: HostedDomain, directory: SlapdServer) -> Iterator[Published]:
    both_zone = _zone(hosted, _variant(hosted, "hisp-both.toml", directory.port, ldap_only=False))
    ldap_zone = _zone(hosted, _variant(hosted, "hisp-ldap-only.toml", directory.port, ldap_only=True))
    both = start_named({hosted.domain: both_zone})
    try:
        ldap_only = start_named({hosted.domain: ldap_zone})
        try:
            yield Published(both, ldap_only, directory)
        finally:
            ldap_only.stop()
    finally:
        both.stop()


#: case -> (local part, which named, deciding tier, binding)
HOSTING_CASES = {
    "H1-address-bound-DNS": ("d1", "both", Tier.DNS_ADDRESS, CertBinding.ADDRESS),
    "H2-domain-bound-DNS": ("d3", "both", Tier.DNS_DOMAIN, CertBinding.DOMAIN),
    "H3-address-bound-LDAP": ("d1", "ldap_only", Tier.LDAP_ADDRESS, CertBinding.ADDRESS),
    "H4-domain-bound-LDAP": ("d3", "ldap_only", Tier.LDAP_DOMAIN, CertBinding.DOMAIN),
}


def _expected(hosted: HostedDomain, binding: CertBinding) -> Certificate:
    return hosted.address_certificate if binding is CertBinding.ADDRESS else hosted.domain_certificate


@pytest.mark.parametrize(("local", "server", "tier", "binding"), list(HOSTING_CASES.values()), ids=list(HOSTING_CASES))
def test_hosting_found_by_our_discovery(
    published: Published, hosted: HostedDomain, pki: TestPKI, local: str, server: str, tier: Tier,
    binding: CertBinding,
) -> None:
    named: BindServer = getattr(published, server)
    dns = DnsClient(named.address, timeout=1.0, lifetime=3.0)
    discovery = CertificateDiscovery(
        dns=dns, ldap=LdapClient(dns, LdapSettings(connect_timeout=2.0, receive_timeout=2.0)), trust=pki.anchors
    )
    address = DirectAddress.parse(hosted.address(local))
    result: DiscoveryResult = asyncio.run(discovery.lookup(address, at=AT))
    expected = _expected(hosted, binding)
    assert result.outcome is Outcome.FOUND, result.explain()
    assert result.chosen == (expected,)
    assert result.deciding_tier is tier
    (report,) = [c for t in result.tiers for c in t.certificates]
    assert report.chosen and report.binding is binding and report.certificate == expected
    later = [t for t in result.tiers if list(Tier).index(t.tier) > list(Tier).index(tier)]
    assert all(t.status is TierStatus.NOT_QUERIED for t in later)
    if tier in (Tier.LDAP_ADDRESS, Tier.LDAP_DOMAIN):
        # found through the published SRV record, at the test slapd's port
        queries = " ".join(result.tier(tier).queries)  # type: ignore[union-attr]
        assert f"ldap.{hosted.domain}.:{published.directory.port}" in queries
        assert f"127.0.0.1:{published.directory.port}" in queries
        for dns_tier in (Tier.DNS_ADDRESS, Tier.DNS_DOMAIN):
            assert result.tier(dns_tier).status is TierStatus.EMPTY  # type: ignore[union-attr]


@pytest.mark.parametrize(("local", "server", "tier", "binding"), list(HOSTING_CASES.values()), ids=list(HOSTING_CASES))
def test_hosting_found_by_hisp_discover(
    published: Published, hosted: HostedDomain, pki: TestPKI, tmp_path: Path, local: str, server: str, tier: Tier,
    binding: CertBinding,
) -> None:
    named: BindServer = getattr(published, server)
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(pki.ca.certificate.to_pem())
    result = CliRunner().invoke(
        main,
        ["discover", hosted.address(local), "--dns-server", f"{named.host}:{named.port}", "--anchor", str(anchor),
         "--at", AT.isoformat(), "--pem"],
    )
    assert result.exit_code == 0, result.stderr
    assert load_certificates(result.stdout.encode()) == [_expected(hosted, binding)]


def _send_udp(host: str, port: int, payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, (host, port))


def _retrying_query(server: RunningResponder, name: str, rdtype: str) -> dns.message.Message:
    for _ in range(4):
        try:
            return dns_query(server.host, server.port, name, rdtype, timeout=1)
        except dns.exception.Timeout:
            continue
    raise AssertionError(f"no answer to {name} {rdtype} in 4 tries")


def test_bad_input_leaves_the_responder_answering(zones: Zones) -> None:
    with run_responder(zones, tcp_idle_timeout=0.5, max_tcp_clients=4) as server:
        good = dns.message.make_query("d1.hosted.example", "CERT").to_wire()
        response_packet = dns.message.make_response(dns.message.make_query("x.hosted.example", "A")).to_wire()
        garbage = [b"", b"\x00", os.urandom(11), os.urandom(12), os.urandom(600), b"\xff" * 5000,
                   good[:20], good + b"trailing", response_packet, b"\x00\x01" + b"\x00" * 10 + b"\xc0\x0c" * 100]
        _send_udp(server.host, server.port, garbage)
        # a flood: 3000 queries as fast as one socket sends them; bounded in time, and the server keeps up
        started = time.monotonic()
        _send_udp(server.host, server.port, [good] * 3000)
        assert time.monotonic() - started < 10
        # a query sent while the kernel's buffer is still full is lost, as UDP goes: clients retry (RFC 1035 4.2.1)
        assert _retrying_query(server, "mail.hosted.example", "A").answer
        # TCP: a length prefix over the limit, a truncated message, a silent client, too many clients
        with socket.create_connection((server.host, server.port), timeout=2) as conn:
            conn.sendall(struct.pack("!H", 60000) + b"x" * 100)
            assert conn.recv(10) == b""  # closed without an answer
        with socket.create_connection((server.host, server.port), timeout=2) as conn:
            conn.sendall(struct.pack("!H", len(good)) + good[:10])
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(10) == b""
        idle = [socket.create_connection((server.host, server.port), timeout=3) for _ in range(6)]
        try:
            for conn in idle[4:]:
                assert conn.recv(10) == b""  # over max_tcp_clients: closed at once
            for conn in idle[:4]:
                assert conn.recv(10) == b""  # idle timeout closes them
        finally:
            for conn in idle:
                conn.close()
        assert dns_query(server.host, server.port, "d2.hosted.example", "CERT", tcp=True).answer
        counts = server.server.counts
        assert counts[next(o for o in counts if o.value == "dropped")] >= 9


def test_cli_serve_reload_and_stop(hosted: HostedDomain, tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    text = hosted.config_path.read_text().replace('file = "', f'file = "{hosted.config_path.parent}/')
    text = text.replace('key = "', f'key = "{hosted.config_path.parent}/')
    text = text.replace('pkcs12 = "', f'pkcs12 = "{hosted.config_path.parent}/')
    config.write_text(text)
    env = {**os.environ, **hosted.environ}
    process = subprocess.Popen(
        [sys.executable, "-m", "hisp.cli", "dns", "serve", "-c", str(config), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "serving hosted.example." in line, line
        port = int(line.rsplit(":", 1)[1].split()[0])
        assert dns_query("127.0.0.1", port, "d1.hosted.example", "CERT", tcp=True).answer
        config.write_text(text + '\n[[domain.record]]\nname = "new"\ntype = "A"\nvalue = "192.0.2.99"\n')
        process.send_signal(signal.SIGHUP)
        assert "reloaded" in process.stderr.readline()
        assert dns_query("127.0.0.1", port, "new.hosted.example", "A").answer[0][0].address == "192.0.2.99"
        config.write_text("[[domain]]\nname = 'broken'\n")
        process.send_signal(signal.SIGHUP)
        assert "reload failed" in process.stderr.readline()
        assert dns_query("127.0.0.1", port, "new.hosted.example", "A").answer  # the old zones are kept
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert "stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
