"""Certificate discovery against a real BIND ``named`` and a real OpenLDAP ``slapd`` on loopback.

One small DCDT-like world (conformance.md section 1.2) is built once per module: a zone ``dcdt.example`` with
CERT PKIX records (address- and domain-bound, valid and expired), a >512-byte answer that forces TC and TCP
(D14), a record whose certificate field is not X.509, a flood of 40 junk CERT records (about 57 KB; the 64 KB
TXT flood that reaches the client is in ``test_discovery_hostile_dns.py``: BIND never sends TXT records to a
CERT question), an IPKIX record pointing at a loopback HTTP server, and ``_ldap._tcp`` SRV records: one live
slapd, a dead target first (D10), and an SRV loop; slapd holds entries with ``userCertificate;binary``,
garbage, and no certificate at all. Each test asserts the exact certificate chosen, or that none was.
"""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import AT

from hisp.adapters.discovery import CertificateDiscovery, DiscoveryCache
from hisp.adapters.dns import DnsClient
from hisp.adapters.ldap import LdapClient, LdapSettings
from hisp.cli import main
from hisp.core.certs import Certificate, load_certificates
from hisp.core.discovery import DiscoveryResult, Outcome, Tier, TierStatus
from hisp.errors import CertificateNotFound, DiscoveryUnavailable
from hisp.testing.bind import BindServer, start_named
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.pki import TestPKI
from hisp.testing.process import black_hole, refused_port
from hisp.testing.slapd import SlapdServer, start_slapd

pytestmark = pytest.mark.timeout(120)

ZONE = "dcdt.example"
D1 = f"domain1.{ZONE}"  # DNS cases
D2 = f"domain2.{ZONE}"  # LDAP cases
D3 = f"domain3.{ZONE}"  # dead SRV target first
D4 = f"domain4.{ZONE}"  # SRV loop / absurd targets
D5 = f"domain5.{ZONE}"  # an LDAP target that accepts and never answers
D6 = f"domain6.{ZONE}"  # nothing at all


@dataclass
class World:
    pki: TestPKI
    named: BindServer
    slapd: SlapdServer
    http: LoopbackHTTPServer
    certs: dict[str, Certificate]


def _b64(der: bytes) -> str:
    return base64.b64encode(der).decode("ascii")


def _cert_rr(owner: str, der: bytes, cert_type: str = "PKIX") -> str:
    return f"{owner} IN CERT {cert_type} 0 0 {_b64(der)}\n"


