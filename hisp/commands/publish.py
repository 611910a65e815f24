"""``hisp dns serve``, ``hisp dns zone`` and ``hisp ldap ldif``: publishing our own certificates (CD-11).

- ``hisp dns serve -c FILE [--listen HOST:PORT]`` answers authoritatively, over UDP and TCP, for the hosted
  domains of the configuration file: CERT records (PKIX, key tag 0, algorithm 0) for the certificates
  published in DNS, the configured A/AAAA/MX/SRV/TXT records, SOA and NS (see :mod:`hisp.core.publish`).
  SIGHUP re-reads the configuration (a bad one is reported and the old zones kept); SIGINT/SIGTERM stop it.
  ``--listen 127.0.0.1:0`` picks a free port; the port is printed on stderr.
- ``hisp dns zone -c FILE`` prints the same records as a BIND master file (SOA and NS included), for
  operators whose own DNS servers publish our certificates.
- ``hisp ldap ldif -c FILE [--base DN]`` prints LDIF entries (inetOrgPerson, ``mail``, ``userCertificate;binary``)
  for the certificates published in LDAP, for operators whose own LDAP servers publish them.

Passphrases of PKCS#12 files come from the environment (``passphrase_env``) or a file (``passphrase_file``).
Exit status: 0 success, 1 a configuration or certificate problem (one line on stderr), 2 usage errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from hisp.adapters.dns_server import DnsServer
from hisp.commands.common import fail_cleanly
from hisp.config import Config, Publication, load_config
from hisp.core.publish import (
    DomainPublication,
    PublishedCertificate,
    PublishedRecord,
    Zones,
    ZoneSettings,
    build_zones,
    ldif,
    zone_file,
)
from hisp.errors import HispError

__all__ = ["dns_group", "ldap_group", "publications", "zones_from_config"]

F = TypeVar("F", bound=Callable[..., Any])


def publications(config: Config, environ: Mapping[str, str]) -> tuple[DomainPublication, ...]:
    """What each hosted domain publishes, with the certificate files read.

    :param config: the configuration.
    :param environ: the environment (PKCS#12 passphrases).
    :returns: one publication per hosted domain, in configuration order.
    :raises ConfigError: a certificate file cannot be read, its passphrase is missing, or it is not bound to
        its address or domain (the message names the configuration key).

    Spec: CD-11.
    """
    result = []
    for hosted in config.domains:
        certificates = tuple(
            PublishedCertificate(
                c.certificate(environ),
                hosted.domain,
                c.address,
                Publication.DNS in c.publish,
                Publication.LDAP in c.publish,
            )
            for c in hosted.certificates
            if c.publish
        )
        records = tuple(PublishedRecord(r.name, r.type, r.value, r.ttl) for r in hosted.records)
        result.append(DomainPublication(hosted.domain, certificates, records))
    return tuple(result)


def zones_from_config(config: Config, environ: Mapping[str, str]) -> Zones:
    """The zones ``hisp dns serve`` answers for (and ``hisp dns zone`` prints).

    :param config: the configuration.
    :param environ: the environment (PKCS#12 passphrases).
    :returns: one zone per hosted domain.
    :raises ConfigError: as :func:`publications`, or no name server configured.

    Spec: RFC 1035 section 5; RFC 4398; CD-11.
    """
    dns = config.dns
    settings = ZoneSettings(dns.nameservers, dns.ttl, dns.negative_ttl, dns.serial or 1, dns.hostmaster)
    return build_zones(publications(config, environ), settings)


def _listen(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT (e.g. 127.0.0.1:53 or [::1]:53), not {value!r}")
    return host, int(port)


_config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="The configuration file."
)


@click.group("dns")
def dns_group() -> None:
    """Publish our certificates in DNS (CERT records) for certificate discovery."""


@dns_group.command("serve")
@_config_option
@click.option(
    "--listen", default="127.0.0.1:53", show_default=True, callback=_listen, help="HOST:PORT for UDP and TCP."
)
@fail_cleanly
def dns_serve(config_path: str, listen: tuple[str, int]) -> None:
    """Answer DNS queries for the hosted domains (UDP and TCP), until SIGINT or SIGTERM; SIGHUP reloads."""
    config = load_config(config_path)
    zones = zones_from_config(config, os.environ)
    if not len(zones):
        raise HispError(f"{config_path}: no [[domain]] to publish")
    asyncio.run(_serve(config_path, zones, *listen))


async def _serve(config_path: str, zones: Zones, host: str, port: int) -> None:
    server = DnsServer(zones, host, port)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            server.zones = zones_from_config(load_config(config_path), os.environ)
        except HispError as exc:
            click.echo(f"hisp: reload failed, still serving the previous zones: {exc.message}", err=True)
            return
        click.echo(f"hisp: reloaded {config_path}", err=True)

    for signum, handler in ((signal.SIGINT, stop.set), (signal.SIGTERM, stop.set), (signal.SIGHUP, reload)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, handler)
    names = ", ".join(str(zone.origin) for zone in zones)
    click.echo(f"hisp: serving {names} on {host}:{server.port} (udp, tcp)", err=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        tally = sorted((outcome.value, n) for outcome, n in server.counts.items())
        counts = ", ".join(f"{name} {n}" for name, n in tally)
        click.echo(f"hisp: stopped ({counts or 'no queries'})", err=True)


@dns_group.command("zone")
@_config_option
@fail_cleanly
def dns_zone(config_path: str) -> None:
    """Print the hosted domains' records (SOA, NS, CERT, A/MX/SRV...) as a BIND zone file."""
    config = load_config(config_path)
    click.echo(zone_file(zones_from_config(config, os.environ)), nl=False)


@click.group("ldap")
def ldap_group() -> None:
    """Publish our certificates in LDAP for certificate discovery."""


@ldap_group.command("ldif")
@_config_option
@click.option("--base", default=None, help="Base DN of the entries (default: ldap.base of the configuration).")
@fail_cleanly
def ldap_ldif(config_path: str, base: str | None) -> None:
    """Print LDIF entries (inetOrgPerson, mail, userCertificate;binary) for the certificates published in LDAP."""
    config = load_config(config_path)
    click.echo(ldif(publications(config, os.environ), base or config.ldap.base or ""), nl=False)
