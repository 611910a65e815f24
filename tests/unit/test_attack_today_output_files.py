"""Adversarial probes of output files written through for non-regular targets (hisp.adapters.bundles
write_through_special / write_atomically, hisp.cli._write_output). Only FIFOs and files under a temporary
directory are used: never a real device."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hisp.adapters.bundles import write_atomically, write_through_special


def _run(code: str, timeout: float = 3.0) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_fifo_without_reader_does_not_hang(tmp_path: Path) -> None:
    """TB-3 (bundle written out; a refresh must finish or fail, never wedge): a FIFO nobody reads must fail
    promptly (e.g. O_NONBLOCK open -> ENXIO), not block the process forever."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    done = _run(f"""
        from pathlib import Path
        from hisp.adapters.bundles import write_through_special
        try:
            write_through_special(Path({str(fifo)!r}), b"x")
        except OSError as exc:
            print("error", exc.errno)
    """)
    assert done is not None, "write_through_special blocked on a FIFO with no reader"
    assert done.stdout.strip() == f"error {errno.ENXIO}", done.stdout + done.stderr


def test_fifo_with_reader_is_written_through_not_replaced(tmp_path: Path) -> None:
    """TB-3: a FIFO target is written in place and stays a FIFO (never renamed over)."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        write_atomically(fifo, b"bundle-bytes")
        out, _ = reader.communicate(timeout=3)
    finally:
        reader.kill()
    assert out == b"bundle-bytes"
    assert fifo.is_fifo()


def test_directory_target_is_refused(tmp_path: Path) -> None:
    """TB-3: a directory is never written into or replaced."""
    target = tmp_path / "d"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        write_through_special(target, b"x")
    with pytest.raises(IsADirectoryError):
        write_atomically(target, b"x")
    assert target.is_dir()


def test_symlink_to_a_fifo_is_written_through_and_kept(tmp_path: Path) -> None:
    """TB-3: a symlink to a FIFO is written through (os.stat follows it); link and FIFO both survive."""
    fifo = tmp_path / "real.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        write_atomically(link, b"abc")
        out, _ = reader.communicate(timeout=3)
    finally:
        reader.kill()
    assert out == b"abc"
    assert link.is_symlink() and fifo.is_fifo()


def test_symlink_to_a_regular_file_updates_the_target(tmp_path: Path) -> None:
    """TB-3 (replace the bundle atomically): --out LINK where LINK points at the served bundle file must update
    that file (resolve the link, then replace the target atomically), not silently swap the link for a copy."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "bundle.p7b"
    real.write_bytes(b"old")
    link = tmp_path / "bundle.p7b"
    link.symlink_to(real)
    write_atomically(link, b"new")
    assert real.read_bytes() == b"new"
    assert link.is_symlink()
