"""The external sort: order by (instant, key) whatever the buckets; open files bounded across sorters."""

from __future__ import annotations

import random

import pyarrow as pa

from pipeline.sort import NINST, BucketSorter, Plan
from pipeline.tuning import OpenFiles


def _rows(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    ninst = [rng.randrange(-10_000, 0) for _ in range(n)]
    keys = [f"k{rng.randrange(10**6):06d}" for _ in range(n)]
    return pa.table({NINST: pa.array(ninst, pa.int64()), "key": keys})


def test_sorters_share_the_open_file_budget(tmp_path):
    budget = OpenFiles(24)
    plan = Plan(tuple(range(-9_900, 0, 100)))  # 100 buckets
    sorters = [BucketSorter(plan, [NINST, "key"], tmp_path, open_files=budget) for _ in range(6)]
    tables = [_rows(3000, seed) for seed in range(6)]
    try:
        for page in range(10):
            for s, t in zip(sorters, tables, strict=True):
                s.add(t.slice(page * 300, 300))
                assert sum(len(x._writers) for x in sorters) <= 24
        for s, t in zip(sorters, tables, strict=True):
            got = pa.concat_tables(list(s.sorted()))
            want = sorted(zip(t.column(NINST).to_pylist(), t.column("key").to_pylist(), strict=True))
            assert list(zip(got.column(NINST).to_pylist(), got.column("key").to_pylist(), strict=True)) == want
    finally:
        for s in sorters:
            s.close()
    assert budget.share() == budget.budget and not any(tmp_path.iterdir())  # every sorter left


def test_with_a_writer_per_bucket_rows_in_no_order_make_one_file_per_bucket(tmp_path):
    """10M posts in no time order once made 474,136 part files with 256 writers for 776 buckets."""
    plan = Plan(tuple(range(-9_900, 0, 100)))  # 100 buckets
    table = _rows(20_000, 1)
    for writers, most in ((100, 100), (16, None)):
        sorter = BucketSorter(plan, [NINST, "key"], tmp_path, open_files=OpenFiles(writers))
        try:
            for page in range(40):
                sorter.add(table.slice(page * 500, 500))
            parts = len(sorter.files())
            if most is not None:
                assert parts == most  # a file per bucket: every page touched every bucket
            else:
                assert parts > 1000  # fewer writers than buckets: a new file per bucket and page
        finally:
            sorter.close()


def test_the_open_file_budget_follows_the_descriptor_limit(monkeypatch):
    import resource

    from pipeline.tuning import _open_file_budget

    for soft, budget in ((1024, 512), (20_000, 8192), (64, 32), (resource.RLIM_INFINITY, 8192)):
        monkeypatch.setattr(resource, "getrlimit", lambda which, soft=soft: (soft, soft))
        assert _open_file_budget() == budget, soft
