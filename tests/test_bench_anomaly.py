"""bench/anomaly.py's trend statistics and its answer, on synthetic runs (no MD, no fit):
a force error that rises while the energy error falls is found on the test set where it
is, and a variant without it is named as removing it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import anomaly


def _run(variant: str, seed: int, moving: list[tuple[float, float]],
         fixed: list[tuple[float, float]]) -> dict[str, Any]:
    """A run whose potential i has (force, energy) errors moving[i] and fixed[i]."""
    its = []
    for i, ((fm, em), (ff, ef)) in enumerate(zip(moving, fixed, strict=True)):
        its.append({"iteration": i, "refit": i % 2 == 0,
                    "moving": {"force_mean": fm, "energy_mean": em, "force_scale": 300 + fm},
                    "fixed": {"force_mean": ff, "energy_mean": ef}})
    its.append({"iteration": len(moving), "refit": True,
                "fixed": {"force_mean": fixed[-1][0], "energy_mean": fixed[-1][1]}})
    return {"variant": variant, "seed": seed, "iterations": its}


N = 12
RISE = [(30 + 2 * i, 3.0 - 0.2 * i) for i in range(N)]  # force up, energy down
FALL = [(40 - 2 * i, 3.0 - 0.2 * i) for i in range(N)]  # both down


def test_theil_sen_ignores_one_bad_fit() -> None:
    xs = list(range(10))
    ys = [2.0 * x for x in xs]
    ys[4] = 500.0  # one fit gone wrong
    assert anomaly.theil_sen(xs, ys) == pytest.approx(2.0)
    assert anomaly.theil_sen([0, 1], [0, 1]) is None


def test_trend_sign_and_one_point_per_potential() -> None:
    xs = list(range(N))
    up = anomaly.trend(xs, [10.0 + x for x in xs])
    assert up["slope"] == pytest.approx(1.0) and up["sign"] == 1
    assert anomaly.trend(xs, [10.0 - x for x in xs])["sign"] == -1
    assert anomaly.trend(xs, [10.0 + 1e-4 * x for x in xs])["sign"] == 0  # below the floor
    run = _run("report", 1, RISE, FALL)  # refitted at even iterations, carried over at odd
    xs, ys = anomaly.potential_series(run, "moving", "force_mean")
    assert xs == list(range(0, N, 2))
    assert ys == [pytest.approx((RISE[i][0] + RISE[i + 1][0]) / 2) for i in xs]
    start = anomaly.window_start(run, "second half")
    assert start == N // 2 and anomaly.window_start(run, "whole") == 0
    xs, _ = anomaly.potential_series(run, "fixed", "force_mean", start + 1)
    assert xs[0] == start + 1  # the potential in use when the window opens counts there


def test_answer_names_the_test_set_and_the_factor_that_removes_it() -> None:
    results = [_run("report", s, RISE, FALL) for s in (1, 2, 3)]
    results += [_run("fit", s, FALL, FALL) for s in (1, 2)]
    results += [_run("dopt", s, RISE, FALL) for s in (1, 2)]
    summary = {v: anomaly.variant_summary([r for r in results if r["variant"] == v])
               for v in ("report", "fit", "dopt")}
    rep = summary["report"]
    assert rep["moving"]["whole"]["anomaly"] and rep["moving"]["whole"]["anomaly_seeds"] == 3
    assert not rep["fixed"]["whole"]["anomaly"]
    lines = anomaly.answer(summary, "whole")
    assert "moving test set" in lines[0] and "anomaly reproduced (3/3 seeds)" in lines[0]
    assert "fixed test set" in lines[1] and "not reproduced" in lines[1]
    assert lines[2] == "on the moving set, removed by: fit; still there with: dopt"
    # the moving set's force error follows its reference force here by construction
    assert anomaly.scale_tracking(results[0])["rho_all"] == pytest.approx(1.0)
