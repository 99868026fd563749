"""Tables and figures of an MTP-level sweep, drawn from its `level*/result.json` files
alone (stages/sweep.py writes them): `results.json`, `sweep.md`, `rmse_vs_level.png`
(energy and force RMSE per test set against the level) and `train_time_vs_level.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smallcell.state import atomic_write_json, atomic_write_text
from smallcell.study.figures import pyplot, save

FIGURES = ("rmse_vs_level.png", "train_time_vs_level.png")


def collect(out: Path) -> list[dict[str, Any]]:
    """The finished levels' results, by level."""
    results = [json.loads((d / "result.json").read_text()) for d in out.glob("level*")
               if (d / "done").exists()]
    return sorted(results, key=lambda r: r["level"])


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: training cost and errors per level (energy meV/atom, force meV/Å)."""
    tests = sorted({n for r in results for n in r["tests"]})
    head = ["level", "train wall s", "train CPU s", "iterations", "converged",
            "train E", "train F"] + [f"{n} {q}" for n in tests for q in ("E", "F")]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:"] * len(head)) + " |"]
    for r in results:
        cells = [str(r["level"]), f"{r['train_wall_seconds']:.1f}",
                 f"{r['train_cpu_seconds']:.1f}", str(r["iterations"]),
                 "yes" if r["converged"] else "no",
                 f"{1000 * r['train_errors']['energy_rmse']:.3f}",
                 f"{1000 * r['train_errors']['force_rmse']:.2f}"]
        for n in tests:
            t = r["tests"].get(n)
            cells += ([f"{1000 * t['energy_rmse']:.3f}", f"{1000 * t['force_rmse']:.2f}"]
                      if t else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(results: list[dict[str, Any]], out: Path) -> list[Path]:
    plt = pyplot()
    levels = [r["level"] for r in results]
    tests = sorted({n for r in results for n in r["tests"]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, unit, name in ((axes[0], "energy_rmse", "meV/atom", "Energy"),
                                (axes[1], "force_rmse", "meV/Å", "Force")):
        ax.plot(levels, [1000 * r["train_errors"][key] for r in results], "k--o", ms=4,
                label="training set")
        for n in tests:
            pts = [(r["level"], 1000 * r["tests"][n][key]) for r in results if n in r["tests"]]
            ax.plot(*zip(*pts, strict=True), "-o", ms=5, label=f"test: {n}")
        ax.set_xlabel("MTP level")
        ax.set_ylabel(f"{name} RMSE ({unit})")
        ax.set_xticks(levels)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=9)
    fig.suptitle(f"MTP level sweep: {results[0]['n_train']} training configurations "
                 f"({results[0]['trainer']})")
    paths = [save(fig, out / FIGURES[0])]

    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    ax.plot(levels, [r["train_wall_seconds"] for r in results], "-o", label="wall")
    ax.plot(levels, [r["train_cpu_seconds"] for r in results], "-s", label="CPU")
    ax.set_xlabel("MTP level")
    ax.set_ylabel("training time (s)")
    ax.set_yscale("log")
    ax.set_xticks(levels)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    ax.set_title("Training time per level")
    paths.append(save(fig, out / FIGURES[1]))
    return paths


def write(out: Path) -> str:
    """Write results.json, sweep.md and the figures; return the markdown table."""
    results = collect(out)
    if not results:
        raise FileNotFoundError(out / "level*/result.json")
    atomic_write_json(out / "results.json", results)
    body = table(results)
    names = sorted({f"{n}: {r['tests'][n]['path']}" for r in results for n in r["tests"]})
    text = (f"# MTP level sweep\n\nTraining set: {results[0]['data']} ({results[0]['n_train']} "
            f"configurations), trainer {results[0]['trainer']}. Test sets: "
            + "; ".join(names) + ".\nErrors are RMSEs: energy per atom (meV/atom), force "
            "|F_ref - F_ML| per atom (meV/Å).\n\n" + body + "\n\n"
            + "\n".join(f"![{p.stem}]({p.name})" for p in figures(results, out)) + "\n")
    atomic_write_text(out / "sweep.md", text)
    return body
