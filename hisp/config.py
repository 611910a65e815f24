"""The configuration file: one TOML file, validated when loaded, into frozen dataclasses.

This module defines the **trust** part (AS-21, TB-3, TB-4): trust anchors and trust bundles, each
associated with local health domains (or single addresses) and flagged incoming and/or outgoing, plus
the revocation mode, policy preset and clock-skew allowance per domain; and the **hosted domains** part
(CD-11): each health domain with its addresses, its certificates (files, binding, where each is published in
DNS and/or LDAP) and more DNS records, with the ``[dns]`` and ``[ldap]`` publication settings; and the
**gateway** part (issue 5): ``[node]``, ``[[user]]`` edge users, delivery endpoints per domain and address,
``[listeners.submission]`` and ``[listeners.backbone]``, ``[relay]``, ``[storage]``, ``[queue]`` and ``[limits]``;
and the **discovery** part (issue 4): ``[discovery]`` cache times, DNSSEC, and ``[[discovery.local]]`` partner
certificates reached without discovery.

Example::

    [trust]
    policy = "direct-1.3"        # default preset for every domain
    revocation = "soft"          # hard | soft | off
    clock_skew = 300             # seconds
    cache_dir = "trust-cache"    # downloaded bundles (relative to this file)
    intermediates = ["anchors/partner-intermediates.pem"]   # issuers for path building, never anchors

    [[trust.anchor]]
    file = "anchors/partner-ca.pem"
    domains = ["direct.clinic.example"]
    directions = ["incoming", "outgoing"]

    [[trust.bundle]]
    name = "accredited"
    url = "https://bundles.example.org/accredited.p7b"
    refresh = 3600               # seconds
    signer = "anchors/bundle-signer.pem"
    domains = ["direct.clinic.example"]
    directions = ["incoming"]

    [[trust.domain]]
    name = "direct.clinic.example"
    revocation = "hard"

    [dns]
    ttl = 3600                   # seconds, every published record unless it sets its own
    negative_ttl = 300           # seconds, SOA minimum (NXDOMAIN/NODATA caching)
    nameservers = ["ns1.clinic.example"]   # NS records; the first is the SOA MNAME
    hostmaster = "hostmaster@clinic.example"
    # serial = 2026113001        # default: the file's modification time

    [ldap]
    base = "ou=direct,dc=clinic,dc=example"   # where `hisp ldap ldif` puts the entries

    [[domain]]
    name = "direct.clinic.example"
    addresses = ["dr.a@direct.clinic.example", "front.desk@direct.clinic.example"]

    [[domain.certificate]]       # domain-bound (no address): CERT at direct.clinic.example.
    file = "certs/domain.pem"    # PEM or DER certificate, ours first, then its chain
    key = "certs/domain.key"     # optional for publishing; encrypted keys take passphrase_env/_file
    publish = ["dns", "ldap"]    # default ["dns"]; [] = not published

    [[domain.certificate]]       # address-bound: CERT at dr.a.direct.clinic.example.
    address = "dr.a@direct.clinic.example"
    pkcs12 = "certs/dr.a.p12"
    passphrase_env = "HISP_DR_A_P12"   # or passphrase_file = "secrets/dr.a.pass"; never in this file
    publish = ["dns"]

    [[domain.record]]
    name = "@"                   # relative to the domain, or absolute with a final dot
    type = "MX"                  # A, AAAA, MX, SRV or TXT
    value = "10 mail.clinic.example."

    [[domain.record]]
    name = "_ldap._tcp"
    type = "SRV"
    value = "0 100 389 ldap.clinic.example."
    ttl = 600

    endpoint = "lmtp://127.0.0.1:24"   # (in [[domain]]) where its incoming plain messages go

    [[domain.mailbox]]           # a per-address delivery endpoint (overrides the domain's)
    address = "front.desk@direct.clinic.example"
    endpoint = "maildir:/srv/ehr/front-desk"   # or smtp://host:port, lmtp://host:port, lmtp:/path/socket

    [node]
    name = "hisp-1"              # this node's name in the queue and audit log (default: hostname)
    hostname = "mail.clinic.example"   # EHLO/greeting name

    [[user]]                     # an edge user (SMTP AUTH on the submission listener)
    name = "ehr"
    password_hash = "scrypt$32768$8$1$...$..."     # paste what `hisp user add` prints (checked when loaded)
    addresses = ["dr.a@direct.clinic.example"]   # it may send From these only

    [listeners.submission]       # edge clients: STARTTLS + AUTH required (absent: not run)
    host = "0.0.0.0"
    port = 587
    tls_cert = "tls/cert.pem"
    tls_key = "tls/key.pem"

    [listeners.backbone]         # peer HISPs: STARTTLS offered, hosted recipients only (absent: not run)
    host = "0.0.0.0"
    port = 25
    tls_cert = "tls/cert.pem"
    tls_key = "tls/key.pem"

    [relay]
    mode = "mx"                  # mx | smarthost
    # smarthost = "relay.example.org:25"
    port = 25                    # SMTP port of the MX hosts
    require_tls = false          # true: never relay in clear
    dns_server = "127.0.0.1:53"  # for MX and certificate discovery (default: the system resolver)

    [storage]
    url = "sqlite:////var/lib/hisp/hisp.sqlite3"  # 4 slashes: absolute; default hisp.sqlite3 beside this file
    spool_dir = "spool"          # large messages as files (default: none, everything in the database)

    [queue]
    retry_initial = 300          # seconds
    retry_factor = 2.0
    retry_maximum = 14400        # seconds
    lifetime = 432000            # seconds (5 days), then bounce
    lease = 300                  # seconds a claimed job is held
    workers = 4                  # worker tasks per process
    poll_interval = 1.0          # seconds between queue polls when idle

    [limits]                     # defaults of both listeners (each may override)
    max_message_size = 37748736  # bytes
    max_recipients = 100
    max_connections = 100
    command_timeout = 300        # seconds

    [notifications]              # MDNs and DSNs (AS-18, DN-1..DN-10)
    send_mdn = true              # processed (and dispatched/failed when asked) MDNs for received messages
    timeout = 3600               # seconds from the send, then one DSN for recipients without their MDNs
    consume_processed = false    # true: processed MDNs are recorded, not forwarded to the edge
    scan_interval = 30           # seconds between scans for tracked messages past their deadline

    [discovery]                  # finding the certificates of recipients elsewhere (CD-1 .. CD-10)
    require_dnssec = false       # true: DNS answers need the AD bit (only behind a validating resolver)
    ldap_ttl = 3600              # seconds LDAP-found certificates are cached (LDAP has no TTL)
    negative_ttl = 300           # seconds a "not found" is cached
    cache_size = 10000           # results kept in memory per process (~13 KiB each; each of --workers N has its own)

    [[discovery.local]]          # a partner reached without discovery: consulted before DNS and LDAP
    address = "dr.b@direct.partner.example"   # or domain = "direct.partner.example" (an address wins)
    file = "certs/partner.pem"   # PEM or DER, one or more certificates; still validated against the anchors

Certificate files are read and checked when the configuration is loaded: a certificate's subjectAltName
must name its address (rfc822Name) or domain (dNSName). PKCS#12 files are checked when used, since their
passphrase comes from the environment or a file.

Paths are relative to the configuration file's directory. Every error names the file, the key and what
is wrong (a :class:`~hisp.errors.ConfigError`).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass

from hisp.adapters.edge import Endpoint, parse_endpoint
from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.certs import CertBinding, Certificate, Credential, load_certificates, load_credential
from hisp.core.mime import MimeLimits
from hisp.core.policy import PRESETS, Direction, RevocationMode, SecurityPolicy, policy_from_name
from hisp.core.smtp_policy import parse_password_hash
from hisp.errors import AddressError, CertificateError, ConfigError
from hisp.ports import RetrySchedule

__all__ = [
    "AnchorConfig",
    "BundleConfig",
    "CertificateConfig",
    "Config",
    "Direction",
    "DiscoveryConfig",
    "DnsConfig",
    "DnsRecordConfig",
    "DomainTrustConfig",
    "EdgeUserConfig",
    "HostedDomainConfig",
    "LdapConfig",
    "LimitsConfig",
    "ListenerConfig",
    "ListenersConfig",
    "LocalCertificateConfig",
    "NodeConfig",
    "NotificationsConfig",
    "Passphrase",
    "Publication",
    "QueueConfig",
    "RelayConfig",
    "RelayMode",
    "RevocationMode",
    "StorageConfig",
    "TrustConfig",
    "load_config",
    "parse_config",
]

#: Largest configuration file read (bytes): a configuration is text an operator writes.
MAX_CONFIG_BYTES = 1024 * 1024
#: Shortest and longest bundle refresh intervals accepted (seconds): a minute to a week.
MIN_REFRESH, MAX_REFRESH = 60, 7 * 24 * 3600


@dataclass(frozen=True)
class AnchorConfig:
    """A trust anchor file (PEM or DER, one or more certificates) for some domains and directions.

    :ivar file: absolute path of the certificate file.
    :ivar domains: the local health domains it applies to.
    :ivar addresses: single local addresses it applies to (AS-21: "per local domain or address").
    :ivar directions: incoming, outgoing or both.
    """

    file: Path
    domains: tuple[HealthDomain, ...]
    addresses: tuple[DirectAddress, ...]
    directions: frozenset[Direction]


@dataclass(frozen=True)
class BundleConfig:
    """A trust bundle published at a URL, refreshed periodically (TB-3, TB-4).

    :ivar name: a short name for logs and the cache file.
    :ivar url: ``https://`` (or ``http://``, for tests and closed networks) URL of the bundle.
    :ivar refresh: refresh interval in seconds.
    :ivar signer: the bundle-signing certificate file; when set, unsigned or badly signed bundles are
        refused and the last good bundle kept (TB-2).
    :ivar domains: local health domains it applies to.
    :ivar addresses: single local addresses it applies to.
    :ivar directions: incoming, outgoing or both.
    """

    name: str
    url: str
    refresh: int
    signer: Path | None
    domains: tuple[HealthDomain, ...]
    addresses: tuple[DirectAddress, ...]
    directions: frozenset[Direction]


@dataclass(frozen=True)
class DomainTrustConfig:
    """Per-domain overrides of the trust defaults.

    :ivar domain: the local health domain.
    :ivar policy: the security policy preset in force for it.
    :ivar revocation: its revocation mode.
    """

    domain: HealthDomain
    policy: SecurityPolicy
    revocation: RevocationMode


@dataclass(frozen=True)
class TrustConfig:
    """The trust part of the configuration.

    :ivar policy: default policy preset.
    :ivar revocation: default revocation mode.
    :ivar clock_skew: allowance in seconds when checking validity periods.
    :ivar cache_dir: where downloaded bundles and their metadata are kept.
    :ivar anchors: anchor files with their domains and directions.
    :ivar bundles: bundles with their URLs, domains and directions.
    :ivar domains: per-domain overrides.
    :ivar intermediates: files of intermediate CA certificates offered to path building for every store
        (for partners whose messages do not carry their chain and whose certificates name no AIA); they
        are issuers only, never anchors: trust still has to end at an anchor (AS-20, AS-21).
    """

    policy: SecurityPolicy
    revocation: RevocationMode
    clock_skew: int
    cache_dir: Path
    anchors: tuple[AnchorConfig, ...] = ()
    bundles: tuple[BundleConfig, ...] = ()
    domains: tuple[DomainTrustConfig, ...] = ()
    intermediates: tuple[Path, ...] = ()

    def for_domain(self, domain: HealthDomain) -> DomainTrustConfig:
        """The policy and revocation mode in force for ``domain`` (its override, else the defaults)."""
        for override in self.domains:
            if override.domain == domain:
                return override
        return DomainTrustConfig(domain, self.policy, self.revocation)


@dataclass(frozen=True)
class Config:
    """The whole configuration (so far: its trust part and its hosted domains).

    :ivar path: the file it was read from (absolute).
    :ivar trust: the trust part.
    :ivar domains: the hosted health domains with their addresses, certificates and DNS records.
    :ivar dns: how their zones are published.
    :ivar ldap: how their certificates are published in LDAP.
    :ivar node: this node's name and host name.
    :ivar users: the edge users (SMTP AUTH on the submission listener).
    :ivar listeners: the submission and backbone listeners (each may be absent).
    :ivar relay: how sealed messages reach peer HISPs.
    :ivar storage: where the queue and the audit log live.
    :ivar queue: retry schedule, leases, workers.
    :ivar limits: the listeners' default limits.
    :ivar notifications: MDN and DSN behaviour and the tracking timeout.
    :ivar discovery: certificate discovery: cache times and size, DNSSEC, local partner certificates.
    """

    path: Path
    trust: TrustConfig = field(repr=False)
    domains: tuple[HostedDomainConfig, ...] = field(default=(), repr=False)
    dns: DnsConfig = field(default_factory=lambda: DnsConfig(), repr=False)
    ldap: LdapConfig = field(default_factory=lambda: LdapConfig(), repr=False)
    node: NodeConfig = field(default_factory=lambda: NodeConfig(), repr=False)
    users: tuple[EdgeUserConfig, ...] = field(default=(), repr=False)
    listeners: ListenersConfig = field(default_factory=lambda: ListenersConfig(), repr=False)
    relay: RelayConfig = field(default_factory=lambda: RelayConfig(), repr=False)
    storage: StorageConfig = field(default_factory=lambda: StorageConfig(), repr=False)
    queue: QueueConfig = field(default_factory=lambda: QueueConfig(), repr=False)
    limits: LimitsConfig = field(default_factory=lambda: LimitsConfig(), repr=False)
    notifications: NotificationsConfig = field(default_factory=lambda: NotificationsConfig(), repr=False)
    discovery: DiscoveryConfig = field(default_factory=lambda: DiscoveryConfig(), repr=False)

    def hosted_domain(self, domain: HealthDomain) -> HostedDomainConfig | None:
        """The hosted domain's configuration, or None when ``domain`` is not hosted here."""
        return next((d for d in self.domains if d.domain == domain), None)

    def is_hosted(self, address: DirectAddress) -> bool:
        """Whether ``address`` is one of the hosted domains' addresses (the backbone accepts mail for it)."""
        hosted = self.hosted_domain(address.domain)
        return hosted is not None and address in hosted.addresses

    def endpoint_for(self, address: DirectAddress) -> Endpoint | None:
        """Where incoming plain messages for ``address`` are delivered: its own endpoint, else its domain's.

        :returns: the endpoint, or None when neither is configured.
        """
        hosted = self.hosted_domain(address.domain)
        if hosted is None:
            return None
        return dict(hosted.mailboxes).get(address, hosted.endpoint)


