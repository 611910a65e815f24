"""``hisp track MESSAGE-ID``: the delivery status of one tracked outgoing message, per recipient.

Reads the store named by the configuration (``[storage] url``, else the SQLite file beside the configuration) or
by ``--db URL``, exactly as ``hisp messages`` does (:func:`hisp.commands.messages.open_for_reading`): it never
creates or migrates a database, so a missing SQLite file, an empty database or one at another schema revision is
an error (exit 1).

MESSAGE-ID is the queue id (32 hex digits) of the original message, or its Message-ID header in any form
(with or without angle brackets, any case: the correlation key of DN-2); the newest such track is shown.

Text output (control characters escaped: addresses, Message-IDs and details come from remote peers)::

    tracked message 0f3c...  (queue id)
      Message-ID: <ref-1@clinic.example>
      sender:     dr.smith@direct.clinic.example
      mode:       reliable (final-delivery notification requested)
      submitted:  2026-11-30T12:00:00+00:00
      deadline:   2026-11-30T13:00:00+00:00 (timeout 3600 s)
      complete:   no
    recipients:
      dr.jones@direct.hospital.example  processed
        2026-11-30T12:02:00+00:00  processed  sent -> processed  forward  detail: MDN processed from ...

``--json`` prints the same facts as one JSON object (times ISO 8601 UTC, the timeout in seconds)::

    {"queue_id": ..., "message_id": ..., "sender": ..., "mode": "reliable", "final_delivery_requested": true,
     "consume_processed": false, "sent_at": ..., "deadline": ..., "timeout_seconds": 3600.0, "complete": false,
     "recipients": [{"address": ..., "state": "processed", "complete": false,
                     "history": [{"at": ..., "event": ..., "before": ..., "after": ..., "action": ...,
                                  "status": null, "detail": ...}]}]}

Exit status: 0 found, 1 nothing tracked under the key (``hisp: nothing is tracked under KEY`` on stderr) or the
store cannot be read, 2 usage error.

Spec: issue 6 ("Delivery status is data, not only mail: ``hisp track MESSAGE-ID [--json]`` prints each
recipient's state and the notifications received"); DN-7..DN-10.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from hisp.commands.common import fail_cleanly
from hisp.commands.messages import _clean, _time, open_for_reading, storage_url
from hisp.core.tracking import Mode, RecipientTrack, Record, is_complete
from hisp.errors import StorageError
from hisp.ports import RecipientState, RecipientStatus, TrackedMessage

__all__ = ["track", "track_json", "track_lines"]

#: How each mode is shown in text.
MODE_TEXT = {
    Mode.RELIABLE: "reliable (final-delivery notification requested)",
    Mode.GENERAL: "general (no final-delivery notification requested)",
}


def _record_line(record: Record) -> str:
    line = (
        f"    {_time(record.at)}  {record.event.value}  {record.before.value} -> {record.after.value}"
        f"  {record.action.value}"
    )
    if record.status:
        line += f"  status {_clean(record.status)}"
    if record.detail:
        line += f"  detail: {_clean(record.detail)}"
    return line


def _recipient_lines(mode: Mode, recipient: RecipientTrack, queued: RecipientStatus | None = None) -> list[str]:
    if is_complete(mode, recipient.state):
        done = ""
    elif queued is not None and queued.state in (RecipientState.QUEUED, RecipientState.IN_FLIGHT):
        tries = f"{queued.attempts} attempt{'s' if queued.attempts != 1 else ''}"
        done = f"  (not sent yet: in our queue after {tries}; the timeout starts when it leaves, DN-9)"
    else:
        done = "  (waiting)"
    lines = [f"  {_clean(recipient.address)}  {recipient.state.value}{done}"]
    if not recipient.history:
        lines.append("    no notifications yet")
    lines.extend(_record_line(r) for r in recipient.history)
    return lines


def track_lines(tracked: TrackedMessage, queue: Sequence[RecipientStatus] = ()) -> list[str]:
    """The text report of one track (see the module docstring), one string per line, control characters escaped.

    :param tracked: from :meth:`hisp.adapters.storage.SqlStore.tracking`.
    :param queue: the original message's recipients in our queue (``SqlStore.show``), to tell a recipient still
        waiting to be sent from one waiting for its notifications; empty when unknown.
    :returns: the lines, without newlines.
    """
    track = tracked.track
    by_address = {q.address.strip().lower(): q for q in queue}
    return [
        f"tracked message {tracked.queue_id}",
        f"  Message-ID: {_clean(tracked.header_message_id)}",
        f"  sender:     {_clean(tracked.sender) if tracked.sender else '<>'}",
        f"  mode:       {MODE_TEXT[track.mode]}" + ("; processed MDNs consumed" if track.consume_processed else ""),
        f"  submitted:  {_time(track.sent_at)}",
        f"  deadline:   {_time(track.deadline)} (timeout {track.timeout.total_seconds():g} s)",
        f"  complete:   {'yes' if tracked.complete else 'no'}",
        "recipients:",
        *(
            line
            for recipient in track.recipients.values()
            for line in _recipient_lines(track.mode, recipient, by_address.get(recipient.address.strip().lower()))
        ),
    ]


def track_json(tracked: TrackedMessage) -> dict[str, Any]:
    """The JSON report of one track (see the module docstring): plain types, times ISO 8601 UTC.

    :param tracked: from :meth:`hisp.adapters.storage.SqlStore.tracking`.
    :returns: a dict ready for :func:`json.dumps`.
    """
    track = tracked.track
    return {
        "queue_id": tracked.queue_id,
        "message_id": tracked.header_message_id,
        "sender": tracked.sender,
        "mode": track.mode.value,
        "final_delivery_requested": track.mode is Mode.RELIABLE,
        "consume_processed": track.consume_processed,
        "sent_at": track.sent_at.isoformat(),
        "deadline": track.deadline.isoformat(),
        "timeout_seconds": track.timeout.total_seconds(),
        "complete": tracked.complete,
        "recipients": [
            {
                "address": recipient.address,
                "state": recipient.state.value,
                "complete": is_complete(track.mode, recipient.state),
                "history": [
                    {
                        "at": record.at.isoformat(),
                        "event": record.event.value,
                        "before": record.before.value,
                        "after": record.after.value,
                        "action": record.action.value,
                        "status": record.status,
                        "detail": record.detail,
                    }
                    for record in recipient.history
                ],
            }
            for recipient in track.recipients.values()
        ],
    }


@click.command("track")
@click.option(
    "-c",
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help="The configuration file (its storage URL is used).",
)
@click.option(
    "--db",
    default=None,
    metavar="URL",
    help="Storage URL instead of the configuration's (sqlite:///FILE or postgresql+psycopg://...).",
)
@click.argument("key", metavar="MESSAGE-ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@fail_cleanly
def track(config_path: str | None, db: str | None, key: str, as_json: bool) -> None:
    """Show the delivery status of a tracked outgoing message: each recipient's state and the notifications
    (MDNs, DSNs, timeouts) received.

    MESSAGE-ID is the queue id or the message's Message-ID header, with or without angle brackets, any case.
    """
    if not key.strip():
        raise click.BadParameter("must not be empty", param_hint="MESSAGE-ID")
    store = open_for_reading(storage_url(config_path, db))
    try:
        tracked = store.tracking(key)
        try:
            queue: Sequence[RecipientStatus] = store.show(tracked.queue_id).message.recipients
        except StorageError:  # the original was purged: the track alone is shown
            queue = ()
    except StorageError as exc:  # the key is the user's input, echoed: control characters escaped
        if exc.message.startswith("nothing is tracked under"):
            raise StorageError(f"nothing is tracked under {_clean(key[:200])}") from None
        raise
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(track_json(tracked), indent=2))
    else:
        click.echo("\n".join(track_lines(tracked, queue)))
