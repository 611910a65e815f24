"""``hisp serve -c FILE [--workers N]``: run one HISP node until SIGTERM or SIGINT, in one process or in N.

**One process** (the default, ``--workers 1``): starts the listeners of the configuration (submission,
backbone), ``[queue] workers`` worker tasks and the notification timeout scan in this process, prints
``hisp: node NAME ready: submission on port P, backbone on port Q; 1 process, W workers`` on stderr, and runs
until SIGTERM or SIGINT. Then it stops listening, lets every DATA transaction in flight finish with its reply,
lets each worker finish the job it holds (the others stay queued; a job cut short comes back when its lease
ends), closes the store and exits 0.

SIGHUP (``systemctl reload``) reloads what can change safely while running: the configuration file is read and
validated again, and the trust anchors and bundles it names replace the running ones (:meth:`hisp.app.Node.reload`);
stderr says ``hisp: configuration reloaded`` (and which changed parts need a restart), or
``hisp: configuration reload failed: ...; keeping the running configuration``. SIGHUP never stops the node; one
received while the node is still starting is ignored (with a line on stderr).

**N processes** (``--workers N``, N > 1, so that one node uses all its cores): this process is a supervisor and
runs N child processes of the same node. Design:

- Before any child starts, the supervisor validates the configuration (as ``hisp config check`` does), refuses a
  listener on port 0 (a port picked by the kernel cannot be shared: :class:`~hisp.errors.ConfigError`, exit 1),
  and opens the store once, which runs its migrations and creates the spool directory, so that the children find
  the schema current and never migrate concurrently.
- Children are this command re-executed (``python -m hisp.cli serve -c FILE`` with a hidden ``--supervised I:FD``
  option), not :mod:`multiprocessing`: each is an ordinary ``hisp serve`` process with its own interpreter, event
  loop, thread pool and database connections; it inherits only the environment, stdout/stderr and one end of a
  UNIX socket pair. On it the child writes one line when it listens (its ports, as JSON), and when it reads
  end-of-file (the supervisor died, even by SIGKILL) it stops as on SIGTERM: no orphan keeps serving.
- Each child binds the listeners with ``SO_REUSEPORT`` (the kernel spreads the connections among the processes)
  and runs ``[queue] workers`` worker tasks. All share the queue in the database: SQLite in WAL mode, where
  ``BEGIN IMMEDIATE`` serialises the writers, or PostgreSQL (``SKIP LOCKED``). Every child runs under the
  configured ``[node] name``: a claim carries a random token and only queued or lease-expired recipients are
  claimed (:meth:`hisp.adapters.storage.SqlStore.claim`), so processes of one name never take over each other's
  live claims.
- SIGTERM or SIGINT to the supervisor is forwarded as SIGTERM to every child; each finishes its transactions in
  flight and exits 0; the supervisor waits for them (at most :data:`STOP_TIMEOUT` seconds, then SIGKILL and exit
  1) and exits 0 when all exited 0. SIGHUP is forwarded to every child once all are ready; each reloads as above
  and says so as ``hisp: process I: configuration reloaded ...``.
- A child that fails to start, exits with a non-zero status or is killed by a signal: the supervisor says which on
  stderr (the child has said why), stops the others and exits 1. A child that exits 0 on its own (it was sent
  SIGTERM directly, e.g. by systemd with ``KillMode=control-group``) stops the node: the others are stopped too,
  and the exit status is 0 when they all exit 0.
- The ready line is the supervisor's: ``hisp: node NAME ready: submission on port P, backbone on port Q;
  N processes (pids ...), W workers each``.

Exit status: 0 after a clean stop, 1 a configuration or start-up failure or a child that failed (one line on
stderr), 2 usage.

Spec: issue 5 ("``hisp serve -c FILE [--workers N]`` runs the listeners and workers of one node until SIGTERM,
then finishes in-flight transactions and exits 0. ``--workers N`` runs N processes (listening sockets shared with
SO_REUSEPORT or a pre-fork) so a node uses all its cores").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

import click

from hisp.adapters.storage import SqlStore, default_url
from hisp.app import Node, check_can_start
from hisp.commands.common import fail_cleanly
from hisp.commands.config import check_config
from hisp.config import Config, load_config
from hisp.errors import ConfigError, HispError

__all__ = ["STOP_TIMEOUT", "check_shareable", "serve"]

#: Seconds the supervisor waits for its children to stop after forwarding SIGTERM before it kills them: more than
#: a child's own worst case (:meth:`hisp.app.Node.stop` waits up to 30 s for the listeners, then 30 s for the
#: workers), less than the unit's ``TimeoutStopSec=90s``.
STOP_TIMEOUT = 75.0

_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@click.command("serve")
@click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The configuration file."
)
@click.option(
    "--workers", type=click.IntRange(1, 256), default=1, show_default=True,
    help="Processes of this node; with more than 1 they share the listening ports (SO_REUSEPORT, so no port 0). "
    "Each process runs [queue] workers worker tasks.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True,
    help="Least severe log records written to stderr; debug also shows each SMTP command and the migrations.",
)
@click.option("--supervised", default=None, hidden=True, help="Internal: INDEX:FD of a child of the supervisor.")
@fail_cleanly
def serve(config_path: str, workers: int, log_level: str, supervised: str | None) -> None:
    """Run the listeners and workers of one HISP node until SIGTERM or SIGINT.

    SIGTERM or SIGINT: stop listening, finish the transactions in flight, exit. SIGHUP: read the configuration
    again and reload the trust anchors and bundles (the node keeps running; on an error it keeps the old ones).

    Exit status: 0 after a clean stop, 1 a configuration or start-up failure or a failed process (one line on
    stderr), 2 usage.
    """
    # Until the event loop's handler replaces this, a SIGHUP (an early ``systemctl reload``) must not end the
    # process; children inherit it across exec, so they are covered until they install theirs too.
    with contextlib.suppress(AttributeError, ValueError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    child = _Supervised.parse(supervised) if supervised is not None else None
    prefix = f"[process {child.index}] " if child is not None else ""
    logging.basicConfig(level=log_level.upper(), format=prefix + _LOG_FORMAT)
    if log_level != "debug":
        # aiosmtpd traces every SMTP command at INFO on "mail.log": only for debugging
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    config = load_config(config_path)
    check_can_start(config)
    if child is not None:
        asyncio.run(_serve(Node(config, environ=os.environ, reuse_port=True), config_path, child))
    elif workers == 1:
        asyncio.run(_serve(Node(config, environ=os.environ), config_path))
    else:
        check_shareable(config, workers)
        check_config(config, os.environ)
        _migrate(config)
        asyncio.run(_supervise(config, os.path.abspath(config_path), workers, log_level))


def check_shareable(config: Config, processes: int) -> None:
    """Refuse listeners that ``processes`` processes cannot share: with more than one, every port must be fixed.

    :param config: the configuration.
    :param processes: the number of processes (``--workers``), ``>= 1``.
    :raises ConfigError: ``processes > 1`` and a configured listener has port 0 (the kernel would pick a different
        free port in every process, so they would not share it).

    Spec: issue 5 ("``--workers N`` runs N processes (listening sockets shared with SO_REUSEPORT ...)").
    """
    if processes < 2:
        return
    for name, listener in (("submission", config.listeners.submission), ("backbone", config.listeners.backbone)):
        if listener is not None and listener.port == 0:
            raise ConfigError(
                f"{config.path}: [listeners.{name}] port = 0 cannot be shared by {processes} processes "
                f"(--workers {processes}): configure a fixed port, or run one process"
            )


def _migrate(config: Config) -> None:
    """Open the store once (migrating it, creating the spool directory) and close it, before any child starts.

    :raises ConfigError: the storage URL is not usable.
    :raises StorageError: the database cannot be reached or migrated.
    """
    url = config.storage.url or default_url(config.path.parent)
    SqlStore.open(url, spool_dir=config.storage.spool_dir).close()


@dataclass(frozen=True)
class _Supervised:
    """A child's side of the supervisor (``--supervised INDEX:FD``).

    :ivar index: this process's number, from 1.
    :ivar fd: the inherited socket to the supervisor: the ready line goes there; end-of-file means it is gone.
    """

    index: int
    fd: int

    @classmethod
    def parse(cls, value: str) -> _Supervised:
        """:raises click.BadParameter: not ``INDEX:FD`` (exit status 2)."""
        index, _, fd = value.partition(":")
        if not (index.isdigit() and fd.isdigit()):
            raise click.BadParameter("expected INDEX:FD", param_hint="--supervised")
        return cls(int(index), int(fd))

    @property
    def prefix(self) -> str:
        return f"process {self.index}: "


async def _reload(node: Node, config_path: str, prefix: str = "") -> None:
    """SIGHUP: read the configuration again and swap in its trust; on any error keep the running one."""
    loop = asyncio.get_running_loop()

    def load() -> Config:
        config = load_config(config_path)
        check_config(config, os.environ)
        return config

    try:
        config = await loop.run_in_executor(None, load)
        restart = await node.reload(config)
    except HispError as exc:
        click.echo(
            f"hisp: {prefix}configuration reload failed: {exc.message}; keeping the running configuration", err=True
        )
        return
    except Exception as exc:  # never let a reload end the node
        logging.getLogger("hisp.serve").exception("configuration reload")
        click.echo(f"hisp: {prefix}configuration reload failed: {exc}; keeping the running configuration", err=True)
        return
    note = f" (trust anchors and bundles; changed, applied at the next restart: {', '.join(restart)})" if restart else \
        " (trust anchors and bundles)"
    click.echo(f"hisp: {prefix}configuration reloaded{note}", err=True)


async def _serve(node: Node, config_path: str, child: _Supervised | None = None) -> None:
    """Run ``node`` until SIGTERM or SIGINT (or, for a child, until its supervisor is gone); SIGHUP reloads.

    :param node: the node, not started.
    :param config_path: the configuration file (read again on SIGHUP).
    :param child: set when this process is a child of a supervisor: report readiness to it, watch it.
    :raises HispError: (and OSError) the node cannot start.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    started = asyncio.Event()
    prefix = child.prefix if child is not None else ""

    def hangup() -> None:
        if not started.is_set():
            click.echo(f"hisp: {prefix}SIGHUP while starting: ignored", err=True)
            return
        task = loop.create_task(_reload(node, config_path, prefix))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):  # installed before start:
        loop.add_signal_handler(signal.SIGHUP, hangup)  # a SIGHUP must never end the process
    channel = socket.socket(fileno=child.fd) if child is not None else None
    try:
        await node.start()
        started.set()
        if channel is not None:
            _report_ready(node, channel, stop, prefix)
        else:
            listening = ", ".join(f"{name} on port {port}" for name, port in node.ports.items())
            click.echo(f"hisp: node {node.name} ready: {listening}; 1 process, {node.workers} workers", err=True)
        try:
            await stop.wait()
        finally:
            click.echo(f"hisp: {prefix}stopping: finishing transactions in flight", err=True)
            await node.stop()
            click.echo(f"hisp: {prefix}stopped", err=True)
    finally:
        if channel is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(channel.fileno())
            channel.close()