class _Reader:
    """Typed access to one TOML table that names the file and key in every error."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str, base: Path) -> None:
        self.source, self.table, self.prefix, self.base = source, table, prefix, base
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        name = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.source}: {name}: {problem}", file=self.source, key=name)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., what: str = "") -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"must be {what or _kind_name(kind)}, not true/false")
        if not isinstance(value, kind):
            raise self.error(key, f"must be {what or _kind_name(kind)}, not {type(value).__name__}")
        return value

    def strings(self, key: str, default: Sequence[str] | None = None) -> list[str]:
        values = self.get(key, list, list(default) if default is not None else ..., what="a list of strings")
        if not all(isinstance(v, str) for v in values):
            raise self.error(key, "must be a list of strings")
        return list(values)

    def path(self, key: str, default: Any = ...) -> Path | None:
        value = self.get(key, str, default)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else (self.base / path)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key" + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else ""))


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", list: "a list", dict: "a table", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _scope(reader: _Reader) -> tuple[tuple[HealthDomain, ...], tuple[DirectAddress, ...], frozenset[Direction]]:
    try:
        domains = tuple(HealthDomain.parse(d) for d in reader.strings("domains", default=()))
    except AddressError as exc:
        raise reader.error("domains", exc.message) from None
    try:
        addresses = tuple(DirectAddress.parse(a) for a in reader.strings("addresses", default=()))
    except AddressError as exc:
        raise reader.error("addresses", exc.message) from None
    if not domains and not addresses:
        raise reader.error("domains", "give the local domains (or addresses) this applies to")
    names = reader.strings("directions", default=("incoming", "outgoing"))
    try:
        directions = frozenset(Direction(n) for n in names)
    except ValueError:
        raise reader.error("directions", f"each must be incoming or outgoing, got {names}") from None
    if not directions:
        raise reader.error("directions", "must name incoming, outgoing or both")
    return domains, addresses, directions


def _policy(reader: _Reader, key: str, default: SecurityPolicy) -> SecurityPolicy:
    name = reader.get(key, str, default.name)
    if name not in PRESETS:
        raise reader.error(key, f"unknown policy {name!r}; known: {', '.join(sorted(PRESETS))}")
    return policy_from_name(name)


def _revocation(reader: _Reader, key: str, default: RevocationMode) -> RevocationMode:
    value = reader.get(key, str, default.value)
    try:
        return RevocationMode(value)
    except ValueError:
        raise reader.error(key, f"must be hard, soft or off, not {value!r}") from None


def _tables(reader: _Reader, key: str) -> Iterator[_Reader]:
    """Readers for each table of the array of tables ``[[prefix.key]]``."""
    name = f"{reader.prefix}.{key}" if reader.prefix else key
    for index, entry in enumerate(reader.get(key, list, [], what=f"an array of tables ([[{name}]])")):
        if not isinstance(entry, dict):
            raise reader.error(f"{key}[{index}]", "must be a table")
        yield _Reader(reader.source, entry, f"{name}[{index}]", reader.base)


def _trust(source: str, table: Mapping[str, Any], base: Path) -> TrustConfig:
    reader = _Reader(source, table, "trust", base)
    policy = _policy(reader, "policy", policy_from_name("direct-1.3"))
    revocation = _revocation(reader, "revocation", RevocationMode.SOFT)
    clock_skew = reader.get("clock_skew", int, 300)
    if not 0 <= clock_skew <= 86400:
        raise reader.error("clock_skew", "must be between 0 and 86400 seconds")
    policy = policy.with_options(clock_skew=clock_skew)
    cache_dir = reader.path("cache_dir", "trust-cache")
    assert cache_dir is not None
    intermediates: list[Path] = []
    for value in reader.strings("intermediates", default=()):
        named = Path(value) if Path(value).is_absolute() else reader.base / value
        if not named.is_file():
            raise reader.error("intermediates", f"{named} does not exist or is not a file")
        intermediates.append(named)

    anchors: list[AnchorConfig] = []
    for sub in _tables(reader, "anchor"):
        file = sub.path("file")
        assert file is not None
        scope = _scope(sub)
        if not file.is_file():
            # checked now, not when the first message arrives: a missing anchor silently trusts nobody
            raise sub.error("file", f"{file} does not exist or is not a file")
        anchors.append(AnchorConfig(file, *scope))
        sub.finish()

    bundles: list[BundleConfig] = []
    names: set[str] = set()
    for sub in _tables(reader, "bundle"):
        name = sub.get("name", str)
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name in names:
            raise sub.error("name", f"must be unique and use letters, digits, '-', '_' or '.': {name!r}")
        names.add(name)
        url = sub.get("url", str)
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. a broken IPv6 literal
            raise sub.error("url", f"must be an https:// (or http://) URL, not {url!r}") from None
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise sub.error("url", f"must be an https:// (or http://) URL, not {url!r}")
        refresh = sub.get("refresh", int, 3600)
        if not MIN_REFRESH <= refresh <= MAX_REFRESH:
            raise sub.error("refresh", f"must be between {MIN_REFRESH} and {MAX_REFRESH} seconds")
        signer = sub.path("signer", None)
        bundles.append(BundleConfig(name, url, refresh, signer, *_scope(sub)))
        sub.finish()

    domains: list[DomainTrustConfig] = []
    seen: set[HealthDomain] = set()
    for sub in _tables(reader, "domain"):
        try:
            domain = HealthDomain.parse(sub.get("name", str))
        except AddressError as exc:
            raise sub.error("name", exc.message) from None
        if domain in seen:
            raise sub.error("name", f"{domain} is configured twice")
        seen.add(domain)
        domain_policy = _policy(sub, "policy", policy).with_options(clock_skew=clock_skew)
        domains.append(DomainTrustConfig(domain, domain_policy, _revocation(sub, "revocation", revocation)))
        sub.finish()
    reader.finish()
    return TrustConfig(
        policy, revocation, clock_skew, cache_dir, tuple(anchors), tuple(bundles), tuple(domains),
        tuple(dict.fromkeys(intermediates)),
    )


# -- hosted domains: addresses, certificates and what is published (CD-11) ------------------------------


class Publication(enum.Enum):
    """Where a certificate of ours is published for certificate discovery (CD-11, DCDT H1-H4)."""

    DNS = "dns"
    LDAP = "ldap"


@dataclass(frozen=True)
class Passphrase:
    """Where the passphrase of a private key or PKCS#12 file comes from: never the TOML itself.

    :ivar env: the name of an environment variable holding it (UTF-8).
    :ivar file: a file holding it (one line; a final newline is dropped).
    :ivar source: the configuration file, for error messages.
    :ivar config_key: the configuration key that named it, e.g. ``"domain[0].certificate[1].passphrase_env"``.
    """

    env: str | None
    file: Path | None
    source: str = field(default="<config>", compare=False)
    config_key: str = field(default="passphrase", compare=False)

    def read(self, environ: Mapping[str, str]) -> bytes:
        """The passphrase.

        :param environ: the process environment (the CLI passes :data:`os.environ`).
        :returns: its bytes (UTF-8).
        :raises ConfigError: the variable is not set, or the file cannot be read.

        Spec: CD-11 (our credentials); operators keep secrets out of configuration files.
        """
        if self.env is not None:
            if self.env not in environ:
                raise _error(self.source, self.config_key, f"the environment variable {self.env} is not set")
            return environ[self.env].encode("utf-8")
        assert self.file is not None
        try:
            data = self.file.read_bytes()
        except OSError as exc:
            raise _error(self.source, self.config_key, f"cannot read {self.file}: {exc.strerror}") from None
        except ValueError as exc:  # a NUL byte in the path
            raise _error(self.source, self.config_key, f"cannot read {self.file}: {exc}") from None
        return data[:-1] if data.endswith(b"\n") else data


@dataclass(frozen=True)
class CertificateConfig:
    """One certificate of a hosted domain: its files, its binding and where it is published.

    Address-bound when :attr:`address` is set (published at the owner name ``local.domain.`` and under
    ``mail=<address>``), else domain-bound (at ``domain.`` and ``mail=<domain>``). The certificate's
    subjectAltName must name that address (rfc822Name) or domain (dNSName): checked when the configuration is
    loaded for certificate files, and by :meth:`certificate` for PKCS#12 files (whose passphrase the
    configuration never holds).

    :ivar file: the certificate file (PEM or DER; the first certificate is ours, the others its chain), or the
        PKCS#12 file when :attr:`pkcs12`.
    :ivar key: the private key file (PEM or DER), or None (PKCS#12, or a PEM file holding the key too, or
        published only).
    :ivar pkcs12: whether :attr:`file` is PKCS#12.
    :ivar passphrase: where the passphrase of the key or PKCS#12 file comes from, or None.
    :ivar domain: the hosted domain.
    :ivar address: the address it is bound to, or None for domain-bound.
    :ivar publish: where it is published (may be empty: used, not published).
    :ivar source: the configuration file, for error messages.
    :ivar config_key: its table in the configuration, e.g. ``"domain[0].certificate[1]"``.
    """

    file: Path
    key: Path | None
    pkcs12: bool
    passphrase: Passphrase | None
    domain: HealthDomain
    address: DirectAddress | None
    publish: frozenset[Publication]
    source: str = field(default="<config>", compare=False)
    config_key: str = field(default="certificate", compare=False)

    @property
    def binding(self) -> CertBinding:
        """Address-bound or domain-bound."""
        return CertBinding.ADDRESS if self.address is not None else CertBinding.DOMAIN

    @property
    def owner(self) -> str:
        """What it is published for: the address or the domain, as text (the LDAP ``mail`` value)."""
        return str(self.address) if self.address is not None else str(self.domain)

    def dns_name(self) -> str:
        """The absolute owner name of its CERT record (CD-3): ``local.domain.`` or ``domain.``."""
        return self.address.dns_name() if self.address is not None else self.domain.dns_name()

    def certificate(self, environ: Mapping[str, str] | None = None) -> Certificate:
        """Read the certificate (for publication), checked against the binding.

        :param environ: the environment, needed only for a PKCS#12 file's passphrase.
        :returns: the certificate.
        :raises ConfigError: the file cannot be read or parsed, the passphrase is missing or wrong, or the
            certificate does not name the address or domain in its subjectAltName.

        Spec: RFC 5280 section 4.2.1.6 (subjectAltName); AS-2, AS-3 (binding); CD-11.
        """
        if self.pkcs12:
            return self.credential(environ).certificate
        data = self._read(self.file, "file")
        try:
            certificate = load_certificates(data)[0]
        except CertificateError as exc:
            raise _error(self.source, f"{self.config_key}.file", f"{self.file}: {exc.message}") from None
        self._check_binding(certificate, "file")
        return certificate

    def credential(self, environ: Mapping[str, str] | None = None) -> Credential:
        """Read the certificate and its private key (to sign and decrypt).

        :param environ: the environment, for a passphrase given by ``passphrase_env``.
        :returns: the credential.
        :raises ConfigError: no key is configured, a file cannot be read or parsed, the passphrase is missing
            or wrong, the key does not match, or the binding is wrong.

        Spec: RFC 7292 (PKCS#12); RFC 5958 (private keys); AS-4; CD-11.
        """
        password = self.passphrase.read(environ or {}) if self.passphrase is not None else None
        cert_data = self._read(self.file, "pkcs12" if self.pkcs12 else "file")
        key_data = None if self.pkcs12 or self.key is None else self._read(self.key, "key")
        if not self.pkcs12 and key_data is None and b"PRIVATE KEY-----" not in cert_data:
            raise _error(self.source, f"{self.config_key}.key", "is required to use this certificate (sign or decrypt)")
        try:
            credential = load_credential(cert_data, key_data, password)
        except CertificateError as exc:
            name = "pkcs12" if self.pkcs12 else ("key" if self.key else "file")
            raise _error(self.source, f"{self.config_key}.{name}", exc.message) from None
        self._check_binding(credential.certificate, "pkcs12" if self.pkcs12 else "file")
        return credential

    def _read(self, path: Path, name: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise _error(self.source, f"{self.config_key}.{name}", f"cannot read {path}: {exc.strerror}") from None

    def _check_binding(self, certificate: Certificate, name: str) -> None:
        probe = self.address or DirectAddress("postmaster", self.domain)
        if certificate.binding_for(probe) is not self.binding:
            names = ", ".join([*certificate.rfc822_names, *certificate.dns_names]) or "none"
            wanted = f"rfc822Name {self.address}" if self.address else f"dNSName {self.domain}"
            raise _error(
                self.source,
                f"{self.config_key}.{name}",
                f"{certificate.describe()} is not {self.binding.value}-bound to {self.owner}: "
                f"its subjectAltName lacks {wanted} (it names: {names})",
            )


@dataclass(frozen=True)
class DnsRecordConfig:
    """A DNS record of a hosted domain from the configuration (A, AAAA, MX, SRV, TXT).

    :ivar name: the absolute owner name, e.g. ``"_ldap._tcp.direct.clinic.example."``.
    :ivar type: the record type, upper-case.
    :ivar value: the RDATA in master-file syntax with absolute names, e.g. ``"0 100 389 ldap.clinic.example."``.
    :ivar ttl: seconds.
    """

    name: str
    type: str
    value: str
    ttl: int


@dataclass(frozen=True)
class HostedDomainConfig:
    """A health domain this HISP hosts: its addresses, certificates and DNS records.

    :ivar domain: the health domain (also the DNS zone its records are published in).
    :ivar addresses: its Direct addresses.
    :ivar certificates: its certificates, address-bound and domain-bound.
    :ivar records: more DNS records to publish in its zone.
    :ivar endpoint: where its incoming plain messages are delivered (``endpoint = ...``), or None.
    :ivar mailboxes: per-address endpoints overriding :attr:`endpoint` (``[[domain.mailbox]]``).
    """

    domain: HealthDomain
    addresses: tuple[DirectAddress, ...] = ()
    certificates: tuple[CertificateConfig, ...] = ()
    records: tuple[DnsRecordConfig, ...] = ()
    endpoint: Endpoint | None = None
    mailboxes: tuple[tuple[DirectAddress, Endpoint], ...] = ()


@dataclass(frozen=True)
class DnsConfig:
    """How the hosted domains' zones are published (``hisp dns serve``, ``hisp dns zone``).

    :ivar ttl: TTL of every published record unless a record sets its own (seconds).
    :ivar negative_ttl: the SOA minimum, i.e. how long resolvers cache NXDOMAIN/NODATA (seconds).
    :ivar nameservers: absolute names of the zones' NS records; the first is the SOA MNAME.
    :ivar hostmaster: the SOA RNAME as an absolute name (``hostmaster.clinic.example.``), or None for
        ``hostmaster.<zone>.``.
    :ivar serial: the SOA serial; None when not configured (then the configuration file's modification time).
    """

    ttl: int = 3600
    negative_ttl: int = 300
    nameservers: tuple[str, ...] = ()
    hostmaster: str | None = None
    serial: int | None = None


@dataclass(frozen=True)
class LdapConfig:
    """How the hosted certificates are published in LDAP (``hisp ldap ldif``).

    :ivar base: the base DN the entries go under, e.g. ``"ou=direct,dc=clinic,dc=example"``, or None.
    """

    base: str | None = None


#: Longest TTL accepted (seconds): a week; RFC 2181 section 8 allows 2^31 - 1 but certificates change.
MAX_TTL = 7 * 24 * 3600
#: Record types the configuration may add; CERT, SOA and NS are made from the rest of the configuration.
RECORD_TYPES = ("A", "AAAA", "MX", "SRV", "TXT")


def _error(source: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}", file=source, key=key)


def _dns_name(reader: _Reader, key: str, text: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise reader.error(key, f"not a valid DNS name: {text!r} ({exc})") from None


def _ttl(reader: _Reader, key: str, default: int) -> int:
    value = reader.get(key, int, default)
    if not 0 <= value <= MAX_TTL:
        raise reader.error(key, f"must be between 0 and {MAX_TTL} seconds")
    return int(value)


def _dns(source: str, table: Mapping[str, Any], base: Path) -> DnsConfig:
    reader = _Reader(source, table, "dns", base)
    ttl = _ttl(reader, "ttl", 3600)
    negative_ttl = _ttl(reader, "negative_ttl", 300)
    nameservers = tuple(_dns_name(reader, "nameservers", n).to_text() for n in reader.strings("nameservers", ()))
    hostmaster_text = reader.get("hostmaster", str, None)
    hostmaster = None
    if hostmaster_text is not None:
        local, at, domain = hostmaster_text.partition("@")
        if at and ("." in local or not local or not domain):
            raise reader.error("hostmaster", f"give a mailbox like hostmaster@clinic.example, not {hostmaster_text!r}")
        hostmaster = _dns_name(reader, "hostmaster", f"{local}.{domain}" if at else hostmaster_text).to_text()
    serial = reader.get("serial", int, None)
    if serial is not None and not 0 <= serial < 2**32:
        raise reader.error("serial", "must be between 0 and 4294967295 (RFC 1035 section 3.3.13)")
    reader.finish()
    return DnsConfig(ttl, negative_ttl, nameservers, hostmaster, serial)


def _ldap(source: str, table: Mapping[str, Any], base: Path) -> LdapConfig:
    reader = _Reader(source, table, "ldap", base)
    dn = reader.get("base", str, None)
    if dn is not None and not _looks_like_dn(dn):
        raise reader.error("base", f"not a distinguished name like ou=direct,dc=clinic,dc=example: {dn!r}")
    reader.finish()
    return LdapConfig(dn)


def _looks_like_dn(text: str) -> bool:
    parts = [p.strip() for p in text.split(",")]
    return all(len(p.partition("=")[0]) > 0 and p.partition("=")[1] == "=" and p.partition("=")[2] for p in parts)


def _passphrase(reader: _Reader) -> Passphrase | None:
    env = reader.get("passphrase_env", str, None)
    file = reader.path("passphrase_file", None)
    if "passphrase" in reader.table:
        reader.used.add("passphrase")
        raise reader.error("passphrase", "never put a passphrase in the configuration: use passphrase_env or "
                           "passphrase_file")
    if env is not None and file is not None:
        raise reader.error("passphrase_env", "give passphrase_env or passphrase_file, not both")
    if env is not None:
        if not env or not all(c.isalnum() or c == "_" for c in env) or env[0].isdigit():
            raise reader.error("passphrase_env", f"not an environment variable name: {env!r}")
        return Passphrase(env, None, reader.source, f"{reader.prefix}.passphrase_env")
    if file is not None:
        return Passphrase(None, file, reader.source, f"{reader.prefix}.passphrase_file")
    return None


def _hosted_certificate(sub: _Reader, domain: HealthDomain, addresses: Sequence[DirectAddress]) -> CertificateConfig:
    file = sub.path("file", None)
    pkcs12 = sub.path("pkcs12", None)
    if (file is None) == (pkcs12 is None):
        raise sub.error("file", "give the certificate file (file = ..., with key = ...) or a PKCS#12 file "
                        "(pkcs12 = ...), one of them")
    key = sub.path("key", None)
    if pkcs12 is not None and key is not None:
        raise sub.error("key", "a PKCS#12 file holds its key: drop key")
    path = file if file is not None else pkcs12
    assert path is not None
    if not _is_file(path):
        raise sub.error("file" if file is not None else "pkcs12", f"no such file: {path}")
    if key is not None and not _is_file(key):
        raise sub.error("key", f"no such file: {key}")
    passphrase = _passphrase(sub)
    address = None
    address_text = sub.get("address", str, None)
    if address_text is not None:
        try:
            address = DirectAddress.parse(address_text)
        except AddressError as exc:
            raise sub.error("address", exc.message) from None
        if address not in addresses:
            raise sub.error("address", f"{address} is not one of the domain's addresses")
    names = sub.strings("publish", ("dns",))
    try:
        publish = frozenset(Publication(n) for n in names)
    except ValueError:
        raise sub.error("publish", f"each must be dns or ldap, got {names}") from None
    config = CertificateConfig(
        path, key, pkcs12 is not None, passphrase, domain, address, publish, source=sub.source, config_key=sub.prefix
    )
    if not config.pkcs12:
        config.certificate()  # parse and check the binding now; PKCS#12 needs its passphrase: checked when used
    return config


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, permission denied on a directory on the way...
        return False


def _record(sub: _Reader, domain: HealthDomain, default_ttl: int) -> DnsRecordConfig:
    origin = dns.name.from_text(domain.dns_name())
    kind = sub.get("type", str).upper()
    if kind not in RECORD_TYPES:
        raise sub.error("type", f"must be one of {', '.join(RECORD_TYPES)} (CERT, SOA and NS are generated): {kind!r}")
    name_text = sub.get("name", str, "@")
    try:
        name = origin if name_text == "@" else dns.name.from_text(name_text, origin=origin)
    except dns.exception.DNSException as exc:
        raise sub.error("name", f"not a valid DNS name: {name_text!r} ({exc})") from None
    if not name.is_subdomain(origin):
        raise sub.error("name", f"{name} is outside the zone {origin}")
    value = sub.get("value", str)
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, value, origin=origin, relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        raise sub.error("value", f"not a valid {kind} record: {value!r} ({exc})") from None
    return DnsRecordConfig(name.to_text(), kind, rdata.to_text(), _ttl(sub, "ttl", default_ttl))


def _domains(top: _Reader, dns_config: DnsConfig) -> tuple[HostedDomainConfig, ...]:
    hosted: list[HostedDomainConfig] = []
    seen: set[HealthDomain] = set()
    for sub in _tables(top, "domain"):
        try:
            domain = HealthDomain.parse(sub.get("name", str))
        except AddressError as exc:
            raise sub.error("name", exc.message) from None
        if domain in seen:
            raise sub.error("name", f"{domain} is configured twice")
        seen.add(domain)
        addresses: list[DirectAddress] = []
        for text in sub.strings("addresses", ()):
            try:
                address = DirectAddress.parse(text)
            except AddressError as exc:
                raise sub.error("addresses", exc.message) from None
            if address.domain != domain:
                raise sub.error("addresses", f"{address} is not in the domain {domain}")
            if address in addresses:
                raise sub.error("addresses", f"{address} is listed twice")
            addresses.append(address)
        certificates = []
        for cert_reader in _tables(sub, "certificate"):
            certificates.append(_hosted_certificate(cert_reader, domain, addresses))
            cert_reader.finish()
        records = []
        for record_reader in _tables(sub, "record"):
            records.append(_record(record_reader, domain, dns_config.ttl))
            record_reader.finish()
        endpoint = _endpoint(sub, "endpoint", None)
        mailboxes: list[tuple[DirectAddress, Endpoint]] = []
        for box in _tables(sub, "mailbox"):
            address = _address(box, "address")
            if address not in addresses:
                raise box.error("address", f"{address} is not one of the domain's addresses")
            if address in dict(mailboxes):
                raise box.error("address", f"{address} has two mailboxes")
            box_endpoint = _endpoint(box, "endpoint")
            assert box_endpoint is not None
            mailboxes.append((address, box_endpoint))
            box.finish()
        sub.finish()
        hosted.append(
            HostedDomainConfig(
                domain, tuple(addresses), tuple(certificates), tuple(records), endpoint, tuple(mailboxes)
            )
        )
    publishes_dns = any(
        Publication.DNS in c.publish for d in hosted for c in d.certificates
    ) or any(d.records for d in hosted)
    if publishes_dns and not dns_config.nameservers:
        raise top.error("dns.nameservers", "is required to publish DNS records (the zones' NS records)")
    return tuple(hosted)


#: The tables a configuration file may have.
_TOP_LEVEL_TABLES = frozenset(
    {
        "trust", "dns", "ldap", "domain", "node", "user", "limits", "listeners", "relay", "storage", "queue",
        "notifications", "discovery",
    }
)


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate configuration text.

    :param text: the TOML text.
    :param source: the file name used in error messages.
    :param base: the directory relative paths are resolved against (default: the current directory).
    :returns: the configuration.
    :raises ConfigError: invalid TOML, an unknown or missing key, a value of the wrong type or range, a
        certificate file that is missing, unreadable or not bound to its address or domain; the message names
        the file and the key.

    Spec: AS-21 (per-domain incoming/outgoing anchors), TB-3 (refresh), TB-4 (domains and directions);
    CD-11 (published certificates); RFC 1035 section 3.3.13 (SOA).
    """
    base = (base or Path.cwd()).resolve()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", file=source) from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{source}: not valid TOML: arrays or tables nested too deeply", file=source) from None
    top = _Reader(source, document, "", base)
    # a misspelt table ([dsn]) must be named as such, before the missing keys it causes are reported
    unknown = sorted(set(document) - _TOP_LEVEL_TABLES)
    if unknown:
        raise top.error(unknown[0], "unknown key" + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else ""))
    trust_table = top.get("trust", dict, {})
    trust = _trust(source, trust_table, base)
    dns_config = _dns(source, top.get("dns", dict, {}), base)
    ldap_config = _ldap(source, top.get("ldap", dict, {}), base)
    domains = _domains(top, dns_config)
    node = _node(_Reader(source, top.get("node", dict, {}), "node", base))
    users = _users(top, domains)
    limits = _limits(_Reader(source, top.get("limits", dict, {}), "limits", base))
    listeners = _listeners(_Reader(source, top.get("listeners", dict, {}), "listeners", base), limits, bool(users))
    relay = _relay(_Reader(source, top.get("relay", dict, {}), "relay", base))
    storage = _storage(_Reader(source, top.get("storage", dict, {}), "storage", base))
    queue = _queue(_Reader(source, top.get("queue", dict, {}), "queue", base))
    notifications = _notifications(_Reader(source, top.get("notifications", dict, {}), "notifications", base))
    discovery = _discovery(_Reader(source, top.get("discovery", dict, {}), "discovery", base))
    top.finish()
    return Config(
        path=Path(source), trust=trust, domains=domains, dns=dns_config, ldap=ldap_config, node=node, users=users,
        listeners=listeners, relay=relay, storage=storage, queue=queue, limits=limits, notifications=notifications,
        discovery=discovery,
    )


