"""``hisp user add``: the printed [[user]] block parses as TOML, its hash verifies the password (and only it),
the password never appears in the output, and refusals have the documented exit statuses."""

from __future__ import annotations

import tomllib

import pytest
from click.testing import CliRunner, Result

from hisp.cli import main
from hisp.core.smtp_policy import verify_password

PASSWORD = "correct horse battery staple"
SMITH = "dr.smith@direct.clinic.example"
FRONT = "front.desk@direct.clinic.example"


def _add(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["user", "add", *args], input=stdin)


def _block(result: Result) -> dict[str, object]:
    users = tomllib.loads(result.stdout)["user"]
    assert isinstance(users, list) and len(users) == 1
    user = users[0]
    assert isinstance(user, dict)
    return user


def test_password_stdin_prints_a_block_whose_hash_verifies() -> None:
    result = _add("smith", "--address", SMITH, "--address", "Front Desk <Front.Desk@Direct.Clinic.Example>",
                  "--address", SMITH, "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    user = _block(result)
    assert user["name"] == "smith"
    assert user["addresses"] == [SMITH, FRONT]  # normalised, duplicates once
    stored = user["password_hash"]
    assert isinstance(stored, str) and stored.startswith("scrypt$")
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "x", stored)
    assert not verify_password("", stored)
    assert PASSWORD not in result.output
    assert result.stdout.startswith("[[user]]\n")


def test_prompt_asks_twice_on_stderr_and_the_block_alone_is_on_stdout() -> None:
    result = _add("smith", "--address", SMITH, stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("Password") == 1 and "Repeat for confirmation" in result.stderr
    assert verify_password(PASSWORD, str(_block(result)["password_hash"]))
    assert PASSWORD not in result.output


def test_prompt_mismatch_asks_again() -> None:
    other = "another long passphrase"
    result = _add("smith", "--address", SMITH, stdin=f"{PASSWORD}\n{other}\n{other}\n{other}\n")
    assert result.exit_code == 0, result.output
    assert "do not match" in result.stderr
    assert verify_password(other, str(_block(result)["password_hash"]))


def test_two_salts_two_hashes() -> None:
    first = _block(_add("smith", "--address", SMITH, "--password-stdin", stdin=PASSWORD))["password_hash"]
    second = _block(_add("smith", "--address", SMITH, "--password-stdin", stdin=PASSWORD))["password_hash"]
    assert first != second


def test_line_ending_is_not_part_of_the_password() -> None:
    result = _add("smith", "--address", SMITH, "--password-stdin", stdin=PASSWORD + "\r\nsecond line\n")
    assert result.exit_code == 0
    assert verify_password(PASSWORD, str(_block(result)["password_hash"]))


def test_name_with_quotes_round_trips_through_toml() -> None:
    result = _add('o"brien\\x', "--address", SMITH, "--password-stdin", stdin=PASSWORD)
    assert result.exit_code == 0, result.output
    assert _block(result)["name"] == 'o"brien\\x'


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [("", "standard input is empty"), ("\n", "empty"), ("short pass1\n", "too short"), ("a" * 1025, "too long"),
     ("twelve chars\x00\n", "NUL")],
    ids=["no-input", "empty", "11-chars", "too-long", "nul"],
)
def test_refused_passwords_exit_1_and_print_nothing(stdin: str, reason: str) -> None:
    result = _add("smith", "--address", SMITH, "--password-stdin", stdin=stdin)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert reason in result.stderr


def test_empty_prompted_password_exits_1() -> None:
    result = _add("smith", "--address", SMITH, stdin="\n\n")
    assert result.exit_code == 1
    assert "empty" in result.stderr
    assert "[[user]]" not in result.stdout


def test_twelve_characters_is_enough() -> None:
    assert _add("smith", "--address", SMITH, "--password-stdin", stdin="x" * 12).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [["smith"], ["smith", "--address", "not-an-address"], ["smith", "--address", "a@b.example, c@d.example"],
     ["two words", "--address", SMITH], ["", "--address", SMITH]],
    ids=["no-address", "bad-address", "two-addresses", "space-in-name", "empty-name"],
)
def test_usage_errors_exit_2_before_asking_for_a_password(args: list[str]) -> None:
    result = _add(*args, "--password-stdin", stdin=PASSWORD)
    assert result.exit_code == 2
    assert result.stdout == ""


def test_demo_password_is_letters_and_digits_so_swaks_can_take_it_as_an_argument() -> None:
    """A generated password beginning with ``-`` made swaks read it as an option (CI failure of stop 7)."""
    from hisp.commands.demo import demo_password

    passwords = {demo_password() for _ in range(500)}
    assert len(passwords) == 500
    assert all(len(p) == 16 and p.isascii() and p.isalnum() for p in passwords)
