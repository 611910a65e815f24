"""deploy/: static checks of what cannot run here (Docker is not available on the test machine).

- Dockerfile: its instructions parsed; base image, non-root user, exposed ports, health check, entry point,
  and that every file it copies from the build context exists.
- docker-compose.yml: valid YAML; hisp + PostgreSQL 16 with a named volume, config and certificates mounted
  read-only, secrets only in env files.
- hisp.service: ``systemd-analyze verify`` when it is installed (with ExecStart pointed at the installed
  ``hisp``, which is not at /opt/hisp here), and the required settings read with configparser.
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued instruction"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions((DEPLOY / "Dockerfile").read_text())


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_dockerfile_base_and_user(dockerfile: list[tuple[str, str]]) -> None:
    bases = [args.split()[0] for keyword, args in dockerfile if keyword == "FROM"]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    users = [args for keyword, args in _final_stage(dockerfile) if keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_ports_healthcheck_entrypoint(dockerfile: list[tuple[str, str]]) -> None:
    final = _final_stage(dockerfile)
    exposed = {port for keyword, args in final if keyword == "EXPOSE" for port in args.split()}
    assert {p if "/" in p else f"{p}/tcp" for p in exposed} == {"25/tcp", "587/tcp", "53/udp", "53/tcp"}
    (health,) = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    (entrypoint,) = [json.loads(args) for keyword, args in final if keyword == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for keyword, args in final if keyword == "CMD"]
    assert entrypoint == ["hisp"]
    assert cmd == ["serve", "-c", "/etc/hisp/hisp.toml"]


def test_dockerfile_copies_exist_in_the_build_context(dockerfile: list[tuple[str, str]]) -> None:
    sources = [
        source
        for keyword, args in dockerfile
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :].count("*") == 1  # everything excluded, then re-included one by one
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the build context (the repository root)"
        assert f"!{source}" in ignore, f"COPY {source}: excluded by deploy/Dockerfile.dockerignore"


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    loaded = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_services(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict) and set(services) == {"hisp", "db"}
    db, hisp = services["db"], services["hisp"]
    assert db["image"] == "postgres:16"
    volumes = compose["volumes"]
    assert isinstance(volumes, dict)
    named = {v.split(":")[0]: v.split(":")[1] for v in db["volumes"]}
    assert named.get("pgdata") == "/var/lib/postgresql/data" and "pgdata" in volumes
    assert "db" in hisp["depends_on"]
    assert (REPO / "deploy" / hisp["build"]["context"] / hisp["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    assert {"25:25", "587:587"} <= set(hisp["ports"])


def test_compose_config_and_certs_read_only(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    mounts = {v.split(":")[1]: v for v in services["hisp"]["volumes"]}
    assert mounts["/etc/hisp/hisp.toml"].endswith(":ro")
    assert mounts["/etc/hisp/certs"].endswith(":ro")
    assert "postgresql+psycopg://" in (DEPLOY / "docker-compose.yml").read_text()


def test_compose_secrets_only_in_env_files(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    for name, service in services.items():
        assert service.get("env_file"), f"{name}: no env_file"
        environment = service.get("environment") or {}
        keys = environment if isinstance(environment, dict) else [e.split("=")[0] for e in environment]
        inline = [k for k in keys if any(word in k.upper() for word in ("PASSWORD", "SECRET", "PASSPHRASE"))]
        assert not inline, f"{name}: secrets inline in the compose file: {inline}"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "hisp.service").read_text())
    return parser


def test_systemd_unit_settings() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "exec"
    assert service["User"] == "hisp"
    assert service["ExecStart"].split()[1:] == ["serve", "-c", "/etc/hisp/hisp.toml"]
    assert "-HUP" in service["ExecReload"].split() or "SIGHUP" in service["ExecReload"]
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/hisp" in service["ReadWritePaths"].split()
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    hisp = shutil.which("hisp")
    if hisp is None:
        pytest.skip("no hisp executable on PATH to stand in for /opt/hisp/bin/hisp")
    text = (DEPLOY / "hisp.service").read_text()
    assert "ExecStart=/opt/hisp/bin/hisp " in text
    unit = tmp_path / "hisp.service"
    unit.write_text(text.replace("ExecStart=/opt/hisp/bin/hisp ", f"ExecStart={hisp} "))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys and bad values, which it reports on stderr: none is allowed.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
