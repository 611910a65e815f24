"""The one exception tree of hisp (DESIGN.md section 4).

Every error carries a human-readable message, optional context (a mapping of
names to values that explain the failure) and an SMTP reply hint: the basic
reply code (RFC 5321 section 4.2) and the enhanced status code (RFC 3463) to
give whoever sent the input that caused it.

This module imports nothing from hisp.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "AddressError",
    "CertificateError",
    "CertificateNotFound",
    "ConfigError",
    "DecryptionError",
    "DeliveryError",
    "DiscoveryError",
    "DiscoveryUnavailable",
    "HispError",
    "InputError",
    "MessageFormatError",
    "PermanentDeliveryError",
    "PolicyViolation",
    "SecurityError",
    "SignatureError",
    "StorageError",
    "TransientDeliveryError",
    "TrustError",
]


class HispError(Exception):
    """Base of every error hisp raises on purpose.

    :param message: one line for a person: what is wrong.
    :param context: names and values that explain it (shown in logs and audit records).
    :ivar smtp_code: RFC 5321 reply code to give the sender of the input, e.g. ``554``.
    :ivar smtp_status: RFC 3463 enhanced status code, e.g. ``"5.7.1"``.
    """

    smtp_code: ClassVar[int] = 451
    smtp_status: ClassVar[str] = "4.3.0"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: Mapping[str, Any] = MappingProxyType(dict(context))

    def smtp_reply(self) -> str:
        """The reply line to give an SMTP client, e.g. ``"554 5.7.1 untrusted signer"``.

        One line of printable ASCII (RFC 5321 section 4.2): the message may quote what a peer chose (a
        certificate's issuer name with CR LF in it), so every other character is shown as ``\\xNN`` /
        ``\\uNNNN``; a reply broken over lines would be answered as a temporary failure instead.
        """
        return f"{self.smtp_code} {self.smtp_status} {_printable(self.message)}"


def _printable(text: str) -> str:
    """``text`` with anything but printable ASCII (space to tilde) escaped, backslashes included."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    shown = []
    for char in text:
        if char == "\\":
            shown.append("\\\\")
        elif " " <= char <= "~":
            shown.append(char)
        else:
            shown.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(shown)


class ConfigError(HispError):
    """The operator's configuration (file, command-line option, preset name) is wrong.

    Raised at start-up or when a command is given options that conflict.
    """

    smtp_code = 451
    smtp_status = "4.3.5"


class InputError(HispError):
    """The input is malformed: the peer's or the user's fault, never retried as is."""

    smtp_code = 554
    smtp_status = "5.6.0"


class AddressError(InputError):
    """An e-mail / Direct address or a health domain name is not valid (RFC 5321 section 4.1.2)."""

    smtp_code = 553
    smtp_status = "5.1.3"


class MessageFormatError(InputError):
    """A message (MIME, RFC 5322) or a CMS structure cannot be parsed within the configured bounds.

    :ivar defects: the tolerated oddities seen before the fatal one, as short strings.
    """

    smtp_code = 554
    smtp_status = "5.6.0"

    def __init__(self, message: str, *, defects: tuple[str, ...] = (), **context: Any) -> None:
        super().__init__(message, **context)
        self.defects = defects


class CertificateError(InputError):
    """A certificate or private key cannot be loaded or is not usable as given."""

    smtp_code = 554
    smtp_status = "5.7.0"


class SecurityError(HispError):
    """A security check failed. Never retried; the message is refused (AS-14)."""

    smtp_code = 554
    smtp_status = "5.7.0"


class SignatureError(SecurityError):
    """Missing signature, bad digest or bad signature value (AS-14)."""

    smtp_code = 554
    smtp_status = "5.7.5"


class DecryptionError(SecurityError):
    """The message is not encrypted to any credential we hold, or cannot be decrypted (AS-14)."""

    smtp_code = 554
    smtp_status = "5.7.5"


class TrustError(SecurityError):
    """A certificate does not chain to a configured trust anchor, is expired or revoked, or is not bound.

    :ivar reason: a short machine-readable reason, e.g. ``"untrusted signer"``.
    """

    smtp_code = 554
    smtp_status = "5.7.1"

    def __init__(self, message: str, *, reason: str = "untrusted", **context: Any) -> None:
        super().__init__(message, **context)
        self.reason = reason


class PolicyViolation(SecurityError):
    """The security policy forbids what was found: unsigned, unencrypted, weak algorithm, short key."""

    smtp_code = 554
    smtp_status = "5.7.1"


class DiscoveryError(HispError):
    """Certificate discovery did not yield a usable certificate."""


class CertificateNotFound(DiscoveryError):
    """No certificate is published for the recipient (permanent; CD-9)."""

    smtp_code = 550
    smtp_status = "5.7.31"


class DiscoveryUnavailable(DiscoveryError):
    """A DNS or LDAP server did not answer (transient; retry later)."""

    smtp_code = 451
    smtp_status = "4.4.3"


class DeliveryError(HispError):
    """Relaying or delivering a message failed."""


class TransientDeliveryError(DeliveryError):
    """A 4xx or a connection failure: retry on the queue's schedule."""

    smtp_code = 451
    smtp_status = "4.4.1"


class PermanentDeliveryError(DeliveryError):
    """A 5xx: bounce with a DSN."""

    smtp_code = 550
    smtp_status = "5.5.0"


class StorageError(HispError):
    """The message store or queue failed."""

    smtp_code = 451
    smtp_status = "4.3.0"
