"""The relay's DATA puts the same bytes on the wire as aiosmtplib's ``SMTP.data`` and ends the same way.

A recording SMTP server on loopback keeps every octet received after ``354`` up to the end-of-data line; each
message goes once through ``client.data`` (aiosmtplib's line-ending rewrite and regex dot-stuffing) and once through
the relay's ``_send_data`` (``dot_stuffed``, or ``client.data`` itself for a message with a bare CR or LF), and the
recordings must be identical. Refusals (at DATA, after the data) raise the same ``SMTPDataError``, and a server
that hangs up after the data leaves the client closed, as ``client.data`` does.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiosmtplib
import pytest

from hisp.adapters.smtp_relay import _send_data, dot_stuffed


class Recorder:
    """A minimal SMTP server: 250 to everything, 354 to DATA (or ``data_reply``), records the data as sent."""

    def __init__(self, data_reply: bytes = b"354 go", final_reply: bytes | None = b"250 ok") -> None:
        self.received: list[bytes] = []
        self.data_reply, self.final_reply = data_reply, final_reply

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 rec ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-rec\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(self.data_reply + b"\r\n")
                    if not self.data_reply.startswith(b"354"):
                        continue
                    data = b""
                    while not (data == b".\r\n" or data.endswith(b"\r\n.\r\n")):
                        data += await reader.readuntil(b".\r\n")
                    self.received.append(data)
                    if self.final_reply is None:
                        writer.close()
                        return
                    writer.write(self.final_reply + b"\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
        finally:
            writer.close()


async def _client(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    await client.ehlo()
    return client


async def _both(messages: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    reference, ours = Recorder(), Recorder()
    servers = [await asyncio.start_server(r, "127.0.0.1", 0, limit=1 << 24) for r in (reference, ours)]
    try:
        a, b = [await _client(s.sockets[0].getsockname()[1]) for s in servers]
        for message in messages:
            for client in (a, b):
                await client.mail("a@x.example")
                await client.rcpt("b@y.example")
            assert (await a.data(message)).code == 250
            assert (await _send_data(b, message)).code == 250
        await a.quit()
        await b.quit()
    finally:
        for server in servers:
            server.close()
    return reference.received, ours.received


def _message(rng: random.Random) -> bytes:
    pieces = [b".", b"..", b"\r\n", b"\r\n", b"\r\n.", b"text", b"x.", b" ", b"=\r\n"]
    if rng.random() < 0.2:
        pieces += [b"\n", b"\r"]  # not canonical: aiosmtplib's own path, unchanged
    return b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))


def test_the_same_bytes_on_the_wire_as_aiosmtplib() -> None:
    rng = random.Random(5321)
    messages = [b"", b".", b".\r\n", b"..\r\n.\r\n", b"a\r\n.\r\nb", b"no final line ending", b"bare\nLF\r\n",
                b"bare\rCR", b"\r\n", *[_message(rng) for _ in range(300)],
                b"Subject: s\r\n\r\n" + b"".join(b"." * (i % 3) + b"A" * 74 + b"\r\n" for i in range(30_000))]
    reference, ours = asyncio.run(_both(messages))
    assert len(reference) == len(ours) == len(messages)
    assert ours == reference


def test_dot_stuffed_declines_bare_line_endings() -> None:
    assert dot_stuffed(b"a\nb\r\n") is None
    assert dot_stuffed(b"a\rb\r\n") is None
    assert dot_stuffed(b"a\r\n\r") is None
    assert dot_stuffed(b".a\r\n.\r\n") == b"..a\r\n..\r\n.\r\n"
    assert dot_stuffed(b"") == b"\r\n.\r\n"


@pytest.mark.parametrize(
    ("data_reply", "final_reply", "expected"),
    [(b"451 later", b"250 ok", 451), (b"354 go", b"554 no thanks", 554), (b"354 go", None, "disconnected")],
    ids=["refused-at-DATA", "refused-after-data", "hung-up-after-data"],
)
def test_refusals_end_as_with_aiosmtplib(data_reply: bytes, final_reply: bytes | None, expected: Any) -> None:
    async def scenario(send: Any) -> tuple[Any, bool]:
        server = await asyncio.start_server(Recorder(data_reply, final_reply), "127.0.0.1", 0)
        try:
            client = await _client(server.sockets[0].getsockname()[1])
            await client.mail("a@x.example")
            await client.rcpt("b@y.example")
            try:
                await send(client, b"Subject: s\r\n\r\nbody\r\n")
            except aiosmtplib.SMTPDataError as exc:
                outcome: Any = exc.code
            except aiosmtplib.SMTPServerDisconnected:
                outcome = "disconnected"
            connected = client.is_connected
            client.close()
            return outcome, connected
        finally:
            server.close()

    reference = asyncio.run(scenario(lambda client, raw: client.data(raw)))
    ours = asyncio.run(scenario(_send_data))
    assert reference[0] == expected
    assert ours == reference
