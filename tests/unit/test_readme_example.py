"""README.md "Run your own HISP": the example can be satisfied with the project's own commands.

What this proves: the commands of the section's ``sh`` block (``hisp ca init``, ``hisp ca issue``, ``hisp user
add``, ``mkdir``/``cp``), run in an empty directory as a new user would, make every file its TOML block names;
with the ``[[user]]`` block replaced by what ``hisp user add`` printed (as the README says to do), the TOML
written beside them passes ``hisp config check`` (as FILE and as ``-c FILE``) unchanged otherwise. The
``[[trust.bundle]]`` URL is pointed at a loopback socket this test holds: ``config check`` must not fetch it.
The placeholder hash left in place is refused, naming the key.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from hisp.cli import main
from hisp.core.smtp_policy import verify_password

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "a long demo password for the ehr"
BUNDLE_URL = "https://bundles.example.org/accredited.p7b"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def example() -> tuple[str, str]:
    """The section's ``sh`` block (the commands) and its ``toml`` block (the configuration)."""
    section = _section(README.read_text(encoding="utf-8"), "Run your own HISP")
    (commands,) = _blocks(section, "sh")
    (toml,) = _blocks(section, "toml")
    return commands, toml


def _run_commands(commands: str, cwd: Path) -> str:
    """Run each command of the block in ``cwd``; ``hisp`` ones in-process. Returns ``hisp user add``'s output."""
    user_block = ""
    for line in commands.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            command, words = (words[: words.index("&&")], words[words.index("&&") + 1 :]) if "&&" in words \
                else (words, [])
            if command[0] == "hisp":
                result = CliRunner().invoke(main, command[1:], input=f"{PASSWORD}\n{PASSWORD}\n")
                assert result.exit_code == 0, f"{shlex.join(command)}: {result.output}"
                if command[1:3] == ["user", "add"]:
                    user_block = result.stdout
            else:
                assert command[0] in ("mkdir", "cp"), f"unexpected command in the README: {shlex.join(command)}"
                subprocess.run(command, cwd=cwd, check=True, timeout=30)
    assert user_block.startswith("[[user]]\n"), "the README's commands do not include `hisp user add`"
    return user_block


def _paste_user(toml: str, user_block: str) -> str:
    """Replace the example's ``[[user]]`` table by the one ``hisp user add`` printed (what the README says)."""
    start = toml.index("[[user]]")
    end = toml.index("\n[", start)
    return toml[:start] + user_block + toml[end:]


def test_readme_example_passes_config_check_with_files_made_by_hisp(
    example: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands, toml = example
    monkeypatch.chdir(tmp_path)
    user_block = _run_commands(commands, tmp_path)
    hashed = re.search(r'password_hash = "([^"]+)"', user_block)
    assert hashed is not None and verify_password(PASSWORD, hashed.group(1))

    named = re.findall(r'^(?:file|key|tls_cert|tls_key) = "([^"]+)"', toml, flags=re.MULTILINE)
    assert len(named) >= 8
    missing = [name for name in named if not (tmp_path / name).is_file()]
    assert missing == [], f"the README's commands do not make {missing}"

    with socket.socket() as trap:  # the bundle URL: a loopback port that records any connection
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        assert toml.count(BUNDLE_URL) == 1
        text = _paste_user(toml, user_block).replace(BUNDLE_URL, f"http://127.0.0.1:{trap.getsockname()[1]}/b.p7b")
        (tmp_path / "hisp.toml").write_text(text, encoding="utf-8")
        for args in (["hisp.toml"], ["-c", "hisp.toml"]):
            result = CliRunner().invoke(main, ["config", "check", *args])
            assert result.exit_code == 0, result.output
            assert "hisp.toml: valid" in result.stdout
            assert "domain direct.clinic.example: 2 addresses, 2 certificates" in result.stdout
            assert "user ehr: may send from dr.smith@direct.clinic.example" in result.stdout
            assert "submission: 0.0.0.0:587, STARTTLS" in result.stdout
            # our own CA is an anchor of our own domain: mail between our own users is not bounced as untrusted
            assert "  incoming anchors: anchors/clinic-ca.pem, anchors/partner-ca.pem" in result.stdout
            assert "  outgoing anchors: anchors/clinic-ca.pem, anchors/partner-ca.pem" in result.stdout
            assert "trust anchor" not in result.stderr
        with pytest.raises(BlockingIOError):
            trap.accept()  # config check did not fetch the bundle


def test_readme_placeholder_hash_is_refused_naming_the_key(
    example: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands, toml = example
    monkeypatch.chdir(tmp_path)
    _run_commands(commands, tmp_path)
    (tmp_path / "hisp.toml").write_text(toml, encoding="utf-8")  # the [[user]] block not replaced
    result = CliRunner().invoke(main, ["config", "check", "-c", "hisp.toml"])
    assert result.exit_code == 1
    assert "user[0].password_hash" in result.stderr and "make one with `hisp user add`" in result.stderr
