"""``hisp cert validate``, continued: --policy presets, --revocation hard/soft against a real loopback CRL
server and OCSP responder, the ETT chain pinned with --at, and --bundle usage errors (AS-20, issue 3).

Runs the command in-process with click's runner (the loopback guard of tests/conftest.py applies).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES

from hisp.cli import main
from hisp.core.certs import load_certificate
from hisp.core.devca import create_ca, issue_certificate
from hisp.core.policy import DigestAlgorithm
from hisp.testing.http import LoopbackHTTPServer, serve_http
from hisp.testing.revocation import build_crl, build_ocsp_response

# CRLs and OCSP answers are issued now: the revocation caches compare nextUpdate with the real clock.
NOW = datetime.now(UTC).replace(microsecond=0)
OCSP = {"Content-Type": "application/ocsp-response"}
ETT = FIXTURES / "ett" / "certificates"


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["cert", "validate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def closed_port() -> int:
    """A loopback TCP port nobody listens on (connections to it are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Files:
    server: LoopbackHTTPServer
    dir: Path
    root: Path

    def cert(self, name: str) -> Path:
        """The CERT file of leaf ``name``: the leaf, then its issuer (an intermediate for the path)."""
        return self.dir / f"{name}.pem"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    out = tmp_path_factory.mktemp("cli-more")
    with serve_http() as server:
        root = create_ca("CLI More Root", at=NOW)
        inter = create_ca("CLI More Intermediate", at=NOW, issuer=root)
        sha1 = create_ca("CLI More SHA-1 Intermediate", at=NOW, issuer=root, signature_digest=DigestAlgorithm.SHA1)
        down = f"http://127.0.0.1:{closed_port()}"
        leaves = {
            "sha1": issue_certificate(sha1, at=NOW, address="sha1@direct.example.org"),
            "crl-good": issue_certificate(inter, at=NOW, address="g@direct.example.org", crl_url=server.url("/i.crl")),
            "crl-revoked": issue_certificate(
                inter, at=NOW, address="r@direct.example.org", crl_url=server.url("/i.crl")
            ),
            "crl-down": issue_certificate(inter, at=NOW, address="d@direct.example.org", crl_url=f"{down}/i.crl"),
            "ocsp-good": issue_certificate(
                inter, at=NOW, address="og@direct.example.org", ocsp_url=server.url("/ocsp-good")
            ),
            "ocsp-revoked": issue_certificate(
                inter, at=NOW, address="or@direct.example.org", ocsp_url=server.url("/ocsp-revoked")
            ),
            "ocsp-down": issue_certificate(inter, at=NOW, address="od@direct.example.org", ocsp_url=f"{down}/ocsp"),
        }
        server.set_route("/i.crl", body=build_crl(inter, at=NOW, revoked=[leaves["crl-revoked"].certificate]))
        for name in ("ocsp-good", "ocsp-revoked"):
            body = build_ocsp_response(leaves[name].certificate, inter, at=NOW, revoked=name == "ocsp-revoked")
            server.set_route(f"/{name}", body=body, headers=OCSP)
        (out / "root.pem").write_bytes(root.certificate.to_pem())
        for name, issued in leaves.items():
            issuer = sha1 if name == "sha1" else inter
            (out / f"{name}.pem").write_bytes(issued.certificate.to_pem() + issuer.certificate.to_pem())
        yield Files(server, out, out / "root.pem")


# -- --policy -----------------------------------------------------------------------------------------


def test_policy_direct_12_trusts_a_sha1_signed_intermediate_and_prints_its_rule(files: Files) -> None:
    """AS-20 (the policy: SHA-1 certificate signatures allowed under direct-1.2): a leaf under a SHA-1-signed
    intermediate is trusted with --policy direct-1.2, exit 0, and the verdict printed names the rule."""
    common = (files.cert("sha1"), "--anchor", files.root, "--revocation", "off", "--policy", "direct-1.2")
    code, out, err = run(*common, "--explain")
    assert code == 0, err
    assert out.startswith("TRUSTED") and "rule: direct-1.2: RFC 5280 path to an incoming anchor" in out
    assert "CN=CLI More SHA-1 Intermediate" in out
    code, out, _ = run(*common, "--json")
    assert code == 0 and json.loads(out)["policy_rule"].startswith("direct-1.2:")


@pytest.mark.parametrize("policy", [("--policy", "direct-1.3"), ()], ids=["direct-1.3", "default"])
def test_policy_direct_13_refuses_a_sha1_signed_intermediate(files: Files, policy: tuple[str, ...]) -> None:
    """AS-20 (no SHA-1 certificate signatures under direct-1.3, the default): the same leaf and intermediate
    are refused, exit 1, the reason on one stderr line naming the rule broken."""
    code, out, err = run(files.cert("sha1"), "--anchor", files.root, "--revocation", "off", *policy)
    assert code == 1 and not out
    assert err.startswith("hisp: ") and len(err.strip().splitlines()) == 1
    assert "SHA-1-signed certificate refused by policy direct-1.3" in err


# -- --revocation against a real CRL server and OCSP responder ------------------------------------------


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("source", ["crl", "ocsp"])
def test_revoked_certificate_exits_1_in_hard_and_soft_mode(files: Files, source: str, mode: str) -> None:
    """AS-20 (a revoked answer always rejects, in soft mode too): a leaf listed in the CRL its CDP names, or
    said revoked by the OCSP responder its AIA names, exits 1 with "revoked" on stderr in both modes."""
    code, out, err = run(files.cert(f"{source}-revoked"), "--anchor", files.root, "--revocation", mode, "--timeout", 2)
    assert code == 1 and not out
    assert err.startswith("hisp: revoked:") and len(err.strip().splitlines()) == 1
    assert ("CRL" if source == "crl" else "OCSP") in err


@pytest.mark.parametrize("source", ["crl", "ocsp"])
def test_good_answer_exits_0_in_hard_mode(files: Files, source: str) -> None:
    """AS-20 (hard mode): a reachable source that says "good" is accepted, exit 0, the source named, no
    warning (the control for the refusals around it)."""
    code, out, err = run(
        files.cert(f"{source}-good"), "--anchor", files.root, "--revocation", "hard", "--timeout", 2, "--json"
    )
    assert code == 0, err
    revocation = json.loads(out)["revocation"]
    assert revocation["status"] == "good" and revocation["mode"] == "hard"
    assert revocation["sources"] == [files.server.url("/i.crl" if source == "crl" else "/ocsp-good")]
    assert "warning" not in err


@pytest.mark.parametrize("source", ["crl", "ocsp"])
def test_unreachable_source_exits_1_in_hard_mode(files: Files, source: str) -> None:
    """AS-20 (hard: an unreachable revocation source rejects): the CRL or OCSP URL is a loopback port with no
    listener: exit 1, "revocation unknown" on one stderr line."""
    code, out, err = run(files.cert(f"{source}-down"), "--anchor", files.root, "--revocation", "hard", "--timeout", 2)
    assert code == 1 and not out
    assert err.startswith("hisp: revocation unknown:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("source", ["crl", "ocsp"])
def test_unreachable_source_exits_0_with_a_warning_in_soft_mode(files: Files, source: str) -> None:
    """AS-20 (soft: an unreachable source is accepted with a warning): same certificate, exit 0, the trusted
    summary on stdout and the soft-fail warning printed on stderr."""
    code, out, err = run(files.cert(f"{source}-down"), "--anchor", files.root, "--revocation", "soft", "--timeout", 2)
    assert code == 0, err
    assert out.startswith("trusted: ") and "revocation unknown (mode soft)" in out
    assert "hisp: warning: revocation status unknown, accepted in soft mode" in err


# -- ETT certificates pinned with --at ------------------------------------------------------------------


def test_ett_chain_to_the_sitenv_root_pinned_with_at(tmp_path: Path) -> None:
    """ETT case (ETT certificates with --at pinned; a non-self-signed anchor, AS-21): the ETT Public Cert
    ttpedge.sitenv.org with intermediate.sitenv.org, against the ETT Public Root sitenv.org.der, is trusted
    --at 2025-06-01 (exit 0, the root named as anchor) and refused --at 2026-11-30, after the root and the
    intermediate expired (exit 1)."""
    leaf = load_certificate((ETT / "ttpedge.sitenv.org.der").read_bytes())
    inter = load_certificate((ETT / "intermediate.sitenv.org.der").read_bytes())
    chain = tmp_path / "ttpedge-chain.pem"  # CERT then its intermediate: the CLI's way to pass intermediates
    chain.write_bytes(leaf.to_pem() + inter.to_pem())
    anchor = ETT / "sitenv.org.der"
    code, out, err = run(chain, "--anchor", anchor, "--revocation", "off", "--at", "2025-06-01", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["anchor"]["source"] == str(anchor) and "CN=sitenv.org" in data["anchor"]["subject"]
    assert [c["subject"].split("CN=")[1].split(",")[0] for c in data["chain"]] == [
        "ttpedge.sitenv.org",
        "intermediate.sitenv.org",
        "sitenv.org",
    ]
    code, _, err = run(chain, "--anchor", anchor, "--revocation", "off", "--at", "2026-11-30")
    assert code == 1 and err.startswith("hisp: expired:")


# -- --bundle: usage errors and fetch failures -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_bundle_file_that_does_not_exist_is_a_usage_error(files: Files, tmp_path: Path, kind: str) -> None:
    """Issue 3 (`hisp cert validate` exits 2 on usage errors), as for a missing --anchor file: a --bundle
    naming a local file that does not exist (or a directory) exits 2, the error one line naming the option
    and the path, without any validation done."""
    path = tmp_path / "no-such-bundle.p7b" if kind == "missing" else tmp_path
    code, out, err = run(files.cert("crl-good"), "--bundle", path, "--revocation", "off")
    assert code == 2 and not out
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "'--bundle'" in errors[0] and repr(str(path)) in errors[0]
    assert errors[0].endswith("does not exist." if kind == "missing" else "is a directory.")
    # the same shape as a missing --anchor file (click's own check)
    code, _, anchor_err = run(files.cert("crl-good"), "--anchor", tmp_path / "no-such-anchor.pem")
    assert code == 2 and "Error: Invalid value for '--anchor': File " in anchor_err
    assert errors[0].startswith("Error: Invalid value for '--bundle': File ")


def test_bundle_show_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    """TB-3 (`hisp trust bundle show FILE_OR_URL`), the same rule through the shared bundle reader: a missing
    local file exits 2 naming it."""
    path = tmp_path / "absent.p7b"
    result = CliRunner().invoke(main, ["trust", "bundle", "show", str(path)])
    assert result.exit_code == 2 and not result.stdout
    assert f"Invalid value for 'FILE_OR_URL': File {str(path)!r} does not exist." in result.stderr


@pytest.mark.parametrize("failure", ["404", "refused"])
def test_bundle_url_that_fails_to_fetch_exits_1(files: Files, failure: str) -> None:
    """TB-3 (bounded bundle fetch) with issue 3's exit statuses: a --bundle URL that fails to fetch is a
    failure of the operation, not a usage error: exit 1, one stderr line naming the URL."""
    url = files.server.url("/missing.p7b") if failure == "404" else f"http://127.0.0.1:{closed_port()}/b.p7b"
    code, out, err = run(files.cert("crl-good"), "--bundle", url, "--revocation", "off", "--timeout", 2)
    assert code == 1 and not out
    assert err.startswith("hisp: ") and url in err and len(err.strip().splitlines()) == 1
