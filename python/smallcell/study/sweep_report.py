"""Tables and figures of an MTP-level sweep, drawn from its `level*/result.json` files
alone (stages/sweep.py writes them): `results.json`, `sweep.md`, `rmse_vs_level.png`
(energy and force RMSE per test set against the level) and `train_time_vs_level.png`.

A level whose fit did not converge is shown loudly, never as the level's accuracy: a
warning above the table naming it, "**NO**" in the table's converged column, and hollow
markers with a "not converged" legend entry and label in both figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smallcell.state import atomic_write_json, atomic_write_text
from smallcell.study.figures import pyplot, save

FIGURES = ("rmse_vs_level.png", "train_time_vs_level.png")
NOT_CONVERGED = "not converged"


def collect(out: Path) -> list[dict[str, Any]]:
    """The finished levels' results, by level."""
    results = [json.loads((d / "result.json").read_text()) for d in out.glob("level*")
               if (d / "done").exists()]
    return sorted(results, key=lambda r: r["level"])


def unconverged(results: list[dict[str, Any]]) -> list[int]:
    """The levels whose fit stopped before converging."""
    return [r["level"] for r in results if not r["converged"]]


def warning(results: list[dict[str, Any]]) -> str:
    """One loud line naming the levels that did not converge ("" when every one did)."""
    bad = [r for r in results if not r["converged"]]
    if not bad:
        return ""
    which = ", ".join(f"{r['level']} ({r['iterations']} iterations)" for r in bad)
    one = len(bad) == 1
    whose = "Its errors are those of an unfinished fit" if one else \
        "Their errors are those of unfinished fits"
    return (f"**WARNING: level{'' if one else 's'} {which} did NOT converge.** {whose}, "
            "not the accuracy of the level: do not compare them with the other levels. "
            "Raise `trainer.max_iter` and remove "
            + ", ".join(f"`level{r['level']:02d}/`" for r in bad)
            + f" to fit {'it' if one else 'them'} again.")


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: training cost and errors per level (energy meV/atom, force meV/Å)."""
    tests = sorted({n for r in results for n in r["tests"]})
    head = ["level", "train wall s", "train CPU s", "iterations", "converged",
            "train E", "train F"] + [f"{n} {q}" for n in tests for q in ("E", "F")]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:"] * len(head)) + " |"]
    for r in results:
        cells = [str(r["level"]), f"{r['train_wall_seconds']:.1f}",
                 f"{r['train_cpu_seconds']:.1f}", str(r["iterations"]),
                 "yes" if r["converged"] else f"**NO** ({NOT_CONVERGED})",
                 f"{1000 * r['train_errors']['energy_rmse']:.3f}",
                 f"{1000 * r['train_errors']['force_rmse']:.2f}"]
        for n in tests:
            t = r["tests"].get(n)
            cells += ([f"{1000 * t['energy_rmse']:.3f}", f"{1000 * t['force_rmse']:.2f}"]
                      if t else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _series(ax, results: list[dict[str, Any]], values: list[float], fmt: str,
            label: str, **kw: Any) -> None:
    """One line over the levels; an unconverged level's marker hollow and labelled."""
    (line,) = ax.plot([r["level"] for r in results], values, fmt, label=label, **kw)
    bad = [(r["level"], v) for r, v in zip(results, values, strict=True) if not r["converged"]]
    if bad:
        ax.plot(*zip(*bad, strict=True), linestyle="none", marker=line.get_marker(),
                ms=line.get_markersize() + 4, mfc="white", mec=line.get_color(), mew=1.5,
                zorder=line.get_zorder() + 1)


def _mark_unconverged(ax, results: list[dict[str, Any]], top: list[float]) -> None:
    """A legend entry for the hollow markers and a "not converged" label over each."""
    from matplotlib.lines import Line2D

    levels = [r["level"] for r in results]
    for r, y in zip(results, top, strict=True):
        if not r["converged"]:
            ha = "right" if r["level"] == max(levels) and len(levels) > 1 else \
                "left" if r["level"] == min(levels) and len(levels) > 1 else "center"
            ax.annotate(NOT_CONVERGED, (r["level"], y), xytext=(0, 9),
                        textcoords="offset points", ha=ha, fontsize=8, color="red")
    ax.set_ylim(top=max(top) * (1.6 if ax.get_yscale() == "log" else 1.15))
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="o", ms=8, mfc="white",
                          mec="red", mew=1.5))
    labels.append(f"hollow: {NOT_CONVERGED} (unfinished fit)")
    ax.legend(handles, labels, fontsize=8)


