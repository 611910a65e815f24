"""hisp.adapters.truststores: stores per domain, address and direction from the configuration (AS-21, TB-4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from hisp.adapters.truststores import TrustStores
from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import parse_config
from hisp.core.devca import create_ca
from hisp.core.policy import Direction, RevocationMode
from hisp.errors import ConfigError
from hisp.testing.http import serve_http


def test_stores_from_configuration_and_bundle_reload(tmp_path: Path) -> None:
    partner, inbound_only, per_address, bundled, bundled2 = (
        create_ca(name, at=AT) for name in ("Partner", "Inbound Only", "Per Address", "Bundled", "Bundled Two")
    )
    for name, ca in {"partner": partner, "inbound": inbound_only, "address": per_address}.items():
        (tmp_path / f"{name}.pem").write_bytes(ca.certificate.to_pem())

    def p7b(*cas: object) -> bytes:
        return pkcs7.serialize_certificates([c.certificate.x509 for c in cas], serialization.Encoding.DER)  # type: ignore[attr-defined]

    with serve_http() as server:
        server.set_route("/b.p7b", body=p7b(bundled))
        text = f"""
[trust]
revocation = "soft"
cache_dir = "cache"
[[trust.anchor]]
file = "partner.pem"
domains = ["direct.a.example"]
[[trust.anchor]]
file = "inbound.pem"
domains = ["direct.a.example"]
directions = ["incoming"]
[[trust.anchor]]
file = "address.pem"
addresses = ["dr.x@direct.a.example"]
directions = ["outgoing"]
[[trust.bundle]]
name = "community"
url = "{server.url("/b.p7b")}"
domains = ["direct.a.example"]
directions = ["incoming"]
[[trust.domain]]
name = "direct.a.example"
revocation = "hard"
"""
        config = parse_config(text, base=tmp_path).trust
        stores = TrustStores(config, now=AT)
        domain = HealthDomain.parse("direct.a.example")
        store = stores.store_for(domain)
        assert store.revocation is RevocationMode.HARD
        assert store.certificates_for(Direction.INCOMING) == (partner.certificate, inbound_only.certificate)
        assert store.certificates_for(Direction.OUTGOING) == (partner.certificate,)
        address_store = stores.store_for(DirectAddress.parse("dr.x@direct.a.example"))
        assert address_store.certificates_for(Direction.OUTGOING) == (partner.certificate, per_address.certificate)
        # another address of the domain gets the domain's store; an unknown domain an empty one
        assert stores.store_for(DirectAddress.parse("dr.y@direct.a.example")) is store
        assert stores.store_for(HealthDomain.parse("elsewhere.example")).incoming == ()

        assert stores.refresh(AT)["community"].status.value == "updated"
        store = stores.store_for(domain)
        assert [a.source for a in store.incoming][-1] == "bundle community"
        assert bundled.certificate in store.certificates_for(Direction.INCOMING)
        assert bundled.certificate not in store.certificates_for(Direction.OUTGOING)

        server.set_route("/b.p7b", body=p7b(bundled2))
        stores.refresh(AT.replace(year=AT.year + 1))
        incoming = stores.store_for(domain).certificates_for(Direction.INCOMING)
        assert bundled2.certificate in incoming and bundled.certificate not in incoming

        # a restart restores the cached bundle before any fetch
        restarted = TrustStores(config, now=AT.replace(year=AT.year + 1))
        assert bundled2.certificate in restarted.store_for(domain).certificates_for(Direction.INCOMING)


def test_missing_anchor_file_is_a_config_error(tmp_path: Path) -> None:
    text = '[trust]\n[[trust.anchor]]\nfile = "missing.pem"\ndomains = ["direct.a.example"]\n'
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        TrustStores(parse_config(text, base=tmp_path).trust, now=AT)
