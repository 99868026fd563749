"""The small interfaces stages use to reach engines, and the choice of adapter by config.

Stages never import an adapter module directly: they ask this module for the labeler
configured, so adding VASP, GPAW or MLIP-3 means adding an adapter and a line here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ase import Atoms

from smallcell.config import Config


class LabelError(Exception):
    """A label task failed; the reason is recorded in the task's `failed` marker."""


class Labeler(Protocol):
    """Reference labels (DFT or its stand-in) for one configuration in its task folder."""

    name: str

    def label(self, task_dir: Path, atoms: Atoms) -> Atoms:
        """Return `atoms` with energy, forces and stress attached (SinglePointCalculator);
        raise LabelError with a one-line reason when the calculation failed."""
        ...


def labeler_for(cfg: Config) -> Labeler:
    """The labeler named by `engines.labeler`."""
    name = cfg["engines"]["labeler"]
    if name == "eam":
        from smallcell.engines.eam_labeler import EAMLabeler

        return EAMLabeler()
    raise ValueError(f"engines.labeler: unknown labeler {name!r}")