def _report_ready(node: Node, channel: socket.socket, stop: asyncio.Event, prefix: str) -> None:
    """A child: send the ready line to the supervisor, then stop when the supervisor's end closes."""
    loop = asyncio.get_running_loop()
    ready = {"pid": os.getpid(), "name": node.name, "ports": node.ports, "workers": node.workers}
    try:
        channel.sendall(json.dumps(ready).encode() + b"\n")
    except OSError:
        click.echo(f"hisp: {prefix}the supervisor is gone: stopping", err=True)
        stop.set()
        return
    channel.setblocking(False)

    def readable() -> None:
        try:
            data = channel.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(channel.fileno())
            if not stop.is_set():
                click.echo(f"hisp: {prefix}the supervisor is gone: stopping", err=True)
                stop.set()

    loop.add_reader(channel.fileno(), readable)


@dataclass
class _Child:
    """The supervisor's view of one child process.

    :ivar index: its number, from 1.
    :ivar process: the process.
    :ivar reader: the supervisor's end of the socket pair (the ready line arrives here).
    :ivar writer: keeps that end open: closing it tells the child its supervisor is gone.
    :ivar ready: the child's ready message once received.
    :ivar exited: the task that waits for its exit (the return code).
    """

    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    ready: dict[str, object] | None = None
    exited: asyncio.Task[int] = field(init=False)

    def __post_init__(self) -> None:
        self.exited = asyncio.create_task(self.process.wait())

    def __str__(self) -> str:
        return f"process {self.index} (pid {self.process.pid})"

    @classmethod
    async def spawn(cls, index: int, config_path: str, log_level: str) -> _Child:
        """Start child ``index``: this command re-executed with ``--supervised INDEX:FD``.

        :raises OSError: the process cannot be started.
        """
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hisp.cli", "serve", "-c", config_path, "--log-level", log_level,
                "--supervised", f"{index}:{theirs.fileno()}",
                stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        return cls(index, process, reader, writer)

    async def wait_ready(self) -> dict[str, object] | None:
        """The child's ready message, or None when it closed its end without one (it failed to start)."""
        line = await self.reader.readline()
        try:
            message = json.loads(line) if line else None
        except ValueError:
            message = None
        self.ready = message if isinstance(message, dict) else None
        return self.ready


