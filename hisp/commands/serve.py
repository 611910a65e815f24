"""``hisp serve -c FILE [--workers N]``: run one HISP node until SIGTERM or SIGINT.

Starts the listeners of the configuration (submission, backbone) and N worker tasks in this process (default
``[queue] workers``), prints where it listens on stderr, and runs until SIGTERM or SIGINT. Then it stops
listening, lets every DATA transaction in flight finish with its reply, lets each worker finish the job it
holds (the others stay queued; a job cut short comes back when its lease ends), closes the store and exits 0.

SIGHUP (``systemctl reload``) reloads what can change safely while running: the configuration file is read and
validated again, and the trust anchors and bundles it names replace the running ones (:meth:`hisp.app.Node.reload`);
stderr says ``hisp: configuration reloaded`` (and which changed parts need a restart), or
``hisp: configuration reload failed: ...; keeping the running configuration``. SIGHUP never stops the node.

``--workers N`` runs N worker tasks in one process, sharing one thread pool for the cryptography; several
processes (or nodes) may share one PostgreSQL database, each started with its own ``[node] name``.

Exit status: 0 after a clean stop, 1 a configuration or start-up failure (one line on stderr), 2 usage.

Spec: issue 5 ("``hisp serve``").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import click

from hisp.app import Node, check_can_start
from hisp.commands.common import fail_cleanly
from hisp.commands.config import check_config
from hisp.config import Config, load_config
from hisp.errors import HispError

__all__ = ["serve"]


@click.command("serve")
@click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The configuration file."
)
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Worker tasks (default: [queue] workers).")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@fail_cleanly
def serve(config_path: str, workers: int | None, log_level: str) -> None:
    """Run the listeners and workers of one HISP node until SIGTERM or SIGINT."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if log_level != "debug":
        # aiosmtpd traces every SMTP command at INFO on "mail.log": only for debugging
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    config = load_config(config_path)
    check_can_start(config)
    asyncio.run(_serve(Node(config, environ=os.environ, workers=workers), config_path))


async def _reload(node: Node, config_path: str) -> None:
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
        click.echo(f"hisp: configuration reload failed: {exc.message}; keeping the running configuration", err=True)
        return
    except Exception as exc:  # never let a reload end the node
        logging.getLogger("hisp.serve").exception("configuration reload")
        click.echo(f"hisp: configuration reload failed: {exc}; keeping the running configuration", err=True)
        return
    note = f" (trust anchors and bundles; changed, applied at the next restart: {', '.join(restart)})" if restart else \
        " (trust anchors and bundles)"
    click.echo(f"hisp: configuration reloaded{note}", err=True)


async def _serve(node: Node, config_path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    started = asyncio.Event()

    def hangup() -> None:
        if not started.is_set():
            click.echo("hisp: SIGHUP while starting: ignored", err=True)
            return
        task = loop.create_task(_reload(node, config_path))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):  # installed before start:
        loop.add_signal_handler(signal.SIGHUP, hangup)  # a SIGHUP must never end the process
    await node.start()
    started.set()
    listening = ", ".join(f"{name} on port {port}" for name, port in node.ports.items())
    click.echo(f"hisp: node {node.name} ready: {listening}; {node.workers} workers", err=True)
    try:
        await stop.wait()
    finally:
        click.echo("hisp: stopping: finishing transactions in flight", err=True)
        await node.stop()
        click.echo("hisp: stopped", err=True)
