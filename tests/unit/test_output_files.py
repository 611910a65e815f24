"""Output files that are not regular files (``/dev/null``, a FIFO) are written through, never renamed over.

Writing a new file and renaming it over the target keeps a regular file whole for its readers (TB-3); done to
``/dev/null`` by root (``hisp message incoming -o /dev/null``, ``hisp trust bundle fetch --out /dev/null``) it
would replace the device node with a regular file and break every program on the machine, as happened once
here. These tests use a FIFO in a temporary directory in place of ``/dev/null``.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from hisp.adapters.bundles import write_atomically, write_through_special
from hisp.cli import _write_output


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as handle:
            into.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("writer", [write_atomically, _write_output], ids=["write_atomically", "cli -o"])
def test_a_fifo_stays_a_fifo_and_gets_the_data(tmp_path: Path, writer) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = _read_fifo(fifo, received)
    writer(fifo if writer is write_atomically else str(fifo), b"sealed message\r\n")
    reader.join(timeout=10)
    assert received == [b"sealed message\r\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]  # no temporary left beside it


def test_dev_null_is_recognised_as_special_without_writing_a_regular_file() -> None:
    """``/dev/null`` itself: written through (True), and still a character device afterwards."""
    assert write_through_special(Path("/dev/null"), b"x") is True
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_regular_and_missing_files_are_left_to_the_atomic_path(tmp_path: Path) -> None:
    regular = tmp_path / "bundle.p7b"
    regular.write_bytes(b"old")
    assert write_through_special(regular, b"new") is False and regular.read_bytes() == b"old"
    assert write_through_special(tmp_path / "absent", b"new") is False and not (tmp_path / "absent").exists()
    write_atomically(regular, b"new")
    assert regular.read_bytes() == b"new"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        write_through_special(tmp_path, b"x")
