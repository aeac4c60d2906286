"""The collections and their key pairs, in the cache's database.

A *collection* is one bucket (at most one collection per bucket) seen through the VisualSnoop
API; its images are the images cached in that bucket (:mod:`.images`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import ImgCacheError
from ..store.base import utcnow, validate_bucket
from .keys import PUBLIC_KEY_RE, SecretBox, new_key_pair
from .models import CollectionImageRow, CollectionRow, RequestRow

MAX_NAME_LENGTH = 100


class CollectionError(ImgCacheError):
    """A collection cannot be created or changed as asked (name taken, bad bucket...)."""


@dataclass(frozen=True)
class Collection:
    row_id: int
    collection_id: str
    name: str
    bucket: str
    user: str
    public_key: str
    created_at: datetime
    key_created_at: datetime
    secret_encrypted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "collection_id": self.collection_id,
            "name": self.name,
            "bucket": self.bucket,
            "user": self.user,
            "public_key": self.public_key,
            "created_at": self.created_at.isoformat(),
            "key_created_at": self.key_created_at.isoformat(),
            "secret_storage": "encrypted" if self.secret_encrypted else "plain",
        }


def _collection(row: CollectionRow) -> Collection:
    return Collection(
        row_id=row.id,
        collection_id=row.ref,
        name=row.name,
        bucket=row.bucket,
        user=row.owner,
        public_key=row.public_key,
        created_at=row.created_at,
        key_created_at=row.key_created_at,
        secret_encrypted=row.secret.startswith("fernet:"),
    )


class Registry:
    """Collections and their key pairs, in the cache's database (blocking)."""

    def __init__(self, engine: Engine, box: SecretBox | None = None) -> None:
        self.engine = engine
        self.box = box or SecretBox.from_env()
        self._writer = engine.execution_options(imgcache_write=True)

    def create(self, name: str, bucket: str | None = None, user: str = "") -> tuple[Collection, str]:
        """A new collection; returns it and its secret key (the only time it is shown)."""
        name = _check_name(name)
        bucket = name if bucket is None else bucket
        try:
            validate_bucket(bucket)
        except ValueError as exc:
            hint = " (give one with --bucket)" if bucket == name else ""
            raise CollectionError(f"{exc}{hint}") from None
        if len(user) > 255:
            raise CollectionError("the user label is over 255 characters")
        public, secret = new_key_pair()
        now = utcnow()
        values = {
            "ref": secrets.token_hex(8),
            "name": name,
            "bucket": bucket,
            "owner": user,
            "public_key": public,
            "secret": self.box.seal(secret),
            "created_at": now,
            "key_created_at": now,
        }
        with self._writer.begin() as conn:
            taken = conn.execute(
                select(CollectionRow.name, CollectionRow.bucket).where(
                    or_(CollectionRow.name == name, CollectionRow.bucket == bucket)
                )
            ).first()
            if taken is not None:
                raise CollectionError(f"collection {taken.name!r} already exists over bucket {taken.bucket!r}")
            try:
                conn.execute(insert(CollectionRow).values(**values))
            except IntegrityError as exc:  # a concurrent create won
                raise CollectionError(f"collection {name!r} or bucket {bucket!r} is already taken") from exc
        found = self.get(name)
        assert found is not None
        return found, secret

    def list(self) -> list[Collection]:
        with Session(self.engine) as session:
            return [_collection(r) for r in session.scalars(select(CollectionRow).order_by(CollectionRow.name))]

    def get(self, name: str) -> Collection | None:
        return self._one(CollectionRow.name == name)

    def rotate_key(self, name: str) -> tuple[Collection, str] | None:
        """A fresh key pair; the old one stops working at once."""
        public, secret = new_key_pair()
        with self._writer.begin() as conn:
            done = conn.execute(
                update(CollectionRow)
                .where(CollectionRow.name == name)
                .values(public_key=public, secret=self.box.seal(secret), key_created_at=utcnow())
            ).rowcount
        found = self.get(name) if done else None
        return None if found is None else (found, secret)

    def delete(self, name: str) -> Collection | None:
        """Forget the collection and its image ids; the images stay cached in the bucket."""
        found = self.get(name)
        if found is None:
            return None
        with self._writer.begin() as conn:
            conn.execute(delete(CollectionImageRow).where(CollectionImageRow.collection_id == found.row_id))
            conn.execute(delete(CollectionRow).where(CollectionRow.id == found.row_id))
        return found

    def by_public_key(self, public_key: str) -> tuple[Collection, str] | None:
        """The collection a public key opens, with its secret in clear (for HMAC)."""
        if not PUBLIC_KEY_RE.match(public_key):
            return None
        with Session(self.engine) as session:
            row = session.scalar(select(CollectionRow).where(CollectionRow.public_key == public_key))
            if row is None:
                return None
            return _collection(row), self.box.open(row.secret)

    def remember_request(self, digest: str, expires_at: datetime, *more: str) -> bool:
        """Record an accepted state-changing request by ``digest`` (and the ``more`` digests it
        is also known by, in the same transaction); False when ``digest`` was recorded already."""
        try:
            with self._writer.begin() as conn:
                conn.execute(delete(RequestRow).where(RequestRow.expires_at < utcnow()))
                for each in (digest, *more):
                    conn.execute(insert(RequestRow).values(digest=each, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def remembers(self, digest: str) -> bool:
        """Whether an accepted request was recorded by ``digest`` (and has not expired)."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(RequestRow.digest).where(RequestRow.digest == digest, RequestRow.expires_at >= utcnow())
            ).first()
        return found is not None

    def _one(self, cond: Any) -> Collection | None:
        with Session(self.engine) as session:
            row = session.scalar(select(CollectionRow).where(cond))
            return None if row is None else _collection(row)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise CollectionError(f"bad collection name {name!r}: 1 to {MAX_NAME_LENGTH} printable characters")
    return name
