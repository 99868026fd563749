"""What the study reads from a run folder: each finished iteration's summary.json, the
gamma histograms of its explore runs (gamma.json), its fit's loss history
(train/errors.json) and its error sample (sample/errors.json). Only files, never
engines: the report is regenerated from the iteration folders alone."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smallcell.state import RunPaths


@dataclass
class IterationData:
    """One finished iteration as the figures and the report use it."""

    summary: dict[str, Any]
    hist: np.ndarray | None = None  # counts per log10(gamma) bin, summed over explore runs
    # (gammas below the first edge or above the last are not counted here)
    hist_edges: np.ndarray | None = None  # log10(gamma) bin edges
    gamma_save: float | None = None
    gamma_break: float | None = None
    loss_history: list[float] = field(default_factory=list)
    train_info: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] | None = None  # sample/errors.json: iteration i-1's potential
    sample_note: str | None = None  # an explore run's reason for keeping no error sample

    @property
    def i(self) -> int:
        return int(self.summary["iteration"])

    @property
    def explored(self) -> bool:
        """The iteration ran MD (iteration 0 does not)."""
        return self.summary.get("gamma_max") is not None

    @property
    def sample_configs(self) -> list[dict[str, Any]]:
        """The labeled sample's per-configuration records (gamma and errors)."""
        return list((self.sample or {}).get("configs", []))


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load(root: Path) -> list[IterationData]:
    """Every iteration of `root` with a summary.json, in order."""
    paths = RunPaths(root)
    out = []
    for i in paths.iterations():
        s = _json(paths.summary(i))
        if s is None:
            continue
        d = IterationData(s)
        for g in sorted(paths.stage(i, "explore").glob("*/gamma.json")):
            run = _json(g)
            if not run or "hist" not in run:
                continue
            h = np.asarray(run["hist"], dtype=float)
            edges = np.asarray(run["hist_log10_edges"], dtype=float)
            if len(h) == len(edges) + 1:  # exploration.py adds under- and overflow bins
                h = h[1:-1]
            d.hist = h if d.hist is None else d.hist + h
            d.hist_edges = edges
            st = run.get("settings", {})
            d.gamma_save = st.get("gamma_save", d.gamma_save)
            d.gamma_break = st.get("gamma_break", d.gamma_break)
            d.sample_note = run.get("sample_note") or d.sample_note
        info = _json(paths.stage(i, "train") / "errors.json") or {}
        d.train_info = info
        d.loss_history = [float(v) for v in info.get("loss_history", [])]
        d.sample = _json(paths.stage(i, "sample") / "errors.json")
        out.append(d)
    return out


def load_validation(root: Path) -> dict[str, Any] | None:
    """The large-cell validation's summary (validation/summary.json), if it ran."""
    return _json(Path(root) / "validation" / "summary.json")


def load_large_cell(root: Path, data: list[IterationData]) -> list[dict[str, Any]]:
    """Every large-cell measurement of the run's potentials, in iteration order: the
    per-stage validations (iter/<i>/validate/) and the final one (its `final` key set)."""
    from smallcell.status import checkpoints

    out = checkpoints(root, [d.i for d in data])
    final = load_validation(root)
    if final and final.get("iteration") in {d.i for d in data}:
        out.append({**final, "final": True})
    return sorted(out, key=lambda s: (int(s["iteration"]), bool(s.get("final"))))


def load_comparison(root: Path) -> dict[str, Any] | None:
    """`make compare`'s results (compare/results.json), if the run was compared."""
    return _json(Path(root) / "compare" / "results.json")
