"""The vectorized neighbour list (engines/neighbors.py): the same pairs as ASE's
`PrimitiveNeighborList`, the same update rule, and the same MTP results in MotepPotential."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import PrimitiveNeighborList

from smallcell.engines import neighbors
from smallcell.engines.eam_labeler import EAMLabeler
from smallcell.engines.embedded_md import run_md
from smallcell.engines.exploration import MDSettings
from smallcell.engines.motep_mtp import MotepPotential, TrainSettings, train
from smallcell.engines.neighbors import NeighborList
from smallcell.structures import displace, strain, supercell

CUT, SKIN = 2.5, 0.3  # motep's: 0.5 * max_dist per atom, skin 0.3
SPECIES = ["Pb"]


def _pairs(nl: NeighborList | PrimitiveNeighborList, n: int) -> list[tuple[int, ...]]:
    out = []
    for i in range(n):
        js, offsets = nl.get_neighbors(i)
        assert offsets.shape == (len(js), 3) and offsets.dtype.kind == "i"
        out += [(i, int(j), *map(int, o)) for j, o in zip(js, offsets, strict=True)]
    return out


def _lists(atoms: Atoms, cutoffs: list[float]) -> tuple[list, list]:
    kw = {"skin": SKIN, "self_interaction": False, "bothways": True}
    ase_nl = PrimitiveNeighborList(cutoffs, **kw)
    ours = NeighborList(cutoffs, **kw)
    assert ase_nl.update(atoms.pbc, atoms.cell, atoms.positions)
    assert ours.update(atoms.pbc, atoms.cell, atoms.positions)
    assert len(ours.cutoffs) == len(atoms)
    return _pairs(ase_nl, len(atoms)), _pairs(ours, len(atoms))


def _rattled(atoms: Atoms, seed: int, shear: float = 0.0, amp: float = 0.2) -> Atoms:
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    if shear:
        out.set_cell(out.cell.array @ (np.eye(3) + rng.uniform(-shear, shear, (3, 3))),
                     scale_atoms=True)
    out.positions += rng.uniform(-amp, amp, out.positions.shape)
    return out


def _cases() -> dict[str, Atoms]:
    fcc = supercell("fcc", 4.95, (1, 1, 1), "Pb")
    slab = _rattled(supercell("fcc", 4.95, (2, 2, 1), "Pb"), 5)
    slab.pbc = [True, True, False]
    slab.positions[:, 2] *= 1.6  # gaps wider than the cutoff along z
    outside = _rattled(supercell("fcc", 4.95, (1, 1, 2), "Pb"), 6, 0.1)
    outside.positions += np.array([[2, -1, 0, 3, 1, -2, 0, 1], [0, 1, -3, 1, 0, 0, 2, -1],
                                   [-1, 0, 1, 0, 2, 1, 0, -1]]).T @ outside.cell.array
    prim = bulk("Pb", "fcc", a=4.95)  # 60-degree cell of 1 atom: only its own images
    skew = prim.copy()
    skew.set_cell(np.array([[1, 0, 0], [2, 1, 0], [-1, 3, 1]]) @ prim.cell.array,
                  scale_atoms=False)  # not Minkowski-reduced
    cluster = Atoms("Pb6", positions=np.random.default_rng(7).uniform(-4, 4, (6, 3)))
    return {
        "fcc4 (cutoff > cell)": fcc,
        "fcc4 rattled": _rattled(fcc, 1),
        "fcc4 triclinic": _rattled(fcc, 2, 0.15),
        "fcc4 squeezed": _rattled(strain(fcc, 0.2, np.random.default_rng(3)), 3, 0.0, 0.4),
        "1x1x2": _rattled(supercell("fcc", 4.95, (1, 1, 2), "Pb"), 4, 0.1),
        "3x3x3": _rattled(supercell("fcc", 4.95, (3, 3, 3), "Pb"), 8, 0.1),
        "pbc TTF": slab,
        "positions outside the cell": outside,
        "one atom": prim,
        "one atom, skewed cell": _rattled(skew, 9),
        "cluster, no cell": cluster,
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_same_pairs_as_ase(name: str) -> None:
    atoms = _cases()[name]
    theirs, ours = _lists(atoms, [CUT] * len(atoms))
    assert len(ours) == len(set(ours))  # no pair twice
    assert sorted(ours) == sorted(theirs)
    assert ours == sorted(ours)  # ordered by atom, neighbour and offset
    if name != "cluster, no cell":
        assert theirs  # the case has neighbours at all


def test_same_pairs_as_ase_with_per_atom_cutoffs() -> None:
    atoms = _rattled(supercell("fcc", 4.95, (1, 2, 1), "Pb"), 11, 0.1)
    cutoffs = list(np.random.default_rng(0).uniform(1.0, 3.5, len(atoms)))
    theirs, ours = _lists(atoms, cutoffs)
    assert sorted(ours) == sorted(theirs)


def test_blocks_of_bounded_size_give_the_same_list(monkeypatch: pytest.MonkeyPatch) -> None:
    atoms = _cases()["3x3x3"]
    whole = _lists(atoms, [CUT] * len(atoms))[1]
    monkeypatch.setattr(neighbors, "_CHUNK", 1000)  # blocks of a few atoms
    assert _lists(atoms, [CUT] * len(atoms))[1] == whole


def test_pair_distances_are_within_the_cutoff() -> None:
    atoms = _cases()["fcc4 triclinic"]
    nl = NeighborList([CUT] * len(atoms), skin=SKIN)
    nl.update(atoms.pbc, atoms.cell, atoms.positions)
    for i in range(len(atoms)):
        js, offsets = nl.get_neighbors(i)
        d = atoms.positions[js] + offsets @ atoms.cell.array - atoms.positions[i]
        assert (np.linalg.norm(d, axis=1) < 2 * (CUT + SKIN)).all()


def test_update_rule_is_ases() -> None:
    atoms = _rattled(supercell("fcc", 4.95, (1, 1, 1), "Pb"), 12)
    lists = [cls([CUT] * 4, skin=SKIN, self_interaction=False, bothways=True)
             for cls in (PrimitiveNeighborList, NeighborList)]
    steps = []

    def step(label: str, a: Atoms) -> None:
        # a fresh cell array every call, as motep's calculator passes (it evaluates a copy
        # of the atoms); ASE keeps a reference to the cell it is given, not a copy
        got = [nl.update(a.pbc, a.cell.array.copy(), a.positions) for nl in lists]
        assert got[0] == got[1], label
        steps.append(got[1])

    step("first", atoms)
    step("unchanged", atoms)
    atoms.positions[1] += [0.1, 0.0, 0.0]  # below skin / 2
    step("tiny move", atoms)
    atoms.positions[2] += [0.0, 0.29, 0.0]  # moved less than skin since the build
    step("move below skin", atoms)
    atoms.positions[1] += [0.25, 0.0, 0.0]  # atom 1 now 0.35 > skin from the build
    step("move above skin", atoms)
    atoms.set_cell(atoms.cell.array * 1.0001, scale_atoms=False)
    step("cell change", atoms)
    atoms.pbc = [True, False, True]
    step("pbc change", atoms)
    assert steps == [True, False, False, False, True, True, True]
    assert sorted(_pairs(lists[0], 4)) == sorted(_pairs(lists[1], 4))
    bigger = atoms.repeat((1, 2, 1))
    with pytest.raises(ValueError, match="number of cutoff"):
        lists[1].update(bigger.pbc, bigger.cell, bigger.positions)


# ---------------------------------------------------------------- in MotepPotential


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, short fit (the numbers only need to be a generic MTP)."""
    root = tmp_path_factory.mktemp("nbfit")
    rng = np.random.default_rng(12)
    base = supercell("fcc", 4.95, (1, 1, 1), "Pb")
    images = []
    for k in range(8):
        (root / str(k)).mkdir()
        atoms = displace(strain(base, 0.03, rng), 0.15, "uniform", rng)
        images.append(EAMLabeler().label(root / str(k), atoms))
    train(images, SPECIES, root / "train", TrainSettings(level=6, max_iter=20), None)
    return root / "train"


