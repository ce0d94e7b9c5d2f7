"""the job's study id (dashboard links without a study lookup) and its driver restarts

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a NOT NULL column with ALTER TABLE alone
    with op.batch_alter_table("automl_jobs") as batch:
        batch.add_column(sa.Column("study_id", sa.Integer()))
        batch.add_column(sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("automl_jobs") as batch:
        batch.drop_column("restarts")
        batch.drop_column("study_id")
