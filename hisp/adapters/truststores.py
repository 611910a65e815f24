"""Trust stores assembled from the configuration: anchor files and trust bundles, per domain and address.

:class:`TrustStores` reads the ``[trust]`` part of the configuration (:class:`hisp.config.TrustConfig`):
every ``[[trust.anchor]]`` file (PEM or DER, one or more certificates, read once at start-up) and every
``[[trust.bundle]]`` (through a :class:`~hisp.adapters.bundles.BundleRefresher`, restored from its disk
cache at start-up and refreshed on its interval), and joins them into one immutable
:class:`~hisp.core.trust.TrustStore` per local health domain and per configured local address, each with
separate incoming and outgoing anchors (AS-21, TB-4) and the domain's policy and revocation mode.

An address's store holds its domain's anchors plus those configured for the address alone. A domain named
nowhere in the configuration gets an empty store: every certificate is then untrusted.

When a bundle changes (:meth:`TrustStores.refresh`), the stores are rebuilt and swapped in as a whole:
readers holding the old store finish with it, new lookups get the new one. The anchors of a bundle are
anchors only (TB-5): they go into the stores' anchor sets and nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hisp.adapters.bundles import BundleRefresher, RefreshOutcome, RefreshStatus
from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import TrustConfig
from hisp.core.certs import MAX_INPUT_BYTES, Certificate, load_certificates
from hisp.core.policy import Direction
from hisp.core.trust import TrustAnchor, TrustStore
from hisp.errors import CertificateError, ConfigError

__all__ = ["TrustStores", "load_anchor_file", "load_intermediates"]


@dataclass(frozen=True)
class _Scoped:
    """An anchor with the domains, addresses and directions it is configured for."""

    anchor: TrustAnchor
    domains: tuple[HealthDomain, ...]
    addresses: tuple[DirectAddress, ...]
    directions: frozenset[Direction]


def load_anchor_file(path: Path) -> tuple[Certificate, ...]:
    """The certificates of an anchor (or bundle-signer) file.

    :param path: a PEM or DER file, one or more certificates, or a certs-only PKCS#7.
    :returns: the certificates.
    :raises ConfigError: the file cannot be read, is empty or over 1 MiB, or holds no certificate;
        the message names the file.

    Spec: AS-21 (anchors from configuration).
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"trust anchor file {path}: {exc.strerror or exc}", file=str(path)) from None
    if not data or len(data) > MAX_INPUT_BYTES:
        raise ConfigError(f"trust anchor file {path}: empty or larger than {MAX_INPUT_BYTES} bytes", file=str(path))
    try:
        return tuple(load_certificates(data))
    except CertificateError as exc:
        raise ConfigError(f"trust anchor file {path}: {exc.message}", file=str(path)) from None


def load_intermediates(
    files: Sequence[Path], load_file: Callable[[Path], tuple[Certificate, ...]]
) -> tuple[Certificate, ...]:
    """The CA certificates of the ``[trust] intermediates`` files, each once.

    :raises ConfigError: a file cannot be read, holds no certificate, or holds a certificate that is not a CA
        (an intermediate must be able to issue: basicConstraints cA); the message names the file.

    Spec: AS-20 (intermediates from the local store).
    """
    found: dict[bytes, Certificate] = {}
    for file in files:
        for cert in load_file(file):
            if not cert.is_ca:
                raise ConfigError(
                    f"trust intermediates file {file}: {cert.subject} is not a CA certificate", file=str(file)
                )
            found.setdefault(cert.der, cert)
    return tuple(found.values())