def _person(dn: str, mail: str, *values: tuple[str, bytes]) -> str:
    cn = dn.split(",")[0].split("=")[1]
    lines = [f"dn: {dn}", "objectClass: inetOrgPerson", f"cn: {cn}", f"sn: {cn}", f"mail: {mail}"]
    for attribute, value in values:
        lines.append(f"{attribute}:: " + textwrap.fill(_b64(value), 76, subsequent_indent=" "))
    return "\n".join(lines) + "\n\n"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    pki = TestPKI(at=AT, name="DCDT-like Test CA")
    expired = {"not_before": AT - timedelta(days=400), "not_after": AT - timedelta(days=35)}
    c = {
        "d1": pki.user(f"d1@{D1}").certificate,
        "d1_db_valid": pki.domain(D1).certificate,
        "d1_db_expired": pki.domain(D1, **expired).certificate,
        "d5_expired": pki.user(f"d5@{D1}", **expired).certificate,
        "d14": pki.user(f"d14@{D1}", key_size=4096).certificate,
        "ipkix": pki.user(f"url@{D1}").certificate,
        "d3": pki.user(f"d3@{D2}").certificate,
        "d7_expired": pki.user(f"d7@{D2}", **expired).certificate,
        "d2_db_valid": pki.domain(D2).certificate,
        "d10": pki.user(f"d10@{D3}").certificate,
    }
    ldif = "".join([
        _person("cn=d3,ou=dcdt", f"d3@{D2}", ("userCertificate;binary", c["d3"].der)),
        _person("cn=d7,ou=dcdt", f"d7@{D2}", ("userCertificate;binary", c["d7_expired"].der)),
        _person("cn=domain2,ou=dcdt", D2, ("userCertificate;binary", c["d2_db_valid"].der)),
        # OpenLDAP checks the certificate syntax of userCertificate; userSMIMECertificate (binary) is unchecked
        _person("cn=garbage,ou=dcdt", f"garbage@{D2}", ("userSMIMECertificate", b"\x30\x82garbage" * 20)),
        _person("cn=nocert,ou=dcdt", f"nocert@{D2}"),
        _person("cn=d10,ou=dcdt", f"d10@{D3}", ("userCertificate;binary", c["d10"].der)),
    ])
    slapd = start_slapd("ou=dcdt", ldif=ldif)
    http_cm = serve_http()
    http_server = http_cm.__enter__()
    named: BindServer | None = None
    try:
        http_server.set_route("/url.der", body=c["ipkix"].der)
        dead = refused_port()
        junk = [base64.b64encode(bytes([n]) * 1400).decode() for n in range(40)]
        records = "".join([
            "ldap IN A 127.0.0.1\n",
            "dead IN A 127.0.0.1\n",
            "loop IN CNAME loop2\nloop2 IN CNAME loop\n",
            _cert_rr("d1.domain1", c["d1"].der),
            _cert_rr("domain1", c["d1_db_expired"].der),
            _cert_rr("domain1", c["d1_db_valid"].der),
            _cert_rr("d5.domain1", c["d5_expired"].der),
            _cert_rr("d14.domain1", c["d14"].der),
            "notx509.domain1 IN CERT PKIX 0 0 " + _b64(b"this is not an X.509 certificate") + "\n",
            "pgp.domain1 IN CERT PGP 0 0 " + _b64(b"pgp key material") + "\n",
            f"url.domain1 IN CERT IPKIX 0 0 {_b64(http_server.url('/url.der').encode())}\n",
            "".join(f"flood.domain1 IN CERT PKIX 0 0 {j}\n" for j in junk),
            f"_ldap._tcp.domain2 IN SRV 0 0 {slapd.port} ldap.{ZONE}.\n",
            f"_ldap._tcp.domain3 IN SRV 0 0 {dead} dead.{ZONE}.\n",
            f"_ldap._tcp.domain3 IN SRV 1 0 {slapd.port} ldap.{ZONE}.\n",
            # (a target equal to the SRV owner is refused by BIND's check-names; the unit tests cover it)
            f"_ldap._tcp.domain4 IN SRV 1 0 {slapd.port} loop.{ZONE}.\n",
            f"_ldap._tcp.domain4 IN SRV 2 0 {slapd.port} nowhere.{ZONE}.\n",
            f"_ldap._tcp.domain4 IN SRV 3 0 {dead} dead.{ZONE}.\n",
            "".join(f"_ldap._tcp.domain4 IN SRV 9 {n} {slapd.port} nx{n}.{ZONE}.\n" for n in range(1, 60)),
        ])
        named = start_named({ZONE: records})
        yield World(pki, named, slapd, http_server, c)
    finally:
        if named is not None:
            named.stop()
        http_cm.__exit__(None, None, None)
        slapd.stop()


def _discovery(world: World, **options: object) -> CertificateDiscovery:
    dns = DnsClient(world.named.address, timeout=1.0, lifetime=3.0)
    ldap = LdapClient(dns, LdapSettings(connect_timeout=1.0, receive_timeout=1.0))
    return CertificateDiscovery(dns=dns, ldap=ldap, trust=world.pki.anchors, **options)  # type: ignore[arg-type]


def lookup(world: World, address: str, **options: object) -> DiscoveryResult:
    return asyncio.run(_discovery(world, **options).lookup(address, at=AT))


