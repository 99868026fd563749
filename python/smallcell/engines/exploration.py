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
QUERIED = "queried.cfg"  # an explore run's uniform sample of all its queries (QuerySample)


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
    sample_size: int = 0  # error study: configurations kept from all queries (0: none)
    sample_gamma_min: float = 0.1  # ... with sample_gamma_min < gamma < sample_gamma_max
    sample_gamma_max: float = 10.0


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


class QuerySample:
    """A uniform random sample of the queried configurations with gamma in (lo, hi), of at
    most `size` (reservoir sampling, Algorithm R): the error study needs configurations
    from every gamma the MD visited, not only those above gamma_save. A configuration is
    only formatted when it enters the sample, so a long run costs about
    size * ln(queries / size) conversions."""

    def __init__(self, size: int, lo: float, hi: float, seed: int) -> None:
        self.size, self.lo, self.hi = size, lo, hi
        self.rng = np.random.default_rng([seed, 0x5A3])  # apart from the MD's own stream
        self.eligible = 0
        self.kept: list[str] = []

    def offer(self, gamma: float, text) -> None:
        """Consider one query; `text()` formats its configuration when it is kept."""
        if not (self.size and self.lo < gamma < self.hi):
            return
        self.eligible += 1
        if len(self.kept) < self.size:
            self.kept.append(text())
            return
        j = int(self.rng.integers(self.eligible))
        if j < self.size:
            self.kept[j] = text()