# -- the gateway: node, edge users, listeners, relay, storage, queue, limits (issue 5) -------------------


@dataclass(frozen=True)
class NodeConfig:
    """This node of the HISP.

    :ivar name: its name in the queue (claims) and the audit log; several nodes sharing one database need
        different names. None means the host name (:func:`socket.gethostname`).
    :ivar hostname: the name in the SMTP greeting and EHLO (RFC 5321 section 4.1.1.1).
    """

    name: str | None = None
    hostname: str = "localhost"


@dataclass(frozen=True)
class EdgeUserConfig:
    """An edge user: an SMTP AUTH name on the submission listener and the addresses it may send from.

    :ivar name: the AUTH name (RFC 4954).
    :ivar password_hash: the scrypt hash made by ``hisp user add`` (never a password); checked when loaded by
        :func:`hisp.core.smtp_policy.parse_password_hash` (parameters in bounds, 16-byte salt, 32-byte hash).
    :ivar addresses: hosted addresses it may use in MAIL FROM and From.
    """

    name: str
    password_hash: str = field(repr=False)
    addresses: tuple[DirectAddress, ...]


@dataclass(frozen=True)
class LimitsConfig:
    """Defaults of both listeners (each may override them).

    :ivar max_message_size: bytes of one message (SIZE, RFC 1870).
    :ivar max_recipients: RCPTs per message (RFC 5321 section 4.5.3.1.8: at least 100 should be accepted).
    :ivar max_connections: concurrent connections per listener.
    :ivar command_timeout: seconds a client may stay idle (RFC 5321 section 4.5.3.2.7: 5 minutes).
    :ivar mime: bounds on the MIME structure of every message the security agent handles, from ``[limits.mime]``
        (``max_bytes``, ``max_depth``, ``max_parts``, ``max_header_bytes``, ``max_headers``); ``max_bytes`` is at
        least every listener's ``max_message_size`` (a message accepted must be one the agent can parse).
    """

    max_message_size: int = 36 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 100
    command_timeout: float = 300.0
    mime: MimeLimits = field(default_factory=MimeLimits)


