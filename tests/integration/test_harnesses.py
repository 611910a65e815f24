"""The loopback server harnesses: BIND named and OpenLDAP slapd start, answer dig/ldapsearch, and stop cleanly.

Also the dead targets (a refused port, a black hole) and the large CERT answer that must come truncated over
UDP and whole over TCP (RFC 1035 section 4.2; DCDT D14).
"""

from __future__ import annotations

import base64
import os
import socket
import textwrap
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.rcode
import dns.rdatatype
import ldap3
import pytest
from conftest import AT

from hisp.core import devca
from hisp.testing.bind import BindFactory, HarnessError, dns_query, run_named, zone_text
from hisp.testing.process import black_hole, refused_port
from hisp.testing.slapd import SlapdFactory, run_slapd

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def issued() -> devca.Issued:
    ca = devca.create_ca("Harness CA", at=AT)
    return devca.issue_certificate(ca, at=AT, address="d1@domain1.example")


def _b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def _gone(pid: int | None, directory: Path) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return not directory.exists()
    return False


def _cert_zone(der: bytes) -> str:
    # three copies under one owner: > 3 KB, beyond the 512-byte UDP limit and the 1232-byte EDNS default
    records = "".join(f"d1 IN CERT PKIX {tag} 0 {_b64(der)}\n" for tag in (0, 1, 2))
    return records + "@ IN CERT PKIX 0 0 " + _b64(der) + "\n"


def test_named_serves_and_stops(bind_factory: BindFactory, issued: devca.Issued) -> None:
    der = issued.certificate.der
    server = bind_factory({"domain1.example": _cert_zone(der) + "www IN A 192.0.2.1\n"})
    assert server.host == "127.0.0.1" and server.port > 1024
    assert server.dig("www.domain1.example", "A", "+short").strip() == "192.0.2.1"
    assert "status: NXDOMAIN" in server.dig("nobody.domain1.example", "A")
    # UDP without EDNS: truncated (TC), nothing usable; TCP: the whole RRset (D14)
    udp = server.query("d1.domain1.example", "CERT")
    assert udp.flags & dns.flags.TC
    tcp = server.query("d1.domain1.example", "CERT", tcp=True)
    assert not tcp.flags & dns.flags.TC and tcp.flags & dns.flags.AA
    (rrset,) = tcp.answer
    assert rrset.rdtype == dns.rdatatype.CERT and len(rrset) == 3
    assert {bytes(r.certificate) for r in rrset} == {der}
    assert " tc" in server.dig("d1.domain1.example", "CERT", "+ignore", "+noedns").split("flags:")[1].split(";")[0]
    assert "ANSWER: 3" in server.dig("d1.domain1.example", "CERT", "+tcp")
    # the stub resolver follows TC to TCP by itself
    assert len(server.resolver().resolve("d1.domain1.example", "CERT")) == 3
    pid, directory = server.pid, server.directory
    bind_factory.close()
    assert _gone(pid, directory)
    with pytest.raises(HarnessError):
        server.dig("www.domain1.example", "A", "+short", "+time=1")


def test_named_reload_and_context_manager() -> None:
    with run_named({"a.example": "x IN A 192.0.2.1\n"}) as server:
        assert server.query("x.a.example", "A").answer[0][0].address == "192.0.2.1"
        server.reload({"a.example": "x IN A 192.0.2.2\n", "b.example": "y IN TXT hello\n"})
        assert server.query("x.a.example", "A").answer[0][0].address == "192.0.2.2"
        assert server.query("y.b.example", "TXT").answer[0][0].strings == (b"hello",)
        # a zone we are not authoritative for: REFUSED (no recursion)
        assert server.query("example.com", "A").rcode() == dns.rcode.REFUSED
        pid, directory = server.pid, server.directory
    assert _gone(pid, directory)


def test_named_explicit_soa_and_bad_zone() -> None:
    zone = zone_text("c.example", "x IN A 192.0.2.3", serial=42)
    with run_named({"c.example.": zone}) as server:
        assert server.query("c.example", "SOA").answer[0][0].serial == 42
        with pytest.raises(HarnessError, match="does not load"):
            server.reload({"c.example": "x IN A not-an-address\n"})
    with pytest.raises(HarnessError, match="does not load"), run_named({"d.example": "x IN BOGUS 1\n"}):
        pass


def _person(dn: str, mail: str, der: bytes) -> str:
    cn = dn.split(",")[0].split("=")[1]
    wrapped = textwrap.fill(_b64(der), 76, subsequent_indent=" ")
    return (
        f"dn: {dn}\nobjectClass: inetOrgPerson\ncn: {cn}\nsn: {cn}\nmail: {mail}\n"
        f"userCertificate;binary:: {wrapped}\n"
    )


def test_slapd_serves_and_stops(slapd_factory: SlapdFactory, issued: devca.Issued) -> None:
    der = issued.certificate.der
    ldif = _person("cn=d1,ou=dcdt", "d1@domain1.example", der)
    server = slapd_factory(["ou=dcdt", "dc=domain1,dc=example"], ldif=ldif)
    server.load_ldif(_person("cn=domain1,dc=domain1,dc=example", "domain1.example", der))
    assert "mail: d1@domain1.example" in server.ldapsearch("(mail=d1@domain1.example)", "mail")
    found = server.ldapsearch("(mail=domain1.example)", base="dc=domain1,dc=example")
    assert "cn=domain1,dc=domain1,dc=example" in found
    # ldap3, anonymously: rootDSE namingContexts, then the certificate back byte for byte
    connection = ldap3.Connection(ldap3.Server(server.host, port=server.port, get_info=ldap3.DSA), auto_bind=True)
    assert set(connection.server.info.naming_contexts) == {"ou=dcdt", "dc=domain1,dc=example"}
    connection.search("ou=dcdt", "(mail=d1@domain1.example)", attributes=["userCertificate;binary"])
    (entry,) = connection.response
    assert entry["raw_attributes"]["userCertificate;binary"] == [der]
    connection.unbind()
    # anonymous writes are refused
    with pytest.raises(HarnessError):
        server._tool("ldapadd", stdin=_person("cn=x,ou=dcdt", "x@domain1.example", der))
    pid, directory = server.pid, server.directory
    slapd_factory.close()
    assert _gone(pid, directory)


def test_slapd_context_manager_and_bad_ldif() -> None:
    with run_slapd("ou=dcdt") as server:
        with pytest.raises(HarnessError, match="none of the suffixes"):
            server.load_ldif("dn: cn=x,ou=elsewhere\nobjectClass: inetOrgPerson\ncn: x\nsn: x\n")
        with pytest.raises(HarnessError, match="ldapadd"):
            server.load_ldif("dn: cn=x,ou=dcdt\nobjectClass: inetOrgPerson\ncn: x\n")  # sn is required
        pid, directory = server.pid, server.directory
    assert _gone(pid, directory)


def test_dead_targets() -> None:
    port = refused_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with black_hole() as target:
        started = time.monotonic()
        with socket.create_connection((target.host, target.port), timeout=1) as connection:
            connection.sendall(b"\x30\x0c")  # the start of an LDAP bind
            with pytest.raises(TimeoutError):
                connection.recv(1)
        assert time.monotonic() - started < 3
        with pytest.raises(dns.exception.Timeout):  # a DNS server that never answers
            dns_query(target.host, target.port, "x.example", "A", timeout=0.3)
    with pytest.raises(OSError), socket.create_connection((target.host, target.port), timeout=1):
        pass
