"""Our own DNS responder (:class:`hisp.adapters.dns_server.DnsServer`) on loopback, in a background thread.

:func:`run_responder` serves :class:`~hisp.core.publish.Zones` on ``127.0.0.1`` with a free port (UDP and
TCP) from an asyncio event loop in a daemon thread, and always stops it when the ``with`` block ends. Tests
query it with ``dig`` (:func:`hisp.testing.bind.run_dig`) or dnspython (:func:`hisp.testing.bind.dns_query`),
exactly as they query the BIND harness.

Never expose it beyond loopback: it exists for tests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hisp.adapters.dns_server import DnsServer
from hisp.core.publish import Zones

__all__ = ["RunningResponder", "run_responder"]


class RunningResponder:
    """The responder's address and its server (read :attr:`server.counts <DnsServer.counts>`).

    :ivar host: ``"127.0.0.1"``.
    :ivar port: the UDP and TCP port.
    :ivar server: the :class:`~hisp.adapters.dns_server.DnsServer`.
    """

    def __init__(self, server: DnsServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.host = server.host
        self.port = server.port
        self._loop = loop

    def set_zones(self, zones: Zones) -> None:
        """Serve other zones from now on (the next query sees them)."""
        self._loop.call_soon_threadsafe(setattr, self.server, "zones", zones)


@contextmanager
def run_responder(zones: Zones, **options: Any) -> Iterator[RunningResponder]:
    """Run a :class:`DnsServer` for ``zones`` on loopback for the ``with`` block; always stopped afterwards.

    :param zones: what to answer.
    :param options: passed to :class:`DnsServer` (``tcp_idle_timeout=``, ``max_tcp_clients=``...).
    :returns: a context manager yielding the :class:`RunningResponder`.
    :raises OSError: the server cannot bind.

    Spec: RFC 1035 section 4.2 (UDP and TCP on one port).
    """
    loop = asyncio.new_event_loop()
    server = DnsServer(zones, "127.0.0.1", 0, **options)
    ready = threading.Event()
    failure: list[BaseException] = []
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            await server.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        await stop.wait()
        await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="hisp-dns-responder", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        if failure:
            raise failure[0]
        yield RunningResponder(server, loop)
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
