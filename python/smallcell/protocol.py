"""The small-cell protocol (the report's Algorithm 3): stages of ever larger cells.

A stage is the top-level config with a few keys replaced by its `stages[k]` entry. Each
iteration's frozen config.yaml is the effective config of its stage (with `stage: k`), so
every stage module keeps reading structure.cell, grid.*, md.steps and select.* as before.
Which stage an iteration runs follows from the summary of the iteration before: the same
stage until that iteration ended it (converged, or the stage's max_iterations reached),
then the next one. The data set and the potential carry over by themselves: collect
appends to the previous train.cfg and train warm-starts from the previous potential,
whatever the cell.

Without `stages` the run is one stage of the top-level settings, without a cap: the loop
behaves exactly as before the protocol existed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from smallcell import stopping
from smallcell.config import Config
from smallcell.stages.common import CONFIG, Iteration
from smallcell.state import RunPaths, read_json
from smallcell.status import CAPPED, CONVERGED

# stages[k] key -> the top-level key it replaces
OVERRIDES: dict[str, tuple[str, str]] = {
    "cell": ("structure", "cell"),
    "lattice": ("structure", "lattice"),
    "a": ("structure", "a"),
    "displacement": ("structure", "displacement"),
    "temperatures": ("grid", "temperatures"),
    "pressures": ("grid", "pressures"),
    "seeds_per_point": ("grid", "seeds_per_point"),
    "draws": ("grid", "draws"),
    "md_steps": ("md", "steps"),
    "policy": ("select", "policy"),
    "max_selected": ("select", "max_selected"),
}



def n_stages(cfg: Config) -> int:
    return max(1, len(cfg["stages"]))


def _entry(cfg: Config, k: int) -> dict[str, Any]:
    return cfg["stages"][k] if cfg["stages"] else {}


def effective(cfg: Config, k: int) -> Config:
    """The config of stage `k`: the top level with the stage's keys in place."""
    if not 0 <= k < n_stages(cfg):
        raise ValueError(f"stage {k} of a protocol with {n_stages(cfg)} stage(s)")
    data = copy.deepcopy(cfg.data)
    for key, value in _entry(cfg, k).items():
        if key in OVERRIDES and value is not None:
            section, name = OVERRIDES[key]
            data[section][name] = copy.deepcopy(value)
    data["stage"] = k
    return Config(data, cfg.source)


def name(cfg: Config, k: int) -> str:
    """The stage's name: its own, or its cell (1x1x2)."""
    entry = _entry(cfg, k)
    cell = entry.get("cell") or cfg["structure"]["cell"]
    return entry.get("name") or "x".join(str(n) for n in cell)


def cap(cfg: Config, k: int) -> int | None:
    return _entry(cfg, k).get("max_iterations")


def stage_of(paths: RunPaths, i: int, cfg: Config) -> int:
    """The stage of a new iteration i: that of iteration i-1, or the next one when i-1
    ended it."""
    if i == 0:
        return 0
    prev = read_json(paths.summary(i - 1))
    k = int(prev.get("stage", 0))
    return min(k + 1 if prev.get("stage_end") else k, n_stages(cfg) - 1)


def open_iteration(root: Path, i: int, cfg: Config) -> Iteration:
    """Iteration i with the config of its stage (frozen on first use; a frozen one wins)."""
    paths = RunPaths(root)
    if (paths.it(i) / CONFIG).exists():
        return Iteration.open(root, i, cfg)
    return Iteration.open(root, i, effective(cfg, stage_of(paths, i, cfg)))


def is_check(it: Iteration) -> bool:
    """Iteration `it` checks a refitted potential: the iteration before it, in the same
    stage, met the stop rule but added labels, so the potential it hands on has not run
    the stage's MD yet. A check iteration whose MD passes labels nothing for training and
    ends the stage with that potential."""
    return _checks(_previous(it), int(it.cfg["stage"]))