def _status(code: int) -> str:
    """A return code in words: ``exit status 1``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


async def _supervise(config: Config, config_path: str, processes: int, log_level: str) -> None:
    """Run ``processes`` children of this node until SIGTERM or SIGINT, as the module docstring describes.

    :param config: the configuration (already validated, the store migrated).
    :param config_path: the configuration file, absolute (the children read it).
    :param processes: how many children, ``>= 2``.
    :param log_level: the children's ``--log-level``.
    :raises HispError: a child failed to start, died, or did not stop in time (the others were stopped).
    :raises OSError: a child could not be started (the others were stopped).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    children: list[_Child] = []
    running = False

    def hangup() -> None:
        if not running:
            click.echo("hisp: SIGHUP while starting or stopping: ignored", err=True)
            return
        for child in children:
            if child.process.returncode is None:
                child.process.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    stopping = asyncio.create_task(stop.wait())
    failure: str | None = None
    try:
        for index in range(1, processes + 1):
            children.append(await _Child.spawn(index, config_path, log_level))
        failure = await _wait_started(children, stopping)
        if failure is None and not stop.is_set():
            _announce(config, children)
            running = True
            exits = {child.exited: child for child in children}
            done, _ = await asyncio.wait([*exits, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in exits:
                    child, code = exits[task], task.result()
                    if code == 0:
                        click.echo(f"hisp: {child} stopped on its own: stopping the node", err=True)
                    else:
                        failure = failure or f"{child} died unexpectedly ({_status(code)})"
    finally:
        running = False
        stopping.cancel()
        problem = await _stop_children(children, failure)
        failure = failure or problem
    if failure is not None:
        raise HispError(f"{failure}; stopped the other processes")
    click.echo("hisp: stopped", err=True)


async def _wait_started(children: list[_Child], stopping: asyncio.Task[object]) -> str | None:
    """Wait until every child reported ready, one failed to start, or a stop was asked for.

    :returns: what failed, or None.
    """
    waiting = {asyncio.create_task(child.wait_ready()): child for child in children}
    try:
        while waiting:
            done, _ = await asyncio.wait([*waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return None
            for task, child in list(waiting.items()):
                if task not in done:
                    continue
                del waiting[task]
                if task.result() is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(child.exited), 10.0)
                    code = child.process.returncode
                    status = _status(code) if code is not None else "no ready report"
                    return f"{child} failed to start ({status})"
        return None
    finally:
        for task in waiting:
            task.cancel()


def _announce(config: Config, children: list[_Child]) -> None:
    """Print the node's ready line (from the children's ready messages)."""
    first = children[0].ready or {}
    ports = first.get("ports")
    listening = ", ".join(f"{name} on port {port}" for name, port in ports.items()) if isinstance(ports, dict) else ""
    pids = ", ".join(str(child.process.pid) for child in children)
    click.echo(
        f"hisp: node {first.get('name')} ready: {listening}; {len(children)} processes (pids {pids}), "
        f"{first.get('workers', config.queue.workers)} workers each",
        err=True,
    )


async def _stop_children(children: list[_Child], failure: str | None) -> str | None:
    """SIGTERM every child still running, wait for all (SIGKILL after :data:`STOP_TIMEOUT`), close the channels.

    A child killed by the SIGTERM before it reported ready (it had not installed its handlers yet) stopped cleanly:
    it had nothing in flight.

    :param failure: what already failed (decides the message on stderr).
    :returns: the first problem found while stopping (a child that exited non-zero or had to be killed), or None.
    """
    live = [child for child in children if child.process.returncode is None]
    if live:
        why = "finishing transactions in flight" if failure is None else "after a failure"
        click.echo(f"hisp: stopping {len(live)} process{'es' if len(live) > 1 else ''}: {why}", err=True)
    for child in live:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    problem: str | None = None
    if children:
        _done, late = await asyncio.wait([child.exited for child in children], timeout=STOP_TIMEOUT)
        for child in children:
            if child.exited in late:
                problem = problem or f"{child} did not stop within {STOP_TIMEOUT:g} s: killed"
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        await asyncio.gather(*(child.exited for child in children), return_exceptions=True)
    for child in children:
        code = child.process.returncode
        clean = code == 0 or (child.ready is None and code in (-signal.SIGTERM, -signal.SIGINT))
        if not clean and code is not None and problem is None and failure is None:
            problem = f"{child} stopped with {_status(code)}"
        child.writer.close()
        with contextlib.suppress(OSError):
            await child.writer.wait_closed()
    return problem
