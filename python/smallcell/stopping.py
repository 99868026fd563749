"""The stop rules of a stage: the report's gamma rule, and the accuracy rule beside it.

Why an accuracy rule: "no MD run broke" says the potential no longer extrapolates on the
stage's MD, nothing about how accurate it is. The accuracy rule asks, in addition, that
the force error of the potential that ran the MD has stopped falling, measured on the
iteration's labeled MD sample or on the held-out set (config `stop:`). Pure functions of
numbers already in the summaries, so the local loop and the SLURM chain decide alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """Whether the accuracy criterion holds, and why, in words for status and the report."""

    ok: bool
    why: str


def force_error(stop: dict[str, Any], sample_mean: float | None,
                prev_test: dict[str, Any] | None) -> float | None:
    """The force error (eV/Å) the accuracy rule reads for an iteration: both measure the
    potential that ran the iteration's MD (iteration i-1's): the mean force error on the
    iteration's labeled MD sample, or that potential's RMSE on the held-out set."""
    if stop["metric"] == "sample":
        return sample_mean
    return None if not prev_test else prev_test.get("force_rmse")


def judge(stop: dict[str, Any], value: float | None, history: Sequence[float]) -> Verdict:
    """The accuracy criterion for a force error `value`, given the stage's earlier values
    (oldest first). The gamma rule always holds here (its part is the streak)."""
    if stop["rule"] == "gamma":
        return Verdict(True, "gamma rule: no MD run broke")
    what = "MD-sample mean" if stop["metric"] == "sample" else "held-out RMSE"
    if value is None:
        return Verdict(False, f"accuracy rule: no {what} force error measured")
    mev = 1000 * value
    target = stop["force_target"]
    if target is not None and value <= target:
        return Verdict(True, f"accuracy rule: {what} force error {mev:.1f} meV/Å at or "
                       f"below the target {1000 * target:.1f}")
    k, gain = stop["window"], stop["min_improvement"]
    last = list(history)[-k:]
    if len(last) < k:
        return Verdict(False, f"accuracy rule: {what} force error {mev:.1f} meV/Å; "
                       f"{len(last)} of the {k} earlier measurements the trend needs")
    best = min(last)
    if value > (1 - gain) * best:
        return Verdict(True, f"accuracy rule: {what} force error {mev:.1f} meV/Å has "
                       f"stopped falling (not {100 * gain:g}% below the best of the last "
                       f"{k}, {1000 * best:.1f})")
    return Verdict(False, f"accuracy rule: {what} force error {mev:.1f} meV/Å still "
                   f"falling (more than {100 * gain:g}% below the best of the last {k}, "
                   f"{1000 * best:.1f})")
