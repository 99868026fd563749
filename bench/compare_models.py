"""MTP against DeePMD on the label benchmark's runs (issue 20): accuracy per label and
which uncertainty ranks the true errors better.

For each run of `make bench-labels` (policies threshold and dopt_cap4, seeds 1-3, under
/tmp/smallcell-bench/labels/<policy>-s<seed>/), `smallcell compare` (study/compare.py) on
that run, with the benchmark's fixed held-out set (labels/heldout.cfg: long NPT MD with
the reference EAM at the grid's points, never trained on) as the test set:

- accuracy per label: the learning curves, each model refitted on the data of
  iterations 0..k (CURVE_POINTS points spread over the run) and measured on the held-out
  set; at the final set, MTP and DeePMD side by side;
- which uncertainty ranks the true errors: on every iteration's error sample, MTP gamma
  and the committee's max force deviation against both models' true force errors
  (Spearman rho, ROC AUC for errors above twice the median).

    .venv/bin/python bench/compare_models.py [--seeds 3] [--policies threshold dopt_cap4]
        [--curve-points 3] [--levels 8]

Comparison folders live under /tmp/smallcell-bench/compare/<policy>-s<seed>/ (finished
models kept: rerunning adds only what is missing); the section `compare` of BENCHMARKS.md
and bench/figures/compare_*.png are rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

LABELS = benchlib.CACHE_ROOT / "labels"
ROOT = benchlib.CACHE_ROOT / "compare"
FIGURES = benchlib.REPO / "bench" / "figures"
POLICIES = ("threshold", "dopt_cap4")
CURVE_POINTS = 3
PAIRS = ("gamma|mtp", "gamma|committee", "max_devi_f|mtp", "max_devi_f|committee")


def compare_run(policy: str, seed: int, curve_points: int, levels: list[int] | None,
                deepmd: bool) -> dict[str, Any]:
    """One run's comparison (its results.json), made or completed."""
    from smallcell import runconfig
    from smallcell.config import load_config
    from smallcell.study import compare

    run = LABELS / f"{policy}-s{seed}"
    if not (run / "iter").is_dir():
        raise SystemExit(f"{run}: missing: run `make bench-labels` first")
    cfg = load_config(runconfig.resolve(run, None))
    t0 = time.perf_counter()
    results = compare.run(run, ROOT / f"{policy}-s{seed}", cfg, deepmd=deepmd,
                          say=lambda m: print(f"[{policy}-s{seed}] {m}", flush=True),
                          test=LABELS / "heldout.cfg", curve_points=curve_points,
                          levels=levels)
    results["bench_seconds"] = time.perf_counter() - t0
    return results


def _span(xs: list[float], spec: str = ".2f", scale: float = 1.0) -> str:
    """median (min-max) of the seeds' values."""
    xs = sorted(scale * x for x in xs if x is not None)
    if not xs:
        return "-"
    mid = xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])
    return f"{mid:{spec}} ({xs[0]:{spec}}-{xs[-1]:{spec}})"


