"""AS-14's revoked-signer case through the security agent: process_incoming with the trust seam that checks
revocation (StoreTrust over a TrustStore in hard mode), against a real CRL served on loopback.

tests/integration/test_revocation.py covers hisp.core.trust.validate on its own; here the refusal must come
out of SecurityAgent.process_incoming, as the pipeline sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from hisp.adapters.revocation import BoundedFetcherBackend
from hisp.addresses import DirectAddress
from hisp.core.agent import IncomingResult, SecurityAgent
from hisp.core.devca import Issued, create_ca, issue_certificate
from hisp.core.policy import RevocationMode
from hisp.core.trust import RevocationStatus, StoreTrust, TrustAnchor, TrustStore
from hisp.errors import TrustError
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.pki import plain_message
from hisp.testing.revocation import build_crl

# The CRL is issued at the real time (the fetcher's cache compares nextUpdate with the clock), and the
# messages are opened at that same time.
NOW = datetime.now(UTC).replace(microsecond=0)
REVOKED_SENDER = "revoked@direct.clinic.example"
GOOD_SENDER = "good@direct.clinic.example"
RECIPIENT = "intake@direct.hospital.example"
CRL_PATH = "/clinic-ca.crl"


@dataclass(frozen=True)
class World:
    server: LoopbackHTTPServer
    clinic_ca: Issued
    hospital_ca: Issued
    revoked: Issued
    good: Issued
    recipient: Issued

    def trust(self) -> StoreTrust:
        """The recipient's trust seam: the clinic CA as incoming anchor, revocation in hard mode."""
        store = TrustStore(
            incoming=(TrustAnchor(self.clinic_ca.certificate, "clinic-ca.pem"),), revocation=RevocationMode.HARD
        )
        return StoreTrust(store, BoundedFetcherBackend(timeout=2))

    def seal(self, sender: Issued, address: str) -> bytes:
        return (
            SecurityAgent()
            .process_outgoing(
                plain_message(address, RECIPIENT),
                sender=[sender.credential],
                recipients={DirectAddress.parse(RECIPIENT): [self.recipient.certificate]},
                at=NOW,
            )
            .message
        )

    def open(self, message: bytes) -> IncomingResult:
        return SecurityAgent().process_incoming(
            message, credentials=[self.recipient.credential], trust=self.trust(), at=NOW
        )


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with serve_http() as server:
        clinic = create_ca("Clinic Revocation CA", at=NOW)
        crl_url = server.url(CRL_PATH)
        revoked = issue_certificate(clinic, at=NOW, address=REVOKED_SENDER, crl_url=crl_url)
        good = issue_certificate(clinic, at=NOW, address=GOOD_SENDER, crl_url=crl_url)
        hospital = create_ca("Hospital CA", at=NOW)
        recipient = issue_certificate(hospital, at=NOW, address=RECIPIENT)
        server.set_route(CRL_PATH, body=build_crl(clinic, at=NOW, revoked=[revoked.certificate]))
        yield World(server, clinic, hospital, revoked, good, recipient)


def test_as14_revoked_signer_refused(world: World) -> None:
    """AS-14 (reject a message whose signer certificate is revoked), AS-20 (revocation checked, hard mode):
    a message signed by a certificate listed on its CA's CRL is refused by process_incoming with the reason
    "revoked", the message naming the signer, after the CRL was fetched from its distribution point."""
    before = sum(r.path == CRL_PATH for r in world.server.requests)
    with pytest.raises(TrustError) as caught:
        world.open(world.seal(world.revoked, REVOKED_SENDER))
    assert caught.value.reason == "revoked"
    assert caught.value.message.startswith("revoked signer:")
    failed = caught.value.context["verdict"]
    assert failed.revocation.status is RevocationStatus.REVOKED
    assert failed.revocation.sources == (world.server.url(CRL_PATH),)
    assert sum(r.path == CRL_PATH for r in world.server.requests) > before


def test_as14_unrevoked_signer_under_the_same_crl_accepted(world: World) -> None:
    """AS-14 control for the revoked case: a signer of the same CA, absent from the same CRL, is accepted through
    the same hard-mode seam, with the CRL's answer in the verdict (the refusal above is revocation, nothing else)."""
    opened = world.open(world.seal(world.good, GOOD_SENDER))
    assert opened.signer == world.good.certificate
    verdict = opened.path.verdict
    assert verdict is not None
    assert verdict.revocation.status is RevocationStatus.GOOD
    assert verdict.revocation.sources == (world.server.url(CRL_PATH),)
