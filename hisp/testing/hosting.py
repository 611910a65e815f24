"""A hosted health domain written to disk: certificate files and a configuration file that publishes them.

:func:`write_hosted_domain` issues certificates from a :class:`~hisp.testing.pki.TestPKI` and writes them (PEM
certificate + key, and a PKCS#12 file whose passphrase comes from an environment variable) with a
configuration file that publishes them in DNS and LDAP, so that tests of ``hisp dns serve``, ``hisp dns
zone`` and ``hisp ldap ldif`` (DCDT hosting cases H1-H4) and of the gateway have a realistic domain:

- ``d1@<domain>``: one address-bound certificate (dual use), published in DNS and LDAP (H1, H3);
- ``d2@<domain>``: a single-use pair (signing + encipherment) published in DNS only: two CERT records whose
  answer exceeds 1232 bytes, so UDP answers are truncated (DCDT D14);
- ``<domain>``: a domain-bound certificate in a PKCS#12 file, published in DNS and LDAP (H2, H4);
- ``d3@<domain>``: an address with no certificate of its own (the domain-bound one serves it);
- records: ``ns1`` and ``mail`` A records, an MX, and ``_ldap._tcp`` SRV to ``ldap.<domain>:389``.

Never use any of this for production keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from hisp.core import devca
from hisp.core.certs import Certificate, private_key_to_pem
from hisp.testing.pki import TestPKI

__all__ = ["HostedDomain", "write_hosted_domain"]

#: The environment variable holding the PKCS#12 passphrase in the written configuration.
PASSPHRASE_ENV = "HISP_TEST_P12_PASSPHRASE"


@dataclass
class HostedDomain:
    """What :func:`write_hosted_domain` wrote.

    :ivar config_path: the configuration file.
    :ivar domain: the domain name.
    :ivar address_certificate: ``d1@<domain>``'s certificate (DNS and LDAP).
    :ivar pair: ``d2@<domain>``'s signing and encipherment certificates (DNS).
    :ivar domain_certificate: the domain-bound certificate (DNS and LDAP; in a PKCS#12 file).
    :ivar environ: the environment the configuration needs (the PKCS#12 passphrase).
    :ivar ldap_base: the ``[ldap] base`` of the configuration.
    """

    config_path: Path
    domain: str
    address_certificate: Certificate
    pair: tuple[Certificate, Certificate]
    domain_certificate: Certificate
    environ: dict[str, str] = field(default_factory=dict)
    ldap_base: str = "ou=dcdt"

    def address(self, local: str) -> str:
        """``local@<domain>``."""
        return f"{local}@{self.domain}"


def _write_pem(directory: Path, name: str, issued: devca.Issued) -> tuple[str, str]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(issued.certificate.to_pem())
    key.write_bytes(private_key_to_pem(issued.private_key))
    return cert.name, key.name


def write_hosted_domain(
    directory: Path, pki: TestPKI, domain: str = "hosted.example", *, ttl: int = 300, extra: str = ""
) -> HostedDomain:
    """Write certificates and ``hisp.toml`` for ``domain`` into ``directory``.

    :param directory: an existing directory (a test's ``tmp_path``).
    :param pki: the CA that issues the certificates.
    :param domain: the hosted domain.
    :param ttl: ``dns.ttl`` (seconds).
    :param extra: TOML appended to the file (more tables).
    :returns: what was written.

    Spec: CD-11; DCDT hosting cases H1-H4 (conformance.md section 1.3).
    """
    d1 = pki.user(f"d1@{domain}")
    signing = pki.user(f"d2@{domain}", "signing")
    encipherment = pki.user(f"d2@{domain}", "encipherment")
    bound = pki.domain(domain)
    d1_files = _write_pem(directory, "d1", d1)
    signing_files = _write_pem(directory, "d2-signing", signing)
    encipherment_files = _write_pem(directory, "d2-encipherment", encipherment)
    passphrase = "p12 passphrase"
    p12 = pkcs12.serialize_key_and_certificates(
        b"domain", bound.private_key, bound.certificate.x509, [pki.ca.certificate.x509],
        BestAvailableEncryption(passphrase.encode()),
    )
    (directory / "domain.p12").write_bytes(p12)
    text = f"""
[dns]
ttl = {ttl}
negative_ttl = 60
nameservers = ["ns1.{domain}"]
hostmaster = "hostmaster@{domain}"
serial = 7

[ldap]
base = "ou=dcdt"

[[domain]]
name = "{domain}"
addresses = ["d1@{domain}", "d2@{domain}", "d3@{domain}"]

[[domain.certificate]]
address = "d1@{domain}"
file = "{d1_files[0]}"
key = "{d1_files[1]}"
publish = ["dns", "ldap"]

[[domain.certificate]]
address = "d2@{domain}"
file = "{signing_files[0]}"
key = "{signing_files[1]}"

[[domain.certificate]]
address = "d2@{domain}"
file = "{encipherment_files[0]}"
key = "{encipherment_files[1]}"

[[domain.certificate]]
pkcs12 = "domain.p12"
passphrase_env = "{PASSPHRASE_ENV}"
publish = ["dns", "ldap"]

[[domain.record]]
name = "ns1"
type = "A"
value = "127.0.0.1"

[[domain.record]]
name = "mail"
type = "A"
value = "192.0.2.25"

[[domain.record]]
type = "MX"
value = "10 mail"

[[domain.record]]
name = "_ldap._tcp"
type = "SRV"
value = "0 100 389 ldap.{domain}."
ttl = 600
{extra}"""
    config_path = directory / "hisp.toml"
    config_path.write_text(text, "utf-8")
    return HostedDomain(
        config_path, domain, d1.certificate, (signing.certificate, encipherment.certificate), bound.certificate,
        {PASSPHRASE_ENV: passphrase},
    )
