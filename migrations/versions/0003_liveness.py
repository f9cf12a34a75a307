"""liveness: the task a job was sent as, when, how often it was revived; stage heartbeats and
who runs them

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("task_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revivals", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("stage_results") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("runner", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stage_results") as batch:
        batch.drop_column("runner")
        batch.drop_column("heartbeat_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("revivals")
        batch.drop_column("enqueued_at")
        batch.drop_column("task_id")
