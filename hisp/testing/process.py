"""Run a real server program (BIND ``named``, OpenLDAP ``slapd``) for a test, and always stop it.

The pieces the server harnesses share: a free loopback port (TCP, optionally UDP too), a child process
whose output goes to a log file in its temporary directory (a file never fills up the way a pipe does),
a poll loop that waits until the server answers, and a stop that terminates, then kills, the whole process
group. An :mod:`atexit` hook kills any server a crashed test left running.

Also the "dead targets" discovery tests need: :func:`refused_port` (nothing listens: connections are
refused) and :func:`black_hole` (TCP connections are accepted and never answered, UDP datagrams are read and
never answered), so that a client's connect and read timeouts are exercised.

Never expose any of this beyond loopback: it exists for tests.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeadTarget", "HarnessError", "ManagedProcess", "black_hole", "free_port", "refused_port", "wait_until"]

#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0


class HarnessError(RuntimeError):
    """A test server could not be started, configured or loaded; the message includes its log tail."""


def free_port(*, udp: bool = False, host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free now for TCP (and for UDP too when ``udp``).

    The kernel picks it (port 0); the sockets are closed before returning, so another process may take the
    port before the server binds it: callers retry a failed start with a new port.

    :param udp: also require the same port number to be free for UDP (a DNS server listens on both).
    :param host: the address to bind.
    :returns: the port number.
    :raises HarnessError: no port free for both TCP and UDP was found in 50 tries.

    Spec: RFC 6335 section 6 (dynamic ports).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((host, port))
                except OSError:
                    continue
                return port
    raise HarnessError("no port free for both TCP and UDP on loopback")


def refused_port(host: str = "127.0.0.1") -> int:
    """A loopback port nothing listens on: a TCP connect is refused at once (a "dead" SRV target).

    :param host: the address.
    :returns: the port number (free when returned; see :func:`free_port`).

    Spec: RFC 9293 section 3.10.7.1 (a SYN to a closed port gets a RST).
    """
    return free_port(host=host)


@dataclass(frozen=True)
class DeadTarget:
    """A loopback endpoint that accepts and never answers.

    :ivar host: ``127.0.0.1``.
    :ivar port: the port, the same for TCP and UDP.
    """

    host: str
    port: int


@contextmanager
def black_hole(*, udp: bool = True, host: str = "127.0.0.1") -> Iterator[DeadTarget]:
    """A server that accepts TCP connections (and reads UDP datagrams) and never sends a byte.

    Accepted connections are held open until the ``with`` block ends, so a client's read timeout, not a
    reset, ends its wait. Used as an LDAP server that hangs after connect, or a DNS server that never answers.

    :param udp: also bind UDP on the same port and swallow the datagrams.
    :param host: the address to bind.
    :returns: a context manager yielding the :class:`DeadTarget`.
    :raises OSError: the sockets cannot be bound.

    Spec: RFC 9293 (a connection that is established and then silent).
    """
    port = free_port(udp=udp, host=host)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    listener.settimeout(0.05)
    datagrams: socket.socket | None = None
    if udp:
        datagrams = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagrams.bind((host, port))
        datagrams.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def run() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = listener.accept()
                held.append(connection)
            if datagrams is not None:
                with contextlib.suppress(TimeoutError, OSError):
                    datagrams.recv(65535)

    thread = threading.Thread(target=run, name=f"black-hole-{port}", daemon=True)
    thread.start()
    try:
        yield DeadTarget(host, port)
    finally:
        stop.set()
        thread.join(timeout=2)
        for sock in [*held, listener, *([datagrams] if datagrams else [])]:
            with contextlib.suppress(OSError):
                sock.close()


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> bool:
    """Call ``check`` until it returns true or ``timeout`` seconds have passed.

    :param check: returns true when the wait is over; exceptions count as "not yet".
    :param timeout: seconds.
    :param interval: seconds between calls.
    :returns: whether ``check`` returned true in time.

    Spec: none (test plumbing).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


_LIVE: set[ManagedProcess] = set()
_LIVE_LOCK = threading.Lock()


class ManagedProcess:
    """A server child process with its own temporary directory and log file.

    The process runs in its own session (process group) with stdin from ``/dev/null`` and stdout and stderr
    appended to :attr:`log_path`. :meth:`stop` is idempotent: SIGTERM to the group, then SIGKILL after
    :data:`STOP_GRACE` seconds, then the directory is removed.

    :ivar directory: the temporary directory (removed by :meth:`stop` when ``cleanup``).
    :ivar log_path: where the server's output goes.
    """

    def __init__(self, directory: Path, *, cleanup: bool = True) -> None:
        self.directory = directory
        self.log_path = directory / "server.log"
        self._cleanup = cleanup
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id, or None before :meth:`start`."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether the process has started and not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self, argv: Sequence[str]) -> None:
        """Start ``argv`` (the program must stay in the foreground).

        :param argv: the command line.
        :raises HarnessError: the program is not installed or cannot be executed.
        """
        if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            raise HarnessError(f"{argv[0]} is not installed (see .ci/run for the Debian packages)")
        with self.log_path.open("ab") as log:
            try:
                self._process = subprocess.Popen(
                    list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.directory, start_new_session=True,
                )
            except OSError as exc:
                raise HarnessError(f"cannot run {argv[0]}: {exc}") from None
        with _LIVE_LOCK:
            _LIVE.add(self)

    def log(self) -> str:
        """The server's output so far (decoded leniently)."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of :meth:`log`, for error messages."""
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process.

        :raises HarnessError: the process is not running.
        """
        if not self.running or self._process is None:
            raise HarnessError(f"the server is not running; its log ends with:\n{self.log_tail()}")
        self._process.send_signal(signum)

    def stop(self) -> None:
        """Terminate (then kill) the process group, reap it, and remove the directory; safe to call twice."""
        self.terminate()
        if self._cleanup:
            shutil.rmtree(self.directory, ignore_errors=True)

    def terminate(self) -> None:
        """Terminate (then kill) the process group and reap it, keeping the directory; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_GRACE)
        with _LIVE_LOCK:
            _LIVE.discard(self)


@atexit.register
def _stop_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for managed in leftovers:
        managed.stop()
