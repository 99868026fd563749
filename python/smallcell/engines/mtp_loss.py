"""The MTP training loss and its gradient over a whole training set in a few array
operations, for the embedded trainer's BFGS fits.

Why it exists: motep 0.2.0's `LossFunction` evaluates every training configuration
through an ASE calculator, then loops over the configurations in Python once per term
(energy, forces, stress) for the loss and again for the gradient. On the 4-atom cells of
the small-cell protocol that overhead was most of a fit: 608 configurations, 20 L-BFGS-B
iterations, 27 s, of which 5 s in motep's C kernel. Here motep's kernel (`calc_train`)
writes each configuration's basis derivatives straight into its slice of one array per
atom count, and the loss and gradient are a few einsums over those arrays.

The loss is motep's (LossSetting): per-configuration means of the energy term (per atom,
squared), the force term (summed over components, per atom) and the stress term (3x3,
times volume, per atom); tests/test_mtp_loss.py checks value and gradient against motep's
`LossFunction` on the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from smallcell.engines.neighbors import NeighborList

_SKIN = 0.3  # motep's neighbour-list skin: pairs up to max_dist + skin are passed on


def neighbour_vectors(atoms: Atoms, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices (atoms x max neighbours, -1 padded) and vectors r_j - r_i, laid
    out as motep's engines expect (padding vectors have length max_dist per component)."""
    nl = NeighborList([0.5 * max_dist] * len(atoms), skin=_SKIN)
    nl.update(atoms.pbc, atoms.cell, atoms.positions)
    lists = [nl.get_neighbors(i) for i in range(len(atoms))]
    width = max((len(j) for j, _ in lists), default=0)
    js = np.full((len(atoms), width), -1, dtype=np.int32)
    rs = np.full((len(atoms), width, 3), float(max_dist))
    pos = atoms.positions
    for i, (j, off) in enumerate(lists):
        js[i, : len(j)] = j
        rs[i, : len(j)] = pos[j] + off @ atoms.cell.array - pos[i]
    return js, rs


