"""README.md "Set-up": two commands, the second of which is exactly what CI runs (guide: "run the same test
command the README gives"), and the peers' install script they rely on."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)]


def test_readme_setup_is_two_one_line_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), commands
    assert commands[0].startswith("pip install") and commands[0].endswith("hisp demo")
    assert commands[1].endswith("python3 -m pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert _setup_commands()[1] in ci


def test_install_script_is_executable_and_installs_every_peer_the_readme_names() -> None:
    script = ROOT / "scripts" / "install-test-peers"
    assert os.access(script, os.X_OK)
    text = script.read_text(encoding="utf-8")
    assert "DEBIAN_FRONTEND=noninteractive" in text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"loopback \(`(.*?)`", readme, flags=re.DOTALL)
    assert listed is not None
    for package in listed.group(1).split():
        assert package in text, package
