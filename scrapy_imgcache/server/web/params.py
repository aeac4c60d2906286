"""The web page's parameters, checked: a refusal is a page (:class:`.render.WebError`)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Query

from ...store.base import BUCKET_RE, HASH_RE, MAX_DISTANCE
from .render import WebError

DEFAULT_DISTANCE = 8
#: a query parameter taken as text and checked here, so that a bad one gets a page, not JSON
Text = Annotated[str | None, Query(max_length=8192)]


def bucket_of(value: str | None) -> str:
    bucket = value or ""
    if not BUCKET_RE.match(bucket):
        raise WebError(400, "A bucket is up to 64 of A-Z a-z 0-9 . _ -")
    return bucket


def distance_of(value: str | None) -> int:
    if not value:
        return DEFAULT_DISTANCE
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_DISTANCE:
        raise WebError(400, f"The distance is a number of bits from 0 to {MAX_DISTANCE}.")
    return int(value)


def hash_of(value: str) -> str:
    if not HASH_RE.match(value):
        raise WebError(404, "There is no such image: a content hash is 64 lowercase hex digits.")
    return value


def safe_next(base: str, target: str | None) -> str:
    """Where to go after logging in: a page of this site, never another host (no open redirect)."""
    if target and target.startswith(base + "/") and re.fullmatch(r"[A-Za-z0-9/._~?&=%+:@-]*", target):
        return target
    return base + "/"