def _per_volume(d: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Strain derivatives (n, k, 3, 3) to stress: symmetrized and divided by each
    configuration's volume (motep's `_symmetrize_stress`)."""
    return (d + d.swapaxes(-2, -1)) * (0.5 / volume)[:, None, None, None]


@dataclass
class _Group:
    """The configurations with one atom count, their targets and basis arrays."""

    index: np.ndarray  # positions in the training set
    inputs: list[tuple[np.ndarray, ...]]  # (js, rs, itypes, jtypes) per configuration
    mbd: list[SimpleNamespace]  # per configuration: views into the arrays below
    rbd: SimpleNamespace  # scratch: the radial-basis outputs are not needed here
    arrays: dict[str, np.ndarray]  # vatoms, dbdris, dbdeps, dvdcs, dgdcs, dsdcs
    energy: np.ndarray  # (n,) reference energies
    forces: np.ndarray  # (n, N, 3)
    stress: np.ndarray  # (n, 3, 3), full tensors
    counts: np.ndarray  # (n, species) atoms of each species
    volume: np.ndarray  # (n,)
    c_energy: np.ndarray  # (n,) weights of each term, zero where a target is missing
    c_forces: np.ndarray
    c_stress: np.ndarray


class TrainingLoss:
    """loss(parameters) and its gradient for motep's `MTPData` on labeled images.

    Parameters are serialized as `MTPData.parameters` (moment, species, radial
    coefficients); optimizing `scaling` is not supported (motep's gradient does not
    either). `weights` scales every term at once, so a fit can normalize its loss."""

    def __init__(self, images: Sequence[Atoms], data, setting) -> None:
        from motep.potentials.mtp.data import get_types

        if "scaling" in data.optimized:
            raise ValueError("the batched loss cannot optimize `scaling`")
        self.data = data
        self.setting = setting
        self.scale = 1.0
        self.n = len(images)
        spc, rfc = data.species_count, data.radial_funcs_count
        rbs, asm = data.radial_basis.size, data.alpha_scalar_moments
        by_size: dict[int, list[int]] = {}
        for k, atoms in enumerate(images):
            by_size.setdefault(len(atoms), []).append(k)
        self.groups: list[_Group] = []
        for natoms, index in by_size.items():
            n = len(index)
            arrays = {
                "vatoms": np.zeros((n, asm, natoms)),
                "dbdris": np.zeros((n, asm, natoms, 3)),
                "dbdeps": np.zeros((n, asm, 3, 3)),
                "dvdcs": np.zeros((n, spc, spc, rfc, rbs, natoms)),
                "dgdcs": np.zeros((n, spc, spc, rfc, rbs, natoms, 3)),
                "dsdcs": np.zeros((n, spc, spc, rfc, rbs, 3, 3)),
            }
            mbd = [SimpleNamespace(**{name: a[k] for name, a in arrays.items()})
                   for k in range(n)]
            rbd = SimpleNamespace(values=np.zeros((spc, spc, rbs)),
                                  dqdris=np.zeros((spc, spc, rbs, natoms, 3)),
                                  dqdeps=np.zeros((spc, spc, rbs, 3, 3)))
            inputs, energy, forces, stress, volume = [], [], [], [], []
            has_f, has_s = [], []
            for k in index:
                atoms = images[k]
                js, rs = neighbour_vectors(atoms, float(data.radial_basis.max))
                itypes = np.asarray(get_types(atoms, data.species), dtype=np.int32)
                inputs.append((js, rs, itypes, itypes[js]))
                results = atoms.calc.results
                energy.append(results["energy"])
                has_f.append("forces" in results)
                forces.append(results.get("forces", np.zeros((natoms, 3))))
                has_s.append("stress" in results and atoms.cell.rank == 3)
                stress.append(voigt_6_to_full_3x3_stress(results["stress"]) if has_s[-1]
                              else np.zeros((3, 3)))
                volume.append(atoms.cell.volume if atoms.cell.rank == 3 else 1.0)
            counts = np.array([[np.count_nonzero(images[k].numbers == s)
                                for s in data.species] for k in index], dtype=float)
            vol = np.array(volume)
            c_e = np.full(n, 1.0 / natoms**2 if setting.energy_per_atom else 1.0)
            c_f = np.full(n, 1.0 / natoms if setting.forces_per_atom else 1.0) * has_f
            c_s = np.ones(n) * has_s
            if setting.stress_times_volume:
                c_s *= vol**2 * (1.0 / natoms**2 if setting.energy_per_atom else 1.0)
            self.groups.append(_Group(
                np.array(index), inputs, mbd, rbd, arrays, np.array(energy),
                np.array(forces), np.array(stress), counts, vol,
                c_e / (self.n if setting.energy_per_conf else 1.0),
                c_f / (self.n if setting.forces_per_conf else 1.0),
                c_s / (self.n if setting.stress_per_conf else 1.0)))

    def value_and_grad(self, parameters: np.ndarray) -> tuple[float, np.ndarray]:
        """The loss and its gradient at `parameters` (also set on the MTPData)."""
        from motep.potentials.mtp.cext._mtp_cext import calc_train

        data, st = self.data, self.setting
        data.parameters = np.array(parameters, dtype=float)
        mc = np.asarray(data.moment_coeffs, dtype=float)
        we, wf, ws = (self.scale * st.energy_weight, self.scale * st.forces_weight,
                      self.scale * st.stress_weight)
        loss = 0.0
        g_moment = np.zeros(data.alpha_scalar_moments)
        g_species = np.zeros(data.species_count)
        g_radial = np.zeros(np.size(data.radial_coeffs))
        for g in self.groups:
            a = g.arrays
            for arr in a.values():
                arr[...] = 0.0
            energies = np.empty(len(g.index))
            for k, (js, rs, it, jt) in enumerate(g.inputs):
                energies[k] = calc_train(js, rs, it, jt, data, g.rbd, g.mbd[k]).sum()
            n = len(g.index)
            dbdeps = _per_volume(a["dbdeps"], g.volume)
            dsdcs = _per_volume(a["dsdcs"].reshape(n, -1, 3, 3), g.volume)
            dgdcs = a["dgdcs"].reshape(n, -1, *a["dgdcs"].shape[-2:])
            forces = -np.einsum("k,nkaj->naj", mc, a["dbdris"])
            stress = np.einsum("k,nkij->nij", mc, dbdeps)
            de = energies - g.energy
            df = forces - g.forces
            ds = stress - g.stress
            ce, cf, cs = we * g.c_energy, wf * g.c_forces, ws * g.c_stress
            loss += (float(ce @ de**2) + float(cf @ np.einsum("naj,naj->n", df, df))
                     + float(cs @ np.einsum("nij,nij->n", ds, ds)))
            re, rf, rs_ = 2 * ce * de, 2 * cf[:, None, None] * df, 2 * cs[:, None, None] * ds
            g_moment += (re @ a["vatoms"].sum(axis=-1)
                         - np.einsum("naj,nkaj->k", rf, a["dbdris"])
                         + np.einsum("nij,nkij->k", rs_, dbdeps))
            g_species += re @ g.counts
            g_radial += (re @ a["dvdcs"].sum(axis=-1).reshape(n, -1)
                         - np.einsum("naj,nraj->r", rf, dgdcs)
                         + np.einsum("nij,nrij->r", rs_, dsdcs))
        parts = {"moment_coeffs": g_moment, "species_coeffs": g_species,
                 "radial_coeffs": g_radial}
        grad = np.concatenate([parts[name] for name in
                               ("moment_coeffs", "species_coeffs", "radial_coeffs")
                               if name in data.optimized])
        return loss, grad

    def solve_linear(self) -> float:
        """Set the moment and species coefficients to the loss's least-squares optimum for
        the current radial coefficients (motep's LLS step: the energy, forces and stress
        are linear in them) and return the loss there."""
        data, st = self.data, self.setting
        self.value_and_grad(data.parameters)  # fills the basis arrays
        asm, spc = data.alpha_scalar_moments, data.species_count
        rows, rhs = [], []
        for g in self.groups:
            a = g.arrays
            se = np.sqrt(self.scale * st.energy_weight * g.c_energy)
            sf = np.sqrt(self.scale * st.forces_weight * g.c_forces)
            ss = np.sqrt(self.scale * st.stress_weight * g.c_stress)
            dbdeps = _per_volume(a["dbdeps"], g.volume)
            rows.append(se[:, None] * np.hstack([a["vatoms"].sum(axis=-1), g.counts]))
            rhs.append(se * g.energy)
            f_rows = -(sf[:, None, None, None] * a["dbdris"]).transpose(0, 2, 3, 1)
            f_rows = f_rows.reshape(-1, asm)
            rows.append(np.hstack([f_rows, np.zeros((len(f_rows), spc))]))
            rhs.append((sf[:, None, None] * g.forces).ravel())
            s_rows = (ss[:, None, None, None] * dbdeps).transpose(0, 2, 3, 1).reshape(-1, asm)
            rows.append(np.hstack([s_rows, np.zeros((len(s_rows), spc))]))
            rhs.append((ss[:, None, None] * g.stress).ravel())
        coeffs = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]
        data.moment_coeffs = coeffs[:asm]
        data.species_coeffs = coeffs[asm:]
        return self(data.parameters)

    def __call__(self, parameters: np.ndarray) -> float:
        return self.value_and_grad(parameters)[0]
