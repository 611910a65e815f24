"""Publishing our certificates against real clients and servers (CD-11; DCDT hosting cases H1-H4).

Our responder (``hisp dns serve``'s server) is asked by ``dig`` and dnspython; the ``hisp dns zone`` output is
loaded by BIND ``named`` and must answer the same; the ``hisp ldap ldif`` output is loaded by ``ldapadd`` into
OpenLDAP ``slapd`` and found by an ldap3 search, as DCDT's hosting lookup does. Hostile input must leave the
responder answering.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import ldap3
import pytest
from click.testing import CliRunner
from conftest import AT

from hisp.addresses import DirectAddress
from hisp.cli import main
from hisp.commands.publish import zones_from_config
from hisp.config import load_config
from hisp.core.certs import CertBinding, Certificate
from hisp.core.publish import Zones
from hisp.testing.bind import dns_query, run_dig, run_named
from hisp.testing.hosting import HostedDomain, write_hosted_domain
from hisp.testing.pki import TestPKI
from hisp.testing.responder import RunningResponder, run_responder
from hisp.testing.slapd import SlapdServer, run_slapd

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> HostedDomain:
    return write_hosted_domain(tmp_path_factory.mktemp("hosted"), TestPKI(AT))


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
