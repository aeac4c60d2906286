"""A robust near-duplicate signature and the extra index and query hashes, from one image
(see the package's docstring for what each part is and :mod:`.verify` for how a pair is judged)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

Array = npt.NDArray[Any]
Box = tuple[float, float, float, float]

# ----------------------------------------------------------------------------- constants

WORK = 128  # long side of the greyscale working image (px); every signature comes from it
CN = 64  # side of the canonical frame: the trimmed box area-resampled to CN x CN (anisotropic)
HN = 32  # pHash input side (imagehash's 32x32), taken from the canonical frame by area weights
TRIM_TOL, TRIM_FRAC, TRIM_KEEP = 4, 0.98, 0.3  # a border line: >= 98 % of pixels within +-4 grey
#                                   levels of the line's median; never trim below 30 % of a side
C80 = (0.1, 0.1, 0.9, 0.9)  # centre window (fractions of the trimmed frame)
T70 = (0.0, 0.0, 1.0, 0.7)  # top band (fractions of the untrimmed frame)
KP_RES = 32  # blob detection on the 32x32 cell map (2x2 means of the canonical frame)
KP_S1, KP_S2 = 1.5, 2.4  # DoG sigmas (cells of the 32x32 map; = 3.0/4.8 px of the 64 px frame)
KP_MARGIN = 0.08  # ignore extrema this close to the frame edge (a crop removes them)
KP_SCALE = 1.5  # window side / distance between the two points
KP_MIN_D = 0.15  # minimum distance (fraction of the frame) between the two points
KP_MIN_RESP = 0.5  # minimum |DoG| response (grey levels)
ZN, SN, MN = 9, 32, 8  # verification: coarse z-thumbnail side, detail-sign map side, mask side
Z_LEVELS = 16  # z-thumbnail stored with 4 bits: value = clip(round(8 + Z_SCALE * z), 0, 15)
Z_SCALE = 2.5
BAND_SIGMA = 2.0  # detail map = sign(cell - Gaussian(sigma = 2 cells) surround)
FLAT_RMS = 0.6  # 4x4-cell blocks with band-pass RMS below this (grey levels) are "flat", ignored
SIG_VERSION = 3  # first byte of a greyscale signature (what compute() returns)
SIG_SIZE = 6 + (ZN * ZN + 1) // 2 + SN * SN // 8 + MN * MN // 8  # 183 bytes
COLOUR_VERSION = 4  # first byte of a signature with the colour bytes appended (with_colour());
#                     verify() refuses any other version

_k = np.arange(8)[:, None]
_n = np.arange(HN)[None, :]
#: (8, 32): DCT-II rows 0..7 at scipy's scale: pHash's 8x8 low block of a 32x32 P is D @ P @ D.T
PHASH_DCT = 2 * np.cos(np.pi * _k * (2 * _n + 1) / (2 * HN))
_SIGN = (-1.0) ** np.arange(8)


def _area(lo: Any, hi: Any, n_src: int, n_out: int) -> Array:
    """(k, n_out, n_src) area-average weights: output cell i of window k covers [lo, hi] split in n_out."""
    lo = np.asarray(lo, float).reshape(-1, 1, 1)
    hi = np.asarray(hi, float).reshape(-1, 1, 1)
    step = (hi - lo) / n_out
    start = lo + step * np.arange(n_out)[None, :, None]
    j = np.arange(n_src)[None, None, :]
    w = np.clip(np.minimum(start + step, j + 1) - np.maximum(start, j), 0, None)
    weights: Array = w / np.maximum(w.sum(-1, keepdims=True), 1e-12)
    return weights


def _area1(lo: float, hi: float, n_src: int, n_out: int = HN) -> Array:
    """(n_out, n_src) area weights of ONE window [lo, hi] (may stick out of [0, n_src]): row i = the
    overlap of cell i with each source pixel / cell width (rows sum to the fraction inside the source;
    the caller fills the rest with the mean). Overlap = F(b) - F(a), F(x)_j = clip(x - j, 0, 1)."""
    step = (hi - lo) / n_out
    cum = (lo + step * np.arange(n_out + 1))[:, None] - np.arange(n_src)[None, :]
    np.minimum(cum, 1.0, out=cum)
    np.maximum(cum, 0.0, out=cum)
    weights: Array = (cum[1:] - cum[:-1]) * (1.0 / step)
    return weights


def _gauss_matrix(n: int, sigma: float, mode: str, truncate: float = 4.0) -> Array:
    """(n, n) matrix of a 1-D Gaussian filter: column j = the filtered unit vector e_j.

    Bit for bit ``scipy.ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode=mode)``
    (tests/test_nearsig.py checks it): the same kernel, and the taps summed in the order
    scipy's C loop sums a symmetric kernel's (outermost pair first). Importing scipy.ndimage
    cost an engine worker ~0.35 s of CPU for two 32x32 constants.
    """
    radius = int(truncate * float(sigma) + 0.5)
    taps = np.exp(-0.5 / (sigma * sigma) * np.arange(-radius, radius + 1) ** 2)
    weights = (taps / taps.sum())[radius:]  # [centre, 1st neighbour, ...]: symmetric
    at = np.arange(n)
    eye = np.eye(n)
    matrix: Array = eye * weights[0]
    for k in range(radius, 0, -1):
        matrix = matrix + (eye[_edge(at - k, n, mode)] + eye[_edge(at + k, n, mode)]) * weights[k]
    return matrix


def _edge(pos: Array, n: int, mode: str) -> Array:
    """Where positions outside 0..n-1 read: the edge ("nearest") or the mirror ("reflect":
    d c b a | a b c d | d c b a)."""
    if mode == "nearest":
        clipped: Array = np.clip(pos, 0, n - 1)
        return clipped
    folded = np.mod(pos, 2 * n)
    mirrored: Array = np.where(folded < n, folded, 2 * n - 1 - folded)
    return mirrored


def _fixed(frames: list[Box]) -> tuple[Array, Array]:
    """Constant matrices for fixed windows of the canonical frame: low DCT block = L[k] @ C @ R[k].T."""
    corners = np.asarray(frames, float) * CN
    return (
        PHASH_DCT @ _area(corners[:, 1], corners[:, 3], CN, HN),
        PHASH_DCT @ _area(corners[:, 0], corners[:, 2], CN, HN),
    )


_LF, _RF = _fixed([(0, 0, 1, 1), C80, T70])  # full, c80 (trimmed frame), t70 (untrimmed frame)
_Z_AREA = _area([0.0], [CN], CN, ZN)[0]  # (9, 64)
_HALF = np.kron(np.eye(SN), np.full((1, CN // SN), SN / CN))  # (32, 64): mean of pixel pairs
_BLK = np.kron(np.eye(MN), np.full((1, SN // MN), MN / SN))  # (8, 32): mean of 4 cells


# The two Gaussian matrices are built on first use, not at import: only computing a signature
# needs them (in the engine workers; verify() needs neither).
@functools.cache
def _g32() -> Array:
    """(32, 32): the band-pass surround of the detail map."""
    return _gauss_matrix(SN, BAND_SIGMA, "nearest")


@functools.cache
def _g12() -> Array:
    """(2, 32, 32): the two scales of the keypoints' difference of Gaussians."""
    return np.stack([_gauss_matrix(KP_RES, KP_S1, "reflect"), _gauss_matrix(KP_RES, KP_S2, "reflect")])


