"""Keep one configured trust bundle current: fetch on its refresh interval, verify, cache, fall back (TB-3).

A :class:`BundleRefresher` owns one bundle URL and one cache directory. :meth:`BundleRefresher.refresh`
fetches when the refresh interval has passed since the last attempt, with the validators of the copy it
holds (``If-None-Match`` / ``If-Modified-Since``, RFC 7232). Then:

* 304, or a 200 whose SHA-256 equals the current bundle's: **unchanged**, nothing is parsed or reloaded;
* a new bundle that parses and verifies (:func:`hisp.core.bundles.parse_bundle`): **updated**: written to
  the cache atomically (a temporary file in the same directory, fsync, ``os.replace``, then the directory
  fsynced), with a metadata JSON file beside it (URL, ETag, Last-Modified, digest, fetched-at, checked-at);
* a failed fetch (unreachable, timeout, 5xx, 4xx, oversize) or a bundle that does not parse or verify:
  **kept last good**: :meth:`BundleRefresher.current` keeps returning the previous bundle, and the outcome
  carries the reason.

:meth:`BundleRefresher.load_cached` restores the cached bundle at start-up (re-verified at that time).

The fetch is synchronous and bounded (default 4 MiB and 30 s); an asyncio caller runs :meth:`refresh` in
a thread. One refresher is not meant to be refreshed from two threads at once.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hisp.adapters import http
from hisp.core.bundles import DEFAULT_MAX_BUNDLE_BYTES, TrustBundle, parse_bundle
from hisp.core.certs import Certificate
from hisp.core.policy import SecurityPolicy
from hisp.errors import ConfigError, HispError

__all__ = [
    "DEFAULT_TIMEOUT",
    "BundleRefresher",
    "RefreshOutcome",
    "RefreshStatus",
    "write_atomically",
    "write_through_special",
]

#: Time budget of one bundle fetch, in seconds.
DEFAULT_TIMEOUT = 30.0


class RefreshStatus(enum.Enum):
    """What one :meth:`BundleRefresher.refresh` did.

    Spec: TB-3 (detect changes by checksum, keep the last good bundle on error).
    """

    NOT_DUE = "not due"
    UNCHANGED = "unchanged"
    UPDATED = "updated"
    KEPT_LAST_GOOD = "kept last good"


@dataclass(frozen=True)
class RefreshOutcome:
    """The result of one refresh.

    :ivar status: what happened.
    :ivar bundle: the current bundle after the refresh (the last good one when kept), or None when there
        has never been a good one.
    :ivar reason: for ``KEPT_LAST_GOOD``, why the fetched bundle was not used (one line); else None.
    :ivar error: for ``KEPT_LAST_GOOD``, the error; else None.
    :ivar http_status: the HTTP status of the fetch, when there was an answer.

    Spec: TB-3.
    """

    status: RefreshStatus
    bundle: TrustBundle | None
    reason: str | None = None
    error: HispError | None = None
    http_status: int | None = None


#: Seconds :func:`write_through_special` waits for a process to open a FIFO for reading.
FIFO_READER_WAIT = 2.0


def write_through_special(path: Path, data: bytes) -> bool:
    """Write ``data`` into ``path`` in place when it exists and is not a regular file (``/dev/null``,
    ``/dev/stdout``, a FIFO): renaming a new file over it, as :func:`write_atomically` does for a regular file,
    would replace the device node itself with a regular file (as root, ``--out /dev/null`` would break the
    machine's ``/dev/null``).

    :param path: the target.
    :param data: the content.
    :returns: True when ``path`` was such a file and has been written; False when it is a regular file or does
        not exist (nothing done).
    :raises OSError: ``path`` is a directory, or cannot be opened or written (a FIFO that no process opens for
        reading within :data:`FIFO_READER_WAIT` seconds: ENXIO).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISREG(mode):
        return False
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    # non-blocking open: a FIFO nobody reads fails (ENXIO) after FIFO_READER_WAIT seconds instead of hanging the
    # command; then blocking writes, so that a slow reader gets everything
    deadline = time.monotonic() + FIFO_READER_WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    try:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd != -1:
            os.close(fd)
    return True


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never a mix.

    A ``path`` that exists and is not a regular file (a device such as ``/dev/null``, a FIFO) is written
    through in place instead (:func:`write_through_special`): never replaced. A symbolic link is followed: the
    file it points to is replaced, and the link stays.

    :param path: the target file; its directory must exist.
    :param data: the new content.
    :raises OSError: when the file cannot be written (the target is then untouched).

    Spec: TB-3 (replace atomically); POSIX ``rename(2)``.
    """
    if write_through_special(path, data):
        return
    if path.is_symlink():  # update what the link points to, in its own directory; the link stays a link
        path = Path(os.path.realpath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename is still atomic
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ConfigError("the time 'now' must be a timezone-aware datetime")
    return now


class BundleRefresher:
    """One configured trust bundle, refreshed from its URL and cached on disk.

    :param url: the bundle's ``https://`` (or ``http://``) URL.
    :param cache_dir: directory for ``<name>.p7b`` and ``<name>.json`` (created when missing).
    :param refresh_interval: seconds between fetch attempts (successful or not).
    :param policy: the security policy for the bundle signature.
    :param signing_certificates: the configured bundle signing certificates; when given, only bundles
        signed by one of them are accepted (TB-2).
    :param require_signature: refuse unsigned bundles even without configured signing certificates.
    :param name: cache file base name; default derived from the URL.
    :param timeout: time budget of one fetch in seconds (default 30).
    :param max_bytes: largest bundle accepted, in bytes (default 4 MiB).
    :param fetcher: the fetch function (default :func:`hisp.adapters.http.fetch`); same signature.
    :raises ConfigError: when the interval, timeout or size is not positive or the name is unusable.

    Spec: TB-2, TB-3; RFC 7232 (conditional requests).
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: Path,
        refresh_interval: float,
        policy: SecurityPolicy,
        signing_certificates: Sequence[Certificate] = (),
        require_signature: bool = False,
        name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
        fetcher: Callable[..., http.FetchResult] = http.fetch,
    ) -> None:
        if refresh_interval <= 0 or timeout <= 0 or max_bytes <= 0:
            raise ConfigError("refresh interval, timeout and max_bytes must be positive")
        if name is None:
            name = "bundle-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ConfigError(f"bundle name {name!r} must use letters, digits, '-', '_' or '.'")
        self.url = url
        self.cache_dir = Path(cache_dir)
        self.refresh_interval = refresh_interval
        self.policy = policy
        self.signing_certificates = tuple(signing_certificates)
        self.require_signature = require_signature
        self.name = name
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._fetch = fetcher
        self._current: TrustBundle | None = None
        self._meta: dict[str, Any] = {}
        self._last_attempt: datetime | None = None

    # -- files ---------------------------------------------------------------------------------------

    @property
    def bundle_path(self) -> Path:
        """The cached bundle: ``<cache_dir>/<name>.p7b`` (the bytes as fetched)."""
        return self.cache_dir / f"{self.name}.p7b"

    @property
    def metadata_path(self) -> Path:
        """The cached bundle's metadata: ``<cache_dir>/<name>.json``."""
        return self.cache_dir / f"{self.name}.json"

    def _write_metadata(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.metadata_path, json.dumps(self._meta, indent=2, sort_keys=True).encode("utf-8") + b"\n")

    def _parse(self, data: bytes, at: datetime) -> TrustBundle:
        return parse_bundle(
            data,
            source=self.url,
            signing_certificates=self.signing_certificates,
            require_signature=self.require_signature,
            at=at,
            policy=self.policy,
            max_bytes=self.max_bytes,
        )

    # -- public --------------------------------------------------------------------------------------

    def current(self) -> TrustBundle | None:
        """The last good bundle, or None when there has never been one.

        :returns: the bundle whose anchors are in force (TB-5: anchors only, never encryption certificates).

        Spec: TB-3 (keep the last good bundle), TB-5.
        """
        return self._current

    def load_cached(self, now: datetime) -> TrustBundle | None:
        """Restore the cached bundle at start-up; the next :meth:`refresh` is then due at once.

        The cached bytes are parsed and verified again at ``now`` (a signer may have expired meanwhile).
        A missing, unreadable or no longer valid cache yields None; its validators are then dropped so
        that the next fetch is unconditional.

        :param now: the current time (aware).
        :returns: the cached bundle now in force, or None.
        :raises ConfigError: ``now`` is naive.

        Spec: TB-3 (keep the last good bundle across restarts).
        """
        now = _check_now(now)
        try:
            if self.bundle_path.stat().st_size > self.max_bytes:
                return None
            data = self.bundle_path.read_bytes()
        except OSError:
            return None
        try:
            meta = json.loads(self.metadata_path.read_text("utf-8"))
            if not isinstance(meta, dict):
                meta = {}
        except (OSError, ValueError):
            meta = {}
        try:
            bundle = self._parse(data, now)
        except HispError:
            self._meta = {}
            return None
        if meta.get("digest") != bundle.digest or meta.get("url") != self.url:
            meta = {"url": self.url, "digest": bundle.digest}  # validators belong to other bytes
        for key in ("etag", "last_modified"):  # a tampered validator must not reach a request header
            value = meta.get(key)
            if value is not None and not (isinstance(value, str) and value.isascii() and value.isprintable()):
                del meta[key]
        self._meta = meta
        self._current = bundle
        return bundle

    def due(self, now: datetime) -> bool:
        """Whether a fetch is due: never attempted in this process, or ``refresh_interval`` has passed.

        :param now: the current time (aware).
        :returns: True when :meth:`refresh` would fetch.
        :raises ConfigError: ``now`` is naive.

        Spec: TB-3 (per-bundle refresh interval).
        """
        now = _check_now(now)
        return self._last_attempt is None or now >= self._last_attempt + timedelta(seconds=self.refresh_interval)

    def refresh(
        self,
        now: datetime,
        *,
        force: bool = False,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> RefreshOutcome:
        """Fetch the bundle when due, and replace the current one if a new, valid bundle arrived.

        Never raises for a fetch or bundle failure: the last good bundle stays in force and the outcome
        says why (TB-3).

        :param now: the current time (aware); also the validation time of a new bundle's signer.
        :param force: fetch even when not due.
        :param progress: passed to the fetch: ``(bytes so far, total or None)``.
        :returns: the outcome.
        :raises ConfigError: ``now`` is naive.
        :raises OSError: only when the cache directory cannot be written after a good bundle arrived
            (the new bundle is then not in force either).

        Spec: TB-2, TB-3; RFC 7232 sections 3.2, 3.3 and 4.1.
        """
        now = _check_now(now)
        if not force and not self.due(now):
            return RefreshOutcome(RefreshStatus.NOT_DUE, self._current)
        self._last_attempt = now
        have = self._current is not None
        try:
            result = self._fetch(
                self.url,
                timeout=self.timeout,
                max_bytes=self.max_bytes,
                etag=self._meta.get("etag") if have else None,
                last_modified=self._meta.get("last_modified") if have else None,
                progress=progress,
            )
        except HispError as exc:
            return self._kept(f"fetch failed: {exc.message}", exc, None)
        if result.status == 304 or result.body is None:
            if not have:  # a 304 to an unconditional request: nothing to keep
                return self._kept(f"server answered {result.status} without a bundle", None, result.status)
            self._note_check(now, result)
            return RefreshOutcome(RefreshStatus.UNCHANGED, self._current, http_status=result.status)
        digest = hashlib.sha256(result.body).hexdigest()
        if self._current is not None and digest == self._current.digest:
            self._note_check(now, result)
            return RefreshOutcome(RefreshStatus.UNCHANGED, self._current, http_status=result.status)
        try:
            bundle = self._parse(result.body, now)
        except HispError as exc:
            return self._kept(f"new bundle refused: {exc.message}", exc, result.status)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.bundle_path, result.body)
        self._meta = {
            "url": self.url,
            "final_url": result.url,
            "digest": bundle.digest,
            "etag": result.etag,
            "last_modified": result.last_modified,
            "fetched_at": now.isoformat(),
            "checked_at": now.isoformat(),
            "anchors": len(bundle.anchors),
            "signed": bundle.signed,
        }
        self._write_metadata()
        self._current = bundle
        return RefreshOutcome(RefreshStatus.UPDATED, bundle, http_status=result.status)

    def _note_check(self, now: datetime, result: http.FetchResult) -> None:
        # RFC 7232 section 4.1: a 304 carries the validators the 200 would have; keep the newest.
        if result.etag is not None:
            self._meta["etag"] = result.etag
        if result.last_modified is not None:
            self._meta["last_modified"] = result.last_modified
        self._meta["checked_at"] = now.isoformat()
        with contextlib.suppress(OSError):  # the check time is informational; the bundle is unchanged
            self._write_metadata()

    def _kept(self, reason: str, error: HispError | None, status: int | None) -> RefreshOutcome:
        return RefreshOutcome(RefreshStatus.KEPT_LAST_GOOD, self._current, reason, error, status)
