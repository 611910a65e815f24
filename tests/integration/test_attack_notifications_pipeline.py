"""Adversarial probes of delivery-notification handling (issue 6), driven through the real pipeline.

Each probe builds the clinic's (and, where needed, the hospital's) HISP with :func:`hisp.commands.demo.prepare`
and ``Node._build`` -- the real store (SQLite), agent, trust and pipeline, but no listeners and no workers -- and
feeds it what a trusted peer could send: messages sealed with ``seal()`` by dr.jones (the hospital's address-bound
certificate, trusted by the clinic) and encrypted to dr.smith. Nothing leaves the process; the clock is injected.

What reaches the edge is what the pipeline enqueues as an incoming message for dr.smith (the notice forwarded
to his mailbox); what goes back to the peer is what it enqueues as an outgoing message.

Each probe pins a property; those that first demonstrated a defect (see the git history) pass since its fix.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hisp.adapters.storage import SqlStore
from hisp.app import Node
from hisp.commands.demo import RECIPIENT, SENDER, DemoSetup, prepare
from hisp.config import load_config
from hisp.core.dsn import parse_dsn
from hisp.core.mdn import build_mdn, parse_mdn
from hisp.core.tracking import State
from hisp.errors import HispError, PolicyViolation
from hisp.pipeline import Pipeline
from hisp.ports import Direction
from hisp.testing.pki import seal

HOSPITAL = RECIPIENT.rpartition("@")[2]
CLINIC = SENDER.rpartition("@")[2]
THIRD = "dr.who@direct.third.example"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Side:
    node: Node
    store: SqlStore
    pipeline: Pipeline
    clock: Clock


@pytest.fixture(scope="module")
def pki_setup(tmp_path_factory: pytest.TempPathFactory) -> DemoSetup:
    """One PKI and pair of configurations for the module (the costly part); each test gets fresh databases."""
    return prepare(tmp_path_factory.mktemp("pki"), datetime.now(UTC) - timedelta(minutes=5))


@asynccontextmanager
async def clinic_side(
    setup: DemoSetup, tmp_path: Path, *, name: str = "clinic", db: Path | None = None, clock: Clock | None = None
) -> AsyncIterator[Side]:
    """The clinic's HISP pipeline on its own SQLite file (or ``db``), without listeners or workers."""
    config = load_config(setup.clinic.config)
    database = db or tmp_path / f"{name}.sqlite3"
    config = _with_storage(config, f"sqlite:///{database}")
    clock = clock or Clock()
    node = Node(config, environ=os.environ, clock=clock)
    node.name = name
    loop = asyncio.get_running_loop()
    store, pipeline, _stores = await loop.run_in_executor(node._executor, node._build)
    try:
        yield Side(node, store, pipeline, clock)
    finally:
        store.close()
        node._executor.shutdown(wait=True)


def _with_storage(config, url: str):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(config, storage=dataclasses.replace(config.storage, url=url))


def from_jones(setup: DemoSetup, plain: bytes, at: datetime) -> bytes:
    """``plain`` signed by dr.jones (trusted by the clinic) and encrypted to dr.smith: a trusted peer's message."""
    return seal(plain, [setup.issued["jones"].credential], [setup.issued["smith"].certificate], at=at)


def original(message_id: str = "<ref-1@direct.clinic.example>", *, final: bool = True, extra: str = "") -> bytes:
    lines = [
        f"From: Dr. Smith <{SENDER}>",
        f"To: Dr. Jones <{RECIPIENT}>",
        "Subject: Referral",
        "Date: Mon, 30 Nov 2026 12:00:00 +0000",
        *([f"Message-ID: {message_id}"] if message_id else []),
        *(["Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true"] if final else []),
        *([extra] if extra else []),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Please see the patient.",
        "",
    ]
    return "\r\n".join(lines).encode()


