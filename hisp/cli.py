"""The ``hisp`` command: the only reader of argv and the environment.

Exit status: 0 success, 1 failure of the operation (the reason on one stderr line), 2 usage errors.

Commands so far:

* ``hisp ca init`` / ``hisp ca issue``: a development PKI (never for production keys).
* ``hisp message outgoing`` / ``hisp message incoming``: run the security agent on one message.
* ``hisp trust bundle show`` / ``hisp trust bundle fetch``: inspect, download and verify a trust bundle.
* ``hisp cert validate``: an explained trust decision on one certificate (exit 0 trusted, 1 not trusted).
* The gateway and publishing commands of :mod:`hisp.commands` (``dns``, ``ldap``, ``discover``, ``config``,
  ``serve``, ``demo``, ``user``, ``messages``, ``track``), imported only when used (:class:`LazyGroup`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from hisp import __version__
from hisp.adapters import http
from hisp.adapters.bundles import DEFAULT_TIMEOUT, write_atomically, write_through_special
from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.addresses import DirectAddress, parse_address_list
from hisp.commands.common import (
    at_option,
    bundle_anchors,
    certificates_from,
    fail_cleanly,
    iso_option,
    parse_time,
    policy_option,
    read_bundle_source,
    read_small,
    timeout_option,
)
from hisp.core import devca, mime
from hisp.core.agent import SecurityAgent, StaticAnchors
from hisp.core.bundles import DEFAULT_MAX_BUNDLE_BYTES, TrustBundle, describe_anchor, parse_bundle
from hisp.core.certs import Certificate, Credential, load_credential
from hisp.core.policy import (
    ContentCipher,
    DigestAlgorithm,
    Direction,
    KeyTransport,
    RevocationMode,
    policy_from_name,
)
from hisp.core.trust import TrustAnchor, TrustStore, TrustVerdict
from hisp.core.trust import validate as validate_trust
from hisp.errors import AddressError, CertificateError, ConfigError, PolicyViolation, TrustError

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

# Files an operator points us at are certificates and keys: refuse anything absurdly large.


def _password_bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


#: The commands that live in :mod:`hisp.commands`, imported only when used: the gateway's modules pull in
#: SQLAlchemy, Alembic, aiosmtpd and aiosmtplib, which would make every ``hisp`` invocation start slowly.
LAZY_COMMANDS: Mapping[str, str] = {
    "dns": "hisp.commands.publish:dns_group",
    "ldap": "hisp.commands.publish:ldap_group",
    "discover": "hisp.commands.discover:discover",
    "config": "hisp.commands.config:config_group",
    "serve": "hisp.commands.serve:serve",
    "demo": "hisp.commands.demo:demo",
    "user": "hisp.commands.users:user_group",
    "messages": "hisp.commands.messages:messages_group",
    "track": "hisp.commands.track:track",
}


class LazyGroup(click.Group):
    """A click group whose commands named in :data:`LAZY_COMMANDS` are imported on first use.

    ``hisp --help`` still lists them all (their short help needs the import, which happens then).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, sorted: the ones defined here and the lazy ones."""
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command ``cmd_name``, importing its module the first time; ``None`` when there is no such command."""
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hisp")
def main() -> None:
    """hisp: a Direct Secure Messaging HISP."""


# -- development PKI ---------------------------------------------------------------------------


@main.group()
def ca() -> None:
    """Development CA (test certificates only)."""


