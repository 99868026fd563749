"""Tables and figures of `smallcell compare` (study/compare.py), drawn from its results:
`compare.md`, `parity.png` (predicted against reference energies and forces on the fixed
set), `learning_curves.png` (error on the fixed set against the training-set size) and
`uncertainty.png` (MTP gamma and the committee's force deviation against both models'
true force errors, with the ROC curves of flagging the large errors). The report page's
"MTP against DeePMD" section (`section`) reads results.json alone."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from smallcell.state import atomic_write_text
from smallcell.study.figures import _plain_log, pyplot, save

FIGURES = ("parity.png", "learning_curves.png", "uncertainty.png")
UNCERTAINTY = {"gamma": "MTP gamma", "max_devi_f": "committee max force deviation (eV/Å)"}
ERROR_OF = {"mtp": "MTP", "committee": "committee mean"}
#: each uncertainty against its own model's error first, then against the other's
PAIRS = ("gamma|mtp", "max_devi_f|committee", "gamma|committee", "max_devi_f|mtp")


def _m(v: float | None, scale: float = 1000.0, spec: str = ".2f") -> str:
    return "-" if v is None else format(scale * v, spec)


def _g(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def label(family: str) -> str:
    """A model family's name for people: `MTP level 8`, `DeePMD seed 1`, the committee."""
    if family.startswith("mtp-l"):
        return f"MTP level {int(family[5:])}"
    if family.startswith("deepmd-s"):
        return f"DeePMD seed {family[8:]}"
    return "DeePMD committee (mean)" if family == "deepmd-committee" else family


def families(names: Iterable[str]) -> list[str]:
    """Model families in reading order: the MTPs by level, the DeePMD members by seed,
    the committee last (results.json sorts its keys alphabetically)."""
    def key(f: str) -> tuple[int, int]:
        digits = "".join(ch for ch in f if ch.isdigit())
        rank = 0 if f.startswith("mtp") else 1 if f.startswith("deepmd-s") else 2
        return rank, int(digits) if digits else 0

    return sorted(names, key=key)


