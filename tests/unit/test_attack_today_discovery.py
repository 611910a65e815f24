"""Adversarial probes of today's ``[discovery]`` / ``[[discovery.local]]`` and SenderDiscovery (issue 4).

Fakes (DNS, LDAP, clock) come from tests/unit/test_discovery_config.py; nothing touches the network.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from conftest import AT
from test_discovery_config import (
    DR_B,
    PARTNER,
    SENDER,
    Clock,
    FakeDirectory,
    FakeDns,
    FakeLdap,
    SwitchableTrust,
    _config,
    cert_answer,
    pki,  # noqa: F401  (module fixtures)
    stranger,  # noqa: F401
)

from hisp.adapters.discovery import SenderDiscovery
from hisp.addresses import HealthDomain
from hisp.config import DiscoveryConfig
from hisp.core.discovery import DnsAnswer, Outcome
from hisp.errors import CertificateNotFound, ConfigError
from hisp.testing.pki import TestPKI


class GatedDns(FakeDns):
    """A FakeDns whose answers wait for ``gate``: a lookup in flight across a reload."""

    def __init__(self, answers: dict[str, DnsAnswer | Exception]) -> None:
        super().__init__(answers)
        self.gate = asyncio.Event()
        self.asked_event = asyncio.Event()

    async def cert(self, name: str) -> DnsAnswer:
        self.asked_event.set()
        await self.gate.wait()
        return await super().cert(name)


def test_lookup_in_flight_across_a_trust_reload_does_not_repopulate_the_cache(
    pki: TestPKI, stranger: TestPKI  # noqa: F811
) -> None:
    """AS-20 (every certificate judged against the anchors in force), CD-10: after a SIGHUP that removes the
    partner's CA, no verdict made with the old anchors may be served from the cache."""

    async def main() -> None:
        dns = GatedDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=600)})
        trust = SwitchableTrust(pki.anchors)
        discovery = SenderDiscovery(DiscoveryConfig(), dns=dns, trust_for=trust, clock=Clock(),
                                    ldap=FakeLdap(dns, FakeDirectory()))
        in_flight = asyncio.create_task(discovery.discover(SENDER, DR_B, at=AT))
        await asyncio.wait_for(dns.asked_event.wait(), 2)
        trust.current = stranger.anchors  # SIGHUP: the partner's CA removed
        discovery.clear()
        dns.gate.set()
        await in_flight  # judged with the anchors it started with: acceptable for this one message
        with pytest.raises(CertificateNotFound):
            await discovery.discover(SENDER, DR_B, at=AT)  # the next one must be judged anew

    asyncio.run(asyncio.wait_for(main(), 4))


def test_cache_is_scoped_by_sender_domain(pki: TestPKI, stranger: TestPKI) -> None:  # noqa: F811
    """AS-21 / CD-10: a result judged against one hosted domain's anchors is never served to another sender
    domain whose anchors do not reach the partner (no cache poisoning across sender domains)."""
    other = HealthDomain.parse("hospital.example")
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=600)})
    discovery = SenderDiscovery(
        DiscoveryConfig(), dns=dns, trust_for=lambda s: pki.anchors if s == SENDER else stranger.anchors,
        clock=Clock(), ldap=FakeLdap(dns, FakeDirectory()),
    )
    assert asyncio.run(discovery.discover(SENDER, DR_B, at=AT)).usable
    with pytest.raises(CertificateNotFound):
        asyncio.run(discovery.discover(other, DR_B, at=AT))
    assert asyncio.run(discovery.discover(SENDER, DR_B, at=AT)).from_cache


@pytest.mark.parametrize("bad", ["untrusted", "expired"])
def test_local_bad_address_entry_never_falls_through_to_the_trusted_domain_entry(
    tmp_path: Path, pki: TestPKI, stranger: TestPKI, bad: str  # noqa: F811
) -> None:
    """CD-8: an address's local entry holding only an untrusted (or expired) certificate decides: neither its
    domain's (trusted) local entry nor DNS (which publishes a trusted one) is used."""
    if bad == "untrusted":
        cert = stranger.user(str(DR_B)).certificate
    else:
        cert = pki.user(str(DR_B), not_before=AT - timedelta(days=30), not_after=AT - timedelta(days=1)).certificate
    (tmp_path / "addr.der").write_bytes(cert.der)
    (tmp_path / "dom.der").write_bytes(pki.domain(PARTNER).certificate.der)
    config = _config(tmp_path, f'[[discovery.local]]\naddress = "{DR_B}"\nfile = "addr.der"\n'
                     f'[[discovery.local]]\ndomain = "{PARTNER}"\nfile = "dom.der"\n')
    dns = FakeDns({f"dr.b.{PARTNER}.": cert_answer(pki.user(str(DR_B)).certificate.der, ttl=600)})
    discovery = SenderDiscovery(config, dns=dns, trust_for=lambda s: pki.anchors, clock=Clock(),
                                ldap=FakeLdap(dns, FakeDirectory()))
    result = asyncio.run(discovery.discovery(SENDER).lookup(DR_B, at=AT))
    assert result.outcome is Outcome.NOT_FOUND and not result.chosen
    assert dns.asked == []


def test_local_address_entry_matches_whatever_the_case(tmp_path: Path, pki: TestPKI) -> None:  # noqa: F811
    """CD-8 / issue 4: an entry written 'Dr.B@Partner.Example' answers for dr.b@partner.example; DNS never asked."""
    cert = pki.user(str(DR_B)).certificate
    (tmp_path / "addr.der").write_bytes(cert.der)
    config = _config(tmp_path, f'[[discovery.local]]\naddress = "Dr.B@{PARTNER.title()}"\nfile = "addr.der"\n')
    dns = FakeDns()
    discovery = SenderDiscovery(config, dns=dns, trust_for=lambda s: pki.anchors, clock=Clock(),
                                ldap=FakeLdap(dns, FakeDirectory()))
    result = asyncio.run(discovery.discovery(SENDER).lookup(DR_B, at=AT))
    assert result.chosen == (cert,) and dns.asked == []


def test_local_certificate_for_another_address_is_refused_at_load(tmp_path: Path, pki: TestPKI) -> None:  # noqa: F811
    """AS-2/AS-3: a [[discovery.local]] file whose certificate is bound to another address is a ConfigError."""
    (tmp_path / "other.pem").write_bytes(pki.user(f"nurse@{PARTNER}").certificate.der)
    with pytest.raises(ConfigError, match="not bound"):
        _config(tmp_path, f'[[discovery.local]]\naddress = "{DR_B}"\nfile = "other.pem"\n')


def test_local_file_that_is_a_fifo_is_refused_not_read_unbounded(tmp_path: Path) -> None:
    """CD-10 / config hardening: a [[discovery.local]] file must be a regular file of at most 1 MiB; a FIFO
    streaming 2 MiB must be refused as too large or not a file, never read whole."""
    fifo = tmp_path / "partner.pem"
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            with open(fifo, "wb") as handle:
                handle.write(b"A" * (2 * 1024 * 1024))
        except OSError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(ConfigError, match=r"larger than|not a (regular )?file"):
            _config(tmp_path, f'[[discovery.local]]\naddress = "{DR_B}"\nfile = "partner.pem"\n')
    finally:
        try:  # unblock the writer if the load never opened the FIFO
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        writer.join(2)
