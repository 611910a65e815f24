"""Initial schema: messages, recipients, delivery attempts, notifications, append-only audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

Spec: issue 5 ("SQLAlchemy 2 models and Alembic migrations").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hisp.adapters.storage.columns import BigId, UtcDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_APPEND_ONLY = "audit_events is append-only"


def upgrade() -> None:
    """Create the tables, indexes and the audit log's append-only triggers."""
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("mail_from", sa.Text(), nullable=False),
        sa.Column("header_message_id", sa.Text(), nullable=True),
        sa.Column("size", BigId, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("spool_path", sa.Text(), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.CheckConstraint("direction IN ('incoming', 'outgoing')", name="ck_messages_direction"),
        sa.CheckConstraint("(content IS NULL) <> (spool_path IS NULL)", name="ck_messages_one_body"),
    )
    op.create_index("ix_messages_received_at", "messages", ["received_at"])
    op.create_index("ix_messages_header_message_id", "messages", ["header_message_id"])

    op.create_table(
        "recipients",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", BigId, nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("lease_until", UtcDateTime(), nullable=True),
        sa.Column("last_reply", sa.Text(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recipients"),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_recipients_message_id_messages", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("message_id", "address", name="uq_recipients_message_address"),
        sa.CheckConstraint(
            "state IN ('queued', 'in_flight', 'delivered', 'bounced', 'failed')", name="ck_recipients_state"
        ),
    )
    op.create_index("ix_recipients_due", "recipients", ["state", "next_attempt_at"])
    op.create_index("ix_recipients_lease", "recipients", ["state", "lease_until"])

    op.create_table(
        "delivery_attempts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("recipient_id", BigId, nullable=False),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("attempt", BigId, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("reply", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_attempts"),
        sa.ForeignKeyConstraint(
            ["recipient_id"], ["recipients.id"], name="fk_delivery_attempts_recipient_id_recipients",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_delivery_attempts_message_id_messages", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_delivery_attempts_message_id", "delivery_attempts", ["message_id"])

    op.create_table(
        "notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("recipient_id", BigId, nullable=True),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name="fk_notifications_message_id_messages", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["recipient_id"], ["recipients.id"], name="fk_notifications_recipient_id_recipients", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_notifications_status", "notifications", ["status"])
    op.create_index("ix_notifications_message_id", "notifications", ["message_id"])

    op.create_table(
        "audit_events",
        sa.Column("seq", BigId, autoincrement=True, nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(32), nullable=True),
        sa.Column("header_message_id", sa.Text(), nullable=True),
        sa.Column("mail_from", sa.Text(), nullable=True),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("fingerprints", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("remote", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_message_id", "audit_events", ["message_id"])

    # Append-only, enforced by the database itself: an UPDATE or DELETE of an audit event fails.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION hisp_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION hisp_audit_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{action.lower()} BEFORE {action} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    """Drop everything :func:`upgrade` created."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS hisp_audit_append_only()")
    for table in ("audit_events", "notifications", "delivery_attempts", "recipients", "messages"):
        op.drop_table(table)
