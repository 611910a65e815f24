"""The relay and edge delivery against real servers on loopback: aiosmtpd SMTP and LMTP sinks, a Maildir,
and our DNS responder for MX records.

What this proves: exact bytes arrive; STARTTLS is used when offered and required when configured (no clear
text then); 4xx/connection failures/timeouts are transient, 5xx permanent, per recipient with the server's
text; MX hosts are tried in preference order with fallback, implicit MX and null MX; LMTP per-recipient
replies after DATA (RFC 2033); Maildir files appear in new/ byte for byte.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import tempfile
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import serialization

from hisp.adapters.edge import EdgeDelivery
from hisp.adapters.smtp_relay import MxResolver, SmtpRelay, SmtpSession
from hisp.adapters.smtp_server import server_tls_context
from hisp.core import devca
from hisp.core.publish import DomainPublication, PublishedRecord, ZoneSettings, build_zones
from hisp.core.smtp_policy import DeliveryOutcome
from hisp.errors import PermanentDeliveryError, TransientDeliveryError
from hisp.testing.responder import run_responder

SENDER = "dr.smith@direct.clinic.example"
RCPT = "dr.jones@direct.hospital.example"
RAW = (
    b"From: <dr.smith@direct.clinic.example>\r\nTo: <dr.jones@direct.hospital.example>\r\nSubject: x\r\n\r\n"
    b".dot\r\nbody\r\n"
)


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    now = datetime.now(UTC)
    ca = devca.create_ca("hisp relay test CA", at=now)
    leaf = devca.issue_certificate(ca, at=now, domain="mx.hisp.test")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "c.pem").write_bytes(leaf.certificate.to_pem())
    (folder / "k.pem").write_bytes(leaf.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return server_tls_context(str(folder / "c.pem"), str(folder / "k.pem"))


class Sink:
    """An aiosmtpd handler that records messages; replies can be set per recipient and for DATA."""

    def __init__(self, *, rcpt: dict[str, str] | None = None, data: str | None = None,
                 ehlo_refusals: int = 0) -> None:
        self.messages: list[tuple[str, list[str], bytes, bool]] = []
        self.rcpt = rcpt or {}
        self.data = data
        self.ehlo_refusals = ehlo_refusals
        self.connections = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        self.connections += 1
        if self.ehlo_refusals:
            self.ehlo_refusals -= 1
            return ["421 4.3.2 busy, try another MX"]
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data is not None:
            return self.data
        assert isinstance(envelope.original_content, bytes)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content,
                              session.ssl is not None))
        if isinstance(server, LMTP):  # RFC 2033 4.2: one reply per recipient
            return "\r\n".join(self.rcpt.get("data:" + r, f"250 2.0.0 <{r}> delivered") for r in envelope.rcpt_tos)
        return "250 2.0.0 Ok: queued"


async def start_sink(handler: Sink, *, tls: ssl.SSLContext | None = None, lmtp: bool = False,
                     unix: str | None = None, port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    cls = LMTP if lmtp else SMTP

    def factory() -> SMTP:
        return cls(handler, hostname="sink.test", tls_context=tls, decode_data=False)

    if unix is not None:
        return await loop.create_unix_server(factory, unix)
    return await loop.create_server(factory, "127.0.0.1", port)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smarthost_relay(port: int, **session: Any) -> SmtpRelay:
    return SmtpRelay(smarthost=("127.0.0.1", port), session=SmtpSession(timeout=5, **session))


# -- relay: TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("offer_tls", [False, True], ids=["clear", "starttls"])
def test_relay_delivers_exact_bytes_with_starttls_when_offered(tls_context: ssl.SSLContext, offer_tls: bool) -> None:
    async def scenario() -> tuple[Any, Sink]:
        sink = Sink()
        server = await start_sink(sink, tls=tls_context if offer_tls else None)
        try:
            result = await smarthost_relay(port_of(server)).relay(SENDER, [RCPT], RAW)
        finally:
            server.close()
        return result, sink

    result, sink = run(scenario())
    assert result.delivered == (RCPT,)
    assert result.results[0].reply.startswith("250")
    assert sink.messages == [(SENDER, [RCPT], RAW, offer_tls)]


def test_relay_tls_required_but_not_offered_is_refused() -> None:
    async def scenario() -> tuple[Any, Sink]:
        sink = Sink()
        server = await start_sink(sink)
        try:
            result = await smarthost_relay(port_of(server), require_tls=True).relay(SENDER, [RCPT], RAW)
        finally:
            server.close()
        return result, sink

    result, sink = run(scenario())
    assert sink.messages == []
    (only,) = result.results
    assert only.outcome is DeliveryOutcome.TRANSIENT
    assert "TLS is required" in only.reply


def test_relay_tls_required_and_offered(tls_context: ssl.SSLContext) -> None:
    async def scenario() -> Sink:
        sink = Sink()
        server = await start_sink(sink, tls=tls_context)
        try:
            result = await smarthost_relay(port_of(server), require_tls=True).relay(SENDER, [RCPT], RAW)
            assert result.delivered == (RCPT,)
        finally:
            server.close()
        return sink

    assert run(scenario()).messages[0][3] is True


# -- relay: connection reuse -------------------------------------------------------------------------------


class MailRefusingSink(Sink):
    """A Sink whose MAIL answers 421 as many times as ``refusals`` says (a server closing an idle session)."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 0

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.refusals:
            self.refusals -= 1
            return "421 4.4.2 idle too long, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"


