"""``hisp demo`` end to end: two HISPs, our DNS responder, STARTTLS + AUTH submission, a maildir EHR.

What this proves: the whole path of issue 5 with nothing faked (real discovery over DNS, real SMTP between the
HISPs, the agent in both directions), and that the attachment the EHR receives is byte-identical to the one sent.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]


def test_demo_delivers_the_referral_intact(tmp_path: Path) -> None:
    attachment = FIXTURES / "ccda" / "Referral_Note.xml"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hisp.cli", "demo", "--attach", "../shared/fixtures/ccda/Referral_Note.xml",
         "--keep", str(tmp_path / "demo")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in ("submitted", "discovered", "signed", "encrypted", "relayed", "decrypted", "verified", "delivered"):
        assert f" {step}: " in out, step
    assert "trusted with anchor CN=Clinic Demo CA" in out
    assert "byte-identical" in out and "X-Direct-Trust: pass" in out
    # the processed and dispatched MDNs came back to the clinic, and dr.smith got the dispatched one (DN-3, DN-8)
    assert "hospital mdn: processed MDN from dr.jones@direct.hospital.example" in out
    assert "hospital mdn: dispatched MDN from dr.jones@direct.hospital.example" in out
    assert "clinic   MDN: processed: " in out and "clinic   MDN: dispatched: " in out
    assert "dr.smith's mailbox: dispatched from dr.jones@direct.hospital.example" in out
    assert "(reliable): dr.jones@direct.hospital.example dispatched" in out
    clinic_mail = list((tmp_path / "demo" / "clinic" / "ehr" / "Maildir" / "new").iterdir())
    assert 1 <= len(clinic_mail) <= 2  # the dispatched MDN, and the processed one if it came first
    assert elapsed < 30
    delivered = list((tmp_path / "demo" / "hospital" / "ehr" / "Maildir" / "new").iterdir())
    assert len(delivered) == 1
    assert b'filename="Referral_Note.xml"' in delivered[0].read_bytes() and attachment.stat().st_size > 0


def test_demo_refuses_to_keep_its_files_in_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    """``--keep`` into a used directory would rewrite its PKI and add to its databases: refused, exit 2."""
    from click.testing import CliRunner

    from hisp.cli import main

    (tmp_path / "old.txt").write_text("an earlier run")
    result = CliRunner().invoke(main, ["demo", "--keep", str(tmp_path)])
    assert result.exit_code == 2 and "is not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_demo_without_keep_says_its_files_are_removed() -> None:
    """Without ``--keep`` the maildir paths the demo printed are gone at exit: its last line says so and how to keep
    them (found by a fresh-user trial)."""
    done = subprocess.run(
        [sys.executable, "-m", "hisp.cli", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: done: ") and last.endswith("are removed (--keep DIR keeps them)"), last
    workspace = Path(last.split("its files in ", 1)[1].split(" are removed", 1)[0])
    assert workspace.name.startswith("hisp-demo-") and not workspace.exists()
