"""The near-duplicate policy (scrapy_imgcache.store.nearpolicy) over a store that is not SQL: a
store of IMGCACHE_STORE_SCHEMES that answers NearSource's three questions from its own data gets
the answers SqlStore gives, on every database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import pytest
from PIL import ImageOps

from scrapy_imgcache.hashing import ImageInfo, Inspector, hamming
from scrapy_imgcache.store import nearpolicy
from scrapy_imgcache.store.base import Entry, NearQuery
from scrapy_imgcache.store.index import KIND_SLOTS
from tests.helpers import PHOTO_NAMES, encode, photo

ROBUST = Inspector()


@dataclass
class MemoryNear:
    """A NearSource kept in dicts, searched by a linear scan: what a small custom store might do."""

    infos: dict[int, ImageInfo] = field(default_factory=dict)
    stored: dict[int, Entry] = field(default_factory=dict)
    probed: list[int] = field(default_factory=list)

    def add(self, image_id: int, info: ImageInfo, entry: Entry) -> None:
        self.infos[image_id], self.stored[image_id] = info, entry

    def probe(self, bucket: str, algorithm: str, probes: Sequence[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
        self.probed.append(len(probes))
        answers = []
        for value, max_distance in probes:
            hits = []
            for image_id, info in self.infos.items():
                hashes = [(0, int(info.perceptual_hash, 16))]
                hashes += [(KIND_SLOTS[kind], hashed) for kind, hashed in info.index_hashes]
                for slot, hashed in hashes:
                    distance = ((hashed ^ value) & 0xFFFFFFFFFFFFFFFF).bit_count()
                    if distance <= max_distance:
                        hits.append((image_id, slot, distance))
            answers.append(sorted(hits, key=lambda hit: (hit[2], hit[0])))
        return answers

    def signatures(self, image_ids: Sequence[int]) -> dict[int, bytes | None]:
        return {image_id: self.infos[image_id].signature for image_id in image_ids}

    def entries(self, found: Sequence[tuple[int, int]], limit: int, matches: Mapping[int, str | None]) -> list[Entry]:
        return [replace(self.stored[i], hamming_distance=d, match=matches.get(i)) for i, d in found][:limit]


def entry_of(info: ImageInfo, url: str) -> Entry:
    now = datetime.now(timezone.utc)
    return Entry(
        url=url, content_hash=info.content_hash, content_type=info.content_type, file_size_bytes=info.size,
        original_filename=None, width=info.width, height=info.height, perceptual_hash=info.perceptual_hash,
        client_name="t", lookup_time=now, created_at=now, bucket="",
    )  # fmt: skip


def test_a_store_of_its_own_gets_the_answers_sqlstore_gives(store):
    """Originals, then copies that pHash alone misses (mirrored, turned, cropped, bordered) and
    lookalikes; every query asked of both, with and without a limit."""
    memory = MemoryNear()
    originals = {name: photo(name).convert("RGB") for name in PHOTO_NAMES[:4]}
    for image_id, (name, img) in enumerate(originals.items(), start=1):
        data = encode(img)
        info = ROBUST.inspect(data)
        entry = store.put(data, url=f"https://a.example/{name}.jpg", client_name="t", info=info).entry
        memory.add(image_id, info, entry)
    queries = []
    for img in originals.values():
        w, h = img.size
        for copy in (
            ImageOps.mirror(img),
            img.rotate(90, expand=True),
            img.crop((w // 10, h // 10, w, h)),
            ImageOps.expand(img, border=w // 25, fill="white"),
            img.resize((w // 2, h // 2)),
        ):
            queries.append(NearQuery.of(ROBUST.inspect(encode(copy))))
    far = [
        q
        for q in queries
        if all(hamming(q.perceptual_hash, e.perceptual_hash or "") > 8 for e in memory.stored.values())
    ]
    assert len(far) >= 8, "most copies are beyond pHash alone"
    found = 0
    for query in queries:
        for limit in (1, 100):
            theirs = [
                (e.content_hash, e.match, e.hamming_distance, e.match_distance)
                for e in store.near(query, 8, limit=limit)
            ]
            ours = nearpolicy.search(memory, query, 8, "", limit)
            assert [(e.content_hash, e.match, e.hamming_distance, e.match_distance) for e in ours] == theirs
            found += bool(theirs)
    assert found >= len(queries), "every copy is found (once a limit)"


def test_the_query_image_and_its_links_are_candidates_it_leaves_out():
    """``linked`` puts a recorded near-duplicate among the candidates whatever the index says
    (here nothing indexed reaches it), and ``leave_out`` drops the query image itself."""
    img = photo(PHOTO_NAMES[0]).convert("RGB")
    original, turned = ROBUST.inspect(encode(img)), ROBUST.inspect(encode(img.rotate(90, expand=True)))
    memory = MemoryNear()
    memory.add(1, original, entry_of(original, "https://a.example/o.jpg"))
    memory.add(2, turned, entry_of(turned, "https://a.example/t.jpg"))
    bare = NearQuery(turned.perceptual_hash, turned.algorithm, turned.signature)  # no turned query hashes
    assert nearpolicy.search(memory, bare, 8, "", 100, leave_out=2) == [], "the pHash alone finds nothing"
    linked = nearpolicy.search(
        memory, bare, 8, "", 100, linked={1: (30, nearpolicy.link_hints("rotated"))}, leave_out=2
    )
    assert [(e.content_hash, e.match) for e in linked] == [(original.content_hash, "rotated")]
    itself = nearpolicy.search(memory, NearQuery.of(turned), 8, "", 100)
    assert turned.content_hash in [e.content_hash for e in itself], "without leave_out it finds itself"
    assert [e.content_hash for e in nearpolicy.search(memory, NearQuery.of(turned), 8, "", 100, leave_out=2)] == [
        original.content_hash
    ]


def test_a_query_without_a_signature_is_refused():
    with pytest.raises(ValueError, match="signature"):
        nearpolicy.search(MemoryNear(), NearQuery("0" * 16), 8, "", 10)
