"""Column types shared by the models and the migrations.

Spec: DESIGN.md section 2 (storage: SQLAlchemy 2 models).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["BigId", "UtcDateTime"]

#: 64-bit integer ids; plain INTEGER on SQLite, where only ``INTEGER PRIMARY KEY`` auto-increments.
BigId: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC :class:`~datetime.datetime`, stored as a naive UTC timestamp.

    Naive UTC in the database keeps comparisons (``next_attempt_at <= now``) correct on SQLite, which stores
    timestamps as text, and identical on PostgreSQL (``timestamp without time zone``). Values read back are
    aware (UTC).

    :raises ValueError: (when binding) a naive datetime: its zone would be a guess.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to naive UTC for storage.

        :raises ValueError: the datetime is naive.
        """
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store: pass an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Mark a stored naive UTC timestamp as UTC."""
        return None if value is None else value.replace(tzinfo=UTC)
