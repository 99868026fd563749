"""explore: one MD run per (T, P, seed) with the previous iteration's potential.

Each run folder `explore/<run>/` ends with `preselected.cfg`, `gamma.json`, `md.log` and
`done`. A run is computed in a scratch folder and its files renamed into place before the
marker, so a killed run leaves no half-written preselected.cfg behind.
"""

from __future__ import annotations

import os
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smallcell.config import Config
from smallcell.engines.base import Explorer, explorer_for
from smallcell.engines.exploration import HIST_EDGES, MDSettings
from smallcell.engines.lammps_input import write_lammps_inputs
from smallcell.errors import SmallcellError, reraise_disk_full
from smallcell.stages.common import Iteration, Runner, progress
from smallcell.state import (
    atomic_write_json,
    atomic_write_text,
    is_debris,
    is_done,
    mark_done,
    read_json,
)
from smallcell.structures import MDRun, masses, md_runs, start_structure

STAGE = "explore"


def run_dir(it: Iteration, run: MDRun) -> Path:
    return it.stage(STAGE) / run.name


_EXPLORERS: dict[tuple[str, str], Explorer] = {}


def _explorer(cfg: Config) -> Explorer:
    """One explorer per worker process (it caches the potential it loads)."""
    key = (cfg["engines"]["explorer"], cfg["engines"]["trainer"])
    if key not in _EXPLORERS:
        _EXPLORERS[key] = explorer_for(cfg)
    return _EXPLORERS[key]


def lammps_context(cfg: Config, s: MDSettings, potential: str) -> dict[str, object]:
    """in.lammps values for an explore run (LAMMPS metal units: ps, bar, K); `potential`
    is the pot.almtp path relative to the run folder. With the LAMMPS explorer and
    `lammps.grade_floor`, MLIP-3 saves every grade above the floor and the explorer applies
    the real gamma_save afterwards."""
    lam = cfg["lammps"]
    floor = lam["grade_floor"] if cfg["engines"]["explorer"] == "lammps" else None
    return {"dump_every": lam["dump_every"], "temperature": s.temperature,
            "pressure": s.pressure, "seed": s.seed,
            "timestep": s.timestep / 1000, "steps": s.steps, "thermo_every": s.log_every,
            "tdamp": s.thermostat_tau / 1000, "pdamp": s.barostat_tau / 1000,
            "ensemble": "npt" if s.ensemble == "npt" else "langevin",
            "barostat": s.barostat, "potential": potential,
            "gamma_save": s.gamma_save if floor is None else floor,
            "gamma_break": s.gamma_break}


def md_settings(cfg: Config, run: MDRun) -> MDSettings:
    """The MD of one run, from the config's md, extrapolation and sample sections."""
    md, ex, sm = cfg["md"], cfg["extrapolation"], cfg["sample"]
    return MDSettings(
        temperature=run.temperature, pressure=run.pressure, seed=run.seed, steps=md["steps"],
        timestep=md["timestep"], ensemble=md["ensemble"], thermostat_tau=md["thermostat_tau"],
        barostat_tau=md["barostat_tau"], grade_every=md["grade_every"],
        gamma_save=ex["gamma_save"], gamma_break=ex["gamma_break"], barostat=md["barostat"],
        sample_size=sm["size"], sample_gamma_min=sm["gamma_min"],
        sample_gamma_max=sm["gamma_max"])


