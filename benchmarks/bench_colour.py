"""The colour check's margins (issue 19): where its threshold sits between true copies and look-alikes.

Not a test: it prints the figures docs/near-duplicates.md#the-colour-check quotes. Run from the
repository root, after ``./dev bench accuracy`` built the labelled set (or it builds it):

    ./dev bench colour            # the full labelled set (84 base pictures)
    ./dev bench colour --quick    # its --quick subset

Every image of the accuracy benchmark's labelled set (benchmarks/accuracy_dataset.py) is
inspected as the cache does it. Then, with the greyscale verification alone (``nearsig``'s
``verify_detail`` and ``decide_aligned``, every orientation hinted):

- each original against each of its copies: the accepted matches the colour check applies to
  (``mirrored``, ``rotated``, ``cropped``, ``bordered``) and their colour difference, by kind;
- each flat graphic's original against every image of the other flat graphics (different
  pictures): the ones the greyscale verification accepts, and their colour difference.

The threshold (``nearcolour.MAX_DIFFERENCE``) must sit above the first and below the second.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.accuracy_dataset import DATA, KIND_KEYS, build, choose  # noqa: E402
from scrapy_imgcache import nearcolour, nearsig  # noqa: E402
from scrapy_imgcache.hashing import Inspector  # noqa: E402

HINTS = ("id", "m", "r90", "r270")


def checked(sig_a: bytes, sig_b: bytes) -> float | None:
    """The colour difference of a match the greyscale verification accepts and the colour check
    applies to (None: refused, or a kind it leaves alone)."""
    ok, how, _, aligned = nearsig.decide_aligned(nearsig.verify_detail(sig_a, sig_b, HINTS))
    colour_a, colour_b = nearsig.colour_of(sig_a), nearsig.colour_of(sig_b)
    if not ok or how not in nearcolour.CHECKED or colour_a is None or colour_b is None:
        return None
    return nearcolour.difference(colour_a, colour_b, aligned)


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return f"{v[len(v) // 2]:.1f} / {v[min(len(v) - 1, int(0.95 * len(v)))]:.1f} / {v[-1]:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the --quick subset of the labelled set")
    args = ap.parse_args(argv)
    records = build(choose(args.quick), 2)
    inspector = Inspector()
    sigs: dict[tuple[str, str], bytes] = {}
    for r in records:
        sig = inspector.inspect((DATA / r["file"]).read_bytes()).signature
        if sig is not None:
            sigs[(r["base"], r["kind"])] = sig
    flat_bases = sorted({r["base"] for r in records if r["base_kind"] == "flat"})
    copies: dict[str, list[float]] = defaultdict(list)
    for (base, kind), sig in sigs.items():
        if kind != "original" and (base, "original") in sigs:
            d = checked(sigs[(base, "original")], sig)
            if d is not None:
                copies["flat" if base in flat_bases else "other"].append(d)
                copies[kind].append(d)
    others: list[float] = []
    pairs = 0
    for a in flat_bases:
        for (base, _), sig in sigs.items():
            if base in flat_bases and base != a:
                pairs += 1
                d = checked(sigs[(a, "original")], sig)
                if d is not None:
                    others.append(d)
    print_report(copies, others, pairs, nearcolour.MAX_DIFFERENCE)
    return 0


def print_report(copies: dict[str, Any], others: list[float], pairs: int, threshold: float) -> None:
    print(f"Colour difference (0-255 levels), median / 95th percentile / largest; threshold {threshold:g}\n")
    print("| pairs | checked matches | difference | above the threshold |\n|---|--:|---|--:|")
    names = {"other": "photos, tiles, scenes, catalogue shots", "flat": "flat graphics"}
    rows = [(f"true copies: {names.get(k, k)}", copies[k]) for k in ("other", "flat", *KIND_KEYS) if copies.get(k)]
    rows.append((f"different flat graphics ({pairs} pairs)", others))
    for label, values in rows:
        above = sum(v > threshold for v in values)
        print(f"| {label} | {len(values)} | {quantiles(values)} | {above} |")
    if others:
        print(f"\nSmallest difference between different flat graphics: {min(others):.1f}")


if __name__ == "__main__":
    sys.exit(main())
