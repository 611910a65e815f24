"""A scriptable, hostile DNS server on loopback (UDP and TCP on one port), for testing DNS clients.

BIND will not serve what a hostile or broken server sends (SERVFAIL on demand, CERT RDATA too short to hold
its header, a 64 KB TXT flood in the answer to a CERT question, the AD bit on unsigned data), so the tests of
:class:`hisp.adapters.dns.DnsClient` that need such answers use this: :func:`run_hostile_dns` calls a
*handler* with each query it receives (parsed by dnspython) and the transport (``"udp"`` or ``"tcp"``), and
sends back the bytes the handler returns, as they are, without any size check (a UDP datagram may be up to
65507 bytes on loopback; a TCP message up to 65535, RFC 1035 section 4.2.2). ``None`` sends nothing.

Ready-made handlers and wire builders: :func:`servfail`, :func:`answer` (records in any section, any flags),
:func:`malformed_cert` (a CERT record whose RDATA is shorter than its fixed header, RFC 4398 section 2),
:func:`txt_flood` (about ``size`` bytes of TXT records) and :func:`truncated` (the TC bit, nothing else).

Every query received is recorded in :attr:`HostileDns.queries` and every reply's size in
:attr:`HostileDns.sent`. Threads: one for UDP, one per TCP connection (at most 16), all daemons, all stopped
when the ``with`` block ends.

Never expose it beyond loopback: it exists for tests.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from hisp.testing.process import HarnessError, free_port

__all__ = [
    "Handler",
    "HostileDns",
    "Query",
    "answer",
    "malformed_cert",
    "run_hostile_dns",
    "servfail",
    "truncated",
    "txt_flood",
]

#: Longest DNS message over TCP (RFC 1035 section 4.2.2: a 16-bit length prefix).
MAX_TCP_MESSAGE = 65535
#: Longest UDP payload over IPv4 (65535 minus the IP and UDP headers).
MAX_UDP_PAYLOAD = 65507
#: TCP connections served at once; more are closed at once.
MAX_TCP_CLIENTS = 16


@dataclass(frozen=True)
class Query:
    """One query the server received.

    :ivar transport: ``"udp"`` or ``"tcp"``.
    :ivar name: the question's name, absolute, as text.
    :ivar rdtype: the question's type as text (``"CERT"``).
    """

    transport: str
    name: str
    rdtype: str


#: ``(query, transport) -> reply bytes`` (None: no reply). Raising drops the query.
Handler = Callable[[dns.message.Message, str], bytes | None]


@dataclass
class HostileDns:
    """The running server: where it listens and what it saw.

    :ivar host: ``"127.0.0.1"``.
    :ivar port: the UDP and TCP port.
    :ivar queries: every query received, in order.
    :ivar sent: the size in bytes of every reply sent, in order.
    """

    host: str
    port: int
    queries: list[Query] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, as :class:`hisp.adapters.dns.DnsClient` takes it."""
        return self.host, self.port


def _question(query: dns.message.Message) -> tuple[str, str]:
    if not query.question:
        return "", ""
    rrset = query.question[0]
    return rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)


def servfail(query: dns.message.Message, transport: str = "udp") -> bytes:
    """A SERVFAIL response to ``query`` (RFC 1035 section 4.1.1, RCODE 2).

    :param query: the query.
    :param transport: unused (any transport).
    :returns: the wire bytes.
    """
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


def truncated(query: dns.message.Message, transport: str = "udp") -> bytes:
    """An empty response with the TC bit: the client must ask again over TCP (RFC 1035 section 4.2.1).

    :param query: the query.
    :param transport: unused.
    :returns: the wire bytes.
    """
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    return response.to_wire()


def answer(
    query: dns.message.Message,
    *,
    answers: Sequence[dns.rrset.RRset] = (),
    additional: Sequence[dns.rrset.RRset] = (),
    authenticated: bool = False,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
) -> bytes:
    """A response carrying the given records, whatever the question asked, with no size limit.

    :param query: the query.
    :param answers: RRsets for the answer section.
    :param additional: RRsets for the additional section.
    :param authenticated: set the AD bit (RFC 4035 section 3.2.3), which this server never earned.
    :param rcode: the response code.
    :returns: the wire bytes (up to 65535).
    """
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    response.answer.extend(answers)
    response.additional.extend(additional)
    if authenticated:
        response.flags |= dns.flags.AD
    return response.to_wire(max_size=MAX_TCP_MESSAGE)