@dataclass(frozen=True)
class ListenerConfig:
    """One SMTP listener.

    :ivar host: address to listen on.
    :ivar port: TCP port (0: a free one, for tests).
    :ivar tls_cert: PEM certificate (then its chain) for STARTTLS, or None (backbone only: no STARTTLS).
    :ivar tls_key: PEM private key of :attr:`tls_cert`.
    :ivar max_message_size: bytes.
    :ivar max_recipients: per message.
    :ivar max_connections: concurrent.
    :ivar command_timeout: seconds.
    """

    host: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    max_message_size: int
    max_recipients: int
    max_connections: int
    command_timeout: float


@dataclass(frozen=True)
class ListenersConfig:
    """The submission listener (edge clients) and the backbone listener (peer HISPs); None: not run."""

    submission: ListenerConfig | None = None
    backbone: ListenerConfig | None = None


class RelayMode(enum.Enum):
    """How sealed messages reach peer HISPs."""

    MX = "mx"  # the recipient domain's MX hosts (RFC 5321 section 5.1)
    SMARTHOST = "smarthost"  # one configured relay for everything


@dataclass(frozen=True)
class RelayConfig:
    """The relay to peer HISPs, and the DNS server for MX lookups and certificate discovery.

    :ivar mode: MX lookup or smarthost.
    :ivar smarthost: ``(host, port)`` in smarthost mode, else None.
    :ivar port: SMTP port of the MX hosts (25; a test network may use another).
    :ivar require_tls: never relay in clear (a host without STARTTLS is retried later).
    :ivar dns_server: ``(ip, port)`` of the DNS server for MX and discovery, or None for the system's.
    :ivar timeout: seconds for a connection and each reply.
    """

    mode: RelayMode = RelayMode.MX
    smarthost: tuple[str, int] | None = None
    port: int = 25
    require_tls: bool = False
    dns_server: tuple[str, int] | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class StorageConfig:
    """Where messages, the queue and the audit log live.

    :ivar url: ``sqlite:///FILE`` or ``postgresql+psycopg://...``; None means ``hisp.sqlite3`` beside the
        configuration file.
    :ivar spool_dir: directory for large message bodies, or None (every body in the database).
    """

    url: str | None = None
    spool_dir: Path | None = None


