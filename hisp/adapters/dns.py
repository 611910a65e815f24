"""DNS for certificate discovery: CERT, SRV and A/AAAA queries with dnspython's async resolver.

:class:`DnsClient` asks one configured server (``host``, ``port``) or the system's resolvers
(``/etc/resolv.conf``). It turns answers into the pure core's :class:`~hisp.core.discovery.DnsAnswer` and
failures into the error tree:

* NXDOMAIN and NODATA are answers (RFC 2308), never errors;
* SERVFAIL, REFUSED, timeouts and unreachable servers raise :class:`~hisp.errors.DiscoveryUnavailable`
  (transient: retry later);
* an answer that cannot be parsed raises :class:`~hisp.errors.InputError` at once (the server's data is
  wrong and will stay wrong until someone fixes it). A UDP datagram that does not parse is not believed by
  itself (anyone can send one to our port): the question is asked again over TCP, and the TCP answer is
  final, so a malformed answer ends in two messages and milliseconds, not after the resolver's lifetime
  (dnspython's own UDP path drops such datagrams and waits for a better one until the timeout).

Truncated UDP answers are retried over TCP by the resolver (CD-5, DCDT D14); every DNS message sent is
counted, and the transport of the final answer recorded, through a counting name-server wrapper. With
``require_dnssec`` the queries carry the AD bit (RFC 6840 section 5.7) and the answers' AD bit is
recorded (the plan refuses CERT and SRV answers without it); the A/AAAA answers for SRV targets must carry it
too, or :meth:`DnsClient.addresses` refuses the target. Use it only with a validating resolver you reach
over a trusted path (a stub cannot check the AD bit itself: RFC 4035 section 4.9.3).

Bounds: the resolver's ``lifetime`` caps the time of one query, retries and TCP fallback included; a DNS
message is at most 65535 bytes (RFC 1035 section 4.2.2); the records used per answer are capped by the
plan (:class:`~hisp.core.discovery.DiscoveryLimits`) and here (:attr:`DnsClient.max_records`); at most
:attr:`DnsClient.max_addresses` addresses are returned per host.
"""

from __future__ import annotations

import contextvars
import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.asyncbackend
import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from hisp.core.discovery import DnsAnswer, DnsStatus, SrvRecord
from hisp.errors import ConfigError, DiscoveryUnavailable, InputError

__all__ = ["DEFAULT_LIFETIME", "DEFAULT_TIMEOUT", "AddressAnswer", "DnsClient", "parse_server"]

#: Seconds one server gets to answer one message (dnspython ``Resolver.timeout``).
DEFAULT_TIMEOUT = 2.0
#: Seconds one query may take in all, retries and TCP fallback included (dnspython ``Resolver.lifetime``).
DEFAULT_LIFETIME = 5.0


@dataclass
class _Counter:
    messages: int = 0
    tcp: bool = False


_COUNTER: contextvars.ContextVar[_Counter | None] = contextvars.ContextVar("hisp_dns_counter", default=None)


class _CountingNameserver(dns.nameserver.Do53Nameserver):
    """A plain DNS (port 53 style) server that counts the messages sent to it in the current task.

    Over UDP a response that does not parse is not dropped (dnspython's default, which then waits out the
    timeout): the question is asked again over TCP, whose answer (or parse error) is final.
    """

    async def async_query(
        self,
        request: dns.message.QueryMessage,
        timeout: float,
        source: str | None,
        source_port: int,
        max_size: bool,
        backend: dns.asyncbackend.Backend,
        one_rr_per_rrset: bool = False,
        ignore_trailing: bool = False,
    ) -> dns.message.Message:
        counter = _COUNTER.get()
        if counter is not None:
            counter.messages += 1
            counter.tcp = bool(max_size)
        if max_size:
            return await super().async_query(
                request, timeout, source, source_port, max_size, backend, one_rr_per_rrset, ignore_trailing
            )
        try:
            return await dns.asyncquery.udp(
                request, self.address, timeout=timeout, port=self.port, source=source, source_port=source_port,
                raise_on_truncation=True, backend=backend, one_rr_per_rrset=one_rr_per_rrset,
                ignore_trailing=ignore_trailing, ignore_errors=False, ignore_unexpected=True,
            )
        except (dns.exception.Timeout, dns.message.Truncated, OSError):
            raise  # the resolver retries, or falls back to TCP after a truncated answer (CD-5)
        except Exception:  # dnspython raises FormError, EOFError, ValueError ... for a message that does not parse
            # a datagram that does not parse may be anyone's: ask over TCP, whose answer is final either way
            if counter is not None:
                counter.messages += 1
                counter.tcp = True
            return await dns.asyncquery.tcp(
                request, self.address, timeout=timeout, port=self.port, source=source, source_port=source_port,
                backend=backend, one_rr_per_rrset=one_rr_per_rrset, ignore_trailing=ignore_trailing,
            )


