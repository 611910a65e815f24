"""A real HTTP server on loopback whose answers each test sets: trust bundles, CRLs, OCSP (POST) and AIA.

:func:`serve_http` starts a :class:`http.server.ThreadingHTTPServer` on ``127.0.0.1``, port 0 (the kernel
picks a free one), in a daemon thread, and always shuts it down when the ``with`` block ends, even while
a handler is hanging. Each path answers with a :class:`Route`: status, body, headers, an ETag honoured on
``If-None-Match`` (RFC 7232 section 3.2: 304 without a body), a delay before answering, or ``hang`` (accept
the request and never answer, until the server shuts down). Every request is recorded.

Never expose it beyond loopback: it exists for tests.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LoopbackHTTPServer", "RecordedRequest", "Route", "serve_http"]


@dataclass(frozen=True)
class Route:
    """How one path answers.

    :ivar status: the HTTP status code.
    :ivar body: the body bytes (sent with a ``Content-Length`` unless ``omit_length``).
    :ivar headers: more response headers, e.g. ``{"Location": "/b"}`` or ``{"Last-Modified": ...}``.
    :ivar etag: the entity tag (quoted, e.g. ``'"v1"'``); when the request's ``If-None-Match`` lists it the
        answer is 304 with no body.
    :ivar delay: seconds to wait before answering.
    :ivar hang: accept the request and never answer (until the server stops).
    :ivar omit_length: send no ``Content-Length`` and close the connection after the body (HTTP/1.1 framing by
        close, RFC 9112 section 6.3).
    :ivar trickle: seconds to wait between body bytes (a slow-drip server); 0 sends the body at once.

    Spec: RFC 9110 section 15 (status codes); RFC 7232 sections 3.2 and 4.1 (If-None-Match, 304).
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    etag: str | None = None
    delay: float = 0.0
    hang: bool = False
    omit_length: bool = False
    trickle: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received: its path and headers (names as sent), method and body.

    Spec: RFC 9110 sections 9.3.1 and 9.3.3 (GET, POST); RFC 7232 section 3 (the conditional headers tests
    look for); RFC 6960 appendix A.1 (OCSP over POST).
    """

    path: str
    headers: Mapping[str, str]
    method: str = "GET"
    body: bytes = b""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer("GET", b"")

    def do_POST(self) -> None:
        # a POST (an OCSP request) answers like a GET of its path; the body is only recorded
        try:
            length = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
        except ValueError:
            length = 0
        self._answer("POST", self.rfile.read(length) if length > 0 else b"")

    def _answer(self, method: str, body: bytes) -> None:
        owner = self.server.owner
        owner._record(RecordedRequest(self.path, dict(self.headers.items()), method, body))
        route = owner.route_for(self.path)
        if route.hang:
            owner._stopping.wait()
            self.close_connection = True
            return
        if route.delay:
            owner._stopping.wait(route.delay)
        if route.etag is not None and route.etag in _etags(self.headers.get("If-None-Match", "")):
            self.send_response(304)
            self.send_header("ETag", route.etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(route.status)
        if route.etag is not None:
            self.send_header("ETag", route.etag)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.omit_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (size limit)
            if not route.trickle:
                self.wfile.write(route.body)
                return
            for index in range(len(route.body)):
                if owner._stopping.wait(route.trickle):
                    return
                self.wfile.write(route.body[index : index + 1])
                self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read :attr:`LoopbackHTTPServer.requests` instead."""


def _etags(header: str) -> set[str]:
    return {tag.strip() for tag in header.split(",") if tag.strip()}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LoopbackHTTPServer

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up (a fetch refusing an oversized answer, a timeout) is expected here: no traceback
        on stderr, where it would mix into the output of whatever command a test is running in the process."""
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class LoopbackHTTPServer:
    """The running server: set routes, read the requests it got.

    :ivar requests: every request received, in order.

    Spec: RFC 9110 (HTTP semantics); RFC 7232 section 3.2 (If-None-Match honoured for a route's ETag).
    """

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        """The ``http://127.0.0.1:PORT/path`` URL of ``path``."""
        return f"http://127.0.0.1:{self.port}{path if path.startswith('/') else '/' + path}"

    def set_route(self, path: str, route: Route | None = None, **fields: Any) -> None:
        """Answer ``path`` (query string included, exactly as requested) with ``route`` or ``Route(**fields)``."""
        with self._lock:
            self._routes[path] = route if route is not None else Route(**fields)

    def route_for(self, path: str) -> Route:
        """The route of ``path``; 404 when none is set."""
        with self._lock:
            return self._routes.get(path, Route(status=404, body=b"not found"))

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> None:
        """Start serving in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Release hanging handlers, stop serving and close the listening socket."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def serve_http() -> Iterator[LoopbackHTTPServer]:
    """Run a :class:`LoopbackHTTPServer` for the ``with`` block; it is always shut down afterwards.

    :returns: a context manager yielding the running server.

    Spec: RFC 9110 (HTTP semantics), served on loopback only.
    """
    server = LoopbackHTTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
