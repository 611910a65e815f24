"""What every ``hisp`` sub-command shares: clean failures and the ``--at`` time.

Exit status everywhere: 0 success, 1 failure of the operation (one stderr line says why), 2 usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click

from hisp.errors import HispError

__all__ = ["fail_cleanly", "iso_option", "parse_time"]

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(func: F) -> F:
    """Turn a HispError or an OSError into one stderr line and exit status 1 (never a traceback).

    :param func: a click command callback.
    :returns: the wrapped callback.
    """

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HispError as exc:
            click.echo(f"hisp: {exc.message}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"hisp: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def parse_time(value: str | None, option: str = "--at") -> datetime:
    """An ISO 8601 time from the command line, aware; no zone means UTC; ``None`` means now.

    :param value: e.g. ``"2026-11-30T12:00:00"`` or ``"2026-11-30T07:00:00-05:00"``.
    :param option: the option's name, for the usage error.
    :returns: an aware datetime.
    :raises click.BadParameter: not ISO 8601 (exit status 2).
    """
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=option) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def iso_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A click callback parsing an optional ISO 8601 option (``None`` stays ``None``)."""
    if value is None:
        return None
    return parse_time(value, "/".join(param.opts) if param.opts else "--at")
