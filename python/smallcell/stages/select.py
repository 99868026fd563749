"""select: choose the configurations to label from all runs' preselected configurations.

Policies (config `select.policy`):
- threshold: every candidate with gamma_save < gamma < gamma_max (the report's rule). A run
  that broke with no candidate below gamma_max contributes its least extrapolative
  candidate, so a run that breaks at once still teaches the potential something.
- dopt: D-optimal MaxVol selection against the previous potential's active set, like
  `mlp select_add`: only candidates that enlarge the active set (row by row).
- dopt_batch: the same, one configuration at a time (maxvol.select_batch): a taken
  configuration brings all its neighbourhoods into the active set before the rest are
  graded again, so near-duplicate frames of one MD run are not taken together.
All honour `select.max_selected` (threshold: highest gamma first; dopt: order of entry
into the active set; dopt_batch: order of taking). Every candidate's fate and the reason
are written to selection.json.

It also draws the error study's sample (`sample.size` configurations, `sample.cfg`): at
random from every configuration the MD queried with sample.gamma_min < gamma <
sample.gamma_max, whether preselected or not (explore/<run>/queried.cfg).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smallcell import protocol
from smallcell.engines.base import trainer_for
from smallcell.engines.exploration import QUERIED
from smallcell.engines.maxvol import Selection
from smallcell.formats.cfg import Cfg, cfg_to_atoms, read_preselected, write_cfgs
from smallcell.stages import explore, initial
from smallcell.stages.common import Iteration, progress
from smallcell.state import atomic_output, atomic_write_json, mark_done, read_json
from smallcell.structures import rng_for

STAGE = "select"
SELECTED = "selected.cfg"
SAMPLE = "sample.cfg"


@dataclass
class Candidate:
    run: str
    index: int  # position in the run's preselected.cfg
    gamma: float
    cfg: Cfg
    selected: bool = False
    reason: str = ""


def candidates(it: Iteration) -> tuple[list[Candidate], set[str]]:
    """All preselected configurations of the iteration, in run order, and the broken runs."""
    out, broke = [], set()
    for run in explore.md_runs(it.cfg, it.i):
        folder = explore.run_dir(it, run)
        if read_json(folder / "gamma.json")["broke"]:
            broke.add(run.name)
        for k, cfg in enumerate(read_preselected(folder / "preselected.cfg")):
            g = cfg.mv_grade
            out.append(Candidate(run.name, k, float("nan") if g is None else g, cfg))
    return out, broke


def draw_sample(it: Iteration) -> tuple[list[Cfg], dict]:
    """The error study's configurations and their record for selection.json."""
    folders = [explore.run_dir(it, run) for run in explore.md_runs(it.cfg, it.i)]
    return draw_from(folders, it.cfg["sample"]["size"],
                     rng_for(it.cfg["run"]["seed"], "sample", it.i), f"iter{it.i}/explore")


def draw_from(folders: list[Path], size: int, rng: np.random.Generator,
              origin: str) -> tuple[list[Cfg], dict]:
    """`size` configurations drawn from the MD runs' queried.cfg files, and their record.

    Each run's queried.cfg is a uniform sample of its eligible queries, so one of its
    configurations stands for n_sample_eligible / len(queried.cfg) queries: the draw
    weights them so, without replacement, and keeps run order in the output. `origin`
    prefixes each configuration's origin feature (<origin>/<run>/queried.cfg#<k>)."""
    pool: list[tuple[str, int, Cfg, float]] = []
    eligible = 0
    for folder in folders:
        n_elig = read_json(folder / "gamma.json").get("n_sample_eligible") or 0
        kept = read_preselected(folder / QUERIED) if n_elig and size else []
        eligible += n_elig
        pool += [(folder.name, k, c, n_elig / len(kept)) for k, c in enumerate(kept)]
    if not size or not pool:
        return [], {"n_eligible": eligible, "n_drawn": 0, "drawn": []}
    w = np.array([p[3] for p in pool])
    picks = sorted(rng.choice(len(pool), size=min(size, len(pool)), replace=False,
                              p=w / w.sum()))
    out, record = [], []
    for j in picks:
        run, k, c, _ = pool[j]
        c.set_feature("origin", f"{origin}/{run}/{QUERIED}#{k}")
        out.append(c)
        record.append({"run": run, "index": k, "gamma": c.mv_grade})
    return out, {"n_eligible": eligible, "n_drawn": len(out), "drawn": record}


