"""``hisp messages list`` and ``hisp messages show``: what the queue holds and what happened to each message.

Both read the store named by the configuration (``[storage] url``, else the SQLite file beside the
configuration) or by ``--db URL``. They never create or migrate a database: a missing SQLite file, an empty
database or one at another schema revision is an error (exit 1), so that a mistyped path does not silently
show an empty queue.

Text output escapes control characters: envelope addresses, Message-IDs and replies come from remote peers.
``--json`` prints the same facts as JSON (times in ISO 8601 UTC).

Spec: issue 5 ("Audit: ... ``hisp messages list [--state ...]`` and ``hisp messages show MESSAGE-ID`` print
them").
"""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hisp.adapters.storage import SqlStore, current_revision, default_url, head_revision
from hisp.commands.common import fail_cleanly, printable
from hisp.config import load_config
from hisp.errors import ConfigError, HispError, StorageError
from hisp.ports import (
    AuditEvent,
    DeliveryAttempt,
    Direction,
    MessageDetail,
    Notification,
    RecipientState,
    RecipientStatus,
    StoredMessage,
)

__all__ = ["messages_group", "open_for_reading", "storage_url"]

#: ``--state`` names (the CLI spells ``in_flight`` as ``in-flight``).
STATE_NAMES = {state.value.replace("_", "-"): state for state in RecipientState}


def storage_url(config_path: str | None, db: str | None) -> str:
    """The storage URL to read: ``--db``, else the configuration's ``[storage] url``, else the SQLite file
    beside the configuration.

    :param config_path: ``-c FILE``, or ``None``.
    :param db: ``--db URL``, or ``None``.
    :returns: the URL.
    :raises click.UsageError: neither was given.
    :raises ConfigError: the configuration is invalid.
    """
    if db:
        return db
    if config_path is None:
        raise click.UsageError("give -c FILE (the configuration) or --db URL")
    config = load_config(config_path)
    # The [storage] table is read by hisp.config once it knows it; until then the default applies.
    url = getattr(getattr(config, "storage", None), "url", None)
    if isinstance(url, str) and url:
        return url
    return default_url(config.path.parent)


