"""The SMTP listeners on aiosmtpd: submission for edge clients, backbone for peer HISPs.

Thin (DESIGN.md section 2): a listener checks the SMTP session (TLS, AUTH, sender, recipients, size, line
endings) and hands the exact bytes received (aiosmtpd's ``original_content``: dot-unstuffed, otherwise as
sent) with a :class:`SmtpEnvelope` to an injected async ``accept`` callback, which persists the message and
runs the inline security checks. The final reply to DATA is the callback's: this module never answers 250
unless the callback returned a 2xx reply; a :class:`~hisp.errors.HispError` it raises is answered with
:meth:`~hisp.errors.HispError.smtp_reply`, any other exception with ``451 4.3.0`` and no detail.

Two kinds (:class:`ListenerKind`):

- **submission** (edge clients, RFC 6409): STARTTLS required before anything but EHLO/NOOP/QUIT (RFC 3207
  section 4), AUTH PLAIN or LOGIN (RFC 4954) required before MAIL, checked by an injected
  :data:`Authenticator`; wrong credentials get ``535 5.7.8`` after a delay and one WARNING on the ``hisp.smtp``
  logger per attempt (``AUTH PLAIN failed from HOST:PORT for user 'NAME'``: the peer and the name tried, never
  the password); MAIL FROM and the From header must be among the user's addresses (``550 5.7.1``); RCPT to any
  valid address.
- **backbone** (peer HISPs, RFC 5321): STARTTLS offered, not required; no AUTH; RCPT only for hosted addresses
  (an injected predicate; ``550 5.1.1`` otherwise: no open relay, RFC 5321 section 7.1).

Both: SIZE advertised and enforced while receiving (``552 5.3.4``, data beyond the limit is discarded, RFC 1870),
text lines over 1000 octets (``500 5.5.2``, RFC 5321 section 4.5.3.1.6), bare LF or CR in the data refused
(``554 5.6.0``, RFC 5321 sections 2.3.8 and 4.1.1.4; aiosmtpd itself only ends DATA at CRLF.CRLF and keeps bare
LFs, which we refuse: no SMTP smuggling), a command timeout (idle seconds, RFC 5321 section 4.5.3.2.7), a
limit on concurrent connections (``421 4.7.0`` and close), at most :attr:`ListenerSettings.max_recipients`
RCPTs per message (``452 4.5.3``, RFC 5321 section 4.5.3.1.10).

Spec: RFC 5321; RFC 3207 (STARTTLS); RFC 4954 (AUTH); RFC 1870 (SIZE); RFC 6409 (submission); AS-13, AS-17.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from hisp.adapters.smtp_data import DataVerdict, bulk_reading_possible, read_data
from hisp.addresses import DirectAddress
from hisp.core.smtp_policy import (
    REPLIES,
    Reply,
    find_bare_line_ending,
    header_from_addresses,
    normalize_mailbox,
    parse_reply,
    sender_allowed,
    verify_password,
)
from hisp.errors import AddressError, ConfigError, HispError

__all__ = [
    "Accept",
    "Authenticator",
    "EdgeUser",
    "HostedPredicate",
    "ListenerKind",
    "ListenerSettings",
    "SmtpEnvelope",
    "SmtpListener",
    "StaticAuthenticator",
    "server_tls_context",
]

_log = logging.getLogger("hisp.smtp")


class _QuietLoginData(logging.Filter):
    """Drop aiosmtpd's "Session.login_data is deprecated" warning: aiosmtpd's own AUTH code triggers it on
    every login (not ours to fix), and it would otherwise show up in every operator's log and in the demo."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_QuietLoginData())


class ListenerKind(enum.Enum):
    """Which listener a message came through."""

    SUBMISSION = "submission"  # edge clients: STARTTLS + AUTH required (RFC 6409)
    BACKBONE = "backbone"  # peer HISPs: STARTTLS offered, no AUTH, hosted recipients only (RFC 5321)


@dataclass(frozen=True)
class EdgeUser:
    """An SMTP AUTH user of the submission listener.

    :ivar name: the AUTH user name (authentication identity, RFC 4954).
    :ivar password_hash: made by :func:`hisp.core.smtp_policy.hash_password`.
    :ivar addresses: the sender addresses it may use, normalised (lower-case).

    Spec: RFC 4954; RFC 6409 section 6.1.
    """

    name: str
    password_hash: str = field(repr=False)
    addresses: frozenset[str] = frozenset()

    @classmethod
    def create(cls, name: str, password_hash: str, addresses: Iterable[str]) -> EdgeUser:
        """Build a user, normalising its addresses.

        :param name: the AUTH name.
        :param password_hash: the scrypt hash string.
        :param addresses: the addresses it may send from.
        :returns: the user.
        :raises AddressError: an address is not valid.
        """
        return cls(name, password_hash, frozenset(str(DirectAddress.parse(a)).lower() for a in addresses))


