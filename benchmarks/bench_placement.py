"""What placing an IMAGES_STORE file and re-hashing a cache hit cost, per image (issue 19).

    ./dev bench placement [DIR]    # DIR: a folder on the file system to measure (default: a temp folder)

Each way of placing a file goes through a temporary name and a rename, as ``LocalBlobStore``
does: a hard link to the blob (what 0.x did), a ``FICLONE`` clone (XFS, Btrfs), an
``os.copy_file_range`` copy, and the bytes written from memory (what the view does where it
cannot clone). Then BLAKE2b-256 of the bytes, the check a cache hit makes. Sizes are the crawl
benchmark's classes: thumb 14 KB, everyday 80 KB, large 213 KB. Best of 3 rounds of 400.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
import time
import timeit
from collections.abc import Callable

SIZES = {"thumb": 14_000, "everyday": 80_000, "large": 213_000}
N = 400
FICLONE = 0x40049409


def _temp(dest: str, i: int) -> str:
    return os.path.join(os.path.dirname(dest), f".tmp-bench-{i}")


def link(src: str, dest: str, data: bytes, i: int) -> None:
    tmp = _temp(dest, i)
    os.link(src, tmp)
    os.replace(tmp, dest)


def _into_new_file(dest: str, i: int, fill: Callable[[int], None]) -> None:
    tmp = _temp(dest, i)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fill(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)


def clone(src: str, dest: str, data: bytes, i: int) -> None:
    def fill(fd: int) -> None:
        src_fd = os.open(src, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FICLONE, src_fd)
        finally:
            os.close(src_fd)

    _into_new_file(dest, i, fill)


def copy_range(src: str, dest: str, data: bytes, i: int) -> None:
    def fill(fd: int) -> None:
        src_fd = os.open(src, os.O_RDONLY)
        try:
            done = 0
            while done < len(data):
                done += os.copy_file_range(src_fd, fd, len(data) - done)
        finally:
            os.close(src_fd)

    _into_new_file(dest, i, fill)


def write(src: str, dest: str, data: bytes, i: int) -> None:
    _into_new_file(dest, i, lambda fd: os.write(fd, data))


def per_image(place: Callable[[str, str, bytes, int], None], src: str, folder: str, data: bytes) -> float:
    """Best of 3 rounds of N placements, in microseconds an image."""
    os.makedirs(folder, exist_ok=True)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(N):
            place(src, os.path.join(folder, f"f{i}"), data, i)
        best = min(best, (time.perf_counter() - start) / N * 1e6)
        for i in range(N):
            os.unlink(os.path.join(folder, f"f{i}"))
    return best


def main(root: str) -> None:
    print(f"placement in {root} (best of 3 x {N}; microseconds an image)")
    for name, size in SIZES.items():
        data = os.urandom(size)
        src = os.path.join(root, f"blob-{name}")
        with open(src, "wb") as fh:
            fh.write(data)
        row = [f"{name:9}"]
        for place in (link, clone, copy_range, write):
            folder = os.path.join(root, f"{name}-{place.__name__}")
            try:
                row.append(f"{place.__name__} {per_image(place, src, folder, data):6.1f}")
            except OSError as exc:
                row.append(f"{place.__name__} n/a ({exc.strerror})")
        hashed = min(timeit.repeat(lambda d=data: hashlib.blake2b(d, digest_size=32).digest(), number=N, repeat=3))
        row.append(f"blake2b {hashed / N * 1e6:6.1f}")
        print("  ".join(row))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