def mdn(disposition: str, about: bytes, at: datetime, *, recipient: str = RECIPIENT, mid: str = "<m-1@h>") -> bytes:
    """An MDN about ``about`` speaking for ``recipient`` (Final-Recipient); always From dr.jones, the address
    the trusted signer is bound to."""
    failure = "the EHR refused it" if disposition == "failed" else None
    raw = build_mdn(
        about, recipient=recipient, disposition=disposition, reporting_ua=f"mx.{HOSPITAL}; probe",
        message_id=lambda: mid, at=at, failure=failure, original_recipient=recipient,
    )
    return raw.replace(f"From: {recipient}\r\n".encode(), f"From: {RECIPIENT}\r\n".encode(), 1)


def dsn(
    blocks: list[tuple[str, str, str]], *, original_id: str = "<ref-1@direct.clinic.example>",
    sender: str = RECIPIENT, mid: str = "<d-1@h>", top: str = "",
) -> bytes:
    """A DSN from the hospital: ``(address, action, status)`` per recipient block."""
    per_message = f"Reporting-MTA: dns; mx.{HOSPITAL}\r\nX-Original-Message-ID: {original_id}\r\n"
    body = "".join(f"\r\nFinal-Recipient: rfc822; {a}\r\nAction: {act}\r\nStatus: {st}\r\n" for a, act, st in blocks)
    return (
        f"From: {sender}\r\nTo: {SENDER}\r\nSubject: Delivery Status Notification\r\nMessage-ID: {mid}\r\n{top}"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"D\"\r\n\r\n"
        "--D\r\nContent-Type: text/plain\r\n\r\nnot delivered\r\n"
        f"--D\r\nContent-Type: message/delivery-status\r\n\r\n{per_message}{body}--D--\r\n"
    ).encode()


def edge_messages(side: Side) -> list[bytes]:
    """What the clinic queued for dr.smith's mailbox (forwarded notices, DSNs, delivered messages), oldest first."""
    stored = side.store.list_messages(direction=Direction.INCOMING, limit=10000)
    return [side.store.raw(m.id) for m in sorted(stored, key=lambda m: (m.received_at, m.id))]


def outgoing(side: Side) -> list[bytes]:
    stored = side.store.list_messages(direction=Direction.OUTGOING, limit=10000)
    return [side.store.raw(m.id) for m in stored]


async def submit(side: Side, raw: bytes, recipients: tuple[str, ...] = (RECIPIENT,)) -> str:
    reply = await side.pipeline.accept_outgoing(SENDER, list(recipients), raw)
    return reply.rsplit(" ", 1)[1]  # the queue id


async def receive(side: Side, setup: DemoSetup, plain: bytes, *, mail_from: str = "") -> str:
    """A notice (null reverse-path) or a message from dr.jones, as the hospital's HISP would send it."""
    side.clock.now += timedelta(seconds=1)
    return await side.pipeline.accept_incoming(mail_from, [SENDER], from_jones(setup, plain, side.clock()))


def relay(side: Side, queue_id: str) -> None:
    """The clinic's queue relays ``queue_id`` (its recipients leave the queue as delivered to the peer), as a
    worker would: the notification timeout counts from this send (DN-9), not from the submission."""
    for job in side.store.claim("relay-probe", side.clock(), 60.0, 100):
        assert job.message_id == queue_id, "relay() expects only this message's jobs to be due"
        side.store.complete(job, side.clock(), target="smtp://mx.direct.hospital.example", reply="250 2.0.0 Ok")


def state(side: Side, queue_id: str, address: str = RECIPIENT) -> State:
    return side.store.tracking(queue_id).track.recipients[address.lower()].state


def run(coro: Callable[[], object], timeout: float = 30.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro(), timeout)  # type: ignore[arg-type]

    asyncio.run(main())


# --- sanity: the harness sees what the real path does ----------------------------------------------------------


def test_harness_processed_then_dispatched_complete_and_forwarded(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent)
            assert "forwarded" in await receive(side, pki_setup, mdn("processed", sent, side.clock()))
            assert state(side, qid) is State.PROCESSED
            assert "forwarded" in await receive(side, pki_setup, mdn("dispatched", sent, side.clock(), mid="<m-2@h>"))
            assert state(side, qid) is State.DISPATCHED
            assert [parse_mdn(m).disposition for m in edge_messages(side)] == ["processed", "dispatched"]
            assert len(outgoing(side)) == 1  # the referral only: no MDN for an MDN (AS-19)

    run(main)


