"""``hisp user add``: make an edge user's ``[[user]]`` block for the configuration file.

An edge user is an SMTP AUTH identity of the submission listener (RFC 4954) and the sender addresses it may
use. The command asks for the password (twice, not echoed) or reads one line from standard input with
``--password-stdin``, hashes it with scrypt (:func:`hisp.core.smtp_policy.hash_password`) and prints a TOML
block to paste into the configuration::

    [[user]]
    name = "dr.smith"
    password_hash = "scrypt$32768$8$1$...$..."
    addresses = ["dr.smith@direct.clinic.example"]

The password itself is never printed, logged or stored. The prompts go to stderr, so that
``hisp user add ... >> hisp.toml`` appends only the block.

Spec: issue 5 ("edge users (SMTP AUTH names with password hashes made by ``hisp user add``, and the addresses
each may send from)"); RFC 4954; RFC 4616 (PLAIN: the password cannot contain NUL).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from hisp.addresses import DirectAddress
from hisp.commands.common import fail_cleanly
from hisp.core.smtp_policy import hash_password
from hisp.errors import AddressError, ConfigError

__all__ = ["MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "toml_user_block", "user_group"]

#: Shortest password accepted, in characters.
MIN_PASSWORD_CHARS = 12

#: Longest password accepted, in characters (a bound on what an operator could mean, not a security limit).
MAX_PASSWORD_CHARS = 1024

#: Longest user name, in characters.
MAX_NAME_CHARS = 255


def _toml_string(text: str) -> str:
    """A TOML basic string; ``text`` holds no control character (checked by the callers), so JSON's quoting
    (``\\"`` and ``\\\\``) is also TOML's."""
    return json.dumps(text, ensure_ascii=False)


def toml_user_block(name: str, password_hash: str, addresses: Sequence[str]) -> str:
    """The ``[[user]]`` TOML block of one edge user.

    :param name: the AUTH name (printable, no whitespace).
    :param password_hash: from :func:`hisp.core.smtp_policy.hash_password`.
    :param addresses: normalised Direct addresses.
    :returns: the block, ending with a newline.
    """
    listed = ", ".join(_toml_string(a) for a in addresses)
    return (
        "[[user]]\n"
        f"name = {_toml_string(name)}\n"
        f"password_hash = {_toml_string(password_hash)}\n"
        f"addresses = [{listed}]\n"
    )


def _check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_CHARS:
        raise click.BadParameter(f"must be 1 to {MAX_NAME_CHARS} characters", param_hint="NAME")
    if any(c.isspace() or not c.isprintable() for c in name):
        raise click.BadParameter("must not contain spaces or control characters", param_hint="NAME")
    return name


def _check_addresses(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        try:
            address = str(DirectAddress.parse(value)).lower()
        except AddressError as exc:
            raise click.BadParameter(exc.message, param_hint="--address") from None
        if address not in out:
            out.append(address)
    return out


def _read_password(from_stdin: bool) -> str:
    """The password: one line of standard input (without its line ending), or asked twice on the terminal."""
    if from_stdin:
        line = sys.stdin.readline()  # click.get_text_stream is deprecated in click 8.5
        if not line:
            raise ConfigError("--password-stdin: standard input is empty")
        return line.removesuffix("\n").removesuffix("\r")
    # default="" makes an empty answer come back (and be refused below) instead of asking again forever.
    password: str = click.prompt(
        "Password", default="", show_default=False, hide_input=True, confirmation_prompt=True, err=True
    )
    return password


def _check_password(password: str) -> None:
    if not password:
        raise ConfigError("the password is empty")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"the password is too short: at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ConfigError(f"the password is too long: at most {MAX_PASSWORD_CHARS} characters")
    if "\x00" in password:
        raise ConfigError("the password contains a NUL character, which SMTP AUTH PLAIN cannot carry")


@click.group("user")
def user_group() -> None:
    """Edge users: SMTP AUTH identities of the submission listener."""


@user_group.command("add")
@click.argument("name")
@click.option(
    "--address",
    "addresses",
    multiple=True,
    required=True,
    metavar="ADDR",
    help="A Direct address the user may send from (repeat for each).",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input instead of asking twice.",
)
@fail_cleanly
def user_add(name: str, addresses: Sequence[str], password_stdin: bool) -> None:
    """Print a [[user]] block (name, scrypt password hash, addresses) to paste into the configuration.

    The password must be at least 12 characters; it is never printed. Exit status 1 when it is refused,
    2 for a malformed NAME or --address.
    """
    name = _check_name(name)
    normalised = _check_addresses(addresses)
    password = _read_password(password_stdin)
    _check_password(password)
    click.echo(toml_user_block(name, hash_password(password), normalised), nl=False)