def test_relay_reuses_the_connection_and_recovers_when_the_server_dropped_it(tls_context: ssl.SSLContext) -> None:
    # Consecutive messages to one server share one STARTTLS session; a reused session refused at MAIL, or closed
    # by the server meanwhile, costs nothing: the message goes on a fresh connection at once; an idle session is
    # QUIT after reuse_idle; reuse_idle = 0 opens one connection per message.
    async def scenario() -> dict[str, Any]:
        sink = MailRefusingSink()
        protocols: list[SMTP] = []
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            protocol = SMTP(sink, hostname="sink.test", tls_context=tls_context, decode_data=False)
            protocols.append(protocol)
            return protocol

        server = await loop.create_server(factory, "127.0.0.1", 0)
        seen: dict[str, Any] = {}
        try:
            relay = SmtpRelay(
                smarthost=("127.0.0.1", port_of(server)), session=SmtpSession(timeout=5, reuse_idle=0.5)
            )
            first = await relay.relay(SENDER, [RCPT], RAW)
            second = await relay.relay(SENDER, [RCPT], RAW)
            seen["two messages"] = (first.delivered, second.delivered, len(protocols))
            sink.refusals = 1
            refused_then_fresh = await relay.relay(SENDER, [RCPT], RAW)
            seen["421 at MAIL"] = (refused_then_fresh.delivered, len(protocols))
            for protocol in protocols:  # the server drops every session
                if protocol.transport is not None:
                    protocol.transport.close()
            await asyncio.sleep(0.1)
            dropped_then_fresh = await relay.relay(SENDER, [RCPT], RAW)
            seen["dropped"] = (dropped_then_fresh.delivered, len(protocols))
            await asyncio.sleep(1.0)  # past reuse_idle: QUIT
            seen["quit after idle"] = [p.transport is None or p.transport.is_closing() for p in protocols]
            await relay.relay(SENDER, [RCPT], RAW)
            seen["after idle"] = len(protocols)
            single = SmtpRelay(smarthost=("127.0.0.1", port_of(server)), session=SmtpSession(timeout=5, reuse_idle=0))
            before = len(protocols)
            await single.relay(SENDER, [RCPT], RAW)
            await single.relay(SENDER, [RCPT], RAW)
            seen["no reuse"] = len(protocols) - before
            await relay.close()
        finally:
            server.close()
        seen["messages"] = len(sink.messages)
        return seen

    seen = run(scenario())
    assert seen["two messages"] == ((RCPT,), (RCPT,), 1)
    assert seen["421 at MAIL"] == ((RCPT,), 2)
    assert seen["dropped"] == ((RCPT,), 3)
    assert all(seen["quit after idle"])
    assert seen["after idle"] == 4
    assert seen["no reuse"] == 2
    assert seen["messages"] == 7  # each message delivered once


# -- relay: reply classes ---------------------------------------------------------------------------------


