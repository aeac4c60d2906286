"""Fuzz of both HTTP APIs' uploads against a real server: images of every Pillow mode and file
format, whole, truncated or with bytes flipped, sent through the published clients
(``dwilson-imgcache-client`` to ``POST /images``, ``visualsnoop`` to ``POST /image/ID`` and
``POST /search``). Every answer is a 2xx or a 4xx in its API's error shape, never a 5xx, and
both APIs accept or refuse the same bytes alike."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from imgcache_client import ImgCacheClient
from PIL import Image
from visualsnoop.models import Collection

from tests.helpers import FORMATS, MODES, encoded_in_mode

from .vsnoop import Deployment, deployed

EXAMPLES = 80
#: the (mode, format) pairs Pillow can write
WRITABLE = [(m, f) for m in MODES for f in FORMATS if encoded_in_mode(Image.new("RGB", (4, 3)), m, f) is not None]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    with deployed("sqlite", tmp_path_factory.mktemp("fuzz")) as found:
        yield found


@pytest.fixture(scope="module")
def clients(deployment) -> Iterator[tuple[ImgCacheClient, Collection, list[requests.Response]]]:
    """The two published clients; the VisualSnoop one records the HTTP responses it got."""
    seen: list[requests.Response] = []
    collection = deployment.client(deployment.create())
    collection.session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response))
    with ImgCacheClient(deployment.server.url, timeout=30.0) as imgcache:
        yield imgcache, collection, seen


@st.composite
def uploads(draw: st.DrawFn) -> bytes:
    mode, fmt = draw(st.sampled_from(WRITABLE))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    data = encoded_in_mode(img, mode, fmt, transparent=draw(st.booleans()))
    assume(data is not None)
    assert data is not None
    damage = draw(st.sampled_from(["none", "none", "truncated", "flipped", "both"]))
    if damage in ("truncated", "both"):
        data = data[: draw(st.integers(0, len(data)))]
    if damage in ("flipped", "both") and data:
        flipped = bytearray(data)
        for at in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
            flipped[at] ^= draw(st.integers(1, 255))
        data = bytes(flipped)
    return data


def imgcache_answer(client: ImgCacheClient, data: bytes) -> tuple[int, Any]:
    url = f"https://fuzz.example/{uuid.uuid4().hex}.img"
    try:
        entry = client.store(url, data, "fuzzer", filename="upload")
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code, exc.response.json()
    return 200, entry  # 201 or 200 (a duplicate): the client does not say which


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=uploads())
def test_uploads_are_stored_or_refused_in_the_apis_shape(clients, data):
    imgcache, collection, seen = clients

    status, body = imgcache_answer(imgcache, data)
    event(f"POST /images: {f'{status} ' + body['error'] if status >= 300 else '2xx'}")
    assert status < 500, body
    if status < 300:
        assert body["file_size_bytes"] == len(data) and len(body["content_hash"]) == 64
    else:
        assert 400 <= status < 500 and set(body) == {"error", "detail"}, body
        assert isinstance(body["error"], str) and body["error"] and body["detail"], body

    answers = [
        collection.add_image(io.BytesIO(data), image_id=f"fuzz-{uuid.uuid4().hex}"),
        collection.search_images(io.BytesIO(data)),
    ]
    responses, seen[:] = seen[-2:], []
    for answer, response in zip(answers, responses, strict=True):
        assert response.status_code < 500, response.text
        assert answer["status"] == response.status_code and isinstance(answer["message"], str), answer
        assert answer["message"], answer
        # the same bytes: accepted by both APIs, or refused by both
        assert (response.status_code < 300) == (status < 300), (status, body, answer)
