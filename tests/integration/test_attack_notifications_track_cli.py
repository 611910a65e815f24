"""Adversarial probes of ``hisp track`` (issue 6): hostile keys and hostile peer text in the history.

The database is filled through the real pipeline (see test_attack_notifications_pipeline): dr.smith submits a
referral whose Message-ID holds SQL wildcard characters, and a trusted peer answers with a failed MDN whose
Failure text carries terminal escapes and a bidi override. ``hisp track`` is then run with hostile keys.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_attack_notifications_pipeline import RECIPIENT, clinic_side, mdn, original, receive, submit

from hisp.cli import main
from hisp.commands.demo import DemoSetup, prepare

WILD_ID = "<100%_sure@direct.clinic.example>"
HOSTILE = "\x1b[2J\x1b]0;pwned\x07refused \u202eexe.txt\x9b31m"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("track")
    setup: DemoSetup = prepare(root, datetime.now(UTC) - timedelta(minutes=5))

    async def fill() -> str:
        async with clinic_side(setup, root, name="clinic") as side:
            sent = original(WILD_ID)
            qid = await submit(side, sent)
            failed = mdn("failed", sent, side.clock()).replace(
                b"Failure: the EHR refused it", f"Failure: {HOSTILE}".encode()
            )
            await receive(side, setup, failed)
            return qid

    qid = asyncio.run(fill())
    return root / "clinic.sqlite3", qid


def track(db: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["track", "--db", f"sqlite:///{db}", *args])


@pytest.mark.parametrize("key", ["%", "_", "%@%", "100%", "<%>", "_" * 32, "%" * 32])
def test_sql_wildcards_match_nothing(filled: tuple[Path, str], key: str) -> None:
    result = track(filled[0], key)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""


def test_exact_key_with_wildcard_characters_is_found_in_any_form(filled: tuple[Path, str]) -> None:
    for key in (WILD_ID, WILD_ID.strip("<>").upper(), f"  {WILD_ID}  "):
        result = track(filled[0], key, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["queue_id"] == filled[1]


def test_hostile_peer_text_is_escaped_in_text_and_json(filled: tuple[Path, str]) -> None:
    text = track(filled[0], filled[1])
    assert text.exit_code == 0, text.stderr
    assert "failed" in text.stdout
    from hisp.adapters.storage import SqlStore
    from hisp.commands.track import track_lines

    store = SqlStore.open(f"sqlite:///{filled[0]}")
    try:
        lines = "\n".join(track_lines(store.tracking(filled[1])))  # before click, which strips CSI off a non-tty
    finally:
        store.close()
    for bad in ("\x1b", "\x07", "\u202e", "\x9b"):
        assert bad not in text.stdout and bad not in lines
    assert "\\x1b[2J" in lines
    out = track(filled[0], filled[1], "--json")
    assert out.exit_code == 0 and out.stdout.isascii()
    (recipient,) = json.loads(out.stdout)["recipients"]
    assert recipient["address"] == RECIPIENT and recipient["state"] == "failed"
    assert "\x1b[2J" in recipient["history"][0]["detail"]  # kept as data, escaped on output


def test_ten_kilobyte_key_is_a_clean_miss(filled: tuple[Path, str]) -> None:
    result = track(filled[0], "<" + "a" * 10_000 + "@x>")
    assert result.exit_code == 1
    assert result.stdout == "" and result.stderr.startswith("hisp: nothing is tracked under")


@pytest.mark.parametrize("key", ["<a\x1b]0;pwned\x07@x>", "a\rb\nhisp: fake second line"])
def test_control_characters_in_a_missed_key_are_escaped(filled: tuple[Path, str], key: str) -> None:
    result = track(filled[0], key)
    assert result.exit_code == 1
    assert not any(c in result.stderr.rstrip("\n") for c in "\x1b\x07\r\n"), repr(result.stderr)