def test_relay_per_recipient_4xx_5xx_and_data_reply() -> None:
    temp, perm = "busy@direct.hospital.example", "gone@direct.hospital.example"

    async def scenario() -> tuple[Any, Any, Sink]:
        sink = Sink(rcpt={temp: "450 4.2.1 mailbox busy", perm: "550 5.1.1 no such user"})
        server = await start_sink(sink)
        try:
            relay = smarthost_relay(port_of(server))
            mixed = await relay.relay(SENDER, [temp, RCPT, perm], RAW)
            sink.data = "554 5.7.1 not trusted"
            refused = await relay.relay(SENDER, [RCPT], RAW)
        finally:
            server.close()
        return mixed, refused, sink

    mixed, refused, sink = run(scenario())
    busy, ok, gone = mixed.results
    assert isinstance(busy.error, TransientDeliveryError) and "450 4.2.1 mailbox busy" in busy.reply
    assert ok.delivered
    assert isinstance(gone.error, PermanentDeliveryError) and "550 5.1.1 no such user" in gone.reply
    assert sink.messages[0][1] == [RCPT]
    assert isinstance(refused.results[0].error, PermanentDeliveryError)
    assert "554 5.7.1 not trusted" in refused.results[0].error.message


def test_relay_data_4xx_is_transient() -> None:
    async def scenario() -> Any:
        server = await start_sink(Sink(data="451 4.3.0 try later"))
        try:
            return await smarthost_relay(port_of(server)).relay(SENDER, [RCPT], RAW)
        finally:
            server.close()

    assert run(scenario()).results[0].outcome is DeliveryOutcome.TRANSIENT


def test_relay_down_peer_and_silent_peer_are_transient() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # never greets
        writer.close()

    async def scenario() -> tuple[Any, Any]:
        down = await smarthost_relay(free_port()).relay(SENDER, [RCPT], RAW)
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        try:
            relay = SmtpRelay(smarthost=("127.0.0.1", port_of(server)), session=SmtpSession(timeout=0.5))
            quiet = await relay.relay(SENDER, [RCPT], RAW)
        finally:
            server.close()
        return down, quiet

    down, quiet = run(scenario())
    assert down.results[0].outcome is DeliveryOutcome.TRANSIENT and "cannot connect" in down.results[0].reply
    assert quiet.results[0].outcome is DeliveryOutcome.TRANSIENT


# -- relay: MX lookup --------------------------------------------------------------------------------------


def zones(records: list[tuple[str, str, str]]) -> Any:
    return build_zones(
        [
            _publication("direct.hospital.example", records),
            _publication("nomail.example", [("nomail.example.", "MX", "0 .")]),
            _publication("implicit.example", [("implicit.example.", "A", "127.0.0.1")]),
        ],
        ZoneSettings(nameservers=("ns.hisp.test.",)),
    )


def _publication(domain: str, records: list[tuple[str, str, str]]) -> DomainPublication:
    from hisp.addresses import HealthDomain

    return DomainPublication(
        HealthDomain.parse(domain), records=tuple(PublishedRecord(n, t, v, 60) for n, t, v in records)
    )


def test_relay_mx_order_fallback_implicit_and_null_mx() -> None:
    records = [
        ("direct.hospital.example.", "MX", "20 mx-b.direct.hospital.example."),
        ("direct.hospital.example.", "MX", "5 mx-lame.direct.hospital.example."),
        ("direct.hospital.example.", "MX", "10 mx-a.direct.hospital.example."),
        ("mx-a.direct.hospital.example.", "A", "127.0.0.1"),
        ("mx-b.direct.hospital.example.", "A", "127.0.0.1"),
        ("mx-lame.direct.hospital.example.", "TXT", '"no address"'),
    ]

    with run_responder(zones(records)) as dns:

        async def scenario() -> tuple[Any, Any, Any, Any, Sink]:
            sink = Sink(ehlo_refusals=1)  # the first host tried answers 421: the next MX gets the message
            server = await start_sink(sink)
            try:
                resolver = MxResolver(("127.0.0.1", dns.port), timeout=3, rng=random.Random(1))
                relay = SmtpRelay(resolver=resolver, port=port_of(server), session=SmtpSession(timeout=5))
                fallback = await relay.relay(SENDER, [RCPT], RAW)
                direct = await relay.relay(SENDER, [RCPT], RAW)
                implicit = await relay.relay(SENDER, ["a@implicit.example"], RAW)
                null = await relay.relay(SENDER, ["a@nomail.example", "b@nothere.direct.hospital.example"], RAW)
            finally:
                server.close()
            return fallback, direct, implicit, null, sink

        fallback, direct, implicit, null, sink = run(scenario())

    assert fallback.delivered == (RCPT,)
    assert fallback.attempts[0].startswith("mx-a.direct.hospital.example[127.0.0.1]") and "421" in fallback.attempts[0]
    assert fallback.results[0].host is not None and fallback.results[0].host.startswith("mx-b.")
    assert direct.results[0].host is not None and direct.results[0].host.startswith("mx-a.")
    assert implicit.delivered == ("a@implicit.example",)
    assert implicit.results[0].host is not None and implicit.results[0].host.startswith("implicit.example[")
    nomail, nxdomain = null.results
    assert isinstance(nomail.error, PermanentDeliveryError) and "null MX" in nomail.reply
    assert isinstance(nxdomain.error, PermanentDeliveryError)
    assert len(sink.messages) == 3