@dataclass(frozen=True)
class QueueConfig:
    """The queue's retry schedule, leases and workers.

    :ivar retry: the backoff schedule and lifetime.
    :ivar lease: seconds a claimed job is held before another node may take it over.
    :ivar workers: worker tasks in this process.
    :ivar poll_interval: seconds between polls of the queue when there is nothing to do.
    """

    retry: RetrySchedule = field(default_factory=RetrySchedule)
    lease: float = 300.0
    workers: int = 4
    poll_interval: float = 1.0


@dataclass(frozen=True)
class NotificationsConfig:
    """Delivery notifications: what the receiving side sends and how the sending side tracks (``[notifications]``).

    :ivar send_mdn: send processed MDNs (and dispatched/failed when requested) for the messages we receive
        (AS-18; turn off only where another component of the receiving side sends them).
    :ivar timeout: seconds from the original send after which incomplete recipients get one DSN (DN-7, DN-9;
        default 3600, the RI's).
    :ivar consume_processed: record processed MDNs and do not forward them to the edge (DN-10, RI
        ``ConsumeMDNProcessed``; default off).
    :ivar scan_interval: seconds between scans for tracked messages past their deadline.
    """

    send_mdn: bool = True
    timeout: float = 3600.0
    consume_processed: bool = False
    scan_interval: float = 30.0


