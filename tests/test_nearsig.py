"""Robust near-duplicate data (scrapy_imgcache.nearsig): each kind of copy is found by the candidate
hashes and verified with its kind, distinct photos are not, and no decodable image makes it raise.

The copies are made with Pillow from the repository's photos. Verification runs as the store runs it:
``verify(stored original, new copy, hints)``, the hints being the orientations of the queries that
found the original (the copy's stored pHash within 8 bits, its extra query hashes within 7, of the
original's stored pHash or index rows)."""

from __future__ import annotations

import io
import itertools

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from scrapy_imgcache import nearsig
from scrapy_imgcache.nearsig import signature
from tests.helpers import PHOTO_NAMES, distinct_images, encode, every_mode_and_format, near_duplicates, photo

#: the probe radii of the store: its stored pHash, and the extra query hashes
STORED_RADIUS, EXTRA_RADIUS = 8, 7
ORIENTATION_OF = {"m": "m", "r90": "r90", "r270": "r270"}  # query kind -> verify hint; others are "id"
ALL_HINTS = {"id", "m", "r90", "r270"}
SIZE = (320, 240)


def decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def stored_phash(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def copy_of(img: Image.Image, kind: str) -> bytes:
    """A kind of copy the robust search is for, as JPEG bytes."""
    if kind in ("resized", "recompressed"):  # 75 % with LANCZOS; JPEG quality 55
        return near_duplicates(img)[kind]
    w, h = img.size
    if kind == "mirrored":
        return encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    if kind == "rot90":
        return encode(img.transpose(Image.Transpose.ROTATE_90))
    if kind == "crop10":  # 10 % of the width and of the height, half on each side
        return encode(img.crop((w // 20, h // 20, w - w // 20, h - h // 20)))
    if kind == "border4":  # 4 % of the width / height on each side
        bw, bh = round(0.04 * w), round(0.04 * h)
        return encode(ImageOps.expand(img, border=(bw, bh, bw, bh), fill="white"))
    assert kind == "logo"  # a solid badge over 10 % of the picture, bottom right
    logo = img.copy()
    ImageDraw.Draw(logo).rectangle((w - round(0.38 * w), h - round(0.263 * h), w - 1, h - 1), fill=(200, 20, 20))
    return encode(logo)


EXPECTED = {
    "resized": ({"id"}, "resized"),
    "recompressed": ({"id"}, "resized"),
    "mirrored": ({"m"}, "mirrored"),
    "rot90": ({"r270"}, "rotated"),  # the copy's r270 query turns it back upright
    "crop10": ({"id"}, "cropped"),
    "border4": ({"id"}, "bordered"),
    "logo": ({"id"}, "edited"),
}

Computed = tuple[list[tuple[str, int]], list[tuple[str, int]], bytes]


def hints_finding(original: Image.Image, computed: Computed, copy: Image.Image, copy_computed: Computed) -> set[str]:
    """The hints of the copy's probes that reach the original's stored pHash or index rows."""
    rows = [stored_phash(original)] + [value for _, value in computed[0]]
    probes = [("id", stored_phash(copy), STORED_RADIUS)] + [(k, v, EXTRA_RADIUS) for k, v in copy_computed[1]]
    return {
        ORIENTATION_OF.get(kind, "id")
        for kind, value, radius in probes
        if min((value ^ row).bit_count() for row in rows) <= radius
    }


#: (photo, kind) cases: the kinds found and verified on every photo (tried at 5 sizes from 320x240 to
#: 800x600), and the weaker ones on the photos where they are (see test_copy_is_found_and_verified)
CASES = [(name, kind) for kind in ("resized", "recompressed", "mirrored", "rot90", "border4") for name in PHOTO_NAMES]
CASES += [(name, "crop10") for name in ("astronaut", "chelsea", "immunohistochemistry")]
CASES += [(name, "logo") for name in ("camera", "chelsea", "coffee", "immunohistochemistry")]
PHOTO = "immunohistochemistry"  # one photo for the single-photo tests


@pytest.fixture(scope="module")
def originals() -> dict[str, tuple[Image.Image, Computed]]:
    out = {}
    for name in PHOTO_NAMES:
        img = decoded(encode(photo(name).resize(SIZE, Image.Resampling.LANCZOS)))
        out[name] = (img, nearsig.compute(img))
    return out


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_copy_is_found_and_verified(originals: dict[str, tuple[Image.Image, Computed]], name: str, kind: str) -> None:
    """The copy is found by the right queries and verified as its kind, in both directions.

    A 10 % crop is the weak kind: this holds at every size tried only on 3 of the 7 photos. No
    candidate hash finds coffee's or hubble_deep_field's (verification alone passes coffee's;
    hubble_deep_field's scores just under the threshold up to 480 px), and rocket's only at 2 of 5
    sizes. Camera's is found, but its label depends on the size: "edited" or "resized" (accepted on
    the whole frame), "rotated" (best alignment 1.5 degrees off), "cropped" only at 640x480. The
    badge makes one 3x3 region disagree ("edited") except on astronaut, where every region stays
    within tolerance ("resized"), and on rocket at 800x600.
    """
    original, computed = originals[name]
    copy = decoded(copy_of(original, kind))
    copy_computed = nearsig.compute(copy)
    hints, how = EXPECTED[kind]
    assert hints_finding(original, computed, copy, copy_computed) == hints
    match, got, score = nearsig.verify(computed[2], copy_computed[2], hints)
    assert (match, got) == (True, how)
    assert min(nearsig.THRESHOLDS["whole"], nearsig.THRESHOLDS["agree"]) <= score <= 1.0
    inverse = {"r90": "r270", "r270": "r90"}
    assert nearsig.verify(copy_computed[2], computed[2], {inverse.get(h, h) for h in hints})[:2] == (True, how)


@pytest.mark.parametrize("kind", ["mirrored", "rot90"])
def test_orientation_is_found_among_every_hint(originals: dict[str, tuple[Image.Image, Computed]], kind: str) -> None:
    """A pair found by queries of several orientations is verified in the right one."""
    original, computed = originals[PHOTO]
    copy_sig = nearsig.compute(decoded(copy_of(original, kind)))[2]
    assert nearsig.verify(computed[2], copy_sig, ALL_HINTS)[:2] == (True, EXPECTED[kind][1])


def test_mirrored_copy_is_found_by_the_m_query() -> None:
    """The original's "m" query hash lands within a few bits of its mirrored copy's stored pHash
    (0-4 bits on 25 of distinct_images' 28 crops and on the 7 photos).

    Not always: the query comes from a BOX-reduced working image, the stored pHash from imagehash's
    own reduction, and on a low-contrast picture more coefficients sit near the median (10 bits on
    distinct_images()[3], beyond the store's radius of 7). Where the border trimming changed the
    frame (distinct_images()[4] and [11] have a uniform band) the "m" query is the trimmed frame's,
    and it finds the copy's "full" row instead (next test)."""
    for img in distinct_images(3) + [photo(name) for name in PHOTO_NAMES]:
        original = decoded(encode(img))
        mirrored = decoded(encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        index, query, _ = nearsig.compute(original)
        assert "full" not in dict(index)  # not trimmed
        assert (dict(query)["m"] ^ stored_phash(mirrored)).bit_count() <= 4


def test_trimmed_mirrored_copy_is_found_by_its_full_row() -> None:
    img = distinct_images(5)[4]  # a uniform band at the top
    index, query, _ = nearsig.compute(decoded(encode(img)))
    mirrored_index, _, _ = nearsig.compute(decoded(encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))))
    assert "full" in dict(index) and "full" in dict(mirrored_index)
    assert (dict(query)["m"] ^ dict(mirrored_index)["full"]).bit_count() <= 2


def test_exif_rotated_copy_is_upright() -> None:
    """Pixels stored rotated with EXIF Orientation 6 hash as the upright picture (plus a "full" row)."""
    img = photo(PHOTO).resize(SIZE)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    rotated = nearsig.compute(decoded(buf.getvalue()))
    upright = nearsig.compute(decoded(encode(img)))
    assert (dict(rotated[0])["full"] ^ stored_phash(img)).bit_count() <= 2
    assert nearsig.verify(upright[2], rotated[2])[:2] == (True, "resized")


def test_distinct_photos_do_not_verify() -> None:
    """Nor do two quadrants of one photo (same texture, different picture), whatever the hints."""
    sigs = [nearsig.compute(decoded(encode(img)))[2] for img in distinct_images(14)]
    for a, b in itertools.permutations(sigs, 2):
        assert nearsig.verify(a, b)[0] is False
        assert nearsig.verify(a, b, ALL_HINTS)[0] is False


def test_signature_and_hash_counts() -> None:
    imgs = distinct_images(6) + [photo(name) for name in PHOTO_NAMES]
    for img in imgs:
        index, query, sig = nearsig.compute(decoded(encode(img)))
        assert len(sig) == nearsig.SIG_SIZE == 183 and sig[0] == nearsig.SIG_VERSION
        assert 2 <= len(index) <= 4 and 7 <= len(query) <= 9
        assert {"c80", "t70"} <= {k for k, _ in index} <= {"full", "c80", "t70", "kp"}
        assert {"m", "r90", "r270", "rot+3", "rot-3"} <= {k for k, _ in query}
        assert {k for k, _ in index} <= {k for k, _ in query}
        for _, value in index + query:
            assert type(value) is int and 0 <= value < 1 << 64
        assert dict(index).keys() - {"kp"} == dict(nearsig.compute(img, want_kp=False)[0]).keys()
        assert len(nearsig.compute(img, want_rot=False)[1]) == len(query) - 2


def test_bad_signatures_and_hints_are_refused() -> None:
    sig = nearsig.compute(photo(PHOTO))[2]
    for bad in (b"", sig[:-1], bytes([nearsig.SIG_VERSION - 1]) + sig[1:]):
        with pytest.raises(ValueError):
            nearsig.verify(sig, bad)
    with pytest.raises(ValueError):
        nearsig.verify(sig, sig, {"flipped"})
    assert nearsig.verify(sig, sig, "id")[:2] == (True, "resized")


MODE_FILES = every_mode_and_format(distinct_images(1, size=(160, 120))[0])


@pytest.mark.parametrize(("mode", "fmt"), sorted(MODE_FILES))
def test_every_mode_gives_a_result(mode: str, fmt: str) -> None:
    index, query, sig = nearsig.compute(decoded(MODE_FILES[mode, fmt]))
    assert len(sig) == nearsig.SIG_SIZE and 2 <= len(index) <= 4 and 7 <= len(query) <= 9


@pytest.mark.parametrize(
    "img",
    [
        Image.new("RGB", (64, 64), (0, 0, 0)),
        Image.new("L", (1, 1), 255),
        Image.new("RGB", (1000, 10), (128, 128, 128)),
        Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
        Image.new("P", (40, 30), 3),
        Image.new("F", (30, 40), 7.5),
    ],
    ids=lambda img: f"{img.mode}-{img.size[0]}x{img.size[1]}",
)
def test_flat_image(img: Image.Image) -> None:
    """A solid colour gives hashes and a signature; with no detail to compare, it verifies against
    nothing, not even itself: flat pictures are for the plain pHash."""
    index, query, sig = nearsig.compute(img)
    assert len(sig) == nearsig.SIG_SIZE and 2 <= len(index) <= 4 and 7 <= len(query) <= 9
    assert nearsig.verify(sig, sig, ALL_HINTS) == (False, "", 0.0)
    nearsig.compute(np.asarray(img.convert("L")))


def test_greyscale_array_is_the_greyscale_image() -> None:
    grey = photo(PHOTO).resize(SIZE).convert("L")
    assert nearsig.compute(np.asarray(grey)) == nearsig.compute(grey)


@pytest.mark.parametrize("fast", [False, True])
def test_a_signature_carries_the_colours_of_its_frame(fast):
    """Issue 19 item 5: what verification checks colour with, also when IMGCACHE_FAST_HASH
    decodes JPEGs at reduced scale (in YCbCr: the same Y plane as the greyscale decode)."""
    from scrapy_imgcache import nearcolour
    from scrapy_imgcache.hashing import Inspector
    from tests.helpers import bar_chart, encode

    data = encode(ImageOps.expand(bar_chart(((250, 250, 250), (200, 30, 30), (30, 110, 40))), 40, fill="black"))
    info = Inspector(fast=fast).inspect(data)
    assert len(info.signature) == nearsig.SIG_SIZE + nearcolour.SIZE and info.signature[0] == nearsig.COLOUR_VERSION
    assert info.perceptual_hash == Inspector(fast=fast, robust=False).inspect(data).perceptual_hash
    cells = nearcolour.cells(nearsig.colour_of(info.signature))
    assert cells[0, 0, 0] > 192  # the white corner of the trimmed frame (the black border is not in it)
    assert cells[0, 0, 1:].tolist() == [128, 128]  # neutral
    assert cells[1, 0, 2] >= 128 + 24 and cells[2, 0, 2] >= 128 + 24  # red bars on the left: Cr above neutral


@pytest.mark.parametrize(
    ("n", "sigma", "mode"),
    [
        (nearsig.SN, nearsig.BAND_SIGMA, "nearest"),
        (nearsig.KP_RES, nearsig.KP_S1, "reflect"),
        (nearsig.KP_RES, nearsig.KP_S2, "reflect"),
        (8, 3.0, "nearest"),
        (8, 4.0, "reflect"),
    ],
)
def test_the_gaussian_matrices_are_scipys_bit_for_bit(n, sigma, mode):
    import scipy.ndimage as ndi

    expected = ndi.gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode)
    assert np.array_equal(signature._gauss_matrix(n, sigma, mode), expected)