#: ``await authenticator(name, password) -> EdgeUser | None``: the user when the credentials are right.
Authenticator = Callable[[str, bytes], Awaitable[EdgeUser | None]]

#: ``is_hosted(address) -> bool`` for a normalised address: may the backbone accept mail for it?
HostedPredicate = Callable[[str], bool]


@dataclass(frozen=True)
class SmtpEnvelope:
    """What the SMTP session said about one message (handed to ``accept`` with the bytes).

    :ivar listener: the listener kind.
    :ivar mail_from: the reverse-path, normalised; ``""`` for the null reverse-path.
    :ivar recipients: the accepted forward-paths, normalised, in RCPT order (no duplicates).
    :ivar mail_options: the MAIL parameters (``BODY=8BITMIME``, ``SIZE=...``), upper-case.
    :ivar peer: the client's address as (host, port).
    :ivar helo: the EHLO/HELO name the client gave.
    :ivar tls: whether the session was under TLS when DATA ended.
    :ivar tls_version: the TLS version (``"TLSv1.3"``) or None.
    :ivar auth_user: the authenticated edge user's name (submission), else None.

    Spec: RFC 5321 sections 3.3 (envelope) and 4.4 (trace information).
    """

    listener: ListenerKind
    mail_from: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    peer: tuple[str, int] | None = None
    helo: str = ""
    tls: bool = False
    tls_version: str | None = None
    auth_user: str | None = None


#: ``await accept(envelope, raw) -> reply``: persist the message (before returning 2xx) and run the inline
#: checks; return the reply line to send (e.g. ``"250 2.0.0 Ok: queued as 42"``), or raise a HispError.
Accept = Callable[[SmtpEnvelope, bytes], Awaitable[str]]


@dataclass(frozen=True)
class ListenerSettings:
    """How one listener behaves.

    :ivar kind: submission or backbone.
    :ivar host: address to listen on (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``).
    :ivar port: port; 0 picks a free one (read :attr:`SmtpListener.port`).
    :ivar hostname: our name in the greeting and EHLO reply.
    :ivar tls_context: server TLS context (see :func:`server_tls_context`); required for submission.
    :ivar max_message_size: bytes of message data accepted (advertised with SIZE).
    :ivar max_recipients: RCPTs accepted per message (RFC 5321 section 4.5.3.1.8 asks for at least 100).
    :ivar max_connections: concurrent connections; more get 421 and are closed.
    :ivar command_timeout: seconds a client may stay idle between commands; the whole DATA transfer must
        end within it too (RFC 5321 section 4.5.3.2.7: 5 minutes).
    :ivar accept_timeout: seconds ``accept`` may take before the client is answered 451.
    :ivar auth_failure_delay: seconds to wait before answering 535 (slows password guessing).
    :ivar max_auth_attempts: AUTH commands per connection; one more gets 421 and a close.
    :ivar check_header_from: on submission, also require the From header addresses to be the user's.
    :ivar reuse_port: bind with ``SO_REUSEPORT`` so that several processes (``hisp serve --workers N``) listen on
        the same address and port and the kernel spreads the connections among them (Linux; any process of the
        same user may then bind the port too, so only set it for a fixed port that several processes share).
    :raises ConfigError: (when built) a bound is not positive, or submission without TLS.

    Spec: RFC 5321 sections 4.5.3.1 and 4.5.3.2; RFC 1870; RFC 3207; RFC 4954.
    """

    kind: ListenerKind
    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "localhost"
    tls_context: ssl.SSLContext | None = None
    max_message_size: int = 36 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 100
    command_timeout: float = 300.0
    accept_timeout: float = 600.0
    auth_failure_delay: float = 2.0
    max_auth_attempts: int = 3
    check_header_from: bool = True
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if self.max_message_size < 1 or self.max_recipients < 1 or self.max_connections < 1:
            raise ConfigError("listener: max_message_size, max_recipients and max_connections must be positive")
        if self.command_timeout <= 0 or self.accept_timeout <= 0 or self.auth_failure_delay < 0:
            raise ConfigError("listener: timeouts must be positive and the AUTH failure delay not negative")
        if self.max_auth_attempts < 1:
            raise ConfigError("listener: max_auth_attempts must be at least 1")
        if self.kind is ListenerKind.SUBMISSION and self.tls_context is None:
            raise ConfigError("the submission listener needs a TLS certificate and key (STARTTLS before AUTH)")