def run_md(final: Path, cfg: Config, run: MDRun, train_dir: Path) -> dict[str, object]:
    """One MD run into `final` with the potential of `train_dir`: computed in a scratch
    folder, its files renamed into place, gamma.json last, then the marker. Shared by the
    explore stage and the large-cell validation."""
    if is_done(final):
        return read_json(final / "gamma.json")
    settings = md_settings(cfg, run)
    scratch = final.with_name(f".{run.name}.tmp.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    atoms = start_structure(cfg, run)
    # The production explorer's input for the same run, for inspection and for LAMMPS.
    potential = os.path.relpath(Path(train_dir) / "pot.almtp", final)
    write_lammps_inputs(scratch, atoms, list(cfg["species"]), masses(cfg),
                        lammps_context(cfg, settings, potential))
    try:
        result = _explorer(cfg).run(scratch, atoms, list(cfg["species"]), settings, train_dir)
    except Exception as exc:  # a crashed MD run: one clear message, its logs kept on disk
        reraise_disk_full(exc, final)  # no room for the logs either: say what filled up
        _move_outputs(scratch, final)
        atomic_write_text(final / "error.log", traceback.format_exc())
        raise SmallcellError(f"{final}: MD run failed ({type(exc).__name__}: {exc}); "
                             "logs and traceback in that folder; run again to retry it") from None
    result["run"] = run.name
    atomic_write_json(scratch / "gamma.json", result)
    if (final / "error.log").exists():  # an earlier failed attempt: keep its story
        os.replace(final / "error.log", final / "error.previous.log")
    _move_outputs(scratch, final)
    mark_done(final)
    return result


def run_task(root: Path, i: int, k: int) -> dict[str, object]:
    """Run explore task `k` of iteration `i` (any process; everything comes from disk)."""
    it = Iteration.open(root, i)
    run = md_runs(it.cfg, i)[k]
    assert it.previous_train is not None  # iteration 0 does not explore
    return run_md(run_dir(it, run), it.cfg, run, it.previous_train)


def _move_outputs(scratch: Path, final: Path) -> None:
    """Rename every file the explorer left in its scratch folder into the run folder
    (gamma.json last, the marker after it), then drop the scratch folder."""
    final.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in scratch.iterdir() if p.is_file() and not is_debris(p.name))
    for name in sorted(names, key=lambda n: n == "gamma.json"):
        os.replace(scratch / name, final / name)
    shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class ExploreReport:
    """All runs of an iteration, aggregated (the numbers the summary and status show)."""

    n_runs: int
    n_broke: int
    n_preselected: int
    gamma_count: int
    gamma_max: float
    gamma_mean: float
    gamma_std: float
    hist: list[int]

    def converged(self, gamma_break: float) -> bool:
        """DESIGN.md section 1: no run breaks and max gamma < gamma_break, or nothing saved."""
        return (self.n_broke == 0 and self.gamma_max < gamma_break) or self.n_preselected == 0

    def as_dict(self) -> dict[str, object]:
        return {"n_runs": self.n_runs, "n_broke": self.n_broke,
                "n_preselected": self.n_preselected, "gamma_count": self.gamma_count,
                "gamma_max": self.gamma_max, "gamma_mean": self.gamma_mean,
                "gamma_std": self.gamma_std, "broke": self.n_broke > 0,
                "gamma_hist": self.hist, "gamma_hist_log10_edges": HIST_EDGES.tolist()}


def aggregate(results: list[dict]) -> ExploreReport:
    """Pool the runs' statistics exactly (sums, not means of means)."""
    count = sum(int(r["count"]) for r in results)
    total = sum(float(r["sum"]) for r in results)
    total_sq = sum(float(r["sum_sq"]) for r in results)
    mean = total / count if count else 0.0
    var = max(total_sq / count - mean * mean, 0.0) if count else 0.0
    hist = np.sum([r["hist"] for r in results], axis=0).astype(int).tolist() if results else []
    return ExploreReport(len(results), sum(bool(r["broke"]) for r in results),
                         sum(int(r["n_preselected"]) for r in results), count,
                         max((float(r["max"]) for r in results), default=0.0), mean,
                         float(np.sqrt(var)), hist)


def write_plan(it: Iteration) -> list[MDRun]:
    """The iteration's runs, also written to plan.json: what `status` counts against."""
    runs = md_runs(it.cfg, it.i)
    plan = it.stage(STAGE) / "plan.json"
    if not plan.exists():
        atomic_write_json(plan, {"runs": [r.name for r in runs]})
    return runs


def run(it: Iteration, runner: Runner) -> ExploreReport:
    """Run every missing MD run, then aggregate and mark the stage done."""
    runs = write_plan(it)
    todo = [r.index for r in runs if not is_done(run_dir(it, r))]
    done_n = len(runs) - len(todo)
    if todo:
        progress(it, STAGE, f"{done_n}/{len(runs)} runs done, running {len(todo)}")
    state = {"n": done_n, "broke": 0, "gmax": 0.0}

    def report(k: int, res: dict) -> None:
        state["n"] += 1
        state["broke"] += bool(res["broke"])
        state["gmax"] = max(state["gmax"], float(res["max"]))
        progress(it, STAGE, f"{state['n']}/{len(runs)} runs | {res['run']}: "
                 f"{res['steps_done']} steps, gamma max {res['max']:.3g} "
                 f"mean {res['mean']:.3g}, {res['n_preselected']} preselected"
                 f"{', BROKE' if res['broke'] else ''}")

    runner.map(run_task, it, todo, STAGE, report)
    results = [read_json(run_dir(it, r) / "gamma.json") for r in runs]
    rep = aggregate(results)
    atomic_write_json(it.stage(STAGE) / "explore.json", rep.as_dict())
    mark_done(it.stage(STAGE))
    return rep


def report_of(it: Iteration) -> ExploreReport:
    """The stored aggregate of a finished explore stage."""
    d = read_json(it.stage(STAGE) / "explore.json")
    return ExploreReport(d["n_runs"], d["n_broke"], d["n_preselected"], d["gamma_count"],
                         d["gamma_max"], d["gamma_mean"], d["gamma_std"], d["gamma_hist"])
