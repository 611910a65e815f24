"""Delivery of plain (decrypted, verified) messages to edge systems: SMTP, LMTP or a Maildir.

An endpoint is a URL (:func:`parse_endpoint`):

- ``smtp://host:port``: an SMTP server (aiosmtplib; STARTTLS when offered, see
  :class:`~hisp.adapters.smtp_relay.SmtpSession`);
- ``lmtp://host:port`` or ``lmtp:/path/socket``: an LMTP server over TCP or a Unix socket, with one reply per
  recipient after DATA (RFC 2033 section 4.2). aiosmtplib has no LMTP, so a small client is here;
- ``maildir:/path``: a Maildir: the message is written to ``tmp/`` under a unique name, fsynced, renamed into
  ``new/``, and ``new/`` is fsynced, so that a 2xx means the bytes are on disk.

Results per recipient, as for the relay: 2xx delivered, 4xx / connection failure / timeout / a Maildir write
that failed -> :class:`~hisp.errors.TransientDeliveryError`, 5xx -> :class:`~hisp.errors.PermanentDeliveryError`.

Spec: RFC 5321; RFC 2033 (LMTP); RFC 3207; the Maildir format (D. J. Bernstein, "Using maildir format").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hisp.adapters.smtp_relay import SmtpSession, _SessionFailure
from hisp.core.smtp_policy import DeliveryOutcome, RecipientResult, classify_reply
from hisp.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError

__all__ = ["EdgeDelivery", "Endpoint", "EndpointKind", "parse_endpoint"]


class EndpointKind(enum.Enum):
    """How an edge system receives."""

    SMTP = "smtp"
    LMTP = "lmtp"
    MAILDIR = "maildir"


@dataclass(frozen=True)
class Endpoint:
    """A delivery endpoint.

    :ivar kind: SMTP, LMTP or Maildir.
    :ivar host: host for SMTP/LMTP over TCP, else None.
    :ivar port: port for SMTP/LMTP over TCP, else None.
    :ivar path: the Unix socket (LMTP) or the Maildir directory, else None.
    :ivar url: the URL as configured.
    """

    kind: EndpointKind
    host: str | None = None
    port: int | None = None
    path: str | None = None
    url: str = ""

    def __str__(self) -> str:
        return self.url


def parse_endpoint(url: str) -> Endpoint:
    """Parse ``smtp://host:port``, ``lmtp://host:port``, ``lmtp:/path/socket`` or ``maildir:/path``.

    :param url: the endpoint URL from the configuration.
    :returns: the endpoint.
    :raises ConfigError: an unknown scheme, a missing host, port or path, or a relative path.

    Spec: RFC 3986 (URI syntax); RFC 2033 section 5 (LMTP is not on port 25).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        kind = EndpointKind(scheme)
    except ValueError:
        raise ConfigError(f"delivery endpoint {url!r}: scheme must be smtp, lmtp or maildir") from None
    if kind is EndpointKind.MAILDIR or (kind is EndpointKind.LMTP and not parts.netloc):
        path = parts.path
        if not path.startswith("/") or parts.netloc:
            raise ConfigError(f"delivery endpoint {url!r}: give an absolute path ({scheme}:/path)")
        return Endpoint(kind, path=path, url=url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"delivery endpoint {url!r}: not a port number") from None
    if not parts.hostname or port is None:
        raise ConfigError(f"delivery endpoint {url!r}: give {scheme}://host:port")
    if parts.path not in ("", "/"):
        raise ConfigError(f"delivery endpoint {url!r}: no path after host:port")
    return Endpoint(kind, host=parts.hostname, port=port, url=url)


# -- LMTP ----------------------------------------------------------------------------------------------

_MAX_REPLY_LINES = 100
_MAX_LINE = 2048
_PERIOD = re.compile(rb"(?m)^\.")


class _LmtpError(Exception):
    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


