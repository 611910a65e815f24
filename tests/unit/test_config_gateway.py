"""The gateway part of the configuration file (issue 5): node, users, endpoints, listeners, relay, storage, queue.

What this proves: defaults, values read as written (relative paths against the file), and every mistake an
error naming the key; and ``hisp config check`` prints a summary or one error line.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from hisp.addresses import DirectAddress
from hisp.cli import main
from hisp.config import RelayMode, load_config, parse_config
from hisp.core.smtp_policy import hash_password
from hisp.errors import ConfigError

HASH = hash_password("a demo password", salt=b"0123456789abcdef")
DOMAIN = """
[[domain]]
name = "direct.clinic.example"
addresses = ["dr.a@direct.clinic.example", "dr.b@direct.clinic.example"]
endpoint = "maildir:ehr/Maildir"

[[domain.mailbox]]
address = "dr.b@direct.clinic.example"
endpoint = "lmtp://127.0.0.1:2424"
"""
USER = f"""
[[user]]
name = "ehr"
password_hash = "{HASH}"
addresses = ["dr.a@direct.clinic.example"]
"""


def test_defaults() -> None:
    config = parse_config("")
    assert config.node.name is None and config.node.hostname == "localhost"
    assert config.users == () and config.listeners.submission is None and config.listeners.backbone is None
    assert config.relay.mode is RelayMode.MX and config.relay.port == 25 and config.relay.dns_server is None
    assert config.storage.url is None and config.queue.workers == 4
    assert config.queue.retry.lifetime == timedelta(days=5)


def test_everything(tmp_path: Path) -> None:
    (tmp_path / "tls.pem").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    text = DOMAIN + USER + """
[node]
name = "node-1"
hostname = "mx.clinic.example"

[limits]
max_message_size = 1000000
max_recipients = 50

[listeners.submission]
port = 1587
tls_cert = "tls.pem"
tls_key = "tls.key"

[listeners.backbone]
port = 1025
max_recipients = 10

[relay]
mode = "smarthost"
smarthost = "127.0.0.1:2525"
require_tls = true
dns_server = "127.0.0.1:5353"

[storage]
url = "sqlite:///db/hisp.sqlite3"
spool_dir = "spool"

