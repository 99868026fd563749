"""Automatic k-point meshes of one density for every cell size: the DFT labelers (VASP,
GPAW) share the rule, so a 4-atom and a 32-atom cell of the protocol get the same
sampling of the Brillouin zone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def kpoint_mesh(
    cell: Any, natoms: int, *, kspacing: float | None = None, kppra: float | None = None
) -> tuple[int, int, int]:
    """The automatic mesh of a cell: n_i proportional to the reciprocal vector length |b_i|.

    kspacing (Å⁻¹, VASP's KSPACING incl. 2π): n_i = max(1, ceil(2π|b_i| / kspacing)), the
    mesh VASP itself would choose. kppra: n_i = max(1, ceil(c |b_i|)) with c chosen so that
    natoms * n1 n2 n3 = kppra before rounding up. Rounding up means never coarser than asked,
    and a cell twice as long gets half the k-points along that direction.
    """
    if (kspacing is None) == (kppra is None):
        raise ValueError("give exactly one of kspacing and kppra")
    rec = np.linalg.norm(np.linalg.inv(np.asarray(cell, dtype=float)).T, axis=1)  # |b_i|, no 2π
    if not np.all(np.isfinite(rec)) or np.any(rec <= 0):
        raise ValueError("the cell is singular: no k-point mesh")
    if kspacing is not None:
        target = 2 * math.pi * rec / kspacing
    else:
        assert kppra is not None
        c = (kppra / max(natoms, 1) / float(np.prod(rec))) ** (1 / 3)
        target = c * rec
    # The tolerance keeps an exact ratio (6.0000000001 from float noise) from rounding up.
    mesh = [max(1, math.ceil(t - 1e-6)) for t in target]
    return (mesh[0], mesh[1], mesh[2])
