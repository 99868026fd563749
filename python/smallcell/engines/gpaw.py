"""The GPAW labeler: an open-source DFT single point per task folder, for users without a
VASP licence.

GPAW is installed with the system's Python (Debian's `gpaw` package: /usr/bin/python3 and
its own ASE 3.22), not in smallcell's venv, so each label is a file-based run like VASP's:

    gpaw.json   the structure (positions, cell, numbers) and every DFT setting, written here
    gpaw_task.py  the script that runs it (a copy: the folder can be re-run by hand)
    gpaw.txt    GPAW's own text output; gpaw.out / gpaw.err the process's streams
    result.json energy, forces, stress (or the SCF failure), with the hash of gpaw.json

The argv is `[*launcher, python, gpaw_task.py, gpaw.json]`, never run by a shell (setup
lines as for VASP). Plane waves are fixed: they give the stress tensor that the MTP's
training needs. The k-point mesh follows the same density rule as VASP's (kspacing incl.
2π, or kppra), so every cell size of the protocol is sampled alike. A previous attempt's
outputs go to attempts/<n>/, as for VASP.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from smallcell.engines.base import LabelError
from smallcell.engines.kpoints import kpoint_mesh
from smallcell.engines.process import (
    KILL_GRACE,
    ProgramNotFound,
    archive_outputs,
    check_positive,
    command_words,
    exit_text,
    run_logged,
    tail_line,
    with_setup,
)
from smallcell.state import atomic_output, atomic_write_json, atomic_write_text

SCRIPT = Path(__file__).with_name("gpaw_task.py")
# One BLAS/OpenMP thread per GPAW process unless the user's environment says otherwise:
# labels run run.jobs side by side (or one MPI rank per core through gpaw.launcher), and
# Debian's threaded OpenBLAS would start one thread per core in each of them.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
INPUT, RESULT, TEXT = "gpaw.json", "result.json", "gpaw.txt"
SCF_NOT_CONVERGED = 3  # gpaw_task.py's exit status when the SCF ran out of iterations
OUTPUTS = (TEXT, RESULT, "gpaw.out", "gpaw.err", "label.json")
SMEARINGS = ("fermi-dirac", "marzari-vanderbilt", "methfessel-paxton")
CONVERGENCE_KEYS = ("energy", "density", "eigenstates", "forces")
INSTALL_HINT = "install GPAW with `make setup EXTRAS=gpaw` (Debian's gpaw and gpaw-data)"


def thread_env() -> dict[str, str]:
    """The thread variables a GPAW process gets: 1 for each one not already set."""
    return {k: "1" for k in THREAD_VARS if k not in os.environ}


@dataclass
class GpawSettings:
    """How to run GPAW here and the DFT settings of every label (the `gpaw:` section)."""

    python: str = "/usr/bin/python3"
    launcher: list[str] | None = None  # an MPI launcher; None = one process
    setup: list[str] = field(default_factory=list)
    ecut: float = 500.0  # stress needs it: 300 eV leaves ~-7 GPa of Pulay stress on Pb
    xc: str = "PBE"
    kspacing: float | None = 0.25
    kppra: float | None = None
    gamma_centered: bool = True
    smearing: str = "fermi-dirac"
    width: float = 0.1
    convergence: dict[str, float] = field(default_factory=dict)
    maxiter: int = 333
    symmetry: bool = True
    energy: Literal["free", "sigma0"] = "free"
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.python, str) or not self.python.strip():
            raise ValueError(f"gpaw.python must be the interpreter with GPAW, got "
                             f"{self.python!r}")
        words, self.setup = command_words([*(self.launcher or []), self.python], self.setup,
                                          "gpaw")
        self.launcher = words[:-1]
        check_positive(self.ecut, "gpaw.ecut")
        check_positive(self.width, "gpaw.width")
        if (self.kspacing is None) == (self.kppra is None):
            raise ValueError("set exactly one of gpaw.kspacing and gpaw.kppra")
        for key in ("kspacing", "kppra"):
            if getattr(self, key) is not None:
                check_positive(getattr(self, key), f"gpaw.{key}")
        if self.smearing not in SMEARINGS:
            raise ValueError(f"gpaw.smearing must be one of {', '.join(SMEARINGS)}, got "
                             f"{self.smearing!r}")
        self.convergence = dict(self.convergence)
        for key, value in self.convergence.items():
            if key not in CONVERGENCE_KEYS:
                raise ValueError(f"gpaw.convergence: unknown criterion {key!r} (known: "
                                 f"{', '.join(CONVERGENCE_KEYS)})")
            check_positive(value, f"gpaw.convergence.{key}")
        if isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or \
                self.maxiter < 1:
            raise ValueError(f"gpaw.maxiter must be an integer >= 1, got {self.maxiter!r}")
        if self.energy not in ("free", "sigma0"):
            raise ValueError(f"gpaw.energy must be 'free' or 'sigma0', got {self.energy!r}")
        if self.timeout is not None:
            check_positive(self.timeout, "gpaw.timeout")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GpawSettings:
        """Settings from the `gpaw:` section; unknown keys are errors (a misspelt key
        silently ignored would change every label)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown gpaw settings: {', '.join(unknown)}")
        return cls(**dict(data))

    def argv(self) -> list[str]:
        """What runs in a task folder (with the setup lines, if any, in front)."""
        return with_setup([*(self.launcher or []), self.python, SCRIPT.name, INPUT],
                          self.setup, "smallcell-gpaw")