def test_d1_address_bound_in_dns_over_tcp_after_truncation(world: World) -> None:
    result = lookup(world, f"d1@{D1}")
    assert result.chosen == (world.certs["d1"],)
    assert result.deciding_tier is Tier.DNS_ADDRESS
    # a certificate does not fit 512 bytes: UDP answer truncated, retried over TCP (CD-5)
    assert "tcp" in result.tier(Tier.DNS_ADDRESS).queries[0]  # type: ignore[union-attr]
    assert result.queries == 2
    assert result.ttl == 300


def test_d2_domain_bound_in_dns_skips_the_expired_one(world: World) -> None:
    result = lookup(world, f"d2@{D1}")
    assert result.chosen == (world.certs["d1_db_valid"],)
    refused = [r for r in result.tier(Tier.DNS_DOMAIN).certificates if not r.chosen]  # type: ignore[union-attr]
    assert [r.certificate for r in refused] == [world.certs["d1_db_expired"]]


def test_d5_expired_address_bound_never_falls_back(world: World) -> None:
    with pytest.raises(CertificateNotFound) as caught:
        asyncio.run(_discovery(world).discover(f"d5@{D1}", at=AT))
    result = caught.value.context["result"]
    assert result.deciding_tier is Tier.DNS_ADDRESS and result.chosen == ()
    assert result.tier(Tier.DNS_DOMAIN).status is TierStatus.NOT_QUERIED


def test_d14_large_certificate_over_tcp(world: World) -> None:
    result = lookup(world, f"d14@{D1}")
    assert result.chosen == (world.certs["d14"],)
    query = result.tier(Tier.DNS_ADDRESS).queries[0]  # type: ignore[union-attr]
    assert query.endswith("(answer, tcp)")


def test_certificate_field_not_x509_is_a_defect_then_domain_tier(world: World) -> None:
    result = lookup(world, f"notx509@{D1}")
    records = result.tier(Tier.DNS_ADDRESS).records  # type: ignore[union-attr]
    assert records[0].defect and "not X.509" in records[0].defect
    assert result.chosen == (world.certs["d1_db_valid"],)


def test_pgp_type_is_ignored(world: World) -> None:
    result = lookup(world, f"pgp@{D1}")
    assert "ignored" in result.tier(Tier.DNS_ADDRESS).records[0].description  # type: ignore[union-attr]
    assert result.chosen == (world.certs["d1_db_valid"],)


def test_ipkix_url_is_fetched(world: World) -> None:
    result = lookup(world, f"url@{D1}")
    assert result.chosen == (world.certs["ipkix"],)


def test_junk_cert_flood_is_capped_and_ends_clearly(world: World) -> None:
    start = time.monotonic()
    result = lookup(world, f"flood@{D1}")
    assert time.monotonic() - start < 10
    tier = result.tier(Tier.DNS_ADDRESS)
    assert tier is not None
    assert any("only the first 32" in e for e in tier.errors)
    assert all(r.defect for r in tier.records)
    assert result.chosen == (world.certs["d1_db_valid"],)


def test_d3_address_bound_in_ldap(world: World) -> None:
    result = lookup(world, f"d3@{D2}")
    assert result.chosen == (world.certs["d3"],)
    assert result.deciding_tier is Tier.LDAP_ADDRESS


def test_d4_domain_bound_in_ldap(world: World) -> None:
    result = lookup(world, f"d4@{D2}")
    assert result.chosen == (world.certs["d2_db_valid"],)
    assert result.deciding_tier is Tier.LDAP_DOMAIN


def test_d7_expired_ldap_address_bound_never_falls_back(world: World) -> None:
    result = lookup(world, f"d7@{D2}")
    assert result.outcome is Outcome.NOT_FOUND
    assert result.deciding_tier is Tier.LDAP_ADDRESS


def test_ldap_garbage_certificate_is_a_defect(world: World) -> None:
    result = lookup(world, f"garbage@{D2}")
    records = result.tier(Tier.LDAP_ADDRESS).records  # type: ignore[union-attr]
    assert any(r.defect and "not a certificate" in r.defect for r in records)
    assert result.chosen == (world.certs["d2_db_valid"],)


