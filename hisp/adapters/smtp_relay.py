"""Relay to peer HISPs on aiosmtplib: MX lookup (dnspython), STARTTLS, per-recipient results.

:class:`SmtpRelay` sends the exact bytes it is given (a sealed Direct message, CRLF line endings; only
dot-stuffing and the end-of-data line are added, see :func:`dot_stuffed`) to the mail exchangers of the
recipients' domain, or to a configured smarthost:

- MX lookup with :class:`MxResolver` (a configured DNS server, or the system's); no MX record -> the domain's
  own A/AAAA records (implicit MX); a null MX or a domain that does not exist -> permanent; DNS failures ->
  transient (RFC 5321 section 5.1, RFC 7505). MX, A and AAAA answers (NODATA included) are cached for their TTL
  (RFC 1035 section 3.2.1; RFC 2308 for NODATA), at most :attr:`MxResolver.max_ttl`; failures and NXDOMAIN are
  never cached, and the order among equal preferences is drawn again for every message.
- hosts tried in preference order (random among equal preferences); a host that cannot be reached, times out,
  refuses the session (4xx/5xx greeting, EHLO or MAIL... before any RCPT reply) or lacks required TLS is
  skipped for the next one.
- STARTTLS whenever offered (RFC 3207); with ``require_tls`` a host that does not offer it is not sent to in
  clear (transient: retried later, perhaps at another MX). Certificates are not verified unless a verifying
  ``tls_context`` is given (opportunistic TLS, RFC 7435; Direct's security is the S/MIME layer).
- per recipient: 2xx delivered; 4xx, connection failure, timeout -> :class:`~hisp.errors.TransientDeliveryError`;
  5xx -> :class:`~hisp.errors.PermanentDeliveryError`; both carry the server's reply text.

Spec: RFC 5321 sections 3.3, 4.2, 4.5.3.2 (timeouts) and 5.1; RFC 3207; RFC 7505; RFC 1870 (SIZE); AS-17.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from hisp.core.smtp_policy import (
    DeliveryOutcome,
    MxHost,
    RecipientResult,
    classify_reply,
    normalize_mailbox,
    order_mx,
)
from hisp.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError

__all__ = ["MxResolver", "MxRoute", "RelayResult", "SmtpRelay", "SmtpSession", "client_tls_context", "dot_stuffed"]

_log = logging.getLogger("hisp.relay")


@functools.cache
def _opportunistic_context() -> ssl.SSLContext:
    """One shared unverified client context: building one loads the system CA store (~20 ms) for nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def client_tls_context(*, verify: bool = False, cafile: str | None = None) -> ssl.SSLContext:
    """A client TLS context for STARTTLS: TLS 1.2 or later; certificates verified only when asked.

    :param verify: verify the server's certificate and name (against ``cafile`` or the system's CAs).
    :param cafile: PEM file of CA certificates to trust when verifying.
    :returns: the context.
    :raises ConfigError: ``cafile`` cannot be read.

    Spec: RFC 3207 section 4.1; RFC 7435 (opportunistic security); RFC 8996.
    """
    if not verify:
        return _opportunistic_context()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if cafile is not None:
            try:
                context.load_verify_locations(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load CA file {cafile}: {exc}") from None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class MxRoute:
    """A host to connect to: its name (for TLS SNI and reports), its addresses and the port.

    Spec: RFC 5321 section 5.1.
    """

    host: MxHost
    addresses: tuple[str, ...]
    port: int


class MxResolver:
    """MX and address lookups with dnspython's async resolver, answers cached for their TTL.

    Every answer (records, or NODATA) is kept until its TTL runs out (dnspython's ``Answer.expiration``: the
    smallest TTL of the answer's chain, or the SOA negative TTL for NODATA), at most ``max_ttl`` seconds; the
    least recently used goes first beyond ``cache_size`` names. NXDOMAIN and failures are never cached.

    :param server: ``(ip, port)`` of the DNS server to ask; None uses the system's resolvers.
    :param timeout: seconds per DNS query (retries included).
    :param rng: random source for equal MX preferences (seeded in tests).
    :param max_ttl: the longest an answer is kept, in seconds; 0 turns the cache off.
    :param cache_size: most answers kept.
    :param clock: monotonic seconds (injected in tests).
    :raises ConfigError: ``server`` is not an IP address, the system configuration cannot be read, or
        ``max_ttl`` or ``cache_size`` is negative.

    Spec: RFC 5321 section 5.1; RFC 1035 (section 3.2.1: TTL); RFC 2308 (negative caching); RFC 3596; RFC 7505.
    """

    def __init__(
        self,
        server: tuple[str, int] | None = None,
        *,
        timeout: float = 10.0,
        rng: random.Random | None = None,
        max_ttl: float = 3600.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_ttl < 0 or cache_size < 0:
            raise ConfigError("the MX cache's max_ttl and cache_size must not be negative")
        self.max_ttl = max_ttl
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[tuple[str, int], tuple[float, tuple[object, ...]]] = OrderedDict()
        if server is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                raise ConfigError(f"cannot read the system resolver configuration: {exc}") from None
        else:
            try:
                ipaddress.ip_address(server[0])
            except ValueError:
                raise ConfigError(f"the relay's DNS server must be an IP address, not {server[0]!r}") from None
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [server[0]]
            resolver.port = server[1]
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 3.0)
        resolver.search = []
        resolver.use_search_by_default = False
        self._resolver = resolver
        self._rng = rng

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[object] | None:
        """Records of ``name`` (empty for NODATA), or None for NXDOMAIN; failures raise transient.

        From the cache while the answer's TTL runs (see the class).
        """
        key = (name.lower(), int(rdtype))
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if now < cached[0]:
                self._cache.move_to_end(key)
                return list(cached[1])
            del self._cache[key]
        try:
            answer = await self._resolver.resolve(
                dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise TransientDeliveryError(f"DNS {dns.rdatatype.to_text(rdtype)} {name}: {exc}", name=name) from None
        except dns.exception.DNSException as exc:
            raise TransientDeliveryError(f"DNS {dns.rdatatype.to_text(rdtype)} {name}: {exc}", name=name) from None
        records = tuple(answer.rrset) if answer.rrset is not None else ()
        ttl = min(self.max_ttl, answer.expiration - time.time())
        if ttl > 0 and self.cache_size > 0:
            self._cache[key] = (self._clock() + ttl, records)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return list(records)

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    async def addresses(self, host: str) -> tuple[str, ...]:
        """The IPv4 then IPv6 addresses of ``host`` (an IP literal is returned as is).

        :param host: a host name.
        :returns: the addresses; empty when there is none.
        :raises TransientDeliveryError: DNS failed.
        """
        try:
            return (str(ipaddress.ip_address(host)),)
        except ValueError:
            pass
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            records = await self._query(host + ".", rdtype)
            if records is None:
                return ()
            found.extend(str(getattr(rd, "address", "")) for rd in records)
        return tuple(a for a in found if a)

    async def routes(self, domain: str, port: int = 25) -> tuple[MxRoute, ...]:
        """The hosts to try for ``domain`` with their addresses, in order.

        Hosts without an address are left out (a lame MX); the caller tries the rest.

        :param domain: the recipient domain.
        :param port: the SMTP port of every host.
        :returns: the routes, at least one.
        :raises PermanentDeliveryError: the domain does not exist, publishes a null MX, or has no usable host.
        :raises TransientDeliveryError: DNS failed.

        Spec: RFC 5321 section 5.1 (MX, implicit MX); RFC 7505 (null MX).
        """
        records = await self._query(domain.rstrip(".") + ".", dns.rdatatype.MX)
        if records is None:
            raise PermanentDeliveryError(f"{domain}: no such domain (NXDOMAIN)", domain=domain, status="5.1.2")
        mx = [(int(getattr(rd, "preference", 0)), str(getattr(rd, "exchange", ""))) for rd in records]
        hosts = order_mx(domain, [(pref, "" if name == "." else name) for pref, name in mx], rng=self._rng)
        routes: list[MxRoute] = []
        for host in hosts:
            addresses = await self.addresses(host.name)
            if addresses:
                routes.append(MxRoute(host, addresses, port))
        if not routes:
            raise PermanentDeliveryError(
                f"{domain}: no mail exchanger with an address", domain=domain, status="5.1.2"
            )
        return tuple(routes)


@dataclass(frozen=True)
class RelayResult:
    """The outcome of one relay call.

    :ivar results: one per recipient, in the order given.
    :ivar attempts: for each host tried, ``"name[address]:port: what happened"``.

    Spec: RFC 5321 section 4.2.1; RFC 3464 (the DSN reports per recipient).
    """

    results: tuple[RecipientResult, ...]
    attempts: tuple[str, ...] = ()

    @property
    def delivered(self) -> tuple[str, ...]:
        """Recipients delivered."""
        return tuple(r.recipient for r in self.results if r.outcome is DeliveryOutcome.DELIVERED)

    @property
    def transient(self) -> tuple[RecipientResult, ...]:
        """Recipients to retry."""
        return tuple(r for r in self.results if r.outcome is DeliveryOutcome.TRANSIENT)

    @property
    def permanent(self) -> tuple[RecipientResult, ...]:
        """Recipients to bounce."""
        return tuple(r for r in self.results if r.outcome is DeliveryOutcome.PERMANENT)


def _error(code: int, text: str, *, recipient: str, host: str) -> TransientDeliveryError | PermanentDeliveryError:
    outcome = classify_reply(code)
    cls = TransientDeliveryError if outcome is DeliveryOutcome.TRANSIENT else PermanentDeliveryError
    return cls(f"{host} said: {code} {text}", recipient=recipient, host=host, code=code, reply=f"{code} {text}")


class _SessionFailure(Exception):
    """The session with one host failed before any recipient was answered."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass
class _Idle:
    """A connection waiting in the pool: its client, the event loop it belongs to, transactions done so far, and
    the timer that closes it when nobody took it."""

    client: aiosmtplib.SMTP
    loop: asyncio.AbstractEventLoop
    uses: int
    timer: asyncio.TimerHandle | None = None


class _Pool:
    """Idle SMTP connections by ``(address, port, server name)``; see :class:`SmtpSession` (``reuse_idle``)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int, str], list[_Idle]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: tuple[str, int, str], loop: asyncio.AbstractEventLoop) -> _Idle | None:
        """The most recently used live connection to ``key`` of this event loop, taken out of the pool."""
        entries = self._idle.get(key)
        while entries:
            entry = entries.pop()
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.loop is loop and entry.client.is_connected:
                return entry
            if entry.loop is loop:
                entry.client.close()
        return None

    def put(self, key: tuple[str, int, str], entry: _Idle, idle: float, most: int) -> bool:
        """Keep ``entry`` for ``idle`` seconds (then QUIT); False when ``most`` already wait for ``key``."""
        entries = self._idle.setdefault(key, [])
        if len(entries) >= most:
            return False
        entry.timer = entry.loop.call_later(idle, self._expire, key, entry)
        entries.append(entry)
        return True

    def _expire(self, key: tuple[str, int, str], entry: _Idle) -> None:
        entries = self._idle.get(key, [])
        if entry in entries:
            entries.remove(entry)
            task = entry.loop.create_task(_quit(entry.client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """QUIT every idle connection of the running event loop (the others are dropped)."""
        loop = asyncio.get_running_loop()
        entries = [entry for pool in self._idle.values() for entry in pool]
        self._idle.clear()
        quits = []
        for entry in entries:
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.loop is loop:
                quits.append(_quit(entry.client))
        await asyncio.gather(*quits, *self._closing, return_exceptions=True)


def dot_stuffed(raw: bytes) -> bytes | None:
    """The DATA payload of a message whose line endings are all CRLF: a dot added before every line that starts
    with one, a CRLF at the end if missing, and the end-of-data line; ``None`` for a message with a bare CR or LF.

    The bytes are those aiosmtplib's ``SMTP.data`` sends (it first rewrites every line ending to CRLF, then
    stuffs dots, with two regular expressions: about 34 ms per 1.4 MB), made with ``bytes.replace`` (about 1 ms):
    our sealed messages are CRLF-canonical, so only the stuffing is left to do.

    :param raw: the message.
    :returns: what follows the ``354`` reply, or None (then ``SMTP.data`` must normalise it).

    Spec: RFC 5321 sections 4.1.1.4 and 4.5.2 (transparency).
    """
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        return None  # a bare CR or LF: aiosmtplib's rewriting applies
    payload = raw.replace(b"\r\n.", b"\r\n..")
    if payload.startswith(b"."):
        payload = b"." + payload
    return payload + (b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n")


async def _send_data(client: aiosmtplib.SMTP, raw: bytes) -> aiosmtplib.SMTPResponse:
    """DATA as ``client.data(raw)`` does it (the same replies, errors and bytes on the wire), with the payload
    made by :func:`dot_stuffed` when it can.

    :raises aiosmtplib.SMTPDataError: DATA or the data refused (not 354, then not 250).
    :raises aiosmtplib.SMTPServerDisconnected: the connection was lost (the client is closed).
    :raises aiosmtplib.SMTPTimeoutError: no reply in time (the client is closed).
    """
    payload = dot_stuffed(raw)
    protocol = client.protocol
    if payload is None or protocol is None:
        return await client.data(raw)
    start = await client.execute_command(b"DATA")  # closes the client itself when the connection fails
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    try:
        protocol.write(payload)
        response = await protocol.read_response(timeout=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if response.code != 250:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _quit(client: aiosmtplib.SMTP, timeout: float = 5.0) -> None:
    """QUIT politely when still connected; close the transport in any case."""
    try:
        if client.is_connected:
            await client.quit(timeout=timeout)
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError):
        pass
    finally:
        client.close()


@dataclass(frozen=True)
class SmtpSession:
    """How to talk to one SMTP server (shared by the relay and edge delivery).

    Connections are reused (RFC 5321 section 3.3: several transactions in one session): after a transaction
    that ended cleanly (the reply to DATA received, or RSET answered), the connection waits ``reuse_idle``
    seconds for the next message to the same address, port and server name, then is closed with QUIT. A
    connection is never reused after an error, after ``reuse_limit`` transactions, nor from another event loop;
    at most ``max_idle`` wait per server. When a reused connection fails before any recipient was answered (the
    server closed it, timed out, or refused MAIL), the message goes on a fresh connection at once: nothing was
    accepted on the old one, so nothing is sent twice. ``reuse_idle = 0`` opens one connection per message.

    :ivar local_hostname: our EHLO name.
    :ivar require_tls: never send in clear: a server that does not offer STARTTLS is refused.
    :ivar use_tls: use STARTTLS when the server offers it.
    :ivar tls_context: the client TLS context (see :func:`client_tls_context`).
    :ivar timeout: seconds for the connection and for each command's reply (the DATA reply included).
    :ivar reuse_idle: seconds an idle connection is kept for the next message (0: never reused).
    :ivar reuse_limit: transactions per connection at most.
    :ivar max_idle: idle connections kept per server at most.

    Spec: RFC 5321 sections 3.3, 4.1.1.5 (RSET), 4.5.3.2; RFC 3207.
    """

    local_hostname: str = "localhost"
    require_tls: bool = False
    use_tls: bool = True
    tls_context: ssl.SSLContext | None = None
    timeout: float = 60.0
    reuse_idle: float = 10.0
    reuse_limit: int = 100
    max_idle: int = 8
    _pool: _Pool = field(default_factory=_Pool, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError("SMTP client timeout must be positive")
        if self.require_tls and not self.use_tls:
            raise ConfigError("require_tls needs use_tls")
        if self.reuse_idle < 0 or self.reuse_limit < 1 or self.max_idle < 0:
            raise ConfigError("SMTP connection reuse: reuse_idle and max_idle >= 0, reuse_limit >= 1")

    async def close(self) -> None:
        """QUIT the idle connections (e.g. at shutdown); later messages open new ones."""
        await self._pool.close()

    async def send(
        self,
        address: str,
        port: int,
        server_name: str,
        mail_from: str,
        recipients: Sequence[str],
        raw: bytes,
    ) -> tuple[RecipientResult, ...]:
        """One SMTP transaction: per-recipient results; a session-level failure raises ``_SessionFailure``.

        On an idle connection to the same server when there is one (see the class), else on a new one.

        :param address: IP address (or host) to connect to.
        :param port: the port.
        :param server_name: the host's name (TLS SNI, reports).
        :param mail_from: reverse-path (``""`` for the null one).
        :param recipients: forward-paths.
        :param raw: the message, CRLF line endings.
        :returns: one result per recipient.
        :raises _SessionFailure: nothing was answered per recipient (connect, greeting, EHLO, TLS, MAIL).
        """
        label = f"{server_name}[{address}]:{port}"
        key = (address, port, server_name)
        loop = asyncio.get_running_loop()
        if self.reuse_idle > 0:
            entry = self._pool.take(key, loop)
            if entry is not None:
                try:
                    await self._mail(entry.client, label, mail_from, raw)
                except _SessionFailure as failure:
                    _log.debug("%s: reused connection failed at MAIL (%s); opening a new one", label, failure.reason)
                    await _quit(entry.client, min(self.timeout, 5.0))
                else:
                    return await self._transaction(entry, key, label, recipients, raw)
        client = aiosmtplib.SMTP(
            hostname=address, port=port, local_hostname=self.local_hostname, timeout=self.timeout,
            start_tls=False, use_tls=False,
        )
        try:
            await self._open(client, label, server_name)
            await self._mail(client, label, mail_from, raw)
        except BaseException:
            await _quit(client, min(self.timeout, 5.0))
            raise
        return await self._transaction(_Idle(client, loop, 0), key, label, recipients, raw)

    async def _open(self, client: aiosmtplib.SMTP, label: str, server_name: str) -> None:
        """Connect, EHLO, STARTTLS when offered (required with ``require_tls``), EHLO again."""
        try:
            await client.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise _SessionFailure(f"{label}: greeting {exc.code} {exc.message}", exc.code) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _SessionFailure(f"{label}: cannot connect: {exc}") from None
        try:
            await client.ehlo()
            if self.use_tls and client.supports_extension("starttls"):
                context = self.tls_context or client_tls_context()
                await client.starttls(server_hostname=server_name, tls_context=context)
                await client.ehlo()
            elif self.require_tls:
                raise _SessionFailure(f"{label}: TLS is required but the server does not offer STARTTLS")
        except aiosmtplib.SMTPResponseException as exc:
            raise _SessionFailure(f"{label}: {exc.code} {exc.message}", exc.code) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise _SessionFailure(f"{label}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    async def _mail(client: aiosmtplib.SMTP, label: str, mail_from: str, raw: bytes) -> None:
        """MAIL FROM with SIZE and BODY=8BITMIME as the server supports them."""
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(raw)}")
        if client.supports_extension("8bitmime") and not raw.isascii():
            options.append("BODY=8BITMIME")
        try:
            await client.mail(mail_from, options=options)
        except aiosmtplib.SMTPResponseException as exc:
            raise _SessionFailure(f"{label}: {exc.code} {exc.message}", exc.code) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise _SessionFailure(f"{label}: {type(exc).__name__}: {exc}") from None

    async def _transaction(
        self, entry: _Idle, key: tuple[str, int, str], label: str, recipients: Sequence[str], raw: bytes
    ) -> tuple[RecipientResult, ...]:
        """RCPT and DATA after a successful MAIL; then the connection goes back to the pool or is closed."""
        client = entry.client
        kept = False
        try:
            results, clean = await self._recipients_and_data(client, label, recipients, raw)
            entry.uses += 1
            if clean and self.reuse_idle > 0 and entry.uses < self.reuse_limit and client.is_connected:
                kept = self._pool.put(key, entry, self.reuse_idle, self.max_idle)
            return results
        finally:
            if not kept:
                await _quit(client, min(self.timeout, 5.0))

    async def _recipients_and_data(
        self, client: aiosmtplib.SMTP, label: str, recipients: Sequence[str], raw: bytes
    ) -> tuple[tuple[RecipientResult, ...], bool]:
        """RCPT for each recipient, DATA when one was accepted (else RSET): the per-recipient results, and
        whether the session ended clean (the transaction answered or reset), so that it may be reused."""
        results: dict[str, RecipientResult] = {}
        accepted: list[str] = []
        clean = False
        try:
            for rcpt in recipients:
                try:
                    await client.rcpt(rcpt)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    results[rcpt] = RecipientResult(
                        rcpt, _error(exc.code, exc.message, recipient=rcpt, host=label), f"{exc.code} {exc.message}",
                        label,
                    )
            if accepted:
                try:
                    response = await _send_data(client, raw)
                    reply = f"{response.code} {response.message}"
                    for rcpt in accepted:
                        results[rcpt] = RecipientResult(rcpt, None, reply, label)
                    clean = True
                except aiosmtplib.SMTPResponseException as exc:
                    for rcpt in accepted:
                        results[rcpt] = RecipientResult(
                            rcpt, _error(exc.code, exc.message, recipient=rcpt, host=label),
                            f"{exc.code} {exc.message}", label,
                        )
                    # Refused at DATA or after the data: reset whatever transaction state the server kept.
                    await client.rset()
                    clean = True
            else:
                await client.rset()
                clean = True
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            # Lost or timed out mid-transaction: whatever has no final answer is transient (RFC 5321 section 6.1:
            # a lost DATA reply may mean a duplicate later, never a loss).
            text = f"{label}: {type(exc).__name__}: {exc}"
            for rcpt in recipients:
                if rcpt not in results:
                    results[rcpt] = RecipientResult(rcpt, TransientDeliveryError(text, recipient=rcpt), text, label)
            clean = False
        return tuple(results[r] for r in recipients), clean


class SmtpRelay:
    """Relays sealed messages to peer HISPs.

    :param resolver: the MX resolver (None: the system's resolvers); not used with a smarthost.
    :param smarthost: ``(host, port)`` to send everything to instead of the MX hosts.
    :param port: the SMTP port of MX hosts (25; tests use a loopback port).
    :param session: how to talk SMTP (TLS, timeouts, EHLO name).
    :param max_hosts: MX hosts tried per domain and call.

    Spec: RFC 5321 section 5.1; RFC 3207; AS-17 (the sealed bytes leave unchanged).
    """

    def __init__(
        self,
        *,
        resolver: MxResolver | None = None,
        smarthost: tuple[str, int] | None = None,
        port: int = 25,
        session: SmtpSession | None = None,
        max_hosts: int = 5,
    ) -> None:
        if max_hosts < 1:
            raise ConfigError("relay: max_hosts must be at least 1")
        self._resolver = resolver
        self.smarthost = smarthost
        self.port = port
        self.session = session or SmtpSession()
        self.max_hosts = max_hosts

    async def close(self) -> None:
        """QUIT the idle connections kept for reuse (see :class:`SmtpSession`), e.g. when the node stops."""
        await self.session.close()

    async def _routes(self, domain: str) -> tuple[MxRoute, ...]:
        if self.smarthost is not None:
            host, port = self.smarthost
            if self._resolver is None:
                addresses: tuple[str, ...] = (host,)
            else:
                addresses = await self._resolver.addresses(host) or (host,)
            return (MxRoute(MxHost(host, 0), addresses, port),)
        if self._resolver is None:
            self._resolver = MxResolver()
        return await self._resolver.routes(domain, self.port)

    async def relay(self, mail_from: str, recipients: Sequence[str], raw: bytes) -> RelayResult:
        """Send ``raw`` to ``recipients`` (any domains; one session per domain and host).

        :param mail_from: the reverse-path (``""`` for the null one, e.g. a DSN).
        :param recipients: the forward-paths.
        :param raw: the sealed message, CRLF line endings, exactly as it is to arrive.
        :returns: one result per recipient (delivered, transient or permanent, with the reply text).
        :raises ValueError: no recipients.

        Spec: RFC 5321 sections 3.3, 4.2.1, 5.1; RFC 3207; RFC 7505.
        """
        if not recipients:
            raise ValueError("relay needs at least one recipient")
        by_domain: dict[str, list[str]] = {}
        for rcpt in recipients:
            by_domain.setdefault(normalize_mailbox(rcpt).rpartition("@")[2], []).append(rcpt)
        results: dict[str, RecipientResult] = {}
        attempts: list[str] = []
        for domain, rcpts in by_domain.items():
            for result in await self._relay_domain(domain, mail_from, rcpts, raw, attempts):
                results[result.recipient] = result
        return RelayResult(tuple(results[r] for r in recipients), tuple(attempts))

    async def _relay_domain(
        self, domain: str, mail_from: str, recipients: list[str], raw: bytes, attempts: list[str]
    ) -> tuple[RecipientResult, ...]:
        try:
            routes = await self._routes(domain)
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            attempts.append(f"{domain}: {exc.message}")
            return tuple(RecipientResult(r, exc, exc.message) for r in recipients)
        last: TransientDeliveryError | PermanentDeliveryError | None = None
        tried = 0
        for route in routes:
            for address in route.addresses:
                if tried >= self.max_hosts:
                    break
                tried += 1
                try:
                    results = await self.session.send(
                        address, route.port, route.host.name, mail_from, recipients, raw
                    )
                except _SessionFailure as failure:
                    attempts.append(failure.reason)
                    _log.info("relay to %s: %s", domain, failure.reason)
                    if failure.code is not None and classify_reply(failure.code) is DeliveryOutcome.PERMANENT:
                        last = PermanentDeliveryError(failure.reason, domain=domain, code=failure.code)
                        # RFC 5321 section 4.2.1: 5yz is permanent; another MX of the same domain would say so too.
                        return tuple(RecipientResult(r, last, failure.reason) for r in recipients)
                    last = TransientDeliveryError(failure.reason, domain=domain)
                    continue
                attempts.append(f"{route.host.name}[{address}]:{route.port}: session completed")
                return results
        if last is None:
            last = TransientDeliveryError(f"{domain}: no mail exchanger could be tried", domain=domain)
        return tuple(RecipientResult(r, last, last.message) for r in recipients)