async def _read_reply(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str]:
    """One (possibly multi-line) reply: code and text lines joined by a space (RFC 5321 section 4.2.1)."""
    texts: list[str] = []
    for _ in range(_MAX_REPLY_LINES):
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise _LmtpError("connection closed by the server")
        if len(line) > _MAX_LINE or len(line) < 4 or not line[:3].isdigit() or line[3:4] not in (b" ", b"-", b"\r"):
            raise _LmtpError(f"malformed reply {line[:80]!r}")
        texts.append(line[4:].decode("utf-8", "replace").strip())
        if line[3:4] != b"-":
            return int(line[:3]), " ".join(t for t in texts if t)
    raise _LmtpError("reply too long")


async def _lmtp_send(
    endpoint: Endpoint,
    local_hostname: str,
    timeout: float,
    mail_from: str,
    recipients: Sequence[str],
    raw: bytes,
) -> tuple[RecipientResult, ...]:
    """One LMTP transaction: LHLO, MAIL, RCPT..., DATA, then one reply per accepted recipient (RFC 2033 4.2)."""
    label = endpoint.url
    try:
        if endpoint.path is not None:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(endpoint.path), timeout)
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), timeout)
    except (OSError, TimeoutError) as exc:
        raise _SessionFailure(f"{label}: cannot connect: {exc or type(exc).__name__}") from None

    async def command(line: str) -> tuple[int, str]:
        writer.write(line.encode("ascii") + b"\r\n")
        await writer.drain()
        return await _read_reply(reader, timeout)

    results: dict[str, RecipientResult] = {}
    try:
        try:
            code, text = await _read_reply(reader, timeout)
            if code != 220:
                raise _LmtpError(f"greeting {code} {text}", code)
            code, text = await command(f"LHLO {local_hostname}")
            if code != 250:
                raise _LmtpError(f"LHLO: {code} {text}", code)
            code, text = await command(f"MAIL FROM:<{mail_from}>")
            if code != 250:
                raise _LmtpError(f"MAIL: {code} {text}", code)
        except _LmtpError as exc:
            raise _SessionFailure(f"{label}: {exc.reason}", exc.code) from None
        except (OSError, TimeoutError) as exc:
            raise _SessionFailure(f"{label}: {type(exc).__name__}: {exc}") from None
        try:
            accepted: list[str] = []
            for rcpt in recipients:
                code, text = await command(f"RCPT TO:<{rcpt}>")
                if 200 <= code < 300:
                    accepted.append(rcpt)
                else:
                    results[rcpt] = _result(rcpt, code, text, label)
            if accepted:
                code, text = await command("DATA")
                if code != 354:
                    for rcpt in accepted:
                        results[rcpt] = _result(rcpt, code, text, label)
                else:
                    body = _PERIOD.sub(b"..", raw)
                    if not body.endswith(b"\r\n"):
                        body += b"\r\n"
                    writer.write(body + b".\r\n")
                    await writer.drain()
                    # RFC 2033 section 4.2: one reply per recipient that RCPT accepted, in RCPT order.
                    for rcpt in accepted:
                        code, text = await _read_reply(reader, timeout)
                        results[rcpt] = _result(rcpt, code, text, label)
            else:
                await command("RSET")
            await command("QUIT")
        except (_LmtpError, OSError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, _LmtpError) else f"{type(exc).__name__}: {exc}"
            for rcpt in recipients:
                if rcpt not in results:
                    text = f"{label}: {reason}"
                    results[rcpt] = RecipientResult(rcpt, TransientDeliveryError(text, recipient=rcpt), text, label)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
    return tuple(results[r] for r in recipients)


def _result(recipient: str, code: int, text: str, host: str) -> RecipientResult:
    reply = f"{code} {text}"
    outcome = classify_reply(code)
    if outcome is DeliveryOutcome.DELIVERED:
        return RecipientResult(recipient, None, reply, host)
    cls = TransientDeliveryError if outcome is DeliveryOutcome.TRANSIENT else PermanentDeliveryError
    return RecipientResult(recipient, cls(f"{host} said: {reply}", recipient=recipient, code=code), reply, host)


