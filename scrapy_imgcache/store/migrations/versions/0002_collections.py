"""VisualSnoop collections: key pairs, the ids images were added under, accepted requests;
and an index listing a bucket's images newest first.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa

from scrapy_imgcache.store.base import BUCKET_LENGTH
from scrapy_imgcache.store.migrations import steps
from scrapy_imgcache.store.models import CaseSensitive, RowId, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.create_table(
        "imgcache_collections",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("ref", sa.String(16), nullable=False, unique=True),
        sa.Column("name", CaseSensitive, nullable=False, unique=True),
        sa.Column("bucket", sa.String(BUCKET_LENGTH), nullable=False, unique=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("public_key", sa.String(40), nullable=False, unique=True),
        sa.Column("secret", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("key_created_at", UTCDateTime, nullable=False),
        sqlite_autoincrement=True,
    )
    steps.create_table(
        "imgcache_collection_images",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column(
            "collection_id",
            RowId,
            sa.ForeignKey("imgcache_collections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("image_id", CaseSensitive, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("image_time", UTCDateTime, nullable=False),
        sa.UniqueConstraint("collection_id", "image_id", name="uq_imgcache_collection_images_id"),
        sqlite_autoincrement=True,
    )
    steps.create_index(
        "ix_imgcache_collection_images_hash", "imgcache_collection_images", ["collection_id", "content_hash"]
    )
    steps.create_index(
        "ix_imgcache_collection_images_time", "imgcache_collection_images", ["collection_id", "image_time"]
    )
    steps.create_index("ix_imgcache_images_bucket_created", "imgcache_images", ["bucket", "created_at", "id"])
    steps.create_table(
        "imgcache_collection_requests",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    steps.create_index("ix_imgcache_collection_requests_expires", "imgcache_collection_requests", ["expires_at"])


def downgrade() -> None:
    steps.drop_table("imgcache_collection_requests")
    steps.drop_table("imgcache_collection_images")
    steps.drop_table("imgcache_collections")
    steps.drop_index("ix_imgcache_images_bucket_created", "imgcache_images")
