"""The report's force-error anomaly: does the force error rise while the energy error
falls under the report's protocol, on which test set, and which single factor removes it?

A report on this protocol (MLIP-3 + VASP, fcc Pb, 4-atom cell) saw, over 60 active-learning
iterations, the energy error fall while the force error rose, and left it unexplained. Its
protocol is examples/report-protocol.yaml: threshold selection (every MD configuration with
2.1 < gamma < 10 labeled), every iteration refitted from the untrained template with a
fixed 100-iteration limit, one 300 K / 1 bar NPT run of the 1x1x1 cell, errors measured on
200 configurations of each iteration's own MD (gamma > 0.1). That test set moves: iteration
i's sample (iter/<i>/sample/errors.json) measures potential i-1 on the MD potential i-1 ran.

Here the protocol runs for a fixed number of iterations (run.converged_iterations 1000, so
converged iterations do not end it), beside variants that change one factor each:
`fit` (converged warm-started fits with restarts), `dopt` (D-optimal selection) and
`force_weight` (10x the force weight). Every potential is measured on both test sets with
the same statistic: the MOVING one (the run's own MD sample, per-configuration means) and
a FIXED held-out set (frames of two long reference-EAM NPT runs at 300 K / 1 bar, drawn
once, cached, never trained on). The trend of each error is the Theil-Sen slope (median
of pairwise slopes, robust to one bad fit) against the potential's iteration, over the
whole run and over its second half.

    .venv/bin/python bench/anomaly.py [--jobs 2] [--quick]

Run folders live under /tmp/smallcell-bench/anomaly/ (reused when complete: delete it to
start over); results.json there; the section `anomaly` of BENCHMARKS.md and
bench/figures/anomaly_*.png are rewritten (--quick: anomaly-quick/, BENCHMARKS.md left
alone).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from label_efficiency import heldout_point, merge, read_frames, wait_heldout

ROOT = benchlib.CACHE_ROOT / "anomaly"
FIGURES = benchlib.REPO / "bench" / "figures"
EXAMPLE = benchlib.REPO / "examples" / "report-protocol.yaml"
SECTION = ("anomaly", "The report's force-error anomaly")

N_ITER = 20  # every run: iterations 0..N_ITER, whatever converges
SEEDS = {"report": 3, "fit": 2, "dopt": 2, "force_weight": 2}
# what every run changes in the example: it goes on for N_ITER iterations, one core each
KEEP_GOING: dict[str, Any] = {"run": {"converged_iterations": 1000, "jobs": 1}}
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "report": ({}, "examples/report-protocol.yaml as is"),
    "fit": ({"trainer": {"warm_start": True, "max_iter": 1000, "tolerance": 0.01,
                         "restarts": 2}},
            "converged warm-started fits: warm_start true, max_iter 1000, tolerance 0.01, "
            "restarts 2"),
    "dopt": ({"select": {"policy": "dopt"}}, "select.policy dopt"),
    "force_weight": ({"trainer": {"force_weight": 0.1}}, "trainer.force_weight 0.1 (10x)"),
}
OVERRIDE: dict[str, Any] = {}  # --quick: shorter MD and sample for every variant
HELDOUT_POINT = (300.0, 1.0)  # the protocol's only (T, P)
HELDOUT_SEEDS = (901, 902)  # two independent reference trajectories, 100 frames each
SETS = ("moving", "fixed")
SIGNIFICANT = 1.0  # |slope| x iterations of the window, in % of the window's median, to count


# --------------------------------------------------------------------------- held-out set


def heldout_path(root: Path) -> Path:
    return root / "heldout.cfg"


def start_heldout(pool: ProcessPoolExecutor, root: Path) -> list[Future]:
    """Queue the reference MD ahead of the runs (label_efficiency's heldout_point); the runs
    wait for the file only when they first evaluate."""
    if heldout_path(root).exists():
        return []
    return [pool.submit(heldout_point, *HELDOUT_POINT, s) for s in HELDOUT_SEEDS]


def write_heldout(futs: list[Future], root: Path) -> None:
    from smallcell.formats.cfg import atoms_to_cfg, write_cfgs

    if not futs:
        return
    frames = [a for f in futs for a in f.result()]
    path = heldout_path(root)
    tmp = path.with_suffix(".tmp")
    write_cfgs(tmp, [atoms_to_cfg(a, ["Pb"]) for a in frames])
    tmp.replace(path)


def force_scale(frames: list[Any]) -> float:
    """Mean over configurations of the RMS reference force per atom (meV/Å): how hard
    the test set is."""
    return 1000 * float(np.mean([np.sqrt(np.mean(np.sum(a.get_forces() ** 2, axis=1)))
                                 for a in frames]))


def fixed_errors(pot: Path, frames: list[Any]) -> dict[str, float]:
    """The potential on the held-out frames: force and energy RMSE (as label_efficiency's
    errors_on) and the per-configuration means the MD sample reports (sample.py), meV."""
    from smallcell.engines.motep_mtp import MotepPotential, config_errors_of

    rows = config_errors_of(MotepPotential(pot, None, ["Pb"], "nbh"), frames)
    f = np.array([r["force_rms"] for r in rows])
    e = np.array([r["energy_per_atom_diff"] for r in rows])
    n = np.array([r["atoms"] for r in rows])
    return {"force_mean": 1000 * float(f.mean()), "energy_mean": 1000 * float(e.mean()),
            # RMS over all atoms of |dF| (errors_of's force_rmse), RMSE of dE per atom
            "force_rmse": 1000 * float(np.sqrt(np.sum(n * f**2) / n.sum())),
            "energy_rmse": 1000 * float(np.sqrt(np.mean(e**2)))}


# --------------------------------------------------------------------------- one run


def case_config(variant: str, seed: int) -> dict[str, Any]:
    cfg = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    cfg = merge(merge(merge(cfg, KEEP_GOING), VARIANTS[variant][0]), OVERRIDE)
    cfg["run"]["seed"] = seed
    return cfg


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_case(root: Path, variant: str, seed: int, n_iter: int) -> dict[str, Any]:
    """One variant with one seed for iterations 0..n_iter, then every potential on both
    test sets."""
    name = f"{variant}-s{seed}"
    folder = root / name
    cfg = case_config(variant, seed)
    done = folder / "case.json"
    old = _json(done)
    if old and old.get("config") == cfg and old.get("n_iter") == n_iter:
        return {**old, "reused": True}
    cfg_file = folder / "config.yaml"
    if cfg_file.exists() and yaml.safe_load(cfg_file.read_text()) != cfg:
        shutil.rmtree(folder)  # another protocol: start over; the same one resumes
    folder.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    _, code, _ = benchlib.timed_run(
        [str(benchlib.SMALLCELL), "--run-dir", str(folder), "iter", "--upto", str(n_iter),
         "--config", str(cfg_file)], stdout_path=folder / "iter.log")
    if code != 0:
        raise RuntimeError(f"{name}: smallcell iter failed ({code}); see {folder}/iter.log")
    frames = read_frames(wait_heldout(heldout_path(root)))
    it_dir = folder / "iter"
    iters = []
    labels = 0
    for i in range(n_iter + 1):
        s = json.loads((it_dir / str(i) / "summary.json").read_text())
        labels += s["n_labeled"]
        info = _json(it_dir / str(i) / "train" / "errors.json") or {}
        row: dict[str, Any] = {
            "iteration": i, "labels": labels, "n_train": s["n_train"],
            "n_selected": s["n_selected"], "gamma_max": s["gamma_max"], "broke": s["broke"],
            "refit": "skipped" not in info, "train_iterations": s["train_iterations"],
            "train_converged": s["train_converged"], "warm_start": info.get("warm_start"),
            "train_force_rmse": 1000 * s["train_errors"]["force_rmse"],
            "train_energy_rmse": 1000 * s["train_errors"]["energy_rmse"],
            "seconds": s["seconds"],
            "fixed": fixed_errors(it_dir / str(i) / "train" / "pot.mtp", frames)}
        # the moving set: the next iteration's MD sample measures this potential
        nxt = _json(it_dir / str(i + 1) / "sample" / "errors.json")
        if nxt and nxt.get("force_error_mean") is not None:
            sample = read_frames(it_dir / str(i + 1) / "sample" / "labeled.cfg")
            runs = [_json(g) or {} for g in
                    sorted((it_dir / str(i + 1) / "explore").glob("*/gamma.json"))]
            row["moving"] = {"force_mean": 1000 * nxt["force_error_mean"],
                             "energy_mean": 1000 * nxt["energy_per_atom_error_mean"],
                             "n": nxt["n_labeled"], "force_scale": force_scale(sample),
                             "md_steps": sum(r.get("steps_done", 0) for r in runs)}
        iters.append(row)
    out = {"name": name, "variant": variant, "seed": seed, "n_iter": n_iter, "config": cfg,
           "wall": time.perf_counter() - t0, "labels": labels,
           "heldout_force_scale": force_scale(frames), "iterations": iters}
    done.write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------- trends


def theil_sen(xs: list[float], ys: list[float]) -> float | None:
    """Median of the pairwise slopes (None for fewer than 3 points)."""
    if len(xs) < 3:
        return None
    pairs = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs))
             for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    return statistics.median(pairs) if pairs else None


def series(run: dict[str, Any], test_set: str, key: str) -> tuple[list[int], list[float]]:
    """(potential iterations, errors) of one run on one test set, over the potentials both
    sets measure (the last potential has no next MD sample)."""
    pts = [(it["iteration"], it[test_set][key]) for it in run["iterations"]
           if "moving" in it and test_set in it]
    return [p[0] for p in pts], [p[1] for p in pts]


def potential_series(run: dict[str, Any], test_set: str, key: str, start: int = 0
                     ) -> tuple[list[int], list[float]]:
    """One point per distinct potential in use from iteration `start` on: x the iteration
    it was fitted (or `start` for the one already in use), y its error, averaged over the
    MD samples that measured it (a potential carried over unchanged is measured by
    several; the fixed set gives it the same number each time)."""
    xs: list[int] = []
    groups: list[list[float]] = []
    for it in run["iterations"]:
        if "moving" not in it or it["iteration"] < start:
            continue
        if it["refit"] or not groups:
            xs.append(it["iteration"])
            groups.append([])
        groups[-1].append(it[test_set][key])
    return xs, [float(np.mean(g)) for g in groups]


def window_start(run: dict[str, Any], window: str) -> int:
    """First potential iteration of the window: 0, or the middle of the measured ones."""
    last = max(it["iteration"] for it in run["iterations"] if "moving" in it)
    return 0 if window == "whole" else (last + 1) // 2


def trend(xs: list[int], ys: list[float]) -> dict[str, Any]:
    """Theil-Sen slope of ys against xs, and the change it implies from the first to the
    last x in % of the median; sign 0 below SIGNIFICANT %."""
    slope = theil_sen([float(x) for x in xs], ys)
    if slope is None:
        return {"slope": None, "percent": None, "sign": 0}
    med = statistics.median(ys)
    pct = 100 * slope * (xs[-1] - xs[0]) / med if med else 0.0
    sign = 0 if abs(pct) < SIGNIFICANT else (1 if slope > 0 else -1)
    return {"slope": slope, "percent": pct, "sign": sign}


def scale_tracking(run: dict[str, Any]) -> dict[str, float | None]:
    """How much of the moving set's force error is the set itself: Spearman's rank
    correlation of each MD sample's mean force error with its mean reference force (how
    hard the sample is), over all samples, and within potentials measured by several
    samples (deviations from that potential's mean: only the test set differs there)."""
    from scipy.stats import spearmanr

    def rho(a: list[float], b: list[float]) -> float | None:
        if len(a) < 4:
            return None
        r = spearmanr(a, b).statistic
        return None if np.isnan(r) else float(r)

    its = [it for it in run["iterations"] if "moving" in it]
    groups: list[list[dict[str, Any]]] = []
    for it in its:
        if it["refit"] or not groups:
            groups.append([])
        groups[-1].append(it["moving"])
    dev_f, dev_s = [], []
    for g in groups:
        if len(g) >= 2:
            mf = np.mean([m["force_mean"] for m in g])
            ms = np.mean([m["force_scale"] for m in g])
            dev_f += [m["force_mean"] - mf for m in g]
            dev_s += [m["force_scale"] - ms for m in g]
    return {"rho_all": rho([it["moving"]["force_mean"] for it in its],
                           [it["moving"]["force_scale"] for it in its]),
            "rho_same_potential": rho(dev_f, dev_s)}


def moving_over_fixed(run: dict[str, Any], full_steps: int) -> tuple[list[float], list[float]]:
    """Ratios moving / fixed force error of each potential: (samples of MD that broke
    before half its steps, samples of MD that ran at least that long)."""
    early, full = [], []
    for it in run["iterations"]:
        if "moving" in it:
            r = it["moving"]["force_mean"] / it["fixed"]["force_mean"]
            (early if it["moving"]["md_steps"] < full_steps / 2 else full).append(r)
    return early, full


def flagged_pairs(run: dict[str, Any], test_set: str) -> dict[str, int]:
    """report.py's flag on consecutive potentials (force error up > 5 % while the energy
    error falls), counted over the pairs where the potential was refitted and over those
    where it was carried over unchanged (there only the test set can have moved)."""
    its = [it for it in run["iterations"] if "moving" in it]
    out = {"refit": 0, "refit_pairs": 0, "same": 0, "same_pairs": 0}
    for a, b in itertools.pairwise(its):
        key = "refit" if b["refit"] else "same"
        out[f"{key}_pairs"] += 1
        fa, fb = a[test_set]["force_mean"], b[test_set]["force_mean"]
        if fb > 1.05 * fa and b[test_set]["energy_mean"] < a[test_set]["energy_mean"]:
            out[key] += 1
    return out


def force_energy_rho(run: dict[str, Any]) -> float | None:
    """Spearman's rank correlation of the fixed set's force and energy errors over the
    run's distinct potentials: near 1 when a better fit is better at both."""
    from scipy.stats import spearmanr

    its = [it for it in run["iterations"] if it["refit"]]
    if len(its) < 4:
        return None
    rho = spearmanr([it["fixed"]["force_mean"] for it in its],
                    [it["fixed"]["energy_mean"] for it in its]).statistic
    return None if np.isnan(rho) else float(rho)


def refit_scatter(run: dict[str, Any]) -> float | None:
    """Typical factor between the fixed-set force errors of consecutive refits
    (exp of the median |ln ratio|): how much one fit differs from the next."""
    f = [it["fixed"]["force_mean"] for it in run["iterations"] if it["refit"]]
    r = [abs(np.log(b / a)) for a, b in itertools.pairwise(f)]
    return float(np.exp(statistics.median(r))) if r else None


def run_trends(run: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{test set: {window: {force: trend, energy: trend, anomaly: bool}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for test_set in SETS:
        out[test_set] = {}
        for window in ("whole", "second half"):
            start = window_start(run, window)
            f = trend(*potential_series(run, test_set, "force_mean", start))
            e = trend(*potential_series(run, test_set, "energy_mean", start))
            out[test_set][window] = {"force": f, "energy": e,
                                     "anomaly": f["sign"] > 0 and e["sign"] < 0}
    return out


def variant_summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per test set and window: median slopes over seeds, seeds with the anomaly."""
    per = [run_trends(r) for r in runs]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for test_set in SETS:
        out[test_set] = {}
        for window in ("whole", "second half"):
            ts = [p[test_set][window] for p in per]

            def med(key: str, ts: list[dict[str, Any]] = ts) -> float | None:
                xs = [t[key]["slope"] for t in ts if t[key]["slope"] is not None]
                return statistics.median(xs) if xs else None

            n = sum(t["anomaly"] for t in ts)
            out[test_set][window] = {
                "force_slope": med("force"), "energy_slope": med("energy"),
                "force_up": sum(t["force"]["sign"] > 0 for t in ts),
                "energy_down": sum(t["energy"]["sign"] < 0 for t in ts),
                "anomaly_seeds": n, "seeds": len(ts), "anomaly": 2 * n > len(ts)}
    return out


def answer(summary: dict[str, dict[str, dict[str, dict[str, Any]]]],
           window: str = "whole") -> list[str]:
    """The answer in sentences: where the report protocol shows the anomaly (a majority of
    seeds with the force error rising and the energy error falling), which variant
    removes it."""
    rep = summary.get("report")
    if rep is None:
        return ["the report protocol did not run"]
    lines = []
    shown = [s for s in SETS if rep[s][window]["anomaly"]]
    for s in SETS:
        r = rep[s][window]
        lines.append(f"report protocol, {s} test set ({window} run): force error "
                     f"{_dir(r['force_slope'])} ({r['force_up']}/{r['seeds']} seeds rising), "
                     f"energy error {_dir(r['energy_slope'])} ({r['energy_down']}/"
                     f"{r['seeds']} seeds falling): anomaly "
                     f"{'reproduced' if r['anomaly'] else 'not reproduced'} "
                     f"({r['anomaly_seeds']}/{r['seeds']} seeds)")
    if not shown:
        lines.append(f"neither test set shows the anomaly in a majority of seeds ({window} "
                     "run): there is nothing for a variant to remove")
    for s in shown:
        gone = [v for v in summary if v != "report" and not summary[v][s][window]["anomaly"]]
        kept = [v for v in summary if v != "report" and summary[v][s][window]["anomaly"]]
        lines.append(f"on the {s} set, removed by: {', '.join(gone) or 'none'}; "
                     f"still there with: {', '.join(kept) or 'none'}")
    return lines


def _dir(slope: float | None) -> str:
    if slope is None:
        return "not measured"
    word = "flat" if slope == 0 else ("rising" if slope > 0 else "falling")
    return f"{word} ({slope:+.3g}/iteration, median)"


# --------------------------------------------------------------------------- output


def figures(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per variant: force and energy error of every potential on both test sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant in VARIANTS:
        runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not runs:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
        for k, r in enumerate(runs):
            c = f"C{k}"
            for test_set, ls in (("moving", "-"), ("fixed", "--")):
                for ax, key in zip(axes[:2], ("force_mean", "energy_mean"), strict=True):
                    xs, ys = series(r, test_set, key)
                    ax.plot(xs, ys, ls, color=c, marker="o" if ls == "-" else "s", ms=3,
                            label=f"seed {r['seed']}, {test_set}")
            xs = [it["iteration"] for it in r["iterations"] if "moving" in it]
            axes[2].plot(xs, [it["moving"]["force_scale"] for it in r["iterations"]
                              if "moving" in it], "-", color=c, marker="o", ms=3,
                         label=f"seed {r['seed']}: MD sample")
        axes[2].axhline(runs[0]["heldout_force_scale"], ls="--", color="k", lw=1,
                        label="held-out set")
        axes[0].set_ylabel("mean force error per configuration (meV/Å)")
        axes[1].set_ylabel("mean |dE| per atom (meV/atom)")
        axes[2].set_ylabel("mean RMS reference force (meV/Å)")
        axes[2].set_title("how hard each test set is")
        for ax in axes[:2]:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title("moving (MD sample, solid) vs fixed (held-out, dashed)")
        for ax in axes:
            ax.set_xlabel("potential of iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, ncol=2)
        axes[2].legend(fontsize=7)
        fig.suptitle(f"{variant}: {VARIANTS[variant][1]}")
        p = out / f"anomaly_{variant}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _spread(xs: list[float], spec: str) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return format(xs[0], spec)
    return (f"{format(statistics.median(xs), spec)} [{format(min(xs), spec)}-"
            f"{format(max(xs), spec)}]")


def report(results: list[dict[str, Any]], *, wall: float, jobs: int, figures_dir: Path,
           cut: list[str]) -> tuple[str, dict[str, Any]]:
    """BENCHMARKS.md's section body and the summary (slopes per variant)."""
    by_v = {v: sorted((r for r in results if r["variant"] == v), key=lambda r: r["seed"])
            for v in VARIANTS}
    by_v = {v: rs for v, rs in by_v.items() if rs}
    summary = {v: variant_summary(rs) for v, rs in by_v.items()}
    pngs = figures(results, figures_dir)
    base = case_config("report", 0)
    md = base["md"]
    n_iter = results[0]["n_iter"]
    lines = [
        f"- Date: {benchlib.utc_now()}; wall time of the whole benchmark **{wall / 60:.1f} "
        f"min** ({jobs} runs side by side, one core each; target: about 30 min on 2 cores)",
        f"- Machine: {benchlib.machine().line()}",
        f"- Protocol (`examples/report-protocol.yaml`): fcc Pb 1x1x1 (4 atoms), EAM labels, "
        f"motep level-{base['trainer']['level']} MTP; per iteration one NPT run of "
        f"{md['steps']} steps x {md['timestep']} fs at 300 K / 1 bar; threshold selection "
        "(2.1 < gamma < 10); every fit from the untrained template, 100 BFGS iterations; "
        f"error sample of {base['sample']['size']} MD configurations with gamma > "
        f"{base['sample']['gamma_min']}. Every run goes on to iteration {n_iter} "
        "(`run.converged_iterations: 1000`); a converged iteration that selects nothing "
        "carries the potential over unchanged.",
        "- Variants, one factor each: " + "; ".join(
            f"`{v}`: {VARIANTS[v][1]} ({len(rs)} seeds)" for v, rs in by_v.items()) + ".",
        f"- Test sets, the same statistic on both: **moving** = iteration i+1's MD sample "
        "(sample/errors.json: the potential of iteration i on the MD it ran itself, "
        "the report's test set); **fixed** = "
        f"{len(HELDOUT_SEEDS)} x 100 frames of 3000-step reference-EAM NPT MD at 300 K / "
        "1 bar (every 25th step after 500), the same for every potential. Errors: mean over "
        "configurations of the RMS force error per atom (meV/Å) and of |dE| per atom "
        "(meV/atom); the fixed set's RMSEs are in results.json.",
        "- Trend: Theil-Sen slope (median of pairwise slopes) of each error against the "
        "iteration, one point per distinct potential (one carried over unchanged counts "
        "once, its MD samples averaged), over the whole run (potentials 0.."
        f"{n_iter - 1}) and its second half (the potentials in use from iteration "
        f"{n_iter // 2} on); a slope counts as rising or falling when it moves the error "
        f"by more than {SIGNIFICANT:g}% of its median over the window. Anomaly: force rising and "
        "energy falling.",
    ]
    if cut:
        lines.append("- Cut to fit the time: " + "; ".join(cut) + ".")
    lines += ["", "| variant | seed | labels | refits (of which at the iteration limit) | "
              "n_train at the end | moving F: potential 0 -> last | fixed F: 0 -> last | "
              "moving E: 0 -> last | fixed E: 0 -> last | reference force moving / fixed (meV/Å) | "
              "ρ(moving F error, its reference force): all / same potential | wall s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
              "---: |"]
    for v, rs in by_v.items():
        for r in rs:
            its = [it for it in r["iterations"] if "moving" in it]
            refits = [it for it in r["iterations"] if it["refit"]]
            capped = sum(1 for it in refits if it["train_converged"] is False)
            a, b = its[0], its[-1]
            scale = statistics.median(it["moving"]["force_scale"] for it in its)
            rho = scale_tracking(r)
            lines.append(
                f"| {v} | {r['seed']} | {r['labels']} | {len(refits)} ({capped}) | "
                f"{r['iterations'][-1]['n_train']} | "
                f"{a['moving']['force_mean']:.1f} -> {b['moving']['force_mean']:.1f} | "
                f"{a['fixed']['force_mean']:.1f} -> {b['fixed']['force_mean']:.1f} | "
                f"{a['moving']['energy_mean']:.2f} -> {b['moving']['energy_mean']:.2f} | "
                f"{a['fixed']['energy_mean']:.2f} -> {b['fixed']['energy_mean']:.2f} | "
                f"{scale:.0f} / {r['heldout_force_scale']:.0f} | "
                f"{_f(rho['rho_all'], '.2f')} / {_f(rho['rho_same_potential'], '.2f')} | "
                f"{r['wall']:.0f} |")
    lines += ["", "Trends (median over seeds of the slope per iteration; in brackets the "
              "seeds rising (F) or falling (E) of all):", "",
              "| variant | test set | F slope, whole run (meV/Å) | E slope, whole run "
              "(meV/atom) | anomaly, whole run | F slope, 2nd half | E slope, 2nd half | "
              "anomaly, 2nd half |", "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |"]
    for v, sm in summary.items():
        for s in SETS:
            w, h = sm[s]["whole"], sm[s]["second half"]
            lines.append(
                f"| {v} | {s} | {_f(w['force_slope'], '+.3f')} ({w['force_up']}/{w['seeds']})"
                f" | {_f(w['energy_slope'], '+.4f')} ({w['energy_down']}/{w['seeds']}) | "
                f"{'yes' if w['anomaly'] else 'no'} ({w['anomaly_seeds']}/{w['seeds']}) | "
                f"{_f(h['force_slope'], '+.3f')} ({h['force_up']}/{h['seeds']}) | "
                f"{_f(h['energy_slope'], '+.4f')} ({h['energy_down']}/{h['seeds']}) | "
                f"{'yes' if h['anomaly'] else 'no'} ({h['anomaly_seeds']}/{h['seeds']}) |")
    lines += ["", "Consecutive potentials flagged the way `smallcell report` flags them "
              "(force error up more than 5 % while the energy error falls), summed over "
              "seeds: pairs where the potential was refitted, and pairs where it was "
              "carried over unchanged (no new data: only the test set differs). Fit "
              "scatter: typical factor between the fixed-set force errors of consecutive "
              "refits; ρ(F, E): rank correlation of the fixed-set force and energy errors "
              "over a run's refits (median over seeds). Moving / fixed F: each potential's force "
              "error on its MD sample over that on the held-out set, median [range] over "
              "all potentials of all seeds, split by how long the sampled MD ran.", "",
              "| variant | moving set: refitted | moving set: unchanged potential | "
              "fixed set: refitted | fit scatter | ρ(F, E) fixed set | moving / fixed F: "
              "MD broke before half its steps | moving / fixed F: longer MD |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v, rs in by_v.items():
        mv = [flagged_pairs(r, "moving") for r in rs]
        fx = [flagged_pairs(r, "fixed") for r in rs]

        def tot(xs: list[dict[str, int]], key: str) -> str:
            return f"{sum(x[key] for x in xs)}/{sum(x[key + '_pairs'] for x in xs)}"

        scat = [x for x in (refit_scatter(r) for r in rs) if x is not None]
        rhos = [x for x in (force_energy_rho(r) for r in rs) if x is not None]
        ratios = [moving_over_fixed(r, md["steps"]) for r in rs]
        early = [x for e, _ in ratios for x in e]
        full = [x for _, f in ratios for x in f]
        lines.append(f"| {v} | {tot(mv, 'refit')} | {tot(mv, 'same')} | {tot(fx, 'refit')} | "
                     f"{_spread(scat, '.2f')} | {_spread(rhos, '.2f')} | "
                     f"{_spread(early, '.2f')} (n={len(early)}) | "
                     f"{_spread(full, '.2f')} (n={len(full)}) |")
    lines += ["", "Answer (from the table above):", ""]
    lines += [f"- {t}" for t in answer(summary, "whole") + answer(summary, "second half")]
    lines += ["", "Per iteration, first seed of each variant (potential: fixed F / moving F "
              "meV/Å, fixed E / moving E meV/atom, n_train, * = refitted):", ""]
    for v, rs in by_v.items():
        r = rs[0]
        cells = []
        for it in r["iterations"]:
            mv = it.get("moving")
            cells.append(f"{it['iteration']}{'*' if it['refit'] else ''}: "
                         f"F {it['fixed']['force_mean']:.0f}/"
                         f"{_f(mv and mv['force_mean'], '.0f')} E "
                         f"{it['fixed']['energy_mean']:.2f}/"
                         f"{_f(mv and mv['energy_mean'], '.2f')} n {it['n_train']}")
        lines.append(f"- `{v}` (seed {r['seed']}): " + "; ".join(cells))
    lines.append("")
    lines += [f"![{p.stem}]({p.relative_to(benchlib.REPO)})" if p.is_relative_to(
        benchlib.REPO) else f"![{p.stem}]({p})" for p in pngs]
    return "\n".join(lines), summary


def cases(seeds: dict[str, int]) -> list[tuple[str, int]]:
    return [(v, s) for v in VARIANTS for s in range(1, seeds[v] + 1)]


def main(argv: list[str] | None = None) -> int:
    global N_ITER
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (1 core each)")
    ap.add_argument("--iterations", type=int, help=f"iterations per run (default {N_ITER})")
    ap.add_argument("--quick", action="store_true",
                    help="a minutes-long smoke run of the whole pipeline (1 seed, 4 "
                         "iterations, short MD) into anomaly-quick/; BENCHMARKS.md is left "
                         "alone")
    ap.add_argument("--root", type=Path, help=f"run folders and results (default {ROOT})")
    args = ap.parse_args(argv)
    root = args.root.resolve() if args.root else (
        benchlib.CACHE_ROOT / "anomaly-quick" if args.quick else ROOT)
    figures_dir = root / "figures" if args.quick else FIGURES
    seeds = dict(SEEDS)
    cut = [f"{N_ITER} iterations instead of the report's 60 (the potential changes in "
           "7-12 of them, later iterations mostly select nothing)",
           "2 seeds per variant, 3 for `report`",
           "one 10 ps MD run per iteration (the report does not state its length)"]
    if args.quick:
        N_ITER = 4
        seeds = dict.fromkeys(SEEDS, 1)
        OVERRIDE.update({"md": {"steps": 300}, "sample": {"size": 40}})
    if args.iterations:
        N_ITER = args.iterations
    if args.quick or args.iterations:
        cut = []
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    todo = cases(seeds)
    # the converged fits are the longest runs: start them first
    todo.sort(key=lambda c: c[0] != "fit")
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        held = start_heldout(pool, root)
        futs = {pool.submit(run_case, root, v, s, N_ITER): f"{v}-s{s}" for v, s in todo}
        write_heldout(held, root)
        for n, (fut, name) in enumerate(futs.items(), 1):
            results.append(fut.result())
            print(f"[{n}/{len(futs)}] {name}: {results[-1]['labels']} labels, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    prev = _json(root / "results.json")
    if prev and all(r.get("reused") for r in results):  # only redrawn: the runs' time
        wall = prev["wall"]
    body, summary = report(results, wall=wall, jobs=args.jobs, figures_dir=figures_dir,
                           cut=cut)
    (root / "results.json").write_text(json.dumps(
        {"wall": wall, "n_iter": N_ITER, "summary": summary, "runs": results}, indent=1))
    (root / "report.md").write_text(body + "\n")
    print(body)
    if not args.quick:
        benchlib.write_sections({SECTION[0]: (SECTION[1], body)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