def server_tls_context(cert_file: str, key_file: str, *, key_password: bytes | None = None) -> ssl.SSLContext:
    """A server TLS context for STARTTLS from PEM files (TLS 1.2 or later, no client certificates asked).

    :param cert_file: PEM file with the certificate, then its issuers.
    :param key_file: PEM file with the private key.
    :param key_password: the key's passphrase, or None for an unencrypted key.
    :returns: the context.
    :raises ConfigError: a file cannot be read or the key does not match.

    Spec: RFC 3207 section 4.1; RFC 8996 (no TLS 1.0/1.1); RFC 7525 section 3.1.1.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file, password=key_password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert_file} / key {key_file}: {exc}") from None
    context.verify_mode = ssl.CERT_NONE  # peers are not asked for certificates (aiosmtpd warns otherwise)
    return context


class StaticAuthenticator:
    """An :data:`Authenticator` over a fixed set of users (from the configuration).

    The scrypt check runs in a worker thread so that the listener keeps answering; an unknown user costs the
    same check against a dummy hash, so timing does not tell which names exist.

    :param users: the edge users.
    :raises ConfigError: two users share a name.

    Spec: RFC 4954 section 4; RFC 7914.
    """

    def __init__(self, users: Iterable[EdgeUser]) -> None:
        self._users: dict[str, EdgeUser] = {}
        for user in users:
            if user.name in self._users:
                raise ConfigError(f"edge user {user.name!r} is defined twice")
            self._users[user.name] = user
        self._dummy: str | None = None

    async def __call__(self, name: str, password: bytes) -> EdgeUser | None:
        """Check the credentials.

        :param name: the AUTH name.
        :param password: the password as sent.
        :returns: the user, or None when the name is unknown or the password wrong.
        :raises ConfigError: a configured hash is malformed.
        """
        user = self._users.get(name)
        if user is None:
            if self._dummy is None:
                from hisp.core.smtp_policy import hash_password

                self._dummy = await asyncio.to_thread(hash_password, "dummy password for unknown users")
            await asyncio.to_thread(verify_password, password, self._dummy)
            return None
        ok = await asyncio.to_thread(verify_password, password, user.password_hash)
        return user if ok else None


# aiosmtpd's own reply texts -> ours with an enhanced status (RFC 2034). Matched by prefix.
_REWRITES: tuple[tuple[str, Reply], ...] = (
    ("552 Error: Too much mail data", REPLIES["too_big"]),
    ("552 Error: message size exceeds", REPLIES["too_big"]),
    ("500 Line too long", REPLIES["line_too_long"]),
    ("500 Command line too long", REPLIES["command_too_long"]),
    ("530 Must issue a STARTTLS", REPLIES["starttls_first"]),
)

# Per-connection cap on any one command: a bound, not a policy (a peer may send many messages per session).
_COMMAND_CALL_CAP = 10_000


@dataclass
class _Pending:
    """Credentials parsed by aiosmtpd, to be checked asynchronously (see :meth:`_HispSMTP._finish_auth`).

    :ivar credentials: the login and password as sent.
    :ivar mechanism: the SASL mechanism (``PLAIN`` or ``LOGIN``), for the log.
    """

    credentials: LoginPassword
    mechanism: str = "?"


#: Characters of an AUTH user name shown in the log (a name is never longer in practice; a client's is bounded).
_LOGIN_LOG_CHARS = 100


def _peer_text(peer: Any) -> str:
    """The client's address for the log: ``host:port`` (``[v6]:port``), or ``unknown``."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unknown" if peer is None else str(peer)


def _login_text(login: bytes) -> str:
    """The user name a client tried, for the log: quoted with escapes (``repr``), so that CR, LF or other control
    characters cannot forge log lines, and truncated; undecodable bytes are shown as ``\\x..`` escapes."""
    name = login.decode("utf-8", "backslashreplace")
    shown = repr(name[:_LOGIN_LOG_CHARS])
    return shown + ("..." if len(name) > _LOGIN_LOG_CHARS else "")


