"""A small embedded run through the real command line, for the tests that damage run
folders (test_faults.py, test_hand_edits.py): every stage, the error sample included, in a
few seconds, one worker (kills hit the driver itself)."""

from __future__ import annotations

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
