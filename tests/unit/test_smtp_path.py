"""MAIL FROM / RCPT TO arguments are read as aiosmtpd reads them (RFC 5321 section 4.1.2).

The submission and backbone listeners answer the usual ``<local@domain> PARAM=...`` form without aiosmtpd's
RFC 5322 address parser (it cost ~3% of the gateway's CPU); every other form still goes to that parser. These
properties pin the shortcut to aiosmtpd's own answer, address, rest and refusals alike.
"""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hisp.adapters.smtp_server import _HispSMTP


def _server(local_part_limit: int = 0) -> _HispSMTP:
    server = object.__new__(_HispSMTP)
    server.local_part_limit = local_part_limit
    return server


def _answer(method: object, server: _HispSMTP, arg: str) -> object:
    try:
        return method(server, arg)  # type: ignore[operator]
    except Exception as exc:  # the stdlib parser raises IndexError on a lone "<"
        return type(exc)


def _both(arg: str, local_part_limit: int = 0) -> tuple[object, object]:
    server = _server(local_part_limit)
    return _answer(_HispSMTP._getaddr, server, arg), _answer(SMTP._getaddr, server, arg)


PIECES = [
    "<", ">", "@", ".", " ", "  ", "\t", "(", ")", '"', "\\", "[", "]", ":", ",", "=", "-", "_", "+", "~",
    "a", "Bob", "dr.smith", "x1", "direct", "example", "SIZE=1234", "BODY=8BITMIME", "é",
    "?", "=?", "?=", "=?utf-8?q?dr.jones?=", "=?utf-8?b?ZHIuam9uZXM=?=",
]


@settings(max_examples=1500)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
@example("<dr.smith@direct.clinic.example>")
@example("<dr.smith@direct.clinic.example> SIZE=1234 BODY=8BITMIME")
@example("<dr.smith@direct.clinic.example>   SIZE=1  ")
@example("<dr.smith@direct.clinic.example> (comment) SIZE=1")
@example('<"dr smith"@direct.clinic.example>')
@example("<a@[127.0.0.1]>")
@example("<a@b.> SIZE=1")
@example("<>")
@example(" <a@b>")
@example("<a@b>\tSIZE=1")
@example("<=?utf-8?q?dr.jones?=@direct.hospital.example>")  # aiosmtpd decodes the encoded word: so do we
def test_the_shortcut_answers_what_aiosmtpd_answers(arg: str) -> None:
    ours, theirs = _both(arg)
    if theirs is IndexError:  # the stdlib parser's crash on a lone "<": ours is a syntax error (501)
        assert ours == (None, None)
    else:
        assert ours == theirs


@pytest.mark.parametrize("limit", [0, 3, 8, 64])
@pytest.mark.parametrize("arg", ["<abc@d.example>", "<abcd@d.example> SIZE=1", "<dr.smith@direct.clinic.example>"])
def test_the_local_part_limit_is_kept(arg: str, limit: int) -> None:
    ours, theirs = _both(arg, limit)
    assert ours == theirs