#: Largest message size accepted in the configuration (bytes): 1 GiB.
MAX_MESSAGE_LIMIT = 1024 * 1024 * 1024


def _address(reader: _Reader, key: str) -> DirectAddress:
    try:
        return DirectAddress.parse(reader.get(key, str))
    except AddressError as exc:
        raise reader.error(key, exc.message) from None


def _endpoint(reader: _Reader, key: str, default: Any = ...) -> Endpoint | None:
    text = reader.get(key, str, default)
    if text is None:
        return None
    if text.lower().startswith("maildir:") and not text[len("maildir:"):].startswith("/"):
        text = f"maildir:{(reader.base / text[len('maildir:'):]).resolve()}"  # relative to this file
    try:
        endpoint = parse_endpoint(text)
    except ConfigError as exc:
        raise reader.error(key, exc.message) from None
    return endpoint


def _positive(reader: _Reader, key: str, default: int, maximum: int) -> int:
    value = reader.get(key, int, default)
    if not 1 <= value <= maximum:
        raise reader.error(key, f"must be between 1 and {maximum}")
    return int(value)


def _seconds(reader: _Reader, key: str, default: float, minimum: float = 0.001, maximum: float = 10 * 365 * 86400.0
             ) -> float:
    value = reader.get(key, (int, float), default, what="a number of seconds")
    if not minimum <= value <= maximum:
        raise reader.error(key, f"must be between {minimum:g} and {maximum:g} seconds")
    return float(value)


def _host_port(reader: _Reader, key: str, default_port: int | None) -> tuple[str, int] | None:
    text = reader.get(key, str, None)
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep:
        host, port = text, str(default_port) if default_port is not None else ""
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise reader.error(key, f"expected HOST:PORT (e.g. 127.0.0.1:53), not {text!r}")
    return host, int(port)


def _node(reader: _Reader) -> NodeConfig:
    name = reader.get("name", str, None)
    if name is not None and (not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name)):
        raise reader.error("name", f"use 1 to 64 letters, digits, '-', '_' or '.': {name!r}")
    hostname = reader.get("hostname", str, "localhost")
    try:
        dns.name.from_text(hostname)
    except dns.exception.DNSException as exc:
        raise reader.error("hostname", f"not a valid host name: {hostname!r} ({exc})") from None
    if not hostname or any(c.isspace() for c in hostname):
        raise reader.error("hostname", f"not a valid host name: {hostname!r}")
    reader.finish()
    return NodeConfig(name, hostname)


