"""HammingIndex answers exactly what a linear scan answers, through adds, removes and merges."""

from __future__ import annotations

from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scrapy_imgcache.store import index as simindex
from scrapy_imgcache.store.index import HammingIndex, linear_scan, popcount, to_signed

U64 = st.integers(0, (1 << 64) - 1)


@st.composite
def clustered(draw):
    """Hashes in near-duplicate families (so radius queries find something), plus loners."""
    centres = draw(st.lists(U64, min_size=1, max_size=6))
    out = []
    for centre in centres:
        for flips in draw(st.lists(st.lists(st.integers(0, 63), max_size=12), max_size=8)):
            value = centre
            for bit in flips:
                value ^= 1 << bit
            out.append(value)
    return out + draw(st.lists(U64, max_size=10))


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add_many"), clustered()),
        st.tuples(st.just("add"), clustered()),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 200), max_size=10)),
        st.tuples(st.just("query"), st.tuples(U64 | st.sampled_from([0, (1 << 64) - 1]), st.integers(0, 32))),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_query_equals_linear_scan(ops):
    """Small merge thresholds make the sorted tables, the tail and removals all take part; the
    sorted tables are probed however few rows they hold."""
    check_against_scan(ops, min_tail=5, scan_below=0)


@settings(max_examples=50, deadline=None)
@given(OPS)
def test_small_indexes_scanned_answer_the_same(ops):
    check_against_scan(ops, min_tail=5, scan_below=1_000_000)


@settings(max_examples=50, deadline=None)
@given(OPS)
def test_query_equals_linear_scan_with_a_long_tail(ops):
    """A tail that is never merged grows its arrays past their first size."""
    check_against_scan(ops, min_tail=100_000, scan_below=0)


def check_against_scan(ops, min_tail: int, scan_below: int) -> None:
    with mock.patch.object(simindex, "_MIN_TAIL", min_tail), mock.patch.object(simindex, "_SCAN_BELOW", scan_below):
        index = HammingIndex()
        model: dict[int, int] = {}
        next_id = 0
        for op, arg in ops:
            if op in ("add", "add_many"):
                ids = list(range(next_id, next_id + len(arg)))
                next_id += len(arg)
                if op == "add_many":
                    index.add_many(np.array(ids, dtype=np.int64), np.array(arg, dtype=np.uint64))
                else:
                    for row_id, value in zip(ids, arg, strict=True):
                        index.add(row_id, value)
                model.update(zip(ids, arg, strict=True))
            elif op == "remove":
                for row_id in arg:
                    index.remove(row_id)
                    model.pop(row_id, None)
            else:
                value, distance = arg
                # query near a stored value half the time, so hits are common
                if model and value % 2:
                    value = list(model.values())[value % len(model)] ^ (value >> 58)
                ids = np.array(list(model), dtype=np.int64)
                hashes = np.array(list(model.values()), dtype=np.uint64)
                assert index.query(value, distance) == linear_scan(ids, hashes, value, distance)
        assert len(index) == len(model)


def test_signed_storage_round_trips():
    """BIGINT columns hold the signed form; the index must read it back as the same bits."""
    for value in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        signed = to_signed(value)
        assert -(1 << 63) <= signed < 1 << 63
        assert int(np.array([signed], dtype=np.int64).view(np.uint64)[0]) == value
        index = HammingIndex()
        index.add(7, signed)
        assert index.query(value, 0) == [(7, 0)]


def test_popcount_counts_bits():
    values = np.array([0, 1, 0xFF, (1 << 64) - 1], dtype=np.uint64)
    assert popcount(values).tolist() == [0, 1, 8, 64]


def test_a_thousand_single_adds_stay_exact():
    """One add at a time, as a crawl stores images: the tail's arrays grow and stay correct."""
    rng = np.random.default_rng(7)
    values = rng.integers(0, 1 << 63, size=1000, dtype=np.int64).view(np.uint64) | np.uint64(1 << 63)
    index = HammingIndex()
    for row_id, value in enumerate(values):
        index.add(row_id, int(value))
    ids = np.arange(len(values), dtype=np.int64)
    for value in values[::97]:
        assert index.query(int(value) ^ 0b1011, 8) == linear_scan(ids, values, int(value) ^ 0b1011, 8)
    assert len(index) == 1000
