"""bench/cell_size.py's arithmetic on synthetic learning curves (no MD, no fit): the cost
to reach an error is the cost of the first iteration at or below it, the headline ratio
pairs seeds and says "not reached" instead of inventing a number, and the MD budget per
atom-step gives every cell the steps the benchmark states."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import cell_size


def _run(seed: int, curve: list[tuple[float, float]]) -> dict[str, Any]:
    """A run whose iteration i has cumulative cost curve[i][0] and force error curve[i][1];
    its delivered potential is the last iteration's."""
    its = [{"iteration": i, "cost": c, "force_rmse": f, "potential": f"iter/{i}/train/pot.mtp"}
           for i, (c, f) in enumerate(curve)]
    last = its[-1]
    return {"seed": seed, "iterations": its,
            "final": {"potential": last["potential"], "force_rmse": last["force_rmse"]}}


def test_cost_to_reach_is_the_first_iteration_at_or_below_the_target() -> None:
    its = _run(1, [(10, 50.0), (20, 30.0), (40, 25.0), (80, 31.0), (160, 20.0)])["iterations"]
    assert cell_size.cost_to_reach(its, 30.0) == 20  # at, not only below
    assert cell_size.cost_to_reach(its, 26.0) == 40  # a later rise does not undo it
    assert cell_size.cost_to_reach(its, 19.0) is None
    # an iteration without a measured error (no potential) is skipped, not counted
    its.insert(0, {"iteration": -1, "cost": 1})
    assert cell_size.cost_to_reach(its, 100.0) == 10


def test_seed_ratios_pair_seeds_and_use_each_reference_runs_own_final_error() -> None:
    direct = {1: _run(1, [(100, 40.0), (200, 20.0), (300, 21.0)]),  # final 21: reached at 200
              2: _run(2, [(100, 40.0), (400, 10.0)])}
    protocol = {1: _run(1, [(5, 60.0), (20, 25.0), (50, 18.0)]),
                2: _run(2, [(5, 60.0), (30, 12.0)]),  # never reaches 10
                3: _run(3, [(5, 1.0)])}  # no partner: left out
    pairs = cell_size.seed_ratios(protocol, direct)
    assert [(s, t) for s, _, t in pairs] == [(1, 21.0), (2, 10.0)]
    assert pairs[0][1] == pytest.approx(50 / 200)
    assert pairs[1][1] is None
    # a looser target (1.5 x each direct run's final error) is met by both pairs
    loose = cell_size.seed_ratios(protocol, direct, 1.5)
    assert loose[0][1] == pytest.approx(20 / 200)  # 25 <= 31.5, direct at 200 (20 <= 31.5)
    assert loose[1][1] == pytest.approx(30 / 400)  # 12 <= 15, direct first at 400


def test_spread_and_md_budget() -> None:
    assert cell_size.spread([3.0, 1.0, 2.0], ".1f") == "2.0 [1.0-3.0]"
    assert cell_size.spread([None, 4.0], ".0f") == "4"  # type: ignore[list-item]
    assert cell_size.spread([], ".0f") == "-"
    budget = cell_size.SETTINGS["atom_steps"]
    for cell in ((1, 1, 1), (1, 1, 2), (2, 2, 2), (3, 3, 3)):
        atoms = cell_size.n_atoms(cell)
        assert abs(atoms * cell_size.md_steps(cell) - budget) <= atoms / 2


def test_price_accumulates_each_labels_model_cost_over_iterations() -> None:
    runs = [{"iterations": [{"label_atoms": [4, 4]}, {"label_atoms": []},
                            {"label_atoms": [32]}]}]
    cell_size.price(runs, lambda n: float(n * n))
    assert [it["cost"] for it in runs[0]["iterations"]] == [32.0, 32.0, 1056.0]
    assert runs[0]["cost"] == 1056.0