def test_ldap_entry_without_certificate(world: World) -> None:
    result = lookup(world, f"nocert@{D2}")
    records = result.tier(Tier.LDAP_ADDRESS).records  # type: ignore[union-attr]
    assert any("without a certificate" in r.description for r in records)
    assert result.chosen == (world.certs["d2_db_valid"],)


def test_d10_dead_srv_target_first(world: World) -> None:
    result = lookup(world, f"d10@{D3}")
    assert result.chosen == (world.certs["d10"],)
    errors = result.tier(Tier.LDAP_ADDRESS).errors  # type: ignore[union-attr]
    assert any("connect" in e for e in errors)


def test_srv_loop_and_absurd_set_end_clearly(world: World) -> None:
    start = time.monotonic()
    with pytest.raises(DiscoveryUnavailable) as caught:
        asyncio.run(_discovery(world).discover(f"x@{D4}", at=AT))
    assert time.monotonic() - start < 15
    result = caught.value.context["result"]
    assert result.outcome is Outcome.UNAVAILABLE
    text = result.explain()
    assert "beyond the limit" in text
    assert f"loop.{ZONE}" in text and f"nowhere.{ZONE}" in text


def test_d11_nothing_published(world: World) -> None:
    result = lookup(world, f"d11@{D6}")
    assert result.outcome is Outcome.NOT_FOUND
    assert result.queries == 3  # CERT, CERT, SRV; no needless queries
    assert "CD-9" in result.reason


def test_ldap_target_that_never_answers_is_bounded(world: World) -> None:
    """A server that accepts the connection and never answers the bind: the receive timeout ends it."""
    with black_hole(udp=False) as hole:
        srv = f"_ldap._tcp.domain5 IN SRV 0 0 {hole.port} ldap.{ZONE}.\n"
        world.named.reload({ZONE: world.named.zones[ZONE] + srv})
        start = time.monotonic()
        result = lookup(world, f"d@{D5}")
        assert time.monotonic() - start < 8
    assert result.outcome is Outcome.UNAVAILABLE
    assert any("bind" in e for e in result.tier(Tier.LDAP_ADDRESS).errors)  # type: ignore[union-attr]


def test_dns_server_that_never_answers_is_transient() -> None:
    with black_hole() as hole:
        pki = TestPKI(at=AT)
        dns = DnsClient((hole.host, hole.port), timeout=0.3, lifetime=0.6)
        discovery = CertificateDiscovery(dns=dns, trust=pki.anchors)
        with pytest.raises(DiscoveryUnavailable) as caught:
            asyncio.run(discovery.discover(f"d1@{D1}", at=AT))
    assert caught.value.context["result"].ttl == 0


def test_cache_serves_warm_lookups_without_queries(world: World) -> None:
    cache = DiscoveryCache(max_entries=4)
    discovery = _discovery(world, cache=cache)

    async def twice() -> tuple[DiscoveryResult, DiscoveryResult]:
        first = await discovery.lookup(f"d1@{D1}", at=AT)
        second = await discovery.lookup(f"d1@{D1}", at=AT)
        return first, second

    first, second = asyncio.run(twice())
    assert not first.from_cache and second.from_cache
    assert second.chosen == first.chosen
    # a chosen certificate that expires before the next lookup is not served from the cache
    later = AT + timedelta(days=3650)
    assert cache.get(first.address, later) is None


# -- hisp discover ------------------------------------------------------------------------------------


def _cli(world: World, tmp_path: Path, *args: str) -> Result:
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(world.pki.ca.certificate.to_pem())
    server = f"{world.named.host}:{world.named.port}"
    return CliRunner().invoke(
        main, ["discover", "--dns-server", server, "--anchor", str(anchor), "--at", AT.isoformat(), *args]
    )


def test_cli_pem_prints_only_the_chosen_certificates(world: World, tmp_path: Path) -> None:
    result = _cli(world, tmp_path, f"d2@{D1}", "--pem")
    assert result.exit_code == 0, result.stderr
    assert load_certificates(result.stdout.encode()) == [world.certs["d1_db_valid"]]
    assert result.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert result.stdout.rstrip().endswith("-----END CERTIFICATE-----")