def _users(top: _Reader, domains: Sequence[HostedDomainConfig]) -> tuple[EdgeUserConfig, ...]:
    hosted = {a for d in domains for a in d.addresses}
    users: list[EdgeUserConfig] = []
    for sub in _tables(top, "user"):
        name = sub.get("name", str)
        if not name or len(name) > 256 or any(c.isspace() or ord(c) < 32 for c in name):
            raise sub.error("name", f"must be a non-empty name without spaces: {name!r}")
        if any(u.name == name for u in users):
            raise sub.error("name", f"user {name!r} is defined twice")
        password_hash = sub.get("password_hash", str)
        try:
            parse_password_hash(password_hash)
        except ValueError as exc:
            raise sub.error(
                "password_hash", f"is not a usable scrypt$N$r$p$salt$hash ({exc}): make one with `hisp user add`"
            ) from None
        if "password" in sub.table:
            sub.used.add("password")
            raise sub.error("password", "never put a password in the configuration: give password_hash")
        addresses: list[DirectAddress] = []
        for text in sub.strings("addresses"):
            try:
                address = DirectAddress.parse(text)
            except AddressError as exc:
                raise sub.error("addresses", exc.message) from None
            if address not in hosted:
                raise sub.error("addresses", f"{address} is not an address of a hosted [[domain]]")
            addresses.append(address)
        if not addresses:
            raise sub.error("addresses", "give the addresses this user may send from")
        sub.finish()
        users.append(EdgeUserConfig(name, password_hash, tuple(addresses)))
    return tuple(users)


def _limits(reader: _Reader) -> LimitsConfig:
    defaults = LimitsConfig()
    limits = LimitsConfig(
        _positive(reader, "max_message_size", defaults.max_message_size, MAX_MESSAGE_LIMIT),
        _positive(reader, "max_recipients", defaults.max_recipients, 10_000),
        _positive(reader, "max_connections", defaults.max_connections, 100_000),
        _seconds(reader, "command_timeout", defaults.command_timeout, 1.0, 3600.0),
        _mime_limits(_Reader(reader.source, reader.get("mime", dict, {}), f"{reader.prefix}.mime", reader.base)),
    )
    reader.finish()
    return limits


def _mime_limits(reader: _Reader) -> MimeLimits:
    """``[limits.mime]``: the security agent's MIME bounds (DESIGN.md section 6.3; issue 2, "caps from
    configuration")."""
    d = MimeLimits()
    limits = MimeLimits(
        max_message_bytes=_positive(reader, "max_bytes", d.max_message_bytes, 2 * MAX_MESSAGE_LIMIT),
        max_depth=_positive(reader, "max_depth", d.max_depth, 100),
        max_parts=_positive(reader, "max_parts", d.max_parts, 100_000),
        max_header_bytes=_positive(reader, "max_header_bytes", d.max_header_bytes, 16 * 1024 * 1024),
        max_headers=_positive(reader, "max_headers", d.max_headers, 100_000),
    )
    reader.finish()
    return limits


def _listener(reader: _Reader, limits: LimitsConfig, default_port: int, need_tls: bool) -> ListenerConfig:
    host = reader.get("host", str, "127.0.0.1")
    port = reader.get("port", int, default_port)
    if not 0 <= port <= 65535:
        raise reader.error("port", "must be between 0 and 65535")
    cert, key = reader.path("tls_cert", None), reader.path("tls_key", None)
    if (cert is None) != (key is None):
        raise reader.error("tls_cert" if cert is None else "tls_key", "give both tls_cert and tls_key")
    if cert is None and need_tls:
        raise reader.error("tls_cert", "is required: edge clients must use STARTTLS before AUTH (RFC 3207, RFC 4954)")
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not _is_file(path):
            raise reader.error(name, f"no such file: {path}")
    listener = ListenerConfig(
        host, port, cert, key,
        _positive(reader, "max_message_size", limits.max_message_size, MAX_MESSAGE_LIMIT),
        _positive(reader, "max_recipients", limits.max_recipients, 10_000),
        _positive(reader, "max_connections", limits.max_connections, 100_000),
        _seconds(reader, "command_timeout", limits.command_timeout, 1.0, 3600.0),
    )
    reader.finish()
    return listener


def _listeners(reader: _Reader, limits: LimitsConfig, has_users: bool) -> ListenersConfig:
    submission = backbone = None
    if "submission" in reader.table:
        sub = _Reader(reader.source, reader.get("submission", dict), "listeners.submission", reader.base)
        submission = _listener(sub, limits, 587, True)
        if not has_users:
            raise sub.error("host", "the submission listener needs at least one [[user]]")
    if "backbone" in reader.table:
        sub = _Reader(reader.source, reader.get("backbone", dict), "listeners.backbone", reader.base)
        backbone = _listener(sub, limits, 25, False)
    reader.finish()
    for name, listener in (("submission", submission), ("backbone", backbone)):
        if listener is not None and listener.max_message_size > limits.mime.max_message_bytes:
            raise reader.error(
                f"{name}.max_message_size",
                f"{listener.max_message_size} bytes is more than [limits.mime] max_bytes "
                f"({limits.mime.max_message_bytes}): a message accepted must be one the security agent can parse",
            )
    if submission is not None and backbone is not None and (submission.host, submission.port) == (
        backbone.host, backbone.port
    ) and submission.port != 0:
        raise reader.error("backbone.port", "the submission and backbone listeners cannot share a port")
    return ListenersConfig(submission, backbone)


def _relay(reader: _Reader) -> RelayConfig:
    mode_text = reader.get("mode", str, "mx")
    try:
        mode = RelayMode(mode_text)
    except ValueError:
        raise reader.error("mode", f"must be mx or smarthost, not {mode_text!r}") from None
    smarthost = _host_port(reader, "smarthost", 25)
    if mode is RelayMode.SMARTHOST and smarthost is None:
        raise reader.error("smarthost", "is required with mode = \"smarthost\"")
    if mode is RelayMode.MX and smarthost is not None:
        raise reader.error("smarthost", "is only used with mode = \"smarthost\"")
    port = reader.get("port", int, 25)
    if not 1 <= port <= 65535:
        raise reader.error("port", "must be between 1 and 65535")
    require_tls = reader.get("require_tls", bool, False)
    dns_server = _host_port(reader, "dns_server", 53)
    if dns_server is not None:
        try:
            ipaddress.ip_address(dns_server[0])
        except ValueError:
            raise reader.error("dns_server", f"must be an IP address (and port), not {dns_server[0]!r}") from None
    timeout = _seconds(reader, "timeout", 60.0, 0.1, 3600.0)
    reader.finish()
    return RelayConfig(mode, smarthost, port, require_tls, dns_server, timeout)


def _storage(reader: _Reader) -> StorageConfig:
    url = reader.get("url", str, None)
    if url is not None:
        scheme = url.partition(":")[0].lower()
        if not (scheme == "sqlite" and url.startswith("sqlite:///")) and not scheme.startswith("postgresql"):
            raise reader.error("url", f"must be sqlite:///FILE or postgresql+psycopg://..., not {url.split('@')[-1]!r}")
        if scheme == "sqlite" and url[len("sqlite:///"):] in ("", ":memory:"):
            raise reader.error("url", "SQLite needs a file (WAL mode), not an in-memory database")
        if scheme == "sqlite" and not url[len("sqlite:///"):].startswith("/"):
            url = f"sqlite:///{(reader.base / url[len('sqlite:///'):]).resolve()}"  # relative to this file
    spool_dir = reader.path("spool_dir", None)
    reader.finish()
    return StorageConfig(url, spool_dir)


def _queue(reader: _Reader) -> QueueConfig:
    initial = _seconds(reader, "retry_initial", 300.0, 0.01, 86400.0)
    factor = reader.get("retry_factor", (int, float), 2.0, what="a number")
    if not 1 <= factor <= 100:
        raise reader.error("retry_factor", "must be between 1 and 100")
    maximum = _seconds(reader, "retry_maximum", max(14400.0, initial), 0.01, 7 * 86400.0)
    if maximum < initial:
        raise reader.error("retry_maximum", f"must be at least retry_initial ({initial:g} seconds)")
    lifetime = _seconds(reader, "lifetime", 5 * 86400.0, 1.0, 30 * 86400.0)
    jitter = reader.get("retry_jitter", (int, float), 0.2, what="a number")
    if not 0 <= jitter < 1:
        raise reader.error("retry_jitter", "must be at least 0 and below 1")
    lease = _seconds(reader, "lease", 300.0, 1.0, 86400.0)
    workers = _positive(reader, "workers", 4, 256)
    poll = _seconds(reader, "poll_interval", 1.0, 0.01, 60.0)
    reader.finish()
    schedule = RetrySchedule(
        timedelta(seconds=initial), float(factor), timedelta(seconds=maximum), timedelta(seconds=lifetime),
        float(jitter),
    )
    return QueueConfig(schedule, lease, workers, poll)


