"""The cache's tables (SQLAlchemy 2.0 typed models).

One image row per (bucket, content hash); many URL records per image: the same bytes seen
at many URLs, by many spiders, and a URL whose image changed keeps one record per version.
Tables are prefixed ``imgcache_`` so the cache can live in a database shared with other
applications. The schema is versioned with Alembic (``scrapy_imgcache/store/migrations``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .base import BUCKET_LENGTH

if TYPE_CHECKING:
    from sqlalchemy import Table

#: BIGINT everywhere, but INTEGER on SQLite so that the key is the rowid (AUTOINCREMENT
#: keeps ids of deleted rows from being reused, which the similarity index relies on).
RowId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend (microseconds kept)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):  # type: ignore[no-untyped-def]
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    if TYPE_CHECKING:  # every model here declares a __tablename__, so it is mapped to a Table
        __table__: ClassVar[Table]


class ImageRow(Base):
    __tablename__ = "imgcache_images"
    __table_args__ = (
        UniqueConstraint("bucket", "content_hash", name="uq_imgcache_images_bucket_hash"),
        Index("ix_imgcache_images_hash", "content_hash"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(BUCKET_LENGTH))
    content_hash: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    perceptual_hash: Mapped[str | None] = mapped_column(String(16))
    #: the same hash as a signed 64-bit integer, for the in-memory similarity index
    phash_int: Mapped[int | None] = mapped_column(BigInteger)
    hash_algorithm: Mapped[str] = mapped_column(String(16))
    flat: Mapped[bool] = mapped_column(Boolean, default=False)
    blob_key: Mapped[str] = mapped_column(String(160))
    original_filename: Mapped[str | None] = mapped_column(String(255))
    client_name: Mapped[str] = mapped_column(String(255))
    lookup_time: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: near-duplicate found when it was stored (annotate mode): the nearest image's hash
    similar_to: Mapped[str | None] = mapped_column(String(64))
    similar_distance: Mapped[int | None] = mapped_column(Integer)
    #: ... and how it matched (``cropped``, ``mirrored``…; migration 0004)
    similar_match: Mapped[str | None] = mapped_column(String(16))
    #: robust near-duplicate search (migration 0004): the verification signature, and the extra
    #: hashes the similarity index holds, packed (see ``index.pack_hashes``)
    signature: Mapped[bytes | None] = mapped_column(LargeBinary)
    extra_hashes: Mapped[bytes | None] = mapped_column(LargeBinary)


class UrlRow(Base):
    __tablename__ = "imgcache_urls"
    __table_args__ = (
        # one record per (image, URL, client): seeing it again refreshes the record
        UniqueConstraint("image_id", "url_hash", "client_name", name="uq_imgcache_urls_image_url_client"),
        # exact-URL lookup; a hash of the URL keeps the key within MySQL's length limit
        Index("ix_imgcache_urls_lookup", "bucket", "url_hash", "lookup_time"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("imgcache_images.id", ondelete="CASCADE"))
    bucket: Mapped[str] = mapped_column(String(BUCKET_LENGTH))
    url: Mapped[str] = mapped_column(Text)
    url_hash: Mapped[str] = mapped_column(String(64))
    client_name: Mapped[str] = mapped_column(String(255))
    lookup_time: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    etag: Mapped[str | None] = mapped_column(String(255))
    last_modified: Mapped[str | None] = mapped_column(String(64))
    #: "exact" or "similar" when this URL's bytes were not stored again; None for the first
    duplicate: Mapped[str | None] = mapped_column(String(8))
    saved_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class MetaRow(Base):
    """Facts about the cache itself, by name (``cache_id``: the id its blob folder is claimed with)."""

    __tablename__ = "imgcache_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


# -- column types the VisualSnoop tables (scrapy_imgcache.visualsnoop.models) share ------

MAX_ID_LENGTH = 100

#: ids and names compare byte for byte (MySQL's default collation would fold case)
CaseSensitive = String(MAX_ID_LENGTH).with_variant(
    mysql.VARCHAR(MAX_ID_LENGTH, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


#: the bucket's images newest first, for the collection listing (created by migration 0002)
Index("ix_imgcache_images_bucket_created", ImageRow.bucket, ImageRow.created_at, ImageRow.id)
#: the images recorded as near-duplicates of one, for ``near_cached`` (migration 0004)
Index("ix_imgcache_images_similar_to", ImageRow.bucket, ImageRow.similar_to)