def figures(results: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = pyplot()
    levels = [r["level"] for r in results]
    tests = sorted({n for r in results for n in r["tests"]})
    bad = unconverged(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, unit, name in ((axes[0], "energy_rmse", "meV/atom", "Energy"),
                                (axes[1], "force_rmse", "meV/Å", "Force")):
        _series(ax, results, [1000 * r["train_errors"][key] for r in results], "k--o",
                "training set", ms=4)
        for n in tests:
            have = [r for r in results if n in r["tests"]]
            _series(ax, have, [1000 * r["tests"][n][key] for r in have], "-o", f"test: {n}",
                    ms=5)
        top = [1000 * max([r["train_errors"][key], *(t[key] for t in r["tests"].values())])
               for r in results]
        ax.set_xlabel("MTP level")
        ax.set_ylabel(f"{name} RMSE ({unit})")
        ax.set_xticks(levels)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if bad:
            _mark_unconverged(ax, results, top)
    if not bad:
        axes[0].legend(fontsize=9)
    title = (f"MTP level sweep: {results[0]['n_train']} training configurations "
             f"({results[0]['trainer']})")
    if bad:
        title += f"\nlevel{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} NOT " \
                 "converged: unfinished fits, not the level's accuracy"
    fig.suptitle(title, color="red" if bad else "black")
    paths = [save(fig, out / FIGURES[0])]

    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    wall = [r["train_wall_seconds"] for r in results]
    cpu = [r["train_cpu_seconds"] for r in results]
    _series(ax, results, wall, "-o", "wall")
    _series(ax, results, cpu, "-s", "CPU")
    ax.set_xlabel("MTP level")
    ax.set_ylabel("training time (s)")
    ax.set_yscale("log")
    ax.set_xticks(levels)
    ax.grid(alpha=0.3, which="both")
    if bad:
        _mark_unconverged(ax, results, [max(w, c) for w, c in zip(wall, cpu, strict=True)])
    else:
        ax.legend()
    ax.set_title("Training time per level" + (" (hollow: not converged)" if bad else ""))
    paths.append(save(fig, out / FIGURES[1]))
    return paths


def _protocol(results: list[dict[str, Any]]) -> str:
    caps = {(r["max_rounds"], r["max_iter"]) for r in results if "max_rounds" in r}
    if len(caps) != 1:
        return "Each level is fitted until it converges or its iteration cap."
    rounds, max_iter = caps.pop()
    return (f"Each level is fitted until it converges, up to {rounds} rounds of {max_iter} "
            "iterations (each round goes on from the last).")


def write(out: Path) -> str:
    """Write results.json, sweep.md and the figures; return the markdown table (after the
    warning about unconverged levels, when there is one)."""
    results = collect(out)
    if not results:
        raise FileNotFoundError(out / "level*/result.json")
    atomic_write_json(out / "results.json", results)
    body = table(results)
    warn = warning(results)
    if warn:
        body = warn + "\n\n" + body
    names = sorted({f"{n}: {r['tests'][n]['path']}" for r in results for n in r["tests"]})
    text = (f"# MTP level sweep\n\nTraining set: {results[0]['data']} ({results[0]['n_train']} "
            f"configurations), trainer {results[0]['trainer']}. Test sets: "
            + "; ".join(names) + ".\nErrors are RMSEs: energy per atom (meV/atom), force "
            "|F_ref - F_ML| per atom (meV/Å). " + _protocol(results) + "\n\n" + body + "\n\n"
            + "\n".join(f"![{p.stem}]({p.name})" for p in figures(results, out)) + "\n")
    atomic_write_text(out / "sweep.md", text)
    return body
