"""Receiving SMTP DATA in bulk: the end-of-data search, the size and line-length verdict, and dot-unstuffing.

aiosmtpd reads DATA one line at a time (one ``readuntil`` and a dozen Python steps per line: about 18,000 lines
for a 1 MB attachment in base64), which was the largest single cost of a large message. :func:`read_data` reads
it in a few calls of ``StreamReader.readuntil(b".\\r\\n")`` (one, unless the text has lines ending in a dot),
then applies the same rules to the whole: :func:`data_verdict` answers exactly as aiosmtpd's line loop would
(``500`` for a line over the line limit, ``552`` for data over the size limit, whichever that loop meets first)
and :func:`unstuff` removes the leading dot of each line with one ``bytes.replace``.

The rules kept (RFC 5321; aiosmtpd 1.4's semantics, which the listener's tests pin):

- DATA ends at the first ``CRLF . CRLF``, or at ``. CRLF`` as its very first line (an empty message): a dot line
  after a bare LF or bare CR does not end it (no SMTP smuggling; the listener then refuses the bare line ending).
- Lines are what CRLF delimits; a line of more than ``line_limit`` octets with its CRLF is ``500`` (aiosmtpd's
  limit is 1001, one more than RFC 5321 section 4.5.3.1.6's 1000).
- The data counted against the size limit is the dot-stuffed text up to and including the CRLF before the final
  dot line; more than ``size_limit`` octets is ``552`` (RFC 1870 section 6.3), and the rest is read and discarded
  up to the end of data, never held: at most ``size_limit + reader_limit + 27`` octets of data are kept.
- Transparency (RFC 5321 section 4.5.2): one leading dot is removed from every line, so ``..`` is a line of one
  dot and ``.\\r\\n..\\r\\n`` are not ends.

``read_data`` needs the stream's line limit raised while it reads (``StreamReader`` keeps it in ``_limit``, the
same attribute from Python 3.8 to 3.13); :func:`bulk_reading_possible` says whether that is there, and the
listener falls back to aiosmtpd's own loop otherwise.

Spec: RFC 5321 sections 4.1.1.4, 4.5.2 and 4.5.3.1.6; RFC 1870 section 6.3.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

__all__ = ["DataOutcome", "DataVerdict", "bulk_reading_possible", "data_verdict", "read_data", "unstuff"]

#: Octets asked of the stream per call while discarding data beyond the size limit.
_DRAIN_LIMIT = 64 * 1024

_END = b".\r\n"
_CRLF = b"\r\n"


class DataVerdict(enum.Enum):
    """What the listener answers to the data (before the ``accept`` callback sees it)."""

    OK = "ok"
    LINE_TOO_LONG = "line too long"  # 500 5.5.2
    TOO_MUCH = "too much mail data"  # 552 5.3.4


@dataclass(frozen=True)
class DataOutcome:
    """The result of :func:`read_data`.

    :ivar verdict: OK, or why the data is refused.
    :ivar content: the data dot-unstuffed (empty unless OK).
    :ivar size: octets of (stuffed) data received before the end-of-data line, whether kept or discarded.
    """

    verdict: DataVerdict
    content: bytes = b""
    size: int = 0


def bulk_reading_possible(reader: asyncio.StreamReader) -> bool:
    """Whether :func:`read_data` can raise this stream's line limit (CPython's ``StreamReader._limit``)."""
    return isinstance(getattr(reader, "_limit", None), int)


def unstuff(stuffed: bytes) -> bytes:
    """Remove the leading dot of every line (RFC 5321 section 4.5.2).

    :param stuffed: the data as sent, lines delimited by CRLF, without the end-of-data line.
    :returns: the data as meant: each line that began with a dot has lost that one dot.

    Spec: RFC 5321 section 4.5.2 ("if the first character is a period and there are other characters on the
    line, the first character is deleted"; a line of one period is the end, so never part of the data).
    """
    if stuffed.startswith(b"."):
        stuffed = stuffed[1:]
        # The first line's CRLF may now start the data: "\r\n." needs no special case, it is matched below.
    return stuffed.replace(b"\r\n.", b"\r\n")


def data_verdict(stuffed: bytes, *, size_limit: int | None, line_limit: int, reader_limit: int) -> DataVerdict:
    """Judge DATA as aiosmtpd 1.4's line loop does, on the whole (or the first octets) of it.

    That loop reads line by line through a stream limited to ``reader_limit`` octets per line and, for each line,
    in this order: a line whose text (without CRLF) is longer than ``reader_limit`` is too long (the stream
    refuses it before it is counted); else the line is counted, and the data is too much once the count passes
    ``size_limit``; else a line longer than ``line_limit`` with its CRLF is too long. The first refusal wins.

    :param stuffed: the data as sent up to and including the CRLF before the end-of-data line; or, when it is
        over ``size_limit``, at least its first ``size_limit + reader_limit + 4`` octets.
    :param size_limit: the most octets accepted, or None (or 0) for no limit.
    :param line_limit: the longest line accepted, CRLF included, in octets.
    :param reader_limit: the stream's limit on a line's text, in octets (aiosmtpd: ``line_limit``).
    :returns: the verdict.

    Spec: RFC 5321 section 4.5.3.1.6 (line length); RFC 1870 section 6.3 (552 when over the size).
    """
    text_limit = min(line_limit - 2, reader_limit)  # longest line text (without CRLF) accepted either way
    if not size_limit or len(stuffed) <= size_limit:
        if len(stuffed) > text_limit and max(map(len, stuffed.split(_CRLF))) > text_limit:
            return DataVerdict.LINE_TOO_LONG
        return DataVerdict.OK
    # Over the limit: the line holding octet number size_limit (from 0) is the one that passes it. The lines
    # before it were counted without passing it: any of them too long is refused first.
    cut = stuffed.rfind(_CRLF, 0, size_limit)
    start = cut + 2 if cut != -1 else 0
    if start and max(map(len, stuffed[: start - 2].split(_CRLF))) > text_limit:
        return DataVerdict.LINE_TOO_LONG
    end = stuffed.find(_CRLF, start)
    text = (end if end != -1 else len(stuffed)) - start  # without its CRLF; a lower bound when none is held
    if text > reader_limit:
        return DataVerdict.LINE_TOO_LONG  # refused by the stream before it was counted
    return DataVerdict.TOO_MUCH


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> DataOutcome:
    """Read DATA up to and including its end-of-data line; judge it and unstuff it.

    Reads in calls of ``readuntil(b".\\r\\n")`` with the stream's limit raised (restored on return, also on
    failure); keeps at most ``size_limit + reader_limit + 27`` octets and discards the rest up to the end (while
    the limit is raised, the stream's buffer may grow to twice it before the connection is paused).

    :param reader: the connection's stream, positioned after the ``354`` reply (its ``_limit`` is the line
        limit the command loop uses; see :func:`bulk_reading_possible`).
    :param size_limit: the most octets of data accepted, or None (or 0) for no limit.
    :param line_limit: the longest line accepted, CRLF included.
    :returns: the outcome.
    :raises asyncio.IncompleteReadError: the stream ended before the end of data.
    :raises asyncio.CancelledError: the connection was lost (aiosmtpd cancels the session).

    Spec: RFC 5321 sections 4.1.1.4 and 4.5.2; RFC 1870 section 6.3.
    """
    reader_limit: int = reader._limit  # type: ignore[attr-defined]
    # Enough to judge the line that passes the size limit (see data_verdict), with room for the end's ".\r\n".
    keep = (size_limit + reader_limit + 8) if size_limit else None
    parts: list[bytes] = []
    held = 0
    tail = _CRLF  # the last two octets before the next chunk: DATA starts as if after a CRLF (its command line)
    try:
        while keep is None or held <= keep:
            reader._limit = max(keep - held, 16) if keep is not None else 1 << 62  # type: ignore[attr-defined]
            try:
                chunk = await reader.readuntil(_END)
            except asyncio.LimitOverrunError as exc:
                # No end within `keep` octets: over the size limit. Hold exactly keep + 1 (the end-of-data search
                # goes on from `tail`); `consumed` is larger, so the stream holds that much.
                assert keep is not None
                chunk = await reader.read(max(1, min(exc.consumed, keep + 1 - held)))
                parts.append(chunk)
                held += len(chunk)
                tail = (tail + chunk[-2:])[-2:]
                continue
            parts.append(chunk)
            held += len(chunk)
            if _ends_data(tail, chunk):
                stuffed = b"".join(parts)[:-3]
                parts.clear()
                verdict = data_verdict(stuffed, size_limit=size_limit, line_limit=line_limit, reader_limit=reader_limit)
                if verdict is not DataVerdict.OK:
                    return DataOutcome(verdict, size=len(stuffed))
                return DataOutcome(verdict, unstuff(stuffed), size=len(stuffed))
            tail = chunk[-2:]  # the chunk ends with ".\r\n"
        prefix = b"".join(parts)
        parts.clear()
        verdict = data_verdict(prefix, size_limit=size_limit, line_limit=line_limit, reader_limit=reader_limit)
        size = len(prefix)
        del prefix
        # Discard the rest up to the end of data, a bounded piece at a time.
        reader._limit = _DRAIN_LIMIT  # type: ignore[attr-defined]
        while True:
            try:
                chunk = await reader.readuntil(_END)
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.read(exc.consumed)
                size += len(chunk)
                tail = (tail + chunk[-2:])[-2:]
                continue
            size += len(chunk)
            if _ends_data(tail, chunk):
                return DataOutcome(verdict, size=size - 3)
            tail = chunk[-2:]
    finally:
        reader._limit = reader_limit  # type: ignore[attr-defined]


def _ends_data(tail: bytes, chunk: bytes) -> bool:
    """Whether ``chunk`` (which ends with ``.\r\n``), after the two octets ``tail``, ends the data: its dot line
    follows a CRLF (RFC 5321 section 4.1.1.4)."""
    if len(chunk) >= 5:
        return chunk.endswith(b"\r\n.\r\n")
    return (tail + chunk).endswith(b"\r\n.\r\n")