[queue]
retry_initial = 2
retry_factor = 3
retry_maximum = 60
lifetime = 3600
lease = 30
workers = 8
"""
    path = tmp_path / "hisp.toml"
    path.write_text(text)
    config = load_config(path)
    a, b = DirectAddress.parse("dr.a@direct.clinic.example"), DirectAddress.parse("dr.b@direct.clinic.example")
    assert config.endpoint_for(a) is not None and config.endpoint_for(a).url == f"maildir:{tmp_path}/ehr/Maildir"
    assert config.endpoint_for(b) is not None and config.endpoint_for(b).url == "lmtp://127.0.0.1:2424"
    assert config.is_hosted(a) and not config.is_hosted(DirectAddress.parse("x@direct.clinic.example"))
    (user,) = config.users
    assert user.name == "ehr" and user.addresses == (a,)
    submission, backbone = config.listeners.submission, config.listeners.backbone
    assert submission is not None and backbone is not None
    assert submission.port == 1587 and submission.tls_cert == tmp_path / "tls.pem"
    assert submission.max_message_size == 1000000 and submission.max_recipients == 50  # from [limits]
    assert backbone.max_recipients == 10 and backbone.tls_cert is None
    assert config.relay.smarthost == ("127.0.0.1", 2525) and config.relay.require_tls
    assert config.relay.dns_server == ("127.0.0.1", 5353)
    assert config.storage.url == f"sqlite:///{tmp_path}/db/hisp.sqlite3"
    assert config.storage.spool_dir == tmp_path / "spool"
    retry = config.queue.retry
    assert (retry.initial, retry.factor, retry.maximum, retry.lifetime) == (
        timedelta(seconds=2), 3.0, timedelta(seconds=60), timedelta(seconds=3600)
    )
    assert (config.queue.lease, config.queue.workers, config.node.name) == (30.0, 8, "node-1")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[node]\nname = 'a b'", "node.name", "letters"),
        ("[node]\ncolour = 1", "node.colour", "unknown key"),
        (DOMAIN + "[[user]]\nname = 'u'\npassword = 'secret'\npassword_hash = '" + HASH + "'\naddresses = []",
         r"user\[0\]\.password", "never put a password"),
        (DOMAIN + "[[user]]\nname = 'u'\npassword_hash = 'plain'\naddresses = ['dr.a@direct.clinic.example']",
         r"user\[0\]\.password_hash", "hisp user add"),
        (DOMAIN + "[[user]]\nname = 'u'\npassword_hash = 'scrypt$16384$8$1$SALT$HASH'\n"
         "addresses = ['dr.a@direct.clinic.example']",
         r"user\[0\]\.password_hash", r"salt decodes to 3 bytes, not 16\): make one with `hisp user add`"),
        (DOMAIN + "[[user]]\nname = 'u'\npassword_hash = '" + HASH.rsplit("$", 1)[0] + "$AAAA'\n"
         "addresses = ['dr.a@direct.clinic.example']",
         r"user\[0\]\.password_hash", r"hash decodes to 3 bytes, not 32\): make one with `hisp user add`"),
        (DOMAIN + "[[user]]\nname = 'u'\npassword_hash = '" + HASH.replace("$32768$", "$1000$") + "'\n"
         "addresses = ['dr.a@direct.clinic.example']",
         r"user\[0\]\.password_hash", "out of bounds"),
        (DOMAIN + "[[user]]\nname = 'u'\npassword_hash = '" + HASH + "'\naddresses = ['x@elsewhere.example']",
         r"user\[0\]\.addresses", "not an address of a hosted"),
        ("[[domain]]\nname = 'd.example'\nendpoint = 'ftp://x'", r"domain\[0\]\.endpoint", "smtp, lmtp or maildir"),
        ("[[domain]]\nname = 'd.example'\nendpoint = 'smtp://host'", r"domain\[0\]\.endpoint", "host:port"),
        ("[[domain]]\nname = 'd.example'\n[[domain.mailbox]]\naddress = 'a@d.example'\nendpoint = 'maildir:/m'",
         r"domain\[0\]\.mailbox\[0\]\.address", "not one of the domain's addresses"),
        (DOMAIN + USER + "[listeners.submission]\nport = 587", "listeners.submission.tls_cert", "is required"),
        ("[listeners.submission]\ntls_cert = '/nonexistent'\ntls_key = '/nonexistent'",
         "listeners.submission.tls_cert", "no such file"),
        ("[listeners.backbone]\nport = 70000", "listeners.backbone.port", "between 0 and 65535"),
        ("[listeners.backbone]\ntls_cert = 'x.pem'", "listeners.backbone.tls_key", "both"),
        ("[relay]\nmode = 'carrier-pigeon'", "relay.mode", "mx or smarthost"),
        ("[relay]\nmode = 'smarthost'", "relay.smarthost", "is required"),
        ("[relay]\nsmarthost = 'h:25'", "relay.smarthost", "only used"),
        ("[relay]\ndns_server = 'ns.example:53'", "relay.dns_server", "IP address"),
        ("[storage]\nurl = 'mysql://x'", "storage.url", "sqlite"),
        ("[storage]\nurl = 'sqlite:///:memory:'", "storage.url", "in-memory"),
        ("[queue]\nretry_initial = 10\nretry_maximum = 5", "queue.retry_maximum", "at least retry_initial"),
        ("[queue]\nworkers = 0", "queue.workers", "between 1 and"),
        ("[queue]\nlease = 'long'", "queue.lease", "number of seconds"),
        ("[limits]\nmax_message_size = 0", "limits.max_message_size", "between 1 and"),
        ("[notifications]\ntimeout = 0", "notifications.timeout", "between"),
        ("[notifications]\nsend_mdn = 'yes'", "notifications.send_mdn", "true or false"),
        ("[notifications]\nconsume_processed = 1", "notifications.consume_processed", "true or false"),
        ("[notifications]\ntimout = 60", "notifications.timout", "unknown key"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 and " " not in v else None,
)
def test_errors_name_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"hisp\.toml: {key}: .*{problem}"):
        parse_config(text, source="hisp.toml")


def test_notifications_defaults_and_values() -> None:
    """DN-9: one hour by default, configurable; DN-10: processed MDNs forwarded unless consumed."""
    defaults = parse_config("").notifications
    assert (defaults.send_mdn, defaults.timeout, defaults.consume_processed) == (True, 3600.0, False)
    set_ = parse_config("[notifications]\nsend_mdn = false\ntimeout = 120\nconsume_processed = true\n"
                        "scan_interval = 5\n").notifications
    assert (set_.send_mdn, set_.timeout, set_.consume_processed, set_.scan_interval) == (False, 120.0, True, 5.0)


def test_config_check_prints_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "hisp.toml"
    path.write_text(DOMAIN + USER + "[listeners.backbone]\nport = 2525\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.output
    assert "domain direct.clinic.example: 2 addresses" in result.output
    assert "dr.b@direct.clinic.example -> lmtp://127.0.0.1:2424" in result.output
    assert "user ehr: may send from dr.a@direct.clinic.example" in result.output
    assert "submission: not run" in result.output and "backbone: 127.0.0.1:2525" in result.output
    assert f"storage: sqlite:///{tmp_path}/hisp.sqlite3" in result.output
    assert "notifications: MDNs sent for received messages; tracking timeout 3600 s" in result.output
    assert "trust: 0 anchor files, 0 bundles, 0 intermediates files" in result.output
    assert ("discovery: 0 local certificate entries, cache 10000 results (LDAP 3600 s, not found 300 s), "
            "DNSSEC not required") in result.output


def test_config_check_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "hisp.toml"
    path.write_text("[queue]\nworkers = 0\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"hisp: {path}: queue.workers: must be between 1 and 256"


@pytest.mark.parametrize(
    ("storage", "warned"),
    [
        ('url = "postgresql+psycopg://hisp@127.0.0.1/hisp"\nspool_dir = "spool"\n', True),
        ('url = "postgresql+psycopg://hisp@127.0.0.1/hisp"\n', False),
        ('url = "sqlite:///hisp.sqlite3"\nspool_dir = "spool"\n', False),
    ],
    ids=["postgresql-spool", "postgresql-inline", "sqlite-spool"],
)
def test_config_check_warns_of_a_spool_with_postgresql(tmp_path: Path, storage: str, warned: bool) -> None:
    path = tmp_path / "hisp.toml"
    path.write_text(DOMAIN + "[listeners.backbone]\nport = 2525\n[storage]\n" + storage)
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid" in result.stdout
    spool = [line for line in result.stderr.splitlines() if "spool_dir" in line]
    if warned:
        assert len(spool) == 1 and spool[0].startswith("warning: [storage] spool_dir = ")
        assert "same spool directory" in spool[0] and "leave spool_dir unset" in spool[0]
    else:
        assert spool == []


def test_config_check_refuses_the_placeholder_hash_naming_the_key(tmp_path: Path) -> None:
    """A new user pasted the README's placeholder: refused when checked, not a 535 at every login later."""
    path = tmp_path / "hisp.toml"
    path.write_text(DOMAIN + USER.replace(HASH, "scrypt$16384$8$1$SALT$HASH"))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"hisp: {path}: user[0].password_hash: ")
    assert "make one with `hisp user add`" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("how", [["FILE"], ["-c", "FILE"], ["--config", "FILE"], ["FILE", "-c", "FILE"]],
                         ids=["positional", "-c", "--config", "both-same"])