def accuracy_rows(cases: dict[str, dict[str, Any]]) -> list[str]:
    """Per run: final training set size and the held-out force/energy RMSE of each
    model, training CPU and speed."""
    from smallcell.study.compare_report import label

    fams = sorted({f for r in cases.values() for f in r["models"]})
    head = ["run", "labels (final set)"] + [f"{label(f)} F meV/Å" for f in fams]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name, r in cases.items():
        cells = [name, str(r["n_train"])]
        for f in fams:
            m = r["models"].get(f)
            cells.append("-" if m is None else f"{1000 * m['sets']['test']['force_rmse']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cost_rows(cases: dict[str, dict[str, Any]]) -> list[str]:
    from smallcell.study.compare_report import label

    fams = sorted({f for r in cases.values() for f in r["models"]})
    lines = ["| model | train CPU s | µs/atom/step |", "|---|---:|---:|"]
    for f in fams:
        ms = [r["models"][f] for r in cases.values() if f in r["models"]]
        lines.append(f"| {label(f)} | {_span([m['train_cpu_seconds'] for m in ms], '.0f')} | "
                     f"{_span([m['us_per_atom_step'] for m in ms], '.0f')} |")
    return lines


def curve_rows(cases: dict[str, dict[str, Any]]) -> list[str]:
    """Every learning-curve point: labels and held-out force RMSE per model family."""
    from smallcell.study.compare_report import label

    lines = ["| run | model | labels: force RMSE meV/Å |", "|---|---|---|"]
    for name, r in cases.items():
        for f, pts in r["learning_curves"].items():
            lines.append(f"| {name} | {label(f)} | " + ", ".join(
                f"{p['n_train']}: {1000 * p['force_rmse']:.1f}" for p in pts) + " |")
    return lines


def per_label_verdict(cases: dict[str, dict[str, Any]], mtp: str) -> str:
    """At every learning-curve point (same labels, same held-out set): the DeePMD
    member's force RMSE over the MTP's."""
    ratios = []
    for r in cases.values():
        a = {p["k"]: p["force_rmse"] for p in r["learning_curves"].get(mtp, [])}
        b = {p["k"]: p["force_rmse"] for p in r["learning_curves"].get(
            next((f for f in r["learning_curves"] if f.startswith("deepmd")), ""), [])}
        ratios += [b[k] / a[k] for k in a if k in b]
    if not ratios:
        return "no DeePMD learning curve measured"
    wins = sum(x > 1 for x in ratios)
    return (f"DeePMD (one member) / MTP force RMSE at the same labels: {_span(ratios)} "
            f"over {len(ratios)} points; the MTP more accurate at {wins} of them")


def uncertainty_rows(cases: dict[str, dict[str, Any]]) -> list[str]:
    from smallcell.study.compare_report import ERROR_OF, UNCERTAINTY

    lines = ["| policy | uncertainty | error of | Spearman ρ | ROC AUC |",
             "|---|---|---|---:|---:|"]
    for policy in POLICIES:
        rs = [r for n, r in cases.items()
              if n.startswith(policy + "-") and r.get("uncertainty")]
        for pair in PAIRS:
            got = [r["uncertainty"]["pairs"][pair] for r in rs
                   if pair in r["uncertainty"]["pairs"]]
            if got:
                u, e = pair.split("|")
                lines.append(f"| {policy} | {UNCERTAINTY[u].split(' (')[0]} | {ERROR_OF[e]} | "
                             f"{_span([g['spearman'] for g in got])} | "
                             f"{_span([g['auc'] for g in got])} |")
    return lines


def figure(cases: dict[str, dict[str, Any]]) -> Path:
    from smallcell.study.compare_report import label
    from smallcell.study.figures import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, len(POLICIES), figsize=(11, 4), constrained_layout=True,
                             sharey=True)
    colors: dict[str, str] = {}
    for ax, policy in zip(axes, POLICIES, strict=True):
        for name, r in cases.items():
            if not name.startswith(policy + "-"):
                continue
            for f, pts in r["learning_curves"].items():
                c = colors.setdefault(f, f"C{len(colors)}")
                ax.plot([p["n_train"] for p in pts], [1000 * p["force_rmse"] for p in pts],
                        "-o", ms=3, color=c, alpha=0.8,
                        label=label(f) if name.endswith("-s1") else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("labels (training configurations)")
        ax.set_title(policy)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out force RMSE (meV/Å)")
    fig.suptitle("MTP against DeePMD: accuracy per label (label benchmark runs, 3 seeds)")
    return save(fig, FIGURES / "compare_learning_curves.png")


def section(cases: dict[str, dict[str, Any]], seconds: float, args: argparse.Namespace
            ) -> str:
    m = benchlib.machine()
    mtp = next(iter(next(iter(cases.values()))["models"]))
    lines = [f"Measured {benchlib.utc_now()} on {m.cpu_model} ({m.nproc} cores, load "
             f"{benchlib.load1():.1f}): `bench/compare_models.py --curve-points "
             f"{args.curve_points}"
             + (f" --levels {' '.join(map(str, args.levels))}" if args.levels else "")
             + "` on the label benchmark's runs (policies "
             + f"{', '.join(args.policies)}, seeds 1-{args.seeds}), {seconds / 60:.1f} min. "
             "Every model is trained on the run's training sets and measured on the "
             "benchmark's held-out set (300 configurations of reference NPT MD); numbers "
             "are medians (min-max) over seeds.", "",
             f"**Accuracy per label.** {per_label_verdict(cases, mtp)}.", "",
             *accuracy_rows(cases), "", *cost_rows(cases), "",
             "Learning curves (each model refitted on the data of iterations 0..k; DeePMD: "
             "the committee's first member):", "", *curve_rows(cases), "",
             "**Which uncertainty ranks the true errors?** On every iteration's error sample "
             "(MD configurations never trained on): MTP gamma (the run-level MTP's own "
             "active set) and the committee's max force deviation (DP-GEN's max_devi_f), "
             "against the true force error of the MTP and of the committee's mean "
             "prediction; ROC AUC for errors above twice the median.", "",
             *uncertainty_rows(cases), "",
             "![compare learning curves](bench/figures/compare_learning_curves.png)"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--curve-points", type=int, default=CURVE_POINTS)
    p.add_argument("--levels", type=int, nargs="+", default=None,
                   help="MTP levels (default: the run's and the next)")
    p.add_argument("--mtp-only", action="store_true", help="without DeePMD (a dry run)")
    args = p.parse_args()
    t0 = time.perf_counter()
    cases = {f"{pol}-s{s}": compare_run(pol, s, args.curve_points, args.levels,
                                        not args.mtp_only)
             for pol in args.policies for s in range(1, args.seeds + 1)}
    seconds = time.perf_counter() - t0
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "bench.json").write_text(json.dumps(
        {n: {k: v for k, v in r.items() if k != "uncertainty"} | {
            "uncertainty_pairs": (r.get("uncertainty") or {}).get("pairs")}
         for n, r in cases.items()}, indent=1))
    figure(cases)
    if not args.mtp_only:
        benchlib.write_sections({"compare": ("MTP against DeePMD (issue 20)",
                                             section(cases, seconds, args))})
    print(section(cases, seconds, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