def write_input(task_dir: Path, atoms: Atoms, s: GpawSettings) -> dict[str, Any]:
    """gpaw.json and the script into `task_dir`; return the input's data."""
    if not all(atoms.pbc):
        raise LabelError("GPAW labels need a periodic cell (pbc on all three axes)")
    mesh = kpoint_mesh(atoms.cell, len(atoms), kspacing=s.kspacing, kppra=s.kppra)
    data = {
        "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
        "cell": np.asarray(atoms.cell[:]).tolist(), "pbc": [True, True, True],
        "calc": {"ecut": s.ecut, "xc": s.xc, "kpts": list(mesh), "gamma": s.gamma_centered,
                 "smearing": {"name": s.smearing, "width": s.width},
                 "convergence": s.convergence, "maxiter": s.maxiter, "symmetry": s.symmetry},
    }
    atomic_write_text(task_dir / INPUT, json.dumps(data, indent=1) + "\n")
    with atomic_output(task_dir / SCRIPT.name) as tmp:
        shutil.copyfile(SCRIPT, tmp)
    return data


def _reason(task_dir: Path) -> str:
    """The end of gpaw.err (else gpaw.out), with the install hint when GPAW is missing."""
    tail = tail_line(task_dir / "gpaw.err") or tail_line(task_dir / "gpaw.out")
    if "No module named 'gpaw'" in tail or "No module named 'ase'" in tail:
        return f"{tail}; {INSTALL_HINT}"
    return tail or "no output in gpaw.err or gpaw.out"


