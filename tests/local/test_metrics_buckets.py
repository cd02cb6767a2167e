"""Latency buckets: ``Counters.record_with`` (once per request, its own bucket walk)
files each request where ``Histogram.observe`` (``bisect_left``) would."""

from __future__ import annotations

import pytest

from kiln.local.metrics import BUCKETS, Counters, Histogram


@pytest.mark.parametrize(
    "seconds",
    [0.0, 1e-6, *BUCKETS, *(b * 0.999 for b in BUCKETS), *(b * 1.001 for b in BUCKETS), 1e9],
)
def test_each_request_lands_in_the_bucket_bisect_picks(seconds: float) -> None:
    instance, fleet, expected = Counters(), Counters(), Histogram()
    instance.record_with(fleet, 200, seconds)
    expected.observe(seconds)
    assert instance.latency.counts == expected.counts == fleet.latency.counts
    assert instance.latency.sum == fleet.latency.sum == seconds
    assert (instance.requests, fleet.requests, instance.errors) == (1, 1, 0)


def test_server_errors_are_counted_on_both() -> None:
    instance, fleet = Counters(), Counters()
    instance.record_with(fleet, 503, 0.002)
    instance.record_with(fleet, 499, 0.002)
    assert (instance.errors, fleet.errors, instance.requests) == (1, 1, 2)
