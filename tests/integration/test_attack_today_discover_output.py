"""Adversarial probe of ``hisp discover --local`` (today) with a hostile certificate: the partner's (or a hostile
DNS zone's) certificate chains to a CA whose name carries terminal escape sequences; the verdict printed to the
operator's terminal must not carry them raw (as ``hisp messages show`` escapes them). No network: with --local,
DNS is never asked (CD-8)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from hisp.cli import main
from hisp.testing.pki import TestPKI

ADDRESS = "dr.b@partner.example"


def test_discover_escapes_control_characters_of_hostile_certificate_names(tmp_path: Path) -> None:
    """AS-20 / CD-8 (the verdict explained to the operator) without letting a peer's certificate names write
    terminal escape sequences: no ESC or BEL in stdout or stderr."""
    at = datetime.now(UTC)
    good = TestPKI(at=at, name="Good CA")
    evil = TestPKI(at=at, name="Evil\x1b]0;owned\x07\x1b[2J CA")
    (tmp_path / "good.pem").write_bytes(good.ca.certificate.to_pem())
    (tmp_path / "evil.pem").write_bytes(evil.user(ADDRESS).certificate.to_pem())
    result = CliRunner().invoke(main, [
        "discover", ADDRESS, "--anchor", str(tmp_path / "good.pem"), "--local", str(tmp_path / "evil.pem"),
        "--dns-server", "127.0.0.1:9",
    ])
    assert result.exit_code == 1  # undeliverable: the local tier decides (CD-8)
    assert "not consulted (CD-8)" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