def read_result(task_dir: Path, atoms: Atoms, s: GpawSettings) -> Atoms:
    """`atoms` with GPAW's energy, forces and stress attached; LabelError when result.json
    is missing, is another input's (hash), or records an SCF failure."""
    try:
        res = json.loads((task_dir / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabelError(f"GPAW wrote no readable {RESULT}: {exc}") from exc
    want = hashlib.sha256((task_dir / INPUT).read_bytes()).hexdigest()
    if res.get("input_sha256") != want:
        raise LabelError(f"{RESULT} belongs to another {INPUT}: stale or foreign result")
    if res.get("error") == "scf":
        raise LabelError(f"GPAW SCF did not converge in gpaw.maxiter={s.maxiter} "
                         f"iterations ({res.get('message', '')}); see {TEXT}")
    forces = np.asarray(res["forces"], dtype=float)
    if forces.shape != (len(atoms), 3):
        raise LabelError(f"{RESULT} holds {forces.shape[0]} forces for {len(atoms)} atoms")
    chosen = res["energy_free"] if s.energy == "free" else res["energy_extrapolated"]
    results: dict[str, Any] = {"energy": float(chosen), "forces": forces,
                               "stress": np.asarray(res["stress"], dtype=float)}
    if s.energy == "free":
        results["free_energy"] = float(res["energy_free"])
    out = atoms.copy()
    out.info["gpaw_result"] = {k: res.get(k) for k in (
        "energy_free", "energy_extrapolated", "gpaw_version", "mpi_ranks", "natoms",
        "scf_iterations", "seconds")}
    out.calc = SinglePointCalculator(out, **results)
    return out


_PROBE = ("import sys, gpaw, ase\nfrom gpaw.setup_data import SetupData\n"
          "for e in sys.argv[2:]:\n    SetupData(e, sys.argv[1])\nprint(gpaw.__version__)")


def check_installed(s: GpawSettings, species: Sequence[str]) -> str:
    """Once before a run: the interpreter imports GPAW and finds the PAW setup of every
    species for gpaw.xc; its version, or ValueError with the install hint."""
    argv = with_setup([s.python, "-c", _PROBE, s.xc, *species], s.setup, "smallcell-gpaw")
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as exc:
        raise ValueError(f"gpaw.python: {s.python!r} not found; {INSTALL_HINT}") from exc
    if "Could not find required PAW dataset" in res.stderr:
        line = next(x for x in res.stderr.splitlines() if "PAW dataset" in x)
        raise ValueError(f"{line.split(': ', 1)[-1].strip()} for gpaw.xc {s.xc!r} (install "
                         "gpaw-data, or set GPAW_SETUP_PATH in gpaw.setup)")
    if res.returncode != 0:
        raise ValueError(f"gpaw.python {s.python!r} cannot import GPAW "
                         f"({tail_line(res.stderr)}); {INSTALL_HINT}")
    return res.stdout.strip()


class GpawLabeler:
    """DFT labels with GPAW (plane waves), one process per task folder."""

    name = "gpaw"

    def __init__(self, settings: GpawSettings) -> None:
        self.settings = settings

    def label(self, task_dir: Path, atoms: Atoms) -> Atoms:
        task_dir = Path(task_dir)
        s = self.settings
        t0 = time.perf_counter()
        archived = archive_outputs(task_dir, OUTPUTS, (INPUT,))
        data = write_input(task_dir, atoms, s)
        argv = s.argv()
        try:
            rc = run_logged(argv, task_dir, task_dir / "gpaw.out", task_dir / "gpaw.err",
                            s.timeout, KILL_GRACE, env=thread_env())
        except ProgramNotFound as exc:
            raise LabelError(f"gpaw: {exc.program!r} {exc.reason}; check gpaw.python and "
                             f"gpaw.launcher; {INSTALL_HINT}") from exc
        if rc is None:
            raise LabelError(f"GPAW timed out after {s.timeout:g} s (gpaw.timeout) and was "
                             f"killed; {_reason(task_dir)}")
        if rc not in (0, SCF_NOT_CONVERGED):
            raise LabelError(f"GPAW {exit_text(rc)}; {_reason(task_dir)}")
        labeled = read_result(task_dir, atoms, s)
        info = labeled.info["gpaw_result"]
        atomic_write_json(task_dir / "label.json", {
            "labeler": self.name, "energy": labeled.get_potential_energy(),
            "energy_kind": s.energy, **info, "kpoints": data["calc"]["kpts"],
            "command": argv, "seconds": time.perf_counter() - t0,
            "previous_attempt": None if archived is None else
            str(archived.relative_to(task_dir))})
        return labeled