def open_for_reading(url: str) -> SqlStore:
    """Open an existing store at the current schema revision, without creating or migrating anything.

    :param url: a storage URL.
    :returns: the store; the caller closes it.
    :raises ConfigError: the URL is not usable.
    :raises StorageError: no such SQLite file, an empty database, another schema revision, or the database
        cannot be reached.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"storage URL cannot be parsed: {exc}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if not path.is_file():
            raise StorageError(f"no database at {path}: has `hisp serve` run with this configuration?")
    store = SqlStore.open(url, migrate=False)
    try:
        try:
            revision = current_revision(store.engine)
        except StorageError as exc:  # the driver's message runs over several lines: one line on stderr
            raise StorageError(exc.message.splitlines()[0]) from exc
        head = head_revision()
        where = parsed.render_as_string(hide_password=True)
        if revision is None:
            raise StorageError(f"{where} holds no hisp tables: has `hisp serve` run with this configuration?")
        if revision != head:
            raise StorageError(
                f"{where} is at schema revision {revision}, this hisp reads {head}: "
                "start `hisp serve` of this version once to migrate it"
            )
    except HispError:
        store.close()
        raise
    return store


# -- rendering -----------------------------------------------------------------------------------------------


#: Text from the network, safe for a terminal (:func:`hisp.commands.common.printable`).
_clean = printable


def _state(state: RecipientState) -> str:
    return state.value.replace("_", "-")


def _time(at: datetime | None) -> str:
    return "-" if at is None else at.isoformat()


def _json_default(value: Any) -> Any:
    if isinstance(value, RecipientState):
        return _state(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _to_json(value: Any) -> str:
    data = [dataclasses.asdict(v) for v in value] if isinstance(value, list) else dataclasses.asdict(value)
    return json.dumps(data, indent=2, default=_json_default)


def _recipient_line(recipient: RecipientStatus) -> str:
    line = f"  {_clean(recipient.address)}  {_state(recipient.state)}  attempts {recipient.attempts}"
    if recipient.state is RecipientState.QUEUED and recipient.next_attempt_at is not None:
        line += f"  next attempt {_time(recipient.next_attempt_at)}"
    if recipient.state is RecipientState.IN_FLIGHT:
        line += f"  claimed by {_clean(recipient.claimed_by)} until {_time(recipient.lease_until)}"
    if recipient.last_reply:
        line += f"  last reply: {_clean(recipient.last_reply)}"
    return line


def _message_lines(message: StoredMessage) -> list[str]:
    sender = _clean(message.mail_from) if message.mail_from else "<>"
    header = (
        f"{message.id}  {_time(message.received_at)}  {message.direction.value}  from {sender}  "
        f"{_clean(message.header_message_id)}  {message.size} bytes"
    )
    return [header, *(_recipient_line(r) for r in message.recipients)]


def _attempt_line(attempt: DeliveryAttempt) -> str:
    line = (
        f"  {_time(attempt.at)}  {_clean(attempt.address)}  attempt {attempt.attempt} by {_clean(attempt.node)}"
        f" -> {_state(attempt.result)}"
    )
    if attempt.target:
        line += f"  target {_clean(attempt.target)}"
    if attempt.reply:
        line += f"  reply: {_clean(attempt.reply)}"
    if attempt.next_attempt_at is not None:
        line += f"  next attempt {_time(attempt.next_attempt_at)}"
    return line


def _event_lines(event: AuditEvent) -> list[str]:
    head = f"  #{event.seq} {_time(event.at)}  {event.kind.value}"
    if event.node:
        head += f"  node {_clean(event.node)}"
    if event.mail_from is not None:
        head += f"  from {_clean(event.mail_from) or '<>'}"
    if event.recipients:
        head += f"  to {', '.join(_clean(r) for r in event.recipients)}"
    if event.remote:
        head += f"  remote {_clean(event.remote)}"
    lines = [head]
    if event.verdict:
        lines.append(f"      verdict: {_clean(event.verdict)}")
    if event.reason:
        lines.append(f"      reason: {_clean(event.reason)}")
    lines.extend(f"      fingerprint sha256 {_clean(f)}" for f in event.fingerprints)
    return lines


def _notification_line(note: Notification) -> str:
    line = f"  #{note.id} {note.kind.value} to {_clean(note.address)}  {note.status.value}"
    line += f"  created {_time(note.created_at)}  updated {_time(note.updated_at)}"
    if note.detail:
        line += f"  detail: {_clean(note.detail)}"
    return line


def _detail_lines(detail: MessageDetail) -> list[str]:
    message = detail.message
    stored = "spool file" if message.spooled else "database"
    lines = [
        f"message {message.id}",
        f"  Message-ID: {_clean(message.header_message_id)}",
        f"  direction:  {message.direction.value}",
        f"  from:       {_clean(message.mail_from) if message.mail_from else '<>'}",
        f"  received:   {_time(message.received_at)}",
        f"  size:       {message.size} bytes in the {stored}, sha256 {message.sha256}",
        "recipients:",
        *(_recipient_line(r) for r in message.recipients),
        "attempts:" if detail.attempts else "attempts: none",
        *(_attempt_line(a) for a in detail.attempts),
        "events:" if detail.events else "events: none",
        *(line for event in detail.events for line in _event_lines(event)),
        "notifications:" if detail.notifications else "notifications: none",
        *(_notification_line(n) for n in detail.notifications),
    ]
    return lines


# -- commands ------------------------------------------------------------------------------------------------

_CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help="The configuration file (its storage URL is used).",
)
_DB_OPTION = click.option(
    "--db",
    default=None,
    metavar="URL",
    help="Storage URL instead of the configuration's (sqlite:///FILE or postgresql+psycopg://...).",
)
_JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group("messages")
def messages_group() -> None:
    """The message queue and its audit trail."""


@messages_group.command("list")
@_CONFIG_OPTION
@_DB_OPTION
@click.option(
    "--state", type=click.Choice(list(STATE_NAMES)), default=None, help="Only messages with a recipient in this state."
)
@click.option(
    "--direction", type=click.Choice([d.value for d in Direction]), default=None, help="Only messages of this way."
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000), help="At most N messages.")
@_JSON_OPTION
@fail_cleanly
def messages_list(
    config_path: str | None, db: str | None, state: str | None, direction: str | None, limit: int, as_json: bool
) -> None:
    """List messages, newest first, each with its recipients' states."""
    store = open_for_reading(storage_url(config_path, db))
    try:
        messages = store.list_messages(
            state=STATE_NAMES[state] if state else None,
            direction=Direction(direction) if direction else None,
            limit=limit,
        )
    finally:
        store.close()
    if as_json:
        click.echo(_to_json(messages))
        return
    if not messages:
        click.echo("no messages")
    for message in messages:
        click.echo("\n".join(_message_lines(message)))


