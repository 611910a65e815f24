"""One message's journey through the HISP: accept, queue, seal or open, relay or deliver, bounce.

Imports only ``core`` and ``ports`` (DESIGN.md section 2); the adapters come in through the constructor.

**Incoming** (a peer HISP's DATA on the backbone), :meth:`Pipeline.accept_incoming`, inline before the final
reply: decrypt, verify, trust (the recipient's store, AS-21), the AS-13 routing check of the protected headers
against the SMTP envelope, then the plain message with an ``X-Direct-Trust:`` header (one line, no secrets) is
enqueued durably and ``250`` returned. A security or format failure raises its :class:`~hisp.errors.HispError`
(the listener answers its ``554 5.7.x``), nothing is stored and a ``reject`` audit event is appended; revocation
unknown under ``hard`` raises :class:`TrustUnavailable` (``451``), a storage failure ``451`` too.

**Outgoing** (an edge client's DATA on submission), :meth:`Pipeline.accept_outgoing`: enqueued durably, ``250``.

**Workers** (:meth:`Pipeline.run_once`, :meth:`Pipeline.run_workers`) claim queued recipients under a lease
(renewed every third of it while the work runs: a slow relay or EHR is not reclaimed from a live node) and
end every claim with exactly one of complete, retry_later or bounce (DESIGN.md section 1: "leaves the queue only
delivered or bounced"):

- outgoing, grouped per message and recipient domain: discovery per recipient (undeliverable: bounce; transient:
  retry), :meth:`~hisp.core.agent.SecurityAgent.process_outgoing` once per group (rejected recipients bounced,
  AS-22), then the relay (delivered: complete; 4xx: retry with :class:`~hisp.ports.RetrySchedule`; 5xx: bounce).
  Hosted recipients are not relayed: the sealed message is opened again through the agent with the recipient's
  credentials and trust, and the plain result enqueued for local delivery.
- incoming, grouped per message and endpoint: delivery of the plain message to the edge endpoint (transient:
  retry; permanent: bounce).
- a bounce with a reverse-path owes the sender a DSN: a minimal RFC 3464 report (:func:`build_bounce`) is
  enqueued for local delivery when the sender is ours, else sent out through the outgoing path from the
  domain's postmaster (null reverse-path, so a DSN is never bounced).

CPU work (the agent, the MIME walks of large messages) and blocking storage calls run in an executor, so the
listeners keep answering; the header and notification checks of a small message (:data:`INLINE_MAX`) run inline.
Every accept, reject, relay, delivery and bounce is an audit event with fingerprints and verdict.

Spec: issue 5 ("SMTP listeners", "Durable queue and pipeline", "Audit"); AS-13, AS-14, AS-21, AS-22;
RFC 3464 (DSN); RFC 5321 sections 4.5.4.1 (retries) and 4.5.5 (null reverse-path).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from hisp.addresses import DirectAddress, mailbox_pairs
from hisp.core.agent import IncomingResult, OutgoingResult, SecurityAgent
from hisp.core.certs import Certificate, Credential
from hisp.core.evidence import accepted_line, refusal_evidence
from hisp.core.mdn import Disposition, is_notification, requests_final_delivery
from hisp.core.notify import (
    Notice,
    NoticeOutcome,
    OwedMdn,
    apply_notice,
    failure_dsn,
    header_block,
    header_fields,
    header_pairs,
    new_message_id,
    owed_mdns,
    read_notice,
    restrict_to_signer,
    timeout_dsn,
    wants_final_delivery,
)
from hisp.core.smtp_policy import DeliveryOutcome, RecipientResult, check_routing, normalize_mailbox
from hisp.core.tracking import DEFAULT_TIMEOUT, Action, Event, MessageTrack, correlation_key
from hisp.errors import (
    AddressError,
    CertificateNotFound,
    ConfigError,
    DiscoveryUnavailable,
    HispError,
    PermanentDeliveryError,
    PolicyViolation,
    StorageError,
    TrustError,
)
from hisp.ports import (
    AuditKind,
    AuditLog,
    AuditRecord,
    CertificateSource,
    Direction,
    EdgeDelivery,
    Envelope,
    Hosting,
    Job,
    MessageStore,
    Outbound,
    Queue,
    RecipientState,
    Relay,
    RetrySchedule,
    StoredMessage,
    TrackDecision,
    TrackedMessage,
    TrackingStore,
)

__all__ = ["TRUST_HEADER", "NoticeSettings", "Observer", "Pipeline", "TrustUnavailable", "trust_header"]

_log = logging.getLogger("hisp.pipeline")
_T = TypeVar("_T")

_STATUS = re.compile(r"\b(5\.\d{1,3}\.\d{1,3})\b")

#: Messages up to this many bytes have their header and notification checks (:func:`read_notice`,
#: :func:`owed_mdns`, :func:`wants_final_delivery`, :func:`_is_report`) run on the event loop: at 10 kB each takes
#: 0.1-0.3 ms, about what the hand-off to a worker thread costs in CPU, and never blocks. Larger ones go to the
#: executor: reading a notice walks the whole MIME tree (7 ms at 1.4 MB). (A submission's checks run in the
#: executor whatever its size, in the same hand-off as its enqueue: see :meth:`Pipeline._store_submission`.)
INLINE_MAX = 64 * 1024

#: Recipients one worker claims at most at a time (:meth:`Pipeline.run_once`).
CLAIM_LIMIT = 16

#: The header added to every plain message delivered to an edge system: the Direct trust verdict.
TRUST_HEADER = "X-Direct-Trust"

#: ``observer(step, detail)``: called as a message moves on (``"submitted"``, ``"discovered"``, ``"signed"``,
#: ``"encrypted"``, ``"relayed"``, ``"decrypted"``, ``"verified"``, ``"delivered"``, ``"bounced"``,
#: ``"rejected"``, ``"retry"``, ``"mdn"`` (an MDN queued), ``"dsn"`` (a DSN queued), ``"notification"`` (an
#: MDN or DSN received and matched), ``"timeout"``); for the demo and for logs. It must not raise or block.
Observer = Callable[[str, str], None]


@dataclass(frozen=True)
class NoticeSettings:
    """How the pipeline sends and tracks notifications (the ``[notifications]`` table and the host name).

    :ivar hostname: our host name: Reporting-MTA of DSNs, Reporting-UA of MDNs.
    :ivar send_mdn: send processed MDNs (and dispatched/failed ones when asked) for received messages (AS-18).
    :ivar timeout: from the original send to the timeout DSN (DN-7, DN-9).
    :ivar consume_processed: processed MDNs are recorded, not forwarded to the edge (DN-10).

    Spec: AS-18, DN-7..DN-10.
    """

    hostname: str = "localhost"
    send_mdn: bool = True
    timeout: timedelta = DEFAULT_TIMEOUT
    consume_processed: bool = False


class TrustUnavailable(HispError):
    """The trust decision could not be made now (revocation source unreachable under ``hard``): answer 451."""

    smtp_code = 451
    smtp_status = "4.7.0"


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def _one_line(text: str, limit: int = 200) -> str:
    """Text safe for one header line: no CR/LF or control characters, ASCII, bounded."""
    return _NOT_PRINTABLE_ASCII.sub(" ", text[:limit]).replace('"', "'")


def trust_header(result: IncomingResult) -> bytes:
    """The ``X-Direct-Trust:`` header line (CRLF-terminated) for an opened message: verdict, no secrets.

    :param result: the security agent's incoming result.
    :returns: one header line, ASCII, at most about 900 octets (RFC 5322 section 2.1.1: under 998).

    Spec: issue 5 ("the Direct trust verdict added as a header ... one line, no secrets"); AS-14, AS-20.
    """
    parts = [
        "pass",
        f"sender={_one_line(str(result.sender), 120)}",
        f"binding={result.binding.value}",
        f'signer="{_one_line(result.signer.subject)}"',
        f"signer-sha256={result.signer.fingerprint_sha256}",
        f'anchor="{_one_line(result.path.anchor.subject)}"',
        f"wrapped={'yes' if result.wrapped else 'no'}",
    ]
    return f"{TRUST_HEADER}: {'; '.join(parts)}\r\n".encode("ascii")


def _headers(raw: bytes) -> list[tuple[str, str]]:
    """The ``(name, value)`` fields of ``raw``'s header section, in order, values as the compat32 parser gives them.

    One message is looked at several times on its way (its From, Message-ID, trust header, the routing check, its
    notices): :func:`hisp.core.notify.header_fields` reads a header section once and remembers it for all of them.
    """
    return list(header_fields(raw))


def _has_bcc(raw: bytes) -> bool:
    """Whether the header section has a Bcc field, however written (``bcc:``, ``BCC :``): the security agent's
    parser reads ``BCC :`` as a field where Python's stops at it, so this looks at the lines themselves.

    Spec: AS-13 (no Bcc in a Direct message); RFC 5322 section 3.6.3; RFC 822 allowed space before the colon.
    """
    for line in header_block(raw).split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation
        name, colon, _ = line.partition(b":")
        if colon and name.strip().lower() == b"bcc":
            return True
    return False


def _header(raw: bytes, name: str) -> str | None:
    for key, value in _headers(raw):
        if key.lower() == name.lower():
            return " ".join(value.split())
    return None


def _from_address(raw: bytes) -> DirectAddress:
    values = [v for k, v in _headers(raw) if k.lower() == "from"]
    addresses = [a for _, a in mailbox_pairs(values) if a]
    if len(addresses) != 1:
        raise AddressError(f"the message needs exactly one From address, not {len(addresses)}")
    return DirectAddress.parse(addresses[0])


def _fingerprints(certificates: Iterable[Certificate]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c.fingerprint_sha256 for c in certificates))


def _short(certificate: Certificate) -> str:
    return f"{certificate.subject} (sha256 {certificate.fingerprint_sha256[:16]}...)"


def _verdict(result: IncomingResult) -> str:
    """The audit line of an accepted signer: certificate, chain, anchor and source, revocation, rule, warnings."""
    return accepted_line(result.path, "signer")


class Pipeline:
    """The journey of every message of one HISP node.

    :param store: durable message storage (enqueue before 250).
    :param queue: the per-recipient work queue.
    :param audit: the append-only audit log.
    :param agent: the security agent.
    :param hosting: our domains: credentials, trust, endpoints.
    :param certificates: certificate discovery for remote recipients.
    :param relay: to peer HISPs.
    :param edge: to edge systems.
    :param node: this node's name (claims, audit).
    :param clock: the current time, aware UTC.
    :param schedule: the retry schedule and lifetime.
    :param lease_seconds: how long a claim is held.
    :param executor: where CPU and blocking storage work runs (None: the event loop's default executor).
    :param observer: told about each step (see :data:`Observer`).
    :param rng: the source of retry jitter.
    :param tracking: where outgoing messages are tracked (DN-7); ``None``: no tracking, no timeout DSNs.
    :param notices: how notifications are sent and tracked.
    :raises ConfigError: ``lease_seconds`` is not positive or ``node`` is empty.

    Spec: issue 5; DESIGN.md section 1.
    """

    def __init__(
        self,
        *,
        store: MessageStore,
        queue: Queue,
        audit: AuditLog,
        agent: SecurityAgent,
        hosting: Hosting,
        certificates: CertificateSource,
        relay: Relay,
        edge: EdgeDelivery,
        node: str,
        clock: Callable[[], datetime],
        schedule: RetrySchedule | None = None,
        lease_seconds: float = 300.0,
        executor: Executor | None = None,
        observer: Observer | None = None,
        rng: random.Random | None = None,
        tracking: TrackingStore | None = None,
        notices: NoticeSettings | None = None,
    ) -> None:
        if lease_seconds <= 0 or not node:
            raise ConfigError("pipeline: a node name and a positive lease are needed")
        self.store, self.queue, self.audit = store, queue, audit
        self.agent, self.hosting, self.certificates = agent, hosting, certificates
        self.relay, self.edge = relay, edge
        self.node, self.clock = node, clock
        self.schedule = schedule or RetrySchedule()
        self.lease_seconds = lease_seconds
        self.executor = executor
        self.observer = observer
        self.rng = rng or random.Random()
        self.tracking = tracking
        self.notices = notices or NoticeSettings()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()  # workers waiting for work
        self._wakes = 0  # wake() calls so far: a worker that claimed nothing sleeps only if none came meanwhile

    # -- helpers ------------------------------------------------------------------------------------------

    async def _run(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(func, *args, **kwargs))

    async def _run_light(self, size: int, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``func`` inline when the message it reads is at most :data:`INLINE_MAX` bytes (CPU-light, no I/O),
        else in the executor like :meth:`_run`."""
        if size <= INLINE_MAX:
            return func(*args, **kwargs)
        return await self._run(func, *args, **kwargs)

    def _tell(self, step: str, detail: str) -> None:
        _log.info("%s: %s", step, detail)
        if self.observer is not None:
            try:
                self.observer(step, detail)
            except Exception:  # an observer must not break the pipeline
                _log.exception("observer failed")

    def wake(self) -> None:
        """Tell one idle worker there is new work (called after every enqueue).

        One, not all: a claim takes every due job up to its limit, so the others would only claim nothing (an
        empty transaction each). A worker busy meanwhile claims again before it sleeps (see :meth:`_worker`).
        """
        self._wakes += 1
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- accepting --------------------------------------------------------------------------------------

    async def accept_outgoing(
        self, mail_from: str, recipients: Sequence[str], raw: bytes, *, remote: str = "", user: str | None = None
    ) -> str:
        """Accept an edge client's message: durable, then ``250``.

        :param mail_from: the reverse-path (checked by the listener against the user's addresses).
        :param recipients: the forward-paths (local or remote).
        :param raw: the exact bytes received.
        :param remote: the client's address, for the audit event.
        :param user: the authenticated edge user, for the audit event.
        :returns: the ``250`` reply line.
        :raises PolicyViolation: the message has a Bcc header field (AS-13; 554 5.7.1 at DATA, nothing stored:
            refused now with its reason rather than accepted and bounced when sealed).
        :raises StorageError: nothing was stored (451).

        A message without a Message-ID gets one (RFC 6409 section 8.3), as it is the correlation key of its
        notifications (DN-2). A message that is not itself a notification and has a reverse-path is tracked,
        in the same transaction, until its notifications complete it or its timeout expires (DN-7, DN-10).

        Spec: DESIGN.md section 1 ("a message answered 250 is on disk first"); RFC 6409; DN-2, DN-7.
        """
        now = self.clock()
        if _has_bcc(raw):
            raise PolicyViolation(
                "Bcc is not allowed in Direct messages (AS-13): send each blind recipient a message of its own",
                rule="bcc",
            )
        raw, message_id = _with_message_id(raw, mail_from)
        envelope = Envelope(Direction.OUTGOING, mail_from, tuple(recipients), message_id)
        record = AuditRecord(reason=f"submitted by edge user {user}" if user else "submitted", remote=remote)
        stored, track = await self._run(self._store_submission, envelope, raw, record, now)
        tracked = ""
        if track is not None:
            tracked = f"; tracked ({track.mode.value}) until {track.deadline.isoformat(timespec='seconds')}"
        self._tell(
            "submitted",
            f"{mail_from} -> {', '.join(recipients)}: queued as {stored.id} ({len(raw)} bytes){tracked}",
        )
        self.wake()
        return f"250 2.0.0 Ok: queued as {stored.id}"

    def _store_submission(
        self, envelope: Envelope, raw: bytes, record: AuditRecord, now: datetime
    ) -> tuple[StoredMessage, MessageTrack | None]:
        """Enqueue a submitted message, with its track when it is to be tracked (in the executor: one hand-off for
        the tracking lookup and the enqueue).

        Tracked: a reverse-path, a Message-ID that correlates (not ``<>``), not itself a report, and no track of
        that Message-ID still waiting (a resubmission, the edge having lost our 250: its notices complete the
        first track).
        """
        message_id = envelope.message_id or ""
        track = None
        if (
            self.tracking is not None
            and envelope.mail_from
            and correlation_key(message_id)
            and not _is_report(raw)
            and not self._tracked_incomplete(message_id)
        ):
            track = MessageTrack.start(
                message_id, envelope.recipients, at=now, reliable=requests_final_delivery(header_pairs(raw)),
                timeout=self.notices.timeout, consume_processed=self.notices.consume_processed,
            )
        stored = self.store.enqueue(envelope, raw, now=now, node=self.node, audit=record, track=track)
        return stored, track

    def _tracked_incomplete(self, message_id: str) -> bool:
        """Whether an outgoing message with this Message-ID is tracked and still waiting for notifications."""
        assert self.tracking is not None
        try:
            return not self.tracking.tracking(message_id).complete
        except StorageError:
            return False

    async def accept_incoming(self, mail_from: str, recipients: Sequence[str], raw: bytes, *, remote: str = "") -> str:
        """Accept a peer HISP's message: open and check it inline, store the plain message, then ``250``.

        :param mail_from: the reverse-path (``""`` for a DSN or MDN).
        :param recipients: the forward-paths, all hosted (the listener refused the others).
        :param raw: the exact bytes received (what is verified).
        :param remote: the peer's address, for the audit event.
        :returns: the ``250`` reply line.
        :raises SecurityError: unencrypted, unsigned, bad signature, untrusted, not bound (554 5.7.x).
        :raises InputError: malformed message or address (5xx).
        :raises PolicyViolation: the AS-13 routing check failed (554 5.7.1).
        :raises TrustUnavailable: revocation could not be checked under ``hard`` (451).
        :raises StorageError: nothing was stored (451).

        Spec: AS-13, AS-14, AS-15, AS-21; issue 5 ("Security checks that can run inline ... before the final
        reply to DATA").
        """
        now = self.clock()
        try:
            result = await self._run(self._open, mail_from, recipients, raw, now)
        except TrustError as exc:
            if exc.reason == "revocation unknown":
                await self._reject(mail_from, recipients, remote, exc, now, raw)
                raise TrustUnavailable(f"trust cannot be decided now: {exc.message}") from exc
            await self._reject(mail_from, recipients, remote, exc, now, raw)
            raise
        except StorageError:
            raise
        except HispError as exc:
            await self._reject(mail_from, recipients, remote, exc, now, raw)
            raise
        try:
            done = await self._accept_opened(
                result, mail_from, recipients, now=now, reason="accepted from peer HISP", remote=remote
            )
        except StorageError:
            raise
        except HispError as exc:  # refused after opening: a forged notice, a null reverse-path on a letter
            await self._reject(mail_from, recipients, remote, exc, now, raw)
            raise
        return "250 2.0.0 Ok: " + done

    async def _accept_opened(
        self, result: IncomingResult, mail_from: str, recipients: Sequence[str], *, now: datetime, reason: str,
        remote: str = "",
    ) -> str:
        """Store an opened message for its edge, with the processed MDNs it owes; or, for an MDN or DSN, update
        the tracking of the message it is about and forward it only when the rules say so.

        :returns: what happened, for the ``250`` reply (``"queued as ..."``, ``"notification recorded"``).
        :raises StorageError: nothing was stored.
        :raises PolicyViolation: a letter (not an MDN or DSN) with the null reverse-path, which only
            notifications use (AS-13; RFC 5321 section 4.5.5); or a notice naming only recipients outside the
            health domain that signed it (AS-14: a HISP speaks for its own recipients).

        Spec: AS-18 (processed MDN after successful processing), AS-19 (none for a notification), DN-2, DN-8.
        """
        plain = trust_header(result) + result.message
        envelope = Envelope(Direction.INCOMING, mail_from, tuple(recipients), _header(result.message, "Message-ID"))
        record = AuditRecord(
            fingerprints=_fingerprints((result.signer, result.decrypted.recipient)),
            verdict=_verdict(result), reason=reason, remote=remote,
        )
        notice = await self._run_light(len(result.message), read_notice, result.message, envelope_sender=mail_from)
        if notice is not None:
            restricted = restrict_to_signer(notice, result.sender.domain.name)
            if notice.events and not restricted.events:
                raise PolicyViolation(
                    f"the notification from {result.sender} speaks only for recipients outside "
                    f"{result.sender.domain.name}"
                )
            return await self._accept_notice(restricted, envelope, plain, record, now)
        if not mail_from:
            raise PolicyViolation("the null reverse-path is for MDNs and DSNs only; this message is neither")
        owed: list[OwedMdn] = []
        if self.notices.send_mdn:
            try:
                owed = await self._run_light(
                    len(result.message), owed_mdns, result.message, recipients, disposition=Disposition.PROCESSED,
                    reporting_ua=self._reporting_ua, at=now, known_not_notification=True,
                )
            except HispError as exc:  # the message is accepted all the same; the log says why no MDN went
                _log.error("no processed MDN for a message from %s: %s", mail_from, exc.message)
        also = [self._mdn_outbound(mdn, Disposition.PROCESSED, envelope.message_id) for mdn in owed]
        stored = await self._run(
            self.store.enqueue, envelope, plain, now=now, node=self.node, audit=record, also=also
        )
        for mdn in owed:
            self._tell("mdn", f"processed MDN from {mdn.recipient} to {mdn.to} queued ({mdn.message_id})")
        self.wake()
        return f"queued as {stored.id}"

    @property
    def _reporting_ua(self) -> str:
        return f"{self.notices.hostname}; hisp"

    @staticmethod
    def _mdn_outbound(mdn: OwedMdn, disposition: Disposition, original_id: str | None) -> Outbound:
        """An MDN to seal and send: null reverse-path (RFC 8098 section 2.1), so it is never bounced."""
        return Outbound(
            Envelope(Direction.OUTGOING, "", (mdn.to,), mdn.message_id), mdn.raw,
            AuditRecord(reason=f"{disposition.value} MDN from {mdn.recipient} for {original_id or '?'} to {mdn.to}"),
        )

    async def _accept_notice(
        self, notice: Notice, envelope: Envelope, plain: bytes, record: AuditRecord, now: datetime
    ) -> str:
        """A received MDN or DSN: apply it to its message's track; forward it to the edge when the rules say so.

        Unmatched notices (no key, no event its signer may speak for, or no tracked message under the key) are
        forwarded as they are (issue 6).

        Spec: DN-2, DN-7, DN-8, DN-10.
        """
        forward = Outbound(envelope, plain, record)
        outcome: NoticeOutcome | None = None
        if self.tracking is not None and notice.key and notice.events:

            def decide(tracked: TrackedMessage) -> TrackDecision[NoticeOutcome]:
                applied = apply_notice(tracked.track, notice, now)
                return TrackDecision(applied, (forward,) if applied.forward else ())

            outcome = await self._run(
                self.tracking.update_tracking, decide, now=now, node=self.node, header_message_id=notice.key
            )
        about = f"{notice.kind} about <{notice.key}>" if notice.key else f"{notice.kind} naming no original"
        defects = f" (defects: {'; '.join(notice.defects)[:200]})" if notice.defects else ""
        if outcome is None:
            unmatched = AuditRecord(
                fingerprints=record.fingerprints, verdict=record.verdict, remote=record.remote,
                reason=f"{about}: not tracked here, forwarded{defects}"[:500],
            )
            stored = await self._run(self.store.enqueue, envelope, plain, now=now, node=self.node, audit=unmatched)
            self._tell("notification", f"{about}: not tracked here; forwarded to {', '.join(envelope.recipients)}")
            self.wake()
            return f"queued as {stored.id}"
        verdict = "forwarded to the edge" if outcome.forward else "recorded, not forwarded"
        self._tell("notification", f"{about}: {outcome.explain()}; {verdict}")
        if outcome.forward:
            self.wake()
            return "notification forwarded"
        kept = AuditRecord(
            mail_from=envelope.mail_from, recipients=envelope.recipients, fingerprints=record.fingerprints,
            reason=f"{about}: {outcome.explain()}; not forwarded (DN-8/DN-10){defects}"[:500], remote=record.remote,
        )
        with contextlib.suppress(StorageError):
            await self._run(self.audit.append, AuditKind.NOTIFY, now, node=self.node, record=kept)
        return "notification recorded"

    async def _reject(
        self, mail_from: str, recipients: Sequence[str], remote: str, exc: HispError, now: datetime, raw: bytes = b""
    ) -> None:
        """Record a refusal (nothing was stored): the ``reject`` audit event, with the outer Message-ID so that
        ``hisp messages show`` finds it (AS-14)."""
        self._tell("rejected", f"{mail_from or '<>'} -> {', '.join(recipients)}: {exc.smtp_reply()}")
        try:
            header_id = _header(raw, "Message-ID") if raw else None
        except HispError:  # an unparseable header block: the reject is recorded without it
            header_id = None
        verdict, fingerprints = refusal_evidence(exc)  # AS-14, AS-20: which certificate, why, against what
        record = AuditRecord(
            mail_from=mail_from, recipients=tuple(recipients), fingerprints=fingerprints, verdict=verdict,
            reason=exc.smtp_reply()[:500], remote=remote,
        )
        try:
            await self._run(
                self.audit.append, AuditKind.REJECT, now, node=self.node,
                header_message_id=header_id[:998] if header_id else None, record=record,
            )
        except StorageError as failure:  # the reject stands; the audit trail is what is lost
            _log.error("cannot record a reject: %s", failure.message)

    def _open(self, mail_from: str, recipients: Sequence[str], raw: bytes, at: datetime) -> IncomingResult:
        """Decrypt, verify and check trust for every recipient domain, then the AS-13 routing check."""
        groups: dict[Any, list[DirectAddress]] = {}
        for text in recipients:
            address = DirectAddress.parse(text)
            groups.setdefault(address.domain, []).append(address)
        results: list[IncomingResult] = []
        for group in groups.values():
            credentials: list[Credential] = []
            for address in group:
                for credential in self.hosting.credentials(address):
                    if credential not in credentials:
                        credentials.append(credential)
            if not credentials:
                raise ConfigError(f"no credential is configured to decrypt for {group[0]}")
            results.append(
                self.agent.process_incoming(raw, credentials=credentials, trust=self.hosting.trust(group[0]), at=at)
            )
        result = results[0]
        check_routing(mail_from, recipients, _headers(result.message), allow_null_sender=True)
        self._tell(
            "decrypted",
            f"{result.decrypted.cipher.value} envelope opened with {_short(result.decrypted.recipient)}",
        )
        self._tell(
            "verified",
            f"signature of {result.sender} by {_short(result.signer)}; trusted with anchor "
            f"{result.path.anchor.subject}",
        )
        return result

    # -- workers ----------------------------------------------------------------------------------------

    async def run_workers(self, stop: asyncio.Event, *, workers: int = 1, poll_interval: float = 1.0) -> None:
        """Run ``workers`` worker tasks until ``stop`` is set; each finishes the job it holds, then returns.

        :param stop: set to stop.
        :param workers: worker tasks, ``>= 1``.
        :param poll_interval: seconds between polls when idle (enqueues wake them at once).

        Spec: issue 5 ("Workers claim work ... a claimed job whose node vanished is reclaimed after a lease").
        """
        release = asyncio.ensure_future(self._release_on_stop(stop))
        try:
            await asyncio.gather(*(self._worker(stop, poll_interval) for _ in range(max(1, workers))))
        finally:
            release.cancel()

    async def _release_on_stop(self, stop: asyncio.Event) -> None:
        """Wake every idle worker once ``stop`` is set, so that they return."""
        await stop.wait()
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _worker(self, stop: asyncio.Event, poll_interval: float) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            wakes = self._wakes
            try:
                done = await self.run_once()
            except HispError as exc:
                _log.error("worker: %s", exc.message)
                done = 0
            except Exception:
                _log.exception("worker failed")
                done = 0
            if done >= CLAIM_LIMIT or self._wakes != wakes or stop.is_set():
                # a full claim (more may be due), or work enqueued since the claim began (its wake may have found
                # nobody idle): claim again. A claim that took less than its limit took everything due then, and
                # whatever was enqueued since came with a wake: no empty claim (a write transaction) to learn that.
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle.append(waiter)
            try:
                await asyncio.wait_for(waiter, poll_interval)
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._idle.remove(waiter)

    async def run_once(self, limit: int = CLAIM_LIMIT) -> int:
        """Claim due work once and do it.

        :param limit: recipients claimed at most.
        :returns: how many recipients were claimed.
        :raises StorageError: the claim failed.
        """
        jobs = await self._run(self.queue.claim, self.node, self.clock(), self.lease_seconds, limit)
        if not jobs:
            return 0
        held = {job.recipient_id: job for job in jobs}
        renewer = asyncio.create_task(self._renew_leases(held))
        try:
            await self._work(jobs, held)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        return len(jobs)

    async def _renew_leases(self, held: dict[int, Job]) -> None:
        """Keep the claims in ``held`` alive: renew each lease every third of it until its job is done.

        A slow relay or edge delivery (longer than the lease) must not let another worker or node reclaim a
        job this worker still runs, which would send the message twice. A job ended meanwhile (or whose claim
        was lost) fails to renew with :class:`StorageError` and is dropped from ``held``.

        Spec: issue 5 ("a claimed job whose node vanished is reclaimed after a lease expires": only then).
        """
        interval = self.lease_seconds / 3
        while held:
            await asyncio.sleep(interval)
            for recipient_id, job in list(held.items()):
                if recipient_id not in held:
                    continue
                try:
                    renewed = await self._run(self.queue.renew, job, self.clock(), self.lease_seconds)
                except StorageError as exc:  # ended meanwhile, or the claim was lost
                    _log.debug("lease of %s not renewed: %s", job.address, exc.message)
                    held.pop(recipient_id, None)
                    continue
                if recipient_id in held:
                    held[recipient_id] = renewed

    async def _work(self, jobs: list[Job], held: dict[int, Job]) -> None:
        """Do the claimed jobs, grouped per message and destination; drop each group from ``held`` when done."""
        groups: dict[tuple[str, Direction, str], list[Job]] = {}
        for job in jobs:
            if job.direction is Direction.OUTGOING:
                key = normalize_mailbox(job.address).rpartition("@")[2]
            else:
                key = self._endpoint_of(job.address) or ""
            groups.setdefault((job.message_id, job.direction, key), []).append(job)
        for (_, direction, _), group in groups.items():
            try:
                if direction is Direction.OUTGOING:
                    await self._outgoing(group)
                else:
                    await self._incoming(group)
            except HispError as exc:  # storage trouble mid-way: the lease brings unfinished jobs back
                _log.error("message %s: %s", group[0].message_id, exc.message)
            except Exception:
                _log.exception("message %s failed; its claims come back when their lease ends", group[0].message_id)
            finally:
                for job in group:  # ended, or left to come back when its lease ends: no longer renewed
                    held.pop(job.recipient_id, None)

    def _endpoint_of(self, address: str) -> str | None:
        try:
            return self.hosting.endpoint(DirectAddress.parse(address))
        except AddressError:
            return None

    async def _outgoing(self, jobs: list[Job]) -> None:
        now = self.clock()
        raw = await self._run(self.store.raw, jobs[0].message_id)
        try:
            sender = _from_address(raw)
        except AddressError as exc:
            for job in jobs:
                await self._bounce(job, f"cannot seal: {exc.message}", "5.1.7", raw=raw)
            return
        credentials = self.hosting.credentials(sender)
        if not credentials:
            for job in jobs:
                await self._bounce(job, f"no credential can sign for {sender}", "5.7.1", raw=raw)
            return
        certificates: dict[DirectAddress, tuple[Certificate, ...]] = {}
        by_address: dict[DirectAddress, Job] = {}
        for job in jobs:
            try:
                recipient = DirectAddress.parse(job.address)
            except AddressError as exc:
                await self._bounce(job, exc.message, "5.1.3", raw=raw)
                continue
            by_address[recipient] = job
            if self.hosting.is_hosted(recipient):
                certificates[recipient] = tuple(c.certificate for c in self.hosting.credentials(recipient))
                continue
            try:
                found = await self.certificates.discover(sender.domain, recipient, at=now)
            except CertificateNotFound as exc:
                await self._bounce(job, f"no certificate found for {recipient}: {exc.message}", "5.7.31", raw=raw)
                continue
            except DiscoveryUnavailable as exc:
                await self._retry(job, f"discovery of {recipient}: {exc.message}", "discovery", raw=raw)
                continue
            self._tell(
                "discovered",
                f"{recipient}: {', '.join(_short(c) for c in found.chosen)} ({found.reason})",
            )
            certificates[recipient] = found.chosen
        if not certificates:
            return
        try:
            sealed: OutgoingResult = await self._run(
                self.agent.process_outgoing, raw, sender=credentials, recipients=certificates, at=now,
                trust=self.hosting.trust(sender),
            )
        except TrustError as exc:
            refused = {r.address: r for r in exc.context.get("rejected", ())}
            for address in certificates:
                r = refused.get(address)
                await self._bounce(
                    by_address[address], r.reason if r else exc.message, r.status if r else "5.7.1", raw=raw
                )
            return
        except HispError as exc:  # malformed, Bcc, no signing credential: never retried
            for address in certificates:
                await self._bounce(by_address[address], exc.message, exc.smtp_status, raw=raw)
            return
        for rejected in sealed.rejected:  # AS-22: the others still go out
            await self._bounce(by_address[rejected.address], rejected.reason, rejected.status, raw=raw)
        self._tell("signed", f"by {_short(sealed.signer)} ({self.agent.policy.digest.display_name})")
        encrypted_to = ", ".join(_short(c) for c in sealed.encrypted_to)
        self._tell("encrypted", f"{self.agent.policy.cipher.value} to {encrypted_to}")
        record = AuditRecord(
            fingerprints=_fingerprints((sealed.signer, *sealed.encrypted_to)),
            verdict=" | ".join(accepted_line(p, "recipient") for p in sealed.recipient_paths[:4]),
        )
        local = [a for a in sealed.recipients if self.hosting.is_hosted(a)]
        remote = [a for a in sealed.recipients if not self.hosting.is_hosted(a)]
        for address in local:
            await self._local(by_address[address], sealed.message, record, raw)
        if not remote:
            return
        mail_from = jobs[0].mail_from
        results = await self.relay.send(mail_from, [by_address[a].address for a in remote], sealed.message)
        for address, outcome in zip(remote, results, strict=True):
            job = by_address[address]
            await self._settle(job, outcome, record, raw, step="relayed")

    async def _local(self, job: Job, sealed: bytes, record: AuditRecord, original: bytes) -> None:
        """A hosted recipient of an outgoing message: open it through the agent, queue it for delivery."""
        now = self.clock()
        try:
            result = await self._run(self._open, job.mail_from, [job.address], sealed, now)
        except HispError as exc:
            await self._bounce(job, exc.message, exc.smtp_status, raw=original)
            return
        try:
            done = await self._accept_opened(
                result, job.mail_from, [job.address], now=now, reason="accepted from a hosted sender"
            )
        except StorageError:
            raise  # the claim comes back when its lease ends
        except HispError as exc:
            await self._bounce(job, exc.message, exc.smtp_status, raw=original)
            return
        await self._run(
            self.queue.complete, job, self.clock(), target="local", reply=f"250 2.0.0 {done} (local)", audit=record,
        )
        self.wake()

    async def _incoming(self, jobs: list[Job]) -> None:
        raw = await self._run(self.store.raw, jobs[0].message_id)
        endpoint = self._endpoint_of(jobs[0].address)
        if endpoint is None:
            for job in jobs:
                await self._bounce(job, f"no delivery endpoint is configured for {job.address}", "5.3.0", raw=raw)
            return
        trust = _header(raw, TRUST_HEADER) or ""
        record = AuditRecord(verdict=trust[:300])
        results = await self.edge.deliver(endpoint, jobs[0].mail_from, [j.address for j in jobs], raw)
        final = self.notices.send_mdn and any(
            outcome.outcome is DeliveryOutcome.DELIVERED for outcome in results
        ) and await self._run_light(len(raw), wants_final_delivery, raw)
        for job, outcome in zip(jobs, results, strict=True):
            if final and outcome.outcome is DeliveryOutcome.DELIVERED:
                # before the claim ends: a crash in between sends it twice (the sender drops the duplicate, DN-8)
                await self._send_mdns(raw, job.address, Disposition.DISPATCHED)
            await self._settle(job, outcome, record, raw, step="delivered")

    async def _send_mdns(self, raw: bytes, address: str, disposition: Disposition, failure: str | None = None) -> None:
        """Queue the dispatched or failed MDN one recipient owes for a delivered or undeliverable message.

        Spec: DN-3 (dispatched, with the extension field), DN-5 (failed).
        """
        now = self.clock()
        plain = _without_trust_header(raw)
        try:
            owed = await self._run_light(
                len(plain), owed_mdns, plain, [address], disposition=disposition, reporting_ua=self._reporting_ua,
                at=now, failure=failure,
            )
        except HispError as exc:  # the delivery outcome stands; the log says why no MDN went
            _log.error("no %s MDN from %s: %s", disposition.value, address, exc.message)
            return
        original_id = _header(plain, "Message-ID")
        for mdn in owed:
            item = self._mdn_outbound(mdn, disposition, original_id)
            await self._run(self.store.enqueue, item.envelope, item.raw, now=now, node=self.node, audit=item.audit)
            self._tell("mdn", f"{disposition.value} MDN from {mdn.recipient} to {mdn.to} queued ({mdn.message_id})")
        if owed:
            self.wake()

    async def _settle(self, job: Job, outcome: RecipientResult, record: AuditRecord, raw: bytes, *, step: str) -> None:
        """End a claim after a relay or delivery: complete, retry later or bounce."""
        target = outcome.host or ""
        if outcome.outcome is DeliveryOutcome.DELIVERED:
            done = AuditRecord(
                fingerprints=record.fingerprints, verdict=record.verdict, reason=outcome.reply[:500], remote=target
            )
            await self._run(self.queue.complete, job, self.clock(), target=target, reply=outcome.reply, audit=done)
            self._tell(step, f"{job.address} via {target}: {outcome.reply}")
            return
        if isinstance(outcome.error, PermanentDeliveryError):
            found = _STATUS.search(outcome.reply)
            status = str(outcome.error.context.get("status") or (found.group(1) if found else "5.0.0"))
            await self._bounce(job, outcome.reply, status, raw=raw, target=target, reply=outcome.reply)
            return
        await self._retry(job, outcome.reply, target, raw=raw)

    async def _retry(self, job: Job, reply: str, target: str, *, raw: bytes) -> None:
        now = self.clock()
        next_at = self.schedule.next_attempt_at(now, job.received_at, job.attempt, self.rng)
        if next_at is None:
            await self._bounce(job, f"lifetime expired; last: {reply}", "5.4.7", raw=raw, target=target, reply=reply)
            return
        await self._run(self.queue.retry_later, job, now, next_at, target=target, reply=reply[:500])
        self._tell("retry", f"{job.address}: {reply} (next attempt {next_at.isoformat(timespec='seconds')})")

    async def _bounce(
        self, job: Job, reason: str, status: str, *, raw: bytes, target: str = "", reply: str = ""
    ) -> None:
        now = self.clock()
        state = await self._run(
            self.queue.bounce, job, now, reason[:500], target=target, reply=reply[:500],
            audit=AuditRecord(reason=f"{status} {reason}"[:500], remote=target),
        )
        self._tell("bounced", f"{job.address}: {status} {reason}")
        status = status if status.startswith("5.") else "5.0.0"
        try:
            if job.direction is Direction.INCOMING:
                told = await self._undeliverable(job, reason, state, raw, target, now)
            else:
                told = await self._unsendable(job, reason, status, state, raw, target, now)
        except HispError as exc:  # the bounce stands; the notice is what is lost, and the log says so
            _log.error("no notification for %s of %s: %s", job.address, job.message_id, exc.message)
            return
        if state is RecipientState.BOUNCED:  # the DSN bounce() recorded as owed: how the sender was told
            try:
                await self._run(self.queue.settle_owed_dsn, job, self.clock(), detail=told)
            except StorageError as exc:  # the notice went out; only its record stays "pending"
                _log.error("cannot record the notice for %s of %s: %s", job.address, job.message_id, exc.message)

    async def _undeliverable(
        self, job: Job, reason: str, state: RecipientState, raw: bytes, target: str, now: datetime
    ) -> str | None:
        """A received message that could not reach its edge: a failed MDN when the sender asked for
        final-delivery notification, else a DSN 5.5.0 to the sender; nothing for a notification.

        :returns: how the sender was told, one line; None when nothing was owed.

        Spec: DN-5; AS-19; requirements section 8.4 (5.5.0, Direct-secured when it goes to a partner).
        """
        if await self._run_light(len(raw), is_notification, _without_trust_header(raw)):
            return None
        if self.notices.send_mdn and await self._run_light(len(raw), wants_final_delivery, raw):
            await self._send_mdns(raw, job.address, Disposition.FAILED, failure=reason[:400] or "not delivered")
            return "a failed MDN instead, as the sender asked (DN-5)"
        if state is RecipientState.BOUNCED:
            queued = await self._send_dsn(job, reason, "5.5.0", _without_trust_header(raw), target, now)
            return f"DSN queued as {queued}"
        return None

    async def _unsendable(
        self, job: Job, reason: str, status: str, state: RecipientState, raw: bytes, target: str, now: datetime
    ) -> str | None:
        """An outgoing message that cannot reach one recipient: the tracked failure, and one DSN to the edge
        unless that recipient already had its terminal notice (DN-8); untracked messages get their DSN as
        before.

        Spec: DN-6, DN-8, AS-22.
        """
        if not job.mail_from or await self._run_light(len(raw), _is_report, raw):
            return None
        if self.tracking is not None:
            item = self._dsn_outbound(job, reason, status, raw, target, now)

            def decide(tracked: TrackedMessage) -> TrackDecision[bool]:
                transition = tracked.track.apply(
                    job.address, Event.FAILED, now, detail=f"not sent: {status} {reason}"[:500]
                )
                send = transition is None or transition.action is Action.FORWARD
                return TrackDecision(send, (item,) if send else ())

            sent = await self._run(
                self.tracking.update_tracking, decide, now=now, node=self.node, queue_id=job.message_id
            )
            if sent is not None:
                if sent:
                    with contextlib.suppress(StorageError):  # the DSN is queued; only its audit line would be lost
                        await self._run(
                            self.audit.append, AuditKind.NOTIFY, now, node=self.node, message_id=job.message_id,
                            record=AuditRecord(
                                recipients=item.envelope.recipients,
                                reason=f"DSN {item.envelope.message_id} queued: {status} {reason}"[:500],
                            ),
                        )
                    self._tell("dsn", f"to {job.mail_from}: {job.address} {status} ({item.envelope.message_id})")
                    self.wake()
                    return f"DSN {item.envelope.message_id} queued"
                self._tell("dsn", f"none for {job.address}: its terminal notice was already given (DN-8)")
                return "no DSN: the sender already had its one terminal notice for this recipient (DN-8)"
        if state is RecipientState.BOUNCED:
            queued = await self._send_dsn(job, reason, status, raw, target, now)
            return f"DSN queued as {queued}"
        return None

    def _dsn_outbound(
        self, job: Job, reason: str, status: str, raw: bytes, remote: str, now: datetime
    ) -> Outbound:
        """The DSN owed to a message's sender: local delivery when the sender is ours, else the outgoing path
        (sealed from our postmaster, or from our recipient when only it has a certificate)."""
        sender = DirectAddress.parse(job.mail_from)
        ours = self.hosting.is_hosted(sender)
        reporting = sender.domain if ours else DirectAddress.parse(job.address).domain
        postmaster = DirectAddress("postmaster", reporting)
        from_address = str(postmaster) if ours or self.hosting.credentials(postmaster) else job.address
        diagnostic = f"{reason} (at {remote})" if remote else reason
        message_id, dsn = failure_dsn(
            raw, job.address, status, diagnostic, sender=str(sender), postmaster=from_address,
            reporting_mta=self.notices.hostname, at=now,
        )
        direction = Direction.INCOMING if ours else Direction.OUTGOING
        return Outbound(
            Envelope(direction, "", (str(sender),), message_id), dsn,
            AuditRecord(reason=f"DSN for {job.message_id} to {sender}: {status} {reason}"[:500]),
        )

    async def _send_dsn(self, job: Job, reason: str, status: str, raw: bytes, remote: str, now: datetime) -> str:
        """Queue the DSN owed to the sender (see :meth:`_dsn_outbound`) and record that it was sent.

        :returns: the DSN's queue id.
        """
        item = self._dsn_outbound(job, reason, status, raw, remote, now)
        stored = await self._run(self.store.enqueue, item.envelope, item.raw, now=now, node=self.node, audit=item.audit)
        await self._run(
            self.audit.append, AuditKind.NOTIFY, now, node=self.node, message_id=job.message_id,
            record=AuditRecord(
                recipients=item.envelope.recipients, reason=f"DSN queued as {stored.id}: {status} {reason}"[:500]
            ),
        )
        self._tell("dsn", f"to {job.mail_from}: {job.address} {status} ({item.envelope.message_id})")
        self.wake()
        return stored.id

    # -- timely and reliable: the timeout scan --------------------------------------------------------------

    async def run_timeouts(self, stop: asyncio.Event, *, interval: float = 30.0) -> None:
        """Scan for tracked messages past their deadline every ``interval`` seconds until ``stop`` is set.

        Spec: DN-7, DN-9; issue 6 ("Timers survive restarts and work with several nodes").
        """
        while not stop.is_set():
            try:
                await self.expire_once()
            except HispError as exc:
                _log.error("timeout scan: %s", exc.message)
            except Exception:
                _log.exception("timeout scan failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def expire_once(self, limit: int = 16) -> int:
        """Time out the tracked messages whose deadline has passed: one DSN per message to its sender, listing
        its incomplete recipients (5.4.71 no processed MDN, 5.4.72 no dispatched MDN), queued in the same
        transaction as the state change. Claims come from the store, so two nodes never expire one message
        twice, and a node that died after claiming leaves it to another when the lease ends.

        :param limit: messages handled at most.
        :returns: how many tracked messages were claimed.
        :raises StorageError: the claim failed.

        Spec: DN-7, DN-8 (one terminal notice), DN-9 (measured from the original send).
        """
        if self.tracking is None:
            return 0
        tracking = self.tracking
        now = self.clock()
        claimed = await self._run(tracking.claim_expired, self.node, now, self.lease_seconds, limit)
        for queue_id in claimed:
            try:
                original = await self._run(self.store.raw, queue_id)
            except StorageError as exc:  # purged or unreadable: the DSN still names the recipients
                _log.warning("timeout DSN for %s without the original's headers: %s", queue_id, exc.message)
                original = b""
            sent = await self._run(self._sending_times, queue_id)

            def decide(
                tracked: TrackedMessage, original: bytes = original, queue_id: str = queue_id,
                sent: dict[str, datetime | None] = sent,
            ) -> TrackDecision[str]:
                expired = tracked.track.expire(now, sent)
                if not expired:
                    return TrackDecision("")
                domain = tracked.sender.rpartition("@")[2]
                message_id, dsn = timeout_dsn(
                    original, expired, sender=tracked.sender, postmaster=f"postmaster@{domain}",
                    reporting_mta=self.notices.hostname, at=now,
                )
                listed = ", ".join(f"{a} {t.status}" for a, t in expired)
                item = Outbound(
                    Envelope(Direction.INCOMING, "", (tracked.sender,), message_id), dsn,
                    AuditRecord(reason=f"timeout DSN for {queue_id} to {tracked.sender}: {listed}"[:500]),
                )
                return TrackDecision(listed, (item,))

            listed = await self._run(tracking.update_tracking, decide, now=now, node=self.node, queue_id=queue_id)
            if listed:
                self._tell("timeout", f"message {queue_id}: no notification in time for {listed}; DSN queued")
                self.wake()
        return len(claimed)

    def _sending_times(self, queue_id: str) -> dict[str, datetime | None]:
        """When each recipient of an outgoing message left our queue, for the timeout (DN-9: it counts from the
        send): ``None`` while the queue still holds it (queued or in flight); once it left, the time it did:
        relayed or handed to a hosted mailbox, or bounced (then the bounce's own DSN marks the track failed, and
        the timeout must not race it with a false "no processed MDN"; it stays as a backstop, a timeout after
        the bounce). Recipients no longer known are left out (due at the deadline).

        :raises StorageError: never; an unreadable message gives ``{}``.
        """
        try:
            detail = self.store.show(queue_id)
        except StorageError as exc:
            _log.warning("timeout of %s judged without its queue state: %s", queue_id, exc.message)
            return {}
        sent: dict[str, datetime | None] = {}
        for recipient in detail.message.recipients:
            key = recipient.address.strip().lower()
            if recipient.state in (RecipientState.QUEUED, RecipientState.IN_FLIGHT):
                sent[key] = None
            else:  # delivered (relayed), bounced or failed: when it left the queue
                sent[key] = recipient.updated_at
        return sent


def _with_message_id(raw: bytes, mail_from: str) -> tuple[bytes, str]:
    """``raw`` with a Message-ID (one is added at the top when it has none, RFC 6409 section 8.3) and that id."""
    existing = _header(raw, "Message-ID")
    if existing:
        return raw, existing
    domain = mail_from.rpartition("@")[2] or "localhost"
    message_id = new_message_id(domain)
    return f"Message-ID: {message_id}\r\n".encode("ascii") + raw, message_id


def _is_report(raw: bytes) -> bool:
    """Whether a plain message is an MDN or DSN (checked in full only when its Content-Type says report)."""
    content_type = (_header(raw, "Content-Type") or "").lower()
    if "report" not in content_type and "notification" not in content_type and "delivery-status" not in content_type:
        return False
    return is_notification(raw)


def _without_trust_header(raw: bytes) -> bytes:
    """A stored incoming message without the ``X-Direct-Trust:`` line we put first (the message as sent)."""
    prefix = TRUST_HEADER.encode("ascii") + b":"
    if raw.startswith(prefix):
        end = raw.find(b"\r\n")
        if end >= 0:
            return raw[end + 2 :]
    return raw
