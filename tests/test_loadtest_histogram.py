"""The latency histogram: exact percentiles over pooled samples, bounded error, lossless merge."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.loadtest.histogram import Histogram, bucket_index, bucket_range
from shoal.loadtest.stats import Recorder


def nearest_rank(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_known_latencies_give_exact_percentiles() -> None:
    h = Histogram()
    h.record_many_us(range(1, 1001))  # 1..1000 us, each once
    assert h.percentile_us(50) == 500
    assert h.percentile_us(90) == 900
    assert h.percentile_us(95) == 950
    assert h.percentile_us(99) == 990
    assert h.percentile_us(100) == 1000
    assert h.percentile_us(0) == 1
    assert h.summary_ms()["p95"] == 0.95
    assert h.total == 1000 and h.min_us == 1 and h.max_us == 1000


def test_percentiles_are_pooled_over_clients_not_averaged() -> None:
    """Client A: 90 fast requests; client B: 10 slow ones. Pooled P95 is slow; the mean of per-client P95s is not."""
    fast, slow = [1000] * 90, [1900] * 10
    a, b = Recorder(), Recorder()
    for us in fast:
        a.record_ok("m", 0.0, us / 1e6)
    for us in slow:
        b.record_ok("m", 0.0, us / 1e6)
    pooled = Recorder().merge(a).merge(b)
    assert pooled.hist.percentile_us(90) == 1000
    assert pooled.hist.percentile_us(95) == 1900
    assert pooled.hist.percentile_us(50) == 1000
    averaged = (a.hist.percentile_us(95) + b.hist.percentile_us(95)) / 2
    assert averaged == 1450  # the reference sample's figure: neither client ever saw it
    assert pooled.hist.total == 100


def test_millisecond_latencies_report_the_bucket_of_the_exact_rank() -> None:
    # Above 2048 us buckets are 2^k wide (3 significant digits); a percentile is the highest
    # value of the bucket holding the nearest-rank sample, as HdrHistogram reports it.
    values = [1000 * k for k in range(1, 201)]  # 1 ms .. 200 ms, shuffled over 4 clients
    random.Random(0).shuffle(values)
    pooled = Recorder()
    for i in range(4):
        client = Recorder()
        for us in values[i::4]:
            client.record_ok("m", 0.0, us / 1e6)
        pooled.merge(client)
    expected = {50: 100_000, 90: 180_000, 95: 190_000, 99: 198_000}
    for p, exact in expected.items():
        assert nearest_rank(values, p) == exact
        assert pooled.hist.percentile_us(p) == bucket_range(bucket_index(exact))[1]
        assert 0 <= pooled.hist.percentile_us(p) - exact < exact / 1024
    assert pooled.hist.percentile_us(100) == 200_000  # clamped to the recorded max


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=120_000_000), min_size=1, max_size=400),
       st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9]))
def test_relative_error_below_one_in_a_thousand(values: list[int], p: float) -> None:
    h = Histogram()
    h.record_many_us(values)
    exact = nearest_rank(values, p)
    got = h.percentile_us(p)
    assert abs(got - exact) <= exact / 1024 + 1e-9
    assert got >= exact  # highest equivalent value: never optimistic


def test_bucket_index_is_monotonic_and_ranges_tile() -> None:
    prev_high = -1
    for idx in range(bucket_index(10**7) + 1):
        low, high = bucket_range(idx)
        assert low == prev_high + 1
        assert bucket_index(low) == idx and bucket_index(high) == idx
        prev_high = high


def test_merge_and_serialisation_are_lossless() -> None:
    rng = random.Random(1)
    parts = [[rng.randint(100, 5_000_000) for _ in range(500)] for _ in range(4)]
    merged = Histogram()
    for part in parts:
        h = Histogram()
        h.record_many_us(part)
        merged.merge(Histogram.from_dict(h.to_dict()))
    whole = Histogram()
    whole.record_many_us([v for part in parts for v in part])
    assert merged.to_dict() == whole.to_dict()
    for p in (50, 95, 99):
        assert merged.percentile_us(p) == whole.percentile_us(p)


def test_empty_histogram_reports_zeros() -> None:
    h = Histogram()
    assert h.percentile_us(99) == 0 and h.mean_ms == 0.0
    assert Histogram().merge(h).total == 0
