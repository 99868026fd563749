"""The study's per-iteration figures, one PNG each (matplotlib, Agg), from rundata only.

Each function draws one figure into `out` and returns its path; `draw_all` draws every
figure the run's data allows (the gamma histograms need explore runs, the loss history
needs fits that recorded one, gamma vs error needs a labeled error sample)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smallcell.metrics import correlations
from smallcell.state import atomic_output
from smallcell.study.rundata import IterationData

DPI = 120


def pyplot():  # imported on use: status and the loop never pay for matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Save through a temporary name: a report killed mid-way leaves no truncated image."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return path


def _plain_log(axis) -> None:
    """Log-axis ticks as plain numbers (0.02, 5, 10) instead of 2x10^-2."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _finish(ax, xlabel: str, ylabel: str, title: str = "",
            ticks: Sequence[int] | None = None) -> None:
    """What every panel shares: axis labels, grid, legend, title (and, over iterations,
    one tick per iteration)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ticks is not None:
        ax.set_xticks(list(ticks))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, framealpha=0.9)
    if title:
        ax.set_title(title)


def _explored(data: Sequence[IterationData]) -> list[IterationData]:
    return [d for d in data if d.explored]


def labels_per_iteration(data: Sequence[IterationData], out: Path) -> Path:
    """Every reference calculation per iteration, by purpose (training labels, failed
    ones, the error sample), and their running total: the run's cost in DFT calls."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    its = [d.i for d in data]
    parts = [("training labels", "n_labeled", "tab:blue"), ("failed", "n_failed", "tab:red"),
             ("error sample", "sample_n", "tab:green"),
             ("error sample, failed", "sample_failed", "tab:olive")]
    bottom = np.zeros(len(data))
    for name, key, color in parts:
        n = np.array([d.summary.get(key, 0) or 0 for d in data], dtype=float)
        if n.any() or key == "n_labeled":
            ax.bar(its, n, bottom=bottom, color=color, label=name)
        bottom += n
    ax.set_ylim(0, 1.3 * max(float(bottom.max(initial=0)), 1.0))
    ax.set_xlabel("iteration")
    ax.set_ylabel("reference calculations in the iteration")
    ax.set_xticks(its)
    ax2 = ax.twinx()
    ax2.plot(its, np.cumsum(bottom), "k-o", ms=4, label="cumulative, all purposes")
    ax2.plot(its, np.cumsum([d.summary.get("n_labeled", 0) for d in data]), "k:", ms=4,
             label="cumulative training labels")
    ax2.set_ylabel("cumulative reference calculations")
    ax2.set_ylim(0, 1.3 * max(float(bottom.sum()), 1.0))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title("Reference calculations per iteration")
    return save(fig, out / "labels_per_iteration.png")


def gamma_max_per_iteration(data: Sequence[IterationData], out: Path) -> Path:
    plt = pyplot()
    ex = _explored(data)
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    ax.semilogy([d.i for d in ex], [d.summary["gamma_max"] for d in ex], "o-",
                label="max gamma over the iteration's MD")
    brk = next((d.gamma_break for d in reversed(ex) if d.gamma_break), None)
    keep = next((d.gamma_save for d in reversed(ex) if d.gamma_save), None)
    if brk:
        ax.axhline(brk, color="tab:red", ls="--", label=f"gamma_break = {brk:g}")
    if keep:
        ax.axhline(keep, color="tab:orange", ls=":", label=f"gamma_save = {keep:g}")
    _plain_log(ax.yaxis)
    _finish(ax, "iteration", "extrapolation grade gamma", "Maximum gamma per iteration",
            [d.i for d in ex])
    return save(fig, out / "gamma_max_per_iteration.png")


def gamma_mean_std_per_iteration(data: Sequence[IterationData], out: Path) -> Path:
    plt = pyplot()
    ex = _explored(data)
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    its = [d.i for d in ex]
    ax.errorbar(its, [d.summary["gamma_mean"] for d in ex],
                yerr=[d.summary.get("gamma_std") or 0.0 for d in ex], fmt="o-", capsize=4,
                label="mean ± std over every graded MD step")
    ax.set_ylim(bottom=0)
    _finish(ax, "iteration", "gamma", "Mean and standard deviation of gamma per iteration",
            its)
    return save(fig, out / "gamma_mean_std_per_iteration.png")


