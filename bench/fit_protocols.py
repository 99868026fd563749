"""Fit protocols: what restarts, tolerance and iteration limit buy on the loop's own data.

Issue 16. The loop's delivered potential must be as good as its data allow. This measures
the embedded trainer's fit protocols on training sets the loop really builds (the default
config run to iteration 2 with the threshold rule and with `dopt`), each fit warm-started
from the previous potential as the loop does, with 3 seeds (other template draws): the
held-out force and energy RMSE (label_efficiency's held-out set: reference-EAM NPT MD at
200/300/400 K) and the fit's wall time. The "reference" protocol is the most thorough
one measured (8 starts, tight tolerance, long limit); the default is chosen as the
cheapest protocol within 5% of it.

    .venv/bin/python bench/fit_protocols.py [--jobs 2]

Writes the section `fits` of BENCHMARKS.md; scratch under /tmp/smallcell-bench/fits/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import label_efficiency as le

ROOT = benchlib.CACHE_ROOT / "fits"
SEEDS = (1, 2, 3)
# name -> (restarts, max_iter, tolerance)
PROTOCOLS: dict[str, tuple[int, int, float]] = {
    "before (1 start, 300 it, 1%)": (0, 300, 0.01),
    "1 start, 1000 it, 1%": (0, 1000, 0.01),
    "3 starts, 1000 it, 1%": (2, 1000, 0.01),
    "4 starts, 1000 it, 0.5%": (3, 1000, 0.005),
    "reference (8 starts, 3000 it, 0.1%)": (7, 3000, 0.001),
}
REFERENCE = "reference (8 starts, 3000 it, 0.1%)"
POLICIES = ("threshold", "dopt")


def data_set(policy: str) -> Path:
    """The default config run to iteration 2 with `policy` and the old fits; its folder."""
    folder = ROOT / f"run-{policy}"
    if (folder / "iter" / "2" / "summary.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((benchlib.REPO / "config.yaml").read_text())
    cfg["select"]["policy"] = policy
    cfg["trainer"].update(restarts=0, max_iter=300, tolerance=0.01)
    cfg["run"]["converged_iterations"] = 5  # never stop before iteration 2
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _, code, _ = benchlib.timed_run(
        [str(benchlib.SMALLCELL), "--run-dir", str(folder), "iter", "--upto", "2",
         "--config", str(folder / "config.yaml")], stdout_path=folder / "iter.log")
    if code != 0:
        raise RuntimeError(f"{folder}: smallcell iter failed; see iter.log")
    return folder


def fit_one(policy: str, name: str, seed: int) -> dict[str, Any]:
    from smallcell.engines.motep_mtp import TrainSettings, train
    from smallcell.formats.cfg import cfg_to_atoms, read_cfgs

    out = ROOT / "fits" / policy / f"p{list(PROTOCOLS).index(name)}-s{seed}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    run = ROOT / f"run-{policy}" / "iter"
    images = [cfg_to_atoms(c, ["Pb"]) for c in read_cfgs(run / "2" / "collect" / "train.cfg")]
    restarts, max_iter, tol = PROTOCOLS[name]
    ts = TrainSettings(level=8, max_iter=max_iter, tolerance=tol, restarts=restarts, seed=seed)
    t0 = time.perf_counter()
    fit = train(images, ["Pb"], out, ts, run / "1" / "train" / "pot.mtp")
    res = {"policy": policy, "protocol": name, "seed": seed, "n_train": len(images),
           "seconds": time.perf_counter() - t0, "iterations": fit.iterations,
           "converged": fit.converged,
           **le.errors_on(out / "pot.mtp", le.read_frames(le.wait_heldout()))}
    done.write_text(json.dumps(res))
    return res


def report(results: list[dict[str, Any]], wall: float) -> str:
    m = benchlib.machine()
    lines = [f"- Date: {benchlib.utc_now()}; whole benchmark {wall / 60:.1f} min",
             f"- Machine: {m.line()}",
             "- Data: `config.yaml` run to iteration 2 with the old fits (1 start, 300 "
             "iterations), once with `select.policy: threshold` and once with `dopt`; each "
             "fit below is iteration 2's training set warm-started from iteration 1's "
             "potential, as the loop does, with seeds 1-3 (the fresh templates' draws).",
             "- Held-out: label_efficiency's set (3 x 100 frames of reference-EAM NPT MD at "
             "200/300/400 K, 1 bar); RMSEs (force: |F_ref - F_ML| per atom).",
             "- Cells: median [min-max] over the 3 seeds.", "",
             "| training set | protocol (starts, iteration limit, tolerance) | held-out F "
             "meV/Å | held-out E meV/atom | F vs reference | fit s | converged |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]

    def cell(xs: list[float], fmt: str) -> str:
        return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"

    for pol in POLICIES:
        ref = statistics.median(r["force_rmse"] for r in results
                                if r["policy"] == pol and r["protocol"] == REFERENCE)
        for name in PROTOCOLS:
            rs = [r for r in results if r["policy"] == pol and r["protocol"] == name]
            f = [r["force_rmse"] for r in rs]
            lines.append(
                f"| {pol} ({rs[0]['n_train']} configs) | {name} | {cell(f, '.2f')} | "
                f"{cell([r['energy_rmse'] for r in rs], '.3f')} | "
                f"{statistics.median(f) / ref:.3f} | "
                f"{cell([r['seconds'] for r in rs], '.1f')} | "
                f"{sum(r['converged'] for r in rs)}/{len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    le.ROOT.mkdir(parents=True, exist_ok=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        held = le.start_heldout(pool)
        sets = [pool.submit(data_set, p) for p in POLICIES]
        le.write_heldout(held)
        for f in sets:
            f.result()
        todo = [(p, n, s) for p in POLICIES for n in PROTOCOLS for s in SEEDS]
        results = list(pool.map(fit_one, *zip(*todo, strict=True)))
    wall = time.perf_counter() - t0
    (ROOT / "results.json").write_text(json.dumps(results, indent=1))
    body = report(results, wall)
    print(body)
    benchlib.write_sections({"fits": ("Fit protocols: restarts and convergence", body)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
