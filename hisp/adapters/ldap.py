"""LDAP for certificate discovery with ldap3: one search of one SRV target (CD-6, CD-7).

:class:`LdapClient` answers the pure plan's :class:`~hisp.core.discovery.LdapQuery`: resolve the SRV target's
address through the :class:`~hisp.adapters.dns.DnsClient` (so ``--dns-server`` applies to it too), connect,
bind anonymously, read the rootDSE ``namingContexts``, and search each naming context's subtree for
``(mail=<address or domain>)``, reading ``userCertificate;binary``, ``userCertificate`` and
``userSMIMECertificate``. Values are returned raw; decoding (and calling garbage a defect) is the core's job.

A :class:`LdapSession` keeps the connections and naming contexts of one discovery, so that the address-bound
and domain-bound searches of the same server cost one connect, one bind and one rootDSE read, and the
addresses of each SRV target name, so that servers sharing a host name on several ports (DCDT's LDAP1-3)
cost one address query. Moving on to the next target after a failure is the plan's decision: every failure
here raises, naming its stage.

ldap3 is synchronous; each operation runs in a worker thread (``asyncio.to_thread``) and is bounded by the
connect timeout, the receive timeout (bind, rootDSE, search) and the server-side time and size limits of the
search (RFC 4511 section 4.5.1.4, 4.5.1.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars

from hisp.adapters.dns import AddressAnswer, DnsClient
from hisp.core.discovery import LDAP_ATTRIBUTES, LdapAnswer, LdapEntry, SrvRecord
from hisp.errors import ConfigError, DiscoveryUnavailable, HispError

__all__ = ["LdapClient", "LdapSession", "LdapSettings"]


@dataclass(frozen=True)
class LdapSettings:
    """Time and size bounds of LDAP discovery.

    :ivar connect_timeout: seconds to establish the TCP connection.
    :ivar receive_timeout: seconds to wait for any one response (bind, rootDSE, search).
    :ivar time_limit: server-side time limit of a search, seconds (RFC 4511 section 4.5.1.5).
    :ivar size_limit: most entries a search returns (RFC 4511 section 4.5.1.4); one address has one entry.
    :ivar max_base_dns: naming contexts searched per server.
    :ivar max_value_bytes: largest certificate attribute value kept (bytes); larger ones become defects.
    :ivar max_values: certificate values kept per entry.

    Spec: CD-6, CD-7; RFC 4511.
    """

    connect_timeout: float = 3.0
    receive_timeout: float = 5.0
    time_limit: int = 5
    size_limit: int = 16
    max_base_dns: int = 8
    max_value_bytes: int = 64 * 1024
    max_values: int = 16

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.receive_timeout) <= 0:
            raise ConfigError("LDAP timeouts must be positive")
        if min(self.time_limit, self.size_limit, self.max_base_dns, self.max_value_bytes, self.max_values) < 1:
            raise ConfigError("LDAP limits must be at least 1")


@dataclass
class _Bound:
    connection: ldap3.Connection
    server: str
    base_dns: tuple[str, ...]
    defects: tuple[str, ...]


class _StageError(Exception):
    def __init__(self, stage: str, reason: str, transient: bool = True) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.transient = transient


def _entries(response: Any) -> list[dict[str, Any]]:
    return [item for item in (response or []) if item.get("type") == "searchResEntry"]


class LdapClient:
    """Searches LDAP servers named by SRV records for certificates.

    :param dns: resolves SRV targets to addresses.
    :param settings: the bounds.

    Spec: CD-6, CD-7; RFC 4511 (LDAP), RFC 4523 (userCertificate), RFC 2798 section 9.1.2.
    """

    def __init__(self, dns: DnsClient, settings: LdapSettings | None = None) -> None:
        self.dns = dns
        self.settings = settings or LdapSettings()

    def session(self) -> LdapSession:
        """A session for one discovery (use ``async with``; connections are closed at the end).

        :returns: the session.
        """
        return LdapSession(self)


class LdapSession:
    """The LDAP connections of one discovery: one per SRV target, reused by both LDAP tiers.

    Spec: CD-7.
    """

    def __init__(self, client: LdapClient) -> None:
        self._client = client
        self._bound: dict[tuple[str, int], _Bound] = {}
        # SRV targets often share a host on several ports (DCDT's LDAP1-3): resolve each name once per session
        self._addresses: dict[str, AddressAnswer] = {}

    async def __aenter__(self) -> LdapSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unbind every connection of the session (errors ignored)."""
        bound, self._bound = list(self._bound.values()), {}
        for item in bound:
            await asyncio.to_thread(_unbind, item.connection)

    async def search(self, target: SrvRecord, mail: str) -> LdapAnswer:
        """Search ``target`` for entries with ``mail=<mail>`` and return their certificate values.

        :param target: the SRV record (its own port is used, CD-6).
        :param mail: the address (address-bound tier) or domain (domain-bound tier).
        :returns: the entries found (possibly none).
        :raises DiscoveryUnavailable: the target cannot be resolved, connected to, bound to or searched; the
            context's ``stage`` says which (``resolve``, ``connect``, ``bind``, ``rootdse``, ``search``) and
            ``transient`` whether it may heal by itself.

        Spec: CD-6 (each record's port), CD-7 (anonymous bind, namingContexts, subtree search, attributes).
        """
        settings = self._client.settings
        operations = 0
        key = (target.target, target.port)
        bound = self._bound.get(key)
        if bound is None:
            known = self._addresses.get(target.target)
            try:
                resolved = known or await self._client.dns.addresses(target.target)
            except HispError as exc:
                raise DiscoveryUnavailable(
                    exc.message, stage="resolve", transient=isinstance(exc, DiscoveryUnavailable),
                    messages=int(exc.context.get("messages", 1)),
                ) from None
            if known is None:
                self._addresses[target.target] = resolved
                operations += resolved.messages
            try:
                bound = await asyncio.to_thread(_connect, resolved.addresses, target.port, settings)
            except _StageError as exc:
                raise DiscoveryUnavailable(
                    f"{target.describe()}: {exc.reason}", stage=exc.stage, transient=exc.transient,
                    messages=operations + 1,
                ) from None
            operations += 2  # bind + rootDSE
            self._bound[key] = bound
        try:
            entries, defects, searches = await asyncio.to_thread(_search, bound, mail, settings)
        except _StageError as exc:
            self._bound.pop(key, None)
            await asyncio.to_thread(_unbind, bound.connection)
            raise DiscoveryUnavailable(
                f"{target.describe()}: {exc.reason}", stage=exc.stage, transient=exc.transient,
                messages=operations + 1,
            ) from None
        return LdapAnswer(
            server=bound.server, base_dns=bound.base_dns, entries=entries,
            operations=operations + searches, defects=bound.defects + defects,
        )