@ca.command("init")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--name", default="hisp Development CA", show_default=True, help="CA common name.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500), help="Validity.")
@click.option(
    "--passphrase", envvar="HISP_CA_PASSPHRASE", default=None, help="Encrypt ca.key with it (env HISP_CA_PASSPHRASE)."
)
@click.option("--force", is_flag=True, help="Replace an existing CA (certificates it issued stop chaining).")
@fail_cleanly
def ca_init(out_dir: str, name: str, days: int, passphrase: str | None, force: bool) -> None:
    """Create a self-signed CA: writes OUT/ca.pem and OUT/ca.key (PKCS#8 PEM, mode 0600)."""
    out = Path(out_dir)
    _refuse_overwrite([out / "ca.pem", out / "ca.key"], force)
    out.mkdir(parents=True, exist_ok=True)
    issued = devca.create_ca(name, at=datetime.now(UTC), days=days)
    (out / "ca.pem").write_bytes(issued.certificate.to_pem())
    _write_private(out / "ca.key", _key_pem(issued.credential, passphrase))
    click.echo(f"CA {issued.certificate.subject} -> {out / 'ca.pem'}, {out / 'ca.key'}")
    click.echo(f"sha256 {issued.certificate.fingerprint_sha256}")


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    """Never replace a key silently: an operator's CA or user key is not recreatable."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exists: give --force to replace it")


def _key_pem(credential: Credential, passphrase: str | None) -> bytes:
    from hisp.core.certs import private_key_to_pem

    return private_key_to_pem(credential.private_key, _password_bytes(passphrase))


@ca.command("issue")
@click.option(
    "--ca",
    "ca_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="CA directory (ca.pem, ca.key).",
)
@click.option(
    "--ca-passphrase", envvar="HISP_CA_PASSPHRASE", default=None, help="Passphrase of ca.key (env HISP_CA_PASSPHRASE)."
)
@click.option("--address", default=None, help="Direct address: an address-bound certificate.")
@click.option("--domain", default=None, help="Health domain: a domain-bound certificate.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option(
    "--usage",
    type=click.Choice([u.value for u in devca.KeyUsagePreset]),
    default="dual",
    show_default=True,
    help="dual: digitalSignature+keyEncipherment; or a single-use certificate.",
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 36500), help="Validity in days.")
@click.option("--not-before", default=None, callback=iso_option, help="ISO 8601 start of validity.")
@click.option("--not-after", default=None, callback=iso_option, help="ISO 8601 end of validity.")
@click.option("--crl-url", default=None, help="CRL distribution point (HTTP URL).")
@click.option("--aia-url", default=None, help="AIA caIssuers URL.")
@click.option("--name", "basename", default=None, help="File base name (default: the address or domain).")
@click.option(
    "--passphrase",
    envvar="HISP_KEY_PASSPHRASE",
    default=None,
    help="Encrypt the key with it (env HISP_KEY_PASSPHRASE).",
)
@click.option("--force", is_flag=True, help="Replace existing files of the same name.")
@fail_cleanly
def ca_issue(
    ca_dir: str,
    ca_passphrase: str | None,
    address: str | None,
    domain: str | None,
    out_dir: str,
    usage: str,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
    crl_url: str | None,
    aia_url: str | None,
    basename: str | None,
    passphrase: str | None,
    force: bool,
) -> None:
    """Issue an address-bound or domain-bound certificate: writes OUT/BASENAME.pem and OUT/BASENAME.key."""
    if (address is None) == (domain is None):
        raise click.UsageError("give exactly one of --address and --domain")
    if address is not None:
        address = str(DirectAddress.parse(address))
    if domain is not None:
        from hisp.addresses import HealthDomain

        domain = str(HealthDomain.parse(domain))
    ca_path = Path(ca_dir)
    ca_credential = _load_credential(
        str(ca_path / "ca.pem"),
        str(ca_path / "ca.key"),
        ca_passphrase,
        cert_option="--ca",
        key_option="--ca",
        password_option="--ca-passphrase",
    )
    issued = devca.issue_certificate(
        devca.Issued(ca_credential),
        at=datetime.now(UTC),
        address=address,
        domain=domain,
        usage=devca.KeyUsagePreset(usage),
        days=days,
        not_before=not_before,
        not_after=not_after,
        crl_url=crl_url,
        aia_url=aia_url,
    )
    out = Path(out_dir)
    base = basename or address or domain
    assert base is not None
    _refuse_overwrite([out / f"{base}.pem", out / f"{base}.key"], force)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{base}.pem").write_bytes(issued.certificate.to_pem())
    _write_private(out / f"{base}.key", _key_pem(issued.credential, passphrase))
    click.echo(f"{issued.certificate.describe()} -> {out / (base + '.pem')}, {out / (base + '.key')}")


# -- the security agent on one message -------------------------------------------------------------


@main.group()
def message() -> None:
    """Seal or open one Direct message (debugging)."""


def _load_credential(
    cert: str, key: str | None, password: str | None, *, cert_option: str, key_option: str, password_option: str
) -> Credential:
    """Our certificate and key (or a PKCS#12 file), with errors that name the options to fix.

    :raises click.UsageError: no key option for a certificate that is not PKCS#12 (exit 2).
    :raises CertificateError: unreadable, mismatched or wrongly protected files (exit 1).
    """
    cert_data = read_small(cert, cert_option)
    key_data = read_small(key, key_option) if key else None
    if key_data is None and not _looks_like_pkcs12(cert_data):
        raise click.UsageError(f"{key_option} is required unless {cert_option} names a PKCS#12 file")
    secret = _password_bytes(password)
    try:
        if key_data is None and secret is None:
            # PKCS#12 files of the Java RI and of many tools use the empty password.
            try:
                return load_credential(cert_data, None, b"")
            except CertificateError as exc:
                if "password" not in exc.message:
                    raise
                raise CertificateError(f"{cert} is protected: give its password with {password_option}") from None
        return load_credential(cert_data, key_data, secret)
    except CertificateError as exc:
        if "password is needed" in exc.message:
            raise CertificateError(f"{key}: the key is encrypted: give its passphrase with {password_option}") from None
        where = f"{cert_option} {cert}" + (f", {key_option} {key}" if key else "")
        raise CertificateError(f"{where}: {exc.message}") from None


def _looks_like_pkcs12(data: bytes) -> bool:
    """A DER PFX (a SEQUENCE whose first element is INTEGER 3), not a certificate or PEM text."""
    try:
        from asn1crypto import pkcs12

        pfx = pkcs12.Pfx.load(data)
        return bool(pfx["version"].native == "v3" and pfx["auth_safe"]["content_type"].native)
    except Exception:  # any parse failure: not PKCS#12
        return False


def _load_our_credentials(cert: str, key: str | None, password: str | None) -> list[Credential]:
    return [
        _load_credential(cert, key, password, cert_option="--cert", key_option="--key", password_option="--password")
    ]


def _read_input(stream: BinaryIO, limit: int) -> bytes:
    """The message to process, at most ``limit`` bytes.

    :raises ConfigError: empty input, or input over the limit.
    """
    data = stream.read(limit + 1)
    if not data:
        name = getattr(stream, "name", "<stdin>")
        raise ConfigError(f"empty input: no message in {name}")
    if len(data) > limit:
        raise ConfigError(f"input exceeds the message size limit of {limit} bytes")
    return data


def _credential_options(whose: str) -> Callable[[F], F]:
    """--cert, --key and --password: one credential of ours (PEM/DER certificate and key, or PKCS#12)."""

    def decorate(func: F) -> F:
        func = click.option(
            "--password",
            envvar="HISP_KEY_PASSPHRASE",
            default=None,
            help="Key or PKCS#12 password (env HISP_KEY_PASSPHRASE).",
        )(func)
        func = click.option(
            "--key", default=None, type=click.Path(exists=True, dir_okay=False), help=f"{whose} private key."
        )(func)
        return click.option(
            "--cert",
            required=True,
            type=click.Path(exists=True, dir_okay=False),
            help=f"{whose} certificate, or a PKCS#12 file (then omit --key).",
        )(func)

    return decorate


@message.command("outgoing")
@_credential_options("The sender's")
@click.option(
    "--to-cert",
    "to_certs",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A recipient certificate (repeat for each).",
)
@click.option(
    "--cipher",
    type=click.Choice([c.value for c in ContentCipher]),
    default=None,
    help="Content encryption [default: the policy's, aes128-cbc].",
)
@click.option(
    "--key-transport",
    type=click.Choice([k.value for k in KeyTransport]),
    default=None,
    help="RSA key transport [default: the policy's: rsa-oaep (SHA-256) for direct-1.3, rsa-pkcs1 for direct-1.2].",
)
@click.option(
    "--digest",
    type=click.Choice(["sha256", "sha384", "sha512"]),
    default=None,
    help="Signature digest [default: sha256].",
)
@policy_option("Security policy preset: its default algorithms (direct-1.2 sends RSA PKCS#1 v1.5 key transport).")
@at_option("time to seal at")
@click.option(
    "-i", "input_file", type=click.File("rb"), metavar="FILE", default="-", help="Plain message (default stdin)."
)
@click.option("-o", "output_path", metavar="FILE", default="-", help="Direct message out (default stdout).")
@fail_cleanly
def message_outgoing(
    cert: str,
    key: str | None,
    password: str | None,
    to_certs: Sequence[str],
    cipher: str | None,
    key_transport: str | None,
    digest: str | None,
    policy_name: str,
    at_text: str | None,
    input_file: BinaryIO,
    output_path: str,
) -> None:
    """Sign, wrap and encrypt a plain RFC 5322 message for its To/Cc recipients."""
    policy = policy_from_name(policy_name)
    changes: dict[str, object] = {}
    if cipher:
        changes["cipher"] = ContentCipher(cipher)
    if key_transport:
        changes["key_transport"] = KeyTransport(key_transport)
    if digest:
        changes["digest"] = DigestAlgorithm.from_name(digest)
    if changes:
        policy = policy.with_options(**changes)
    at = parse_time(at_text)
    agent = SecurityAgent(policy=policy)
    sender = _load_our_credentials(cert, key, password)
    certificates: list[Certificate] = []
    for path in to_certs:
        certificates.extend(certificates_from(path, "--to-cert"))
    plain = _read_input(input_file, agent.limits.max_message_bytes)
    entity = mime.parse_entity(plain, agent.limits)
    addresses = parse_address_list(entity.header_all("To") + entity.header_all("Cc"))
    if not addresses:
        raise ConfigError("the message has no To or Cc recipient")
    recipients = {address: [c for c in certificates if c.binding_for(address) is not None] for address in addresses}
    result = agent.process_outgoing(plain, sender=sender, recipients=recipients, at=at)
    for rejected in result.rejected:
        click.echo(f"hisp: not sent to {rejected.address}: {rejected.reason} ({rejected.status})", err=True)
    _write_output(output_path, result.message)


@message.command("incoming")
@_credential_options("The recipient's")
@click.option(
    "--anchor",
    "anchor_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A trust anchor (repeat for each).",
)
@policy_option("direct-1.3 refuses SHA-1; direct-1.2 accepts SHA-1 signatures and SHA-1-signed certificates.")
@at_option("time of receipt")
@click.option("--explain", is_flag=True, help="Print the verdict (signer, chain, anchor) to stderr.")
@click.option(
    "-i", "input_file", type=click.File("rb"), metavar="FILE", default="-", help="Direct message (default stdin)."
)
@click.option("-o", "output_path", metavar="FILE", default="-", help="Plain message out (default stdout).")
@fail_cleanly
def message_incoming(
    cert: str,
    key: str | None,
    password: str | None,
    anchor_paths: Sequence[str],
    policy_name: str,
    at_text: str | None,
    explain: bool,
    input_file: BinaryIO,
    output_path: str,
) -> None:
    """Decrypt, verify and unwrap a Direct message; on any security failure exit 1 and write nothing."""
    policy = policy_from_name(policy_name)
    at = parse_time(at_text)
    agent = SecurityAgent(policy=policy)
    credentials = _load_our_credentials(cert, key, password)
    anchors = tuple(cert for path in anchor_paths for cert in certificates_from(path, "--anchor"))
    raw = _read_input(input_file, agent.limits.max_message_bytes)
    result = agent.process_incoming(raw, credentials=credentials, trust=StaticAnchors(anchors), at=at)
    if explain:
        click.echo(result.explain(), err=True)
    _write_output(output_path, result.message)


def _write_output(path: str, data: bytes) -> None:
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint="-o")
    try:
        if write_through_special(target, data):  # /dev/null, a FIFO: never renamed over
            return
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    if target.is_symlink():  # write what the link points to; the link stays a link
        target = Path(os.path.realpath(target))
    temporary = target.with_name(f".{target.name}.partial")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        temporary.replace(target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


# -- trust bundles -----------------------------------------------------------------------------


@main.group()
def trust() -> None:
    """Trust anchors and trust bundles."""


@trust.group("bundle")
def trust_bundle() -> None:
    """Trust bundles: PKCS#7 sets of anchors, signed or not (TB-1, TB-2)."""


_POLICY_OPTION = policy_option("Security policy for the bundle signature (direct-1.2 accepts SHA-1).")
_SIGNER_OPTION = click.option(
    "--signer",
    "signer_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Bundle signing certificate (repeat for each); the bundle must then be signed by one of them.",
)


def _is_url(text: str) -> bool:
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme and scheme not in ("http", "https"):
        raise click.BadParameter(f"only http and https URLs can be fetched, not {text!r}")
    return bool(scheme)


def _signers(paths: Sequence[str]) -> list[Certificate]:
    return [cert for path in paths for cert in certificates_from(path, "--signer")]


class _Progress:
    """The progress line of a download on stderr: rewritten in place on a terminal, once at the end otherwise."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received = 0
        self.total: int | None = None
        self.tty = sys.stderr.isatty()

    def line(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return f"hisp: {self.url}: {self.received} / {total} bytes"

    def __call__(self, received: int, total: int | None) -> None:
        self.received, self.total = received, total
        if self.tty:
            click.echo("\r" + self.line(), err=True, nl=False)

    def done(self) -> None:
        click.echo(("\r" if self.tty else "") + self.line(), err=True)


def _bundle_report(bundle: TrustBundle, at: datetime) -> dict[str, Any]:
    return {
        "source": bundle.source,
        "digest_sha256": bundle.digest,
        "signed": bundle.signed,
        "signature_verified": bundle.signer is not None,
        "signer": None if bundle.signer is None else describe_anchor(bundle.signer, at),
        "at": at.isoformat(),
        "anchors": [describe_anchor(anchor, at) for anchor in bundle.anchors],
        "metadata": bundle.metadata,
        "defects": list(bundle.defects),
    }


def _print_bundle(report: dict[str, Any]) -> None:
    count = len(report["anchors"])
    if not report["signed"]:
        signature = "unsigned"
    elif report["signer"] is None:
        signature = "signed (signature NOT verified: no --signer given)"
    else:
        signature = f"signed by {report['signer']['subject']} (verified)"
    click.echo(f"bundle {report['source']}: {count} anchor{'s' if count != 1 else ''}, {signature}")
    click.echo(f"sha256 {report['digest_sha256']}")
    for anchor in report["anchors"]:
        state = "EXPIRED" if anchor["expired"] else "NOT YET VALID" if anchor["not_yet_valid"] else "valid"
        click.echo(f"anchor {anchor['subject']}")
        click.echo(f"  sha256 {anchor['fingerprint_sha256']}")
        click.echo(f"  {anchor['not_before']} .. {anchor['not_after']} ({state} at {report['at']})")
    for defect in report["defects"]:
        click.echo(f"note: {defect}")


@trust_bundle.command("show")
@click.argument("source", metavar="FILE_OR_URL")
@_SIGNER_OPTION
@_POLICY_OPTION
@at_option("time to judge validity at")
@timeout_option("for the whole download", default=DEFAULT_TIMEOUT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@fail_cleanly
def trust_bundle_show(
    source: str, signer_paths: Sequence[str], policy_name: str, at_text: str | None, timeout: float, as_json: bool
) -> None:
    """List the anchors of a bundle file or URL, and whether and by whom it is signed."""
    at = parse_time(at_text)
    policy = policy_from_name(policy_name)
    signers = _signers(signer_paths)
    data = read_bundle_source(source, timeout=timeout, option="FILE_OR_URL")
    bundle = parse_bundle(data, source=source, signing_certificates=signers, at=at, policy=policy)
    report = _bundle_report(bundle, at)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_bundle(report)


@trust_bundle.command("fetch")
@click.argument("url")
@click.option("--out", "out_path", required=True, metavar="FILE", help="Where to write the verified bundle.")
@_SIGNER_OPTION
@_POLICY_OPTION
@at_option("time to verify at")
@timeout_option("for the whole download", default=DEFAULT_TIMEOUT)
@fail_cleanly
def trust_bundle_fetch(
    url: str, out_path: str, signer_paths: Sequence[str], policy_name: str, at_text: str | None, timeout: float
) -> None:
    """Download a bundle, verify it, and write it to --out atomically; on any failure write nothing."""
    if not _is_url(url):
        raise click.BadParameter(f"not an http or https URL: {url!r}", param_hint="URL")
    target = Path(out_path)
    if target.is_dir():
        raise click.BadParameter(f"{out_path} is a directory", param_hint="--out")
    at = parse_time(at_text)
    policy = policy_from_name(policy_name)
    signers = _signers(signer_paths)
    progress = _Progress(url)
    result = http.fetch(url, timeout=timeout, max_bytes=DEFAULT_MAX_BUNDLE_BYTES, progress=progress)
    progress.done()
    assert result.body is not None  # no validators sent: never a 304
    bundle = parse_bundle(result.body, source=url, signing_certificates=signers, at=at, policy=policy)
    write_atomically(target, result.body)
    count = len(bundle.anchors)
    if not bundle.signed:
        signature = "unsigned"
    elif bundle.signer is None:
        signature = "signature not verified"
    else:
        signature = f"signed by {bundle.signer.subject}"
    click.echo(f"{count} anchor{'s' if count != 1 else ''}, {signature}, sha256 {bundle.digest} -> {target}")


# -- certificates --------------------------------------------------------------------------------


@main.group()
def cert() -> None:
    """Certificates: explained trust decisions."""


@cert.command("validate")
@click.argument("cert_path", metavar="CERT", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--anchor",
    "anchor_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Trust anchor file, PEM or DER (repeat for each).",
)
@click.option("--bundle", "bundle_sources", multiple=True, metavar="FILE_OR_URL", help="Trust bundle (repeat).")
@click.option(
    "--bundle-signer",
    "bundle_signer_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Bundle signing certificate (repeat for each); every --bundle must then be signed by one of them "
    "(without it, signed bundles are used unverified).",
)
@click.option("--address", default=None, help="Direct address the certificate must be bound to (AS-2, AS-3).")
@click.option(
    "--direction",
    type=click.Choice(["incoming", "outgoing"]),
    default="incoming",
    show_default=True,
    help="incoming: a sender's signing certificate; outgoing: a recipient's encryption certificate.",
)
@policy_option("Security policy preset (direct-1.2 also accepts SHA-1).")
@click.option(
    "--revocation",
    type=click.Choice([m.value for m in RevocationMode]),
    default="soft",
    show_default=True,
    help="hard: an unreachable CRL/OCSP source rejects; soft: accepted with a warning; off: not checked.",
)
@at_option("validation time")
@timeout_option("per CRL, OCSP, AIA or bundle request")
@click.option("--explain", is_flag=True, help="Print the verdict: chain, anchor, revocation, rule.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout.")
@fail_cleanly
def cert_validate(
    cert_path: str,
    anchor_paths: Sequence[str],
    bundle_sources: Sequence[str],
    bundle_signer_paths: Sequence[str],
    address: str | None,
    direction: str,
    policy_name: str,
    revocation: str,
    at_text: str | None,
    timeout: float,
    explain: bool,
    as_json: bool,
) -> None:
    """Decide whether CERT is trusted by the given anchors and bundles; exit 0 if trusted, 1 if not.

    Further certificates in CERT after the first serve as intermediates. Missing intermediates are fetched
    through AIA caIssuers; CRLs and OCSP are consulted unless --revocation off. With --bundle-signer, a
    bundle that is unsigned or not signed by one of those certificates is refused (exit 1).
    """
    if not anchor_paths and not bundle_sources:
        raise click.UsageError("give at least one --anchor or --bundle")
    if bundle_signer_paths and not bundle_sources:
        raise click.UsageError("--bundle-signer needs a --bundle")
    at = parse_time(at_text)
    try:
        bound = DirectAddress.parse(address) if address is not None else None
    except AddressError as exc:
        raise click.BadParameter(exc.message, param_hint="--address") from None
    leaf, *intermediates = certificates_from(cert_path, "CERT")
    bundle_signers = [c for path in bundle_signer_paths for c in certificates_from(path, "--bundle-signer")]
    anchors = [TrustAnchor(c, path) for path in anchor_paths for c in certificates_from(path, "--anchor")] + [
        TrustAnchor(c, f"bundle {source}")
        for source in bundle_sources
        for c in bundle_anchors(
            source, timeout=timeout, at=at, policy=policy_from_name(policy_name), signers=bundle_signers
        )
    ]
    way = Direction(direction)
    store = TrustStore(
        domain=bound.domain if bound is not None else None,
        incoming=tuple(anchors) if way is Direction.INCOMING else (),
        outgoing=tuple(anchors) if way is Direction.OUTGOING else (),
        revocation=RevocationMode(revocation),
        policy=policy_from_name(policy_name),
    )
    fetcher = BoundedFetcherBackend(timeout=timeout, total_timeout=3 * timeout, failure_ttl=0)
    try:
        verdict = validate_trust(
            leaf, store=store, direction=way, intermediates=intermediates, at=at, address=bound, revocation=fetcher
        )
    except (TrustError, PolicyViolation) as exc:
        failed = exc.context.get("verdict")
        if isinstance(failed, TrustVerdict):
            if as_json:
                click.echo(json.dumps(failed.to_json(), indent=2))
            elif explain:
                click.echo(failed.explain())
        raise
    if as_json:
        click.echo(json.dumps(verdict.to_json(), indent=2))
    elif explain:
        click.echo(verdict.explain())
    else:
        assert verdict.anchor is not None
        click.echo(f"trusted: {leaf.subject} -> {verdict.anchor.certificate.subject} ({verdict.revocation.describe()})")
    for warning in verdict.warnings:
        click.echo(f"hisp: warning: {warning}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
