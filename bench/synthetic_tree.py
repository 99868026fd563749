"""Build a synthetic run folder the size of a long production campaign, for `status` timing.

DESIGN.md promises that `make status` stays fast "even with 100,000 task folders". Running
the real loop that long would take days, so this writes the same folder layout directly:
60 iterations x 1,500 label tasks (90,000 task folders), 12 explore runs per iteration,
iterations 0..58 complete with a `summary.json` carrying exactly the keys loop.py writes,
and iteration 59 stopped in the middle of its label stage (explore and select done, half of
the tasks labeled, no summary): the state in which people actually type `make status`.

Files that `status` never opens and that would only cost disk and build time are left out
or kept tiny (selected.cfg, train.cfg, pot.mtp; selection.json is a stub): the point is the
number of folders and markers, which is what a naive status scan pays for.

The tree is cached under /tmp/smallcell-bench/ (never in the repository) and reused while
its parameters and GENERATOR_VERSION are unchanged; building it takes tens of seconds.

    .venv/bin/python bench/synthetic_tree.py            # print the cached tree's path
    .venv/bin/python bench/synthetic_tree.py --rebuild  # build it again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import CACHE_ROOT, REPO

# Bump when the layout or the content of the generated files changes, so stale caches in
# /tmp are not mistaken for the current tree.
GENERATOR_VERSION = 1
STAMP = ".synthetic-tree.json"

# Cells of the successive stages (Algorithm 3: the cell grows once a stage converges).
CELLS = ([1, 1, 1], [2, 1, 1], [2, 2, 1], [2, 2, 2], [3, 2, 2], [3, 3, 2])
TEMPERATURES = (200.0, 300.0, 400.0, 500.0, 600.0, 700.0)
HIST_BINS = 72  # len(embedded_md.HIST_EDGES) + 1
HIST_EDGES = [round(-3.0 + 7.0 * k / 70, 6) for k in range(71)]

LABELED_CFG = """BEGIN_CFG
 Size
    4
 Supercell
         4.989822      0.000000      0.000000
         0.000000      4.989822      0.000000
         0.000000      0.000000      4.989822
 AtomData:  id type       cartes_x      cartes_y      cartes_z           fx          fy          fz
             1    0      -0.005239      0.139154     -0.077724     0.074132   -0.541610    0.442485
             2    0       0.102635      2.290415      2.685051    -0.082427    0.541021   -0.556421
             3    0       2.478183     -0.054340      2.495317     0.110247   -0.129854   -0.137856
             4    0       2.603585      2.491128     -0.035776    -0.101952    0.130443    0.251792
 Energy
      {energy:.12f}
 PlusStress:  xx          yy          zz          yz          xz          xy
        -0.15094     0.17417     0.15366    -0.58907    -0.06566    -0.18801
 Feature   EFS_by\team
 Feature   origin\titer{i}/explore/{run}#{k}