def _unbind(connection: ldap3.Connection) -> None:
    with contextlib.suppress(Exception):  # closing a connection that may already be dead
        connection.unbind()


def _connect(addresses: tuple[str, ...], port: int, settings: LdapSettings) -> _Bound:
    """Connect and bind anonymously to the first address that accepts, then read the naming contexts."""
    last = _StageError("connect", "no address")
    for address in addresses:
        server = ldap3.Server(
            address, port=port, get_info=ldap3.NONE, connect_timeout=settings.connect_timeout
        )
        connection = ldap3.Connection(
            # ldap3 packs the receive timeout into SO_RCVTIMEO as whole seconds
            server, read_only=True, receive_timeout=max(1, math.ceil(settings.receive_timeout)), raise_exceptions=False,
            auto_referrals=False, check_names=False,
        )
        label = f"{address}:{port}" if ":" not in address else f"[{address}]:{port}"
        try:
            connection.open()
        except Exception as exc:  # ldap3 raises LDAPException, OSError, struct.error ...
            last = _StageError("connect", f"cannot connect to {label}: {_short(exc)}")
            _unbind(connection)
            continue
        try:
            if not connection.bind():
                result = connection.result or {}
                last = _StageError(
                    "bind", f"anonymous bind to {label} refused: {result.get('description', 'unknown')}"
                )
                _unbind(connection)
                continue
        except Exception as exc:  # ldap3 raises LDAPException, OSError, struct.error ...
            last = _StageError("bind", f"anonymous bind to {label} failed: {_short(exc)}")
            _unbind(connection)
            continue
        try:
            base_dns, defects = _naming_contexts(connection, settings)
        except _StageError as exc:
            _unbind(connection)
            raise _StageError(exc.stage, f"{label}: {exc.reason}", exc.transient) from None
        return _Bound(connection, label, base_dns, defects)
    raise last


