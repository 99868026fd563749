"""The embedded labeler: the Zhou 2004 Pb EAM as an in-process stand-in for VASP."""

from __future__ import annotations

import time
from pathlib import Path

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from smallcell.engines import eam_pb
from smallcell.engines.base import LabelError
from smallcell.state import atomic_write_json


class EAMLabeler:
    """Labels in microseconds to milliseconds, so the whole loop runs anywhere."""

    name = "eam"

    def __init__(self) -> None:
        self.calc = eam_pb.calculator()

    def label(self, task_dir: Path, atoms: Atoms) -> Atoms:
        if set(atoms.get_chemical_symbols()) - {"Pb"}:
            raise LabelError("the eam labeler knows only Pb")
        t0 = time.perf_counter()
        work = atoms.copy()
        work.calc = self.calc
        energy = float(work.get_potential_energy())
        forces = work.get_forces().copy()
        stress = work.get_stress().copy()
        out = atoms.copy()
        out.calc = SinglePointCalculator(out, energy=energy, forces=forces, stress=stress)
        atomic_write_json(task_dir / "label.json", {
            "labeler": self.name, "energy": energy, "seconds": time.perf_counter() - t0})
        return out