# --- angle 1/forgery: a regular message that merely carries a notification as an attachment --------------------


def forwarded_as_attachment(notice: bytes, *, depth: int = 1) -> bytes:
    """An ordinary message from dr.jones to dr.smith ("FW: ...") carrying ``notice`` as a message/rfc822
    attachment, ``depth`` levels deep (a forward of a forward)."""
    inner = notice
    for level in range(depth):
        boundary = f"fw{level}"
        inner = (
            f"From: Dr. Jones <{RECIPIENT}>\r\nTo: Dr. Smith <{SENDER}>\r\nSubject: FW: receipt\r\n"
            f"Message-ID: <fw-{level}@{HOSPITAL}>\r\nDate: Mon, 30 Nov 2026 12:30:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nSee the receipt below; please call me.\r\n"
            f"--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode() + inner + f"\r\n--{boundary}--\r\n".encode()
    return inner


def test_ordinary_message_with_forwarded_mdn_attachment_is_delivered_and_acknowledged(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            await submit(side, sent)
            processed = mdn("processed", sent, side.clock())
            await receive(side, pki_setup, processed)  # the real processed MDN
            before = len(edge_messages(side))
            # dr.jones now writes to dr.smith, attaching that receipt
            reply = await receive(side, pki_setup, forwarded_as_attachment(processed), mail_from=RECIPIENT)
            assert "queued as" in reply, reply  # got: "250 2.0.0 Ok: notification recorded"
            assert len(edge_messages(side)) == before + 1  # the letter reaches dr.smith
            mdns = [m for m in outgoing(side) if parse_mdn(m).disposition == "processed"]
            assert len(mdns) == 1  # AS-18: a processed MDN for dr.jones' letter

    run(main)


def test_ordinary_message_with_nested_forwarded_dsn_does_not_move_tracking(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            qid = await submit(side, original())
            letter = forwarded_as_attachment(dsn([(RECIPIENT, "failed", "5.1.1")]), depth=2)
            await receive(side, pki_setup, letter, mail_from=RECIPIENT)
            assert state(side, qid) is State.SENT  # got: failed
            assert any(parse_mdn(m).disposition == "processed" for m in outgoing(side))

    run(main)


# --- angle 4: duplicates (DN-8) --------------------------------------------------------------------------------


def test_duplicate_dispatched_and_late_notices_are_not_forwarded_again(pki_setup: DemoSetup, tmp_path: Path) -> None:
    """The same dispatched MDN twice, then a processed MDN, a failed DSN and a failed MDN after it: the edge sees
    the dispatched MDN once and nothing after it (DN-8)."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent)
            dispatched = mdn("dispatched", sent, side.clock())
            assert "forwarded" in await receive(side, pki_setup, dispatched)
            for late in (
                dispatched,
                mdn("processed", sent, side.clock(), mid="<m-2@h>"),
                dsn([(RECIPIENT, "failed", "5.0.0")]),
                mdn("failed", sent, side.clock(), mid="<m-3@h>"),
            ):
                assert "recorded" in await receive(side, pki_setup, late)
            assert state(side, qid) is State.DISPATCHED
            assert [parse_mdn(m).disposition for m in edge_messages(side)] == ["dispatched"]

    run(main)


def test_failed_dsn_then_processed_and_failed_mdn_only_one_terminal(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent)
            await receive(side, pki_setup, dsn([(RECIPIENT, "failed", "5.5.0")]))
            await receive(side, pki_setup, mdn("processed", sent, side.clock()))
            await receive(side, pki_setup, mdn("failed", sent, side.clock(), mid="<m-2@h>"))
            await receive(side, pki_setup, dsn([(RECIPIENT, "failed", "5.5.0")], mid="<d-2@h>"))
            assert state(side, qid) is State.FAILED
            assert len(edge_messages(side)) == 1

    run(main)


def test_repeated_failed_dsn_bundled_with_untracked_block_reaches_edge_once(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            qid = await submit(side, original())
            blocks = [(RECIPIENT, "failed", "5.5.0"), (f"someone.else@{HOSPITAL}", "failed", "5.1.1")]
            await receive(side, pki_setup, dsn(blocks))
            await receive(side, pki_setup, dsn(blocks, mid="<d-2@h>"))
            await receive(side, pki_setup, dsn(blocks, mid="<d-3@h>"))
            assert state(side, qid) is State.FAILED
            failed_for_jones = [m for m in edge_messages(side) if RECIPIENT.encode() in m]
            assert len(failed_for_jones) == 1  # got: 3

    run(main)


# --- angle 2: forgery -------------------------------------------------------------------------------------------


def test_peer_cannot_move_a_third_domains_recipient(pki_setup: DemoSetup, tmp_path: Path) -> None:
    """Tracking: the hospital (trusted) says the third domain's recipient got it, or that our own sender failed:
    no tracked state changes (restrict_to_signer holds)."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent, (RECIPIENT, THIRD))
            with pytest.raises(PolicyViolation, match=r"outside direct\.hospital\.example"):  # 554 5.7.1 to the peer
                await receive(side, pki_setup, mdn("dispatched", sent, side.clock(), recipient=THIRD))
            with pytest.raises(PolicyViolation):
                await receive(side, pki_setup, dsn([(THIRD, "failed", "5.1.1"), (SENDER, "failed", "5.1.1")]))
            assert state(side, qid, THIRD) is State.SENT
            assert state(side, qid, RECIPIENT) is State.SENT

    run(main)


def test_forged_third_domain_mdn_is_not_passed_to_the_edge(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent, (RECIPIENT, THIRD))
            relay(side, qid)
            with pytest.raises(PolicyViolation):  # refused before the 250: nothing reaches the edge
                await receive(side, pki_setup, mdn("dispatched", sent, side.clock(), recipient=THIRD))
            side.clock.now += timedelta(hours=2)
            await side.pipeline.expire_once()
            assert state(side, qid, THIRD) is State.TIMED_OUT
            about_third = [m for m in edge_messages(side) if THIRD.encode() in m]
            kinds = ["MDN " + str(parse_mdn(m).disposition) if parse_mdn(m).disposition else "DSN" for m in about_third]
            assert kinds == ["DSN"], kinds  # got: ['MDN dispatched', 'DSN']

    run(main)


# --- angle 1: well-formed variants of trusted notifications ---------------------------------------------------


def variant(raw: bytes, transform: Callable[[bytes, bytes], bytes]) -> bytes:
    """Apply ``transform(header, fields)`` to the message/disposition-notification part of a built MDN."""
    head, marker, rest = raw.partition(b"Content-Type: message/disposition-notification\r\n")
    enc, _, rest = rest.partition(b"\r\n\r\n")
    fields, sep, tail = rest.partition(b"\r\n--")
    return head + marker + enc + b"\r\n\r\n" + transform(head, fields) + sep + tail


VARIANTS = {
    "lower-case names": lambda h, f: f.lower(),
    "BOM and LF only": lambda h, f: b"\xef\xbb\xbf" + f.replace(b"\r\n", b"\n"),
    "folded fields": lambda h, f: f.replace(b"; automatic", b";\r\n automatic").replace(
        b"Final-Recipient: rfc822;", b"Final-Recipient:\r\n\trfc822;"
    ),
    "spaces before colon": lambda h, f: f.replace(b"Disposition:", b"Disposition :"),
    "no Original-Message-ID (In-Reply-To only)": lambda h, f: b"\r\n".join(
        line for line in f.split(b"\r\n") if not line.lower().startswith(b"original-message-id")
    ),
    "Original-Message-ID without brackets, upper case": lambda h, f: f.replace(
        b"<ref-1@direct.clinic.example>", b"REF-1@DIRECT.CLINIC.EXAMPLE"
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tolerated_mdn_variants_move_tracking_once(pki_setup: DemoSetup, tmp_path: Path, name: str) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent)
            reply = await receive(side, pki_setup, variant(mdn("dispatched", sent, side.clock()), VARIANTS[name]))
            assert reply.startswith("250 ") and "forwarded" in reply, reply
            assert state(side, qid) is State.DISPATCHED
            assert len(edge_messages(side)) == 1

    run(main)


def test_dispatched_without_extension_does_not_complete_a_reliable_recipient(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    """DN-7: dispatched counts only with X-DIRECT-FINAL-DESTINATION-DELIVERY; DN-8: it is not forwarded."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent)
            relay(side, qid)
            plain = variant(mdn("dispatched", sent, side.clock()), lambda h, f: f.replace(
                b"\r\nX-DIRECT-FINAL-DESTINATION-DELIVERY:", b""))
            await receive(side, pki_setup, plain)
            assert state(side, qid) is State.SENT
            side.clock.now += timedelta(hours=2)
            await side.pipeline.expire_once()
            ((block,),) = [parse_dsn(m).recipients for m in edge_messages(side) if parse_dsn(m).recipients]
            assert (block.address, block.status) == (RECIPIENT, "5.4.71")

    run(main)


def test_mdn_with_original_recipient_matching_and_rewritten_final_recipient(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original()
            qid = await submit(side, sent)
            alias = f"jones.inbox@{HOSPITAL}"
            for disposition, mid in (("processed", "<m-1@h>"), ("dispatched", "<m-2@h>")):
                raw = mdn(disposition, sent, side.clock(), recipient=alias, mid=mid).replace(
                    f"Original-Recipient: rfc822; {alias}".encode(), f"Original-Recipient: rfc822; {RECIPIENT}".encode()
                )
                await receive(side, pki_setup, raw)
            assert state(side, qid) is State.DISPATCHED  # got: sent
            side.clock.now += timedelta(hours=2)
            await side.pipeline.expire_once()
            assert not any(parse_dsn(m).recipients for m in edge_messages(side))

    run(main)


# --- angle 1: size -----------------------------------------------------------------------------------------------


def test_dsn_with_5000_recipient_blocks_is_accepted_and_applied_once(pki_setup: DemoSetup, tmp_path: Path) -> None:
    """A trusted peer's DSN with 5000 blocks (2500 naming our tracked recipient, 2500 others of its domain):
    answered 250 within a few seconds, the recipient failed once, one notice to the edge."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            qid = await submit(side, original())
            blocks = [
                (RECIPIENT if i % 2 == 0 else f"x{i}@{HOSPITAL}", "failed", "5.1.1") for i in range(5000)
            ]
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = await receive(side, pki_setup, dsn(blocks))
            elapsed = loop.time() - started
            assert reply.startswith("250 "), reply
            assert elapsed < 8, elapsed
            assert state(side, qid) is State.FAILED
            assert len(edge_messages(side)) == 1

    run(main)


def test_history_of_a_recipient_stays_bounded_under_a_repeating_dsn(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            qid = await submit(side, original())
            await receive(side, pki_setup, dsn([(RECIPIENT, "failed", "5.1.1")] * 2500))
            history = side.store.tracking(qid).track.recipients[RECIPIENT].history
            assert len(history) <= 10, len(history)  # got: 2500

    run(main)


# --- angle 6 (receiving side): odd Message-IDs on trusted ordinary messages ----------------------------------------


@pytest.mark.parametrize("message_id", ["", "<two words@direct.hospital.example>", "<>"])
def test_trusted_message_with_odd_message_id_is_accepted(
    pki_setup: DemoSetup, tmp_path: Path, message_id: str
) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            letter = (
                f"From: {RECIPIENT}\r\nTo: {SENDER}\r\nSubject: results\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
                + (f"Message-ID: {message_id}\r\n" if message_id else "")
                + "\r\nLab results follow.\r\n"
            ).encode()
            try:
                reply = await receive(side, pki_setup, letter, mail_from=RECIPIENT)
            except HispError as exc:
                reply = exc.smtp_reply()
            assert reply.startswith("250 "), reply  # got: 451 4.3.0 ...
            assert len(edge_messages(side)) == 1

    run(main)


def test_self_addressed_message_with_unusable_message_id_ends_its_claim(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            note = original("<two words@direct.clinic.example>", final=False).replace(
                f"To: Dr. Jones <{RECIPIENT}>".encode(), f"To: {SENDER}".encode()
            )
            await side.pipeline.accept_outgoing(SENDER, [SENDER], note)
            for _ in range(4):
                await side.pipeline.run_once()
                side.clock.now += timedelta(days=2)  # past every lease and the queue lifetime
            (sent,) = [m for m in side.store.list_messages(direction=Direction.OUTGOING) if m.mail_from == SENDER]
            (recipient,) = sent.recipients
            assert recipient.state.value in ("delivered", "bounced"), (recipient.state, recipient.attempts)

    run(main)


# --- angle 5: the timeout scan racing notifications and other nodes ----------------------------------------------


def timeout_dsns(side: Side) -> list[tuple[str, str | None]]:
    return [
        (b.address or "", b.status)
        for m in edge_messages(side)
        for b in parse_dsn(m).recipients
        if (b.status or "").startswith("5.4.7")
    ]


def test_expire_racing_a_dispatched_mdn_gives_exactly_one_terminal_notice(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            for round_ in range(6):
                sent = original(f"<race-{round_}@{CLINIC}>")
                qid = await submit(side, sent)
                side.clock.now += timedelta(hours=1, seconds=1)
                before = len(edge_messages(side))
                dispatched = mdn("dispatched", sent, side.clock(), mid=f"<race-mdn-{round_}@h>")
                if round_ % 2:
                    await asyncio.gather(side.pipeline.expire_once(), receive(side, pki_setup, dispatched))
                else:
                    await asyncio.gather(receive(side, pki_setup, dispatched), side.pipeline.expire_once())
                assert len(edge_messages(side)) - before == 1, round_
                assert state(side, qid) in (State.DISPATCHED, State.TIMED_OUT)
                assert side.store.tracking(qid).complete

    run(main)


def test_two_nodes_on_one_sqlite_file_send_one_timeout_dsn(pki_setup: DemoSetup, tmp_path: Path) -> None:
    """Two clinic nodes share one database; both scan at once, repeatedly, while a processed MDN (which releases
    any claim on the track) arrives in between: one DSN (5.4.72) in all."""

    async def main() -> None:
        clock = Clock()
        db = tmp_path / "shared.sqlite3"
        async with clinic_side(pki_setup, tmp_path, name="a", db=db, clock=clock) as a, \
                clinic_side(pki_setup, tmp_path, name="b", db=db, clock=clock) as b:
            sent = original()
            qid = await submit(a, sent)
            clock.now += timedelta(hours=1, seconds=1)
            await asyncio.gather(
                a.pipeline.expire_once(), receive(b, pki_setup, mdn("processed", sent, clock())),
                b.pipeline.expire_once(), a.pipeline.expire_once(),
            )
            # Past every lease, and past the deadline a scan re-arms when it runs before the MDN is applied (the
            # recipient still queued, never sent: DN-9 counts from the send): which comes first is up to gather.
            clock.now += timedelta(hours=1, minutes=10)
            await asyncio.gather(a.pipeline.expire_once(), b.pipeline.expire_once())
            assert state(a, qid) is State.TIMED_OUT
            found = timeout_dsns(a)
            assert len(found) == 1 and found[0][0] == RECIPIENT, found

    run(main)


# --- angle 6: submission edge cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "",  # no Message-ID: the HISP adds one
        "abc-no-brackets@direct.clinic.example",
        "<First@direct.clinic.example>\r\nMessage-ID: <second@direct.clinic.example>",
    ],
)
def test_submission_message_id_forms_are_correlated(pki_setup: DemoSetup, tmp_path: Path, header: str) -> None:
    """The id tracked is the one the peer's MDN will quote (built here from the stored message, as the peer
    builds it from what it receives)."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            qid = await submit(side, original(header))
            stored = side.store.raw(qid)
            await receive(side, pki_setup, mdn("dispatched", stored, side.clock()))
            assert state(side, qid) is State.DISPATCHED
            if not header:
                tracked_id = side.store.tracking(qid).header_message_id
                assert stored.startswith(b"Message-ID: <") and tracked_id in stored.decode()

    run(main)


def test_bcc_is_refused_at_submission_and_nothing_is_stored(pki_setup: DemoSetup, tmp_path: Path) -> None:
    """AS-13: a message with a Bcc header is refused on submission (554 5.7.1 at DATA, the reason given to the
    edge at once), never stored, tracked, sealed or delivered. (It used to be accepted with 250 and bounced with a
    DSN when sealed.)"""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            note = original(f"<bcc@{CLINIC}>", final=False, extra=f"Bcc: {SENDER}").replace(
                f"To: Dr. Jones <{RECIPIENT}>".encode(), f"To: {SENDER}".encode()
            )
            with pytest.raises(PolicyViolation, match="Bcc is not allowed") as refused:
                await submit(side, note, (SENDER,))
            assert refused.value.smtp_reply().startswith("554 5.7.1")
            assert side.store.list_messages(limit=100) == []
            await side.pipeline.run_once()
            assert edge_messages(side) == []

    run(main)


def test_resubmitted_message_id_does_not_yield_a_false_timeout(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            sent = original(final=False)
            await submit(side, sent)
            try:
                await submit(side, sent)  # refusing the duplicate would be a fix too
            except HispError:
                return
            # the peer got both copies and confirms each
            await receive(side, pki_setup, mdn("processed", sent, side.clock(), mid="<m-1@h>"))
            await receive(side, pki_setup, mdn("processed", sent, side.clock(), mid="<m-2@h>"))
            side.clock.now += timedelta(hours=2)
            await side.pipeline.expire_once()
            assert timeout_dsns(side) == []  # got: [(dr.jones, 5.4.71)]

    run(main)


def test_many_part_message_from_a_trusted_peer_is_refused_before_the_notification_reader(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    """The notification readers parse every body part before their own 1000-entity bound; what keeps that off
    the network path is the agent's MIME limit, which refuses the message first (5xx, nothing stored)."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            parts = "".join(f"--B\r\n\r\n{i}\r\n" for i in range(50_000))
            body = (
                f"From: {RECIPIENT}\r\nTo: {SENDER}\r\nMessage-ID: <big@{HOSPITAL}>\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n{parts}--B--\r\n"
            ).encode()
            with pytest.raises(HispError) as refused:
                await receive(side, pki_setup, body, mail_from=RECIPIENT)
            assert refused.value.smtp_code >= 500
            assert edge_messages(side) == []

    run(main)


# --- angle 3: null reverse-path ------------------------------------------------------------------------------------


def test_ordinary_message_with_null_reverse_path_is_refused(pki_setup: DemoSetup, tmp_path: Path) -> None:
    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            letter = (
                f"From: {RECIPIENT}\r\nTo: {SENDER}\r\nSubject: results\r\nMessage-ID: <null-rp@{HOSPITAL}>\r\n"
                "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\nLab results follow.\r\n"
            ).encode()
            with pytest.raises(HispError) as refused:
                await receive(side, pki_setup, letter, mail_from="")
            assert refused.value.smtp_code == 554

    run(main)


def test_processed_mdn_goes_to_disposition_notification_to_and_is_never_requested_back(
    pki_setup: DemoSetup, tmp_path: Path
) -> None:
    """AS-18: the MDN goes to Disposition-Notification-To (here a third party), not From; AS-19: it carries no
    Disposition-Notification-To of its own (so it cannot start a chain)."""

    async def main() -> None:
        async with clinic_side(pki_setup, tmp_path) as side:
            letter = (
                f"From: {RECIPIENT}\r\nTo: {SENDER}\r\nSubject: results\r\nMessage-ID: <dnt@{HOSPITAL}>\r\n"
                f"Disposition-Notification-To: {THIRD}\r\n"
                "Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true\r\n"
                "Date: Mon, 30 Nov 2026 12:00:00 +0000\r\n\r\nLab results follow.\r\n"
            ).encode()
            await receive(side, pki_setup, letter, mail_from=RECIPIENT)
            (owed,) = side.store.list_messages(direction=Direction.OUTGOING)
            assert owed.mail_from == "" and [r.address for r in owed.recipients] == [THIRD]
            raw = side.store.raw(owed.id)
            assert parse_mdn(raw).disposition == "processed"
            assert b"disposition-notification-to" not in raw.lower()
            assert b"disposition-notification-options" not in raw.lower()

    run(main)
