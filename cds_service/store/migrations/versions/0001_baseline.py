"""Baseline: the feedback, card issue and JWT replay tables exactly as ``create_all`` made them.

Databases created before migrations existed already have these tables; the store detects that and
stamps this revision instead of running it, so no row is touched.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cds_service.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.String, nullable=False),
        sa.Column("card_uuid", sa.String, nullable=False),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("reason_system", sa.String, nullable=False),
        sa.Column("reason_code", sa.String, nullable=False),
        sa.Column("reason_display", sa.String, nullable=True),
        sa.Column("accepted_suggestions", sa.Text, nullable=False),
        sa.Column("user_comment", sa.Text, nullable=True),
        sa.Column("outcome_timestamp", UTCDateTime, nullable=False),
        sa.Column("rule_id", sa.String, nullable=True),
        sa.Column("rule_version", sa.String, nullable=True),
        sa.UniqueConstraint("card_uuid", "outcome", "reason_system", "reason_code", "accepted_suggestions",
                            name="uq_feedback_natural_key"),
    )
    op.create_table(
        "card_issue",
        sa.Column("card_uuid", sa.String, primary_key=True),
        sa.Column("hook_instance", sa.String, nullable=False),
        sa.Column("service_id", sa.String, nullable=False),
        sa.Column("rule_id", sa.String, nullable=False),
        sa.Column("rule_version", sa.String, nullable=False),
        sa.Column("indicator", sa.String, nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_card_issue_hook_instance", "card_issue", ["hook_instance"])
    op.create_index("ix_card_issue_issued_at", "card_issue", ["issued_at"])
    op.create_table(
        "jwt_replay",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("jti", sa.Text, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_jwt_replay_expires_at", "jwt_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_table("jwt_replay")
    op.drop_table("card_issue")
    op.drop_table("feedback")
