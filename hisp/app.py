"""The composition root: build one HISP node's adapters from the configuration and run them.

:class:`Node` opens the store (migrating it), loads our credentials and the trust stores, builds certificate
discovery (one cache per hosted sender domain, judged against that domain's outgoing anchors), the relay, edge
delivery and the :class:`~hisp.pipeline.Pipeline`, then starts the listeners configured (submission, backbone),
``workers`` worker tasks in this process and the notification timeout scan. :meth:`Node.stop` stops listening, lets
the DATA transactions in flight finish (their replies are sent), lets every worker finish the job it holds, and
closes the store. Trust bundles are refreshed in the background on their interval. :meth:`Node.reload` (``hisp
serve`` on SIGHUP) swaps in the trust anchors and bundles of a new configuration; everything else needs a restart.

Nothing here decides anything: the pipeline and the cores do. This module only wires (DESIGN.md section 2).

Spec: issue 5 ("``hisp serve``"); DESIGN.md sections 1-3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from hisp.adapters.bundles import RefreshOutcome, RefreshStatus
from hisp.adapters.discovery import SenderDiscovery, dns_from_config
from hisp.adapters.edge import EdgeDelivery
from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.adapters.smtp_relay import MxResolver, SmtpRelay, SmtpSession
from hisp.adapters.smtp_server import (
    EdgeUser,
    ListenerKind,
    ListenerSettings,
    SmtpEnvelope,
    SmtpListener,
    StaticAuthenticator,
    server_tls_context,
)
from hisp.adapters.storage import SqlStore, default_url
from hisp.adapters.truststores import TrustStores
from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import Config, ListenerConfig, RelayMode
from hisp.core.agent import SecurityAgent
from hisp.core.certs import Credential
from hisp.core.policy import RevocationMode
from hisp.core.smtp_policy import RecipientResult
from hisp.core.trust import StoreTrust
from hisp.errors import AddressError, ConfigError, HispError
from hisp.pipeline import NoticeSettings, Observer, Pipeline
from hisp.ports import DomainTrust

__all__ = ["ConfigHosting", "Node", "check_can_start", "log_bundle_outcomes", "utc_now"]

_log = logging.getLogger("hisp.app")

#: Seconds between checks for trust bundles due for a refresh.
BUNDLE_CHECK_INTERVAL = 60.0


def utc_now() -> datetime:
    """The current time, aware UTC (the one clock of a running node)."""
    return datetime.now(UTC)


class ConfigHosting:
    """:class:`hisp.ports.Hosting` from the configuration: our addresses, credentials, trust and endpoints.

    :param config: the configuration.
    :param environ: the environment (PKCS#12 and key passphrases).
    :param stores: the trust stores.
    :param revocation: the CRL/OCSP fetcher, or None when no domain checks revocation.
    :raises ConfigError: a credential cannot be loaded (the message names the key).

    Spec: AS-4 (every credential for the address tried), AS-21 (per-domain or per-address trust).
    """

    def __init__(
        self, config: Config, environ: Mapping[str, str], stores: TrustStores,
        revocation: BoundedFetcherBackend | None,
    ) -> None:
        self.config = config
        self.stores = stores
        self.revocation = revocation
        self._by_address: dict[DirectAddress, list[Credential]] = {}
        self._by_domain: dict[HealthDomain, list[Credential]] = {}
        for hosted in config.domains:
            for certificate in hosted.certificates:
                if certificate.key is None and not certificate.pkcs12:
                    continue  # published only: not ours to sign or decrypt with here
                credential = certificate.credential(environ)
                if certificate.address is not None:
                    self._by_address.setdefault(certificate.address, []).append(credential)
                else:
                    self._by_domain.setdefault(hosted.domain, []).append(credential)

    def is_hosted(self, address: DirectAddress) -> bool:
        """See :meth:`hisp.ports.Hosting.is_hosted`."""
        return self.config.is_hosted(address)

    def credentials(self, address: DirectAddress) -> Sequence[Credential]:
        """See :meth:`hisp.ports.Hosting.credentials`: address-bound first, then the domain-bound ones."""
        return (*self._by_address.get(address, ()), *self._by_domain.get(address.domain, ()))

    def trust(self, local: DirectAddress | HealthDomain) -> DomainTrust:
        """See :meth:`hisp.ports.Hosting.trust` (the store in force now: bundles may have been refreshed)."""
        return StoreTrust(self.stores.store_for(local), self.revocation)

    def endpoint(self, address: DirectAddress) -> str | None:
        """See :meth:`hisp.ports.Hosting.endpoint`."""
        endpoint = self.config.endpoint_for(address)
        return endpoint.url if endpoint is not None else None

    def accepts(self, normalized: str) -> bool:
        """The backbone's RCPT predicate: a hosted address (no open relay)."""
        try:
            return self.is_hosted(DirectAddress.parse(normalized))
        except AddressError:
            return False


class _Relay:
    """:class:`hisp.ports.Relay` over :class:`~hisp.adapters.smtp_relay.SmtpRelay`."""

    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay

    async def send(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> tuple[RecipientResult, ...]:
        return (await self.relay.relay(mail_from, recipients, raw)).results


def _listener_settings(
    kind: ListenerKind, listener: ListenerConfig, hostname: str, *, reuse_port: bool = False
) -> ListenerSettings:
    tls = None
    if listener.tls_cert is not None and listener.tls_key is not None:
        tls = server_tls_context(str(listener.tls_cert), str(listener.tls_key))
    return ListenerSettings(
        kind=kind, host=listener.host, port=listener.port, hostname=hostname, tls_context=tls,
        max_message_size=listener.max_message_size, max_recipients=listener.max_recipients,
        max_connections=listener.max_connections, command_timeout=listener.command_timeout, reuse_port=reuse_port,
    )


class Node:
    """One running HISP node: listeners, workers, and everything they need, built from the configuration.

    :param config: the configuration.
    :param environ: the environment (passphrases).
    :param workers: worker tasks (default ``[queue] workers``).
    :param observer: told about each step of each message (the demo prints them).
    :param clock: the current time (default :func:`utc_now`).
    :param reuse_port: bind the listeners with ``SO_REUSEPORT``: this node is one of several processes sharing its
        ports (``hisp serve --workers N``, N > 1; see :attr:`hisp.adapters.smtp_server.ListenerSettings.reuse_port`).
    :raises ConfigError: anything in the configuration that cannot be used (credentials, TLS files, DNS).

    Use ``await node.start()`` then ``await node.stop()``.

    Spec: issue 5 ("``hisp serve -c FILE`` runs the listeners and workers of one node until SIGTERM, then
    finishes in-flight transactions").
    """

    def __init__(
        self, config: Config, *, environ: Mapping[str, str], workers: int | None = None,
        observer: Observer | None = None, clock: Callable[[], datetime] = utc_now, reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.environ = environ
        self.workers = workers or config.queue.workers
        self.observer = observer
        self.clock = clock
        self.reuse_port = reuse_port
        self.name = config.node.name or socket.gethostname() or "hisp"
        self.store: SqlStore | None = None
        self.pipeline: Pipeline | None = None
        self.submission: SmtpListener | None = None
        self.backbone: SmtpListener | None = None
        self._stop = asyncio.Event()
        self._stores: TrustStores | None = None
        self._discovery: SenderDiscovery | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connections: tuple[SmtpRelay | EdgeDelivery, ...] = ()
        self._executor = ThreadPoolExecutor(max_workers=max(4, 2 * self.workers), thread_name_prefix="hisp-work")

    def _build(self) -> tuple[SqlStore, Pipeline, TrustStores]:
        """Everything blocking (migrations, files): run in a thread by :meth:`start`."""
        config = self.config
        now = self.clock()
        stores = TrustStores(config.trust, now=now)
        checks = any(config.trust.for_domain(d.domain).revocation is not RevocationMode.OFF for d in config.domains)
        revocation = BoundedFetcherBackend() if checks or config.trust.revocation is not RevocationMode.OFF else None
        hosting = ConfigHosting(config, self.environ, stores, revocation)
        agent = SecurityAgent(policy=config.trust.policy, limits=config.limits.mime)
        discovery = SenderDiscovery(
            config.discovery, dns=dns_from_config(config.discovery, config.relay.dns_server),
            trust_for=hosting.trust, policy=agent.policy,
        )
        relay_config = config.relay
        session = SmtpSession(
            local_hostname=config.node.hostname, require_tls=relay_config.require_tls, timeout=relay_config.timeout
        )
        smarthost = relay_config.smarthost if relay_config.mode is RelayMode.SMARTHOST else None
        relay = SmtpRelay(
            resolver=MxResolver(relay_config.dns_server, timeout=min(relay_config.timeout, 10.0)),
            smarthost=smarthost, port=relay_config.port, session=session,
        )
        edge = EdgeDelivery(
            session=SmtpSession(local_hostname=config.node.hostname, timeout=relay_config.timeout),
            local_hostname=config.node.hostname, timeout=relay_config.timeout,
        )
        url = config.storage.url or default_url(config.path.parent)
        store = SqlStore.open(url, spool_dir=config.storage.spool_dir)
        pipeline = Pipeline(
            store=store, queue=store, audit=store, agent=agent, hosting=hosting,
            certificates=discovery, relay=_Relay(relay), edge=edge, node=self.name,
            clock=self.clock, schedule=config.queue.retry, lease_seconds=config.queue.lease,
            executor=self._executor, observer=self.observer, tracking=store,
            notices=NoticeSettings(
                hostname=config.node.hostname, send_mdn=config.notifications.send_mdn,
                timeout=timedelta(seconds=config.notifications.timeout),
                consume_processed=config.notifications.consume_processed,
            ),
        )
        self._hosting = hosting
        self._discovery = discovery
        self._connections = (relay, edge)
        return store, pipeline, stores

    async def start(self) -> None:
        """Open the store, start the listeners and the workers.

        :raises ConfigError: the configuration cannot be used.
        :raises StorageError: the database cannot be opened or migrated.
        :raises OSError: a listener's address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        store, pipeline, stores = await loop.run_in_executor(self._executor, self._build)
        self.store, self.pipeline, self._stores = store, pipeline, stores
        hostname = self.config.node.hostname

        async def submitted(envelope: SmtpEnvelope, raw: bytes) -> str:
            peer = f"{envelope.peer[0]}:{envelope.peer[1]}" if envelope.peer else ""
            return await pipeline.accept_outgoing(
                envelope.mail_from, envelope.recipients, raw, remote=peer, user=envelope.auth_user
            )

        async def received(envelope: SmtpEnvelope, raw: bytes) -> str:
            peer = f"{envelope.peer[0]}:{envelope.peer[1]}" if envelope.peer else ""
            return await pipeline.accept_incoming(envelope.mail_from, envelope.recipients, raw, remote=peer)

        listeners = self.config.listeners
        try:
            if listeners.submission is not None:
                users = [EdgeUser.create(u.name, u.password_hash, [str(a) for a in u.addresses])
                         for u in self.config.users]
                self.submission = SmtpListener(
                    _listener_settings(
                        ListenerKind.SUBMISSION, listeners.submission, hostname, reuse_port=self.reuse_port
                    ),
                    submitted,
                    authenticator=StaticAuthenticator(users),
                )
                await self.submission.start()
            if listeners.backbone is not None:
                self.backbone = SmtpListener(
                    _listener_settings(
                        ListenerKind.BACKBONE, listeners.backbone, hostname, reuse_port=self.reuse_port
                    ),
                    received,
                    is_hosted=self._hosting.accepts,
                )
                await self.backbone.start()
        except BaseException:
            await self.stop()
            raise
        self._tasks.append(asyncio.create_task(
            pipeline.run_workers(self._stop, workers=self.workers, poll_interval=self.config.queue.poll_interval)
        ))
        self._tasks.append(asyncio.create_task(
            pipeline.run_timeouts(self._stop, interval=self.config.notifications.scan_interval)
        ))
        self._tasks.append(asyncio.create_task(self._refresh_bundles()))

    async def _refresh_bundles(self) -> None:
        """Refresh the trust bundles that are due: once at start (a bundle never fetched is due), then every
        :data:`BUNDLE_CHECK_INTERVAL` seconds; each outcome other than "unchanged" is logged (TB-3)."""
        first = True
        while not self._stop.is_set():
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), BUNDLE_CHECK_INTERVAL)
                if self._stop.is_set():
                    return
            first = False
            stores = self._stores  # the one in force: a reload may have replaced it
            if stores is None or not stores.refreshers:
                continue
            try:
                outcomes = await asyncio.get_running_loop().run_in_executor(
                    self._executor, stores.refresh, self.clock()
                )
            except HispError as exc:
                _log.error("trust bundle refresh: %s", exc.message)
                continue
            log_bundle_outcomes(outcomes)

    async def reload(self, config: Config) -> list[str]:
        """Apply what can change safely while running: the trust anchors and bundles (files read again, bundles
        restored from their cache and refreshed when due), per-domain revocation modes and policies of the
        trust stores. Messages in flight finish with the stores they started with; new ones use the new ones.

        Nothing is changed when this raises: the node keeps running on its current configuration.

        :param config: the new configuration, already loaded (validated) by :func:`hisp.config.load_config`.
        :returns: the parts that changed but need a restart to take effect (``"listeners"``, ...), for a warning.
        :raises ConfigError: an anchor or bundle-signer file cannot be loaded.
        :raises HispError: the node is not running.

        Spec: issue 5 ("``hisp serve``"); deploy/hisp.service ``ExecReload=`` (SIGHUP).
        """
        if self.pipeline is None or self._stop.is_set():
            raise HispError("the node is not running")
        now = self.clock()

        def build() -> TrustStores:
            stores = TrustStores(config.trust, now=now)
            log_bundle_outcomes(stores.refresh(now))  # bundles due now (never fetched, or stale in the cache)
            return stores

        stores = await asyncio.get_running_loop().run_in_executor(self._executor, build)
        hosting = self._hosting
        if hosting.revocation is None and (
            config.trust.revocation is not RevocationMode.OFF
            or any(config.trust.for_domain(d.domain).revocation is not RevocationMode.OFF for d in self.config.domains)
        ):
            hosting.revocation = BoundedFetcherBackend()
        hosting.stores = stores  # one assignment: readers see the old stores or the new ones, never a mix
        if self._discovery is not None:  # verdicts made with the old anchors must not be served (AS-20)
            self._discovery.reload(config.discovery)
        self._stores = stores
        old = self.config
        restart = [
            name for name in ("node", "domains", "users", "listeners", "relay", "storage", "queue", "limits")
            if getattr(old, name) != getattr(config, name)
        ]
        if old.trust.policy != config.trust.policy:
            restart.append("trust policy")
        return restart

    async def stop(self, grace: float = 30.0) -> None:
        """Stop listening, finish the DATA transactions in flight, let workers end their jobs, close the store.

        :param grace: seconds to wait for transactions in flight and for the workers.
        """
        for listener in (self.submission, self.backbone):
            if listener is not None:
                await listener.close(grace)
        self._stop.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:  # their claims come back to the queue when the lease ends
                task.cancel()
            self._tasks.clear()
        for pool in self._connections:  # idle SMTP connections kept for reuse: QUIT now, not when they time out
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:  # a peer that does not answer QUIT must not hold up the stop
                _log.debug("closing idle SMTP connections failed", exc_info=True)
        self._connections = ()
        if self.store is not None:
            self.store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def ports(self) -> dict[str, int]:
        """The ports listened on, by listener name."""
        out = {}
        if self.submission is not None:
            out["submission"] = self.submission.port
        if self.backbone is not None:
            out["backbone"] = self.backbone.port
        return out


def log_bundle_outcomes(outcomes: Mapping[str, RefreshOutcome]) -> None:
    """Log what a bundle refresh did: updated (INFO), kept the last good bundle (WARNING), or failed with no
    good bundle ever (ERROR: that bundle's anchors are not in force, so its community's messages are refused).

    :param outcomes: from :meth:`hisp.adapters.truststores.TrustStores.refresh`, by bundle name.

    Spec: TB-3 (keep the last good bundle; the operator must see a failing refresh).
    """
    for name, outcome in outcomes.items():
        if outcome.status is RefreshStatus.UPDATED:
            _log.info("trust bundle %s: updated", name)
        elif outcome.status is RefreshStatus.KEPT_LAST_GOOD and outcome.bundle is None:
            _log.error("trust bundle %s: not available (%s); its anchors are not in force", name, outcome.reason)
        elif outcome.status is RefreshStatus.KEPT_LAST_GOOD:
            _log.warning("trust bundle %s: refresh failed (%s); the last good bundle stays in force", name,
                         outcome.reason)


def check_can_start(config: Config) -> None:
    """Refuse a configuration that could never do anything: no listener at all.

    :raises ConfigError: neither listener is configured.
    """
    if config.listeners.submission is None and config.listeners.backbone is None:
        raise ConfigError(f"{config.path}: configure [listeners.submission] and/or [listeners.backbone]")