# ----------------------------------------------------------------------------- working image

EXIF_OPS = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def exif_orientation(img: Image.Image) -> int:
    """The image's EXIF orientation (1-8; 1 when it has none)."""
    if "exif" not in img.info and not hasattr(img, "tag_v2"):
        return 1
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means "no orientation"
        return 1


def has_transparency(img: Image.Image) -> bool:
    """Whether the image may have transparent pixels (composited on white before hashing)."""
    return img.mode in ("RGBA", "LA", "PA", "La") or (img.mode == "P" and "transparency" in img.info)


def working_image(img: Image.Image | Array, orientation: int | None = None) -> tuple[Array, bool]:
    """-> (upright uint8 greyscale, long side <= WORK; whether EXIF changed the orientation).
    Transparent pixels count as white; a LAB image gives its lightness channel (Pillow cannot convert
    LAB to L), as the stored pHash does."""
    if isinstance(img, np.ndarray):
        grey_array = img
        if max(grey_array.shape) > WORK:
            grey_array = working_image(Image.fromarray(grey_array), 1)[0]
        return np.ascontiguousarray(grey_array, dtype=np.uint8), bool(orientation not in (None, 1))
    o = exif_orientation(img) if orientation is None else orientation
    if img.mode == "LAB":
        grey = img.getchannel(0)
    elif has_transparency(img):
        rgba = img.convert("LA").convert("RGBA") if img.mode == "La" else img.convert("RGBA")
        grey = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("L")
    elif img.mode != "L":
        grey = img.convert("L")
    else:
        grey = img
    w, h = grey.size
    s = min(1.0, WORK / max(w, h))
    if s < 1:  # BOX: area average, the cheapest Pillow filter, and all we need here
        grey = grey.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
    for op in EXIF_OPS.get(o, ()):
        grey = grey.transpose(op)
    return np.asarray(grey), o != 1


