"""``hisp track`` against a real store (SQLite always, PostgreSQL when HISP_TEST_POSTGRES_URL is set) filled through
SqlStore's own enqueue(track=...) and update_tracking: each recipient's state and history in text and JSON, lookups
by queue id or Message-ID in any form, and failures (unknown or untracked key, no database, empty key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hisp.adapters.storage import SqlStore, default_url, upgrade
from hisp.adapters.storage.testing import backends, scratch_database
from hisp.cli import main
from hisp.core.dsn import NO_DISPATCHED_MDN
from hisp.core.tracking import Event, MessageTrack
from hisp.ports import Direction, Envelope, TrackDecision, TrackedMessage

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SMITH = "dr.smith@direct.clinic.example"
JONES = "dr.jones@direct.hospital.example"
LEE = "Dr.Lee@Direct.Hospital.example"
REFERRAL = "<Referral-1@Clinic.example>"


def _raw(message_id: str) -> bytes:
    return f"From: {SMITH}\r\nMessage-ID: {message_id}\r\nSubject: referral\r\n\r\nbody\r\n".encode()


@dataclass(frozen=True)
class Filled:
    url: str
    referral: str  # reliable: JONES processed then dispatched; LEE processed then timed out
    general: str  # general mode, nothing received yet
    untracked: str  # a message without a track


def _apply(store: SqlStore, queue_id: str, address: str, event: Event, at: datetime, detail: str) -> None:
    def decide(tracked: TrackedMessage) -> TrackDecision[None]:
        tracked.track.apply(address, event, at, detail=detail)
        return TrackDecision(None)

    store.update_tracking(decide, now=at, queue_id=queue_id)


def _fill(url: str) -> Filled:
    store = SqlStore.open(url)
    try:
        track = MessageTrack.start(REFERRAL, (JONES, LEE), at=T0, reliable=True)
        referral = store.enqueue(
            Envelope(Direction.OUTGOING, SMITH, (JONES, LEE), REFERRAL), _raw(REFERRAL), now=T0, track=track
        ).id
        at = T0 + timedelta(minutes=2)
        _apply(store, referral, JONES, Event.PROCESSED, at, f"MDN processed from {JONES}")
        _apply(store, referral, LEE, Event.PROCESSED, at, f"MDN processed from {LEE}")
        _apply(store, referral, JONES, Event.DISPATCHED, at + timedelta(minutes=1), f"MDN dispatched from {JONES}")
        deadline = track.deadline

        def expire(tracked: TrackedMessage) -> TrackDecision[None]:
            tracked.track.expire(deadline)
            return TrackDecision(None)

        store.update_tracking(expire, now=deadline, queue_id=referral)
        general_track = MessageTrack.start(
            "<general-1@clinic.example>", (JONES,), at=T0 + timedelta(minutes=5), reliable=False,
            timeout=timedelta(minutes=90),
        )  # fmt: skip
        general = store.enqueue(
            Envelope(Direction.OUTGOING, SMITH, (JONES,), "<general-1@clinic.example>"),
            _raw("<general-1@clinic.example>"), now=T0 + timedelta(minutes=5), track=general_track,
        ).id  # fmt: skip
        untracked = store.enqueue(
            Envelope(Direction.OUTGOING, SMITH, (JONES,), "<plain-1@clinic.example>"), _raw("<plain-1@clinic.example>"),
            now=T0,
        ).id  # fmt: skip
    finally:
        store.close()
    return Filled(url, referral, general, untracked)


@pytest.fixture(params=backends())
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Filled]:
    with scratch_database(request.param, tmp_path) as url:
        yield _fill(url)


def hisp(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("key", ["queue-id", REFERRAL, "referral-1@clinic.example", " <REFERRAL-1@CLINIC.EXAMPLE> "])
def test_text_shows_each_recipient_state_and_history(filled: Filled, key: str) -> None:
    result = hisp("track", "--db", filled.url, filled.referral if key == "queue-id" else key)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:8] == [
        f"tracked message {filled.referral}",
        f"  Message-ID: {REFERRAL}",
        f"  sender:     {SMITH}",
        "  mode:       reliable (final-delivery notification requested)",
        "  submitted:  2026-11-30T12:00:00+00:00",
        "  deadline:   2026-11-30T13:00:00+00:00 (timeout 3600 s)",
        "  complete:   yes",
        "recipients:",
    ]
    assert lines[8:] == [
        f"  {JONES}  dispatched",
        f"    2026-11-30T12:02:00+00:00  processed  sent -> processed  forward  detail: MDN processed from {JONES}",
        "    2026-11-30T12:03:00+00:00  dispatched  processed -> dispatched  forward"
        f"  detail: MDN dispatched from {JONES}",
        f"  {LEE}  timed-out",
        f"    2026-11-30T12:02:00+00:00  processed  sent -> processed  forward  detail: MDN processed from {LEE}",
        f"    2026-11-30T13:00:00+00:00  timeout  processed -> timed-out  emit-dsn  status {NO_DISPATCHED_MDN}"
        "  detail: no notification in time",
    ]


def test_text_of_a_general_track_still_waiting(filled: Filled) -> None:
    result = hisp("track", "--db", filled.url, "<general-1@clinic.example>")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "  mode:       general (no final-delivery notification requested)\n" in out
    assert "  deadline:   2026-11-30T13:35:00+00:00 (timeout 5400 s)\n" in out
    assert "  complete:   no\n" in out
    # the fixture never relayed it: still in our queue, so not waiting for notifications but to be sent (DN-9)
    assert out.endswith(
        f"  {JONES}  sent  (not sent yet: in our queue after 0 attempts; the timeout starts when it leaves, DN-9)\n"
        "    no notifications yet\n"
    )


def test_json(filled: Filled) -> None:
    result = hisp("track", "--db", filled.url, "--json", "referral-1@clinic.example")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {k: v for k, v in data.items() if k != "recipients"} == {
        "queue_id": filled.referral,
        "message_id": REFERRAL,
        "sender": SMITH,
        "mode": "reliable",
        "final_delivery_requested": True,
        "consume_processed": False,
        "sent_at": "2026-11-30T12:00:00+00:00",
        "deadline": "2026-11-30T13:00:00+00:00",
        "timeout_seconds": 3600.0,
        "complete": True,
    }
    jones, lee = data["recipients"]
    assert (jones["address"], jones["state"], jones["complete"]) == (JONES, "dispatched", True)
    assert [h["event"] for h in jones["history"]] == ["processed", "dispatched"]
    assert lee["history"][-1] == {
        "at": "2026-11-30T13:00:00+00:00",
        "event": "timeout",
        "before": "processed",
        "after": "timed-out",
        "action": "emit-dsn",
        "status": NO_DISPATCHED_MDN,
        "detail": "no notification in time",
    }
    assert lee["history"][0]["status"] is None
    general = json.loads(hisp("track", "--db", filled.url, "--json", filled.general).stdout)
    assert (general["mode"], general["final_delivery_requested"], general["complete"]) == ("general", False, False)
    assert general["recipients"] == [{"address": JONES, "state": "sent", "complete": False, "history": []}]


@pytest.mark.parametrize("key", ["<nobody@nowhere>", "0" * 32, "untracked", "<plain-1@clinic.example>"])
def test_nothing_tracked_exits_1(filled: Filled, key: str) -> None:
    key = filled.untracked if key == "untracked" else key
    result = hisp("track", "--db", filled.url, key)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"hisp: nothing is tracked under {key}\n"
    result = hisp("track", "--db", filled.url, "--json", key)
    assert (result.exit_code, result.stdout) == (1, "")


def test_config_file_names_the_default_database(tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    config.write_text("")
    filled = _fill(default_url(tmp_path))
    result = hisp("track", "-c", str(config), REFERRAL)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"tracked message {filled.referral}\n")


def test_missing_database_empty_key_and_no_store_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    config.write_text("")
    result = hisp("track", "-c", str(config), REFERRAL)
    assert result.exit_code == 1
    assert "no database at" in result.stderr
    assert list(tmp_path.iterdir()) == [config]  # nothing created
    result = hisp("track", "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}", " ")
    assert result.exit_code == 2
    assert "must not be empty" in result.stderr
    result = hisp("track", REFERRAL)
    assert result.exit_code == 2
    assert "-c FILE" in result.stderr


def test_old_schema_is_an_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, "0001")
    result = hisp("track", "--db", url, REFERRAL)
    assert result.exit_code == 1
    assert "schema revision 0001" in result.stderr


def test_control_characters_from_the_network_are_escaped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    store = SqlStore.open(url)
    evil = "<\x1b]0;owned\x07@peer.example>"
    try:
        track = MessageTrack.start(evil, ("evil\x1b[2J@peer.example",), at=T0, reliable=True)
        stored = store.enqueue(
            Envelope(Direction.OUTGOING, "me\x1b[1m@clinic.example", ("evil\x1b[2J@peer.example",), evil),
            b"Subject: x\r\n\r\n", now=T0, track=track,
        )  # fmt: skip

        def decide(tracked: TrackedMessage) -> TrackDecision[None]:
            tracked.track.apply("evil\x1b[2J@peer.example", Event.FAILED, T0, detail="MDN failed: \x1b[31mred")
            return TrackDecision(None)

        store.update_tracking(decide, now=T0, queue_id=stored.id)
    finally:
        store.close()
    result = hisp("track", "--db", url, stored.id)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "evil\\x1b[2J@peer.example  failed" in result.stdout
    assert "detail: MDN failed: \\x1b[31mred" in result.stdout
    assert "me\\x1b[1m@clinic.example" in result.stdout
    result = hisp("track", "--db", url, "--json", stored.id)
    assert "\x1b" not in result.stdout
    assert json.loads(result.stdout)["recipients"][0]["history"][0]["detail"] == "MDN failed: \x1b[31mred"


def test_listed_in_help() -> None:
    result = hisp("--help")
    assert result.exit_code == 0
    assert "track" in result.stdout


def test_messages_show_includes_the_tracking_of_an_outgoing_message(filled: Filled) -> None:
    """``hisp messages show`` of a tracked message ends with its tracking; an untracked one says so."""
    result = hisp("messages", "show", "--db", filled.url, filled.referral)
    assert result.exit_code == 0, result.output
    assert "tracking (MDNs and DSNs received, DN-7):" in result.stdout
    assert f"    {JONES}  dispatched" in result.stdout and f"    {LEE}  timed-out" in result.stdout
    data = json.loads(hisp("messages", "show", "--db", filled.url, "--json", filled.referral).stdout)
    assert data["tracking"]["mode"] == "reliable" and data["message"]["id"] == filled.referral
    untracked = hisp("messages", "show", "--db", filled.url, filled.untracked)
    assert "tracking: not tracked" in untracked.stdout
    untracked_json = hisp("messages", "show", "--db", filled.url, "--json", filled.untracked)
    assert json.loads(untracked_json.stdout)["tracking"] is None
