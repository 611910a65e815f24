"""``hisp messages list`` / ``show`` against a real store (SQLite always, PostgreSQL when HISP_TEST_POSTGRES_URL is
set) filled through SqlStore's own enqueue/claim/complete/retry_later/bounce: states, attempts, audit events
(kind, time, reason, fingerprints, verdict), notifications, lookups by queue id or Message-ID, and failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hisp.adapters.storage import SqlStore, default_url
from hisp.adapters.storage.testing import backends, scratch_database
from hisp.cli import main
from hisp.ports import AuditRecord, Direction, Envelope, Job

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SMITH = "dr.smith@direct.clinic.example"
JONES = "dr.jones@direct.hospital.example"
LEE = "dr.lee@direct.hospital.example"
FINGERPRINT = "ab" * 32
VERDICT = "trusted: anchor CN=Hospital CA"


def _raw(message_id: str) -> bytes:
    return f"From: {SMITH}\r\nMessage-ID: {message_id}\r\nSubject: referral\r\n\r\nbody\r\n".encode()


@dataclass(frozen=True)
class Filled:
    url: str
    referral: str  # outgoing: JONES delivered, LEE bounced (DSN pending)
    retried: str  # outgoing: JONES queued again after a 4xx
    incoming: str  # incoming: JONES queued, never tried


def _job(jobs: list[Job], message_id: str, address: str) -> Job:
    return next(j for j in jobs if j.message_id == message_id and j.address == address)


def _fill(url: str) -> Filled:
    store = SqlStore.open(url)
    try:
        referral = store.enqueue(
            Envelope(Direction.OUTGOING, SMITH, (JONES, LEE), "<referral-1@clinic>"), _raw("<referral-1@clinic>"),
            now=T0, node="n1", audit=AuditRecord(remote="127.0.0.1", reason="250 queued"),
        ).id  # fmt: skip
        retried = store.enqueue(
            Envelope(Direction.OUTGOING, SMITH, (JONES,), "<retry-1@clinic>"), _raw("<retry-1@clinic>"),
            now=T0 + timedelta(minutes=1), node="n1",
        ).id  # fmt: skip
        jobs = store.claim("n2", T0 + timedelta(minutes=2), 60, 10)
        store.complete(
            _job(jobs, referral, JONES), T0 + timedelta(minutes=3), target="smtp://mx.hospital.example:25",
            reply="250 2.0.0 ok", audit=AuditRecord(fingerprints=(FINGERPRINT,), verdict=VERDICT, reason="relayed"),
        )  # fmt: skip
        store.bounce(
            _job(jobs, referral, LEE), T0 + timedelta(minutes=3), "550 5.1.1 no such user",
            target="smtp://mx.hospital.example:25",
        )  # fmt: skip
        store.retry_later(
            _job(jobs, retried, JONES), T0 + timedelta(minutes=3), T0 + timedelta(minutes=8),
            target="smtp://mx.hospital.example:25", reply="451 4.3.0 try later",
        )  # fmt: skip
        incoming = store.enqueue(
            Envelope(Direction.INCOMING, SMITH, (JONES,), None), _raw("<in-1@clinic>"),
            now=T0 + timedelta(minutes=4), node="n1",
        ).id  # fmt: skip
    finally:
        store.close()
    return Filled(url, referral, retried, incoming)


@pytest.fixture(params=backends())
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Filled]:
    with scratch_database(request.param, tmp_path) as url:
        yield _fill(url)


def hisp(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _list(filled: Filled, *args: str) -> Result:
    return hisp("messages", "list", "--db", filled.url, *args)


def _listed_ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [m["id"] for m in json.loads(result.stdout)]


def test_list_newest_first_with_recipient_states(filled: Filled) -> None:
    result = _list(filled)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    heads = [line for line in lines if not line.startswith(" ")]
    assert [h.split()[0] for h in heads] == [filled.incoming, filled.retried, filled.referral]
    assert any(JONES in line and "delivered" in line and "250 2.0.0 ok" in line for line in lines)
    assert any(LEE in line and "bounced" in line and "550 5.1.1" in line for line in lines)
    assert any("queued" in line and "next attempt 2026-11-30T12:08:00+00:00" in line for line in lines)
    assert "<referral-1@clinic>" in result.stdout


def test_list_filters(filled: Filled) -> None:
    assert _listed_ids(_list(filled, "--json", "--state", "bounced")) == [filled.referral]
    assert _listed_ids(_list(filled, "--json", "--state", "queued")) == [filled.incoming, filled.retried]
    assert _listed_ids(_list(filled, "--json", "--state", "in-flight")) == []
    assert _listed_ids(_list(filled, "--json", "--direction", "incoming")) == [filled.incoming]
    assert _listed_ids(_list(filled, "--json", "--direction", "outgoing", "--limit", "1")) == [filled.retried]
    assert _list(filled, "--state", "failed").stdout == "no messages\n"


def test_list_json(filled: Filled) -> None:
    result = _list(filled, "--json", "--state", "bounced")
    (message,) = json.loads(result.stdout)
    assert message["direction"] == "outgoing"
    assert message["header_message_id"] == "<referral-1@clinic>"
    assert message["received_at"] == "2026-11-30T12:00:00+00:00"
    assert {r["address"]: r["state"] for r in message["recipients"]} == {JONES: "delivered", LEE: "bounced"}


@pytest.mark.parametrize("key", ["queue-id", "<referral-1@clinic>", "referral-1@clinic"])
def test_show_by_queue_id_or_message_id(filled: Filled, key: str) -> None:
    result = hisp("messages", "show", "--db", filled.url, filled.referral if key == "queue-id" else key)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"message {filled.referral}\n")
    assert "Message-ID: <referral-1@clinic>" in out
    # attempts
    assert "attempt 1 by n2 -> delivered  target smtp://mx.hospital.example:25  reply: 250 2.0.0 ok" in out
    assert "attempt 1 by n2 -> bounced" in out
    # audit events: kind, time, reason, fingerprints, verdict
    assert "2026-11-30T12:00:00+00:00  accept  node n1" in out and "remote 127.0.0.1" in out
    assert "2026-11-30T12:03:00+00:00  relay  node n2" in out
    assert f"fingerprint sha256 {FINGERPRINT}" in out
    assert f"verdict: {VERDICT}" in out
    assert "bounce  node n2" in out and "reason: 550 5.1.1 no such user" in out
    # notifications: the DSN owed to the sender for the bounced recipient
    assert f"dsn to {SMITH}  pending" in out


def test_show_json(filled: Filled) -> None:
    result = hisp("messages", "show", "--db", filled.url, "--json", "referral-1@clinic")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["message"]["id"] == filled.referral
    assert [(a["address"], a["result"]) for a in detail["attempts"]] == [(JONES, "delivered"), (LEE, "bounced")]
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds == ["accept", "relay", "bounce"]
    relay = detail["events"][1]
    assert relay["fingerprints"] == [FINGERPRINT] and relay["verdict"] == VERDICT
    assert relay["at"] == "2026-11-30T12:03:00+00:00"
    (dsn,) = detail["notifications"]
    assert (dsn["kind"], dsn["status"], dsn["address"]) == ("dsn", "pending", SMITH)


def test_show_message_without_history(filled: Filled) -> None:
    result = hisp("messages", "show", "--db", filled.url, filled.incoming)
    assert result.exit_code == 0, result.output
    assert "attempts: none" in result.stdout and "notifications: none" in result.stdout
    assert "Message-ID: -" in result.stdout


def test_show_unknown_id_exits_1(filled: Filled) -> None:
    result = hisp("messages", "show", "--db", filled.url, "<nobody@nowhere>")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "hisp: no message <nobody@nowhere>\n"


def test_config_file_names_the_default_database(tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    config.write_text("")
    filled = _fill(default_url(tmp_path))
    result = hisp("messages", "list", "-c", str(config), "--json")
    assert set(_listed_ids(result)) == {filled.referral, filled.retried, filled.incoming}
    result = hisp("messages", "show", "-c", str(config), filled.retried)
    assert result.exit_code == 0 and "451 4.3.0 try later" in result.stdout


def test_config_storage_url_is_used(tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    config.write_text('[storage]\nurl = "sqlite:///queue/store.sqlite3"\n')  # relative to the config file
    (tmp_path / "queue").mkdir()
    filled = _fill(f"sqlite:///{tmp_path / 'queue' / 'store.sqlite3'}")
    result = hisp("messages", "list", "-c", str(config), "--json", "--state", "bounced")
    assert _listed_ids(result) == [filled.referral]


def test_missing_sqlite_file_is_an_error_and_not_created(tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    config.write_text("")
    result = hisp("messages", "list", "-c", str(config))
    assert result.exit_code == 1
    assert "no database at" in result.stderr
    assert list(tmp_path.iterdir()) == [config]


def test_database_without_tables_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite3").write_bytes(b"")
    result = hisp("messages", "list", "--db", f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    assert result.exit_code == 1
    assert "holds no hisp tables" in result.stderr


def test_neither_config_nor_db_is_a_usage_error() -> None:
    result = hisp("messages", "list")
    assert result.exit_code == 2
    assert "-c FILE" in result.stderr


def test_invalid_config_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "hisp.toml"
    config.write_text("[trust\n")
    result = hisp("messages", "list", "-c", str(config))
    assert result.exit_code == 1
    assert "not valid TOML" in result.stderr


def test_control_characters_from_the_network_are_escaped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    store = SqlStore.open(url)
    try:
        stored = store.enqueue(
            Envelope(Direction.INCOMING, "evil\x1b[2J@peer.example", (JONES,), "<\x1b]0;owned\x07@x>"),
            b"Subject: x\r\n\r\n", now=T0,
        )  # fmt: skip
    finally:
        store.close()
    for args in (["list"], ["show", stored.id]):
        result = hisp("messages", *args, "--db", url)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "evil\\x1b[2J@peer.example" in result.stdout
