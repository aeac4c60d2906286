"""Helpers shared by tests of several modules."""

from __future__ import annotations

from pathlib import Path

from scrapy_imgcache.blobs import OWNER_KEY


def blob_files(folder: Path) -> list[Path]:
    """The files a local blob store holds, its ownership marker aside."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != OWNER_KEY)