#: A MAIL FROM / RCPT TO path of the usual form, ``<local@domain>`` with a dot-atom local part and a host name,
#: optionally followed by parameters after spaces: what :meth:`_HispSMTP._getaddr` answers without aiosmtpd's RFC
#: 5322 parser. Anything else (quoted local parts, address literals, comments, source routes, leading space, a
#: trailing dot, "=?" which may begin an encoded word that parser decodes) goes to that parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:\Z| +([^ (\"\\\t\r\n][^(\"\\\t\r\n]*)?\Z)"
)


class _HispSMTP(SMTP):
    """aiosmtpd's SMTP with our replies, asynchronous AUTH with a failure delay, and a connection limit."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's ``_getaddr`` (the address of a MAIL FROM or RCPT TO argument and what follows it), answered
        directly for a path of the usual form (:data:`_PLAIN_PATH`): the same result, without the RFC 5322 parser
        that costs ~40-80 us a call (`tests/unit/test_smtp_path.py` compares the two on generated arguments).

        :returns: ``(address, rest)``, or ``(None, None)`` when the argument cannot be parsed or the local part
            is over ``local_part_limit`` (aiosmtpd then answers 501 or 553; the stdlib parser's IndexError on an
            argument such as ``<`` is such a case here, where aiosmtpd alone would answer "500 Error: (IndexError)").
        Spec: RFC 5321 section 4.1.2 (Path, Mailbox).
        """
        # "=?" may begin an RFC 2047 encoded word, which aiosmtpd's parser decodes: left to it
        match = _PLAIN_PATH.match(arg) if "=?" not in arg else None
        if match is None:
            try:
                return super()._getaddr(arg)
            except IndexError:  # the stdlib parser's on a lone "<" ("MAIL FROM:<"): a syntax error, not a 500
                return None, None
        address = match.group(1)
        if self.local_part_limit and address.rindex("@") > self.local_part_limit:
            return None, None
        return address, match.group(2) or ""

    def __init__(self, listener: SmtpListener, handler: _Handler, **options: Any) -> None:
        super().__init__(handler, **options)
        self._listener = listener
        self._admitted = False
        self._refused = False

    # -- replies ------------------------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            for prefix, reply in _REWRITES:
                if status.startswith(prefix):
                    status = str(reply)
                    break
        await super().push(status)

    # -- connection limit ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            if not self._listener._admit(self):
                self._refused = True
                reply = f"421 4.7.0 {self.hostname} {REPLIES['too_many_connections'].text}\r\n"
                with contextlib.suppress(Exception):
                    transport.write(reply.encode("ascii"))  # type: ignore[attr-defined]
                transport.close()
                return
            self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._admitted:
            self._admitted = False
            self._listener._release(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def close_now(self) -> None:
        """Close the connection (shutdown after the grace period)."""
        if self.transport is not None:
            self.transport.close()

    def extend_timeout(self, seconds: float) -> None:
        """Keep the connection open ``seconds`` from now (while ``accept`` runs after DATA)."""
        # aiosmtpd resets its idle timer only on commands; the accept callback may outlast it.
        self._reset_timeout(seconds)

    # -- DATA -----------------------------------------------------------------------------------------
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the data read in bulk (:mod:`hisp.adapters.smtp_data`): the same replies, the
        same bytes handed on, a fraction of the cost (aiosmtpd reads and unstuffs it one line at a time)."""
        if (
            self._decode_data
            or not self.data_size_limit
            or "DATA" not in self._handle_hooks
            or not bulk_reading_possible(self._reader)
        ):
            await super().smtp_DATA(arg)  # not how our listeners are set up: aiosmtpd's own loop
            return
        # The checks and replies before 354 are aiosmtpd's (1.4), in its order.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            outcome = await read_data(self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit)
        except asyncio.CancelledError:  # the connection was lost during DATA (aiosmtpd cancels the session)
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # the stream ended before the end of data: nothing to answer
            self._writer.close()
            return
        if outcome.verdict is not DataVerdict.OK:
            # Answered once all the data is in (RFC 5321 section 4.2.5), with aiosmtpd's texts (see _REWRITES).
            if outcome.verdict is DataVerdict.LINE_TOO_LONG:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            else:
                await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        self.envelope.content = outcome.content
        self.envelope.original_content = outcome.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    # -- AUTH -----------------------------------------------------------------------------------------
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd calls this synchronously; the real check is asynchronous (scrypt in a thread, then a delay).
        return AuthResult(success=False, handled=False, auth_data=_Pending(auth_data, mechanism))

    async def _finish_auth(self, result: AuthResult) -> AuthResult:
        pending = result.auth_data
        if not isinstance(pending, _Pending):
            return result
        authenticator = self._listener.authenticator
        user: EdgeUser | None = None
        peer = self.session.peer if self.session else None
        try:
            name: str | None = pending.credentials.login.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        if authenticator is not None and name is not None:
            try:
                user = await authenticator(name, pending.credentials.password)
            except HispError as exc:
                _log.error("AUTH %s from %s as %s: authenticator failed: %s", pending.mechanism, _peer_text(peer),
                           _login_text(pending.credentials.login), exc)
                return AuthResult(success=False, handled=False, message=str(REPLIES["temporary_failure"]))
        if user is None:
            # One line per failed attempt for the operator (fail2ban and the like): who tried which name, never
            # the password. The name is shown as repr, truncated, so a client cannot forge log lines with it.
            _log.warning("AUTH %s failed from %s for user %s", pending.mechanism, _peer_text(peer),
                         _login_text(pending.credentials.login))
            await asyncio.sleep(self._listener.settings.auth_failure_delay)
            return AuthResult(success=False, handled=False, message=str(REPLIES["auth_failed"]))
        _log.info("%s authenticated as %s", _peer_text(peer), user.name)
        return AuthResult(success=True, handled=False, auth_data=user)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))


class _Handler:
    """aiosmtpd hooks: MAIL, RCPT and DATA checks, then the ``accept`` callback."""

    def __init__(self, listener: SmtpListener) -> None:
        self.listener = listener

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        settings = self.listener.settings
        if settings.kind is ListenerKind.SUBMISSION:
            user = session.auth_data
            if not isinstance(user, EdgeUser) or not sender_allowed(user.addresses, address):
                return str(REPLIES["sender_not_owned"])
        elif address != "<>":
            try:
                DirectAddress.parse(address)
            except AddressError:
                return str(REPLIES["malformed_address"])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        settings = self.listener.settings
        try:
            DirectAddress.parse(address)
        except AddressError:
            return str(REPLIES["malformed_address"])
        normalized = normalize_mailbox(address)
        if settings.kind is ListenerKind.BACKBONE:
            predicate = self.listener.is_hosted
            if predicate is None or not predicate(normalized):
                return str(REPLIES["no_relay"])
        known = {normalize_mailbox(r) for r in envelope.rcpt_tos}
        if normalized not in known:
            if len(known) >= settings.max_recipients:
                return str(REPLIES["too_many_recipients"])
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if not isinstance(raw, bytes):  # decode_data is off, so aiosmtpd always gives bytes
            return str(REPLIES["temporary_failure"])
        if find_bare_line_ending(raw) != -1:
            return str(REPLIES["bare_line_ending"])
        settings = self.listener.settings
        user = session.auth_data if isinstance(session.auth_data, EdgeUser) else None
        if settings.kind is ListenerKind.SUBMISSION:
            if user is None:  # cannot happen: aiosmtpd requires AUTH before MAIL
                return str(REPLIES["sender_not_owned"])
            if settings.check_header_from:
                senders = header_from_addresses(raw)
                if not senders or not all(sender_allowed(user.addresses, s) for s in senders):
                    return str(REPLIES["header_from_not_owned"])
        ssl_object = session.ssl.get("ssl_object") if isinstance(session.ssl, dict) else None
        mail_from = "" if envelope.mail_from in (None, "<>") else normalize_mailbox(envelope.mail_from or "")
        smtp_envelope = SmtpEnvelope(
            listener=settings.kind,
            mail_from=mail_from,
            recipients=tuple(normalize_mailbox(r) for r in envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            peer=(str(session.peer[0]), int(session.peer[1])) if isinstance(session.peer, tuple) else None,
            helo=session.host_name or "",
            tls=session.ssl is not None,
            tls_version=ssl_object.version() if ssl_object is not None else None,
            auth_user=user.name if user is not None else None,
        )
        if isinstance(server, _HispSMTP):
            server.extend_timeout(settings.accept_timeout + 5.0)
        return await self.listener._call_accept(smtp_envelope, raw)

    async def handle_exception(self, error: Exception) -> str:
        _log.error("SMTP session error: %s: %s", type(error).__name__, error)
        return str(REPLIES["temporary_failure"])


class SmtpListener:
    """One SMTP listener (submission or backbone) on one address and port.

    :param settings: how it behaves.
    :param accept: the callback that takes each message (see :data:`Accept`).
    :param authenticator: checks AUTH credentials; required for submission.
    :param is_hosted: which recipients the backbone accepts; required for backbone.
    :raises ConfigError: the kind's required callback is missing.

    Use ``await listener.start()`` then ``await listener.close()``, or ``async with listener:``.

    Spec: RFC 5321; RFC 3207; RFC 4954; RFC 1870; RFC 6409; AS-17 (the exact bytes received go on).
    """

    def __init__(
        self,
        settings: ListenerSettings,
        accept: Accept,
        *,
        authenticator: Authenticator | None = None,
        is_hosted: HostedPredicate | None = None,
    ) -> None:
        if settings.kind is ListenerKind.SUBMISSION and authenticator is None:
            raise ConfigError("the submission listener needs an authenticator (edge users)")
        if settings.kind is ListenerKind.BACKBONE and is_hosted is None:
            raise ConfigError("the backbone listener needs to know the hosted addresses")
        self.settings = settings
        self.accept = accept
        self.authenticator = authenticator
        self.is_hosted = is_hosted
        self._server: asyncio.Server | None = None
        self._connections: set[_HispSMTP] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def port(self) -> int:
        """The port listened on (after :meth:`start`).

        :raises RuntimeError: not started.
        """
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    def _admit(self, protocol: _HispSMTP) -> bool:
        if len(self._connections) >= self.settings.max_connections:
            return False
        self._connections.add(protocol)
        return True

    def _release(self, protocol: _HispSMTP) -> None:
        self._connections.discard(protocol)

    def _protocol(self) -> _HispSMTP:
        s = self.settings
        submission = s.kind is ListenerKind.SUBMISSION
        return _HispSMTP(
            self,
            _Handler(self),
            data_size_limit=s.max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname=s.hostname,
            ident="hisp ESMTP",
            tls_context=s.tls_context,
            require_starttls=submission,
            timeout=s.command_timeout,
            auth_required=submission,
            auth_require_tls=True,
            auth_exclude_mechanism=() if submission else ("PLAIN", "LOGIN"),
            command_call_limit={"AUTH": s.max_auth_attempts, "*": _COMMAND_CALL_CAP},
        )

    async def start(self) -> None:
        """Listen.

        :raises OSError: the address cannot be bound.
        :raises ValueError: :attr:`ListenerSettings.reuse_port` on a platform without ``SO_REUSEPORT``.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.settings.host, self.settings.port, reuse_port=self.settings.reuse_port or None
        )
        _log.info("%s listener on %s:%d", self.settings.kind.value, self.settings.host, self.port)

    async def close(self, grace: float = 10.0) -> None:
        """Stop listening, let messages being accepted finish (up to ``grace`` seconds), close connections.

        :param grace: seconds to wait for ``accept`` calls in flight.
        """
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for protocol in list(self._connections):
            protocol.close_now()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SmtpListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call_accept(self, envelope: SmtpEnvelope, raw: bytes) -> str:
        """Run ``accept`` and turn its outcome into the reply to DATA; never 2xx unless it returned 2xx."""
        # Shielded: a client that disconnects after the final dot must not interrupt a persist half-way; the
        # task is counted until it ends so that close() waits for it.
        task = asyncio.ensure_future(self.accept(envelope, raw))
        self._in_flight += 1
        self._idle.clear()
        task.add_done_callback(self._accept_done)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), self.settings.accept_timeout)
        except HispError as exc:
            reply = exc.smtp_reply()
            return reply if _well_formed_error(reply) else str(REPLIES["temporary_failure"])
        except TimeoutError:
            # Cancelled: the pipeline's persist is one transaction, so a cancelled accept stores nothing.
            _log.error("accept took longer than %g s: cancelled, answered 451", self.settings.accept_timeout)
            task.cancel()
            return str(REPLIES["temporary_failure"])
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("accept failed; answered 451")
            return str(REPLIES["temporary_failure"])
        if not isinstance(outcome, str):
            _log.error("accept returned %r, not a reply line; answered 451", type(outcome).__name__)
            return str(REPLIES["temporary_failure"])
        try:
            parse_reply(outcome)
        except ValueError:
            _log.error("accept returned a malformed reply %r; answered 451", outcome[:80])
            return str(REPLIES["temporary_failure"])
        return outcome

    def _accept_done(self, task: asyncio.Future[str]) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            task.exception()  # retrieved: logged by _call_accept when it was still waiting


def _well_formed_error(reply: str) -> bool:
    try:
        parsed = parse_reply(reply)
    except ValueError:
        return False
    return not parsed.success
