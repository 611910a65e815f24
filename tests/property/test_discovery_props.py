"""Property tests for discovery's untrusted inputs: CERT RDATA, SRV sets and whole hostile answers.

:func:`~hisp.core.discovery.decode_cert_rdata` gets random bytes and mutations of a valid PKIX record and
must never raise; :func:`~hisp.core.discovery.order_srv` must return a bounded, sorted, duplicate-free list
for any SRV set; and a plan fed random CERT and SRV answers must always finish with a clear outcome.
"""

from __future__ import annotations

import functools
import struct

from conftest import AT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hisp.addresses import DirectAddress
from hisp.core.certs import Certificate
from hisp.core.discovery import (
    CertQuery,
    DiscoveryPlan,
    DnsAnswer,
    DnsStatus,
    LdapAnswer,
    LdapEntry,
    LdapQuery,
    LookupFailure,
    Outcome,
    SrvQuery,
    SrvRecord,
    UrlFetch,
    Verdicts,
    decode_cert_rdata,
    order_srv,
)
from hisp.testing.pki import TestPKI

ADDRESS = DirectAddress.parse("d1@domain1.example")


@functools.cache
def _cert() -> Certificate:
    return TestPKI(at=AT).user(str(ADDRESS)).certificate


@given(st.binary(max_size=2048))
@settings(max_examples=400, deadline=None)
def test_decode_cert_rdata_never_raises(data: bytes) -> None:
    record = decode_cert_rdata(data)
    assert record.defect is None or record.certificate is None
    assert isinstance(record.describe(), str)


@given(st.integers(min_value=0, max_value=65535), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_pkix_record_decodes_or_is_a_defect(cert_type: int, data: st.DataObject) -> None:
    der = bytearray(_cert().der)
    for _ in range(data.draw(st.integers(min_value=0, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
        der[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(der)))
    rdata = struct.pack("!HHB", cert_type, 0, 0) + bytes(der[: cut or len(der)])
    record = decode_cert_rdata(rdata)
    if cert_type == 1:
        assert (record.certificate is None) == (record.defect is not None)
    else:
        assert record.certificate is None


srv_records = st.builds(
    SrvRecord,
    st.integers(min_value=0, max_value=65535),
    st.integers(min_value=0, max_value=65535),
    st.integers(min_value=0, max_value=65535),
    st.sampled_from([".", "a.example.", "A.example.", "b.example.", "_ldap._tcp.domain1.example.", ""]),
)


@given(st.lists(srv_records, max_size=60), st.integers(min_value=1, max_value=10))
@settings(max_examples=300, deadline=None)
def test_order_srv_is_bounded_sorted_and_unique(records: list[SrvRecord], limit: int) -> None:
    ordered, notes = order_srv(records, owner="_ldap._tcp.domain1.example.", limit=limit)
    assert len(ordered) <= limit
    keys = [(r.priority, -r.weight) for r in ordered]
    assert keys == sorted(keys)
    assert len({(r.target, r.port) for r in ordered}) == len(ordered)
    assert all(r.port and r.target not in (".", "", "_ldap._tcp.domain1.example.") for r in ordered)
    assert len(ordered) + len(notes) == len(records)


answers = st.one_of(
    st.just(DnsAnswer(DnsStatus.NXDOMAIN)),
    st.just(DnsAnswer(DnsStatus.NODATA)),
    st.builds(
        lambda rdata, ttl: DnsAnswer(DnsStatus.ANSWER, rdata=tuple(rdata), ttl=ttl),
        st.lists(st.binary(max_size=64), max_size=40),
        st.integers(min_value=-5, max_value=10**9),
    ),
)


@given(answers, answers, st.lists(srv_records, max_size=20), st.lists(st.binary(max_size=32), max_size=5))
@settings(max_examples=200, deadline=None)
def test_plan_always_finishes_clearly(
    address_answer: DnsAnswer, domain_answer: DnsAnswer, srv: list[SrvRecord], values: list[bytes]
) -> None:
    plan = DiscoveryPlan(ADDRESS, at=AT)
    steps = 0
    while (step := plan.next_step()) is not None:
        steps += 1
        assert steps < 100
        if isinstance(step, CertQuery):
            plan.receive(address_answer if step.name.startswith("d1.") else domain_answer)
        elif isinstance(step, SrvQuery):
            plan.receive(DnsAnswer(DnsStatus.ANSWER, srv=tuple(srv), ttl=60))
        elif isinstance(step, LdapQuery):
            entry = LdapEntry("cn=x", tuple(("userCertificate", v) for v in values))
            plan.receive(LdapAnswer("h:1", ("o=x",), (entry,)))
        elif isinstance(step, UrlFetch):
            plan.receive(LookupFailure("no network in this test", transient=False))
        else:
            plan.receive(Verdicts(()))
    result = plan.result()
    assert result.outcome in (Outcome.NOT_FOUND, Outcome.UNAVAILABLE)
    assert result.reason
    assert result.ttl >= 0
    assert result.explain() and result.to_json()
