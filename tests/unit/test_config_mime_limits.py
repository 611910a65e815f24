"""``[limits.mime]``: the security agent's MIME bounds from the configuration (issue 2, "bounded parsing: ...
caps from configuration"; DESIGN.md section 6.3)."""

from __future__ import annotations

import pytest

from hisp.config import parse_config
from hisp.core.mime import MimeLimits
from hisp.errors import ConfigError


def test_defaults_are_the_agents_defaults() -> None:
    assert parse_config("").limits.mime == MimeLimits()


def test_values_are_read() -> None:
    text = """
[limits]
max_message_size = 1000000
[limits.mime]
max_bytes = 2000000
max_depth = 8
max_parts = 50
max_header_bytes = 65536
max_headers = 200
"""
    assert parse_config(text).limits.mime == MimeLimits(
        max_message_bytes=2_000_000, max_depth=8, max_parts=50, max_header_bytes=65536, max_headers=200
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[limits.mime]\nmax_depth = 0", "limits.mime.max_depth", "between 1 and"),
        ("[limits.mime]\nmax_parts = 'many'", "limits.mime.max_parts", "an integer"),
        ("[limits.mime]\nmax_part = 5", "limits.mime.max_part", "unknown key"),
        ("[limits.mime]\nmax_bytes = 1000", "listeners.backbone.max_message_size", "more than \\[limits.mime\\]"),
    ],
)
def test_errors_name_the_key(text: str, key: str, problem: str) -> None:
    """A bad bound is refused at load, naming its key; so is a listener that would accept messages larger than
    the agent may parse (they would be accepted, then refused by every worker)."""
    full = text + "\n[listeners.backbone]\nport = 0\n" if "max_bytes" in text else text
    with pytest.raises(ConfigError, match=rf"hisp\.toml: {key}: .*{problem}"):
        parse_config(full, source="hisp.toml")