END_CFG
"""
INPUT_CFG = LABELED_CFG.replace(" Energy\n      {energy:.12f}\n", "")


@dataclass(frozen=True)
class TreeSpec:
    """The size of the synthetic campaign; part of the cache key."""

    iterations: int = 60
    tasks: int = 1500
    runs: int = 12
    fail_ratio: float = 0.02
    seed: int = 2026
    version: int = GENERATOR_VERSION

    def key(self) -> str:
        return (f"tree-v{self.version}-i{self.iterations}-t{self.tasks}-r{self.runs}"
                f"-f{self.fail_ratio:g}-s{self.seed}")


def _dump(path: Path, data: object) -> None:
    # Same format as smallcell.state.atomic_write_json (sorted, indent=1), written
    # directly: the tree is built once, so the temporary-file-and-rename dance buys nothing.
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _cell(spec: TreeSpec, i: int) -> list[int]:
    per_stage = max(1, math.ceil(spec.iterations / len(CELLS)))
    return CELLS[min(i // per_stage, len(CELLS) - 1)]


def _stage_end(spec: TreeSpec, i: int) -> bool:
    """The last iteration of a cell stage is the one that converged."""
    return i + 1 < spec.iterations and _cell(spec, i) != _cell(spec, i + 1)


def _run_names(spec: TreeSpec) -> list[str]:
    names = []
    for k in range(spec.runs):
        t = TEMPERATURES[(k // 2) % len(TEMPERATURES)]
        names.append(f"{k:03d}_T{t:g}_P1_s{k % 2}")
    return names


def _hist(rng: random.Random, count: int) -> list[int]:
    h = [0] * HIST_BINS
    for _ in range(min(count, 400)):
        h[min(HIST_BINS - 1, max(0, int(rng.gauss(33, 3))))] += 1
    return h


def _explore(spec: TreeSpec, i: int, folder: Path, rng: random.Random, t: float,
             converged: bool) -> dict[str, object]:
    """Write the run folders and explore.json; return the aggregate, as explore.run does."""
    results = []
    for k, name in enumerate(_run_names(spec)):
        run = folder / name
        run.mkdir(parents=True)
        count = rng.randint(800, 1001)
        broke = (not converged) and rng.random() < 0.4
        gmax = rng.uniform(10.5, 40.0) if broke else rng.uniform(3.0, 9.5)
        mean, std = rng.uniform(1.5, 3.0), rng.uniform(0.5, 1.5)
        res = {"break_reason": f"gamma {gmax:.4g} > gamma_break 10" if broke else "",
               "break_step": count - 1 if broke else None, "broke": broke, "count": count,
               "hist": _hist(rng, count), "hist_log10_edges": HIST_EDGES, "max": gmax,
               "mean": mean, "n_preselected": rng.randint(100, 500), "run": name,
               "seconds": rng.uniform(20, 60),
               "settings": {"barostat_tau": 1000.0, "ensemble": "npt", "gamma_break": 10.0,
                            "gamma_save": 2.1, "grade_every": 1, "log_every": 50,
                            "pressure": 1.0, "seed": rng.randrange(2**31), "steps": 1000,
                            "temperature": TEMPERATURES[(k // 2) % len(TEMPERATURES)],
                            "thermostat_tau": 100.0, "timestep": 2.0},
               "std": std, "steps_done": count, "sum": mean * count,
               "sum_sq": (std * std + mean * mean) * count}
        results.append(res)
        _dump(run / "gamma.json", res)
        (run / "md.log").write_text(
            "#    step       T/K       P/bar           E/eV       V/A3      gamma\n"
            "        0    303.06      875.44      -8.029761    121.287     1.3205\n",
            encoding="utf-8")
        (run / "preselected.cfg").write_text(
            INPUT_CFG.format(i=i, run=name, k=0).replace(
                "END_CFG", f" Feature   MV_grade\t{gmax:.6f}\nEND_CFG"), encoding="utf-8")
        _dump(run / "done", {"time": t})
    count = sum(r["count"] for r in results)
    mean = sum(r["sum"] for r in results) / count
    var = max(sum(r["sum_sq"] for r in results) / count - mean * mean, 0.0)
    hist = [sum(col) for col in zip(*(r["hist"] for r in results), strict=True)]
    n_broke = sum(bool(r["broke"]) for r in results)
    rep = {"broke": n_broke > 0, "gamma_count": count, "gamma_hist": hist,
           "gamma_hist_log10_edges": HIST_EDGES, "gamma_max": max(r["max"] for r in results),
           "gamma_mean": mean, "gamma_std": math.sqrt(var), "n_broke": n_broke,
           "n_preselected": sum(r["n_preselected"] for r in results), "n_runs": len(results)}
    _dump(folder / "explore.json", rep)
    _dump(folder / "done", {"time": t})
    return rep


def _n_marked(spec: TreeSpec, i: int) -> int:
    """Tasks with a marker: all of them, except in the last iteration (half labeled)."""
    return spec.tasks // 2 if i == spec.iterations - 1 else spec.tasks


def _failed_tasks(spec: TreeSpec, i: int) -> set[int]:
    """The ~fail_ratio tasks of iteration `i` that end `failed` (own RNG stream)."""
    rng = random.Random(f"{spec.seed}-failed-{i}")
    return {k for k in range(_n_marked(spec, i)) if rng.random() < spec.fail_ratio}


def _labels(spec: TreeSpec, i: int, folder: Path, rng: random.Random,
            t: float) -> tuple[int, int]:
    """Write vasp/<k>/ for every task, with markers on the labeled ones; (labeled, failed)."""
    runs, n_marked, doomed = _run_names(spec), _n_marked(spec, i), _failed_tasks(spec, i)
    labeled = failed = 0
    for k in range(spec.tasks):
        task = folder / str(k)
        task.mkdir(parents=True)
        run = runs[k % len(runs)]
        if k >= n_marked:  # prepared by label.prepare, not labeled yet
            (task / "input.cfg").write_text(INPUT_CFG.format(i=i, run=run, k=k),
                                            encoding="utf-8")
            continue
        if k in doomed:
            failed += 1
            reason = "SCF not converged: electronic steps reached NELM=60"
            _dump(task / "failed", {"all_reasons": [reason, reason], "attempts": 2,
                                    "reason": reason, "time": t})
        else:
            labeled += 1
            (task / "labeled.cfg").write_text(
                LABELED_CFG.format(energy=-7.9 - rng.random() * 0.1, i=i, run=run, k=k),
                encoding="utf-8")
            _dump(task / "done", {"attempts": 1, "time": t})
    return labeled, failed


def _errors(rng: random.Random, i: int, n_train: int) -> dict[str, float]:
    scale = 1.0 / math.sqrt(i + 1)
    e, f = 0.002 * scale * rng.uniform(0.8, 1.2), 0.03 * scale * rng.uniform(0.8, 1.2)
    return {"energy_mae": 0.8 * e, "energy_max": 2.5 * e, "energy_rmse": e,
            "force_mae": 0.8 * f, "force_max": 3.5 * f, "force_rmse": f,
            "n_configs": float(n_train), "stress_rmse": 0.1 * rng.uniform(0.8, 1.2)}


def build_iteration(spec: TreeSpec, root: Path, i: int, n_train_before: int) -> int:
    """Write iteration `i` under `root/iter/i`; return the training-set size after it.

    Runs in a worker process (one iteration each), so everything it needs is an argument."""
    rng = random.Random(spec.seed * 1000 + i)
    d = root / "iter" / str(i)
    d.mkdir(parents=True)
    shutil.copyfile(REPO / "config.yaml", d / "config.yaml")
    t = 1.79e9 + 3600.0 * i
    last = i == spec.iterations - 1
    converged = _stage_end(spec, i)
    rep = _explore(spec, i, d / "explore", rng, t, converged) if i > 0 else None
    (d / "select").mkdir()
    _dump(d / "select" / "selection.json",
          {"n_candidates": rep["n_preselected"] if rep else spec.tasks,
           "n_selected": spec.tasks, "policy": "threshold" if rep else "initial",
           "note": "synthetic stub: the real file lists every candidate"})
    _dump(d / "select" / "done", {"n_selected": spec.tasks, "time": t})
    labeled, failed = _labels(spec, i, d / "vasp", rng, t)
    if last:
        return n_train_before + labeled
    n_train = n_train_before + labeled
    (d / "collect").mkdir()
    _dump(d / "collect" / "done", {"n_new": labeled, "n_train": n_train, "time": t})
    (d / "train").mkdir()
    train_s = rng.uniform(200.0, 900.0)
    errors = _errors(rng, i, n_train)
    info = {"active_set_configs": 40 + i, "active_set_size": 120 + 3 * i, "converged": True,
            "errors": errors, "extra": {}, "iterations": rng.randint(150, 300),
            "loss_history": [1.0 / (n + 1) for n in range(20)],
            "message": "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH",
            "n_train": n_train, "seconds": train_s, "warm_start": i > 0}
    _dump(d / "train" / "errors.json", info)
    _dump(d / "train" / "done", {"time": t})
    stages = {"select": rng.uniform(5, 30), "label": rng.uniform(3000, 9000),
              "collect": rng.uniform(1, 5), "train": train_s}
    if rep:
        stages["explore"] = rng.uniform(300, 1200)
    summary = {
        "iteration": i, "cell": _cell(spec, i), "lattice": "fcc",
        "n_runs": rep["n_runs"] if rep else 0, "n_broke": rep["n_broke"] if rep else 0,
        "n_preselected": rep["n_preselected"] if rep else 0, "n_selected": spec.tasks,
        "n_labeled": labeled, "n_failed": failed, "n_new": labeled, "n_train": n_train,
        "gamma_max": rep["gamma_max"] if rep else None,
        "gamma_mean": rep["gamma_mean"] if rep else None,
        "gamma_std": rep["gamma_std"] if rep else None,
        "gamma_count": rep["gamma_count"] if rep else 0,
        "broke": rep["broke"] if rep else None,
        "converged": bool(rep) and converged, "policy": "threshold",
        "train_seconds": train_s, "train_iterations": info["iterations"],
        "train_converged": True, "train_skipped": None,
        "active_set_size": info["active_set_size"], "train_errors": errors,
        "stage_seconds": stages, "seconds": sum(stages.values()) + 0.5,
    }
    _dump(d / "summary.json", summary)
    return n_train


def _expected_train_sizes(spec: TreeSpec) -> list[int]:
    """Training-set size before each iteration, known up front (failures come from their
    own RNG stream) so that iterations can be built in parallel and still agree."""
    before, total = [], 0
    for i in range(spec.iterations):
        before.append(total)
        total += _n_marked(spec, i) - len(_failed_tasks(spec, i))
    return before


def build(spec: TreeSpec, dest: Path, jobs: int | None = None) -> Path:
    """Build the tree into `dest` (which must not exist), one worker per iteration."""
    dest.mkdir(parents=True)
    shutil.copyfile(REPO / "config.yaml", dest / "config.yaml")
    before = _expected_train_sizes(spec)
    with ProcessPoolExecutor(jobs or len(os.sched_getaffinity(0))) as pool:
        futures = [pool.submit(build_iteration, spec, dest, i, before[i])
                   for i in range(spec.iterations)]
        after = [f.result() for f in futures]
    for i in range(spec.iterations - 1):
        if after[i] != before[i + 1]:
            raise RuntimeError(f"iteration {i}: n_train {after[i]} != {before[i + 1]} "
                               "(the RNG replay in _expected_train_sizes is out of date)")
    return dest


def count_entries(root: Path) -> tuple[int, int]:
    """(folders, files) under `root`: the size the benchmark reports."""
    dirs = files = 0
    for _path, dnames, fnames in os.walk(root):
        dirs += len(dnames)
        files += len(fnames)
    return dirs, files


def cached_tree(spec: TreeSpec = TreeSpec(), *, rebuild: bool = False,
                cache_root: Path = CACHE_ROOT, verbose: bool = True) -> Path:
    """The synthetic tree for `spec`, built on first use and reused from /tmp afterwards.

    It is built under a temporary name and renamed into place, so an interrupted build
    never leaves a half tree that a later run would take for complete."""
    final = cache_root / spec.key()
    stamp = final / STAMP
    if stamp.exists() and not rebuild:
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    t0 = time.perf_counter()
    if verbose:
        print(f"building synthetic tree {final} ({spec.iterations} iterations x "
              f"{spec.tasks} tasks) ...", file=sys.stderr, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.key()}.", dir=cache_root))
    try:
        build(spec, scratch / "tree")
        dirs, files = count_entries(scratch / "tree")
        seconds = time.perf_counter() - t0
        _dump(scratch / "tree" / STAMP, {**asdict(spec), "folders": dirs, "files": files,
                                         "build_seconds": seconds, "built": time.time()})
        os.replace(scratch / "tree", final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if verbose:
        print(f"built in {seconds:.1f} s: {dirs} folders, {files} files", file=sys.stderr)
    return final


def tree_info(tree: Path) -> dict[str, object]:
    """The stamp written at build time (sizes, build time)."""
    return json.loads((tree / STAMP).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=TreeSpec.iterations)
    p.add_argument("--tasks", type=int, default=TreeSpec.tasks)
    p.add_argument("--runs", type=int, default=TreeSpec.runs)
    p.add_argument("--rebuild", action="store_true", help="build again even if cached")
    args = p.parse_args(argv)
    spec = TreeSpec(iterations=args.iterations, tasks=args.tasks, runs=args.runs)
    print(cached_tree(spec, rebuild=args.rebuild))
    return 0


if __name__ == "__main__":
    sys.exit(main())
