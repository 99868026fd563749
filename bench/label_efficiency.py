"""Label efficiency: how many reference labels each selection policy needs to converge.

Issue 5. On the embedded 1x1x1 fcc Pb problem (4 atoms, EAM labels, motep MTP), with
MLIP-3's semantics (grade every MD step, gamma_save 2.1, gamma_break 10) and the same MD
budget per iteration for every policy, each policy runs `smallcell iter` until no MD run
breaks and max gamma < gamma_break in two consecutive iterations
(`run.converged_iterations: 2`). Recorded per iteration: labels so far, active-set size,
max/mean gamma, and the energy and force errors of that iteration's potential on a fixed
held-out set. The held-out set is drawn once from long NPT MD with the reference EAM at
the grid's (T, P) points and is never trained on.

Accuracy is judged on the potential each run delivers (the summary's `potential`: the
one that passed the last converged MD itself), fitted by the loop's default protocol
(config.yaml's trainer section: restarts with screening, converged fits). Issue 16: it
must be within 5% of the best refit of the same training set: independent fits to a tight
tolerance from the delivered potential and from fresh templates (FINAL_FIT), the lowest
training loss winning; every start's loss and held-out errors are recorded.

    .venv/bin/python bench/label_efficiency.py [--seeds 3] [--jobs 2] [--policies all]
        [--variants] [--quick]

Run folders live under /tmp/smallcell-bench/labels/ (reused when complete: delete it to
start over); results.json there; the section `labels` of BENCHMARKS.md and the PNGs in
bench/figures/ are rewritten.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

ROOT = benchlib.CACHE_ROOT / "labels"
FIGURES = benchlib.REPO / "bench" / "figures"
MAX_ITER = 14  # iteration cap of every run (a run that reaches it did not converge)

BASE: dict[str, Any] = {
    "species": ["Pb"], "masses": [207.2],
    "structure": {"lattice": "fcc", "a": 4.95, "cell": [1, 1, 1], "displacement": 0.1},
    "grid": {"temperatures": [200.0, 300.0, 400.0], "pressures": [1.0], "seeds_per_point": 1},
    "md": {"ensemble": "npt", "timestep": 2.0, "steps": 500, "grade_every": 1},
    "extrapolation": {"gamma_save": 2.1, "gamma_break": 10.0},
    "select": {"policy": "threshold"},
    # fewer configurations than the active set has rows: the first MD breaks at once,
    # as with a small initial set in MLIP-3 practice; the same for every policy
    "initial": {"source": "generate", "n_configs": 4, "strain": 0.04, "displacement": 0.15},
    # the loop's own fits: config.yaml's defaults (restarts, tolerance, max_iter)
    "trainer": {"level": 8, "warm_start": True, "al_mode": "nbh"},
    "engines": {"explorer": "embedded", "labeler": "eam", "trainer": "motep",
                "scheduler": "local"},
    "run": {"jobs": 1, "converged_iterations": 2},
}
POLICIES: dict[str, dict[str, Any]] = {
    "threshold": {"select": {"policy": "threshold"}},
    "dopt": {"select": {"policy": "dopt"}},
    "dopt_cap4": {"select": {"policy": "dopt", "max_selected": 4}},
    "dopt_batch": {"select": {"policy": "dopt_batch"}},
}
# one seed each, threshold against dopt_batch: what moves the ratio
VARIANTS: dict[str, dict[str, Any]] = {
    "grade_every_10": {"md": {"grade_every": 10}},
    "gamma_save_3": {"extrapolation": {"gamma_save": 3.0}},
    "gamma_save_5": {"extrapolation": {"gamma_save": 5.0}},
}
VARIANT_POLICIES = ("threshold", "dopt_batch")
# the best refit of a delivered potential's training set: independent fits, each to a
# tight tolerance, from the delivered potential and from `fresh` fresh templates; the
# lowest training loss wins. Not screened after 100 iterations as the loop's restarts are:
# a screen favours the warm start, which is ahead at that point, so it cannot tell
# whether a fresh template would end lower.
FINAL_FIT = {"max_iter": 3000, "tolerance": 0.001, "fresh": 3}
DEFAULT_POLICIES = ("threshold", "dopt")  # the comparison; --policies all adds more
HELDOUT = {"steps": 3000, "skip": 500, "every": 25}  # per (T, P): 100 frames, 50 fs apart


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------- held-out set


def heldout_point(t: float, p: float, seed: int) -> list[Any]:
    """Frames of one long NPT run with the reference EAM at (t, p), labeled by it."""
    return benchlib.reference_npt_frames((1, 1, 1), t, p, seed, HELDOUT["steps"],
                                         HELDOUT["skip"], HELDOUT["every"])


def heldout_path() -> Path:
    return ROOT / "heldout.cfg"


def start_heldout(pool: ProcessPoolExecutor) -> list[Future]:
    """Queue the held-out MD (one task per (T, P)) ahead of the runs, which wait for the
    file only when they first need it: the pool's other worker starts a run at once."""
    if heldout_path().exists():
        return []
    return benchlib.start_frames(pool, heldout_point, BASE["grid"], 900)


