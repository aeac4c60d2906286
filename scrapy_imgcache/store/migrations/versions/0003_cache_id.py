"""A table of the cache's own facts: its id, which its blob folder is claimed with.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa

from scrapy_imgcache.store.migrations import steps

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.create_table(
        "imgcache_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )


def downgrade() -> None:
    steps.drop_table("imgcache_meta")