def test_config_check_takes_the_file_as_argument_or_with_c(tmp_path: Path, how: list[str]) -> None:
    path = tmp_path / "hisp.toml"
    path.write_text(DOMAIN + USER + "[listeners.backbone]\nport = 2525\n")
    result = CliRunner().invoke(main, ["config", "check", *(str(path) if a == "FILE" else a for a in how)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: valid\n")


def test_config_check_usage_errors_and_help(tmp_path: Path) -> None:
    path, other = tmp_path / "hisp.toml", tmp_path / "other.toml"
    none = CliRunner().invoke(main, ["config", "check"])
    assert none.exit_code == 2 and "-c/--config FILE" in none.stderr
    path.write_text("")
    other.write_text("")  # both exist: the error is about giving two, not about a missing file
    two = CliRunner().invoke(main, ["config", "check", str(path), "-c", str(other)])
    assert two.exit_code == 2 and "once" in two.stderr
    text = CliRunner().invoke(main, ["config", "check", "--help"]).output
    assert "-c, --config FILE" in text and "[FILE]" in text
    assert text.count("keys") == 1  # "keys" meant both TOML keys and private keys; now only the latter



def test_config_check_shows_each_domains_anchors_and_warns_when_a_direction_has_none(tmp_path: Path) -> None:
    """AS-21: an anchor's ``domains`` are OUR hosted domains. Naming the partner's domain instead (a common
    mistake) leaves ours with no anchor: valid, but every partner refused; config check says so, shows which
    anchors apply to each hosted domain, and flags a leaf certificate used as an anchor and an unsigned http://
    bundle (TB-2)."""
    from datetime import UTC, datetime

    from hisp.core.devca import create_ca, issue_certificate

    at = datetime.now(UTC)
    ca = create_ca("Partner CA", at=at)
    (tmp_path / "partner-ca.pem").write_bytes(ca.certificate.to_pem())
    (tmp_path / "leaf.pem").write_bytes(issue_certificate(ca, at=at, address="x@direct.partner.example")
                                        .certificate.to_pem())
    path = tmp_path / "hisp.toml"
    wrong = '[[trust.anchor]]\nfile = "partner-ca.pem"\ndomains = ["direct.partner.example"]\n'
    path.write_text("[trust]\n" + wrong + DOMAIN + "[listeners.backbone]\nport = 2525\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "  incoming anchors: none" in result.stdout and "  outgoing anchors: none" in result.stdout
    assert "warning: domain direct.clinic.example has no incoming trust anchor" in result.stderr
    assert "not the partner's" in result.stderr

    right = ('[[trust.anchor]]\nfile = "partner-ca.pem"\ndomains = ["direct.clinic.example"]\n'
             '[[trust.anchor]]\nfile = "leaf.pem"\ndomains = ["direct.clinic.example"]\ndirections = ["incoming"]\n'
             '[[trust.bundle]]\nname = "community"\nurl = "http://127.0.0.1:9/b.p7b"\n'
             'domains = ["direct.clinic.example"]\ndirections = ["outgoing"]\n')
    path.write_text("[trust]\n" + right + DOMAIN + "[listeners.backbone]\nport = 2525\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "  incoming anchors: partner-ca.pem, leaf.pem" in result.stdout
    assert "  outgoing anchors: partner-ca.pem, bundle community" in result.stdout
    assert "has no incoming trust anchor" not in result.stderr
    assert "leaf.pem: CN=x@direct.partner.example is not a CA certificate" in result.stderr
    assert "trust bundle community is fetched over plain http:// without a `signer`" in result.stderr


def test_config_check_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    """A missing FILE is a usage error (exit 2), as a missing --anchor or -i file is for the other commands."""
    for args in ([str(tmp_path / "nowhere.toml")], ["-c", str(tmp_path / "nowhere.toml")]):
        result = CliRunner().invoke(main, ["config", "check", *args])
        assert result.exit_code == 2, result.output
        assert "nowhere.toml" in result.output and "does not exist" in result.output