# ----------------------------------------------------------------------------- border trimming


def trim_box(g: Array) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) without uniform borders of any grey level (letterbox bars, padding,
    a frame): per side, strip lines whose pixels are >= TRIM_FRAC within +-TRIM_TOL of the outermost
    line's median, plus one transition line; two passes. Fast path: no side's outer line is uniform."""
    height, width = g.shape
    rows = g[[0, height - 1]].astype(np.int16)
    cols = g[:, [0, width - 1]].T.astype(np.int16)
    mr = np.partition(rows, width // 2, axis=1)[:, width // 2 : width // 2 + 1]
    mc = np.partition(cols, height // 2, axis=1)[:, height // 2 : height // 2 + 1]
    if ((np.abs(rows - mr) <= TRIM_TOL).sum(1) < TRIM_FRAC * width).all() and (
        (np.abs(cols - mc) <= TRIM_TOL).sum(1) < TRIM_FRAC * height
    ).all():
        return (0, 0, width, height)  # fast path: no outer line is uniform
    a = g.astype(np.int16)
    box = [0, 0, width, height]
    for _ in range(2):
        moved = False
        for side in range(4):  # left, top, right, bottom
            left, top, right, bottom = box
            horiz = side in (0, 2)
            span = (right - left) if horiz else (bottom - top)
            limit = int(span - TRIM_KEEP * (width if horiz else height))
            if limit <= 0:
                continue
            # the band of candidate lines, from the outside in (row 0 = the outermost line)
            if side == 0:
                band = a[top:bottom, left : left + limit].T
            elif side == 1:
                band = a[top : top + limit, left:right]
            elif side == 2:
                band = a[top:bottom, right - limit : right].T[::-1]
            else:
                band = a[bottom - limit : bottom, left:right][::-1]
            first = band[0]
            ref = int(np.median(first))
            if np.count_nonzero(np.abs(first - ref) <= TRIM_TOL) < TRIM_FRAC * first.size:
                continue
            ok = np.count_nonzero(np.abs(band - ref) <= TRIM_TOL, axis=1) >= TRIM_FRAC * band.shape[1]
            n = int(np.argmin(ok)) if not ok.all() else len(ok)
            n = min(n + 1, limit)  # + the resampled transition line
            if n:
                moved = True
                box[side] += n if side < 2 else -n
        if not moved:
            break
    return (box[0], box[1], box[2], box[3])


# ----------------------------------------------------------------------------- hashes


def _bits(lows: Array) -> Array:
    """pHash bits (coefficient > median of the 64, row-major, first = most significant) -> uint64."""
    x = lows.reshape(len(lows), 64)
    med = np.partition(x, (31, 32), axis=1)[:, 31:33].mean(1, keepdims=True)
    return np.packbits(x > med, axis=1).view(">u8").ravel().astype(np.uint64)


def transform_low(low: Array, t: str) -> Array:
    """8x8 DCT block of the mirrored / rotated 32x32 image (exact DCT-II symmetry; np.rot90 convention)."""
    s = _SIGN
    out: Array
    if t == "m":
        out = low * s[None, :]
    elif t == "r90":
        out = low.T * s[:, None]
    elif t == "r270":
        out = low.T * s[None, :]
    elif t == "r180":
        out = low * s[:, None] * s[None, :]
    else:
        raise ValueError(t)
    return out


def _keypair_window(cells: Array) -> Box | None:
    """Square window (fractions of the frame, may stick out) centred between the two strongest DoG
    extrema of the 32x32 cell map ``cells`` (local maxima of |DoG| in a 3x3 neighbourhood, at least
    KP_MARGIN from the edge, |DoG| > KP_MIN_RESP, located to a sub-cell by a parabola), side KP_SCALE
    x their distance; None when there are fewer than two or they are closer than KP_MIN_D."""
    g12 = _g12()
    dog2 = np.matmul(np.matmul(g12, cells), g12.transpose(0, 2, 1))
    dog = np.abs(dog2[0] - dog2[1])
    n = KP_RES
    m = max(1, round(KP_MARGIN * n))
    # 3x3 maximum filter of the interior, separably (rows, then columns)
    band = dog[m - 1 : n - m + 1]
    rowmax = np.maximum(np.maximum(band[:, m - 1 : n - m - 1], band[:, m : n - m]), band[:, m + 1 : n - m + 1])
    localmax = np.maximum(np.maximum(rowmax[:-2], rowmax[1:-1]), rowmax[2:])
    inner = dog[m : n - m, m : n - m]
    cand = np.flatnonzero((inner >= localmax) & (inner > KP_MIN_RESP))
    if len(cand) < 2:
        return None
    vals = inner.ravel()[cand]
    top = cand[np.argpartition(-vals, 1)[:2]] if len(cand) > 2 else cand
    k = n - 2 * m
    pts = []
    for t in top.tolist():
        y, x = t // k + m, t % k + m
        (_, above, _), (left, mid, right), (_, below, _) = dog[y - 1 : y + 2, x - 1 : x + 2].tolist()
        den = left - 2 * mid + right
        dx = 0.5 * (left - right) / den if abs(den) > 1e-9 else 0.0
        den = above - 2 * mid + below
        dy = 0.5 * (above - below) / den if abs(den) > 1e-9 else 0.0
        pts.append(((x + 0.5 + dx) / n, (y + 0.5 + dy) / n))
    (x1, y1), (x2, y2) = pts
    dist = ((x1 - x2) ** 2 + (y1 - y2) ** 2) ** 0.5
    if dist < KP_MIN_D:
        return None
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, KP_SCALE * dist / 2
    return (cx - half, cy - half, cx + half, cy + half)


# ----------------------------------------------------------------------------- signature maps


def _sig_maps(frame: Array, cells: Array) -> tuple[Array, Array, Array]:
    """(9x9 4-bit z-thumbnail, 32x32 detail signs, 8x8 informative mask) of the canonical frame and
    its 32x32 cell map."""
    z = (_Z_AREA @ frame @ _Z_AREA.T).ravel()
    med = np.partition(z, 40)[40]  # median of the 81 cells
    mad = np.partition(np.abs(z - med), 40)[40] * 1.4826
    zq = np.minimum(np.maximum(np.rint((z - med) * (Z_SCALE / max(mad, 1.0)) + 8), 0), Z_LEVELS - 1).astype(np.uint8)
    g32 = _g32()
    bp = cells - g32 @ cells @ g32.T
    rms2 = _BLK @ (bp * bp) @ _BLK.T  # mean over 4x4-cell blocks -> 8x8
    return zq.reshape(ZN, ZN), bp > 0, rms2 > FLAT_RMS * FLAT_RMS


def _pack(frac_box: Box, aspect: float, zq: Array, signs: Array, mask: Array) -> bytes:
    left, top, right, bottom = frac_box
    hdr = bytes([SIG_VERSION, round(left * 250), round(top * 250), round(right * 250), round(bottom * 250)])
    log_aspect = min(max(round(32 * float(np.log(aspect))), -127), 127) & 0xFF
    z = np.zeros(ZN * ZN + 1, np.uint8)
    z[: ZN * ZN] = zq.ravel()
    zb = (z[0::2] << 4) | z[1::2]
    return hdr + bytes([log_aspect]) + zb.tobytes() + np.packbits(signs).tobytes() + np.packbits(mask).tobytes()


# ----------------------------------------------------------------------------- compute

ROT_DEG = (3.0, -3.0)  # query-only hashes of the c80 window rotated by these angles (small rotations)
_RU = (np.arange(2 * HN) + 0.5) / (2 * HN) - 0.5  # 64 sample offsets across a window


@functools.lru_cache(maxsize=256)
def _rot_table(a_key: int, frame: Box = C80, degs: tuple[float, ...] = ROT_DEG) -> tuple[Array, Array]:
    """Bilinear gather table (indices (4, k, 4096), weights (4, k, 4096)) sampling ``frame`` of the
    canonical frame rotated by each angle about its centre in true geometry (aspect = exp(a_key/50))."""
    aspect = float(np.exp(a_key / 50))
    x0, y0, x1, y1 = frame
    cx, cy = (x0 + x1) / 2 * CN, (y0 + y1) / 2 * CN
    U, V = np.meshgrid(_RU * (x1 - x0) * CN, _RU * (y1 - y0) * CN)
    idx, wts = [], []
    for dg in degs:
        th = np.radians(dg)
        c, s = np.cos(th), np.sin(th)
        X = np.clip(cx + c * U - s * V / aspect - 0.5, 0, CN - 1.001).ravel()
        Y = np.clip(cy + s * U * aspect + c * V - 0.5, 0, CN - 1.001).ravel()
        ix, iy = X.astype(np.intp), Y.astype(np.intp)
        fx, fy = X - ix, Y - iy
        i = iy * CN + ix
        idx.append([i, i + 1, i + CN, i + CN + 1])
        wts.append([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    return np.array(idx).transpose(1, 0, 2).copy(), np.array(wts).transpose(1, 0, 2).copy()


def _rotated_lows(frame: Array, aspect: float) -> Array:
    """8x8 DCT blocks of the c80 window rotated by each of ROT_DEG (query hashes for small rotations):
    64x64 bilinear samples of the canonical frame (true geometry), 2x2 means -> 32x32, DCT."""
    idx, w = _rot_table(round(50 * np.log(aspect)))
    v = (np.take(frame, idx) * w).sum(0).reshape(len(ROT_DEG), 2 * HN, 2 * HN)  # (k, 64, 64)
    p = np.matmul(np.matmul(_HALF, v), _HALF.T)
    lows: Array = np.matmul(np.matmul(PHASH_DCT, p), PHASH_DCT.T)
    return lows


def compute(
    img: Image.Image | Array, orientation: int | None = None, want_kp: bool = True, want_rot: bool = True
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], bytes]:
    """-> (index_hashes [(kind, hash)], query_hashes [(transform, hash)], signature): see the module
    docstring. Hashes are unsigned 64-bit ints. want_rot=False drops the rot+-3 query hashes (about a
    third of the cost on a small image; costs the candidate recall of 3-degree rotations);
    want_kp=False drops the kp row and query."""
    g, exif = working_image(img, orientation)
    height, width = g.shape
    box = trim_box(g)
    trimmed = box != (0, 0, width, height)
    gi = Image.fromarray(g)
    frame = np.asarray(gi.resize((CN, CN), Image.Resampling.BOX, box=box), np.float64)  # canonical frame
    untrimmed = np.asarray(gi.resize((CN, CN), Image.Resampling.BOX), np.float64) if trimmed else frame
    # one batched product for the three fixed windows (full, c80 on the frame; t70 untrimmed)
    src = np.stack([frame, frame, untrimmed])
    lows = np.matmul(np.matmul(_LF, src), _RF.transpose(0, 2, 1))  # (3, 8, 8)
    cells = _HALF @ frame @ _HALF.T  # 2x2 means -> the 32x32 cell map (blob detection and detail signs)
    kpw = _keypair_window(cells) if want_kp else None
    if kpw is not None:  # window may stick out of the frame: outside counts as the frame's mean
        x0, y0, x1, y1 = (v * CN for v in kpw)
        wy, wx = _area1(y0, y1, CN), _area1(x0, x1, CN)
        p = wy @ frame @ wx.T + frame.mean() * (1 - np.outer(wy.sum(1), wx.sum(1)))
        lows = np.concatenate([lows, (PHASH_DCT @ p @ PHASH_DCT.T)[None]])
    transformed = [transform_low(lows[0], t) for t in ("m", "r90", "r270")]
    left, top, right, bottom = box
    aspect = (right - left) / max(bottom - top, 1)
    rotated = _rotated_lows(frame, aspect) if want_rot else np.zeros((0, 8, 8))
    hashes: list[int] = _bits(np.concatenate([lows, np.stack(transformed), rotated])).tolist()
    n_rot = len(rotated)
    rots = hashes[len(hashes) - n_rot :]
    hashes = hashes[: len(hashes) - n_rot]
    full, c80, t70 = hashes[0], hashes[1], hashes[2]
    index: list[tuple[str, int]] = []
    query: list[tuple[str, int]] = []
    if trimmed or exif:
        index.append(("full", full))
        query.append(("full", full))
    index += [("c80", c80), ("t70", t70)]
    query += [("c80", c80), ("t70", t70)]
    if kpw is not None:
        index.append(("kp", hashes[3]))
        query.append(("kp", hashes[3]))
    query += [("m", hashes[-3]), ("r90", hashes[-2]), ("r270", hashes[-1])]
    query += [(f"rot{dg:+g}", h) for dg, h in zip(ROT_DEG[:n_rot], rots, strict=True)]
    frac_box = (left / width, top / height, right / width, bottom / height)
    signature = _pack(frac_box, aspect, *_sig_maps(frame, cells))
    return index, query, signature


def with_colour(signature: bytes, colour: bytes) -> bytes:
    """A version-3 signature with the colour bytes of :mod:`.nearcolour` appended (version 4)."""
    return bytes([COLOUR_VERSION]) + signature[1:SIG_SIZE] + colour


def colour_of(sig: bytes) -> bytes | None:
    """The colour bytes of a version-4 signature (None for version 3)."""
    return sig[SIG_SIZE:] if sig[0] == COLOUR_VERSION else None
