"""the job row counts paused trials (freeze-thaw) apart from running ones

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a NOT NULL column with ALTER TABLE alone
    with op.batch_alter_table("automl_jobs") as batch:
        batch.add_column(sa.Column("n_paused", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("automl_jobs") as batch:
        batch.drop_column("n_paused")
