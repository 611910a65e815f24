"""Timely-and-reliable tracking: tracked messages, their recipients' states and the tracking history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The check constraints list the values of :class:`hisp.core.tracking.Mode` and :class:`hisp.core.tracking.State`
as they were at this revision (a migration never follows later code).

Spec: issue 6 ("Delivery status is data"), DN-7..DN-10.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hisp.adapters.storage.columns import BigId, UtcDateTime

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``tracked_messages``, ``tracked_recipients`` and ``tracking_events`` with their indexes."""
    op.create_table(
        "tracked_messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("header_message_id", sa.Text(), nullable=False),
        sa.Column("correlation", sa.Text(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=False),
        sa.Column("deadline", UtcDateTime(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("consume_processed", sa.Boolean(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracked_messages"),
        sa.ForeignKeyConstraint(
            ["queue_id"], ["messages.id"], name="fk_tracked_messages_queue_id_messages", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("queue_id", name="uq_tracked_messages_queue_id"),
        sa.CheckConstraint("mode IN ('reliable', 'general')", name="ck_tracked_messages_mode"),
    )
    op.create_index("ix_tracked_messages_correlation", "tracked_messages", ["correlation"])
    op.create_index("ix_tracked_messages_due", "tracked_messages", ["complete", "deadline"])

    op.create_table(
        "tracked_recipients",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tracked_id", BigId, nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracked_recipients"),
        sa.ForeignKeyConstraint(
            ["tracked_id"], ["tracked_messages.id"], name="fk_tracked_recipients_tracked_id_tracked_messages",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("tracked_id", "key", name="uq_tracked_recipients_tracked_key"),
        sa.CheckConstraint(
            "state IN ('sent', 'delivered', 'processed', 'dispatched', 'failed', 'timed-out')",
            name="ck_tracked_recipients_state",
        ),
    )

    op.create_table(
        "tracking_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("tracked_id", BigId, nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("before", sa.String(16), nullable=False),
        sa.Column("after", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tracking_events"),
        sa.ForeignKeyConstraint(
            ["tracked_id"], ["tracked_messages.id"], name="fk_tracking_events_tracked_id_tracked_messages",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_tracking_events_tracked_id", "tracking_events", ["tracked_id"])


def downgrade() -> None:
    """Drop everything :func:`upgrade` created (the tracking state is lost; messages and queue are kept)."""
    for table in ("tracking_events", "tracked_recipients", "tracked_messages"):
        op.drop_table(table)
