"""read_data on a bare StreamReader: bounded memory far over the size limit, the stream's limit restored, and
what follows the end of data left for the command loop.

The differential tests against aiosmtpd are in tests/integration/test_smtp_data.py; these pin the bounds.
"""

from __future__ import annotations

import asyncio
import tracemalloc

from hisp.adapters.smtp_data import DataOutcome, DataVerdict, read_data

LINE = b"x" * 76 + b"\r\n"


async def _fed(total: int, tail: bytes, *, size_limit: int) -> tuple[DataOutcome, int, asyncio.StreamReader]:
    reader = asyncio.StreamReader(limit=1001)
    chunk = LINE * 800  # about 62 kB per feed, as a socket would deliver them

    async def produce() -> None:
        for _ in range(total // len(chunk)):
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_data(tail)

    tracemalloc.start()
    try:
        producer = asyncio.ensure_future(produce())
        outcome = await read_data(reader, size_limit=size_limit, line_limit=1001)
        await producer
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return outcome, peak, reader


def test_far_over_the_limit_is_read_to_the_end_in_bounded_memory() -> None:
    async def scenario() -> None:
        sent = 20 * len(LINE * 800) * 16  # about 20 MB against a 1 MB limit
        outcome, peak, reader = await _fed(sent, b".\r\nQUIT\r\n", size_limit=1_000_000)
        assert outcome.verdict is DataVerdict.TOO_MUCH
        assert outcome.size == sent
        assert peak < 4_000_000, peak  # the limit and some slack, not the 20 MB sent
        assert reader._limit == 1001  # type: ignore[attr-defined]
        assert await reader.readline() == b"QUIT\r\n"

    asyncio.run(scenario())


def test_within_the_limit_the_data_is_whole_and_the_next_command_waits() -> None:
    async def scenario() -> None:
        sent = len(LINE * 800) * 4
        outcome, _, reader = await _fed(sent, b"..last\r\n.\r\nMAIL FROM:<>\r\n", size_limit=1_000_000)
        assert outcome.verdict is DataVerdict.OK
        assert outcome.content == LINE * 800 * 4 + b".last\r\n"
        assert reader._limit == 1001  # type: ignore[attr-defined]
        assert await reader.readline() == b"MAIL FROM:<>\r\n"

    asyncio.run(scenario())
