"""Robust near-duplicate search: extra hashes for the Hamming index and a signature to verify candidates.

The stored pHash (64 bits of the whole picture) finds resized, recompressed and lightly edited
copies, but not a mirrored, rotated, cropped, bordered or overlaid copy: those move it by 16 bits or
more. This module adds, per image, a few more 64-bit hashes that such copies keep (index rows, and
query-only hashes to probe the index with), and a small signature that decides, for each candidate
the index returns, whether it really is a transformed copy and how. The hashes find candidates
cheaply and loosely; the signature makes the decision. What each part buys (recall per kind of copy,
precision, costs) and how the thresholds were chosen: docs/near-duplicates.md.

Everything comes from ONE greyscale working image (numpy and Pillow alone): long side ``WORK`` =
128 px (BOX-reduced; a JPEG draft decode >= 128 px is enough), then a 64x64 "canonical frame" of its border-trimmed box.

Interface
---------
    index_hashes, query_hashes, signature = compute(img, orientation=None)
        img: a PIL image (any mode or size; its EXIF orientation is honoured unless ``orientation``
             is given) or a 2-D uint8 greyscale array that is already upright.
        index_hashes: [(kind, int)] extra rows for the Hamming index, 2..4 per image (c80 and t70
             always; kp when two blob extrema are found; full when trimming or EXIF changed the frame).
        query_hashes: [(transform, int)] extra hashes to probe with, 7..9 per image (the index kinds
             + m, r90, r270, rot+3, rot-3); the caller also probes with the stored pHash. Every query
             hash is probed against every row (rows of any kind).
        Hash values are unsigned 64-bit Python ints.
        signature: ``SIG_SIZE`` = 183 bytes (version, trim box, log-aspect, 9x9 4-bit z-thumbnail,
             32x32 detail-sign bits, 8x8 informative-block bits); the caller appends the colour
             bytes of :mod:`.nearcolour` with ``with_colour`` (version 4, 192 bytes).
    match, how, score = verify(sig_a, sig_b, hints=None)
        hints: the orientations of b relative to a suggested by the queries that found the pair:
        "id" (the stored pHash, full, c80, t70, kp, rot+-3), "m", "r90", "r270"; None = ("id",).
        how: resized | mirrored | rotated | cropped | bordered | edited.

Kinds (all 64-bit pHash bits: the 8x8 low DCT of a 32x32 area average, > its median, MSB first):
    full   the border-trimmed (and EXIF-upright) frame; only when trimming or EXIF changed the frame
           (otherwise it is the stored pHash within a few bits). Its DCT block also gives m/r90/r270.
    c80    centre 80 % of the trimmed frame (centred crops, small rotations).
    t70    top 70 % band of the UNtrimmed frame (overlays in the lower third; catalogue shots whose
           overlay sits on the plain background and so moves the trimmed box).
    kp     content-anchored window: square, centred between the two strongest DoG blob extrema of
           the trimmed frame, side KP_SCALE x their distance (a crop moves AND scales it with the
           content).
    m, r90, r270   query only: full-frame hash of the mirrored / rotated image, exact from the same
           DCT block (no resampling). r180 is left out (no kind of copy needs it).
    rot+3, rot-3   query only: the c80 window rotated by -+3 degrees in true geometry (small rotations).

Verification (``verify_detail``) compares the 32x32 detail-sign maps of the two signatures: first
whole frame to whole frame under each hinted orientation; when that is not conclusive, a coarse
search over windows of one frame in the other (9x9 z-thumbnails), then two refinements of the best
windows (shift, scale, small rotation) on the sign maps. ``decide`` turns the scores into
(match, how, score) with ``THRESHOLDS``.
"""

from __future__ import annotations

from .signature import (
    BAND_SIGMA,
    COLOUR_VERSION,
    EXIF_OPS,
    KP_RES,
    KP_S1,
    KP_S2,
    PHASH_DCT,
    SIG_SIZE,
    SIG_VERSION,
    SN,
    colour_of,
    compute,
    exif_orientation,
    has_transparency,
    with_colour,
)
from .verify import THRESHOLDS, Alignment, Verification, decide, decide_aligned, how_matched, verify, verify_detail

__all__ = [
    "BAND_SIGMA",
    "COLOUR_VERSION",
    "EXIF_OPS",
    "KP_RES",
    "KP_S1",
    "KP_S2",
    "PHASH_DCT",
    "SIG_SIZE",
    "SIG_VERSION",
    "SN",
    "THRESHOLDS",
    "Alignment",
    "Verification",
    "colour_of",
    "compute",
    "decide",
    "decide_aligned",
    "exif_orientation",
    "has_transparency",
    "how_matched",
    "verify",
    "verify_detail",
    "with_colour",
]