def write_heldout(futs: list[Future]) -> None:
    benchlib.write_frames(futs, heldout_path())


def wait_heldout(path: Path | None = None, timeout: float = 3600.0) -> Path:
    """The held-out file (this benchmark's, or `path`) once another worker has written it."""
    return benchlib.wait_file(path or heldout_path(), timeout)


def errors_on(pot: Path, frames: list[Any]) -> dict[str, float]:
    """Energy RMSE (meV/atom) and force RMSE (meV/Å, |F_ref - F_ML| per atom) on frames."""
    from smallcell.engines.motep_mtp import MotepPotential, errors_of

    e = errors_of(MotepPotential(pot, None, ["Pb"], "nbh"), frames)
    return {"energy_rmse": 1000 * e["energy_rmse"], "force_rmse": 1000 * e["force_rmse"]}


def read_frames(path: Path) -> list[Any]:
    from smallcell.formats.cfg import cfg_to_atoms, read_cfgs

    return [cfg_to_atoms(c, ["Pb"]) for c in read_cfgs(path)]


# --------------------------------------------------------------------------- one run


def run_case(name: str, policy: str, seed: int, over: dict[str, Any]) -> dict[str, Any]:
    """One policy with one seed to convergence, then its held-out numbers."""

    folder = ROOT / name
    done = folder / "case.json"
    if done.exists():
        out = json.loads(done.read_text())
    else:
        out = _loop(folder, name, policy, seed, over)
        done.write_text(json.dumps(out, indent=1))
    if over or out.get("final"):  # the variants measure labels only
        return out
    # the delivered potential, and the best refit of the training set it was fitted on
    frames = read_frames(wait_heldout())
    summary = json.loads((folder / "iter" / str(out["iterations"][-1]["iteration"])
                          / "summary.json").read_text())
    pot = folder / summary["potential"]
    out["delivered"] = {"potential": summary["potential"], "fit": summary["potential_fit"],
                        "checked": summary["potential_checked"], **errors_on(pot, frames)}
    out["final"] = best_refit(folder / "final_fit", pot,
                              folder / "iter" / str(summary["potential_fit"]), seed, frames)
    done.write_text(json.dumps(out, indent=1))
    return out


def _loop(folder: Path, name: str, policy: str, seed: int,
          over: dict[str, Any]) -> dict[str, Any]:
    """`smallcell iter` to convergence (or MAX_ITER) and every iteration's numbers."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cfg = merge(merge(BASE, POLICIES[policy]), over)
    cfg["run"]["seed"] = seed
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    wall, code, _ = benchlib.timed_run(
        [str(benchlib.SMALLCELL), "--run-dir", str(folder), "iter", "--upto", str(MAX_ITER),
         "--config", str(folder / "config.yaml")], stdout_path=folder / "iter.log")
    if code != 0:
        raise RuntimeError(f"{name}: smallcell iter failed ({code}); see {folder}/iter.log")
    frames = read_frames(wait_heldout())
    iters = []
    labels = 0
    for sfile in sorted((folder / "iter").glob("*/summary.json"), key=lambda p: int(p.parent.name)):
        s = json.loads(sfile.read_text())
        labels += s["n_labeled"]
        train_dir = sfile.parent / "train"
        iters.append({"iteration": s["iteration"], "labels": labels, "n_train": s["n_train"],
                      "n_selected": s["n_selected"], "n_preselected": s["n_preselected"],
                      "active_set_size": s["active_set_size"],
                      "active_set_configs": s.get("active_set_configs"),
                      "gamma_max": s["gamma_max"], "gamma_mean": s["gamma_mean"],
                      "broke": s["broke"], "converged": s["converged"],
                      "train_iterations": s["train_iterations"],
                      "train_converged": s["train_converged"],
                      "seconds": s["seconds"], **errors_on(train_dir / "pot.mtp", frames)})
    summary = json.loads((folder / "iter" / str(iters[-1]["iteration"])
                          / "summary.json").read_text())
    return {"name": name, "policy": policy, "seed": seed, "over": over, "wall": wall,
            "converged": summary.get("stage_end") == "converged",
            "labels": iters[-1]["labels"], "initial_labels": iters[0]["labels"],
            "iterations": iters, "final": None}


def best_refit(out_dir: Path, pot: Path, fit_iter: Path, seed: int,
               frames: list[Any]) -> dict[str, Any]:
    """The training set of iteration `fit_iter` fitted independently from `pot` and from
    FINAL_FIT["fresh"] fresh templates, each to FINAL_FIT's tolerance; the lowest training
    loss is the best refit. Every start's loss and held-out errors are kept."""
    from smallcell.engines.motep_mtp import TrainSettings, train
    from smallcell.formats.cfg import cfg_to_atoms, read_cfgs

    cfg = yaml.safe_load((fit_iter / "config.yaml").read_text())  # the frozen config
    images = [cfg_to_atoms(c, ["Pb"]) for c in read_cfgs(fit_iter / "collect" / "train.cfg")]
    starts = [("warm start", pot)] + [(f"fresh template {k}", None)
                                      for k in range(1, FINAL_FIT["fresh"] + 1)]
    attempts = []
    for k, (label, start) in enumerate(starts):
        ts = TrainSettings(level=cfg["trainer"]["level"], max_iter=FINAL_FIT["max_iter"],
                           tolerance=FINAL_FIT["tolerance"], restarts=0,
                           seed=1000 * seed + k)
        t0 = time.perf_counter()
        fit = train(images, ["Pb"], out_dir / str(k), ts, start)
        attempts.append({"start": label, "loss": fit.loss_history[-1], "iterations": fit.iterations,
                         "converged": fit.converged, "seconds": time.perf_counter() - t0,
                         **errors_on(out_dir / str(k) / "pot.mtp", frames)})
    best = min(attempts, key=lambda a: a["loss"])
    return {**best, "n_train": len(images), "attempts": attempts,
            "seconds": sum(a["seconds"] for a in attempts)}


