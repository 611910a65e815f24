"""``hisp discover ADDRESS``: find and judge a Direct recipient's certificates, and say why.

Exit status: 0 when at least one usable certificate was found, 1 when the recipient is undeliverable or a
server did not answer (the reason on stderr), 2 on usage errors (click's convention).

``--local FILE`` gives the partner's certificates as the gateway's ``[[discovery.local]]`` does: they are
consulted before DNS and LDAP and judged against the anchors like discovered ones. ``--require-dnssec`` refuses
DNS answers (CERT, SRV, and the A/AAAA of SRV targets) without the AD bit, as ``[discovery] require_dnssec``.

Spec: CD-1 .. CD-10; issue 4 ("The command").
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Sequence

import click

from hisp.adapters.discovery import CertificateDiscovery, LocalCertificates
from hisp.adapters.dns import DnsClient, parse_server
from hisp.addresses import DirectAddress
from hisp.commands.common import (
    at_option,
    bundle_anchors,
    certificates_from,
    parse_time,
    policy_option,
    printable,
    timeout_option,
)
from hisp.core.agent import RecipientTrust, StaticAnchors
from hisp.core.policy import policy_from_name
from hisp.errors import AddressError, CertificateError, ConfigError, HispError

__all__ = ["discover"]

_MAX_ANCHOR_FILE = 1024 * 1024


def _server(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        host, port = parse_server(value)
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="--dns-server") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise click.BadParameter(f"cannot resolve {host!r}: {exc}", param_hint="--dns-server") from None
        host = str(infos[0][4][0])
    return host, port


@click.command("discover")
@click.argument("address")
@click.option(
    "--dns-server",
    "dns_server",
    metavar="HOST[:PORT]",
    default=None,
    help="Ask this DNS server for CERT, SRV and A records (default: the system resolver).",
)
@click.option(
    "--anchor",
    "anchor_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Trust anchor certificate file (PEM or DER; repeat for each).",
)
@click.option(
    "--bundle",
    "bundle_sources",
    multiple=True,
    metavar="FILE_OR_URL",
    help="Trust bundle (PKCS#7) file or http(s) URL whose anchors are trusted (repeat for each).",
)
@policy_option("Security policy for path validation.")
@at_option("time to validate at")
@timeout_option("per DNS query, LDAP operation and HTTP fetch")
@click.option(
    "--local",
    "local_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The partner's certificates (PEM or DER), consulted before DNS and LDAP and still validated against the "
    "anchors, as [[discovery.local]] (repeat for each file).",
)
@click.option(
    "--require-dnssec", is_flag=True,
    help="Refuse DNS answers (CERT, SRV, A/AAAA of SRV targets) without the AD bit (validating resolver).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--pem", "as_pem", is_flag=True, help="Print only the chosen certificates, PEM.")
def discover(
    address: str,
    dns_server: str | None,
    anchor_paths: Sequence[str],
    bundle_sources: Sequence[str],
    policy_name: str,
    at_text: str | None,
    timeout: float,
    local_paths: Sequence[str],
    require_dnssec: bool,
    as_json: bool,
    as_pem: bool,
) -> None:
    """Discover ADDRESS's certificates (DNS CERT, then LDAP via SRV) and judge them against the anchors."""
    if as_json and as_pem:
        raise click.UsageError("--json and --pem cannot be combined")
    if not anchor_paths and not bundle_sources:
        raise click.UsageError(
            "give at least one --anchor or --bundle: a discovered certificate is usable only when it chains to an "
            "outgoing trust anchor (AS-20, CD-8)"
        )
    try:
        recipient = DirectAddress.parse(address)
    except AddressError as exc:
        raise click.BadParameter(exc.message, param_hint="ADDRESS") from None
    at = parse_time(at_text)
    server = _server(dns_server)
    policy = policy_from_name(policy_name)
    try:
        local = tuple(c for path in local_paths for c in certificates_from(path, "--local"))
    except (CertificateError, ConfigError) as exc:
        raise click.BadParameter(exc.message, param_hint="--local") from None
    try:
        anchors = [c for path in anchor_paths for c in certificates_from(path, "--anchor")] + [
            c for source in bundle_sources for c in bundle_anchors(source, timeout=timeout, at=at, policy=policy)
        ]
        dns = DnsClient(server, timeout=min(timeout, 2.0), lifetime=timeout, require_dnssec=require_dnssec)
        trust: RecipientTrust = StaticAnchors(tuple(anchors))
        discovery = CertificateDiscovery(
            dns=dns, trust=trust, policy=policy, budget=max(30.0, 6 * timeout), fetch_timeout=timeout,
            local=LocalCertificates(by_address={recipient: local}) if local else None,
        )
        result = asyncio.run(discovery.lookup(recipient, at=at))
    except HispError as exc:
        click.echo(f"hisp: {exc.message}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"hisp: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(1)
    if as_pem:
        for cert in result.chosen:
            click.echo(cert.to_pem().decode("ascii"), nl=False)
    elif as_json:
        click.echo(result.to_json())
    else:  # names and reasons come from partners' certificates and DNS: control characters escaped, line by line
        click.echo("\n".join(printable(line) for line in result.explain().split("\n")))
    if not result.usable:
        kind = "temporarily unavailable" if result.outcome.value == "unavailable" else "undeliverable"
        click.echo(f"hisp: {recipient}: {kind}: {printable(result.reason)}", err=True)
        sys.exit(1)
