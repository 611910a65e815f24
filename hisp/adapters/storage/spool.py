"""The spool: large message bodies as files, written and fsynced before the database commit.

A body is written to a temporary file in its final directory, fsynced, renamed to ``<fan-out>/<id>.eml`` and the
directory fsynced, so that after :meth:`Spool.write` returns the file and its name survive a crash. Only then
does the store commit the row that names it; a crash between the two leaves an orphan file (never a row
without its file), which :meth:`hisp.adapters.storage.SqlStore.spool_orphans` lists.

Spec: issue 5 ("raw bytes or a spool file written and fsynced before the 250 reply").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from hisp.errors import StorageError

__all__ = ["Spool"]

_SUFFIX = ".eml"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable.

    :raises OSError: the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Message bodies as files under one directory.

    :param root: the spool directory; created (with parents) if missing. Several nodes sharing one
        PostgreSQL database must share this directory too, or keep bodies in the database (no spool).
    :raises StorageError: the directory cannot be created.
    """

    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"spool directory {root} cannot be created: {exc}") from exc
        self.root = root

    def path_of(self, relpath: str) -> Path:
        """The absolute path of a stored relative spool path.

        :raises StorageError: the relative path escapes the spool directory.
        """
        path = (self.root / relpath).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError("spool path outside the spool directory", relpath=relpath)
        return path

    def write(self, message_id: str, raw: bytes) -> str:
        """Write a body durably (file and directory entry fsynced) and return its relative path.

        :param message_id: the queue id (hex), used as the file name.
        :param raw: the bytes.
        :returns: the path relative to the spool directory, e.g. ``"ab/ab12....eml"``.
        :raises StorageError: the file could not be written or synced (nothing is left behind).
        """
        fan = self.root / message_id[:2]
        final = fan / f"{message_id}{_SUFFIX}"
        temp = fan / f".{message_id}.tmp"
        try:
            created = not fan.exists()
            fan.mkdir(exist_ok=True)
            if created:
                fsync_dir(self.root)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(raw)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, final)
            fsync_dir(fan)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise StorageError(f"spool file for {message_id} cannot be written: {exc}", message_id=message_id) from exc
        return f"{message_id[:2]}/{message_id}{_SUFFIX}"

    def read(self, relpath: str, sha256: str) -> bytes:
        """Read a body and check it against its digest.

        :param relpath: as returned by :meth:`write`.
        :param sha256: the expected SHA-256, hex.
        :raises StorageError: the file is missing or unreadable, or its digest differs.
        """
        try:
            data = self.path_of(relpath).read_bytes()
        except OSError as exc:
            raise StorageError(f"spool file {relpath} cannot be read: {exc}", relpath=relpath) from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"spool file {relpath} does not match its SHA-256", relpath=relpath)
        return data

    def discard(self, relpath: str) -> None:
        """Remove a body whose row was never committed; a missing file is fine."""
        with contextlib.suppress(OSError, StorageError):
            self.path_of(relpath).unlink()

    def files(self) -> Iterator[str]:
        """Every body file (finished, not temporary) as a relative path."""
        for fan in sorted(self.root.iterdir()):
            if fan.is_dir():
                for item in sorted(fan.iterdir()):
                    if item.suffix == _SUFFIX and not item.name.startswith("."):
                        yield f"{fan.name}/{item.name}"