def accuracy_table(results: dict[str, Any], name: str) -> str:
    """Markdown: every final model's errors on set `name`, its training and evaluation
    cost."""
    head = ["model", "E RMSE meV/atom", "E MAE", "F RMSE meV/Å", "F MAE", "S RMSE GPa",
            "S MAE", "train CPU s", "train wall s", "µs/atom/step"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for family in families(results["models"]):
        m = results["models"][family]
        e = m["sets"][name]
        lines.append("| " + " | ".join([
            label(family), _m(e["energy_rmse"], spec=".3f"), _m(e["energy_mae"], spec=".3f"),
            _m(e["force_rmse"]), _m(e["force_mae"]), _g(e["stress_rmse"], ".4f"),
            _g(e["stress_mae"], ".4f"), f"{m['train_cpu_seconds']:.1f}",
            f"{m['train_wall_seconds']:.1f}", _g(m["us_per_atom_step"], ".1f")]) + " |")
    return "\n".join(lines)


def iteration_table(results: dict[str, Any]) -> str:
    """Markdown: force RMSE (meV/Å) of every final model on each iteration's sample."""
    per = results.get("per_iteration") or {}
    if not per:
        return ""
    fams = families(results["models"])
    lines = ["| error sample of iteration | " + " | ".join(map(label, fams)) + " |",
             "|---:" + "|---:" * len(fams) + "|"]
    for i, row in sorted(per.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {i} | " + " | ".join(_m(row[f]["force_rmse"]) for f in fams)
                     + " |")
    return "\n".join(lines)


def curve_table(results: dict[str, Any]) -> str:
    """Markdown: the learning curves' points (errors on the fixed set)."""
    lines = ["| model | data of iterations | training configurations | E RMSE meV/atom | "
             "F RMSE meV/Å |", "|---|---:|---:|---:|---:|"]
    for family in families(results["learning_curves"]):
        for p in results["learning_curves"][family]:
            lines.append(f"| {label(family)} | 0..{p['k']} | {p['n_train']} | "
                         f"{_m(p['energy_rmse'], spec='.3f')} | {_m(p['force_rmse'])} |")
    return "\n".join(lines)


def uncertainty_table(results: dict[str, Any]) -> str:
    """Markdown: Spearman and ROC AUC of each uncertainty against each model's error."""
    u = results.get("uncertainty")
    if not u:
        return ""
    lines = ["| uncertainty | true force error of | Spearman ρ | ROC AUC | flagged "
             "(error > 2 x median) |", "|---|---|---:|---:|---:|"]
    for key in (k for k in PAIRS if k in u["pairs"]):
        p = u["pairs"][key]
        score, err = key.split("|")
        lines.append(f"| {UNCERTAINTY[score]} | {ERROR_OF[err]} | {_g(p['spearman'])} | "
                     f"{_g(p['auc'])} | {p['n_flagged']} of {p['n']} |")
    return "\n".join(lines)


def parity(data: dict[str, tuple[Any, Any]], set_name: str, out: Path) -> Path:
    """Energy per atom and force components, predicted against the reference, one column
    per model family, on the fixed set."""
    plt = pyplot()
    n = len(data)
    fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 6.4), constrained_layout=True,
                             squeeze=False)
    for col, (family, (ref, pred)) in enumerate(data.items()):
        for row, (x, y, unit, what) in enumerate((
                (ref.energy / ref.natoms, pred.energy / pred.natoms, "eV/atom", "energy"),
                (ref.forces.ravel(), pred.forces.ravel(), "eV/Å", "force component"))):
            ax = axes[row, col]
            ax.plot(x, y, ".", ms=2, alpha=0.5)
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.7)
            rmse = float(np.sqrt(np.mean((y - x) ** 2)))
            ax.set_title(f"{label(family)}\n{what} RMSE "
                         f"{1000 * rmse:.2f} m{unit}", fontsize=9)
            ax.set_xlabel(f"reference ({unit})", fontsize=8)
            ax.set_ylabel(f"predicted ({unit})", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Parity on the {set_name} set")
    return save(fig, out / FIGURES[0])


def learning_curves(results: dict[str, Any], out: Path) -> Path:
    """Force and energy RMSE on the fixed set against the number of training
    configurations, one line per model family."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for family in families(results["learning_curves"]):
        points = results["learning_curves"][family]
        n = [p["n_train"] for p in points]
        for ax, key in zip(axes, ("force_rmse", "energy_rmse"), strict=True):
            ax.plot(n, [1000 * p[key] for p in points], "-o", ms=4, label=label(family))
    for ax, what in zip(axes, ("Force RMSE (meV/Å)", "Energy RMSE (meV/atom)"), strict=True):
        ax.set_xlabel("training configurations (labels)")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Learning curves on the fixed {results['fixed_set']} set "
                 f"({results['sets'][results['fixed_set']]['n_configs']} configurations)")
    return save(fig, out / FIGURES[1])


def _roc(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over every threshold (ties stepped together)."""
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    cuts = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = np.cumsum(p)[cuts], np.cumsum(~p)[cuts]
    return (np.r_[0, fp / max(1, (~p).sum())], np.r_[0, tp / max(1, p.sum())])


def uncertainty_figure(results: dict[str, Any], out: Path) -> Path:
    """Rows: MTP gamma, the committee's deviation; columns: against the MTP's true force
    error, against the committee's, and the ROC curves of flagging errors above twice the
    median (both errors)."""
    plt = pyplot()
    u = results["uncertainty"]
    vals = {k: np.asarray(v, float) for k, v in u["values"].items()}
    scores = [s for s in UNCERTAINTY if s in vals]
    errs = [e for e in ERROR_OF if f"error_{e}" in vals]
    fig, axes = plt.subplots(len(scores), len(errs) + 1, squeeze=False,
                             figsize=(3.6 * (len(errs) + 1), 3.3 * len(scores)),
                             constrained_layout=True)
    for r, s in enumerate(scores):
        for c, e in enumerate(errs):
            p = u["pairs"][f"{s}|{e}"]
            ax = axes[r, c]
            err = vals[f"error_{e}"]
            ax.loglog(vals[s], 1000 * err, ".", ms=3, alpha=0.5)
            if p["threshold"] is not None:
                ax.axhline(1000 * p["threshold"], color="r", lw=0.8, ls="--",
                           label="2 x median error")
            ax.set_xlabel(UNCERTAINTY[s], fontsize=8)
            ax.set_ylabel(f"{ERROR_OF[e]} force error (meV/Å)", fontsize=8)
            ax.set_title(f"ρ = {_g(p['spearman'])}, AUC = {_g(p['auc'])}", fontsize=9)
            _plain_log(ax.xaxis)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        ax = axes[r, len(errs)]
        for e in errs:
            p = u["pairs"][f"{s}|{e}"]
            if p["threshold"] is None or p["auc"] is None:
                continue
            fpr, tpr = _roc(vals[s], vals[f"error_{e}"] > p["threshold"])
            ax.plot(fpr, tpr, "-", label=f"{ERROR_OF[e]} error: AUC {p['auc']:.2f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.7)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.set_title(f"ROC of {UNCERTAINTY[s].split(' (')[0]}", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no error above twice the median", ha="center", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Which uncertainty finds the errors? ({u['pairs']['gamma|mtp']['n']} "
                 "labeled MD configurations of the error samples)")
    return save(fig, out / FIGURES[2])


def _sets_line(results: dict[str, Any]) -> str:
    what = {"test": "the held-out set", "samples": "every iteration's error sample, pooled",
            "large": "the large-cell validation configurations, pooled"}
    return "; ".join(f"`{n}`: {what.get(n, n)} ({s['n_configs']} configurations, "
                     f"{s['path']})" for n, s in results["sets"].items())


def write(out: Path, results: dict[str, Any],
          parity_data: dict[str, tuple[Any, Any]] | None = None) -> Path:
    """compare.md and the figures; return compare.md's path."""
    pngs: list[Path] = []
    if parity_data:
        pngs.append(parity(parity_data, results["fixed_set"], out))
    if results["learning_curves"]:
        pngs.append(learning_curves(results, out))
    if results.get("uncertainty"):
        pngs.append(uncertainty_figure(results, out))
    parts = [f"# MTP against DeePMD\n\nRun {results['run']}: every model trained on the "
             f"final training set (data of iterations 0..{results['final_k']}, "
             f"{results['n_train']} configurations). Sets: {_sets_line(results)}. Errors: "
             "energy per atom, |F_ref - F_pred| per atom, stress components. Training "
             "time: the fit's CPU and wall seconds (the committee: its members' sum); "
             "µs/atom/step: energies, forces and stress over every configuration "
             "evaluated (the committee: its members' sum)."]
    for name in results["sets"]:
        parts.append(f"## On `{name}`\n\n{accuracy_table(results, name)}")
    if results.get("per_iteration"):
        parts.append("## Force RMSE (meV/Å) per iteration's error sample\n\n"
                     + iteration_table(results))
    if results["learning_curves"]:
        parts.append(f"## Learning curves (fixed set: `{results['fixed_set']}`)\n\n"
                     "Each model refitted on the data of iterations 0..k; the DeePMD curve "
                     "is the committee's first member alone.\n\n" + curve_table(results))
    if results.get("uncertainty"):
        parts.append(
            "## Which uncertainty finds the errors?\n\nOn the pooled error samples: MTP "
            f"gamma ({results['uncertainty']['mtp']}, its own active set) and the "
            "committee's max force deviation (DP-GEN's max_devi_f: the largest over atoms "
            "of the members' force-vector standard deviation), each against the true force "
            "error (RMS over atoms of |F_ref - F_pred|) of the MTP and of the committee's "
            "mean prediction. ROC AUC: flagging the configurations whose error exceeds "
            f"{results['flag_factor']:g} x its median.\n\n" + uncertainty_table(results))
    parts.append("\n".join(f"![{p.stem}]({p.name})" for p in pngs))
    return atomic_write_text(out / "compare.md", "\n\n".join(parts) + "\n")


def section(results: dict[str, Any]) -> list[str]:
    """The report page's "MTP against DeePMD" lines, from compare/results.json."""
    fixed = results["fixed_set"]
    lines = [f"{label(f)}: on the {fixed} set force RMSE "
             f"{_m(m['sets'][fixed]['force_rmse'])} meV/Å, energy "
             f"{_m(m['sets'][fixed]['energy_rmse'], spec='.3f')} meV/atom; training "
             f"{m['train_cpu_seconds']:.0f} CPU s; {_g(m['us_per_atom_step'], '.1f')} "
             "µs/atom/step" for f, m in ((f, results["models"][f])
                                        for f in families(results["models"]))]
    lines.insert(0, f"all trained on the final training set ({results['n_train']} "
                    f"configurations, data of iterations 0..{results['final_k']}); "
                    "compare/compare.md has every set, the learning curves and figures")
    u = results.get("uncertainty")
    if u:
        lines.append("which uncertainty finds the errors (on the error samples; Spearman "
                     "rho, ROC AUC for force errors above twice the median): " + "; ".join(
                         f"{UNCERTAINTY[k.split('|')[0]].split(' (')[0]} vs the "
                         f"{ERROR_OF[k.split('|')[1]]}'s error: {_g(p['spearman'])}, "
                         f"{_g(p['auc'])}" for k, p in ((k, u["pairs"][k]) for k in PAIRS
                                                        if k in u["pairs"])))
    return lines

