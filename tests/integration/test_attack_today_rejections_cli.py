"""Adversarial probes of ``hisp messages rejected`` / ``hisp messages show`` falling back to reject events
(today: SqlStore.rejections, pipeline._reject keeping the peer's Message-ID, the trust evidence in the audit
trail). Peer-controlled text (Message-ID, certificate subjects in the verdict) must not reach a terminal raw."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from hisp.adapters.storage import SqlStore
from hisp.cli import main
from hisp.ports import AuditKind, AuditRecord

ESC_ID = "<\x1b]0;pwned\x07\x1b[2J" + "x" * 5 + "@evil.example>"
SUBJECT_VERDICT = "not trusted signer (untrusted: no anchor) CN=evil\r\n\x1b[31mFAKE LINE\x1b[0m (sha256 00)"
LONG_ID = "<" + "a" * 990 + "@x>"
SQLISH = "<x' OR '1'='1@evil.example>"


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    store = SqlStore.open(url)
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    for mid in (ESC_ID, LONG_ID, SQLISH):
        store.append(
            AuditKind.REJECT, now, node="n1", header_message_id=mid,
            record=AuditRecord(mail_from="a@evil.example", recipients=("b@clinic.example",),
                               verdict=SUBJECT_VERDICT, reason="554 5.7.1 untrusted\x1b[1m", remote="127.0.0.1"),
        )
    store.close()
    return url


def _hisp(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_rejected_text_output_escapes_control_characters(tmp_path: Path) -> None:
    """AS-14 (refusals explained) without letting a peer's Message-ID or a hostile certificate subject write
    terminal escape sequences or forge extra lines: no ESC/BEL/CR in the text output, one verdict line each."""
    url = _store(tmp_path)
    out = _hisp("messages", "rejected", "--db", url)
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert out.count("FAKE LINE") == 3 and all("verdict:" in line for line in out.splitlines() if "FAKE" in line)
    assert LONG_ID in out and SQLISH in out


@pytest.mark.parametrize("key", [ESC_ID, LONG_ID, SQLISH, SQLISH.strip("<>")])
def test_show_falls_back_to_the_refusal_of_a_hostile_message_id(tmp_path: Path, key: str) -> None:
    """AS-14: `messages show MESSAGE-ID` finds the refusal by the exact (hostile) Message-ID, bound as a parameter
    (an SQL-ish id matches only itself), and escapes it in the output."""
    url = _store(tmp_path)
    out = _hisp("messages", "show", "--db", url, key)
    assert "refused before its 250 reply" in out and "1 refusal:" in out
    assert "\x1b" not in out and "\x07" not in out


def test_rejected_json_round_trips_the_exact_values(tmp_path: Path) -> None:
    """AS-14: --json gives the exact stored values (escaped by JSON, not altered), one object per refusal."""
    url = _store(tmp_path)
    data = json.loads(_hisp("messages", "rejected", "--db", url, "--json"))
    ids = {event["header_message_id"] for event in data["rejected"]}
    assert ids == {ESC_ID, LONG_ID, SQLISH}
    assert all(event["verdict"] == SUBJECT_VERDICT for event in data["rejected"])
