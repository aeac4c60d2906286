"""Ingestor on a real SqlStore: what one fetched image is to the cache (new, an exact copy, a
near-duplicate under each IMGCACHE_ON_SIMILAR policy), what refused bytes leave behind (nothing),
many threads storing the same new bytes at once,
and the MD5 ``checksum`` Scrapy's results carry."""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image, ImageOps

from scrapy_imgcache.config import ImgCacheConfig
from scrapy_imgcache.errors import EmptyImage, InvalidImage, NotAnImage, TooManyPixels, TruncatedImage
from scrapy_imgcache.hashing import ImageLimits, Inspector, content_hash, hamming
from scrapy_imgcache.ingest import Ingestor, Outcome
from scrapy_imgcache.store.base import NearQuery
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import bomb_png, distinct_images, encode, fresh_url, near_duplicates, noise_bytes, solid

ORIGINAL = distinct_images(2)[0]
OTHER = distinct_images(2)[1]
ORIGINAL_JPEG = encode(ORIGINAL)
W, H = ORIGINAL.size
RESIZED = ORIGINAL.resize((W * 3 // 4, H * 3 // 4), Image.Resampling.LANCZOS)
#: the usual copies of ORIGINAL, each with the match robust search must report for it
COPIES = {"resized": near_duplicates(ORIGINAL)["resized"], "mirrored": encode(ImageOps.mirror(ORIGINAL))}


@dataclass(frozen=True)
class CountingInspector(Inspector):
    """The real Inspector (it decodes and hashes as usual), keeping the sizes of what it decoded."""

    decoded: list[int] = field(default_factory=list, compare=False, hash=False)

    def inspect(self, data: bytes, known_hash: str | None = None) -> Any:
        self.decoded.append(len(data))
        return super().inspect(data, known_hash)


def config(**settings: Any) -> ImgCacheConfig:
    """A crawl's config from IMGCACHE_* settings, hashing in threads (no worker processes)."""
    return ImgCacheConfig.from_settings({"IMGCACHE_HASH_PROCESSES": 0, **settings})


@pytest.fixture
def sqlite(tmp_path) -> Any:
    s = SqlStore(f"sqlite:///{tmp_path / 'cache.sqlite3'}", str(tmp_path / "files"))
    yield s
    s.close()


def phash(data: bytes) -> str:
    return Inspector().inspect(data).perceptual_hash


def ingest(ingestor: Ingestor, data: bytes, url: str | None = None, **kw: Any) -> Outcome:
    return ingestor.ingest(data, url=url or fresh_url(), client_name="spider", **kw)


def footprint(store: SqlStore) -> tuple[int, int, int]:
    """(image rows in every bucket, URL records, blob files): what refused bytes must not change."""
    images = list(store.images(None))
    urls = sum(len(store.urls(e.content_hash, e.bucket)) for e in images)
    return len(images), urls, len(list(store.blobs.iter_keys()))


# -- new images and exact copies -----------------------------------------------------------


def test_a_new_image_is_stored_with_its_row_bytes_and_url(sqlite):
    url = fresh_url("new")
    outcome = ingest(Ingestor(sqlite, config()), ORIGINAL_JPEG, url, etag='"v1"', filename="astro.jpg")
    chash = content_hash(ORIGINAL_JPEG)
    assert (outcome.created, outcome.duplicate, outcome.duplicate_of, outcome.stored) == (True, None, None, True)
    assert (outcome.hamming_distance, outcome.match, outcome.size) == (None, None, len(ORIGINAL_JPEG))
    entry = outcome.entry
    assert (entry.content_hash, entry.url, entry.client_name, entry.etag) == (chash, url, "spider", '"v1"')
    assert (entry.width, entry.height, entry.content_type, entry.original_filename) == (W, H, "image/jpeg", "astro.jpg")
    assert entry.duplicate is None and entry.similar_to is None
    assert sqlite.get_meta(chash) is not None and sqlite.get_bytes(chash) == ORIGINAL_JPEG
    assert sqlite.lookup(url).content_hash == chash
    assert footprint(sqlite) == (1, 1, 1)


def test_an_exact_copy_is_recorded_without_decoding_or_writing_its_bytes_again(sqlite):
    inspector = CountingInspector()
    ingestor = Ingestor(sqlite, config(), inspector=inspector)
    first = ingest(ingestor, ORIGINAL_JPEG)
    assert inspector.decoded == [len(ORIGINAL_JPEG)]
    blob = sqlite.blobs.path(first.entry.path)
    os.utime(blob, (1_000_000, 1_000_000))  # any write of the bytes (put, put_bytes) would renew it

    url = fresh_url("copy")
    copy = ingest(ingestor, ORIGINAL_JPEG, url)
    chash = first.entry.content_hash
    assert (copy.created, copy.duplicate, copy.duplicate_of, copy.stored) == (False, "exact", chash, False)
    assert copy.size == len(ORIGINAL_JPEG) and copy.entry.url == url and copy.entry.duplicate == "exact"
    assert inspector.decoded == [len(ORIGINAL_JPEG)]  # nothing decoded for the copy
    assert os.stat(blob).st_mtime == 1_000_000  # nor its bytes touched
    assert sqlite.lookup(url).content_hash == chash and sqlite.lookup(url).duplicate == "exact"
    assert footprint(sqlite) == (1, 2, 1)
    (usage,) = sqlite.usage()
    assert (usage.exact_duplicates, usage.exact_bytes_saved) == (1, len(ORIGINAL_JPEG))


def test_an_exact_copy_over_lowered_pixel_limits_takes_the_full_path_and_is_refused(sqlite):
    """The copy shortcut must not let through what inspecting the bytes now refuses."""
    ingest(Ingestor(sqlite, config()), ORIGINAL_JPEG)
    at_limit = CountingInspector(ImageLimits(max_pixels=W * H))
    assert ingest(Ingestor(sqlite, config(), inspector=at_limit), ORIGINAL_JPEG).duplicate == "exact"
    assert at_limit.decoded == []  # within the limit: the shortcut

    url = fresh_url("refused")
    below = CountingInspector(ImageLimits(max_pixels=W * H - 1))
    with pytest.raises(TooManyPixels):
        ingest(Ingestor(sqlite, config(), inspector=below), ORIGINAL_JPEG, url)
    assert below.decoded == [len(ORIGINAL_JPEG)]
    assert sqlite.lookup(url) is None
    assert footprint(sqlite) == (1, 2, 1)


def test_an_exact_copy_whose_stored_bytes_are_gone_stores_them_again(sqlite):
    ingestor = Ingestor(sqlite, config())
    first = ingest(ingestor, ORIGINAL_JPEG)
    assert sqlite.blobs.delete(first.entry.path)
    url = fresh_url("again")
    again = ingest(ingestor, ORIGINAL_JPEG, url)
    assert (again.created, again.duplicate, again.duplicate_of) == (False, "exact", first.entry.content_hash)
    assert sqlite.get_bytes(first.entry.content_hash) == ORIGINAL_JPEG  # the row points at bytes again
    assert sqlite.lookup(url).content_hash == first.entry.content_hash
    assert footprint(sqlite) == (1, 2, 1)


def test_buckets_never_share_images_or_near_duplicates(sqlite):
    a, b = Ingestor(sqlite, config(IMGCACHE_BUCKET="a")), Ingestor(sqlite, config(IMGCACHE_BUCKET="b"))
    assert ingest(a, ORIGINAL_JPEG).created and ingest(b, ORIGINAL_JPEG).created
    near = ingest(b, COPIES["resized"], on_similar="skip")  # its original is in b too: found
    assert near.duplicate == "similar" and near.entry.bucket == "b"
    assert ingest(Ingestor(sqlite, config(IMGCACHE_BUCKET="c")), COPIES["resized"], on_similar="skip").created
    assert sorted(e.bucket for e in sqlite.images(None)) == ["a", "b", "c"]


# -- near-duplicates -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["annotate", "skip", "drop"])
def test_near_duplicates_follow_the_on_similar_policy_and_say_how_they_matched(sqlite, policy):
    ingestor = Ingestor(sqlite, config(IMGCACHE_ON_SIMILAR=policy))
    original = ingest(ingestor, ORIGINAL_JPEG).entry.content_hash
    for how, data in COPIES.items():
        url = fresh_url(how)
        outcome = ingest(ingestor, data, url)
        assert (outcome.duplicate, outcome.duplicate_of, outcome.match) == ("similar", original, how)
        assert outcome.hamming_distance == hamming(phash(data), phash(ORIGINAL_JPEG))  # the pHashes' distance
        assert 0 <= outcome.match_distance <= 8 and outcome.size == len(data)  # the distance of the hash that found it
        if policy == "annotate":  # stored, with the link to the image it copies
            assert outcome.created and outcome.stored
            row = sqlite.get_meta(content_hash(data))
            assert (row.similar_to, row.similar_distance, row.similar_match) == (
                original,
                outcome.hamming_distance,
                how,
            )
            assert sqlite.lookup(url).content_hash == content_hash(data)
        else:  # skip, drop: not stored; the URL points at the image we have
            assert not outcome.created and not outcome.stored
            assert sqlite.get_meta(content_hash(data)) is None
            assert outcome.entry.content_hash == original and outcome.entry.url == url
            found = sqlite.lookup(url)
            assert (found.content_hash, found.duplicate) == (original, "similar")
    (usage,) = sqlite.usage()
    assert usage.similar_duplicates == 2
    if policy == "annotate":
        assert footprint(sqlite) == (3, 3, 3) and usage.similar_bytes_saved == 0
    else:
        assert footprint(sqlite) == (1, 3, 1)
        assert usage.similar_bytes_saved == sum(len(d) for d in COPIES.values())


def test_the_calls_on_similar_overrides_the_setting(sqlite):
    skipping = Ingestor(sqlite, config(IMGCACHE_ON_SIMILAR="skip"))
    ingest(skipping, ORIGINAL_JPEG)
    assert ingest(skipping, COPIES["resized"], on_similar="annotate").stored
    assert not ingest(Ingestor(sqlite, config()), COPIES["mirrored"], on_similar="skip").stored
    assert not ingest(skipping, encode(ORIGINAL, quality=55)).stored  # the setting, when not overridden


def test_a_new_copy_is_recorded_against_the_original_not_an_earlier_copy(sqlite):
    ingestor = Ingestor(sqlite, config())
    original = ingest(ingestor, ORIGINAL_JPEG).entry.content_hash
    earlier = ingest(ingestor, encode(RESIZED))
    assert earlier.duplicate_of == original
    newer = encode(RESIZED, quality=55)  # nearer the earlier copy than the original
    hits = sqlite.near(NearQuery.of(ingestor.inspector.inspect(newer)), 8)
    assert [h.content_hash for h in hits] == [earlier.entry.content_hash, original]  # what makes this test bite
    for policy in ("skip", "annotate"):
        outcome = ingest(ingestor, newer, on_similar=policy)
        assert outcome.duplicate == "similar" and outcome.duplicate_of == original, policy
    assert sqlite.get_meta(content_hash(newer)).similar_to == original


def test_with_phash_similarity_a_mirror_is_a_new_image_and_a_resized_copy_a_near_duplicate(sqlite):
    ingestor = Ingestor(sqlite, config(IMGCACHE_SIMILARITY="phash", IMGCACHE_ON_SIMILAR="skip"))
    assert not ingestor.inspector.robust
    original = ingest(ingestor, ORIGINAL_JPEG).entry.content_hash
    mirrored = ingest(ingestor, COPIES["mirrored"])
    assert (mirrored.created, mirrored.duplicate, mirrored.stored) == (True, None, True)
    assert sqlite.get_meta(content_hash(COPIES["mirrored"])).similar_to is None
    resized = ingest(ingestor, COPIES["resized"])
    assert (resized.duplicate, resized.duplicate_of, resized.stored) == ("similar", original, False)
    assert resized.match is None  # matched by its pHash alone


def test_flat_images_are_never_near_duplicates(sqlite):
    """A flat image's pHash is ~31 bits from any photo's and equal to other flat images': at the
    widest threshold it would match them all, were flat images searched at all."""
    ingestor = Ingestor(sqlite, config(IMGCACHE_ON_SIMILAR="skip", IMGCACHE_SIMILARITY_THRESHOLD=32))
    photo_entry = ingest(ingestor, ORIGINAL_JPEG).entry
    grey, lighter = solid((120, 120, 120)), solid((121, 121, 121))
    assert hamming(ingestor.inspector.inspect(grey).perceptual_hash, photo_entry.perceptual_hash) <= 32
    for data in (grey, lighter):
        outcome = ingest(ingestor, data)
        assert (outcome.created, outcome.duplicate, outcome.stored) == (True, None, True)
        assert sqlite.get_meta(content_hash(data)).flat
    assert footprint(sqlite) == (3, 3, 3)


# -- refused bytes -------------------------------------------------------------------------

INVALID = {
    "empty": (lambda: b"", EmptyImage),
    "not-an-image": (lambda: noise_bytes(), NotAnImage),
    "truncated-jpeg": (lambda: ORIGINAL_JPEG[: len(ORIGINAL_JPEG) // 2], TruncatedImage),
    "bomb": (bomb_png, TooManyPixels),
}


@pytest.mark.parametrize("policy", ["annotate", "skip"])
@pytest.mark.parametrize("kind", list(INVALID))
def test_refused_bytes_raise_their_typed_error_and_leave_nothing(sqlite, kind, policy):
    make, error = INVALID[kind]
    ingestor = Ingestor(sqlite, config(IMGCACHE_ON_SIMILAR=policy))
    ingest(ingestor, encode(OTHER))
    before = footprint(sqlite)
    url = fresh_url(kind)
    with pytest.raises(InvalidImage) as raised:
        ingest(ingestor, make(), url)
    assert type(raised.value) is error, raised.value
    assert sqlite.lookup(url) is None
    assert footprint(sqlite) == before == (1, 1, 1)


# -- concurrency ---------------------------------------------------------------------------


def at_once(ingestors: list[Ingestor], data: list[bytes]) -> tuple[list[str], list[Outcome]]:
    """``ingestors[i]`` ingests ``data[i]`` in a thread of its own, all released together; the
    URLs and the outcomes, in that order."""
    urls = [fresh_url(f"t{i}") for i in range(len(data))]
    barrier = threading.Barrier(len(data))
    outcomes: list[Outcome | None] = [None] * len(data)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            outcomes[i] = ingest(ingestors[i], data[i], urls[i])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(data))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and None not in outcomes, errors
    return urls, outcomes  # type: ignore[return-value]


THREADS = 8


@pytest.mark.parametrize("ingestors", ["one", "one-per-thread"])
def test_threads_storing_the_same_new_bytes_at_once_store_them_once(store, ingestors):
    """As the pipeline's threads do (one ingestor), and as crawlers sharing one store do (one each:
    no lock of the ingestor then keeps the check and the store together)."""
    data = encode(OTHER)
    shared = Ingestor(store, config())
    each = [shared if ingestors == "one" else Ingestor(store, config()) for _ in range(THREADS)]
    urls, outcomes = at_once(each, [data] * THREADS)
    chash = content_hash(data)
    assert sum(o.created for o in outcomes) == 1
    assert {(o.duplicate, o.duplicate_of) for o in outcomes if not o.created} == {("exact", chash)}
    assert {o.entry.content_hash for o in outcomes} == {chash}
    assert [e.content_hash for e in store.images(None)] == [chash]
    assert len(list(store.blobs.iter_keys())) == 1
    assert sorted(e.url for e in store.urls(chash)) == sorted(urls)


def test_threads_storing_the_same_near_duplicate_at_once_store_it_once_as_one(store):
    """Copies of those bytes stored since a thread's exact-copy check are exact copies, not
    near-duplicates of the original the search finds first."""
    ingestor = Ingestor(store, config())
    original = ingest(ingestor, ORIGINAL_JPEG).entry.content_hash
    data = COPIES["resized"]
    chash = content_hash(data)
    urls, outcomes = at_once([ingestor] * THREADS, [data] * THREADS)
    (first,) = [o for o in outcomes if o.created]
    assert (first.duplicate, first.duplicate_of, first.match) == ("similar", original, "resized")
    assert {(o.duplicate, o.duplicate_of, o.created) for o in outcomes if o is not first} == {("exact", chash, False)}
    assert sorted(e.content_hash for e in store.images(None)) == sorted([original, chash])
    assert store.get_meta(chash).similar_to == original
    assert sorted(e.url for e in store.urls(chash)) == sorted(urls)


def test_one_ingestors_threads_see_each_others_near_duplicates(store):
    """Deciding and storing is one step per ingestor (per crawler): of copies of a new photo
    arriving at once, one is new and the others are recorded against it."""
    copies = [data for how, data in near_duplicates(OTHER).items() if how != "resized"]  # one size: skipped
    _, outcomes = at_once([Ingestor(store, config(IMGCACHE_ON_SIMILAR="skip"))] * len(copies), copies)
    (new,) = [o for o in outcomes if o.duplicate is None]
    assert new.created and new.stored
    others = [o for o in outcomes if o is not new]
    kept = {e.content_hash: e for e in store.images(None)}
    assert all(o.duplicate == "similar" and o.duplicate_of in kept for o in others)
    # a copy with more pixels than the one it matched is kept too (issue 19 item 11): when the
    # cropped copy comes first, the first full-size one is stored, the others point at it
    for o, data in zip(outcomes, copies, strict=True):
        w, h = Image.open(io.BytesIO(data)).size
        matched = kept[o.duplicate_of] if o is not new else None
        assert o is new or o.stored == (w * h > matched.width * matched.height)
    assert len(kept) == len({(e.width, e.height) for e in kept.values()}) <= 2
