"""Smoke tests of the benchmarks: ``bench/smime.py --quick``, ``bench/discovery.py --quick`` and
``bench/gateway.py --quick`` still run and print their tables.

They assert no timing (a benchmark is not a test); they only keep the scripts from rotting when the APIs
change.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "smime.py"
DISCOVERY_BENCH = BENCH.parent / "discovery.py"
GATEWAY_BENCH = BENCH.parent / "gateway.py"


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="the benchmark compares against openssl")
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


def test_quick_discovery_benchmark_runs_and_prints_its_figures() -> None:
    if shutil.which("named") is None:
        pytest.fail("BIND named is not installed: apt-get install bind9 bind9-dnsutils (.ci/run does)")
    result = subprocess.run(
        [sys.executable, str(DISCOVERY_BENCH), "--quick"],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=DISCOVERY_BENCH.parents[1],
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    for kind in ("address-bound in DNS", "domain-bound in DNS", "nothing published"):
        # lookups per second, ms each, bare round trips, queries per lookup and the minimum
        assert re.search(rf"^{kind}\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+\s+\S", out, re.MULTILINE), out
    assert re.search(r"^lookup \(cache hit\)\s+\d+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"^DiscoveryCache\.get\s+\d+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE), out
    assert "targets" in out and "warm lookup p99 under 0.2 ms" in out


def test_quick_gateway_benchmark_runs_and_prints_its_table() -> None:
    # Two HISP nodes on loopback (two `hisp serve` processes), a handful of messages each size, each answered by its
    # processed MDN, then the library reference; no timing is asserted.
    result = subprocess.run(
        [sys.executable, str(GATEWAY_BENCH), "--quick"],
        capture_output=True,
        timeout=240,
        check=False,
        cwd=GATEWAY_BENCH.parents[1],
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode(errors="replace")[-2000:]
    header = (
        r"^size\s+plain\s+msgs\s+ok\s+mdn\s+msg/s\s+p50 ms\s+p99 ms\s+EHR p50\s+EHR p99\b.*"
        r"CPU s/msg\s+floor\s+ratio"
    )
    assert re.search(header, out, re.M), out
    for size in ("10k", "1m"):
        # every message delivered intact and its MDN back: msgs == ok == mdn; then msg/s, p50, p99
        row = rf"^\s*{size}\s+[\d.]+ [kM]B\s+(\d+)\s+\1\s+\1\s+[\d.]+\s+[\d.]+\s+[\d.]+\s"
        assert re.search(row, out, re.M), out
    # 4 private RSA operations per message: sign and decrypt the message, sign and decrypt its MDN
    assert re.search(r"^RSA floor: .* / 4 private ops per message .* = [\d,.]+ msg/s$", out, re.M), out
    assert re.search(r"^\s+(PASS|MISS)\s+10k at >= 0\.5 of the RSA floor", out, re.M), out
    # by default each node is its own `hisp serve` process, stopped with SIGTERM: both must exit 0
    assert re.search(r"^\s+after SIGTERM: clinic exited 0, hospital exited 0$", out, re.M), out
    # the library ceiling, measured in the same run: three SMTP legs with the bare libraries, then the ceiling
    for leg in ("submission", "relay", "MDN relay"):
        assert re.search(
            rf"^\s+{leg}\s+[\d.]+ kB\s+STARTTLS.* ms CPU per transaction: stock\s+[\d.]+ .*hisp listener\s+[\d.]+ ",
            out,
            re.M,
        ), out
    assert re.search(
        r"^\s+per message: [\d.]+ ms SMTP \+ [\d.]+ ms for 4 RSA private ops = .* of the RSA floor$", out, re.M
    ), out
    assert re.search(r"^\s+library ceiling [\d.]+ of the floor \([\d,.]+ msg/s\): ", out, re.M), out
