"""pinned source: the source a job was resolved to at submit (commit, files and their sizes, extra repos),
which its stages fetch by instead of asking the Hub again

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("source", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("source")
