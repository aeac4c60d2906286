"""What robust near-duplicate search keeps per image: its verification signature and the extra
hashes the similarity index holds (docs/near-duplicates.md), and how a near-duplicate found when
it was stored matched (NULL for images stored before), and an index to find an image's near-duplicate links.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa

from scrapy_imgcache.store.migrations import steps

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.add_column("imgcache_images", sa.Column("signature", sa.LargeBinary, nullable=True))
    steps.add_column("imgcache_images", sa.Column("extra_hashes", sa.LargeBinary, nullable=True))
    steps.add_column("imgcache_images", sa.Column("similar_match", sa.String(16), nullable=True))
    steps.create_index("ix_imgcache_images_similar_to", "imgcache_images", ["bucket", "similar_to"])


def downgrade() -> None:
    steps.drop_index("ix_imgcache_images_similar_to", "imgcache_images")
    steps.drop_column("imgcache_images", "similar_match")
    steps.drop_column("imgcache_images", "extra_hashes")
    steps.drop_column("imgcache_images", "signature")
