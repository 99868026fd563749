"""The embedded trainer and grader: MTPs fitted and evaluated by motep (pinned 0.2.0).

Facts this adapter is built around (measured with motep 0.2.0):
- `write_mtp()` by default writes a layout its own `read_mtp()` rejects; we always write
  with `legacy=True` (tested round trip).
- its trainer evaluates the loss through one ASE calculator per configuration, most of
  a fit's time on small cells: we fit with our own loss over motep's C kernel
  (mtp_loss.py, the same numbers) and scipy's BFGS, and log the fit in `train.log`.
- motep's own MaxVol grades differ from MLIP-3's; we grade with `maxvol.py` on the same
  rows MLIP-3 uses (site-energy gradients in nbh mode, energy gradients in cfg mode).
- a train-mode calculator yields forces and the coefficient gradient from one evaluation,
  so grading an MD step costs about one extra force call, as in MLIP-3.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from smallcell.engines.maxvol import (
    ActiveSet,
    Selection,
    build_active_set,
    select_add,
    select_batch,
)
from smallcell.engines.mtp_basis import write_template
from smallcell.engines.mtp_loss import TrainingLoss, neighbour_vectors
from smallcell.engines.neighbors import NeighborList

if TYPE_CHECKING:
    from motep.potentials.mtp.base import EngineBase

# motep warns at every force call whose nearest neighbour is below min_dist. Since fits
# move min_dist to the training set's shortest distance (min_dist_update), MD goes there
# whenever it leaves the data, which is what gamma measures and the selection handles:
# thousands of lines per run in the iteration log, with nothing to act on.
logging.getLogger("motep.potentials.mtp.base").setLevel(logging.ERROR)

POT = "pot.mtp"
ACTIVE = "active_set.npz"
_EV_A3_TO_GPA = 160.21766208


@dataclass
class TrainSettings:
    """What a fit needs from the config (kept small so MLIP-3 can share it)."""

    level: int = 8
    min_dist: float = 2.0
    max_dist: float = 5.0
    radial_basis_size: int = 8
    max_iter: int = 300
    tolerance: float = 0.01  # converged: WINDOW iterations lower the loss by less than this
    restarts: int = 0  # more fits from fresh templates (other seeds); the lowest loss wins
    energy_weight: float = 1.0
    force_weight: float = 0.01
    stress_weight: float = 0.001
    al_mode: str = "nbh"
    seed: int = 1
    # with restarts: True screens every start for SCREEN iterations and continues the
    # best; False fits every start to convergence and keeps the lowest loss (the final
    # refit: a screen favours a warm start, which is ahead after SCREEN iterations)
    screen: bool = True
    # MLIP-3's rule (mlp train without --no_mindist_update): every fit moves the radial
    # basis' min_dist to MIN_DIST_FACTOR x the training set's shortest distance
    min_dist_update: bool = True


@dataclass
class TrainResult:
    """What a fit reports; the stage writes it to errors.json and the summary."""

    seconds: float
    iterations: int
    converged: bool
    loss_history: list[float]
    errors: dict[str, float]
    active_set_size: int
    active_set_configs: int
    message: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def _species_numbers(species: Sequence[str]) -> list[int]:
    from ase.data import atomic_numbers

    return [atomic_numbers[s] for s in species]


def _read(pot: Path, species: Sequence[str], min_dist: float | None = None):  # -> MTPData
    """A potential file's parameters for `species`; `min_dist` moves the radial basis'
    lower end (a warm start keeps its coefficients on the new interval, as mlp's does)."""
    from motep.io.mlip.mtp import read_mtp

    data = read_mtp(str(pot))
    data.species = _species_numbers(species)
    if min_dist is not None:
        data.radial_basis.min = np.float64(min_dist)
    return data


def _initiate_neighbor_list(engine: EngineBase, atoms: Atoms) -> None:
    """motep's `EngineWithNeighborlist._initiate_neighbor_list` with our `NeighborList`."""
    engine.neighbor_list = NeighborList(
        cutoffs=[0.5 * engine.mtp_data.radial_basis.max] * len(atoms), skin=0.3,
        self_interaction=False, bothways=True)
    engine.neighbor_list.update(atoms.pbc, atoms.cell, atoms.positions)
    engine._neighbors, engine._offsets = engine._get_neighbors_and_offsets(atoms)


class MotepPotential:
    """A trained MTP with its active set: energies, forces and grades for the explorer."""

    def __init__(self, pot: Path, active: ActiveSet | None, species: Sequence[str],
                 al_mode: str) -> None:
        from motep.calculator import make_calculator, make_mtp_engine

        self.data = _read(pot, species)
        self.al_mode = al_mode
        self.active = active
        self.calc = make_calculator(self.data, engine="cext", mode="run")
        # our vectorized list instead of ASE's, rebuilt at every NPT step (neighbors.py)
        self.calc.engine._initiate_neighbor_list = types.MethodType(
            _initiate_neighbor_list, self.calc.engine)
        # motep's train mode caches one configuration's neighbour vectors forever (it is
        # built for one engine per training image); we feed it the run engine's
        # neighbours for every configuration instead, so a grade costs one evaluation.
        self._train = make_mtp_engine("cext")(self.data, mode="train")

    @classmethod
    def load(cls, folder: Path, species: Sequence[str], al_mode: str) -> MotepPotential:
        return cls(folder / POT, ActiveSet.load(folder / ACTIVE), species, al_mode)

    def _attach(self, atoms: Atoms) -> None:
        """Use the run calculator on `atoms`. motep's neighbour list is sized for one atom
        count and fails on another, so it is rebuilt when the count changes (training sets
        and imported data mix cell sizes)."""
        nl = self.calc.engine.neighbor_list
        if nl is not None and len(nl.cutoffs) != len(atoms):
            self.calc.engine.neighbor_list = None
        atoms.calc = self.calc

    def rows(self, atoms: Atoms) -> np.ndarray:
        """Active-set rows of `atoms`: d(site energy)/d(coefficients) per atom (nbh mode)
        or d(energy)/d(coefficients) (cfg mode)."""
        if atoms.calc is not self.calc or self.calc.calculation_required(atoms, ["energy"]):
            self._attach(atoms)
            atoms.get_potential_energy()
        run_eng, eng = self.calc.engine, self._train
        eng._neighbors = run_eng._neighbors
        eng._interatomic_vectors = run_eng._get_interatomic_vectors(atoms)
        if np.shape(eng.mbd.vatoms)[-1:] != (len(atoms),):
            eng.initialize_basis_data(atoms)
        eng._calculate(atoms)
        if self.al_mode == "nbh":
            return np.asarray(eng.jac_energies(atoms).parameters).T.copy()
        return np.atleast_2d(eng.jac_energy(atoms).parameters).copy()

    def evaluate(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy, forces and stress (ASE convention) of `atoms` with this potential."""
        self._attach(atoms)
        return (float(atoms.get_potential_energy()), atoms.get_forces().copy(),
                atoms.get_stress().copy())

    def grade(self, atoms: Atoms) -> tuple[float, np.ndarray | None]:
        """gamma of `atoms` (evaluating it if needed) and per-atom grades in nbh mode."""
        if self.active is None:
            raise RuntimeError("this potential has no active set")
        g = self.active.grades(self.rows(atoms))
        return float(g.max()), (g if self.al_mode == "nbh" else None)

    def all_rows(self, images: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of many configurations and their owners (configuration, atom | -1)."""
        rows, owners = [], []
        for k, atoms in enumerate(images):
            r = self.rows(atoms.copy())
            rows.append(r)
            atom_ids = np.arange(len(r)) if self.al_mode == "nbh" else np.full(len(r), -1)
            owners.append(np.column_stack([np.full(len(r), k), atom_ids]))
        return np.vstack(rows), np.vstack(owners)

    def select(self, candidates: Sequence[Atoms], threshold: float = 1.001, *,
               batch: bool = False, limit: int | None = None) -> Selection:
        """D-optimal selection among candidate configurations: row by row like
        `mlp select_add`, or configuration by configuration (`batch`, maxvol.select_batch,
        which stops after `limit` configurations)."""
        if self.active is None:
            raise RuntimeError("this potential has no active set")
        if not candidates:
            return Selection([], np.zeros(0), self.active)
        rows, owners = self.all_rows(candidates)
        if batch:
            return select_batch(self.active, rows, owners[:, 0], threshold=threshold,
                                max_configs=limit)
        return select_add(self.active, rows, owners[:, 0], threshold=threshold)


def _residuals(pot: MotepPotential, images: Sequence[Atoms]
               ) -> Iterator[tuple[Atoms, float, np.ndarray, np.ndarray | None]]:
    """Per labeled image: the image, E_ML - E_ref (eV), F_ML - F_ref (eV/Å, per atom) and
    S_ML - S_ref (GPa, Voigt; None when the image has no reference stress)."""
    for ref in images:
        e, f, s = pot.evaluate(ref.copy())
        ds = None
        with contextlib.suppress(Exception):
            ds = (s - ref.get_stress()) * _EV_A3_TO_GPA
        yield ref, e - ref.get_potential_energy(), f - ref.get_forces(), ds


def errors_of(pot: MotepPotential, images: Sequence[Atoms]) -> dict[str, float]:
    """Errors on labeled images (training or held-out set): energy per atom (eV/atom),
    forces (eV/Å), stress (GPa).

    Forces are compared as vectors, |F_ref - F_ML| per atom (DESIGN.md section 6, and what
    MLIP-3's errors report calls Forces), so the numbers of both trainers mean the same."""
    de, df, ds = [], [], []
    for ref, e, f, s in _residuals(pot, images):
        de.append(e / len(ref))
        df.append(np.linalg.norm(f, axis=1))
        if s is not None:
            ds.append(s)
    de_a, df_a = np.abs(np.array(de)), np.abs(np.concatenate(df))
    out = {
        "n_configs": float(len(images)),
        "energy_rmse": float(np.sqrt(np.mean(de_a**2))),
        "energy_mae": float(np.mean(de_a)),
        "energy_max": float(de_a.max()),
        "force_rmse": float(np.sqrt(np.mean(df_a**2))),
        "force_mae": float(np.mean(df_a)),
        "force_max": float(df_a.max()),
    }
    if ds:
        out["stress_rmse"] = float(np.sqrt(np.mean(np.concatenate(ds) ** 2)))
    return out


def config_errors_of(pot: MotepPotential, images: Sequence[Atoms]) -> list[dict[str, float]]:
    """Per-configuration errors with the keys and meanings of MLIP-3's ``check_errors``
    log (engines/mlip3.py parse_errors_log), so the error study reads both trainers alike:
    atoms, energy_diff (E_ML - E_ref, eV), energy_per_atom_diff (|dE|/N, eV/atom),
    force_rms (RMS over atoms of |F_ML - F_ref|, eV/Å), force_max (largest |dF|)."""
    rows = []
    for ref, e, f, _s in _residuals(pot, images):
        norms = np.linalg.norm(f, axis=1)
        rows.append({"atoms": float(len(ref)), "energy_diff": float(e),
                     "energy_per_atom_diff": abs(float(e)) / len(ref),
                     "force_rms": float(np.sqrt(np.mean(norms**2))),
                     "force_max": float(norms.max())})
    return rows


MIN_DIST_FACTOR = 0.99  # MLIP-3 src/mtpr_trainer.cpp: min_val = 0.99 * shortest distance


def shortest_distance(images: Sequence[Atoms], max_dist: float) -> float | None:
    """The shortest interatomic distance (periodic images included) in `images` up to
    max_dist; None when no pair is that close."""
    best = math.inf
    for atoms in images:
        js, rs = neighbour_vectors(atoms, max_dist)
        if (js >= 0).any():
            best = min(best, float(np.linalg.norm(rs[js >= 0], axis=-1).min()))
    return best if best <= max_dist else None


def fit_min_dist(images: Sequence[Atoms], settings: TrainSettings) -> float | None:
    """The radial basis' min_dist of a fit with min_dist_update (the default, as mlp train
    does): 0.99 x the training set's shortest distance; None without it (a template then
    has settings.min_dist and a warm start keeps its own, as mlp's do). Why:
    the Chebyshev basis spans [min_dist, max_dist]; with the templates' 2 Å on fcc Pb
    (shortest distances ~3 Å) a third of it described distances no configuration has,
    and the default run's fits ended 3x less accurate (BENCHMARKS.md "MLIP-3's mlp
    against motep")."""
    if not settings.min_dist_update:
        return None
    d = shortest_distance(images, settings.max_dist)
    return None if d is None else MIN_DIST_FACTOR * d


WINDOW = 50  # BFGS iterations between convergence checks
SCREEN = 2 * WINDOW  # with restarts, every start fits this long; the lowest loss goes on


@dataclass
class _Attempt:
    """One fit: its parameters (changed in place), log lines, loss history in the loss's
    own units, BFGS iterations, whether it converged, and its final loss."""

    data: object  # motep MTPData
    label: str
    log: list[str] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False
    loss: float = math.nan

    @property
    def text(self) -> str:
        return "\n".join(self.log) + "\n"


def _fit(a: _Attempt, images: list[Atoms], settings: TrainSettings) -> _Attempt:
    """Linear least squares, then BFGS on the loss normalized to 1 at its start until a
    window of WINDOW iterations lowers the loss by less than `settings.tolerance` (a
    fraction), BFGS stops by itself (no lower point found), or `settings.max_iter` is
    spent.

    Why BFGS: an MTP has few coefficients (26 at level 8, ~100 at level 16), so the full
    inverse-Hessian update costs nothing, and the loss is ill-conditioned, so the
    10-pair memory of L-BFGS-B was a poor model of it. Measured on the default run's
    32-configuration set (level 8, 3 screened starts, tolerance 1%): L-BFGS-B ended at
    held-out force RMSEs of 9.7 and 38 meV/Å (1000 and 250 iterations), with 200 pairs
    of memory 8.3 and 9.1 (1000 and 958), BFGS at 5.6 and 5.6 after 196 and 250
    iterations in a third of the time, where `mlp train` ends (5.2-5.4; BENCHMARKS.md
    "MLIP-3's mlp against motep").
    Why the window test: a good MTP's loss is ~1e-5 (per-configuration means of squared
    errors in eV and eV/Å), below scipy's absolute thresholds (on the raw loss L-BFGS-B
    "converged" after 2 iterations), and MTP fits cross plateaus between drops, so no
    single step's decrease says the fit is done. Both steps use mtp_loss.TrainingLoss
    (3.7x faster per evaluation than motep's LossFunction on 4-atom cells)."""
    from motep.loss import LossSetting
    from scipy.optimize import minimize

    data = a.data
    data.initialize(np.random.default_rng(settings.seed))  # a fresh template's coefficients
    data.optimized = ["species_coeffs", "moment_coeffs", "radial_coeffs"]
    fn = TrainingLoss(images, data, LossSetting(
        energy_weight=settings.energy_weight, forces_weight=settings.force_weight,
        stress_weight=settings.stress_weight))
    before_lls = fn(data.parameters)
    start = fn.solve_linear()
    a.history += [before_lls, start]
    scale = start if math.isfinite(start) and start > 0 else 1.0
    fn.scale = 1.0 / scale
    a.log += ["linear least squares for the moment and species coefficients",
              f"loss 0: {before_lls!r}", f"loss 1: {start!r}", "=" * 72,
              f"(loss normalized by {scale!r}; BFGS)", "loss 0: 1.0"]
    before, converged = 1.0, False  # the loss at the last window's end; window test met

    def report(intermediate_result) -> None:  # scipy passes the result by this name
        nonlocal before, converged
        now = float(intermediate_result.fun)
        a.history.append(scale * now)
        done = len(a.history) - 2
        a.log.append(f"loss {done}: {now!r}")
        if done % WINDOW == 0:
            a.log.append(f"window: {done} iterations spent, loss {now:.6g} "
                         f"({100 * (before - now) / before:.3g}% lower)")
            converged = before - now < settings.tolerance * before
            before = now
            if converged:
                raise StopIteration

    res = minimize(fn.value_and_grad, data.parameters, jac=True, method="BFGS",
                   callback=report, options={"maxiter": settings.max_iter, "gtol": 1e-12})
    data.parameters = res.x
    a.iterations = int(res.nit)
    if not converged and res.nit < settings.max_iter:  # BFGS found no lower point
        converged = True
        a.log.append(f"BFGS stopped after {res.nit} iterations: {res.message}")
    a.converged, a.loss = converged, float(res.fun) * scale
    return a


def train(images: Sequence[Atoms], species: Sequence[str], out_dir: Path,
          settings: TrainSettings, start: Path | None) -> TrainResult:
    """Fit an MTP to `images`, starting from `start` (warm start) or a fresh template, and
    write `pot.mtp`, `active_set.npz` and `train.log` into `out_dir`.

    With `settings.restarts` = k, k more fits start from fresh templates with other random
    seeds; every start runs SCREEN iterations and the lowest loss goes on alone to
    convergence (or max_iter). Why: MTP fits have local minima; measured on one
    39-configuration set, three fresh fits ended at held-out force RMSEs of 58, 23 and 12
    meV/Å, and a warm start stays in the basin it starts in. Screening keeps k restarts
    at about k * SCREEN extra iterations instead of k whole fits."""
    from motep.io.mlip.mtp import write_mtp

    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".work.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    min_dist = fit_min_dist(images, settings)
    template = write_template(work / "untrained.mtp", settings.level,
                              min_dist=settings.min_dist if min_dist is None else min_dist,
                              max_dist=settings.max_dist,
                              radial_basis_size=settings.radial_basis_size)
    t0 = time.perf_counter()
    plan = [(start or template, settings.seed,
             "warm start" if start else f"fresh template, seed {settings.seed}")]
    plan += [(template, settings.seed + k, f"fresh template, seed {settings.seed + k}")
             for k in range(1, settings.restarts + 1)]
    screen = replace(settings, max_iter=min(SCREEN, settings.max_iter)) \
        if settings.restarts and settings.screen else settings
    attempts = [_fit(_Attempt(_read(path, species, min_dist), label), list(images),
                     replace(screen, seed=seed)) for path, seed, label in plan]
    best = min(attempts, key=lambda a: a.loss if math.isfinite(a.loss) else math.inf)
    screened = best
    if settings.restarts and not best.converged \
            and settings.max_iter > screen.max_iter:
        rest = _fit(_Attempt(copy.deepcopy(best.data), f"{best.label}, continued"),
                    list(images), replace(settings, max_iter=settings.max_iter - screen.max_iter))
        best = replace(rest, log=[*best.log, "#" * 72, "# continued", *rest.log],
                       history=best.history + rest.history,
                       iterations=best.iterations + rest.iterations)
    seconds = time.perf_counter() - t0
    write_mtp(str(work / POT), best.data, legacy=True)
    text = best.text
    if len(attempts) > 1:
        text = "".join(f"{'#' * 72}\n# attempt {k}: {a.label}: loss {a.loss:.6g} after "
                       f"{a.iterations} iterations{' (kept)' if a is screened else ''}\n"
                       f"{best.text if a is screened else a.text}"
                       for k, a in enumerate(attempts))

    pot = MotepPotential(work / POT, None, species, settings.al_mode)
    rows, owners = pot.all_rows(images)
    active = build_active_set(rows, owners)
    active.save(work / ACTIVE)
    errors = errors_of(pot, images)
    if not all(math.isfinite(v) for v in errors.values()):
        raise RuntimeError(f"training diverged (non-finite errors {errors}); see train.log")
    used = float(best.data.radial_basis.min)
    how = "kept: min_dist_update off" if min_dist is None else \
        f"{MIN_DIST_FACTOR} x the training set's shortest distance"
    text = f"radial basis: min_dist {used:.6g} ({how}), max_dist {settings.max_dist:g}\n" + text
    (work / "train.log").write_text(text, encoding="utf-8")
    for name in (POT, ACTIVE, "train.log"):
        os.replace(work / name, out_dir / name)
    shutil.rmtree(work, ignore_errors=True)
    message = (f"converged: {WINDOW} iterations lowered the loss by less than "
               f"{settings.tolerance:g}" if best.converged else
               f"stopped at max_iter {settings.max_iter} before converging")
    if len(attempts) > 1:
        message += f"; best of {len(attempts)} fits: {best.label}"
    extra: dict[str, object] = {"min_dist": used}
    if len(attempts) > 1:
        extra.update(attempts=[{"start": a.label, "loss": a.loss, "converged": a.converged}
                               for a in attempts], screen_iterations=screen.max_iter,
                     continued=best is not screened)
    return TrainResult(seconds, best.iterations, best.converged, best.history, errors,
                       active.size, active.n_configs, message, extra)


class MotepTrainer:
    """The `Trainer` interface (engines/base.py) over motep."""

    name = "motep"
    files = (POT, ACTIVE)

    def train(self, images: Sequence[Atoms], species: Sequence[str], out_dir: Path,
              settings: TrainSettings, start: Path | None) -> TrainResult:
        return train(images, species, out_dir, settings, start)

    def start_file(self, train_dir: Path) -> Path:
        return train_dir / POT

    def load(self, train_dir: Path, species: Sequence[str], al_mode: str) -> MotepPotential:
        return MotepPotential.load(train_dir, species, al_mode)

    def errors(self, train_dir: Path, species: Sequence[str], cfg_path: Path
               ) -> dict[str, float]:
        from smallcell.formats.cfg import cfg_to_atoms, iter_cfgs

        images = [cfg_to_atoms(c, list(species)) for c in iter_cfgs(cfg_path)]
        return errors_of(MotepPotential(Path(train_dir) / POT, None, species, "nbh"), images)

    def config_errors(self, train_dir: Path, species: Sequence[str], cfg_path: Path,
                      work: Path) -> list[dict[str, float]]:
        from smallcell.formats.cfg import cfg_to_atoms, iter_cfgs

        images = [cfg_to_atoms(c, list(species)) for c in iter_cfgs(cfg_path)]
        pot = MotepPotential(Path(train_dir) / POT, None, species, "nbh")
        return config_errors_of(pot, images)
