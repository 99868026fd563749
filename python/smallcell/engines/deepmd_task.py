"""DeePMD-kit inference as its own process: `python deepmd_task.py MODEL IN.npz OUT.npz`.

DeePMD-kit and TensorFlow live in their own venv (`make setup EXTRAS=deepmd`:
.venv-deepmd/), not in smallcell's, so the adapter (engines/deepmd.py) never imports them:
it writes the configurations to IN.npz, runs this script with that venv's Python and
reads OUT.npz. This file imports only the standard library, numpy and deepmd.

IN.npz: natoms (n,), cells (n, 9) Å, coords (sum natoms, 3) Å, types (sum natoms,) into
the model's type_map. OUT.npz: energy (n,) eV, forces (sum natoms, 3) eV/Å, virial
(n, 9) eV (DeePMD's: -stress * volume), eval_seconds (n,): the wall time of each
configuration's evaluation, after one untimed warm-up evaluation (TensorFlow builds its
kernels on the first call), and load_seconds: loading the model. Written under a temporary
name and renamed, so a killed run leaves no OUT.npz.
"""

from __future__ import annotations

import os
import sys
import time


def main(model: str, in_path: str, out_path: str) -> int:
    import numpy as np

    t0 = time.perf_counter()
    from deepmd.infer import DeepPot

    dp = DeepPot(model)
    load_seconds = time.perf_counter() - t0
    data = np.load(in_path)
    natoms = data["natoms"].astype(int)
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    cells, coords, types = data["cells"], data["coords"], data["types"].astype(int)
    n = len(natoms)
    energy = np.zeros(n)
    virial = np.zeros((n, 9))
    forces = np.zeros((int(offsets[-1]), 3))
    seconds = np.zeros(n)

    def one(k: int) -> tuple:
        a, b = offsets[k], offsets[k + 1]
        return dp.eval(coords[a:b].reshape(1, -1), cells[k].reshape(1, 9),
                       types[a:b].tolist())

    if n:
        one(0)  # warm-up, untimed
    for k in range(n):
        t = time.perf_counter()
        e, f, v = one(k)[:3]
        seconds[k] = time.perf_counter() - t
        energy[k] = float(np.asarray(e).reshape(-1)[0])
        forces[offsets[k]:offsets[k + 1]] = np.asarray(f).reshape(-1, 3)
        virial[k] = np.asarray(v).reshape(9)
    tmp = f"{out_path}.tmp.{os.getpid()}.npz"
    np.savez(tmp, energy=energy, forces=forces, virial=virial, eval_seconds=seconds,
             load_seconds=np.array(load_seconds))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: deepmd_task.py MODEL IN.npz OUT.npz", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
