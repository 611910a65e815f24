"""``hisp serve -c FILE [--workers N]``: run one HISP node until SIGTERM or SIGINT.

Starts the listeners of the configuration (submission, backbone) and N worker tasks in this process (default
``[queue] workers``), prints where it listens on stderr, and runs until SIGTERM or SIGINT. Then it stops
listening, lets every DATA transaction in flight finish with its reply, lets each worker finish the job it
holds (the others stay queued; a job cut short comes back when its lease ends), closes the store and exits 0.

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
from hisp.config import load_config

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
    config = load_config(config_path)
    check_can_start(config)
    asyncio.run(_serve(Node(config, environ=os.environ, workers=workers)))


async def _serve(node: Node) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await node.start()
    listening = ", ".join(f"{name} on port {port}" for name, port in node.ports.items())
    click.echo(f"hisp: node {node.name} ready: {listening}; {node.workers} workers", err=True)
    try:
        await stop.wait()
    finally:
        click.echo("hisp: stopping: finishing transactions in flight", err=True)
        await node.stop()
        click.echo("hisp: stopped", err=True)
