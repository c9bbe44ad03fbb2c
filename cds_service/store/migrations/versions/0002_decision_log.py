"""Decision log (every rule on every hook call, PHI-free) and snoozes learnt from feedback.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cds_service.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "decision_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("logged_at", UTCDateTime, nullable=False),
        sa.Column("service_id", sa.String, nullable=False),
        sa.Column("hook", sa.String, nullable=False),
        sa.Column("hook_instance", sa.String, nullable=False),
        sa.Column("rule_set", sa.String, nullable=False),
        sa.Column("rule_set_version", sa.String, nullable=False),
        sa.Column("rule_id", sa.String, nullable=False),
        sa.Column("rule_version", sa.String, nullable=False),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("indicator", sa.String, nullable=True),
        sa.Column("card_uuid", sa.String, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("missing", sa.Text, nullable=True),
        sa.Column("issuer", sa.String, nullable=True),
        sa.Column("tenant", sa.String, nullable=True),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("user_hash", sa.String(64), nullable=True),
        sa.Column("drafts", sa.Text, nullable=True),
        sa.Column("evidence", sa.Text, nullable=True),
    )
    op.create_index("ix_decision_log_logged_at", "decision_log", ["logged_at"])
    op.create_index("ix_decision_log_rule", "decision_log", ["rule_id", "logged_at"])
    op.create_index("ix_decision_log_patient_rule", "decision_log", ["patient_hash", "rule_id"])
    op.create_index("ix_decision_log_card_uuid", "decision_log", ["card_uuid"])
    op.create_index("ix_decision_log_hook_instance", "decision_log", ["hook_instance"])
    op.create_table(
        "snooze",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.String, nullable=False),
        sa.Column("rule_version", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("reason_code", sa.String, nullable=False),
        sa.Column("indicator", sa.String, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("card_uuid", sa.String, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("until", UTCDateTime, nullable=False),
        sa.UniqueConstraint("card_uuid", "kind", name="uq_snooze_card_kind"),
    )
    op.create_index("ix_snooze_patient_rule", "snooze", ["patient_hash", "rule_id"])
    op.create_index("ix_snooze_until", "snooze", ["until"])


def downgrade() -> None:
    op.drop_table("snooze")
    op.drop_table("decision_log")
