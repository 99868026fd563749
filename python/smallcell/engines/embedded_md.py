"""The embedded explorer: ASE molecular dynamics with extrapolation control, MLIP-3 style.

Semantics copied from MLIP-3's `pair_style mlip` sampler (shared/docs/mlip3-facts.md, 3):
the grade is evaluated at every force call (or every k-th MD step, from config); a
configuration graded above gamma_save is appended to `preselected.cfg` with
`Feature MV_grade` (and the `nbh_grades` column in nbh mode); the first configuration
graded above gamma_break is saved too and then the run stops. Unlike the LAMMPS
interface, every queried grade also enters a histogram, because the study needs the
distribution of all grades, not only the saved ones.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from smallcell.engines.motep_mtp import MotepPotential
from smallcell.formats.cfg import Cfg, atoms_to_cfg, format_cfg

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


def _integrator(atoms: Atoms, s: MDSettings, rng: np.random.Generator):
    dt = s.timestep * units.fs
    if s.ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=s.temperature,
                        friction=1.0 / (s.thermostat_tau * units.fs), fixcm=False, rng=rng)
    if s.ensemble == "npt":
        from ase.md.langevinbaoab import LangevinBAOAB

        with warnings.catch_warnings():
            # the cell mass comes from P_tau by ASE's heuristic, which it announces
            warnings.filterwarnings("ignore", message="Using heuristic P_mass")
            return LangevinBAOAB(atoms, dt, temperature_K=s.temperature,
                                 externalstress=s.pressure * units.bar, hydrostatic=True,
                                 T_tau=s.thermostat_tau * units.fs,
                                 P_tau=s.barostat_tau * units.fs, rng=rng)
    raise ValueError(f"unknown ensemble {s.ensemble!r}")


def run_md(atoms: Atoms, pot: MotepPotential, species: list[str], s: MDSettings,
           out: Path) -> dict[str, object]:
    """Run one MD with extrapolation control; write `preselected.cfg` and `md.log` into
    `out` (a scratch folder the caller renames into place) and return gamma.json's data."""
    rng = np.random.default_rng(s.seed)
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=s.temperature, rng=rng)
    Stationary(atoms)
    if s.ensemble == "nvt":  # ASE's recommended way to pin the centre of mass in Langevin
        atoms.set_constraint(FixCom())
    atoms.calc = pot.calc
    dyn = _integrator(atoms, s, rng)
    stats = GammaStats()
    saved: list[str] = []
    log = [f"# {'step':>7} {'T/K':>9} {'P/bar':>11} {'E/eV':>14} {'V/A3':>10} {'gamma':>10}"]
    broke, break_step, reason = False, None, ""
    t0 = time.perf_counter()
    step = 0
    for step in range(s.steps + 1):
        if step:
            dyn.run(1)
        if step % s.grade_every:
            continue
        if not np.all(np.isfinite(atoms.positions)):
            broke, break_step, reason = True, step, "non-finite positions"
            break
        gamma, nbh = pot.grade(atoms)
        if not math.isfinite(gamma):
            broke, break_step, reason = True, step, "non-finite grade"
            break
        stats.add(gamma)
        if step % s.log_every == 0 or gamma > s.gamma_break:
            p = -np.mean(atoms.get_stress(include_ideal_gas=True)[:3]) / units.bar
            log.append(f"  {step:7d} {atoms.get_temperature():9.2f} {p:11.2f} "
                       f"{atoms.get_potential_energy():14.6f} {atoms.get_volume():10.3f} "
                       f"{gamma:10.4f}")
        if gamma > s.gamma_save:
            cfg: Cfg = atoms_to_cfg(atoms, species)
            cfg.forces = cfg.energy = cfg.plus_stress = None  # MLIP-3 saves before EFS
            if nbh is not None:
                cfg.atom_data["nbh_grades"] = nbh
            cfg.set_feature("MV_grade", f"{gamma:f}")
            saved.append(format_cfg(cfg))
        if gamma > s.gamma_break:
            broke, break_step, reason = True, step, f"gamma {gamma:.4g} > gamma_break"
            break
    (out / "preselected.cfg").write_text("".join(saved), encoding="utf-8")
    (out / "md.log").write_text("\n".join(log) + "\n", encoding="utf-8")
    return {"settings": asdict(s), "steps_done": step, "broke": broke,
            "break_step": break_step, "break_reason": reason, "n_preselected": len(saved),
            "seconds": time.perf_counter() - t0, **stats.as_dict()}
