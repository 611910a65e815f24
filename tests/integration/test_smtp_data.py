"""DATA read in bulk (hisp.adapters.smtp_data) answers and hands on exactly what aiosmtpd's own line loop does.

Differential: the same byte streams, cut into the same TCP writes, go to a stock ``aiosmtpd.smtp.SMTP`` (its line
by line DATA loop, the behaviour the listener had before) and to our backbone listener, on loopback. For each
transaction the reply codes must agree (``250``, ``500`` line too long, ``552`` too much data; where the stock
server accepts data with a bare CR or LF, ours answers ``554``, the listener's own rule applied after the loop),
the bytes handed on must be identical, and both sessions must stay in step (the next command is answered by
both: no octet of the data is taken for a command, nor a command for data). Cases: hand-picked edges (a dot
first on the first line, ``..`` lines, the end-of-data line right after a bare LF, data exactly at the size
limit and one octet over, lines of 999 to 1004 octets on either side of the limit) and seeded random messages
of short, dotted, long and bare-ended lines around a 3000-octet limit, plus one 1.4 MB base64 message.
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from hisp.adapters.smtp_server import ListenerKind, ListenerSettings, SmtpEnvelope, SmtpListener

HOSTED = "dr.jones@direct.hospital.example"
LIMIT = 3000


class _StockHandler:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.original_content)
        return "250 OK"


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = cls(reader, writer)
        assert (await session.reply())[0] == 220
        writer.write(b"EHLO peer.test\r\n")
        assert (await session.reply())[0] == 250
        return session

    async def reply(self) -> tuple[int, str]:
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            assert line, "connection closed"
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode().strip()

    async def command(self, line: bytes) -> int:
        self.writer.write(line + b"\r\n")
        return (await self.reply())[0]

    async def transaction(self, stream: bytes, cuts: list[int], pause: float = 0.0) -> int:
        assert await self.command(b"MAIL FROM:<peer@direct.other.example>") == 250
        assert await self.command(b"RCPT TO:<" + HOSTED.encode() + b">") == 250
        assert await self.command(b"DATA") == 354
        last = 0
        for cut in [*cuts, len(stream)]:
            self.writer.write(stream[last:cut])
            await self.writer.drain()
            if pause:
                await asyncio.sleep(pause)
            last = cut
        return (await self.reply())[0]

    def close(self) -> None:
        self.writer.close()


async def _compare(cases: list[tuple[bytes, list[int]]], *, limit: int = LIMIT, pause: float = 0.0) -> list[str]:
    """Send each (stream, cuts) to both servers; the differences found, as text (empty when they agree)."""
    stock = _StockHandler()
    loop = asyncio.get_running_loop()
    stock_server = await loop.create_server(
        lambda: SMTP(stock, data_size_limit=limit, enable_SMTPUTF8=False, decode_data=False, hostname="stock"),
        "127.0.0.1", 0,
    )  # fmt: skip
    ours: list[bytes] = []

    async def accept(envelope: SmtpEnvelope, raw: bytes) -> str:
        ours.append(raw)
        return "250 2.0.0 Ok: queued"

    settings = ListenerSettings(ListenerKind.BACKBONE, hostname="ours", max_message_size=limit, command_timeout=30)
    differences = []
    async with SmtpListener(settings, accept, is_hosted=lambda a: a == HOSTED) as listener:
        a = await _Session.open(stock_server.sockets[0].getsockname()[1])
        b = await _Session.open(listener.port)
        try:
            for index, (stream, cuts) in enumerate(cases):
                stock_code = await a.transaction(stream, cuts, pause)
                our_code = await b.transaction(stream, cuts, pause)
                got_stock = stock.received.pop() if stock.received else None
                got_ours = ours.pop() if ours else None
                expected = stock_code
                if stock_code == 250 and got_stock is not None and (b"\n" in got_stock.replace(b"\r\n", b"")
                                                                    or b"\r" in got_stock.replace(b"\r\n", b"")):
                    expected, got_stock = 554, None  # the listener refuses bare line endings after the loop
                if (our_code, got_ours) != (expected, got_stock):
                    differences.append(f"case {index}: stock {stock_code} -> expected {expected}, ours {our_code}; "
                                       f"content equal: {got_ours == got_stock}; stream {stream[:60]!r}...")
                # Both sessions are still in step: the next command is a command for both.
                if (await a.command(b"NOOP"), await b.command(b"NOOP")) != (250, 250):
                    differences.append(f"case {index}: out of step after DATA")
                    break
        finally:
            a.close()
            b.close()
            stock_server.close()
            await stock_server.wait_closed()
    return differences


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


def _data(*lines: bytes) -> bytes:
    """A DATA stream: the lines as given (each with its own ending), then the end-of-data line."""
    return b"".join(lines) + b".\r\n"


def _fill(size: int) -> bytes:
    """``size`` (at least 2) octets of short lines (at most 80 octets each, CRLF included)."""
    full, rest = divmod(size, 80)
    if rest == 1:  # no line of one octet: one 80-octet line becomes two of 40 and 41
        full, tail = full - 1, b"f" * 38 + b"\r\n" + b"f" * 39 + b"\r\n"
    else:
        tail = b"f" * (rest - 2) + b"\r\n" if rest else b""
    return (b"f" * 78 + b"\r\n") * full + tail


HEAD = b"From: a@x.example\r\nSubject: s\r\n\r\n"

EDGES = {
    "empty": _data(),
    "dot first on the first line": _data(b".hidden first line\r\n", b"body\r\n"),
    "dot line first": _data(b"..\r\n", b"body\r\n"),
    "dot-dot lines": _data(HEAD, b"..\r\n", b"..\r\n", b"...\r\n", b". \r\n"),
    "lone CRLF then dot-dot": _data(b"\r\n", b"..\r\n"),
    "line ending in a dot": _data(HEAD, b"It ends.\r\n", b"So does this one.\r\n"),
    "line ending in a dot, last": _data(HEAD, b"It ends.\r\n"),
    "end after a bare LF is not the end": _data(HEAD, b"x\n.\r\n", b"after\r\n"),
    "end after a bare CR is not the end": _data(HEAD, b"x\r.\r\n", b"after\r\n"),
    "bare LF in a line": _data(HEAD, b"a\nb\r\n"),
    "CR CR LF": _data(HEAD, b"a\r\r\n", b".b\r\n"),
    "exactly at the limit": _data(b"x" * (LIMIT - 2 - 1000 - 1000) + b"\r\n", b"y" * 998 + b"\r\n",
                                  b".z" + b"z" * 996 + b"\r\n"),
    "one octet over the limit": _data(b"x" * (LIMIT - 2 - 1000 - 1000 + 1) + b"\r\n", b"y" * 998 + b"\r\n",
                                      b".z" + b"z" * 996 + b"\r\n"),
    "far over the limit": _data(*[b"w" * 70 + b"\r\n"] * 1000),
    "far over the limit, dotted": _data(b"x", *[b".\r\n.."] * 3000, b"\r\n"),
    **{f"line of {n} octets": _data(HEAD, b"q" * (n - 2) + b"\r\n") for n in range(999, 1006)},
    "long line crossing the limit": _data(b"a" * (LIMIT - 500) + b"\r\n", b"b" * 1200 + b"\r\n"),
    "1002-octet line crossing the limit": _data(b"a" * (LIMIT - 500 - 2) + b"\r\n", b"b" * 1000 + b"\r\n"),
    "1003-octet line crossing the limit": _data(b"a" * 900 + b"\r\n", b"a" * (LIMIT - 1400 - 2) + b"\r\n",
                                                b"b" * 1001 + b"\r\n"),
    **{f"{n}-octet line ending {k} octet(s) over the limit": _data(_fill(LIMIT + k - n), b"b" * (n - 2) + b"\r\n")
       for n in (1001, 1002, 1003, 1004) for k in (0, 1, 2)},
    "long line without any CRLF over the limit": _data(b"c" * (LIMIT * 3) + b"\r\n"),
}


@pytest.mark.parametrize("stream", list(EDGES.values()), ids=list(EDGES))
def test_edges_whole_and_byte_by_byte_at_the_end(stream: bytes) -> None:
    cases = [(stream, []), (stream, list(range(max(0, len(stream) - 8), len(stream))))]
    assert _run(_compare(cases)) == []


def test_the_end_of_data_split_across_tcp_segments() -> None:
    """Every way of cutting CRLF.CRLF, each piece its own TCP segment (TCP_NODELAY and a pause)."""
    stream = _data(HEAD, b"..first\r\n", b"last.\r\n")
    cases = [(stream, [len(stream) - k]) for k in range(1, 6)] + [(stream, list(range(len(stream) - 6, len(stream))))]
    assert _run(_compare(cases, pause=0.02)) == []


def _random_stream(rng: random.Random) -> tuple[bytes, list[int]]:
    lines: list[bytes] = []
    ending = b"\r\n"
    size = 0
    target = rng.choice([LIMIT // 3, LIMIT - 200, LIMIT, LIMIT + 200, 2 * LIMIT])
    long_lines = rng.choice([0.0, 0.0, 0.03, 0.1])  # how often a line is near the 1000-octet limit
    bare = rng.choice([0, 0, 1])  # whether any line ends in a bare CR or LF
    while size < target:
        kind = rng.random()
        if kind < 0.15:
            text = rng.choice([b".", b"..", b".x", b"...", b". "])
        elif kind < 0.15 + long_lines:
            text = b"L" * rng.choice([997, 998, 999, 1000, 1001, 1002, 1003]) + rng.choice([b"", b"."])
        elif kind < 0.35:
            text = b""
        else:
            text = bytes(rng.choice(b"abc .=") for _ in range(rng.randint(1, 120)))
        if text == b"." and (not lines or b"".join(lines[-2:]).endswith(b"\r\n")):
            text = b".."  # a lone dot after a CRLF would end the data: both servers would then read commands
        ending = rng.choices([b"\r\n", b"\n", b"\r"], weights=[60, bare, bare])[0]
        lines.append(text + ending)
        size += len(text) + len(ending)
    if ending != b"\r\n":
        lines.append(b"\r\n")
    stream = _data(*lines)
    cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.randint(0, 6))))
    return stream, cuts


def test_random_messages_around_the_limit() -> None:
    rng = random.Random(5321)
    cases = [_random_stream(rng) for _ in range(300)]
    assert _run(_compare(cases)) == []


def test_a_large_base64_message() -> None:
    body = base64.encodebytes(random.Random(1).randbytes(1_000_000)).replace(b"\n", b"\r\n")
    stream = _data(HEAD, b"." + body[:70] + b"\r\n", body)
    cuts = list(range(65536, len(stream), 65536))
    assert _run(_compare([(stream, cuts)], limit=2_000_000)) == []


async def _ours(streams: list[tuple[bytes, list[int]]], *, limit: int = LIMIT) -> list[tuple[int, bytes | None]]:
    got: list[bytes] = []

    async def accept(envelope: SmtpEnvelope, raw: bytes) -> str:
        got.append(raw)
        return "250 2.0.0 Ok: queued"

    settings = ListenerSettings(ListenerKind.BACKBONE, hostname="ours", max_message_size=limit)
    results: list[tuple[int, bytes | None]] = []
    async with SmtpListener(settings, accept, is_hosted=lambda a: a == HOSTED) as listener:
        session = await _Session.open(listener.port)
        for stream, cuts in streams:
            code = await session.transaction(stream, cuts, pause=0.01 if cuts else 0.0)
            results.append((code, got.pop() if got else None))
        assert await session.command(b"QUIT") == 221
        session.close()
    return results


def test_the_bytes_handed_on_and_the_replies() -> None:
    at_limit = _fill(LIMIT - 4) + b"..\r\n"  # LIMIT octets as sent, one less once unstuffed
    streams = [
        (_data(b".first line\r\n", b"..\r\n", b"...\r\n", b"x.\r\n"), []),
        (_data(), []),
        (_data(b"..\r\n"), [1, 2, 3, 4]),  # every octet of "..\r\n.\r\n" up to the end its own segment
        (_data(b"end.\r\n"), [7, 8, 9, 10]),
        (at_limit + b".\r\n", []),
        (b"f" + at_limit + b".\r\n", []),  # one octet over
        (_data(b"y" * 998 + b"\r\n"), []),  # 1000 octets with its CRLF
        (_data(b"y" * 999 + b"\r\n"), []),  # 1001: aiosmtpd's limit
        (_data(b"y" * 1000 + b"\r\n"), []),
        (_data(b"a\n.\r\n", b"b\r\n"), []),  # not an end after a bare LF, and refused for the bare LF
    ]
    assert _run(_ours(streams)) == [
        (250, b"first line\r\n.\r\n..\r\nx.\r\n"),
        (250, b""),
        (250, b".\r\n"),
        (250, b"end.\r\n"),
        (250, at_limit[:-4] + b".\r\n"),
        (552, None),
        (250, b"y" * 998 + b"\r\n"),
        (250, b"y" * 999 + b"\r\n"),
        (500, None),
        (554, None),
    ]
