"""The hosted-domains part of the configuration file (CD-11): what it accepts, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AT

from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import CertBinding, Publication, load_config, parse_config
from hisp.errors import ConfigError
from hisp.testing.hosting import PASSPHRASE_ENV, HostedDomain, write_hosted_domain
from hisp.testing.pki import TestPKI


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> HostedDomain:
    return write_hosted_domain(tmp_path_factory.mktemp("hosted"), TestPKI(AT))


def test_hosted_domain(hosted: HostedDomain) -> None:
    config = load_config(hosted.config_path)
    assert (config.dns.ttl, config.dns.negative_ttl, config.dns.serial) == (300, 60, 7)
    assert config.dns.nameservers == ("ns1.hosted.example.",)
    assert config.dns.hostmaster == "hostmaster.hosted.example."
    assert config.ldap.base == "ou=dcdt"
    (domain,) = config.domains
    assert domain.domain == HealthDomain("hosted.example")
    assert [str(a) for a in domain.addresses] == ["d1@hosted.example", "d2@hosted.example", "d3@hosted.example"]
    d1, d2_signing, _d2_encipherment, bound = domain.certificates
    assert d1.binding is CertBinding.ADDRESS and d1.publish == frozenset(Publication)
    assert d1.dns_name() == "d1.hosted.example." and d1.owner == "d1@hosted.example"
    assert d1.certificate() == hosted.address_certificate
    assert d1.credential().certificate == hosted.address_certificate
    assert d2_signing.publish == frozenset({Publication.DNS})  # the default
    assert bound.binding is CertBinding.DOMAIN and bound.pkcs12 and bound.dns_name() == "hosted.example."
    assert bound.certificate(hosted.environ) == hosted.domain_certificate
    with pytest.raises(ConfigError, match=rf"domain\[0\]\.certificate\[3\]\.passphrase_env: .*{PASSPHRASE_ENV}"):
        bound.certificate({})
    with pytest.raises(ConfigError, match=r"domain\[0\]\.certificate\[3\]\.pkcs12: "):
        bound.credential({PASSPHRASE_ENV: "wrong"})
    records = {(r.name, r.type): (r.value, r.ttl) for r in domain.records}
    assert records[("hosted.example.", "MX")] == ("10 mail.hosted.example.", 300)  # relative names made absolute
    assert records[("_ldap._tcp.hosted.example.", "SRV")] == ("0 100 389 ldap.hosted.example.", 600)


def test_serial_defaults_to_the_file_time(tmp_path: Path) -> None:
    path = tmp_path / "hisp.toml"
    path.write_text("[dns]\nttl = 60\n")
    assert load_config(path).dns.serial == int(path.stat().st_mtime)
    assert parse_config("").dns.serial is None and parse_config("").domains == ()


def _certificate_table(hosted: HostedDomain, body: str) -> str:
    directory = hosted.config_path.parent
    return (
        f"[dns]\nnameservers = ['ns1.hosted.example']\n[[domain]]\nname = 'hosted.example'\n"
        f"addresses = ['d1@hosted.example']\n[[domain.certificate]]\n{body.replace('DIR', str(directory))}"
    )


def _ids(cases: list[tuple[str, str]]) -> list[str]:
    return [f"{index}-{message.split(':')[0]}" for index, (_, message) in enumerate(cases)]


CERTIFICATE_ERRORS = [
    ("file = 'DIR/d1.pem'\naddress = 'd1@hosted.example'\npassphrase = 'x'", "certificate[0].passphrase: never put"),
    ("file = 'DIR/d1.pem'\npkcs12 = 'DIR/domain.p12'", "certificate[0].file: give the certificate file"),
    ("key = 'DIR/d1.key'", "certificate[0].file: give the certificate file"),
    ("file = 'DIR/missing.pem'", "certificate[0].file: no such file"),
    ("file = 'DIR/d1.pem'\nkey = 'DIR/missing.key'\naddress = 'd1@hosted.example'", "certificate[0].key: no such"),
    ("pkcs12 = 'DIR/domain.p12'\nkey = 'DIR/d1.key'", "certificate[0].key: a PKCS#12 file holds its key"),
    ("file = 'DIR/d1.pem'", "is not domain-bound to hosted.example: its subjectAltName lacks dNSName"),
    ("file = 'DIR/hisp.toml'", "certificate[0].file: "),  # not a certificate
    ("file = 'DIR/d1.pem'\naddress = 'd9@hosted.example'", "certificate[0].address: d9@hosted.example is not one"),
    ("file = 'DIR/d1.pem'\naddress = 'd1@hosted.example'\npublish = ['x500']", "certificate[0].publish: each must"),
    (
        "pkcs12 = 'DIR/domain.p12'\npassphrase_env = 'A'\npassphrase_file = 'DIR/p'",
        "certificate[0].passphrase_env: give passphrase_env or passphrase_file",
    ),
    ("pkcs12 = 'DIR/domain.p12'\npassphrase_env = '1 2'", "certificate[0].passphrase_env: not an environment"),
    ("file = 'DIR/d1.pem'\naddress = 'd1@hosted.example'\ncolour = 1", "certificate[0].colour: unknown key"),
]


@pytest.mark.parametrize(
    ("body", "message"), CERTIFICATE_ERRORS, ids=_ids(CERTIFICATE_ERRORS)
)
def test_certificate_errors_name_the_key(hosted: HostedDomain, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_certificate_table(hosted, body), source="hisp.toml")
    assert caught.value.message.startswith("hisp.toml: domain[0].")
    assert message in caught.value.message


NS = "[dns]\nnameservers = ['ns1.a.example']\n"
DOMAIN_ERRORS = [
    ("[[domain]]\naddresses = []", "domain[0].name: is required"),
    ("[[domain]]\nname = 'a.example'\n[[domain]]\nname = 'A.example.'", "domain[1].name: a.example is configured"),
    ("[[domain]]\nname = 'a.example'\naddresses = ['x@b.example']", "domain[0].addresses: x@b.example is not in"),
    ("[[domain]]\nname = 'a.example'\naddresses = ['x@a.example', 'X@a.example']", "is listed twice"),
    ("[[domain]]\nname = 'a.example'\naddresses = ['not an address']", "domain[0].addresses: "),
    (NS + "[[domain]]\nname = 'a.example'\n[[domain.record]]\ntype = 'CERT'\nvalue = '1 0 0 AA=='",
     "domain[0].record[0].type: must be one of A, AAAA, MX, SRV, TXT"),
    (NS + "[[domain]]\nname = 'a.example'\n[[domain.record]]\nname = 'x.b.example.'\ntype = 'A'\nvalue = '192.0.2.1'",
     "domain[0].record[0].name: x.b.example. is outside the zone a.example."),
    (NS + "[[domain]]\nname = 'a.example'\n[[domain.record]]\ntype = 'MX'\nvalue = 'mail'",
     "domain[0].record[0].value: not a valid MX record"),
    (NS + "[[domain]]\nname = 'a.example'\n[[domain.record]]\ntype = 'A'\nvalue = '192.0.2.1'\nttl = -5",
     "domain[0].record[0].ttl: must be between 0 and 604800"),
    ("[[domain]]\nname = 'a.example'\n[[domain.record]]\ntype = 'A'\nvalue = '192.0.2.1'",
     "dns.nameservers: is required to publish DNS records"),
    ("[dns]\nttl = 'long'", "dns.ttl: must be an integer, not str"),
    ("[dns]\nserial = 4294967296", "dns.serial: must be between 0 and 4294967295"),
    ("[dns]\nhostmaster = 'host.master@a.example'", "dns.hostmaster: give a mailbox like"),
    ("[dns]\nnameservers = ['a..b']", "dns.nameservers: not a valid DNS name"),
    ("[dns]\nzone = 'x'", "dns.zone: unknown key"),
    ("[ldap]\nbase = 'not a dn'", "ldap.base: not a distinguished name"),
    ("[[domain]]\nname = 'a.example'\ncertificate = 'x'", "domain[0].certificate: must be an array of tables"),
]


@pytest.mark.parametrize(("text", "message"), DOMAIN_ERRORS, ids=[f"{i}" for i in range(len(DOMAIN_ERRORS))])
def test_domain_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="hisp.toml")
    assert caught.value.message.startswith("hisp.toml: ")
    assert message in caught.value.message


def test_passphrase_file_and_addresses(hosted: HostedDomain, tmp_path: Path) -> None:
    secret = tmp_path / "p12.pass"
    secret.write_text(hosted.environ[PASSPHRASE_ENV] + "\n")
    body = f"pkcs12 = 'DIR/domain.p12'\npassphrase_file = '{secret}'\npublish = ['ldap']"
    config = parse_config(_certificate_table(hosted, body))
    (certificate,) = config.domains[0].certificates
    assert certificate.certificate() == hosted.domain_certificate and certificate.publish == {Publication.LDAP}
    assert config.domains[0].addresses == (DirectAddress.parse("d1@hosted.example"),)
    secret.unlink()
    with pytest.raises(ConfigError, match=r"passphrase_file: cannot read"):
        certificate.certificate()
