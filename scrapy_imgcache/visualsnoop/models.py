"""The VisualSnoop tables: collections and their key pairs, the ids images were added under,
the state-changing requests already accepted (created by migration 0002 in
``scrapy_imgcache/store/migrations``; declared on the store's ``Base``, so one metadata holds
every table of the cache)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..store.base import BUCKET_LENGTH
from ..store.models import Base, CaseSensitive, RowId, UTCDateTime


class CollectionRow(Base):
    __tablename__ = "imgcache_collections"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    #: the ``collection_id`` the API answers with (random, so row counts do not leak)
    ref: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(CaseSensitive, unique=True)
    bucket: Mapped[str] = mapped_column(String(BUCKET_LENGTH), unique=True)
    owner: Mapped[str] = mapped_column(String(255))
    public_key: Mapped[str] = mapped_column(String(40), unique=True)
    #: ``fernet:<token>`` or ``plain:<secret>`` (see :class:`SecretBox`)
    secret: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CollectionImageRow(Base):
    __tablename__ = "imgcache_collection_images"
    __table_args__ = (
        UniqueConstraint("collection_id", "image_id", name="uq_imgcache_collection_images_id"),
        Index("ix_imgcache_collection_images_hash", "collection_id", "content_hash"),
        Index("ix_imgcache_collection_images_time", "collection_id", "image_time"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("imgcache_collections.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(CaseSensitive)
    content_hash: Mapped[str] = mapped_column(String(64))
    image_time: Mapped[datetime] = mapped_column(UTCDateTime)


class RequestRow(Base):
    """A state-changing request already accepted, kept while its ``Date`` is inside the window."""

    __tablename__ = "imgcache_collection_requests"
    __table_args__ = (Index("ix_imgcache_collection_requests_expires", "expires_at"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
