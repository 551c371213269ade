"""instances.url: how the other instances reach one (listen-in on the calls it carries)

Revision ID: 0011_instance_url
Revises: 0010_qa
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_instance_url"
down_revision = "0010_qa"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("url", sa.String(256), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("url")
