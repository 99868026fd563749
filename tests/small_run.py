"""A small embedded run through the real command line, for the tests that damage run
folders (test_faults.py, test_hand_edits.py): every stage, the error sample included, in a
few seconds, one worker (kills hit the driver itself)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALLCELL = REPO / "bin" / "smallcell"

CONFIG = """\
species: [Pb]
grid: {temperatures: [300.0, 600.0], pressures: [1.0]}
md: {steps: 40}
extrapolation: {gamma_save: 1.3, gamma_break: 3.0}
initial: {n_configs: 6}
trainer: {level: 4, max_iter: 30, radial_basis_size: 4}
select: {max_selected: 3}
sample: {size: 3}
run: {seed: 11, jobs: 1}
"""


def new_run(root: Path) -> Path:
    """`root` with the config in it (c.yaml)."""
    root.mkdir(parents=True)
    (root / "c.yaml").write_text(CONFIG)
    return root


def iterate(root: Path, upto: int, **env: str) -> subprocess.CompletedProcess:
    """`smallcell iter --upto <upto>` on `root` with extra environment variables."""
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env
    return subprocess.run([str(SMALLCELL), "--run-dir", str(root), "iter", "--upto",
                           str(upto), "--config", str(root / "c.yaml")],
                          capture_output=True, text=True, env=full, timeout=300, check=False)


TIMING = {"time", "seconds", "train_seconds", "stage_seconds"}


def run_files(root: Path) -> dict[str, bytes]:
    """Every file of the run's iterations (the lock aside), by path relative to `root`."""
    out = {}
    for p in sorted((root / "iter").rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def comparable(rel: str, data: bytes) -> object:
    """A file's content without clock readings (JSON timings, the training log)."""
    if rel.endswith((".json", "/done", "/failed")):
        def strip(x: object) -> object:
            if isinstance(x, dict):
                return {k: strip(v) for k, v in x.items() if k not in TIMING}
            if isinstance(x, list):
                return [strip(v) for v in x]
            return x
        return strip(json.loads(data))
    if rel.endswith("train.log"):
        return None
    if rel.endswith("config.yaml"):  # names its source file: the run folder differs
        return data.split(b"\n", 1)[1]
    return data


def assert_same_run(root: Path, reference: Path, what: str) -> None:
    """The run in `root` wrote the same files as `reference`, clock readings aside."""
    got, want = run_files(root), run_files(reference)
    assert sorted(got) == sorted(want), f"{what}: files differ: " \
        f"{sorted(set(got) ^ set(want))[:10]}"
    for rel in want:
        assert comparable(rel, got[rel]) == comparable(rel, want[rel]), f"{what}: {rel}"


def finished_files(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file in a folder with a done marker: a redone task would
    rename new files into place."""
    out = {}
    for marker in (root / "iter").rglob("done"):
        for p in marker.parent.iterdir():
            if p.is_file():
                out[str(p)] = (p.stat().st_ino, p.stat().st_mtime_ns)
    return out