def _threshold(it: Iteration, cands: list[Candidate], broke: set[str]) -> None:
    save, gmax = it.cfg["extrapolation"]["gamma_save"], it.cfg.gamma_max
    for c in cands:
        c.selected = save < c.gamma < gmax
        c.reason = (f"{save:g} < gamma < {gmax:g}" if c.selected else
                    f"gamma {c.gamma:.4g} {'>=' if c.gamma >= gmax else '<='} "
                    f"{gmax if c.gamma >= gmax else save:g}")
    for name in sorted(broke):
        mine = [c for c in cands if c.run == name]
        if mine and not any(c.selected for c in mine):
            best = min(mine, key=lambda c: c.gamma)
            best.selected = True
            best.reason = (f"break fallback: run broke and none of its candidates is below "
                           f"gamma_max {gmax:g}; least extrapolative one taken")
    cap = it.cfg["select"]["max_selected"]
    chosen = [c for c in cands if c.selected]
    if cap is not None and len(chosen) > cap:
        for c in sorted(chosen, key=lambda c: -c.gamma)[cap:]:
            c.selected, c.reason = False, f"over max_selected={cap} (lower gamma)"


def _dopt(it: Iteration, cands: list[Candidate]) -> None:
    assert it.previous_train is not None
    pot = trainer_for(it.cfg).load(it.previous_train, it.species, it.cfg["trainer"]["al_mode"])
    cap, thr = it.cfg["select"]["max_selected"], it.cfg["select"]["swap_threshold"]
    images = [cfg_to_atoms(c.cfg, it.species) for c in cands]
    if it.cfg["select"]["policy"] == "dopt_batch":
        _batch(cands, pot.select(images, thr, batch=True, limit=cap), thr, cap)
        return
    sel = pot.select(images, thr)
    picked = sel.selected if cap is None else sel.selected[:cap]
    rank = {k: n for n, k in enumerate(sel.selected)}
    for k, c in enumerate(cands):
        g0 = float(sel.initial_grades[k]) if len(sel.initial_grades) else float("nan")
        c.selected = k in set(picked)
        if c.selected:
            c.reason = f"enlarges the active set (entry {rank[k] + 1}, grade {g0:.4g})"
        elif k in rank:
            c.reason = f"enlarges the active set but over max_selected={cap}"
        else:
            c.reason = f"inside the enlarged active set (grade {g0:.4g} at start)"


def _batch(cands: list[Candidate], sel: Selection, thr: float, cap: int | None) -> None:
    assert sel.at_pick is not None and sel.final_grades is not None
    rank = {k: n for n, k in enumerate(sel.selected)}
    capped = set(sel.over_cap)
    for k, c in enumerate(cands):
        g0 = float(sel.initial_grades[k])
        c.selected = k in rank
        if c.selected:
            c.reason = (f"taken {rank[k] + 1}: grade {sel.at_pick[rank[k]]:.4g} against the "
                        f"active set so far (initial {g0:.4g})")
        elif k in capped:
            c.reason = (f"grade {sel.final_grades[k]:.4g} > {thr:g} but over "
                        f"max_selected={cap}")
        else:
            c.reason = (f"grade {sel.final_grades[k]:.4g} <= {thr:g} once the taken "
                        f"configurations joined the active set (initial {g0:.4g})")


def run(it: Iteration) -> int:
    """Write selected.cfg, selection.json and the marker; return the number selected."""
    folder = it.stage(STAGE)
    if it.i == 0:
        n = initial.select(it, folder)
        mark_done(folder, {"n_selected": n})
        return n
    cands, broke = candidates(it)
    policy = it.cfg["select"]["policy"]
    check = protocol.is_check(it) and explore.report_of(it).converged(
        it.cfg["extrapolation"]["gamma_break"])
    if check:  # the refit passed its MD: the stage ends with it (protocol.summary_fields)
        for c in cands:
            c.reason = ("not labeled: this iteration checked the refitted potential and its "
                        "MD passed, so the stage ends with that potential")
    elif policy in ("dopt", "dopt_batch") and cands:
        _dopt(it, cands)
    else:
        _threshold(it, cands, broke)
    chosen = [c for c in cands if c.selected]
    for c in chosen:
        c.cfg.set_feature("origin", f"iter{it.i}/explore/{c.run}#{c.index}")
    with atomic_output(folder / SELECTED) as tmp:
        write_cfgs(tmp, [c.cfg for c in chosen])
    sample, sample_record = draw_sample(it)
    with atomic_output(folder / SAMPLE) as tmp:
        write_cfgs(tmp, sample)
    gam = np.array([c.gamma for c in cands]) if cands else np.zeros(0)
    atomic_write_json(folder / "selection.json", {
        "policy": policy, "check_passed": check, "n_candidates": len(cands),
        "n_selected": len(chosen),
        "broken_runs": sorted(broke),
        "candidate_gamma_max": float(gam.max()) if gam.size else None,
        "candidates": [{"run": c.run, "index": c.index, "gamma": c.gamma,
                        "selected": c.selected, "reason": c.reason} for c in cands],
        "sample": sample_record})
    progress(it, STAGE, ("check of the refitted potential passed: none of "
                         f"{len(cands)} candidates labeled" if check else
                         f"{policy}: {len(chosen)} of {len(cands)} candidates selected")
             + (f"; error sample: {len(sample)} of {sample_record['n_eligible']} queries"
                if sample else ""))
    mark_done(folder, {"n_selected": len(chosen), "n_sample": len(sample)})
    return len(chosen)
