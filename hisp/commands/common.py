"""What every ``hisp`` sub-command shares: clean failures and the ``--at`` time.

Exit status everywhere: 0 success, 1 failure of the operation (one stderr line says why), 2 usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from hisp.adapters import http
from hisp.core.bundles import DEFAULT_MAX_BUNDLE_BYTES, parse_bundle
from hisp.core.certs import Certificate, load_certificates
from hisp.core.policy import PRESETS, SecurityPolicy
from hisp.errors import CertificateError, ConfigError, HispError

__all__ = [
    "at_option",
    "bundle_anchors",
    "certificates_from",
    "fail_cleanly",
    "iso_option",
    "parse_time",
    "policy_option",
    "printable",
    "read_bundle_source",
    "read_small",
    "timeout_option",
]


def printable(text: str | None) -> str:
    """Text from the network (a partner's certificate names, DNS data, Message-IDs), safe for a terminal: control
    characters escaped (``\\x1b``, ``\\r``); ``"-"`` for None."""
    if text is None:
        return "-"
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)

# Files an operator points us at are certificates and keys: refuse anything absurdly large (bytes).
MAX_CREDENTIAL_FILE = 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(func: F) -> F:
    """Turn a HispError or an OSError into one stderr line and exit status 1 (never a traceback).

    :param func: a click command callback.
    :returns: the wrapped callback.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HispError as exc:
            click.echo(f"hisp: {exc.message}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"hisp: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def parse_time(value: str | None, option: str = "--at") -> datetime:
    """An ISO 8601 time from the command line, aware; no zone means UTC; ``None`` means now.

    :param value: e.g. ``"2026-11-30T12:00:00"`` or ``"2026-11-30T07:00:00-05:00"``.
    :param option: the option's name, for the usage error.
    :returns: an aware datetime.
    :raises click.BadParameter: not ISO 8601 (exit status 2).
    """
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=option) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A click callback parsing an optional ISO 8601 option (``None`` stays ``None``)."""
    if value is None:
        return None
    return parse_time(value, "/".join(param.opts) if param.opts else "--at")


def read_small(path: str, option: str) -> bytes:
    """Read a certificate or key file named by ``option``; refuse empty and oversized files.

    :param path: the file.
    :param option: the option that named it, for the message (``"--anchor"``).
    :returns: its bytes.
    :raises ConfigError: empty or larger than :data:`MAX_CREDENTIAL_FILE` bytes, naming the option and file.
    :raises OSError: it cannot be read.
    """
    data = Path(path).read_bytes()
    if not data:
        raise ConfigError(f"{option} {path}: the file is empty")
    if len(data) > MAX_CREDENTIAL_FILE:
        raise ConfigError(f"{option} {path}: {len(data)} bytes is too large for a certificate or key file")
    return data


def certificates_from(path: str, option: str) -> list[Certificate]:
    """Every certificate in a PEM, DER or PKCS#7 file named by ``option``.

    :raises CertificateError: not certificates, with the option and file in the message.
    :raises ConfigError: empty or oversized file.
    """
    try:
        return load_certificates(read_small(path, option))
    except CertificateError as exc:
        raise CertificateError(f"{option} {path}: {exc.message}") from None


def read_bundle_source(source: str, *, timeout: float, option: str = "--bundle") -> bytes:
    """A trust bundle's bytes from a file or an http(s) URL, at most the bundle size limit.

    :param source: a path or an ``http://`` / ``https://`` URL.
    :param timeout: seconds for the whole fetch.
    :param option: the option that named it, for usage errors.
    :returns: the bytes.
    :raises click.BadParameter: another URL scheme, or a file that does not exist or is a directory (exit
        status 2, as for a missing ``--anchor`` file).
    :raises ConfigError: the file is over the limit.
    :raises OSError: the file exists but cannot be read.
    :raises DiscoveryUnavailable: the server did not answer (from :func:`hisp.adapters.http.fetch`).
    :raises InputError: the server refused or sent too much.

    Spec: TB-3 (bounded fetch).
    """
    if "://" in source:
        if not source.lower().startswith(("http://", "https://")):
            raise click.BadParameter(f"only http and https URLs can be fetched, not {source!r}", param_hint=option)
        result = http.fetch(source, timeout=timeout, max_bytes=DEFAULT_MAX_BUNDLE_BYTES)
        return result.body or b""  # no validators were sent: never a 304
    try:
        with open(source, "rb") as handle:
            data = handle.read(DEFAULT_MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise click.BadParameter(f"File {source!r} does not exist.", param_hint=f"'{option}'") from None
    except IsADirectoryError:
        raise click.BadParameter(f"File {source!r} is a directory.", param_hint=f"'{option}'") from None
    if len(data) > DEFAULT_MAX_BUNDLE_BYTES:
        raise ConfigError(f"{source}: larger than the limit of {DEFAULT_MAX_BUNDLE_BYTES} bytes for a trust bundle")
    return data


def bundle_anchors(
    source: str,
    *,
    timeout: float,
    at: datetime,
    policy: SecurityPolicy,
    signers: Sequence[Certificate] = (),
) -> list[Certificate]:
    """The anchors of a bundle file or URL; with ``signers`` it must be signed by one of them (TB-2).

    Without ``signers`` a signed bundle's anchors are used unverified (the caller says so to the user).

    :raises TrustError: a required signature is missing, bad or by another signer.
    :raises MessageFormatError: not a bundle.
    """
    bundle = parse_bundle(
        read_bundle_source(source, timeout=timeout),
        source=source,
        signing_certificates=signers,
        require_signature=bool(signers),
        at=at,
        policy=policy,
    )
    return list(bundle.anchors)


def policy_option(help: str) -> Callable[[F], F]:
    """``--policy direct-1.3|direct-1.2`` (default direct-1.3), passed as ``policy_name``; ``help`` says what for."""
    return click.option(
        "--policy",
        "policy_name",
        type=click.Choice(sorted(PRESETS)),
        default="direct-1.3",
        show_default=True,
        help=help,
    )


def at_option(what: str) -> Callable[[F], F]:
    """``--at ISO8601``, passed as ``at_text`` (parse it with :func:`parse_time`); ``what`` names the moment."""
    return click.option("--at", "at_text", default=None, help=f"ISO 8601 {what} (default now; no zone means UTC).")


def timeout_option(what: str, default: float = 5.0) -> Callable[[F], F]:
    """``--timeout SECONDS`` (at least 0.1), passed as ``timeout``; ``what`` says what it bounds."""
    return click.option(
        "--timeout", default=default, show_default=True, type=click.FloatRange(min=0.1), help=f"Seconds {what}."
    )