def malformed_cert(query: dns.message.Message, transport: str = "udp", *, rdata: bytes = b"\x00\x01\x00") -> bytes:
    """A NOERROR response whose one answer is a CERT record with ``rdata`` as its RDATA, unchecked.

    The default, 3 bytes, is shorter than CERT's fixed header (type u16, key tag u16, algorithm u8: RFC 4398
    section 2), so no DNS library can parse the message.

    :param query: the query (its question's name is the record's owner, by compression pointer).
    :param transport: unused.
    :param rdata: the RDATA bytes.
    :returns: the wire bytes.
    """
    wire = bytearray(dns.message.make_response(query).to_wire())
    struct.pack_into("!H", wire, 6, 1)  # ANCOUNT = 1
    # owner = pointer to the question's name at offset 12; type CERT (37), class IN, TTL 60
    wire += b"\xc0\x0c" + struct.pack("!HHIH", 37, 1, 60, len(rdata)) + rdata
    return bytes(wire)


def txt_flood(name: str, size: int = 63 * 1024, *, ttl: int = 60) -> dns.rrset.RRset:
    """TXT records at ``name`` of about ``size`` bytes on the wire (each record one 250-byte string).

    :param name: the absolute owner name.
    :param size: the wire size to reach, in bytes (each record takes about 263).
    :param ttl: seconds.
    :returns: the RRset.
    """
    count = max(1, size // 263)
    strings = [f'"{n:05d}{"x" * 245}"' for n in range(count)]
    return dns.rrset.from_text(name, ttl, "IN", "TXT", *strings)


def _serve_udp(server: HostileDns, sock: socket.socket, handler: Handler, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(65535)
        except (TimeoutError, OSError):
            continue
        try:
            query = dns.message.from_wire(data)
        except Exception:  # a hostile server ignores what it cannot parse
            continue
        server.queries.append(Query("udp", *_question(query)))
        try:
            reply = handler(query, "udp")
        except Exception:
            continue
        if reply is not None:
            server.sent.append(min(len(reply), MAX_UDP_PAYLOAD))
            with contextlib.suppress(OSError):
                sock.sendto(reply[:MAX_UDP_PAYLOAD], peer)


def _read_exactly(connection: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _serve_tcp_client(server: HostileDns, connection: socket.socket, handler: Handler, stop: threading.Event) -> None:
    with connection:
        connection.settimeout(2.0)
        while not stop.is_set():
            try:
                head = _read_exactly(connection, 2)
                if head is None:
                    return
                data = _read_exactly(connection, struct.unpack("!H", head)[0])
                if data is None:
                    return
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                return
            server.queries.append(Query("tcp", *_question(query)))
            try:
                reply = handler(query, "tcp")
            except Exception:
                return
            if reply is None:
                continue
            reply = reply[:MAX_TCP_MESSAGE]
            server.sent.append(len(reply))
            try:
                connection.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return


def _serve_tcp(server: HostileDns, listener: socket.socket, handler: Handler, stop: threading.Event) -> None:
    clients: list[threading.Thread] = []
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except (TimeoutError, OSError):
            continue
        clients = [t for t in clients if t.is_alive()]
        if len(clients) >= MAX_TCP_CLIENTS:
            connection.close()
            continue
        thread = threading.Thread(
            target=_serve_tcp_client, args=(server, connection, handler, stop), name="hostile-dns-tcp", daemon=True
        )
        thread.start()
        clients.append(thread)


@contextmanager
def run_hostile_dns(handler: Handler) -> Iterator[HostileDns]:
    """Serve ``handler``'s replies on ``127.0.0.1`` (UDP and TCP, one free port) for the ``with`` block.

    :param handler: ``(query, transport) -> bytes | None``; see the module notes and the ready-made handlers.
    :returns: a context manager yielding the :class:`HostileDns`.
    :raises HarnessError: no port free for both UDP and TCP could be bound.

    Spec: RFC 1035 section 4.2 (UDP and TCP, 2-byte length prefix over TCP).
    """
    host = "127.0.0.1"
    for _attempt in range(5):
        port = free_port(udp=True, host=host)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
        except OSError:
            udp.close()
            listener.close()
            continue
        break
    else:
        raise HarnessError("no port free for both UDP and TCP on loopback")
    listener.listen(MAX_TCP_CLIENTS)
    udp.settimeout(0.05)
    listener.settimeout(0.05)
    stop = threading.Event()
    server = HostileDns(host, port)
    threads = [
        threading.Thread(target=_serve_udp, args=(server, udp, handler, stop), name="hostile-dns-udp", daemon=True),
        threading.Thread(target=_serve_tcp, args=(server, listener, handler, stop), name="hostile-dns-tcp",
                         daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield server
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=2)
        udp.close()
        listener.close()