def _naming_contexts(connection: ldap3.Connection, settings: LdapSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        connection.search(
            "", "(objectClass=*)", search_scope=ldap3.BASE, attributes=["namingContexts"],
            size_limit=1, time_limit=settings.time_limit,
        )
    except Exception as exc:  # ldap3 raises LDAPException, OSError, struct.error ...
        raise _StageError("rootdse", f"reading the rootDSE failed: {_short(exc)}") from None
    contexts: list[str] = []
    for entry in _entries(connection.response):
        for value in entry.get("raw_attributes", {}).get("namingContexts", []):
            try:
                contexts.append(bytes(value).decode("utf-8"))
            except UnicodeDecodeError:
                continue
    defects: list[str] = []
    if len(contexts) > settings.max_base_dns:
        defects.append(f"{len(contexts)} naming contexts; only the first {settings.max_base_dns} are searched")
        contexts = contexts[: settings.max_base_dns]
    if not contexts:
        raise _StageError("rootdse", "the rootDSE lists no namingContexts", transient=False)
    return tuple(contexts), tuple(defects)


def _search(bound: _Bound, mail: str, settings: LdapSettings) -> tuple[tuple[LdapEntry, ...], tuple[str, ...], int]:
    connection = bound.connection
    search_filter = f"(mail={escape_filter_chars(mail)})"
    entries: list[LdapEntry] = []
    defects: list[str] = []
    searches = 0
    for base in bound.base_dns:
        searches += 1
        try:
            connection.search(
                base, search_filter, search_scope=ldap3.SUBTREE, attributes=list(LDAP_ATTRIBUTES),
                size_limit=settings.size_limit, time_limit=settings.time_limit,
            )
        except Exception as exc:  # ldap3 raises LDAPException, OSError, struct.error ...
            raise _StageError("search", f"search {search_filter} under {base} failed: {_short(exc)}") from None
        result = connection.result or {}
        code = result.get("result", 0)
        if code == 4:  # sizeLimitExceeded: the entries returned so far are still used
            defects.append(f"{base}: more than {settings.size_limit} entries match {search_filter}; the rest ignored")
        elif code == 3:  # timeLimitExceeded
            defects.append(f"{base}: search {search_filter} hit the time limit of {settings.time_limit} s")
        elif code not in (0, 32):  # 32 noSuchObject: the naming context is empty
            raise _StageError("search", f"search {search_filter} under {base}: {result.get('description', code)}")
        for item in _entries(connection.response)[: settings.size_limit]:
            values: list[tuple[str, bytes]] = []
            for attribute, raw in (item.get("raw_attributes") or {}).items():
                if attribute.lower() not in {a.lower() for a in LDAP_ATTRIBUTES}:
                    continue
                for value in raw or []:
                    if len(values) >= settings.max_values:
                        defects.append(f"{item.get('dn')}: more than {settings.max_values} certificate values")
                        break
                    data = bytes(value)
                    if len(data) > settings.max_value_bytes:
                        defects.append(f"{item.get('dn')} {attribute}: value of {len(data)} bytes ignored")
                        continue
                    values.append((attribute, data))
            entries.append(LdapEntry(str(item.get("dn", "")), tuple(values)))
    return tuple(entries), tuple(defects), searches


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."

