"""The authoritative DNS server of ``hisp dns serve``: asyncio UDP and TCP listeners on one port.

Thin: every query goes to :meth:`hisp.core.publish.Zones.answer`, which decides the answer (or to drop the
query); this module only moves bytes. Bounds, so that hostile traffic cannot exhaust the server:

- UDP: one datagram in, at most one datagram out, answered at once (no queue beyond the kernel's buffer);
  datagrams larger than :data:`hisp.core.publish.MAX_QUERY_BYTES` are dropped by the core.
- TCP (RFC 7766): at most :attr:`DnsServer.max_tcp_clients` connections at a time (more are closed at
  once), each idle for at most :attr:`DnsServer.tcp_idle_timeout` seconds between queries and sending
  at most :attr:`DnsServer.max_tcp_queries` queries; a length prefix over the query limit, or a query the
  core drops, closes the connection.

:attr:`DnsServer.counts` counts the outcomes (answered, nxdomain, truncated, dropped...).

Spec: RFC 1035 section 4.2 (UDP and TCP transport); RFC 7766 sections 6.1-6.2 (TCP connection handling).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import struct
from typing import Any, cast

from hisp.core.publish import MAX_QUERY_BYTES, Outcome, Zones

__all__ = ["DnsServer"]

_log = logging.getLogger("hisp.dns")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = self.server.answer(data, tcp=False)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors for earlier replies: nothing to do
        _log.debug("UDP error: %s", exc)


class DnsServer:
    """Serve :class:`~hisp.core.publish.Zones` over UDP and TCP on one address and port.

    :param zones: what to answer.
    :param host: the address to listen on (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``).
    :param port: the port; 0 picks a free one (the same for UDP and TCP), see :attr:`port`.
    :param tcp_idle_timeout: seconds a TCP connection may wait between queries (RFC 7766 section 6.2.3).
    :param max_tcp_clients: TCP connections served at a time.
    :param max_tcp_queries: queries answered on one TCP connection before it is closed.

    Spec: RFC 1035 section 4.2; RFC 7766.
    """

    def __init__(
        self,
        zones: Zones,
        host: str = "127.0.0.1",
        port: int = 53,
        *,
        tcp_idle_timeout: float = 10.0,
        max_tcp_clients: int = 64,
        max_tcp_queries: int = 1000,
    ) -> None:
        self.zones = zones
        self.host = host
        self.port = port
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_clients = max_tcp_clients
        self.max_tcp_queries = max_tcp_queries
        self.counts: collections.Counter[Outcome] = collections.Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """Answer one query (see :meth:`hisp.core.publish.Zones.answer`) and count the outcome.

        :param wire: the query.
        :param tcp: whether it came over TCP.
        :returns: the reply, or None to send nothing.
        """
        reply = self.zones.answer(wire, tcp=tcp)
        self.counts[reply.outcome] += 1
        return reply.wire

    async def start(self) -> None:
        """Bind UDP and TCP (the same port) and start answering.

        :raises OSError: the address cannot be bound (in use, not permitted).
        """
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for attempt in range(20):
            udp_sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp_sock.bind((self.host, self.port))
            except OSError:
                udp_sock.close()
                raise
            port = int(udp_sock.getsockname()[1])
            tcp_sock = socket.socket(family, socket.SOCK_STREAM)
            tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp_sock.bind((self.host, port))
            except OSError as exc:
                udp_sock.close()
                tcp_sock.close()
                if self.port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue  # the kernel's free UDP port is taken for TCP: pick another
                raise
            break
        self.port = port
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp_sock)
        self._udp = transport
        tcp_sock.listen(128)
        self._tcp = await asyncio.start_server(self._serve_tcp_client, sock=tcp_sock)

    async def close(self) -> None:
        """Stop listening and close every TCP connection."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def serve_forever(self) -> None:
        """Start (if needed) and answer until cancelled; then close.

        :raises OSError: as :meth:`start`.
        """
        if self._udp is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def _serve_tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.max_tcp_clients:
            self.counts[Outcome.DROPPED] += 1
            writer.close()
            return
        self._clients.add(task)
        try:
            for _ in range(self.max_tcp_queries):
                try:
                    prefix = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                    (length,) = struct.unpack("!H", prefix)
                    if not 12 <= length <= MAX_QUERY_BYTES:
                        self.counts[Outcome.DROPPED] += 1
                        return
                    query = await asyncio.wait_for(reader.readexactly(length), self.tcp_idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                reply = self.answer(query, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await asyncio.wait_for(writer.drain(), self.tcp_idle_timeout)
        except (TimeoutError, ConnectionError):
            return
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
