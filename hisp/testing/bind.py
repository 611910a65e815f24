"""A real BIND ``named`` on loopback, authoritative for zones a test gives as text.

:func:`run_named` writes a ``named.conf`` and one zone file per origin into a fresh temporary directory,
starts ``named -g`` (foreground, logging to the directory's ``server.log``) on ``127.0.0.1`` with a free high
port for UDP and TCP, waits until every zone answers its SOA, and always stops the server (SIGTERM, then
SIGKILL) and removes the directory when the ``with`` block ends. :class:`BindFactory` does the same for
pytest fixtures (``bind_factory`` in :mod:`hisp.testing.fixtures`).

The server: no recursion, no DNSSEC validation, no notify, no control channel (``controls { };``: reloads
are SIGHUP), pid file, session key and working directory in the temporary directory, IPv4 loopback only,
one worker thread. It runs as the current user (``-u`` is never passed; as root, named keeps root, which it
allows in the foreground): every file it touches is in a directory that user owns.

Zone text is a BIND master file for one origin. When it has no SOA at the origin the harness adds
``$TTL``, an SOA (serial = the load generation: 1, then 2 after the first :meth:`BindServer.reload`...) and
``NS localhost.`` (outside the zone, so named needs no glue). Every zone is checked with
``named-checkzone`` first, so a typo fails the test with named's own message.

Example::

    with run_named({"example.org": "d1 IN CERT PKIX 0 0 MIIB..."}) as server:
        answer = server.query("d1.example.org", "CERT", tcp=True)
        print(server.dig("d1.example.org", "CERT", "+short"))

Never expose it beyond loopback: it exists for tests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone

from hisp.testing.process import HarnessError, ManagedProcess, free_port, wait_until

__all__ = ["BindFactory", "BindServer", "HarnessError", "dns_query", "run_dig", "run_named", "start_named", "zone_text"]

#: Seconds to wait for named to start (or reload) and answer every zone's SOA.
START_TIMEOUT = 15.0
_NAMED = "named"
_CHECKZONE = "named-checkzone"
#: named's log line once it listens and has loaded its zones.
_RUNNING = re.compile(r" running$", re.MULTILINE)


def zone_text(origin: str, records: str = "", *, serial: int = 1, ttl: int = 300) -> str:
    """A complete zone: ``$ORIGIN``, ``$TTL``, an SOA, ``NS localhost.`` and then ``records``.

    :param origin: the zone's origin, e.g. ``"example.org"``.
    :param records: master-file lines relative to the origin.
    :param serial: the SOA serial.
    :param ttl: the default TTL in seconds (also the SOA minimum, i.e. the negative-caching TTL).
    :returns: the master-file text.

    Spec: RFC 1035 section 5 (master files); RFC 2308 section 4 (SOA minimum as negative TTL).
    """
    name = origin.rstrip(".") + "."
    return (
        f"$ORIGIN {name}\n$TTL {ttl}\n"
        f"@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 {ttl}\n"
        f"@ IN NS localhost.\n{records}\n"
    )


def _has_soa(origin: str, text: str) -> bool:
    try:
        zone = dns.zone.from_text(text, origin=origin, relativize=False, check_origin=False)
    except dns.exception.DNSException:
        return any(" SOA " in f" {line.upper()} " for line in text.splitlines())  # let named-checkzone judge
    node = zone.get_node(dns.name.from_text(origin))
    return node is not None and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA) is not None


def _file_name(origin: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-." else "_" for c in origin.rstrip(".").lower())
    return f"{cleaned or 'root'}.zone"


class BindServer:
    """A running ``named``: its address, its zones, queries and reloads.

    :ivar host: ``"127.0.0.1"``.
    :ivar port: the UDP and TCP port it answers on.
    :ivar directory: its temporary directory (config, zone files, ``server.log``).
    :ivar zones: origin (no trailing dot) -> the zone text as loaded (with any added SOA).

    Spec: RFC 1035 (DNS over UDP and TCP on one port).
    """

    def __init__(self, directory: Path, *, timeout: float = START_TIMEOUT) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.directory = directory
        self.zones: dict[str, str] = {}
        self.timeout = timeout
        self._process = ManagedProcess(directory)
        self._generation = 0

    # -- public --------------------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return self.host, self.port

    @property
    def pid(self) -> int | None:
        """The named process id (None once stopped)."""
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether named is running."""
        return self._process.running

    def log(self) -> str:
        """named's log so far."""
        return self._process.log()

    def query(
        self, name: str, rdtype: str | int, *, tcp: bool = False, payload: int | None = None, timeout: float = 2.0
    ) -> dns.message.Message:
        """Ask this server one question; see :func:`dns_query`.

        :raises dns.exception.Timeout: no answer in time.
        """
        return dns_query(self.host, self.port, name, rdtype, tcp=tcp, payload=payload, timeout=timeout)

    def resolver(self, *, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython stub resolver that asks only this server (TC answers are retried over TCP).

        :param timeout: the resolver's lifetime in seconds.
        :returns: the resolver.

        Spec: RFC 1035 section 4.2.
        """
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = timeout
        return resolver

    def dig(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``dig @127.0.0.1 -p PORT +time=2 +tries=1 ARGS...`` and return its standard output.

        :param args: dig's arguments, e.g. ``("d1.example.org", "CERT", "+tcp")``.
        :param timeout: seconds for the whole command.
        :returns: dig's output.
        :raises HarnessError: dig is missing or exits with an error (its stderr is in the message).

        Spec: RFC 1035 (dig is BIND's query tool).
        """
        return run_dig(self.host, self.port, *args, timeout=timeout)

    def reload(self, zones: Mapping[str, str] | None = None, *, timeout: float | None = None) -> None:
        """Replace the zones (all of them: origins left out are dropped) and wait until named serves them.

        :param zones: origin -> zone text; None reloads the current texts (re-adding SOAs with a new serial).
        :param timeout: seconds to wait; default :attr:`timeout`.
        :raises HarnessError: a zone does not load (named-checkzone's message), or named does not serve the new
            zones in time.

        Spec: RFC 1035 section 5 (master files); BIND 9 ARM (SIGHUP reloads configuration and zones).
        """
        before = self._process.log().count("all zones loaded")
        self._write(dict(self.zones) if zones is None else dict(zones))
        self._process.signal(signal.SIGHUP)
        wait = self.timeout if timeout is None else timeout
        if not wait_until(lambda: self._process.log().count("all zones loaded") > before, timeout=wait):
            raise HarnessError(f"named did not reload in {wait} s; log:\n{self._process.log_tail()}")
        self._wait_serving(wait)

    def stop(self) -> None:
        """Stop named and remove its directory (idempotent)."""
        self._process.stop()

    # -- internal ------------------------------------------------------------------------------------------

    def _write(self, zones: Mapping[str, str]) -> None:
        self._generation += 1
        texts: dict[str, str] = {}
        for origin, text in zones.items():
            key = origin.rstrip(".").lower()
            texts[key] = text if _has_soa(key + ".", text) else zone_text(key, text, serial=self._generation)
        for origin, text in texts.items():
            path = self.directory / _file_name(origin)
            path.write_text(text, "utf-8")
            # named reloads a zone on SIGHUP only when its file's mtime changed: push it forward each time
            stamp = time.time() + self._generation
            os.utime(path, (stamp, stamp))
            _checkzone(origin, path)
        self.zones = texts
        self._write_conf()

    def _write_conf(self) -> None:
        directory = str(self.directory)
        zones = "".join(
            f'zone "{origin}." {{ type primary; file "{_file_name(origin)}"; }};\n' for origin in sorted(self.zones)
        )
        (self.directory / "named.conf").write_text(
            "options {\n"
            f'  directory "{directory}";\n'
            f'  pid-file "{directory}/named.pid";\n'
            f'  session-keyfile "{directory}/session.key";\n'
            f'  managed-keys-directory "{directory}";\n'
            f"  listen-on port {self.port} {{ 127.0.0.1; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no;\n"
            "  allow-query { any; };\n"
            "  allow-transfer { none; };\n"
            "  dnssec-validation no;\n"
            "  notify no;\n"
            "};\n"
            "controls { };\n" + zones,
            "utf-8",
        )

    def _start(self, zones: Mapping[str, str]) -> None:
        last = ""
        for _attempt in range(3):
            self.port = free_port(udp=True)
            self._write(zones)
            self._process.start([_NAMED, "-g", "-4", "-n", "1", "-c", str(self.directory / "named.conf")])
            started = wait_until(
                lambda: not self._process.running or _RUNNING.search(self._process.log()) is not None,
                timeout=self.timeout,
            )
            if self._process.running and started:
                self._wait_serving(self.timeout)
                return
            last = self._process.log_tail()
            self._process.terminate()
            if "address in use" not in last.lower():
                break
        raise HarnessError(f"named did not start; log:\n{last}")

    def _wait_serving(self, timeout: float) -> None:
        for origin, text in self.zones.items():
            serial = _serial(origin, text)

            def serves(origin: str = origin, serial: int | None = serial) -> bool:
                response = self.query(origin + ".", "SOA", timeout=0.5)
                if response.rcode() != dns.rcode.NOERROR or not response.answer:
                    return False
                return serial is None or response.answer[0][0].serial == serial

            if not wait_until(serves, timeout=timeout):
                raise HarnessError(f"named does not serve {origin}; log:\n{self._process.log_tail()}")


def _serial(origin: str, text: str) -> int | None:
    try:
        zone = dns.zone.from_text(text, origin=origin + ".", relativize=False, check_origin=False)
        soa = zone.get_rdataset(origin + ".", "SOA")
    except dns.exception.DNSException:
        return None
    return int(soa[0].serial) if soa else None


def _checkzone(origin: str, path: Path) -> None:
    if shutil.which(_CHECKZONE) is None:
        return
    result = subprocess.run(
        [_CHECKZONE, "-q", origin + ".", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        checked = subprocess.run([_CHECKZONE, origin + ".", str(path)], capture_output=True, text=True, timeout=30)
        raise HarnessError(f"zone {origin} does not load:\n{checked.stdout}{checked.stderr}")


def dns_query(
    host: str,
    port: int,
    name: str,
    rdtype: str | int,
    *,
    tcp: bool = False,
    payload: int | None = None,
    timeout: float = 2.0,
) -> dns.message.Message:
    """Ask any server one non-recursive question (dnspython), without following a truncated answer to TCP.

    :param host: the server address.
    :param port: its port.
    :param name: the owner name.
    :param rdtype: the type, e.g. ``"CERT"`` or ``37``.
    :param tcp: ask over TCP instead of UDP.
    :param payload: EDNS0 UDP payload size in bytes to advertise; None sends no OPT record (512 bytes).
    :param timeout: seconds.
    :returns: the response (check ``flags & dns.flags.TC`` and ``rcode()``).
    :raises dns.exception.Timeout: no answer in time.

    Spec: RFC 1035 section 4.2 (UDP 512 bytes, TC, TCP); RFC 6891 (EDNS0 payload size).
    """
    kind = dns.rdatatype.RdataType.make(rdtype)
    request = dns.message.make_query(name, kind, use_edns=payload is not None, payload=payload or 512)
    request.flags &= ~dns.flags.RD
    if tcp:
        return dns.query.tcp(request, host, port=port, timeout=timeout)
    return dns.query.udp(request, host, port=port, timeout=timeout, ignore_trailing=True)


def run_dig(host: str, port: int, *args: str, timeout: float = 10.0) -> str:
    """Run ``dig @HOST -p PORT +time=2 +tries=1 ARGS...`` against any server and return its output.

    :param host: the server address.
    :param port: its port.
    :param args: dig's arguments.
    :param timeout: seconds for the whole command.
    :returns: dig's standard output.
    :raises HarnessError: dig is missing, times out, or exits with an error.

    Spec: RFC 1035.
    """
    if shutil.which("dig") is None:
        raise HarnessError("dig is not installed (Debian package bind9-dnsutils)")
    try:
        result = subprocess.run(
            ["dig", f"@{host}", "-p", str(port), "+time=2", "+tries=1", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"dig {' '.join(args)} did not finish in {timeout} s") from None
    if result.returncode != 0:
        raise HarnessError(f"dig {' '.join(args)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result.stdout


@contextmanager
def run_named(zones: Mapping[str, str], *, timeout: float = START_TIMEOUT) -> Iterator[BindServer]:
    """Run ``named`` for the ``with`` block, authoritative for ``zones``; always stopped afterwards.

    :param zones: origin (e.g. ``"domain1.example"``) -> zone text (see :func:`zone_text` and the module notes).
    :param timeout: seconds to wait for start and reloads.
    :returns: a context manager yielding the running :class:`BindServer` (every zone answers its SOA).
    :raises HarnessError: named is not installed, a zone does not load, or the server does not answer in time.

    Spec: RFC 1035 (authoritative DNS over UDP and TCP).
    """
    server = start_named(zones, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def start_named(zones: Mapping[str, str], *, timeout: float = START_TIMEOUT) -> BindServer:
    """Start ``named`` (see :func:`run_named`); the caller must call :meth:`BindServer.stop`.

    :param zones: origin -> zone text.
    :param timeout: seconds.
    :returns: the running server.
    :raises HarnessError: as :func:`run_named`.

    Spec: RFC 1035.
    """
    server = BindServer(Path(tempfile.mkdtemp(prefix="hisp-named-")), timeout=timeout)
    try:
        server._start(zones)
    except BaseException:
        server.stop()
        raise
    return server


class BindFactory:
    """Starts servers on demand and stops them all in :meth:`close` (for pytest fixtures).

    Example::

        @pytest.fixture
        def bind_factory():
            factory = BindFactory()
            yield factory
            factory.close()

        def test_x(bind_factory):
            server = bind_factory({"example.org": "..."})

    Spec: RFC 1035.
    """

    def __init__(self, *, timeout: float = START_TIMEOUT) -> None:
        self.timeout = timeout
        self.servers: list[BindServer] = []

    def __call__(self, zones: Mapping[str, str]) -> BindServer:
        """Start a server for ``zones`` (see :func:`run_named`).

        :raises HarnessError: as :func:`run_named`.
        """
        server = start_named(zones, timeout=self.timeout)
        self.servers.append(server)
        return server

    def close(self) -> None:
        """Stop every server started here."""
        while self.servers:
            self.servers.pop().stop()
