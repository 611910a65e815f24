"""``hisp config check FILE`` (or ``-c/--config FILE``): validate a configuration file and print what it sets up.

Checks everything that can be checked without starting: the TOML, every key and value (the error names the
file and the key), certificate files and their bindings, private keys and PKCS#12 passphrases (from the
environment or files named in the configuration), anchor files, TLS files. Prints a summary: node, hosted
domains with their addresses, certificates and delivery endpoints, edge users, listeners, relay, storage and
queue.

Warnings (on stderr, ``warning: ...``; the exit status stays 0) name settings that are valid but easy to get
wrong: a hosted domain without an incoming or outgoing trust anchor, a non-CA certificate as an anchor, an
unsigned bundle over plain http://, a ``spool_dir`` with PostgreSQL storage. Nodes sharing one database may
finish each other's messages, so they must all see the same spool directory (a shared file system, mounted at
the same path) or run without one (every body in the database); a spool on a node's local disk makes large
messages undeliverable from the others.

Exit status: 0 valid, 1 invalid (one line on stderr says where and why), 2 usage errors.

Spec: issue 5 ("Configuration": "``hisp config check FILE`` validates and prints a summary").
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import click

from hisp.adapters.storage.engine import default_url
from hisp.adapters.truststores import load_anchor_file, load_intermediates
from hisp.addresses import HealthDomain
from hisp.commands.common import fail_cleanly
from hisp.config import Config, ListenerConfig, RelayMode, load_config
from hisp.core.policy import Direction
from hisp.errors import ConfigError

__all__ = ["check_config", "config_group", "config_warnings", "summary"]


def check_config(config: Config, environ: Mapping[str, str]) -> None:
    """Load what the configuration names beyond the file itself: credentials, anchors.

    :param config: a parsed configuration.
    :param environ: the environment (PKCS#12 and key passphrases).
    :raises ConfigError: a credential or anchor file cannot be used; the message names the key.

    Spec: issue 5 ("validated at start with clear errors (file, key, what is wrong)").
    """
    for hosted in config.domains:
        for certificate in hosted.certificates:
            if certificate.key is not None or certificate.pkcs12:
                certificate.credential(environ)
            else:
                certificate.certificate(environ)
    for anchor in config.trust.anchors:
        load_anchor_file(anchor.file)
    load_intermediates(config.trust.intermediates, load_anchor_file)


def _anchor_sources(config: Config, domain: HealthDomain, direction: Direction) -> list[str]:
    """The anchor files and bundles (``bundle NAME``) that apply to a hosted domain in one direction (AS-21)."""
    sources = [str(a.file.relative_to(config.path.parent)) if a.file.is_relative_to(config.path.parent)
               else str(a.file) for a in config.trust.anchors if domain in a.domains and direction in a.directions]
    sources += [f"bundle {b.name}" for b in config.trust.bundles if domain in b.domains and direction in b.directions]
    return sources


def config_warnings(config: Config) -> list[str]:
    """Settings that are valid but often wrong, one line each (``hisp config check`` prints them).

    A hosted domain with no anchor for a direction (every partner refused: incoming messages answered 554, no
    recipient certificate trusted on the way out; an anchor's ``domains`` name *our* domains, not the
    partner's); an anchor file holding a certificate that is not a CA (it trusts only itself); a bundle fetched
    over plain ``http://`` without a ``signer`` (anyone on the path could change our anchors, TB-2); a
    ``spool_dir`` with PostgreSQL storage.

    :param config: the configuration.
    :returns: the warnings, possibly none.

    Spec: AS-21, TB-2; issue 5 ("several ``hisp serve`` nodes can share one database").
    """
    found = []
    for hosted in config.domains:
        for direction, effect in (
            (Direction.INCOMING, "every message from a partner HISP will be refused"),
            (Direction.OUTGOING, "no partner certificate will be trusted, nothing can be sent"),
        ):
            if not _anchor_sources(config, hosted.domain, direction):
                found.append(
                    f"domain {hosted.domain} has no {direction.value} trust anchor ({effect}): an anchor's or "
                    "bundle's `domains` must name our hosted domain, not the partner's"
                )
    for anchor in config.trust.anchors:
        try:
            leaves = [c for c in load_anchor_file(anchor.file) if not c.is_ca]
        except ConfigError:
            continue  # check_config reports it
        for cert in leaves:
            found.append(
                f"trust anchor file {anchor.file}: {cert.subject} is not a CA certificate (it trusts only itself; "
                "a partner's anchor is normally its CA certificate)"
            )
    for bundle in config.trust.bundles:
        if bundle.url.startswith("http://") and bundle.signer is None:
            found.append(
                f"trust bundle {bundle.name} is fetched over plain http:// without a `signer`: anyone on the path "
                "can change the anchors it gives (use https:// or a signed bundle, TB-2)"
            )
    url = config.storage.url or ""
    if url.startswith("postgresql") and config.storage.spool_dir is not None:
        found.append(
            f"[storage] spool_dir = {str(config.storage.spool_dir)!r} with PostgreSQL: every node sharing this "
            "database must see the same spool directory at this path (shared storage), or leave spool_dir unset "
            "to keep every message body in the database; another node cannot deliver a large message otherwise"
        )
    return found


def _listener(name: str, listener: ListenerConfig | None) -> str:
    if listener is None:
        return f"  {name}: not run"
    tls = "STARTTLS" if listener.tls_cert is not None else "no TLS"
    return (
        f"  {name}: {listener.host}:{listener.port}, {tls}, max {listener.max_message_size} bytes, "
        f"{listener.max_recipients} recipients, {listener.max_connections} connections, "
        f"timeout {listener.command_timeout:g} s"
    )


def summary(config: Config) -> str:
    """The configuration for people, a few lines per part.

    :param config: the configuration.
    :returns: the text.
    """
    lines = [f"{config.path}: valid", f"node: {config.node.name or '(host name)'}, hostname {config.node.hostname}"]
    for hosted in config.domains:
        endpoint = hosted.endpoint.url if hosted.endpoint else "none"
        lines.append(f"domain {hosted.domain}: {len(hosted.addresses)} addresses, "
                     f"{len(hosted.certificates)} certificates, endpoint {endpoint}")
        for address in hosted.addresses:
            own = dict(hosted.mailboxes).get(address)
            lines.append(f"  {address}" + (f" -> {own.url}" if own else ""))
        trust = config.trust.for_domain(hosted.domain)
        lines.append(f"  policy {trust.policy.name}, revocation {trust.revocation.value}")
        for direction in (Direction.INCOMING, Direction.OUTGOING):
            sources = _anchor_sources(config, hosted.domain, direction)
            lines.append(f"  {direction.value} anchors: {', '.join(sources) if sources else 'none'}")
    trusted = config.trust
    lines.append(f"trust: {len(trusted.anchors)} anchor files, {len(trusted.bundles)} bundles, "
                 f"{len(trusted.intermediates)} intermediates files")
    found = config.discovery
    lines.append(
        f"discovery: {len(found.local)} local certificate entries, cache {found.cache_size} results "
        f"(LDAP {found.ldap_ttl} s, not found {found.negative_ttl} s), "
        f"DNSSEC {'required' if found.require_dnssec else 'not required'}"
    )
    for user in config.users:
        lines.append(f"user {user.name}: may send from {', '.join(str(a) for a in user.addresses)}")
    lines.append("listeners:")
    lines.append(_listener("submission", config.listeners.submission))
    lines.append(_listener("backbone", config.listeners.backbone))
    relay = config.relay
    route = (f"smarthost {relay.smarthost[0]}:{relay.smarthost[1]}" if relay.mode is RelayMode.SMARTHOST and
             relay.smarthost else f"MX, port {relay.port}")
    dns = f"{relay.dns_server[0]}:{relay.dns_server[1]}" if relay.dns_server else "system resolver"
    lines.append(f"relay: {route}, TLS {'required' if relay.require_tls else 'opportunistic'}, DNS {dns}")
    url = config.storage.url or default_url(config.path.parent)
    shown = url.split("@", 1)[-1] if "@" in url else url  # never print a password of the URL
    lines.append(f"storage: {shown}" + (f", spool {config.storage.spool_dir}" if config.storage.spool_dir else ""))
    retry = config.queue.retry
    lines.append(
        f"queue: retry after {retry.initial.total_seconds():g} s x{retry.factor:g} up to "
        f"{retry.maximum.total_seconds():g} s, lifetime {retry.lifetime.total_seconds():g} s, "
        f"lease {config.queue.lease:g} s, {config.queue.workers} workers"
    )
    notes = config.notifications
    lines.append(
        f"notifications: MDNs {'sent' if notes.send_mdn else 'not sent'} for received messages; "
        f"tracking timeout {notes.timeout:g} s; processed MDNs "
        f"{'consumed' if notes.consume_processed else 'forwarded to the edge'}"
    )
    return "\n".join(lines)


@click.group("config")
def config_group() -> None:
    """Check the configuration file."""


@config_group.command("check")
@click.argument("path", metavar="[FILE]", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-c", "--config", "config_path", metavar="FILE", default=None, type=click.Path(exists=True, dir_okay=False),
    help="The configuration file (as for the other commands); or give FILE as the argument.",
)
@fail_cleanly
def config_check(path: str | None, config_path: str | None) -> None:
    """Validate FILE and print a summary: every setting and value, certificates and their private keys or
    PKCS#12 passphrases, trust anchor files and TLS files. Nothing is fetched or started.

    Exit status: 0 valid (warnings on stderr), 1 invalid (one line on stderr), 2 usage (a FILE that does not
    exist, as for every command's file arguments).
    """
    if path is not None and config_path is not None and path != config_path:
        raise click.UsageError("give the configuration file once: as FILE or with -c/--config")
    chosen = path if path is not None else config_path
    if chosen is None:
        raise click.UsageError("give the configuration file: FILE or -c/--config FILE")
    config = load_config(chosen)
    check_config(config, os.environ)
    click.echo(summary(config))
    for warning in config_warnings(config):
        click.echo(f"warning: {warning}", err=True)