def chosen_iterations(data: Sequence[IterationData], k: int = 4) -> list[int]:
    """Up to k explored iterations spread from first to last."""
    its = [d.i for d in data if d.hist is not None]
    if len(its) <= k:
        return its
    return sorted({its[round(j * (len(its) - 1) / (k - 1))] for j in range(k)})


def gamma_histograms(data: Sequence[IterationData], out: Path,
                     iterations: Sequence[int] | None = None) -> Path:
    plt = pyplot()
    chosen = list(iterations) if iterations is not None else chosen_iterations(data)
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    lo, hi = np.inf, -np.inf
    for d in data:
        if d.i in chosen and d.hist is not None:
            ax.stairs(np.maximum(d.hist, 0.0), 10.0 ** d.hist_edges, lw=1.5,
                      label=f"iteration {d.i}")
            used = np.nonzero(d.hist)[0]
            if used.size:
                lo = min(lo, d.hist_edges[used[0]])
                hi = max(hi, d.hist_edges[used[-1] + 1])
    shown = [d for d in data if d.i in chosen and d.hist is not None]
    last = shown[-1] if shown else None
    for attr, style in (("gamma_save", ":"), ("gamma_break", "--")):
        value = getattr(last, attr, None)
        if value:
            ax.axvline(value, color="grey", ls=style, label=f"{attr} = {value:g}")
    if np.isfinite(lo):
        ax.set_xlim(10.0 ** (lo - 0.3), 10.0 ** (hi + 0.3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    _finish(ax, "gamma", "graded MD steps (count)",
            "Distribution of gamma over the iteration's MD")
    return save(fig, out / "gamma_histograms.png")


def errors_per_iteration(data: Sequence[IterationData], out: Path) -> Path:
    """Training errors of potential i at x = i; the true errors of potential i on the MD
    sample of iteration i+1 (which it explored) beside them, at the same x."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    its = [d.i for d in data if d.summary.get("train_errors")]
    te = [d.summary["train_errors"] for d in data if d.summary.get("train_errors")]
    sampled = [d for d in data if d.summary.get("sample_force_error_mean") is not None]
    for ax, key, skey, unit, name in (
            (axes[0], "energy_rmse", "sample_energy_per_atom_error_mean", "meV/atom", "Energy"),
            (axes[1], "force_rmse", "sample_force_error_mean", "meV/Å", "Force")):
        ax.plot(its, [1000 * e[key] for e in te], "o-", label="training set (RMSE)")
        tested = [d for d in data if (d.summary.get("test_errors") or {}).get(key) is not None]
        if tested:
            ax.plot([d.i for d in tested], [1000 * d.summary["test_errors"][key]
                                            for d in tested], "^-", color="tab:green",
                    label="held-out test set (RMSE)")
        if sampled:
            ax.plot([d.i - 1 for d in sampled], [1000 * d.summary[skey] for d in sampled],
                    "s--", color="tab:red", label="MD sample it explored (mean per config.)")
        ax.set_ylim(bottom=0)
        _finish(ax, "iteration of the potential", f"{name} error ({unit})",
                ticks=sorted(set(its) | {d.i - 1 for d in sampled}))
    fig.suptitle("Errors of each iteration's potential")
    return save(fig, out / "errors_per_iteration.png")


def pooled_correlation(data: Sequence[IterationData], key: str) -> dict[str, float | None]:
    """gamma vs the error `key` over the error samples of every iteration together."""
    rows = [r for d in data for r in d.sample_configs]
    return correlations([r["gamma"] for r in rows], [r[key] for r in rows])


def _rho(c: dict[str, float | None]) -> str:
    rho, r = c.get("spearman"), c.get("pearson_log")
    return ("ρ = -" if rho is None else f"ρ = {rho:.2f}") + (
        "" if r is None else f", r_log = {r:.2f}")


def _gamma_vs_error(data: Sequence[IterationData], out: Path, key: str, scale: float,
                    ylabel: str, what: str, name: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    sampled = [d for d in data if d.sample_configs]
    cmap = plt.get_cmap("viridis")
    for k, d in enumerate(sampled):
        rows = d.sample_configs
        g = [r["gamma"] for r in rows]
        e = [scale * r[key] for r in rows]
        ax.scatter(g, e, s=12, alpha=0.6, color=cmap(k / max(len(sampled) - 1, 1)),
                   label=f"iteration {d.i} (n = {len(rows)}, {_rho(correlations(g, e))})")
    save_at = next((d.gamma_save for d in reversed(sampled) if d.gamma_save), None)
    if save_at:
        ax.axvline(save_at, color="grey", ls=":", label=f"gamma_save = {save_at:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log(ax.xaxis)
    _plain_log(ax.yaxis)
    _finish(ax, "gamma (grade of the potential that ran the MD)", ylabel,
            f"gamma vs {what}: all iterations {_rho(pooled_correlation(data, key))}")
    ax.title.set_fontsize(10)
    return save(fig, out / name)


def gamma_vs_force_error(data: Sequence[IterationData], out: Path) -> Path:
    return _gamma_vs_error(data, out, "force_error", 1000.0,
                           "force error, RMS over atoms of |ΔF| (meV/Å)", "force error",
                           "gamma_vs_force_error.png")


def gamma_vs_energy_error(data: Sequence[IterationData], out: Path) -> Path:
    return _gamma_vs_error(data, out, "energy_per_atom_error", 1000.0,
                           "energy error |ΔE| / N (meV/atom)", "energy error",
                           "gamma_vs_energy_error.png")


def loss_history(data: Sequence[IterationData], out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    fits = [d for d in data if d.loss_history]
    cmap = plt.get_cmap("viridis")
    for k, d in enumerate(fits):
        conv = "" if d.summary.get("train_converged") else " (not converged)"
        ax.semilogy(range(len(d.loss_history)), d.loss_history, lw=1.3,
                    color=cmap(k / max(len(fits) - 1, 1)), label=f"iteration {d.i}{conv}")
    _finish(ax, "optimizer step", "training loss", "Training loss history per iteration")
    return save(fig, out / "loss_history.png")


def large_cell_error_vs_cost(large: Sequence[dict], out: Path) -> Path:
    """The large-cell force error of each validated potential against the DFT cost the
    run had spent to make it (the cell-size question: what does each stage buy?)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, name, marker in (("testset", "fixed test set (force RMSE)", "o"),
                              ("own", "own MD sample (mean force error)", "s")):
        pts = [(s["dft_seconds_so_far"] / 3600, _large_force(s, key), s) for s in large
               if _large_force(s, key) is not None]
        if not pts:
            continue
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker=marker, label=name)
        if key == "testset":
            for x, y, s in pts:
                ax.annotate(f"{s.get('stage_name') or s['iteration']}"
                            + (" (final)" if s.get("final") else ""), (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=8)
    _finish(ax, "DFT cost of the training labels so far (h)",
            "large-cell force error (meV/Å)",
            "Large-cell error per stage against DFT cost")
    return save(fig, out / "large_cell_error_vs_cost.png")


def _large_force(s: dict, key: str) -> float | None:
    v = ((s.get("testset") or {}).get("force_rmse") if key == "testset"
         else s.get("sample_force_error_mean"))
    return None if v is None else 1000 * v


ALL = (gamma_vs_force_error, gamma_vs_energy_error, labels_per_iteration,
       gamma_max_per_iteration, gamma_mean_std_per_iteration, gamma_histograms,
       errors_per_iteration, loss_history, large_cell_error_vs_cost)


def draw_all(data: Sequence[IterationData], out: Path,
             large: Sequence[dict] = ()) -> list[Path]:
    """Every figure the data allows, in ALL's order (`large`: the run's large-cell
    validations, rundata.load_large_cell)."""
    out.mkdir(parents=True, exist_ok=True)
    drawn = [labels_per_iteration(data, out), errors_per_iteration(data, out)]
    if any(d.sample_configs for d in data):
        drawn += [gamma_vs_force_error(data, out), gamma_vs_energy_error(data, out)]
    if _explored(data):
        drawn += [gamma_max_per_iteration(data, out), gamma_mean_std_per_iteration(data, out)]
    if any(d.hist is not None for d in data):
        drawn.append(gamma_histograms(data, out))
    if any(d.loss_history for d in data):
        drawn.append(loss_history(data, out))
    if sum(_large_force(s, "testset") is not None for s in large) >= 2:
        drawn.append(large_cell_error_vs_cost(large, out))
    order = [f.__name__ for f in ALL]
    return sorted(drawn, key=lambda p: order.index(p.stem))