@messages_group.command("show")
@_CONFIG_OPTION
@_DB_OPTION
@click.argument("key", metavar="MESSAGE-ID")
@_JSON_OPTION
@fail_cleanly
def messages_show(config_path: str | None, db: str | None, key: str, as_json: bool) -> None:
    """Show one message: recipients, delivery attempts, audit events and, for an outgoing message, its tracking
    (each recipient's state and the MDNs and DSNs received).

    MESSAGE-ID is the queue id or the message's Message-ID header, with or without angle brackets.
    """
    if not key.strip():
        raise click.BadParameter("must not be empty", param_hint="MESSAGE-ID")
    from hisp.commands.track import track_json, track_lines  # track imports this module's helpers

    store = open_for_reading(storage_url(config_path, db))
    try:
        try:
            detail = store.show(key)
        except StorageError as missing:
            refused = store.rejections(header_message_id=key)
            if not refused:
                raise missing from None
            _print_rejections(key, refused, as_json)  # refused before its 250 reply: never stored (AS-14)
            return
        try:
            tracked = store.tracking(detail.message.id)
        except StorageError:  # incoming messages and notifications are not tracked
            tracked = None
    finally:
        store.close()
    if as_json:
        data = json.loads(_to_json(detail))
        data["tracking"] = track_json(tracked) if tracked is not None else None
        click.echo(json.dumps(data, indent=2))
    else:
        lines = _detail_lines(detail)
        if tracked is None:
            lines.append("tracking: not tracked (an incoming message or a notification)")
        else:
            lines += [
                "tracking (MDNs and DSNs received, DN-7):",
                *("  " + line for line in track_lines(tracked, detail.message.recipients)),
            ]
        click.echo("\n".join(lines))


def _print_rejections(key: str | None, events: list[AuditEvent], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"rejected": json.loads(_to_json(events))}, indent=2))
        return
    if key is not None:
        click.echo(f"message {_clean(key)} was refused before its 250 reply and never stored; "
                   f"{len(events)} refusal{'s' if len(events) != 1 else ''}:")
    elif not events:
        click.echo("no refused messages")
    for event in events:
        lines = _event_lines(event)
        lines[0] += f"  Message-ID {_clean(event.header_message_id) if event.header_message_id else '-'}"
        click.echo("\n".join(lines))


@messages_group.command("rejected")
@_CONFIG_OPTION
@_DB_OPTION
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="At most N refusals.")
@_JSON_OPTION
@fail_cleanly
def messages_rejected(config_path: str | None, db: str | None, limit: int, as_json: bool) -> None:
    """List messages refused before their 250 reply (never stored: untrusted, unencrypted, bad signature ...),
    newest first, each with the SMTP reply, the peer, the Message-ID and the trust evidence (AS-14)."""
    store = open_for_reading(storage_url(config_path, db))
    try:
        events = store.rejections(limit=limit)
    finally:
        store.close()
    _print_rejections(None, events, as_json)
