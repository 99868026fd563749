"""What every explorer shares: the settings of one MD run and the statistics of its grades.

The embedded explorer counts every grade it queries; the LAMMPS explorer rebuilds the same
statistics from the grades MLIP-3 saved. Both write the same `gamma.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Histogram of log10(gamma): fixed edges so histograms of runs and iterations add up.
HIST_EDGES = np.linspace(-3.0, 4.0, 71)


@dataclass
class MDSettings:
    """One explore run."""

    temperature: float  # K
    pressure: float  # bar
    seed: int
    steps: int
    timestep: float  # fs
    ensemble: str  # nvt | npt
    thermostat_tau: float  # fs
    barostat_tau: float  # fs
    grade_every: int
    gamma_save: float
    gamma_break: float
    log_every: int = 50
    barostat: str = "iso"  # iso | aniso (npt)


@dataclass
class GammaStats:
    """Statistics of every grade queried in a run (gamma.json)."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    max: float = 0.0
    hist: list[int] = field(default_factory=lambda: [0] * (len(HIST_EDGES) + 1))

    def add(self, g: float) -> None:
        self.count += 1
        self.total += g
        self.total_sq += g * g
        self.max = max(self.max, g)
        lg = math.log10(g) if g > 0 else -math.inf
        self.hist[int(np.searchsorted(HIST_EDGES, lg, side="right"))] += 1

    def as_dict(self) -> dict[str, object]:
        mean = self.total / self.count if self.count else 0.0
        var = max(self.total_sq / self.count - mean * mean, 0.0) if self.count else 0.0
        return {"count": self.count, "mean": mean, "std": math.sqrt(var), "max": self.max,
                "sum": self.total, "sum_sq": self.total_sq,
                "hist_log10_edges": HIST_EDGES.tolist(), "hist": self.hist}
