"""the model server's monitoring data: sampled predictions (bounded) and hourly rollups

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "automl_monitor_predictions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("prediction_id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("signature", sa.JSON(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("feedback", sa.Integer()),
        sa.Column("feedback_at", sa.Float()),
        sa.UniqueConstraint("model", "prediction_id", name="uq_automl_monitor_predictions_id"),
    )
    op.create_index("ix_automl_monitor_predictions_model_seq", "automl_monitor_predictions",
                    ["model", "seq"])
    op.create_index("ix_automl_monitor_predictions_model_at", "automl_monitor_predictions",
                    ["model", "at"])
    op.create_table(
        "automl_monitor_models",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "automl_monitor_counts",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(32), primary_key=True),
        sa.Column("hour", sa.BigInteger(), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("bin", sa.Integer(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("automl_monitor_counts")
    op.drop_table("automl_monitor_models")
    op.drop_index("ix_automl_monitor_predictions_model_at", "automl_monitor_predictions")
    op.drop_index("ix_automl_monitor_predictions_model_seq", "automl_monitor_predictions")
    op.drop_table("automl_monitor_predictions")
