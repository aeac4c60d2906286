"""The first schema: images and their URL records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa

from scrapy_imgcache.store.base import BUCKET_LENGTH
from scrapy_imgcache.store.migrations import steps
from scrapy_imgcache.store.models import RowId, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.create_table(
        "imgcache_images",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column("bucket", sa.String(BUCKET_LENGTH), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer),
        sa.Column("height", sa.Integer),
        sa.Column("perceptual_hash", sa.String(16)),
        sa.Column("phash_int", sa.BigInteger),
        sa.Column("hash_algorithm", sa.String(16), nullable=False),
        sa.Column("flat", sa.Boolean, nullable=False),
        sa.Column("blob_key", sa.String(160), nullable=False),
        sa.Column("original_filename", sa.String(255)),
        sa.Column("client_name", sa.String(255), nullable=False),
        sa.Column("lookup_time", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("similar_to", sa.String(64)),
        sa.Column("similar_distance", sa.Integer),
        sa.UniqueConstraint("bucket", "content_hash", name="uq_imgcache_images_bucket_hash"),
        sqlite_autoincrement=True,
    )
    steps.create_index("ix_imgcache_images_hash", "imgcache_images", ["content_hash"])
    steps.create_table(
        "imgcache_urls",
        sa.Column("id", RowId, primary_key=True, autoincrement=True),
        sa.Column(
            "image_id",
            RowId,
            sa.ForeignKey("imgcache_images.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("bucket", sa.String(BUCKET_LENGTH), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("url_hash", sa.String(64), nullable=False),
        sa.Column("client_name", sa.String(255), nullable=False),
        sa.Column("lookup_time", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("etag", sa.String(255)),
        sa.Column("last_modified", sa.String(64)),
        sa.Column("duplicate", sa.String(8)),
        sa.Column("saved_bytes", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("image_id", "url_hash", "client_name", name="uq_imgcache_urls_image_url_client"),
        sqlite_autoincrement=True,
    )
    steps.create_index("ix_imgcache_urls_lookup", "imgcache_urls", ["bucket", "url_hash", "lookup_time"])


def downgrade() -> None:
    steps.drop_table("imgcache_urls")
    steps.drop_table("imgcache_images")
