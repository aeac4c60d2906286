"""Hashing and inspection: what the bytes are, hashed exactly as imagehash would, bad input refused."""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from scrapy_imgcache.errors import (
    EmptyImage,
    InvalidImage,
    NotAnImage,
    TooManyBytes,
    TooManyPixels,
    TruncatedImage,
    UnsupportedFormat,
)
from scrapy_imgcache.hashing import (
    ALGORITHMS,
    ImageLimits,
    Inspector,
    content_hash,
    hamming,
)
from tests.helpers import FORMATS as WRITABLE_FORMATS
from tests.helpers import (
    MODES,
    distinct_images,
    encode,
    encoded_in_mode,
    every_mode_and_format,
    noise_bytes,
    photo,
    png_header_only,
    solid,
    tiny_psd,
)

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
PHOTOS = distinct_images(3, size=(300, 200))
#: a fast-mode bit difference above this would make near-duplicate thresholds meaningless
FAST_MAX_BITS = 6


def tiny_eps() -> bytes:
    """An EPS file: Pillow recognises its header; reading pixels would run Ghostscript."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )


def pdf_bytes() -> bytes:
    buf = io.BytesIO()
    PHOTOS[0].save(buf, "PDF")
    return buf.getvalue()


@pytest.mark.parametrize("data", [b"", b"x", noise_bytes(), encode(PHOTOS[0])], ids=["empty", "one", "noise", "jpeg"])
def test_content_hash_is_blake2b_256(data):
    assert content_hash(data) == hashlib.blake2b(data, digest_size=32).hexdigest()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hashes_equal_imagehash_on_real_photos(fmt, algorithm):
    """The stored hash must be interchangeable with one computed by imagehash elsewhere."""
    inspector = Inspector(algorithm=algorithm)
    for img in PHOTOS:
        data = encode(img, fmt)
        expected = str(getattr(imagehash, algorithm)(Image.open(io.BytesIO(data))))
        info = inspector.inspect(data)
        assert info.perceptual_hash == expected
        assert info.algorithm == algorithm


def _patterns() -> dict[str, Image.Image]:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    return {
        "flat": Image.new("L", (100, 80), 128),
        "black": Image.new("RGB", (50, 50)),
        "ramp": Image.fromarray(ramp),
        "ramp-down": Image.fromarray(ramp.T.copy()),
        "checker": Image.fromarray(((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)),
        "halves": Image.fromarray(np.hstack([np.zeros((32, 16)), np.full((32, 16), 255)]).astype(np.uint8)),
    }


@pytest.mark.parametrize("name", list(_patterns()))
def test_phash_equals_imagehash_where_rounding_decides_its_bits(name):
    """Flat images, ramps and patterns put DCT coefficients within rounding of the median: the
    two small matrix products alone give another hash than imagehash's FFT for 5 of these 6."""
    img = _patterns()[name]
    data = encode(img, "PNG")
    assert Inspector().inspect(data).perceptual_hash == str(imagehash.phash(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_mime_and_size_come_from_the_bytes(fmt):
    img = PHOTOS[1]
    data = encode(img, fmt)
    info = Inspector().inspect(data)
    assert (info.format, info.content_type) == (fmt, Image.MIME[fmt])  # Pillow's registry as the oracle
    assert Image.registered_extensions()[info.extension] == fmt
    assert (info.width, info.height, info.size) == (*img.size, len(data))
    assert info.content_hash == content_hash(data)
    assert not info.flat


def test_hamming_counts_differing_bits():
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    assert hamming("0123456789abcdef", "0123456789abcdef") == 0


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        Inspector(algorithm="md5")


@pytest.mark.parametrize(
    "data, error",
    [
        pytest.param(tiny_psd(), UnsupportedFormat, id="psd"),
        pytest.param(tiny_eps(), UnsupportedFormat, id="eps"),
        pytest.param(pdf_bytes(), NotAnImage, id="pdf"),
    ],
)
def test_non_web_formats_are_refused(data, error):
    """PSD/EPS/PDF parsers (and Ghostscript behind EPS) must never see crawled bytes."""
    with pytest.raises(error):
        Inspector().inspect(data)


def _truncated(fmt: str) -> bytes:
    data = encode(PHOTOS[0], fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, limits, error",
    [
        pytest.param(b"", ImageLimits(), EmptyImage, id="empty"),
        pytest.param(noise_bytes(), ImageLimits(), NotAnImage, id="noise"),
        pytest.param(b"<html><body>404</body></html>", ImageLimits(), NotAnImage, id="html"),
        pytest.param(_truncated("JPEG"), ImageLimits(), TruncatedImage, id="truncated-jpeg"),
        pytest.param(_truncated("PNG"), ImageLimits(), TruncatedImage, id="truncated-png"),
        pytest.param(encode(PHOTOS[0]), ImageLimits(max_bytes=1000), TooManyBytes, id="too-many-bytes"),
        pytest.param(encode(PHOTOS[0]), ImageLimits(max_pixels=300 * 200 - 1), TooManyPixels, id="too-many-pixels"),
        pytest.param(png_header_only(100_000, 100_000), ImageLimits(), TooManyPixels, id="bomb"),
        pytest.param(png_header_only(6000, 6000), ImageLimits(), TooManyPixels, id="over-our-limit"),
        pytest.param(png_header_only(0, 10), ImageLimits(), InvalidImage, id="zero-width"),
    ],
)
def test_invalid_input_raises_a_typed_error(data, limits, error):
    with pytest.raises(error):
        Inspector(limits).inspect(data)


def test_bombs_are_refused_from_the_header_before_decoding():
    """The bombs hold no pixel data: had they been decoded, the error would be 'truncated'."""
    with pytest.raises(TooManyPixels, match="from its header"):
        Inspector().inspect(png_header_only(100_000, 100_000))
    bomb = png_header_only(6000, 6000)
    with pytest.raises(TooManyPixels, match="refused before decoding"):
        Inspector().inspect(bomb)
    with pytest.raises(TruncatedImage):  # the same bytes, let through, fail only on decoding
        Inspector(ImageLimits(max_pixels=6000 * 6000)).inspect(bomb)


def test_animated_gif_is_hashed_on_its_first_frame():
    first, second = PHOTOS[0], PHOTOS[2]
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 2
    info = Inspector().inspect(data)
    assert info.perceptual_hash == str(imagehash.phash(Image.open(io.BytesIO(encode(first, "GIF")))))
    assert info.perceptual_hash != str(imagehash.phash(Image.open(io.BytesIO(encode(second, "GIF")))))


def _near_flat() -> bytes:
    rng = np.random.default_rng(1)
    arr = (128 + rng.integers(-1, 2, (64, 64, 3))).astype(np.uint8)
    return encode(Image.fromarray(arr), "PNG")


def _transparent(mode: str, fmt: str) -> bytes:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (48, 48, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # colours underneath are noise: only the alpha says "nothing to see"
    img = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        img = Image.new("P", (48, 48), 0)
        img.putpalette([255, 0, 0] * 256)
        return encode(img, fmt, transparency=0)
    return encode(img, fmt)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(solid((255, 255, 255)), id="white"),
        pytest.param(solid((0, 0, 0), fmt="JPEG"), id="black-jpeg"),
        pytest.param(solid((200, 30, 90), fmt="WEBP"), id="pink-webp"),
        pytest.param(solid((7,), mode="L", fmt="GIF"), id="grey-gif"),
        pytest.param(solid((1, 2, 3), size=(1, 1)), id="1x1"),
        pytest.param(_transparent("RGBA", "PNG"), id="transparent-rgba"),
        pytest.param(_transparent("P", "GIF"), id="transparent-gif"),
        pytest.param(_near_flat(), id="near-flat-noise"),
    ],
)
def test_flat_images_are_marked_flat(data):
    assert Inspector().inspect(data).flat


def test_fast_mode_stays_close_to_imagehash():
    """Reduced-scale JPEG decoding may move a few bits, never enough to change a match."""
    diffs = fast_mode_bit_differences(distinct_images(14, size=(1024, 768)))
    assert max(diffs) <= FAST_MAX_BITS
    assert np.mean(diffs) <= FAST_MAX_BITS / 2


def fast_mode_bit_differences(images: list[Image.Image]) -> list[int]:
    """Bits between fast-mode pHash and imagehash.phash, one per photo (docs/hashing-accuracy.md)."""
    fast = Inspector(fast=True)
    out = []
    for img in images:
        data = encode(img)
        info = fast.inspect(data)
        assert (info.width, info.height) == img.size  # the size reported is the real one
        out.append(hamming(info.perceptual_hash, str(imagehash.phash(Image.open(io.BytesIO(data))))))
    return out


def test_real_photo_is_not_flat():
    assert not Inspector().inspect(encode(photo("camera"))).flat


# -- every pixel mode and file format ------------------------------------------------------


@pytest.mark.parametrize(("mode", "fmt"), sorted(every_mode_and_format(PHOTOS[0])))
def test_every_mode_and_format_hashes_as_imagehash_does_or_is_refused_typed(mode, fmt):
    """A LAB TIFF once raised ValueError out of the hash and dropped whole items."""
    data = every_mode_and_format(PHOTOS[0])[mode, fmt]
    info = Inspector().inspect(data)
    img = Image.open(io.BytesIO(data))
    if img.mode == "LAB":  # imagehash cannot convert LAB; its lightness channel is the grey
        assert info.perceptual_hash == str(imagehash.phash(img.getchannel(0)))
    else:
        assert info.perceptual_hash == str(imagehash.phash(img))
    assert not info.flat and (info.width, info.height) == PHOTOS[0].size


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(WRITABLE_FORMATS),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    seed=st.integers(0, 2**16),
    transparent=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 4000)),
    flip=st.one_of(st.none(), st.integers(0, 4000)),
)
def test_any_mode_format_or_damage_gives_an_info_or_a_typed_refusal(mode, fmt, size, seed, transparent, cut, flip):
    """Fuzz: an image of any mode in any format, whole, truncated or with a byte flipped,
    is hashed or refused with an InvalidImage, never another exception."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    data = encoded_in_mode(img, mode, fmt, transparent)
    assume(data is not None)
    assert data is not None
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    if flip is not None and data:
        at = flip % len(data)
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    try:
        info = Inspector().inspect(data)
    except InvalidImage as exc:
        refused: InvalidImage | None = exc
    else:
        refused = None
        assert len(info.perceptual_hash) == 16 and info.width * info.height > 0
    assert refused is None or (refused.reason and refused.message)