def test_cli_json_and_text(world: World, tmp_path: Path) -> None:
    result = _cli(world, tmp_path, f"d3@{D2}", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deciding_tier"] == "ldap-address"
    assert data["chosen"][0]["fingerprint_sha256"] == world.certs["d3"].fingerprint_sha256
    text = _cli(world, tmp_path, f"d1@{D1}")
    assert text.exit_code == 0
    assert "CHOSEN" in text.stdout and "tier dns-address: certificates" in text.stdout


def test_cli_undeliverable_exits_1_with_reason_on_stderr(world: World, tmp_path: Path) -> None:
    result = _cli(world, tmp_path, f"d5@{D1}", "--pem")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "undeliverable" in result.stderr and "CD-8" in result.stderr
    nothing = _cli(world, tmp_path, f"d11@{D6}", "--json")
    assert nothing.exit_code == 1 and json.loads(nothing.stdout)["outcome"] == "not found"


@pytest.mark.parametrize(
    "args",
    [["not-an-address", "--json"], [f"d1@{D1}", "--json", "--pem"], [f"d1@{D1}", "--at", "yesterday"]],
    ids=["bad-address", "json-and-pem", "bad-time"],
)
def test_cli_usage_errors_exit_2(world: World, tmp_path: Path, args: list[str]) -> None:
    assert _cli(world, tmp_path, *args).exit_code == 2


def test_cli_without_anchors_is_a_usage_error(world: World) -> None:
    """Like `hisp cert validate`: nothing can be judged usable without a trust anchor (exit 2, as documented)."""
    server = f"{world.named.host}:{world.named.port}"
    result = CliRunner().invoke(main, ["discover", f"d1@{D1}", "--dns-server", server, "--at", AT.isoformat()])
    assert result.exit_code == 2
    assert "give at least one --anchor or --bundle" in result.output


def test_cli_require_dnssec_refuses_a_non_validating_server(world: World, tmp_path: Path) -> None:
    """Our loopback named does not validate (``dnssec-validation no``, unsigned zone): no answer carries AD."""
    plain = _cli(world, tmp_path, f"d1@{D1}", "--pem")
    assert plain.exit_code == 0, plain.stderr
    result = _cli(world, tmp_path, f"d1@{D1}", "--require-dnssec")
    assert result.exit_code == 1
    assert "undeliverable" in result.stderr and "DNSSEC required" in result.stderr
    assert f"d1.{D1}." in result.stderr and "AD bit clear" in result.stderr
    assert "DNSSEC (required): NOT authenticated" in result.stdout
    data = json.loads(_cli(world, tmp_path, f"d1@{D1}", "--require-dnssec", "--json").stdout)
    assert data["dnssec_required"] is True and data["authenticated"] is False and data["chosen"] == []
    assert data["tiers"][1]["status"] == "not queried"  # the refusal ends the search


def test_cli_local_certificates_come_first_and_are_judged(world: World, tmp_path: Path) -> None:
    """``--local``: as ``[[discovery.local]]``; the expired certificate in DNS for d5 is never asked for."""
    valid = world.pki.user(f"d5@{D1}").certificate
    local = tmp_path / "d5.pem"
    local.write_bytes(valid.to_pem())
    result = _cli(world, tmp_path, f"d5@{D1}", "--local", str(local), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["deciding_tier"] == "local" and data["queries"] == 0
    assert [c["fingerprint_sha256"] for c in data["chosen"]] == [valid.fingerprint_sha256]
    stranger = TestPKI(at=AT, name="Stranger CA").user(f"d5@{D1}").certificate
    local.write_bytes(stranger.to_pem())
    refused = _cli(world, tmp_path, f"d5@{D1}", "--local", str(local))
    assert refused.exit_code == 1 and "undeliverable" in refused.stderr and "CD-8" in refused.stderr
    local.write_bytes(b"not a certificate")
    assert _cli(world, tmp_path, f"d5@{D1}", "--local", str(local)).exit_code == 2
