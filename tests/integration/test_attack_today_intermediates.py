"""Adversarial probes of ``[trust] intermediates`` (hisp.adapters.truststores): an intermediate from the local
store is an issuer for path building, never an anchor (AS-20, AS-21)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AT

from hisp.adapters.truststores import TrustStores
from hisp.addresses import DirectAddress
from hisp.config import parse_config
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.policy import Direction
from hisp.core.trust import validate
from hisp.errors import ConfigError, TrustError

DOMAIN = "direct.local.example"
PARTNER = "dr.p@direct.partner.example"


def _stores(tmp_path: Path, intermediates: str) -> TrustStores:
    text = f"""
[trust]
revocation = "off"
cache_dir = "cache"
intermediates = [{intermediates}]
[[trust.anchor]]
file = "root.pem"
domains = ["{DOMAIN}"]
"""
    return TrustStores(parse_config(text, base=tmp_path).trust, now=AT)


def _verdict(stores: TrustStores, cert):  # type: ignore[no-untyped-def]
    store = stores.store_for(DirectAddress.parse(f"someone@{DOMAIN}"))
    return validate(cert, store=store, direction=Direction.INCOMING, at=AT)


def test_self_signed_root_in_intermediates_does_not_become_an_anchor(tmp_path: Path) -> None:
    """AS-20: a self-signed CA placed in ``intermediates`` (an operator's mistake, or a hostile file) must not
    terminate a path: the leaf it issued stays untrusted."""
    root = create_ca("Partner Root", at=AT)
    rogue = create_ca("Rogue Root", at=AT)
    (tmp_path / "root.pem").write_bytes(root.certificate.to_pem())
    (tmp_path / "rogue.pem").write_bytes(rogue.certificate.to_pem())
    leaf = issue_certificate(rogue, at=AT, address=PARTNER)
    with pytest.raises(TrustError) as refused:
        _verdict(_stores(tmp_path, '"rogue.pem"'), leaf.certificate)
    verdict = refused.value.context["verdict"]
    assert not verdict.trusted and verdict.anchor is None


def test_same_name_impostor_chain_in_intermediates_is_not_trusted(tmp_path: Path) -> None:
    """AS-20: an impostor root with the anchor's exact name and its issuing CA, both in ``intermediates``: the path
    builder must check the anchor's key, not its name; the impostor's leaf stays untrusted."""
    root = create_ca("Partner Root", at=AT)
    impostor = create_ca("Partner Root", at=AT)
    inter = create_ca("Partner Issuing CA", at=AT, issuer=impostor)
    (tmp_path / "root.pem").write_bytes(root.certificate.to_pem())
    (tmp_path / "evil.pem").write_bytes(inter.certificate.to_pem() + impostor.certificate.to_pem())
    leaf = issue_certificate(inter, at=AT, address=PARTNER)
    with pytest.raises(TrustError, match="signature") as refused:
        _verdict(_stores(tmp_path, '"evil.pem"'), leaf.certificate)
    assert not refused.value.context["verdict"].trusted


def test_duplicates_across_files_are_kept_once(tmp_path: Path) -> None:
    """AS-20: the same intermediate listed in two files (and twice in one) is offered once."""
    root = create_ca("Partner Root", at=AT)
    inter = create_ca("Partner Issuing CA", at=AT, issuer=root)
    (tmp_path / "root.pem").write_bytes(root.certificate.to_pem())
    (tmp_path / "a.pem").write_bytes(inter.certificate.to_pem() * 2)
    (tmp_path / "b.pem").write_bytes(inter.certificate.to_pem())
    stores = _stores(tmp_path, '"a.pem", "b.pem"')
    assert stores.intermediates == (inter.certificate,)
    leaf = issue_certificate(inter, at=AT, address=PARTNER)
    assert _verdict(stores, leaf.certificate).trusted


def test_huge_intermediates_file_is_refused_at_load(tmp_path: Path) -> None:
    """AS-20 / config hardening: an intermediates file far over the input bound is a ConfigError, not parsed."""
    root = create_ca("Partner Root", at=AT)
    (tmp_path / "root.pem").write_bytes(root.certificate.to_pem())
    (tmp_path / "huge.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (40 * 1024 * 1024))
    with pytest.raises(ConfigError):
        _stores(tmp_path, '"huge.pem"')


def test_fifo_as_intermediates_file_is_refused_at_load(tmp_path: Path) -> None:
    """AS-20 / config hardening: a FIFO named as an intermediates file is refused (not a regular file) without
    blocking the load."""
    import os

    root = create_ca("Partner Root", at=AT)
    (tmp_path / "root.pem").write_bytes(root.certificate.to_pem())
    os.mkfifo(tmp_path / "pipe.pem")
    with pytest.raises(ConfigError, match="not a file"):
        _stores(tmp_path, '"pipe.pem"')