def test_relay_caches_mx_and_address_answers_for_their_ttl() -> None:
    # The records' TTL is 60 s. Within it the relay asks DNS nothing and keeps using the cached host even though
    # the zone moved on; past it, it asks again and follows the zone. max_ttl caps the TTL; 0 turns caching off.
    before = [
        ("direct.hospital.example.", "MX", "10 mx-a.direct.hospital.example."),
        ("mx-a.direct.hospital.example.", "A", "127.0.0.1"),
    ]
    after = [
        ("direct.hospital.example.", "MX", "10 mx-b.direct.hospital.example."),
        ("mx-b.direct.hospital.example.", "A", "127.0.0.1"),
    ]

    with run_responder(zones(before)) as dns:

        def asked() -> int:
            return sum(dns.server.counts.values())

        async def scenario() -> dict[str, Any]:
            sink = Sink()
            server = await start_sink(sink)
            now = [1000.0]
            seen: dict[str, Any] = {}
            try:
                resolver = MxResolver(("127.0.0.1", dns.port), timeout=3, clock=lambda: now[0])
                relay = SmtpRelay(resolver=resolver, port=port_of(server), session=SmtpSession(timeout=5))
                start = asked()
                seen["first"] = await relay.relay(SENDER, [RCPT], RAW)
                seen["first_queries"] = asked() - start  # MX, then A and AAAA of mx-a
                dns.set_zones(zones(after))
                await asyncio.sleep(0.2)  # the responder's thread takes the new zones
                now[0] += 59.0
                start = asked()
                seen["cached"] = await relay.relay(SENDER, [RCPT], RAW)
                seen["cached_queries"] = asked() - start
                now[0] += 2.0  # 61 s after the answers: their TTL has run out
                start = asked()
                seen["fresh"] = await relay.relay(SENDER, [RCPT], RAW)
                seen["fresh_queries"] = asked() - start
                capped = MxResolver(("127.0.0.1", dns.port), timeout=3, clock=lambda: now[0], max_ttl=10)
                await capped.routes("direct.hospital.example", 25)
                now[0] += 11.0
                start = asked()
                await capped.routes("direct.hospital.example", 25)
                seen["capped_queries"] = asked() - start
                uncached = MxResolver(("127.0.0.1", dns.port), timeout=3, max_ttl=0)
                await uncached.routes("direct.hospital.example", 25)
                start = asked()
                await uncached.routes("direct.hospital.example", 25)
                seen["uncached_queries"] = asked() - start
            finally:
                server.close()
            return seen

        seen = run(scenario())

    assert seen["first"].results[0].host.startswith("mx-a.direct.hospital.example[")
    assert seen["first_queries"] == 3
    assert seen["cached"].delivered == (RCPT,)
    assert seen["cached"].results[0].host.startswith("mx-a.direct.hospital.example[")  # stale within its TTL
    assert seen["cached_queries"] == 0
    assert seen["fresh"].results[0].host.startswith("mx-b.direct.hospital.example[")
    assert seen["fresh_queries"] >= 2  # MX and A again (the AAAA NODATA of mx-b is new too)
    assert seen["capped_queries"] >= 2  # max_ttl 10 s: asked again after 11 s although the TTL is 60 s
    assert seen["uncached_queries"] == 3