@dataclass(frozen=True)
class AddressAnswer:
    """The addresses of a host, and how many DNS messages it took.

    :ivar addresses: the IP addresses.
    :ivar messages: DNS messages sent.
    :ivar authenticated: whether the answer carried the AD bit (None: an IP literal, nothing asked).

    Spec: RFC 1035 (A), RFC 3596 (AAAA); RFC 4035 section 3.2.3 (AD).
    """

    addresses: tuple[str, ...]
    messages: int
    authenticated: bool | None = None


def parse_server(text: str) -> tuple[str, int]:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address into (host, port).

    :param text: the option value, e.g. ``"127.0.0.1:5353"``.
    :returns: (host, port); port 53 when absent.
    :raises ConfigError: an empty host or a port outside 1..65535.

    Spec: RFC 3986 section 3.2.2 (bracketed IPv6 literals).
    """
    value = text.strip()
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
        elif rest:
            raise ConfigError(f"not HOST[:PORT]: {text!r}")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    if not host:
        raise ConfigError(f"no host in {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"not a port number in {text!r}: {port!r}")
    return host, int(port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_parse_error(error: Any) -> bool:
    return isinstance(error, dns.exception.FormError | dns.message.ShortHeader | dns.message.TrailingJunk | EOFError)


class DnsClient:
    """Asks DNS for CERT, SRV and address records on behalf of discovery.

    :param server: ``(ip, port)`` of the one server to ask; None uses the system's resolvers.
    :param timeout: seconds per message.
    :param lifetime: seconds per query, retries and TCP fallback included.
    :param require_dnssec: send the AD bit and expect it back (recorded in each answer).
    :param max_records: records kept per answer (more are dropped here, before decoding).
    :param max_addresses: addresses kept per host name.
    :raises ConfigError: ``server`` is not an IP address, or a bound is not positive.

    Spec: RFC 1035 sections 4.1 and 4.2 (UDP, TC, TCP); RFC 2308; RFC 4398; RFC 2782; CD-5.
    """

    def __init__(
        self,
        server: tuple[str, int] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        lifetime: float = DEFAULT_LIFETIME,
        require_dnssec: bool = False,
        max_records: int = 64,
        max_addresses: int = 4,
    ) -> None:
        if timeout <= 0 or lifetime <= 0 or max_records < 1 or max_addresses < 1:
            raise ConfigError("DNS timeout, lifetime, max_records and max_addresses must be positive")
        if server is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                raise ConfigError(f"cannot read the system resolver configuration: {exc}") from None
            names = [getattr(ns, "address", ns) for ns in resolver.nameservers]
            resolver.nameservers = [_CountingNameserver(str(ns), resolver.port) for ns in names]
        else:
            host, port = server
            if not _is_ip(host):
                raise ConfigError(f"DNS server must be an IP address, not {host!r}")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [_CountingNameserver(host, port)]
        resolver.timeout = timeout
        resolver.lifetime = lifetime
        resolver.cache = None  # discovery caches whole results, for the TTLs the answers carry
        resolver.search = []
        resolver.use_search_by_default = False
        if require_dnssec:
            resolver.flags = dns.flags.RD | dns.flags.AD
        self.server = server
        self.timeout = timeout
        self.lifetime = lifetime
        self.require_dnssec = require_dnssec
        self.max_records = max_records
        self.max_addresses = max_addresses
        self._resolver = resolver

    def describe(self) -> str:
        """``"127.0.0.1:5353"`` or ``"system resolver"``."""
        return "system resolver" if self.server is None else f"{self.server[0]}:{self.server[1]}"

    async def _resolve(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[DnsAnswer, Any]:
        counter = _Counter()
        token = _COUNTER.set(counter)
        label = f"{dns.rdatatype.to_text(rdtype)} {name}"
        try:
            try:
                answer = await self._resolver.resolve(
                    dns.name.from_text(name), rdtype, raise_on_no_answer=False, search=False
                )
            except dns.resolver.NXDOMAIN as exc:
                responses = list(exc.responses().values())
                authenticated = bool(responses and responses[-1].flags & dns.flags.AD)
                return DnsAnswer(
                    DnsStatus.NXDOMAIN, authenticated=authenticated,
                    transport="tcp" if counter.tcp else "udp", messages=counter.messages,
                ), None
            except dns.resolver.NoNameservers as exc:
                errors = exc.kwargs.get("errors", [])
                malformed = [error[3] for error in errors if _is_parse_error(error[3])]
                if malformed:
                    raise InputError(
                        f"{label}: malformed answer from {self.describe()}: {_short(malformed[-1])}",
                        name=name, messages=counter.messages,
                    ) from None
                raise DiscoveryUnavailable(
                    f"{label}: no server answered ({_short(exc)})", name=name, messages=counter.messages
                ) from None
            except dns.exception.Timeout:
                raise DiscoveryUnavailable(
                    f"{label}: no answer from {self.describe()} within {self._resolver.lifetime:g} s",
                    name=name, messages=counter.messages,
                ) from None
            except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel) as exc:
                raise InputError(f"{label}: not a valid DNS name: {exc}", name=name) from None
            except dns.exception.DNSException as exc:
                raise DiscoveryUnavailable(f"{label}: {_short(exc)}", name=name, messages=counter.messages) from None
        finally:
            _COUNTER.reset(token)
        authenticated = bool(answer.response.flags & dns.flags.AD)
        transport = "tcp" if counter.tcp else "udp"
        if answer.rrset is None:
            return DnsAnswer(
                DnsStatus.NODATA, authenticated=authenticated, transport=transport, messages=counter.messages
            ), None
        return DnsAnswer(
            DnsStatus.ANSWER, ttl=int(answer.rrset.ttl), authenticated=authenticated,
            transport=transport, messages=counter.messages,
        ), answer.rrset

    async def cert(self, name: str) -> DnsAnswer:
        """The CERT records at ``name``, as raw RDATA for :func:`~hisp.core.discovery.decode_cert_rdata`.

        :param name: the absolute owner name, e.g. ``"d1.domain1.example."``.
        :returns: the answer (NXDOMAIN and NODATA included).
        :raises DiscoveryUnavailable: SERVFAIL, REFUSED, timeout, unreachable server (transient).
        :raises InputError: a malformed answer or an invalid name.

        Spec: RFC 4398 section 2; RFC 1035 section 4.2 (TC and TCP, CD-5); RFC 2308.
        """
        answer, rrset = await self._resolve(name, dns.rdatatype.CERT)
        if rrset is None:
            return answer
        rdata = tuple(rd.to_wire() for rd in list(rrset)[: self.max_records])
        return DnsAnswer(
            answer.status, rdata=rdata, ttl=answer.ttl, authenticated=answer.authenticated,
            transport=answer.transport, messages=answer.messages,
        )

    async def srv(self, name: str) -> DnsAnswer:
        """The SRV records at ``name`` (``_ldap._tcp.<domain>.``).

        :param name: the absolute owner name.
        :returns: the answer; ``srv`` holds the records as received (ordering is the plan's job).
        :raises DiscoveryUnavailable: SERVFAIL, REFUSED, timeout, unreachable server (transient).
        :raises InputError: a malformed answer or an invalid name.

        Spec: RFC 2782; CD-6.
        """
        answer, rrset = await self._resolve(name, dns.rdatatype.SRV)
        if rrset is None:
            return answer
        records = tuple(
            SrvRecord(int(rd.priority), int(rd.weight), int(rd.port), rd.target.to_text().lower())
            for rd in list(rrset)[: self.max_records]
        )
        return DnsAnswer(
            answer.status, srv=records, ttl=answer.ttl, authenticated=answer.authenticated,
            transport=answer.transport, messages=answer.messages,
        )

    async def addresses(self, host: str) -> AddressAnswer:
        """The IP addresses of ``host``: A records, or AAAA records when there is no A record.

        An IP literal is returned as is, without a query.

        :param host: a host name (an SRV target) or an IP address.
        :returns: at most :attr:`max_addresses` addresses and the messages spent.
        With :attr:`require_dnssec`, an answer (address, NXDOMAIN or NODATA) without the AD bit is refused: an
        unauthenticated address would let a forged A record redirect the LDAP search that the authenticated
        SRV record pointed to.

        :raises DiscoveryUnavailable: SERVFAIL, timeout ... (transient).
        :raises InputError: the name does not exist or has no address, the answer is malformed, or DNSSEC is
            required and the answer is not authenticated (context ``dnssec=True``).

        Spec: RFC 1035 (A); RFC 3596 (AAAA); RFC 2782 (the target must have an address record); RFC 4035
        section 3.2.3 (AD).
        """
        if _is_ip(host.rstrip(".")):
            return AddressAnswer((host.rstrip("."),), 0)
        name = host if host.endswith(".") else host + "."
        messages = 0
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer, rrset = await self._resolve(name, rdtype)
            messages += answer.messages
            if self.require_dnssec and not answer.authenticated:
                kind = dns.rdatatype.to_text(rdtype)
                if answer.status is not DnsStatus.ANSWER:
                    kind += f" ({answer.status.value})"
                raise InputError(
                    f"{host}: DNSSEC required: the {kind} answer is not authenticated (AD bit clear)",
                    host=host, messages=messages, dnssec=True,
                )
            if answer.status is DnsStatus.NXDOMAIN:
                raise InputError(f"{host}: no such host name (NXDOMAIN)", host=host, messages=messages)
            if rrset is not None:
                found = tuple(rd.address for rd in list(rrset)[: self.max_addresses])
                return AddressAnswer(found, messages, answer.authenticated)
        raise InputError(f"{host}: no A or AAAA record", host=host, messages=messages)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
