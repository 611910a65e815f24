"""The trust part of the configuration file: what it accepts and how it explains what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from hisp.addresses import DirectAddress, HealthDomain
from hisp.config import load_config, parse_config
from hisp.core.policy import Direction, RevocationMode
from hisp.errors import ConfigError

EXAMPLE = """
[trust]
policy = "direct-1.3"
revocation = "soft"
clock_skew = 120
cache_dir = "cache"

[[trust.anchor]]
file = "anchors/partner-ca.pem"
domains = ["Direct.Clinic.Example"]
directions = ["incoming"]

[[trust.anchor]]
file = "ABSOLUTE/ehr-ca.pem"
addresses = ["dr.example@direct.clinic.example"]

[[trust.bundle]]
name = "accredited"
url = "https://bundles.example.org/accredited.p7b"
refresh = 7200
signer = "anchors/bundle-signer.pem"
domains = ["direct.clinic.example"]
directions = ["incoming", "outgoing"]

[[trust.domain]]
name = "direct.clinic.example"
revocation = "hard"
policy = "direct-1.2"
"""


def test_example_configuration(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (tmp_path / "anchors").mkdir()
    elsewhere.mkdir()
    (tmp_path / "anchors" / "partner-ca.pem").write_text("anchor")
    (elsewhere / "ehr-ca.pem").write_text("anchor")
    (tmp_path / "hisp.toml").write_text(EXAMPLE.replace("ABSOLUTE", str(elsewhere)))
    config = load_config(tmp_path / "hisp.toml")
    trust = config.trust
    assert trust.clock_skew == 120
    assert trust.policy.clock_skew == 120
    assert trust.cache_dir == tmp_path / "cache"
    first, second = trust.anchors
    assert first.file == tmp_path / "anchors" / "partner-ca.pem"
    assert first.domains == (HealthDomain("direct.clinic.example"),)
    assert first.directions == frozenset({Direction.INCOMING})
    assert second.file == elsewhere / "ehr-ca.pem"
    assert second.addresses == (DirectAddress.parse("dr.example@direct.clinic.example"),)
    assert second.directions == frozenset(Direction)
    (bundle,) = trust.bundles
    assert (bundle.name, bundle.refresh, bundle.signer) == ("accredited", 7200, tmp_path / "anchors/bundle-signer.pem")
    override = trust.for_domain(HealthDomain("direct.clinic.example"))
    assert override.revocation is RevocationMode.HARD
    assert override.policy.name == "direct-1.2"
    assert override.policy.clock_skew == 120
    default = trust.for_domain(HealthDomain("direct.other.example"))
    assert (default.revocation, default.policy.name) == (RevocationMode.SOFT, "direct-1.3")


def test_empty_configuration_has_defaults() -> None:
    trust = parse_config("").trust
    assert trust.revocation is RevocationMode.SOFT
    assert trust.policy.name == "direct-1.3"
    assert trust.anchors == () and trust.bundles == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[trust]\nrevocation = 'sometimes'", "trust.revocation: must be hard, soft or off"),
        ("[trust]\npolicy = 'direct-9'", "trust.policy: unknown policy 'direct-9'"),
        ("[trust]\nclock_skew = -1", "trust.clock_skew: must be between 0 and 86400 seconds"),
        ("[trust]\nclock_skew = '5m'", "trust.clock_skew: must be an integer, not str"),
        ("[trust]\ncolour = 'blue'", "trust.colour: unknown key"),
        ("[trusts]\n", "trusts: unknown key"),
        ("[[trust.anchor]]\nfile = 'a.pem'", "trust.anchor[0].domains: give the local domains"),
        ("[[trust.anchor]]\ndomains = ['a.example']", "trust.anchor[0].file: is required"),
        (
            "[[trust.anchor]]\nfile = 'a.pem'\ndomains = ['a.example']\ndirections = ['inbound']",
            "trust.anchor[0].directions: each must be incoming or outgoing",
        ),
        ("[[trust.anchor]]\nfile = 'a.pem'\ndomains = ['not a domain']", "trust.anchor[0].domains: not a valid"),
        (
            "[[trust.bundle]]\nname = 'b'\nurl = 'ftp://x.example/b.p7b'\ndomains = ['a.example']",
            "trust.bundle[0].url: must be an https:// (or http://) URL",
        ),
        (
            "[[trust.bundle]]\nname = 'b'\nurl = 'https://x.example/b'\nrefresh = 5\ndomains = ['a.example']",
            "trust.bundle[0].refresh: must be between 60 and 604800 seconds",
        ),
        (
            "[[trust.bundle]]\nname = 'b'\nurl = 'https://x.example/b'\ndomains = ['a.example']\n"
            "[[trust.bundle]]\nname = 'b'\nurl = 'https://y.example/b'\ndomains = ['a.example']",
            "trust.bundle[1].name: must be unique",
        ),
        ("[[trust.domain]]\nname = 'a.example'\n[[trust.domain]]\nname = 'A.example'", "configured twice"),
        ("[trust\n", "not valid TOML"),
        ("[trust]\nanchor = 'x'", "trust.anchor: must be an array of tables"),
    ],
    ids=[
        "revocation",
        "policy",
        "negative-skew",
        "skew-type",
        "unknown-key",
        "unknown-table",
        "anchor-without-scope",
        "anchor-without-file",
        "direction",
        "domain-name",
        "bundle-scheme",
        "refresh-range",
        "duplicate-bundle",
        "duplicate-domain",
        "toml-syntax",
        "anchor-type",
    ],
)
def test_errors_name_the_file_and_key(text: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "a.pem").write_text("an anchor file that exists")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="hisp.toml", base=tmp_path)
    assert caught.value.message.startswith("hisp.toml: ")
    assert message in caught.value.message


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.toml")
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="too large"):
        load_config(big)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_missing_anchor_file_is_refused_at_load(tmp_path: Path) -> None:
    """A missing anchor file would silently trust nobody: refused when the configuration is loaded."""
    text = "[[trust.anchor]]\nfile = 'anchors/none.pem'\ndomains = ['a.example']"
    with pytest.raises(ConfigError, match=r"trust\.anchor\[0\]\.file: .*none\.pem does not exist"):
        parse_config(text, source="hisp.toml", base=tmp_path)


def test_misspelt_table_is_named_first() -> None:
    with pytest.raises(ConfigError, match=r"hisp\.toml: dsn: unknown key"):
        parse_config("[dsn]\nttl = 60\n[[domain]]\nname = 'a.example'", source="hisp.toml")
