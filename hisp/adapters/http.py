"""One small, bounded HTTP(S) request: trust bundles, CRLs, AIA certificates (GET) and OCSP (POST).

:func:`fetch` is synchronous (standard library :mod:`http.client` and :mod:`ssl`); async callers run it in a
thread (``asyncio.to_thread``). Every fetch is bounded:

* **size**: ``max_bytes`` is enforced while reading (a ``Content-Length`` above it is refused before the
  body is read; a body without one is read in chunks and refused as soon as it passes the limit);
* **time**: ``timeout`` is the total budget in seconds for the whole fetch, redirects included: every
  connect, request and read gets the time that is left, so a server that trickles bytes cannot stretch it
  (host name resolution is the one step the socket timeout does not bound);
* **where**: only ``http`` and ``https`` URLs, at most :data:`MAX_REDIRECTS` redirects, each to an http(s)
  URL (a POST, i.e. an OCSP request given ``data``, is never redirected: RFC 6960 appendix A.1 responders
  answer in place). HTTPS uses a verified TLS context (``ssl.create_default_context()``) unless the caller passes one.

Errors, and why they are split this way: what may heal by itself if retried later (no answer, timeout,
connection refused or reset, 5xx, 408, 429) is :class:`~hisp.errors.DiscoveryUnavailable`, the tree's
transient "a server did not answer" error; what will not change until someone fixes the URL, the
server's content or its certificate (bad scheme, 4xx, too many redirects, oversize body, TLS verification
failure, a malformed response) is :class:`~hisp.errors.InputError`. Callers keep their last good data in
both cases; the split tells an operator whether to wait or to act.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from hisp import __version__
from hisp.errors import DiscoveryUnavailable, InputError

__all__ = ["MAX_REDIRECTS", "FetchResult", "fetch"]

#: Most redirects followed by one fetch.
MAX_REDIRECTS = 3

_CHUNK = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
_TRANSIENT_4XX = {408, 429}
_USER_AGENT = f"hisp/{__version__}"


@dataclass(frozen=True)
class FetchResult:
    """The outcome of a successful :func:`fetch`.

    :ivar status: the final HTTP status: 200 (or another 2xx), or 304 Not Modified.
    :ivar body: the body bytes; None for 304.
    :ivar etag: the ``ETag`` response header, or None.
    :ivar last_modified: the ``Last-Modified`` response header, or None.
    :ivar url: the final URL, after redirects.
    :ivar content_type: the ``Content-Type`` response header (parameters stripped, lower case), or None.

    Spec: RFC 9110 section 15; RFC 7232 sections 2.2, 2.3 (validators) and 4.1 (304).
    """

    status: int
    body: bytes | None = field(repr=False)
    etag: str | None
    last_modified: str | None
    url: str
    content_type: str | None = None


class _Deadline:
    def __init__(self, seconds: float, url: str, verb: str = "GET") -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.url = url
        self.verb = verb

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise DiscoveryUnavailable(
                f"{self.verb} {self.url}: no complete answer within {self.seconds:g} s", url=self.url
            )
        return remaining


def _check_url(url: str) -> tuple[str, str, int | None, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"not a valid URL: {url!r}: {exc}", url=url) from None
    if parts.scheme not in ("http", "https"):
        raise InputError(f"only http and https URLs can be fetched, not {url!r}", url=url)
    if not parts.hostname:
        raise InputError(f"URL without a host: {url!r}", url=url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.scheme, parts.hostname, port, target


def _connection(
    scheme: str, host: str, port: int | None, timeout: float, context: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=context or ssl.create_default_context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _watchdog(conn: http.client.HTTPConnection, deadline: _Deadline) -> threading.Timer:
    """Shut the connection's socket down when the budget runs out.

    Socket timeouts bound each read, not a status line, header or chunk-size line read byte by byte: a
    server trickling one byte per read would stretch those for ever. Shutting the socket down makes the
    blocked read return at once; the caller then reports the budget as spent (:meth:`_Deadline.left`).
    """

    def expire() -> None:
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # socket.socket's shutdown, also under an SSLSocket
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline.end - time.monotonic()), expire)
    timer.daemon = True
    timer.start()
    return timer


def _set_timeout(conn: http.client.HTTPConnection, seconds: float) -> None:
    if conn.sock is not None:
        conn.sock.settimeout(seconds)


def _read_body(
    response: http.client.HTTPResponse,
    conn: http.client.HTTPConnection,
    deadline: _Deadline,
    max_bytes: int,
    url: str,
    progress: Callable[[int, int | None], None] | None,
) -> bytes:
    length_header = response.getheader("Content-Length")
    total: int | None = None
    if length_header is not None:
        try:
            total = int(length_header)
        except ValueError:
            raise InputError(f"{deadline.verb} {url}: bad Content-Length {length_header!r}", url=url) from None
        if total < 0:
            raise InputError(f"{deadline.verb} {url}: bad Content-Length {length_header!r}", url=url)
        if total > max_bytes:
            raise InputError(
                f"{deadline.verb} {url}: {total} bytes exceeds the limit of {max_bytes} bytes", url=url, size=total
            )
    chunks: list[bytes] = []
    received = 0
    if progress is not None:
        progress(0, total)
    while True:
        _set_timeout(conn, deadline.left())
        chunk = response.read1(min(_CHUNK, max_bytes + 1 - received))
        if not chunk:
            deadline.left()  # an end of body forced by the watchdog is no end of body
            break
        received += len(chunk)
        if received > max_bytes:
            raise InputError(
                f"{deadline.verb} {url}: body exceeds the limit of {max_bytes} bytes", url=url, max_bytes=max_bytes
            )
        chunks.append(chunk)
        if progress is not None:
            progress(received, total)
        deadline.left()
    if total is not None and received != total:
        raise DiscoveryUnavailable(
            f"{deadline.verb} {url}: connection closed after {received} of {total} bytes", url=url
        )
    return b"".join(chunks)


def fetch(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    etag: str | None = None,
    last_modified: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    data: bytes | None = None,
    content_type: str | None = None,
    accept: str = "*/*",
) -> FetchResult:
    """GET ``url`` (or POST ``data`` to it) within ``timeout`` seconds and ``max_bytes`` bytes.

    A GET may be conditional (``etag``, ``last_modified``). A POST (``data`` given, e.g. an OCSP request,
    RFC 6960 appendix A.1) is sent with ``Content-Type: content_type`` and is not redirected: a redirect
    answer is an :class:`~hisp.errors.InputError`.

    :param url: an ``http://`` or ``https://`` URL.
    :param timeout: total time budget in seconds (connects, requests and reads of every redirect hop).
    :param max_bytes: largest body accepted, in bytes.
    :param etag: sent as ``If-None-Match`` (the validator of the copy we hold).
    :param last_modified: sent as ``If-Modified-Since``.
    :param progress: called with ``(bytes received so far, total bytes or None)`` when the body starts
        and after every chunk read.
    :param ssl_context: the TLS context for https; default ``ssl.create_default_context()`` (certificate
        and host name verified).
    :param data: a request body to POST instead of a GET (at most what the caller built; not bounded here).
    :param content_type: the request's ``Content-Type`` for a POST, e.g. ``"application/ocsp-request"``.
    :param accept: the ``Accept`` request header, e.g. ``"application/pkix-crl"``.
    :returns: the result; ``status`` 304 with ``body`` None when the server says our copy is current.
    :raises InputError: the URL is not http(s) or has no host, a redirect goes elsewhere or to an unusable
        URL (broken, non-ASCII, a host name IDNA cannot encode), there are more than :data:`MAX_REDIRECTS`,
        a 4xx other than 408/429, another unexpected status, a body larger than ``max_bytes``, a bad
        ``Content-Length``, or a TLS certificate that does not verify.
    :raises DiscoveryUnavailable: the host cannot be resolved or reached, the connection fails, the
        budget runs out, the body is cut short, or the server answers 5xx, 408 or 429.
    :raises ValueError: ``timeout`` or ``max_bytes`` is not positive (a programming error).

    Spec: RFC 9110 sections 15.4 (redirects) and 8.6 (Content-Length); RFC 7232 sections 3.2 and 3.3
    (If-None-Match, If-Modified-Since) and 4.1 (304); TB-3 (HTTPS with verified TLS).
    """
    if timeout <= 0 or max_bytes <= 0:
        raise ValueError("timeout and max_bytes must be positive")
    verb = "GET" if data is None else "POST"
    deadline = _Deadline(timeout, url, verb)
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        scheme, host, port, target = _check_url(current)
        headers = {"User-Agent": _USER_AGENT, "Accept": accept, "Accept-Encoding": "identity"}
        if data is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        if etag is not None:
            headers["If-None-Match"] = etag
        if last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        try:
            conn = _connection(scheme, host, port, deadline.left(), ssl_context)
        except http.client.InvalidURL as exc:  # control characters in the host of a redirect
            raise InputError(f"{verb} {current}: unusable URL: {exc}", url=current) from None
        watchdog = _watchdog(conn, deadline)
        try:
            try:
                conn.connect()
                _set_timeout(conn, deadline.left())
                conn.request(verb, target, body=data, headers=headers)
                _set_timeout(conn, deadline.left())
                response = conn.getresponse()
                status = response.status
                if status in _REDIRECTS and data is not None:
                    raise InputError(f"POST {current}: {status} redirect refused", url=current, status=status)
                if status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise InputError(f"{verb} {current}: {status} redirect without Location", url=current)
                    current = urljoin(current, location)
                    continue
                if status == 304:
                    return FetchResult(
                        304, None, response.getheader("ETag"), response.getheader("Last-Modified"), current
                    )
                if status >= 500 or status in _TRANSIENT_4XX:
                    raise DiscoveryUnavailable(
                        f"{verb} {current}: server answered {status} {response.reason}", url=current, status=status
                    )
                if not 200 <= status < 300:
                    raise InputError(
                        f"{verb} {current}: server answered {status} {response.reason}", url=current, status=status
                    )
                body = _read_body(response, conn, deadline, max_bytes, current, progress)
                kind = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower() or None
                return FetchResult(
                    status, body, response.getheader("ETag"), response.getheader("Last-Modified"), current, kind
                )
            except ssl.SSLCertVerificationError as exc:
                raise InputError(
                    f"{verb} {current}: TLS certificate not verified: {exc.verify_message}", url=current
                ) from None
            except TimeoutError:
                raise DiscoveryUnavailable(f"{verb} {current}: no answer within {timeout:g} s", url=current) from None
            except socket.gaierror as exc:
                raise DiscoveryUnavailable(
                    f"{verb} {current}: cannot resolve host: {exc.strerror}", url=current
                ) from None
            except http.client.HTTPException as exc:
                if deadline.expired():  # cut off by the watchdog: report the budget, not the broken answer
                    raise DiscoveryUnavailable(
                        f"{verb} {current}: no answer within {timeout:g} s", url=current
                    ) from None
                raise DiscoveryUnavailable(
                    f"{verb} {current}: bad or incomplete HTTP answer: {exc!r}", url=current
                ) from None
            except OSError as exc:  # refused, reset, unreachable, TLS handshake failures
                if deadline.expired():  # cut off by the watchdog
                    raise DiscoveryUnavailable(
                        f"{verb} {current}: no answer within {timeout:g} s", url=current
                    ) from None
                raise DiscoveryUnavailable(f"{verb} {current}: {exc.strerror or exc}", url=current) from None
            except ValueError as exc:  # a redirect to a broken or non-ASCII URL, an IDNA-unencodable host...
                raise InputError(f"{verb} {current}: unusable URL or header: {exc}", url=current) from None
        finally:
            watchdog.cancel()
            conn.close()
    raise InputError(f"{verb} {url}: more than {MAX_REDIRECTS} redirects", url=url)
