"""Smoke test of the S/MIME benchmark: ``bench/smime.py --quick`` still runs and prints its table.

It asserts no timing (a benchmark is not a test); it only keeps the script from rotting when the agent's
API changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "smime.py"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="the benchmark compares against openssl"),
]


def test_quick_benchmark_runs_and_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        timeout=180,
        check=False,
        cwd=BENCH.parents[1],
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert re.search(r"^\s*size\s+dir\s+ours\s+openssl cms\b.*ours/openssl", out, re.MULTILINE), out
    assert re.search(r"^\s*ratio\s+10k\s+outgoing\s+\d+\.\d+x", out, re.MULTILINE), out
    assert re.search(r"^\s*ratio\s+1m\s+incoming\s+\d+\.\d+x", out, re.MULTILINE), out
    assert "targets" in out