def _previous(it: Iteration) -> dict[str, Any] | None:
    """The summary of the iteration before `it` (None for iteration 0)."""
    path = it.paths.summary(it.i - 1)
    return read_json(path) if it.i > 0 and path.exists() else None


def _checks(prev: dict[str, Any] | None, k: int) -> bool:
    """Whether an iteration of stage `k` after `prev` checks a refit (see is_check)."""
    return prev is not None and bool(prev.get("check_due")) and int(prev.get("stage", 0)) == k


def _stage_history(it: Iteration, k: int) -> list[float]:
    """The stop rule's force errors of the stage's earlier iterations, oldest first."""
    out: list[float] = []
    i = it.i - 1
    while i > 0 and it.paths.summary(i).exists():
        s = read_json(it.paths.summary(i))
        if int(s.get("stage", 0)) != k or s.get("stage_end"):
            break
        if s.get("stop_force_error") is not None:
            out.append(float(s["stop_force_error"]))
        i -= 1
    return out[::-1]


def _note(cfg: Config, prev: dict[str, Any] | None, check: bool, converged: bool,
          why: str | None) -> str | None:
    """Why the stop rule holds or not, in words (None for the gamma rule's plain case,
    which the verdict already says)."""
    if check:
        prior = prev.get("stop_note") if prev and prev.get("stop_rule") == "accuracy" else None
        done = "the refitted potential passed its check MD" if converged else \
            "the refitted potential's check MD broke: the stage goes on"
        return "; ".join(x for x in (prior, done) if x)
    return why if cfg["stop"]["rule"] == "accuracy" else None


def stop_met(it: Iteration, converged: bool, force_error: float | None) -> bool:
    """Whether iteration `it` meets its stage's stop rule (see summary_fields); known
    before its fit, so the train stage can make the final refit."""
    return summary_fields(it, converged, 0, force_error)["stop_met"]


def summary_fields(it: Iteration, converged: bool, n_new: int,
                   force_error: float | None, refit: bool = False) -> dict[str, Any]:
    """What summary.json records of the protocol: the stage, the iteration's rank among
    the stage's explore iterations (iteration 0, the initial fit, is 0), the converged
    streak within the stage, the stop rule's verdict, and whether (and why) the stage
    ends here.

    The stage ends (converged) when the stop rule is met, the iteration added no labels
    and made no final refit (`refit`), so the potential it hands on is the one that ran
    its MD. When the rule is met but labels were added or the potential was refitted, the
    refit must first pass one more explore (`check_due`; the next iteration is a check,
    see is_check), even past the stage's cap."""
    cfg, k = it.cfg, int(it.cfg["stage"])
    prev = _previous(it)
    same = prev is not None and int(prev.get("stage", 0)) == k and not prev.get("stage_end")
    j = 0 if it.i == 0 else int(prev.get("stage_iteration", it.i - 1)) + 1 if same else 1
    streak = int(prev.get("converged_streak", 0)) + 1 if converged and same else int(converged)
    needed = cfg["run"]["converged_iterations"]
    check = _checks(prev, k)
    verdict = stopping.judge(cfg["stop"], force_error, _stage_history(it, k))
    met = it.i > 0 and converged and (check or (streak >= needed and verdict.ok))
    limit = cap(cfg, k)
    changed = n_new > 0 or refit
    end = (CONVERGED if met and not changed else
           CAPPED if limit and j >= limit and not met else None)
    return {"stage": k, "stage_name": name(cfg, k), "n_stages": n_stages(cfg),
            "stage_iteration": j, "stage_max_iterations": limit, "stage_end": end,
            "converged_streak": streak, "converged_needed": needed,
            "stop_rule": cfg["stop"]["rule"], "stop_force_error": force_error,
            "stop_note": _note(cfg, prev, check, converged, verdict.why
                               if converged and streak >= needed else None),
            "check": check, "check_due": bool(met and changed), "stop_met": bool(met),
            "final_fit": bool(refit)}