def cases(seeds: int, policies: tuple[str, ...], variants: bool
          ) -> list[tuple[str, str, int, dict[str, Any]]]:
    out = [(f"{pol}-s{s}", pol, s, {}) for s in range(1, seeds + 1) for pol in policies]
    if variants:
        out += [(f"{pol}-{var}-s1", pol, 1, over) for var, over in VARIANTS.items()
                for pol in VARIANT_POLICIES]
    return out


def main(argv: list[str] | None = None) -> int:
    global ROOT, MAX_ITER
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (1 core each)")
    ap.add_argument("--variants", action="store_true",
                    help="also the one-seed variants of what moves the label ratio")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                    help=f"comma-separated, or 'all' ({', '.join(POLICIES)})")
    ap.add_argument("--quick", action="store_true",
                    help="a minutes-long smoke run of the whole pipeline (1 seed, short MD) "
                         "into labels-quick/; BENCHMARKS.md is left alone")
    ap.add_argument("--root", type=Path, help=f"run folders and results (default {ROOT})")
    args = ap.parse_args(argv)
    from labels_report import report

    if args.root:
        ROOT = args.root.resolve()
    elif args.quick:
        ROOT = benchlib.CACHE_ROOT / "labels-quick"
    figures_dir = ROOT / "figures" if args.quick else FIGURES
    if args.quick:
        MAX_ITER = 2
        args.seeds = 1
        BASE["md"]["steps"] = 40
        BASE["trainer"]["max_iter"] = 60
        HELDOUT.update(steps=300, skip=100, every=20)
        FINAL_FIT.update(max_iter=60)
        VARIANTS.clear()
        VARIANTS["grade_every_10"] = {"md": {"grade_every": 10}}
    ROOT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    policies = tuple(POLICIES) if args.policies == "all" else tuple(args.policies.split(","))
    todo = cases(args.seeds, policies, args.variants or args.quick)
    # the threshold runs are the longest: start them first
    todo.sort(key=lambda c: c[1] != "threshold")
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        held = start_heldout(pool)
        futs = {pool.submit(run_case, *c): c[0] for c in todo}
        write_heldout(held)
        for n, (fut, name) in enumerate(futs.items(), 1):
            results.append(fut.result())
            print(f"[{n}/{len(futs)}] {name}: {results[-1]['labels']} labels, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    (ROOT / "results.json").write_text(json.dumps(results, indent=1))
    body, ok = report(results, wall=wall, jobs=args.jobs, figures_dir=figures_dir,
                      config=BASE, final_fit=FINAL_FIT, heldout=HELDOUT, max_iter=MAX_ITER)
    (ROOT / "report.md").write_text(body + "\n")
    print(body)
    if args.quick:
        return 0
    benchlib.write_sections({"labels": ("Label efficiency: selection policies", body)})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
