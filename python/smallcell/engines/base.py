"""The small interfaces stages use to reach engines, and the choice of adapter by config.

Stages never import an adapter module directly: they ask this module for the labeler
configured, so adding VASP, GPAW or MLIP-3 means adding an adapter and a line here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

from ase import Atoms

from smallcell.config import Config
from smallcell.errors import SmallcellError


class LabelError(Exception):
    """A label task failed; the reason is recorded in the task's `failed` marker."""


class Labeler(Protocol):
    """Reference labels (DFT or its stand-in) for one configuration in its task folder."""

    name: str

    def label(self, task_dir: Path, atoms: Atoms) -> Atoms:
        """Return `atoms` with energy, forces and stress attached (SinglePointCalculator);
        raise LabelError with a one-line reason when the calculation failed."""
        ...


class Potential(Protocol):
    """A trained potential with its active set, as the explorer and the selector use it."""

    calc: object  # an ASE calculator for the molecular dynamics

    def grade(self, atoms: Atoms) -> tuple[float, Any]:
        """gamma of `atoms`, and per-atom grades in nbh mode (else None)."""
        ...

    def select(self, candidates: list[Atoms], threshold: float = 1.001, *,
               batch: bool = False, limit: int | None = None) -> Any:
        """D-optimal selection among candidates (a maxvol.Selection); `batch`: one
        configuration at a time, at most `limit` (maxvol.select_batch)."""
        ...


class Trainer(Protocol):
    """Fits potentials and loads them back; `files` are what a train folder holds."""

    name: str
    files: tuple[str, ...]

    def train(self, images: list[Atoms], species: list[str], out_dir: Path,
              settings: Any, start: Path | None) -> Any:
        """Fit on `images` (warm start from the potential file `start`)."""
        ...

    def start_file(self, train_dir: Path) -> Path:
        """The file of a train folder that a warm start continues from."""
        ...

    def load(self, train_dir: Path, species: list[str], al_mode: str) -> Potential: ...

    def errors(self, train_dir: Path, species: list[str], cfg_path: Path) -> dict[str, float]:
        """Errors of the train folder's potential on the labeled configurations of
        `cfg_path`: energy_* (eV/atom), force_* (|F_ref - F_ML| per atom, eV/Å), stress_*
        (GPa), n_configs (the keys of motep_mtp.errors_of)."""
        ...

    def config_errors(self, train_dir: Path, species: list[str], cfg_path: Path,
                      work: Path) -> list[dict[str, float]]:
        """Per configuration of `cfg_path`, in file order: atoms, energy_diff (E_ML -
        E_ref, eV), energy_per_atom_diff (|dE|/N), force_rms (RMS over atoms of |dF|,
        eV/Å), force_max; the keys of MLIP-3's check_errors log. `work`: a folder the
        engine may write its files to."""
        ...


class Explorer(Protocol):
    """MD with extrapolation control for one explore run."""

    name: str

    def run(self, out: Path, atoms: Atoms, species: list[str], settings: Any,
            train_dir: Path) -> dict[str, Any]:
        """Run in `out` (in.lammps and data.lmp are already there) with the potential of
        `train_dir`; leave `preselected.cfg` and a log in `out`; return gamma.json's data
        (engines/exploration.py: GammaStats.as_dict() plus steps_done, broke, break_step,
        break_reason, n_preselected, seconds)."""
        ...


def explorer_for(cfg: Config) -> Explorer:
    """The explorer named by `engines.explorer`."""
    name = cfg["engines"]["explorer"]
    if name == "embedded":
        from smallcell.engines.embedded_md import EmbeddedExplorer

        return EmbeddedExplorer(trainer_for(cfg), cfg["trainer"]["al_mode"])
    if name == "lammps":
        from smallcell.engines.lammps_explorer import LammpsExplorer, LammpsSettings

        return LammpsExplorer(LammpsSettings.from_mapping(cfg["lammps"]))
    raise ValueError(f"engines.explorer: unknown explorer {name!r}")


def trainer_for(cfg: Config) -> Trainer:
    """The trainer/grader named by `engines.trainer`."""
    name = cfg["engines"]["trainer"]
    if name == "motep":
        from smallcell.engines.motep_mtp import MotepTrainer

        return MotepTrainer()
    if name == "mlip3":
        from smallcell.engines.mlip3 import Mlip3Settings, Mlip3Trainer

        m, tr = cfg["mlip3"], cfg["trainer"]
        return Mlip3Trainer(Mlip3Settings(
            mlp=m["mlp"], setup=m["setup"], template=cfg.resolve(m["template"]),
            templates_dir=cfg.resolve(m["templates_dir"]), level=tr["level"],
            min_dist=tr["min_dist"], max_dist=tr["max_dist"],
            radial_basis_size=tr["radial_basis_size"], iteration_limit=tr["max_iter"],
            tolerance=m["tolerance"], energy_weight=tr["energy_weight"],
            force_weight=tr["force_weight"], stress_weight=tr["stress_weight"],
            weight_scaling=m["weight_scaling"], al_mode=tr["al_mode"],
            start="warm" if tr["warm_start"] else "template", timeout=m["timeout"],
            restarts=tr["restarts"], min_dist_update=tr["min_dist_update"]))
    raise ValueError(f"engines.trainer: unknown trainer {name!r}")


def check_engines(cfg: Config, local_jobs: int | None = None) -> None:
    """Everything engines/preflight.py checks before a run (each configured adapter built
    once, programs found as the tasks would find them, POTCARs, the MTP template and the
    initial data read, settings that cannot deliver): warnings go to stderr, and all the
    errors together stop the run in one SmallcellError, one line each, before any task
    starts. `local_jobs`: the run's worker count when it runs on this machine (compared
    with its cores); None for SLURM."""
    from smallcell.engines.preflight import problems

    found = problems(cfg, local_jobs=local_jobs)
    for p in found:
        if p.warning:
            print(f"smallcell: warning: {p.text}", file=sys.stderr)
    errors = [p.text for p in found if not p.warning]
    if errors:
        raise SmallcellError("\n".join(errors))


def labeler_for(cfg: Config) -> Labeler:
    """The labeler named by `engines.labeler`."""
    name = cfg["engines"]["labeler"]
    if name == "eam":
        from smallcell.engines.eam_labeler import EAMLabeler

        return EAMLabeler()
    if name == "vasp":
        from smallcell.engines.vasp import VaspLabeler, VaspSettings

        data = dict(cfg["vasp"], potcar_dir=cfg.resolve(cfg["vasp"]["potcar_dir"]))
        return VaspLabeler(VaspSettings.from_mapping(data), list(cfg["species"]))
    if name == "gpaw":
        from smallcell.engines.gpaw import GpawLabeler, GpawSettings

        return GpawLabeler(GpawSettings.from_mapping(cfg["gpaw"]))
    raise ValueError(f"engines.labeler: unknown labeler {name!r}")
