"""Input structures (the report's Algorithm 2): cells, displacements, the (T, P) grid, seeds.

Every random draw comes from a generator seeded by (master seed, purpose, iteration, index),
so a resumed or re-run iteration draws exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk

from smallcell.config import Config


def rng_for(master: int, *parts: object) -> np.random.Generator:
    """A generator whose stream depends only on the master seed and the labels given."""
    digest = hashlib.sha256(repr((master, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def seed_for(master: int, *parts: object) -> int:
    """A 31-bit integer seed (LAMMPS wants a positive int) derived like `rng_for`."""
    return int(rng_for(master, *parts).integers(1, 2**31 - 1))


def supercell(lattice: str, a: float, reps: Sequence[int], symbol: str) -> Atoms:
    """Conventional cubic fcc (4 atoms) or bcc (2 atoms) cell repeated n1 x n2 x n3."""
    if lattice not in ("fcc", "bcc"):
        raise ValueError(f"lattice must be fcc or bcc, got {lattice!r}")
    return bulk(symbol, lattice, a=a, cubic=True).repeat(tuple(int(n) for n in reps))


def displace(atoms: Atoms, amplitude: float, kind: str, rng: np.random.Generator) -> Atoms:
    """A copy with every atom moved at random from its site (uniform box or Gaussian)."""
    out = atoms.copy()
    shape = out.positions.shape
    if kind == "uniform":
        delta = rng.uniform(-amplitude, amplitude, shape)
    elif kind == "gaussian":
        delta = rng.normal(0.0, amplitude, shape)
    else:
        raise ValueError(f"displacement kind must be uniform or gaussian, got {kind!r}")
    out.positions += delta
    return out


def strain(atoms: Atoms, max_strain: float, rng: np.random.Generator) -> Atoms:
    """A copy under a random symmetric strain with components in [-max_strain, max_strain]."""
    eps = rng.uniform(-max_strain, max_strain, (3, 3))
    eps = 0.5 * (eps + eps.T)
    out = atoms.copy()
    out.set_cell(out.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return out


@dataclass(frozen=True)
class MDRun:
    """One explore run: a point of the grid with its seed."""

    index: int
    temperature: float
    pressure: float
    replica: int
    seed: int

    @property
    def name(self) -> str:
        """Folder name: readable and sortable, e.g. `000_T300_P1_s0`."""
        return f"{self.index:03d}_T{self.temperature:g}_P{self.pressure:g}_s{self.replica}"


def grid_points(cfg: Config, iteration: int) -> list[tuple[float, float]]:
    """The iteration's (T, P) points: the grid temperatures x pressures, or with
    `grid.draws` that many points drawn uniformly in the grid's T and P intervals (rounded
    to 0.1 K and 0.1 bar), a new draw in every iteration (Meng et al. 2025)."""
    grid = cfg["grid"]
    ts, ps = [float(t) for t in grid["temperatures"]], [float(p) for p in grid["pressures"]]
    if not grid["draws"]:
        return [(t, p) for t in ts for p in ps]
    rng = rng_for(cfg["run"]["seed"], "tp", iteration)
    return [(round(float(rng.uniform(min(ts), max(ts))), 1),
             round(float(rng.uniform(min(ps), max(ps))), 1)) for _ in range(grid["draws"])]


def md_runs(cfg: Config, iteration: int) -> list[MDRun]:
    """The explore runs of an iteration: (T, P) points x seeds_per_point."""
    runs = []
    for t, p in grid_points(cfg, iteration):
        for r in range(cfg["grid"]["seeds_per_point"]):
            k = len(runs)
            runs.append(MDRun(k, t, p, r, seed_for(cfg["run"]["seed"], "md", iteration, k)))
    return runs


def masses(cfg: Config) -> list[float]:
    """Masses in species order: the config's, or ASE's standard atomic weights."""
    if cfg["masses"] is not None:
        return [float(m) for m in cfg["masses"]]
    from ase.data import atomic_masses, atomic_numbers

    return [float(atomic_masses[atomic_numbers[s]]) for s in cfg["species"]]


def start_structure(cfg: Config, run: MDRun) -> Atoms:
    """The stage's cell with atoms displaced at random (seeded by the run)."""
    st = cfg["structure"]
    atoms = supercell(st["lattice"], st["a"], st["cell"], cfg["species"][0])
    atoms = displace(atoms, st["displacement"], st["displacement_kind"],
                     np.random.default_rng(run.seed))
    by_symbol = dict(zip(cfg["species"], masses(cfg), strict=True))
    atoms.set_masses([by_symbol[s] for s in atoms.get_chemical_symbols()])
    return atoms


def initial_structures(cfg: Config) -> list[Atoms]:
    """Iteration 0's training structures: strained and displaced copies of the cell."""
    st, init = cfg["structure"], cfg["initial"]
    base = supercell(st["lattice"], st["a"], st["cell"], cfg["species"][0])
    rng = rng_for(cfg["run"]["seed"], "initial")
    out = []
    for _ in range(init["n_configs"]):
        atoms = strain(base, init["strain"], rng)
        out.append(displace(atoms, init["displacement"], st["displacement_kind"], rng))
    return out