def test_relay_dns_unreachable_is_transient() -> None:
    async def scenario() -> Any:
        relay = SmtpRelay(resolver=MxResolver(("127.0.0.1", free_port()), timeout=0.5), port=free_port())
        return await relay.relay(SENDER, [RCPT], RAW)

    assert run(scenario()).results[0].outcome is DeliveryOutcome.TRANSIENT


# -- edge delivery -----------------------------------------------------------------------------------------


def test_edge_smtp_endpoint(tls_context: ssl.SSLContext) -> None:
    async def scenario() -> tuple[Any, Sink]:
        sink = Sink()
        server = await start_sink(sink, tls=tls_context)
        try:
            results = await EdgeDelivery(timeout=5).deliver(f"smtp://127.0.0.1:{port_of(server)}", SENDER, [RCPT], RAW)
        finally:
            server.close()
        return results, sink

    results, sink = run(scenario())
    assert [r.outcome for r in results] == [DeliveryOutcome.DELIVERED]
    assert sink.messages == [(SENDER, [RCPT], RAW, True)]


def test_edge_lmtp_tcp_per_recipient_replies() -> None:
    busy, bad = "busy@direct.hospital.example", "bad@direct.hospital.example"

    async def scenario() -> tuple[Any, Sink]:
        sink = Sink(rcpt={"data:" + busy: "452 4.2.2 over quota", "data:" + bad: "550 5.2.1 mailbox disabled"})
        server = await start_sink(sink, lmtp=True)
        try:
            results = await EdgeDelivery(timeout=5).deliver(
                f"lmtp://127.0.0.1:{port_of(server)}", SENDER, [RCPT, busy, bad], RAW
            )
        finally:
            server.close()
        return results, sink

    results, sink = run(scenario())
    assert [r.outcome for r in results] == [DeliveryOutcome.DELIVERED, DeliveryOutcome.TRANSIENT,
                                           DeliveryOutcome.PERMANENT]
    assert "452 4.2.2 over quota" in results[1].reply and "550 5.2.1" in results[2].reply
    assert sink.messages[0][2] == RAW


def test_edge_lmtp_unix_socket_and_down() -> None:
    folder = tempfile.mkdtemp(prefix="hisp-lmtp-", dir="/tmp")
    path = f"{folder}/lmtp.sock"

    async def scenario() -> tuple[Any, Any, Sink]:
        sink = Sink()
        server = await start_sink(sink, lmtp=True, unix=path)
        try:
            results = await EdgeDelivery(timeout=5).deliver(f"lmtp:{path}", "", [RCPT], RAW)
        finally:
            server.close()
            await server.wait_closed()
        down = await EdgeDelivery(timeout=2).deliver(f"lmtp:{folder}/missing.sock", SENDER, [RCPT], RAW)
        return results, down, sink

    results, down, sink = run(scenario())
    assert results[0].delivered
    assert sink.messages == [("<>", [RCPT], RAW, False)]
    assert down[0].outcome is DeliveryOutcome.TRANSIENT


def test_edge_smtp_endpoint_down_is_transient() -> None:
    results = run(EdgeDelivery(timeout=2).deliver(f"smtp://127.0.0.1:{free_port()}", SENDER, [RCPT], RAW))
    assert results[0].outcome is DeliveryOutcome.TRANSIENT


def test_edge_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "ehr" / "Maildir"
    results = run(EdgeDelivery().deliver(f"maildir:{maildir}", SENDER, [RCPT, "b@direct.hospital.example"], RAW))
    assert all(r.delivered for r in results)
    (written,) = list((maildir / "new").iterdir())
    assert written.read_bytes() == RAW
    assert list((maildir / "tmp").iterdir()) == []
    assert (maildir / "cur").is_dir()
    assert str(written) in results[0].reply
    # a second message gets another unique name
    run(EdgeDelivery().deliver(f"maildir:{maildir}", SENDER, [RCPT], RAW))
    assert len(list((maildir / "new").iterdir())) == 2


def test_edge_maildir_unwritable_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    results = run(EdgeDelivery().deliver(f"maildir:{blocker}", SENDER, [RCPT], RAW))
    assert results[0].outcome is DeliveryOutcome.TRANSIENT
