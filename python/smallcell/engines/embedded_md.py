"""The embedded explorer: ASE molecular dynamics with extrapolation control, MLIP-3 style.

Semantics copied from MLIP-3's `pair_style mlip` sampler (shared/docs/mlip3-facts.md, 3):
the grade is evaluated at every force call (or every k-th MD step, from config); a
configuration graded above gamma_save is appended to `preselected.cfg` with
`Feature MV_grade` (and the `nbh_grades` column in nbh mode); the first configuration
graded above gamma_break is saved too and then the run stops. Unlike the LAMMPS
interface, every queried grade also enters a histogram, and a uniform sample of the
queried configurations with sample_gamma_min < gamma < sample_gamma_max is kept in
`queried.cfg` (exploration.QuerySample), because the study needs the distribution of all
grades and the true errors across them, not only the saved ones.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from smallcell.engines.exploration import QUERIED, GammaStats, MDSettings, QuerySample
from smallcell.engines.motep_mtp import MotepPotential
from smallcell.formats.cfg import Cfg, atoms_to_cfg, format_cfg

if TYPE_CHECKING:
    from smallcell.engines.base import Potential, Trainer

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
                                 externalstress=s.pressure * units.bar,
                                 hydrostatic=s.barostat == "iso",
                                 T_tau=s.thermostat_tau * units.fs,
                                 P_tau=s.barostat_tau * units.fs, rng=rng)
    raise ValueError(f"unknown ensemble {s.ensemble!r}")


def _graded_cfg(atoms: Atoms, species: list[str], gamma: float, nbh) -> str:
    """A queried configuration as MLIP-3 saves it: positions only (saved before EFS), its
    grade in the MV_grade feature, per-atom grades in nbh mode."""
    cfg: Cfg = atoms_to_cfg(atoms, species)
    cfg.forces = cfg.energy = cfg.plus_stress = None
    if nbh is not None:
        cfg.atom_data["nbh_grades"] = nbh
    cfg.set_feature("MV_grade", f"{gamma:f}")
    return format_cfg(cfg)


def run_md(atoms: Atoms, pot: MotepPotential | Potential, species: list[str], s: MDSettings,
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
    sample = QuerySample(s.sample_size, s.sample_gamma_min, s.sample_gamma_max, s.seed)
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
        sample.offer(gamma, lambda g=gamma, n=nbh: _graded_cfg(atoms, species, g, n))
        if step % s.log_every == 0 or gamma > s.gamma_break:
            p = -np.mean(atoms.get_stress(include_ideal_gas=True)[:3]) / units.bar
            log.append(f"  {step:7d} {atoms.get_temperature():9.2f} {p:11.2f} "
                       f"{atoms.get_potential_energy():14.6f} {atoms.get_volume():10.3f} "
                       f"{gamma:10.4f}")
        if gamma > s.gamma_save:
            saved.append(_graded_cfg(atoms, species, gamma, nbh))
        if gamma > s.gamma_break:
            broke, break_step, reason = True, step, f"gamma {gamma:.4g} > gamma_break"
            break
    (out / "preselected.cfg").write_text("".join(saved), encoding="utf-8")
    (out / "md.log").write_text("\n".join(log) + "\n", encoding="utf-8")
    if s.sample_size:
        (out / QUERIED).write_text("".join(sample.kept), encoding="utf-8")
    return {"settings": asdict(s), "steps_done": step, "broke": broke,
            "break_step": break_step, "break_reason": reason, "n_preselected": len(saved),
            "n_sample_eligible": sample.eligible if s.sample_size else None,
            "n_sampled": len(sample.kept),
            "seconds": time.perf_counter() - t0, **stats.as_dict()}


class EmbeddedExplorer:
    """The `Explorer` interface (engines/base.py): MD in this process with the embedded
    potential of the previous iteration, loaded once per worker process."""

    name = "embedded"

    def __init__(self, trainer: Trainer, al_mode: str) -> None:
        self.trainer = trainer
        self.al_mode = al_mode
        self._cache: dict[tuple[str, ...], Potential] = {}

    def run(self, out: Path, atoms: Atoms, species: list[str], s: MDSettings,
            train_dir: Path) -> dict[str, object]:
        # the atom count too: the calculator's neighbour data are sized by the first
        # structure it saw (a potential that ran the 108-atom validation, then the next
        # stage's 8-atom MD in the same worker, failed with "Wrong number of cutoff radii")
        key = (str(train_dir), self.al_mode, len(atoms), *species)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = self.trainer.load(train_dir, species, self.al_mode)
        return run_md(atoms, self._cache[key], species, s, out)
