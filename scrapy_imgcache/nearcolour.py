"""The colour check of near-duplicate verification: does the aligned colour content agree?

The signature of :mod:`.nearsig` is greyscale and contrast-free (detail signs, a z-scored
thumbnail), so two flat graphics with one geometry in different colours (a logo, a banner, an
icon) look the same to it: a blue-on-yellow stripe picture verified as a ``rotated`` copy of a
red-on-white one. Orientation, region and trimmed matches (``mirrored``, ``rotated``,
``cropped``, ``bordered``) are therefore also checked on colour: a 3x3 thumbnail of the same
border-trimmed, upright frame, one byte a cell (Y 2 bits, Cb 3 bits, Cr 3 bits), appended to
the signature (version 4; a version-3 signature has none, and its matches are not checked).
The two thumbnails are compared under the alignment the verification found: the thumbnail of
one is re-oriented, the other is sampled (bilinearly) at the matched window, and the mean
per-channel difference must be at most ``MAX_DIFFERENCE`` levels (0-255). Whole-frame
``resized`` and ``edited`` matches are not checked: a greyscale copy of a colour picture is a
true copy of it. Threshold and costs: docs/near-duplicates.md#colour-check.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

Array = npt.NDArray[Any]


class Aligned(Protocol):
    """What the colour check reads of the verification's alignment (``nearsig.Alignment``)."""

    @property
    def orient(self) -> str: ...
    @property
    def direction(self) -> str: ...
    @property
    def window(self) -> tuple[float, float, float, float]: ...


CELLS = 3  # the thumbnail is CELLS x CELLS cells of the trimmed frame
SIZE = CELLS * CELLS  # bytes: one a cell
SAMPLE = 256  # long side (px) of the nearest-pixel subsample the cell means come from (>= 7,000 a cell)
#: the match kinds whose alignment is checked on colour
CHECKED = frozenset({"mirrored", "rotated", "cropped", "bordered"})
#: mean |difference| over cells and channels (Y, Cb, Cr; 0-255 levels) above which an aligned
#: match is refused. Chosen on the accuracy benchmark (docs/near-duplicates.md#colour-check).
MAX_DIFFERENCE = 16.0
# quantisation: Y in 4 levels of 64; Cb and Cr in 8 levels of 24 centred on 128 (32..200: grey is a
# level's centre, so no noise flips it; beyond, a colour is saturated enough to tell apart already)
_Y_STEP, _C_STEP = 64.0, 24.0
_ORIENT = {
    "id": lambda a: a,
    "m": lambda a: a[:, ::-1],
    "r90": lambda a: np.rot90(a, 1),
    "r180": lambda a: np.rot90(a, 2),
    "r270": lambda a: np.rot90(a, 3),
}


def of_image(
    img: Image.Image, frac_box: tuple[float, float, float, float], upright: Sequence[Image.Transpose]
) -> bytes:
    """The colour bytes of a decoded image (any mode; transparent pixels count as white, as in
    the greyscale signature): subsampled to a long side of ``SAMPLE`` px first, then made upright
    by the ``upright`` transpositions, then the 3x3 cell means of ``frac_box`` (fractions of it)."""
    transparent = img.mode in ("RGBA", "LA", "PA", "La") or (img.mode == "P" and "transparency" in img.info)
    if img.mode not in ("RGB", "RGBA", "L", "LA"):  # (Pillow resizes P images by their nearest pixel)
        img = img.convert("LA").convert("RGBA") if img.mode == "La" else img.convert("RGBA" if transparent else "RGB")
    w, h = img.size
    s = min(1.0, SAMPLE / max(w, h))
    if s < 1:  # subsample first: BOX-reducing a 1600x1200 photo cost 2.9 ms of CPU, this 0.01 ms
        img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.NEAREST)
    if transparent:
        rgba = img.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    else:
        rgb = img.convert("RGB")
    for op in upright:
        rgb = rgb.transpose(op)
    return block(rgb, frac_box)


def block(rgb: Image.Image, frac_box: tuple[float, float, float, float]) -> bytes:
    """The colour bytes of an upright RGB image, of the box ``frac_box`` (fractions)."""
    w, h = rgb.size
    left, top, right, bottom = frac_box
    box = (left * w, top * h, max(right * w, left * w + 1), max(bottom * h, top * h + 1))
    cells = np.asarray(rgb.resize((CELLS, CELLS), Image.Resampling.BOX, box=box).convert("YCbCr"), np.float64)
    y = np.clip(cells[..., 0] // _Y_STEP, 0, 3)
    cb = np.clip(np.rint((cells[..., 1] - 128) / _C_STEP) + 4, 0, 7)
    cr = np.clip(np.rint((cells[..., 2] - 128) / _C_STEP) + 4, 0, 7)
    packed: bytes = (y * 64 + cb * 8 + cr).astype(np.uint8).tobytes()
    return packed


@functools.lru_cache(maxsize=512)
def cells(colour: bytes) -> Array:
    """(3, 3, 3) Y, Cb, Cr of each cell (the centres of the quantisation bins), from ``block``'s bytes."""
    q = np.frombuffer(colour, np.uint8).reshape(CELLS, CELLS).astype(np.float64)
    y = (q // 64 + 0.5) * _Y_STEP
    cb = (q // 8 % 8 - 4) * _C_STEP + 128
    cr = (q % 8 - 4) * _C_STEP + 128
    return np.stack([y, cb, cr], -1)


def _sample(grid: Array, window: tuple[float, float, float, float]) -> Array:
    """``grid`` (3, 3, 3) sampled bilinearly at the 3x3 cell centres of ``window`` (x0, y0, w, h)."""
    x0, y0, w, h = window
    if (x0, y0, w, h) == (0.0, 0.0, 1.0, 1.0):  # the whole frame (most orientation and trimmed matches)
        return grid
    u = (np.arange(CELLS) + 0.5) / CELLS

    def weights(lo: float, size: float) -> Array:
        p = np.clip((lo + u * size) * CELLS - 0.5, 0, CELLS - 1.000001)
        i = p.astype(np.intp)
        m = np.zeros((CELLS, CELLS))
        m[np.arange(CELLS), i] = 1 - (p - i)
        m[np.arange(CELLS), i + 1] += p - i
        return m

    wy, wx = weights(y0, h), weights(x0, w)
    sampled: Array = np.stack([wy @ grid[..., c] @ wx.T for c in range(3)], -1)
    return sampled


def difference(colour_a: bytes, colour_b: bytes, aligned: Aligned) -> float:
    """Mean |difference| (0-255 levels) of the two colour thumbnails under the alignment
    ``aligned`` of the verification (``orient``, ``direction``, ``window``): for ``b_in_a``, b
    re-oriented against a sampled at the window; for ``a_in_b``, a against b."""
    a, b = cells(colour_a), cells(colour_b)
    p, q = (a, b) if aligned.direction == "b_in_a" else (b, a)
    q = _ORIENT[aligned.orient](q)
    return float(np.abs(_sample(p, aligned.window) - q).mean())


def agrees(colour_a: bytes | None, colour_b: bytes | None, how: str, aligned: Aligned) -> bool:
    """Whether a match of kind ``how`` passes the colour check (always, when it is not checked
    or either signature has no colour)."""
    if how not in CHECKED or colour_a is None or colour_b is None:
        return True
    return difference(colour_a, colour_b, aligned) <= MAX_DIFFERENCE