def _notifications(reader: _Reader) -> NotificationsConfig:
    send_mdn = reader.get("send_mdn", bool, True, what="true or false")
    timeout = _seconds(reader, "timeout", 3600.0, 1.0, 30 * 86400.0)
    consume = reader.get("consume_processed", bool, False, what="true or false")
    scan = _seconds(reader, "scan_interval", 30.0, 0.01, 3600.0)
    reader.finish()
    return NotificationsConfig(send_mdn, timeout, consume, scan)


# -- certificate discovery: [discovery] and [[discovery.local]] (issue 4) ---------------------------------

#: Longest cache time accepted for discovery results (seconds): the plan caps every TTL at a day anyway.
MAX_DISCOVERY_TTL = 86400
#: Most discovery results one process may be told to keep.
MAX_DISCOVERY_CACHE = 1_000_000
#: Largest local certificate file read (bytes): a certificate and its chain are a few KiB.
MAX_LOCAL_CERTIFICATE_FILE = 1024 * 1024


@dataclass(frozen=True)
class LocalCertificateConfig:
    """Certificates of a partner reached without discovery (``[[discovery.local]]``): read when loaded.

    Exactly one of :attr:`address` and :attr:`domain` is set. The certificates are consulted before DNS and
    LDAP for that address (or every address of that domain; an address's own entry wins over its domain's)
    and are still judged by the sender domain's outgoing anchors like any discovered certificate.

    :ivar address: the partner address, or None.
    :ivar domain: the partner domain, or None.
    :ivar file: the certificate file (PEM or DER; one or more certificates, CA certificates offered as
        intermediates).
    :ivar certificates: the certificates it holds, in file order.
    :ivar config_key: its table, e.g. ``"discovery.local[0]"``.

    Spec: issue 4 ("a local store ... is consulted first"); CD-10 ("bootstrap store"); AS-20.
    """

    address: DirectAddress | None
    domain: HealthDomain | None
    file: Path
    certificates: tuple[Certificate, ...] = field(repr=False)
    config_key: str = field(default="discovery.local", compare=False)


@dataclass(frozen=True)
class DiscoveryConfig:
    """Certificate discovery settings (``[discovery]``).

    :ivar require_dnssec: DNS answers (CERT, SRV, and the A/AAAA of SRV targets) must carry the AD bit; only
        behind a validating resolver reached over a trusted path (``[relay] dns_server``).
    :ivar ldap_ttl: seconds a result found through LDAP is cached (LDAP has no TTL; the SRV TTL still caps it).
    :ivar negative_ttl: seconds a "not found" result is cached (DNS negative TTLs below it win).
    :ivar cache_size: most results kept in memory by one process (least recently used dropped first; about
        13 KiB per result holding one certificate); with ``hisp serve --workers N`` each of the N processes keeps
        its own cache of this size, nothing is shared.
    :ivar local: partner certificates reached without discovery.

    Spec: CD-10 (cache for the TTL); issue 4 (DNSSEC optional, local store, negative caching).
    """

    require_dnssec: bool = False
    ldap_ttl: int = 3600
    negative_ttl: int = 300
    cache_size: int = 10_000
    local: tuple[LocalCertificateConfig, ...] = ()


def _discovery_ttl(reader: _Reader, key: str, default: int) -> int:
    value = reader.get(key, int, default, what="a number of seconds")
    if not 0 <= value <= MAX_DISCOVERY_TTL:
        raise reader.error(key, f"must be between 0 and {MAX_DISCOVERY_TTL} seconds (0: not cached)")
    return int(value)


def _local_certificates(sub: _Reader) -> LocalCertificateConfig:
    address_text = sub.get("address", str, None)
    domain_text = sub.get("domain", str, None)
    if (address_text is None) == (domain_text is None):
        raise sub.error("address", "give either address = ... or domain = ... (one of them)")
    address: DirectAddress | None = None
    domain: HealthDomain | None = None
    try:
        if address_text is not None:
            address = DirectAddress.parse(address_text)
        else:
            domain = HealthDomain.parse(domain_text)
    except AddressError as exc:
        raise sub.error("address" if address_text is not None else "domain", exc.message) from None
    file = sub.path("file")
    assert file is not None
    try:
        if not file.is_file():  # a FIFO or a device would be read without bound, or block the load
            raise sub.error("file", f"cannot read {file}: it does not exist or is not a regular file")
        with file.open("rb") as handle:
            data = handle.read(MAX_LOCAL_CERTIFICATE_FILE + 1)
        if len(data) > MAX_LOCAL_CERTIFICATE_FILE:
            raise sub.error("file", f"{file} is larger than {MAX_LOCAL_CERTIFICATE_FILE} bytes")
    except OSError as exc:
        raise sub.error("file", f"cannot read {file}: {exc.strerror}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise sub.error("file", f"cannot read {file}: {exc}") from None
    try:
        certificates = tuple(load_certificates(data))
    except CertificateError as exc:
        raise sub.error("file", f"{file}: not a certificate: {exc.message}") from None
    leaves = [c for c in certificates if not c.is_ca]
    if not leaves:
        raise sub.error("file", f"{file} holds only CA certificates: give the partner's own certificate")
    for cert in leaves:
        if address is not None:
            bound = cert.binding_for(address) is not None
            wanted = f"rfc822Name {address} or dNSName {address.domain}"
        else:
            assert domain is not None
            bound = domain.name.casefold() in {n.strip().rstrip(".").casefold() for n in cert.dns_names} or any(
                n.strip().casefold().rpartition("@")[2] == domain.name.casefold() for n in cert.rfc822_names
            )
            wanted = f"dNSName {domain} or an rfc822Name at {domain}"
        if not bound:
            names = ", ".join([*cert.rfc822_names, *cert.dns_names]) or "none"
            raise sub.error(
                "file", f"{cert.describe()} is not bound to {address or domain}: its subjectAltName lacks {wanted} "
                f"(it names: {names}; AS-2, AS-3)",
            )
    sub.finish()
    return LocalCertificateConfig(address, domain, file, certificates, sub.prefix)


def _discovery(reader: _Reader) -> DiscoveryConfig:
    require_dnssec = reader.get("require_dnssec", bool, False, what="true or false")
    ldap_ttl = _discovery_ttl(reader, "ldap_ttl", 3600)
    negative_ttl = _discovery_ttl(reader, "negative_ttl", 300)
    cache_size = reader.get("cache_size", int, 10_000, what="an integer")
    if not 1 <= cache_size <= MAX_DISCOVERY_CACHE:
        raise reader.error("cache_size", f"must be between 1 and {MAX_DISCOVERY_CACHE} results")
    local: list[LocalCertificateConfig] = []
    seen: dict[DirectAddress | HealthDomain, str] = {}
    for sub in _tables(reader, "local"):
        entry = _local_certificates(sub)
        key: DirectAddress | HealthDomain | None = entry.address if entry.address is not None else entry.domain
        assert key is not None
        if key in seen:
            raise sub.error("address" if entry.address else "domain", f"{key} is already configured in {seen[key]}")
        seen[key] = sub.prefix
        local.append(entry)
    reader.finish()
    return DiscoveryConfig(require_dnssec, ldap_ttl, negative_ttl, int(cache_size), tuple(local))


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file.

    :param path: the TOML file.
    :returns: the configuration, with relative paths resolved against the file's directory.
    :raises ConfigError: the file cannot be read, is too large (over 1 MiB) or is invalid.

    Spec: see :func:`parse_config`.
    """
    try:
        file = Path(path).resolve()
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}", file=str(path)) from None
    except (RuntimeError, ValueError) as exc:  # a symlink loop (Python < 3.13), a NUL byte in the path
        raise ConfigError(f"{path}: cannot read the configuration: {exc}", file=str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data)} bytes is too large for a configuration file", file=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration is not UTF-8 text", file=str(path)) from None
    config = parse_config(text, source=str(path), base=file.parent)
    if config.dns.serial is None:  # a new serial whenever the file changes (RFC 1035 section 3.3.13)
        config = dataclasses.replace(config, dns=dataclasses.replace(config.dns, serial=_mtime_serial(file)))
    return dataclasses.replace(config, path=file)


def _mtime_serial(file: Path) -> int:
    try:
        return int(file.stat().st_mtime) % 2**32
    except OSError:
        return 1
