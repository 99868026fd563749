"""One GPAW single point, run as its own process: `python3 gpaw_task.py gpaw.json`.

GPAW installs with the system's Python and its own ASE (Debian: /usr/bin/python3, ASE
3.22), not in smallcell's venv, so the labeler never imports it: it writes gpaw.json
(structure and settings), runs this script with that interpreter (under an MPI launcher
if configured) and reads result.json. This file therefore imports only the standard
library, numpy, ASE and GPAW, and must run on the Python of a stable Linux distribution.

Exit status: 0 with result.json; 3 with result.json holding {"error": "scf", ...} when
the SCF did not converge within maxiter; anything else is a crash (traceback on stderr).
Only MPI rank 0 writes. The text output of GPAW goes to gpaw.txt beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

SCF_NOT_CONVERGED = 3


def _write(path: str, data: dict) -> None:
    tmp = f".{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _occupations(smearing: dict) -> dict:
    occ = {"name": smearing["name"], "width": float(smearing["width"])}
    if smearing["name"] == "methfessel-paxton":
        occ["order"] = int(smearing.get("order", 1))
    return occ


def main(input_path: str) -> int:
    from ase import Atoms
    from gpaw import GPAW, PW, KohnShamConvergenceError, __version__
    from gpaw.mpi import world

    with open(input_path, "rb") as fh:
        raw = fh.read()
    inp = json.loads(raw)
    calc_in = inp["calc"]
    atoms = Atoms(numbers=inp["numbers"], positions=inp["positions"], cell=inp["cell"],
                  pbc=inp["pbc"])
    atoms.calc = GPAW(
        mode=PW(float(calc_in["ecut"])),
        xc=calc_in["xc"],
        kpts={"size": calc_in["kpts"], "gamma": bool(calc_in["gamma"])},
        occupations=_occupations(calc_in["smearing"]),
        convergence=calc_in["convergence"],
        maxiter=int(calc_in["maxiter"]),
        symmetry={} if calc_in["symmetry"] else "off",
        txt="gpaw.txt",
    )
    out = {"input_sha256": hashlib.sha256(raw).hexdigest(), "gpaw_version": __version__,
           "natoms": len(atoms), "mpi_ranks": world.size}
    t0 = time.time()
    try:
        extrapolated = atoms.get_potential_energy()
        free = atoms.get_potential_energy(force_consistent=True)
        forces = atoms.get_forces()
        stress = atoms.get_stress()
    except KohnShamConvergenceError as exc:
        if world.rank == 0:
            _write("result.json", {**out, "error": "scf", "message": str(exc),
                                   "seconds": time.time() - t0})
        return SCF_NOT_CONVERGED
    if world.rank == 0:
        _write("result.json", {
            **out, "error": None, "energy_free": float(free),
            "energy_extrapolated": float(extrapolated), "forces": forces.tolist(),
            "stress": stress.tolist(), "seconds": time.time() - t0,
            "scf_iterations": int(atoms.calc.scf.niter) if atoms.calc.scf else None})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