class TrustStores:
    """The trust stores of every local domain and address, rebuilt when a bundle changes.

    :param config: the trust part of the configuration.
    :param now: the start-up time (aware): cached bundles are verified again at it.
    :param refreshers: the bundles' refreshers by bundle name (default: one
        :class:`~hisp.adapters.bundles.BundleRefresher` per configured bundle, caching in
        ``config.cache_dir``).
    :param load_file: reads an anchor file (default :func:`load_anchor_file`).
    :raises ConfigError: an anchor or bundle-signer file cannot be loaded.

    Spec: AS-21, TB-3, TB-4, TB-5.
    """

    def __init__(
        self,
        config: TrustConfig,
        *,
        now: datetime,
        refreshers: Mapping[str, BundleRefresher] | None = None,
        load_file: Callable[[Path], tuple[Certificate, ...]] = load_anchor_file,
    ) -> None:
        self.config = config
        self._files = {anchor.file: load_file(anchor.file) for anchor in config.anchors}
        self.intermediates = load_intermediates(config.intermediates, load_file)
        if refreshers is None:
            refreshers = {
                bundle.name: BundleRefresher(
                    bundle.url,
                    cache_dir=config.cache_dir,
                    refresh_interval=bundle.refresh,
                    policy=config.policy,
                    signing_certificates=load_file(bundle.signer) if bundle.signer is not None else (),
                    name=bundle.name,
                )
                for bundle in config.bundles
            }
        self.refreshers = dict(refreshers)
        for refresher in self.refreshers.values():
            refresher.load_cached(now)
        self._lock = threading.Lock()
        self._stores: dict[HealthDomain | DirectAddress, TrustStore] = {}
        self.rebuild()

    def _anchors(self) -> list[_Scoped]:
        """Every anchor with its scope: files first, then bundles, in configuration order."""
        found: list[_Scoped] = []
        for anchor in self.config.anchors:
            for cert in self._files[anchor.file]:
                found.append(
                    _Scoped(TrustAnchor(cert, str(anchor.file)), anchor.domains, anchor.addresses, anchor.directions)
                )
        for bundle in self.config.bundles:
            refresher = self.refreshers.get(bundle.name)
            current = refresher.current() if refresher is not None else None
            if current is None:
                continue  # never fetched nor cached: no anchors yet
            for cert in current.anchors:
                found.append(
                    _Scoped(
                        TrustAnchor(cert, f"bundle {bundle.name}"), bundle.domains, bundle.addresses, bundle.directions
                    )
                )
        return found

    def rebuild(self) -> None:
        """Rebuild every store from the anchor files and the bundles' current contents, and swap them in.

        Spec: AS-21, TB-3 (atomic replacement), TB-4.
        """
        anchors = self._anchors()
        domains: set[HealthDomain] = {d.domain for d in self.config.domains}
        addresses: set[DirectAddress] = set()
        for anchor in self.config.anchors:
            domains.update(anchor.domains)
            addresses.update(anchor.addresses)
        for bundle in self.config.bundles:
            domains.update(bundle.domains)
            addresses.update(bundle.addresses)

        def pick(direction: Direction, domain: HealthDomain, address: DirectAddress | None) -> tuple[TrustAnchor, ...]:
            chosen: dict[Certificate, TrustAnchor] = {}
            for scoped in anchors:
                if direction in scoped.directions and (domain in scoped.domains or address in scoped.addresses):
                    chosen.setdefault(scoped.anchor.certificate, scoped.anchor)  # the first source named wins
            return tuple(chosen.values())

        stores: dict[HealthDomain | DirectAddress, TrustStore] = {}
        for domain in domains:
            settings = self.config.for_domain(domain)
            stores[domain] = TrustStore(
                domain=domain,
                incoming=pick(Direction.INCOMING, domain, None),
                outgoing=pick(Direction.OUTGOING, domain, None),
                revocation=settings.revocation,
                policy=settings.policy,
                intermediates=self.intermediates,
            )
        for address in addresses:
            domain = address.domain
            settings = self.config.for_domain(domain)
            stores[address] = TrustStore(
                domain=domain,
                incoming=pick(Direction.INCOMING, domain, address),
                outgoing=pick(Direction.OUTGOING, domain, address),
                revocation=settings.revocation,
                policy=settings.policy,
                address=address,
                intermediates=self.intermediates,
            )
        with self._lock:
            self._stores = stores

    def store_for(self, local: DirectAddress | HealthDomain) -> TrustStore:
        """The store in force for a local address (its own when configured, else its domain's) or domain.

        :param local: our address (the recipient of an incoming message, the sender of an outgoing one)
            or our health domain.
        :returns: the store; an empty one (everything untrusted) for a domain configured nowhere.

        Spec: AS-21, TB-4.
        """
        with self._lock:
            stores = self._stores
        if isinstance(local, DirectAddress):
            store = stores.get(local)
            if store is not None:
                return store
            domain = local.domain
        else:
            domain = local
        store = stores.get(domain)
        if store is not None:
            return store
        settings = self.config.for_domain(domain)
        return TrustStore(
            domain=domain, revocation=settings.revocation, policy=settings.policy, intermediates=self.intermediates
        )

    def refresh(self, now: datetime) -> dict[str, RefreshOutcome]:
        """Refresh every bundle that is due; rebuild the stores when one changed.

        :param now: the current time (aware).
        :returns: each refreshed bundle's outcome, by name.
        :raises ConfigError: ``now`` is naive.

        Spec: TB-3 (refresh interval, last good bundle kept), TB-4.
        """
        outcomes = {name: r.refresh(now) for name, r in self.refreshers.items() if r.due(now)}
        if any(o.status is RefreshStatus.UPDATED for o in outcomes.values()):
            self.rebuild()
        return outcomes