# -- Maildir -------------------------------------------------------------------------------------------

_COUNTER = itertools.count()


def _unique_name() -> str:
    """``<seconds>.M<microseconds>P<pid>Q<counter>R<random>.<host>``: unique per host (the Maildir rules)."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return (
        f"{int(now)}.M{int((now % 1) * 1_000_000)}P{os.getpid()}Q{next(_COUNTER)}R{os.urandom(8).hex()}.{host}"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _maildir_write(root: Path, raw: bytes) -> str:
    """Write ``raw`` into the Maildir ``root``; returns the file's path in ``new/``."""
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    name = _unique_name()
    tmp = root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(raw)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    final = root / "new" / name
    os.rename(tmp, final)
    _fsync_dir(root / "new")
    return str(final)


class EdgeDelivery:
    """Delivers plain messages to edge endpoints.

    :param session: SMTP settings for ``smtp://`` endpoints (STARTTLS when offered, timeouts, EHLO name).
    :param local_hostname: our LHLO name.
    :param timeout: seconds for an LMTP connection and for each reply.

    Spec: RFC 5321; RFC 2033; Maildir.
    """

    def __init__(
        self, *, session: SmtpSession | None = None, local_hostname: str = "localhost", timeout: float = 60.0
    ) -> None:
        if timeout <= 0:
            raise ConfigError("edge delivery timeout must be positive")
        self.session = session or SmtpSession(local_hostname=local_hostname, timeout=timeout)
        self.local_hostname = local_hostname
        self.timeout = timeout

    async def close(self) -> None:
        """QUIT the idle connections to ``smtp://`` endpoints kept for reuse (see :class:`SmtpSession`)."""
        await self.session.close()

    async def deliver(
        self, endpoint: Endpoint | str, mail_from: str, recipients: Sequence[str], raw: bytes
    ) -> tuple[RecipientResult, ...]:
        """Deliver ``raw`` for ``recipients`` to ``endpoint``.

        For a Maildir the message is written once, and every recipient gets the same result.

        :param endpoint: the endpoint or its URL.
        :param mail_from: the reverse-path (``""`` for the null one).
        :param recipients: the recipients this endpoint serves.
        :param raw: the message, CRLF line endings.
        :returns: one result per recipient, in order.
        :raises ConfigError: ``endpoint`` is a URL that does not parse.
        :raises ValueError: no recipients.

        Spec: RFC 5321 section 4.2.1; RFC 2033 section 4.2; Maildir (tmp -> fsync -> new).
        """
        if not recipients:
            raise ValueError("delivery needs at least one recipient")
        target = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
        label = target.url
        try:
            if target.kind is EndpointKind.MAILDIR:
                assert target.path is not None
                try:
                    written = await asyncio.to_thread(_maildir_write, Path(target.path), raw)
                except OSError as exc:
                    text = f"{label}: cannot write: {exc}"
                    return tuple(
                        RecipientResult(r, TransientDeliveryError(text, recipient=r, path=target.path), text, label)
                        for r in recipients
                    )
                return tuple(RecipientResult(r, None, f"250 2.0.0 written to {written}", label) for r in recipients)
            if target.kind is EndpointKind.LMTP:
                return await _lmtp_send(target, self.local_hostname, self.timeout, mail_from, recipients, raw)
            assert target.host is not None and target.port is not None
            return await self.session.send(target.host, target.port, target.host, mail_from, recipients, raw)
        except _SessionFailure as failure:
            if failure.code is not None and classify_reply(failure.code) is DeliveryOutcome.PERMANENT:
                return tuple(
                    RecipientResult(r, PermanentDeliveryError(failure.reason, recipient=r), failure.reason, label)
                    for r in recipients
                )
            return tuple(
                RecipientResult(r, TransientDeliveryError(failure.reason, recipient=r), failure.reason, label)
                for r in recipients
            )
