"""The configuration file: one TOML file, validated when loaded, into frozen dataclasses.

This module defines the **trust** part (AS-21, TB-3, TB-4): trust anchors and trust bundles, each
associated with local health domains (or single addresses) and flagged incoming and/or outgoing, plus
the revocation mode, policy preset and clock-skew allowance per domain. Later issues add the hosted
domains, credentials, listeners, storage and queue parts to the same file.

Example::

    [trust]
    policy = "direct-1.3"        # default preset for every domain
    revocation = "soft"          # hard | soft | off
    clock_skew = 300             # seconds
    cache_dir = "trust-cache"    # downloaded bundles (relative to this file)

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

Paths are relative to the configuration file's directory. Every error names the file, the key and what
is wrong (a :class:`~hisp.errors.ConfigError`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hisp.addresses import DirectAddress, HealthDomain
from hisp.core.policy import PRESETS, Direction, RevocationMode, SecurityPolicy, policy_from_name
from hisp.errors import AddressError, ConfigError

__all__ = [
    "AnchorConfig",
    "BundleConfig",
    "Config",
    "Direction",
    "DomainTrustConfig",
    "RevocationMode",
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
    """

    policy: SecurityPolicy
    revocation: RevocationMode
    clock_skew: int
    cache_dir: Path
    anchors: tuple[AnchorConfig, ...] = ()
    bundles: tuple[BundleConfig, ...] = ()
    domains: tuple[DomainTrustConfig, ...] = ()

    def for_domain(self, domain: HealthDomain) -> DomainTrustConfig:
        """The policy and revocation mode in force for ``domain`` (its override, else the defaults)."""
        for override in self.domains:
            if override.domain == domain:
                return override
        return DomainTrustConfig(domain, self.policy, self.revocation)


@dataclass(frozen=True)
class Config:
    """The whole configuration (so far: its trust part).

    :ivar path: the file it was read from (absolute).
    :ivar trust: the trust part.
    """

    path: Path
    trust: TrustConfig = field(repr=False)


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

    anchors: list[AnchorConfig] = []
    for sub in _tables(reader, "anchor"):
        file = sub.path("file")
        assert file is not None
        anchors.append(AnchorConfig(file, *_scope(sub)))
        sub.finish()

    bundles: list[BundleConfig] = []
    names: set[str] = set()
    for sub in _tables(reader, "bundle"):
        name = sub.get("name", str)
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name in names:
            raise sub.error("name", f"must be unique and use letters, digits, '-', '_' or '.': {name!r}")
        names.add(name)
        url = sub.get("url", str)
        parts = urlsplit(url)
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
    return TrustConfig(policy, revocation, clock_skew, cache_dir, tuple(anchors), tuple(bundles), tuple(domains))


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate configuration text.

    :param text: the TOML text.
    :param source: the file name used in error messages.
    :param base: the directory relative paths are resolved against (default: the current directory).
    :returns: the configuration.
    :raises ConfigError: invalid TOML, an unknown or missing key, or a value of the wrong type or range;
        the message names the file and the key.

    Spec: AS-21 (per-domain incoming/outgoing anchors), TB-3 (refresh), TB-4 (domains and directions).
    """
    base = (base or Path.cwd()).resolve()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", file=source) from None
    top = _Reader(source, document, "", base)
    trust_table = top.get("trust", dict, {})
    trust = _trust(source, trust_table, base)
    top.finish()
    return Config(path=Path(source), trust=trust)


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file.

    :param path: the TOML file.
    :returns: the configuration, with relative paths resolved against the file's directory.
    :raises ConfigError: the file cannot be read, is too large (over 1 MiB) or is invalid.

    Spec: see :func:`parse_config`.
    """
    file = Path(path).resolve()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}", file=str(path)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data)} bytes is too large for a configuration file", file=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration is not UTF-8 text", file=str(path)) from None
    config = parse_config(text, source=str(path), base=file.parent)
    return Config(path=file, trust=config.trust)