def _with_ase_list(folder: Path) -> MotepPotential:
    pot = MotepPotential.load(folder, SPECIES, "nbh")
    del pot.calc.engine._initiate_neighbor_list  # motep's own method, with ASE's list
    return pot


def _configs() -> list[Atoms]:
    fcc = supercell("fcc", 4.95, (1, 1, 1), "Pb")
    rng = np.random.default_rng(21)
    return [displace(strain(fcc, 0.04, rng), 0.2, "uniform", rng),
            _rattled(fcc, 22, 0.12),
            _rattled(supercell("fcc", 4.95, (1, 1, 2), "Pb"), 23, 0.05),  # 8 atoms
            displace(strain(fcc, 0.08, rng), 0.3, "uniform", rng),
            _rattled(supercell("fcc", 4.95, (2, 1, 1), "Pb"), 24, 0.05, 0.3)]


def test_motep_results_are_unchanged(folder: Path) -> None:
    from motep.calculator import make_calculator

    pot = MotepPotential.load(folder, SPECIES, "nbh")
    ref = _with_ase_list(folder)
    for atoms in _configs():  # 4 and 8 atoms alternate: `_attach` resets the list
        e, f, s = pot.evaluate(atoms.copy())
        assert isinstance(pot.calc.engine.neighbor_list, NeighborList)
        plain = atoms.copy()
        plain.calc = make_calculator(pot.data, engine="cext", mode="run")
        scale = np.abs(plain.get_forces()).max()
        assert e == pytest.approx(plain.get_potential_energy(), rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(f, plain.get_forces(), rtol=1e-10, atol=1e-10 * scale)
        np.testing.assert_allclose(s, plain.get_stress(), rtol=1e-10,
                                   atol=1e-10 * np.abs(s).max())
        g, nbh = pot.grade(atoms.copy())
        g_ref, nbh_ref = ref.grade(atoms.copy())
        assert g == pytest.approx(g_ref, rel=1e-10)
        np.testing.assert_allclose(nbh, nbh_ref, rtol=1e-10)
    assert not isinstance(ref.calc.engine.neighbor_list, NeighborList)


def test_npt_md_is_unchanged(folder: Path) -> None:
    s = MDSettings(temperature=300.0, pressure=1.0, seed=4, steps=20, timestep=2.0,
                   ensemble="npt", thermostat_tau=100.0, barostat_tau=1000.0, grade_every=1,
                   gamma_save=1e9, gamma_break=1e9)
    start = displace(supercell("fcc", 4.95, (1, 1, 1), "Pb"), 0.1, "uniform",
                     np.random.default_rng(5))
    runs = []
    for pot in (MotepPotential.load(folder, SPECIES, "nbh"), _with_ase_list(folder)):
        with tempfile.TemporaryDirectory() as out:
            runs.append(run_md(start, pot, SPECIES, s, Path(out)))
    ours, theirs = runs
    assert ours["steps_done"] == theirs["steps_done"] == 20
    for key in ("max", "mean", "sum_sq"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-9)
