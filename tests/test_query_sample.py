"""exploration.QuerySample: a uniform reservoir sample of the queries inside the bounds."""

from __future__ import annotations

import numpy as np
import pytest

from smallcell.engines.exploration import QuerySample


def test_every_query_is_kept_with_probability_size_over_eligible() -> None:
    n, size, trials = 20, 5, 4000
    counts = np.zeros(n)
    for seed in range(trials):
        s = QuerySample(size, 0.0, 100.0, seed)
        for k in range(n):
            s.offer(1.0 + k, lambda k=k: str(k))
        assert s.eligible == n and len(s.kept) == size and len(set(s.kept)) == size
        counts[[int(x) for x in s.kept]] += 1
    p = size / n
    sigma = np.sqrt(trials * p * (1 - p))
    # each item's count within 4 sigma of trials * size / n (first and last alike)
    assert np.abs(counts - trials * p).max() < 4 * sigma


def test_bounds_are_exclusive_and_text_is_built_only_when_kept() -> None:
    built = []
    s = QuerySample(3, 0.1, 10.0, 1)
    for g in (0.05, 0.1, 0.5, 10.0, 12.0, 2.0, 3.0):
        s.offer(g, lambda g=g: built.append(g) or f"{g}")
    assert s.eligible == 3 and s.kept == ["0.5", "2.0", "3.0"] and built == [0.5, 2.0, 3.0]
    many = QuerySample(2, 0.0, 1e9, 7)
    calls = 0

    def text() -> str:
        nonlocal calls
        calls += 1
        return "x"

    for _ in range(10_000):
        many.offer(1.0, text)
    # about size * (1 + ln(n / size)) conversions, not n
    assert calls < 60


@pytest.mark.parametrize("size", [0])
def test_size_zero_keeps_nothing(size: int) -> None:
    s = QuerySample(size, 0.0, 10.0, 1)
    s.offer(1.0, lambda: "x")
    assert s.eligible == 0 and s.kept == []
