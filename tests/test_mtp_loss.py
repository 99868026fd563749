"""The batched training loss (engines/mtp_loss.py) equals motep's LossFunction: value,
gradient and linear least-squares step, on sets that mix cell sizes and lack some targets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from motep.loss import LossFunction, LossSetting
from motep.train.trainer import Trainer

from smallcell.engines.eam_pb import calculator
from smallcell.engines.mtp_basis import write_template
from smallcell.engines.mtp_loss import TrainingLoss, neighbour_vectors
from smallcell.engines.neighbors import NeighborList
from smallcell.structures import displace, strain, supercell

SPECIES = [82]


def _labeled(atoms: Atoms, *, stress: bool = True, forces: bool = True) -> Atoms:
    a = atoms.copy()
    a.calc = calculator()
    results = {"energy": a.get_potential_energy()}
    if forces:
        results["forces"] = a.get_forces()
    if stress:
        results["stress"] = a.get_stress()
    a.calc = SinglePointCalculator(a, **results)
    return a


@pytest.fixture(scope="module")
def images() -> list[Atoms]:
    """4- and 8-atom cells, strained and displaced; one without stress, one without forces."""
    rng = np.random.default_rng(5)
    out = []
    for cell in [(1, 1, 1)] * 6 + [(1, 1, 2)] * 4:
        base = supercell("fcc", 4.95, cell, "Pb")
        out.append(_labeled(displace(strain(base, 0.04, rng), 0.2, "uniform", rng)))
    out.append(_labeled(displace(supercell("fcc", 4.95, (1, 1, 2), "Pb"), 0.2, "uniform",
                                 rng), forces=False))
    # last: motep 0.2.0 indexes its stress volumes by configuration, not by position among
    # the configurations with stress, so its loss is only right when these come last
    out.append(_labeled(displace(supercell("fcc", 4.95, (1, 1, 1), "Pb"), 0.2, "uniform",
                                 rng), stress=False))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    from motep.io.mlip.mtp import read_mtp

    path = write_template(tmp_path_factory.mktemp("tpl") / "t.mtp", 6, min_dist=2.0,
                          max_dist=5.0, radial_basis_size=8)
    d = read_mtp(str(path))
    d.species = SPECIES
    d.initialize(np.random.default_rng(3))
    d.optimized = ["species_coeffs", "moment_coeffs", "radial_coeffs"]
    return d


@pytest.mark.parametrize("setting", [
    LossSetting(),
    LossSetting(energy_weight=0.3, forces_weight=0.2, stress_weight=0.05,
                energy_per_atom=False, forces_per_atom=False, stress_times_volume=False,
                energy_per_conf=False, forces_per_conf=False, stress_per_conf=False),
], ids=["defaults", "all-flags-off"])
def test_value_and_gradient_equal_motep(images: list[Atoms], data, setting) -> None:
    rng = np.random.default_rng(1)
    ours = TrainingLoss(images, copy.deepcopy(data), setting)
    ref = LossFunction(images, copy.deepcopy(data), setting)
    for _ in range(3):
        p = data.parameters + rng.normal(0.0, 0.05, data.parameters.size)
        value, grad = ours.value_and_grad(p)
        want = ref(p)
        assert value == pytest.approx(want, rel=1e-10)
        np.testing.assert_allclose(grad, ref.jac(p), rtol=1e-9,
                                   atol=1e-12 * np.abs(grad).max())


def test_gradient_is_the_derivative_of_the_value(images: list[Atoms], data) -> None:
    ours = TrainingLoss(images, copy.deepcopy(data), LossSetting())
    p = data.parameters.copy()
    _, grad = ours.value_and_grad(p)
    for i in np.argsort(-np.abs(grad))[:4]:
        e = np.zeros_like(p)
        e[i] = 1e-6 * max(1.0, abs(p[i]))
        numeric = (ours(p + e) - ours(p - e)) / (2 * e[i])
        assert numeric == pytest.approx(grad[i], rel=1e-5)


def test_scale_multiplies_value_and_gradient(images: list[Atoms], data) -> None:
    ours = TrainingLoss(images, copy.deepcopy(data), LossSetting())
    v1, g1 = ours.value_and_grad(data.parameters)
    ours.scale = 1e4
    v2, g2 = ours.value_and_grad(data.parameters)
    assert v2 == pytest.approx(1e4 * v1, rel=1e-12)
    np.testing.assert_allclose(g2, 1e4 * g1, rtol=1e-12)


def test_linear_step_equals_motep_lls(images: list[Atoms], data, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # motep's trainer writes intermediate_0.mtp here
    mine, theirs = copy.deepcopy(data), copy.deepcopy(data)
    Trainer(theirs, seed=1, steps=[{"method": "LLS"}]).train(images)
    loss = TrainingLoss(images, mine, LossSetting())
    before = loss(mine.parameters)
    after = loss.solve_linear()
    assert after < before
    np.testing.assert_allclose(mine.moment_coeffs, theirs.moment_coeffs, rtol=1e-6)
    np.testing.assert_allclose(mine.species_coeffs, theirs.species_coeffs, rtol=1e-8)
    # the optimum of the linear part: its gradient vanishes, the radial part's does not
    _, grad = loss.value_and_grad(mine.parameters)
    n_lin = mine.alpha_scalar_moments + mine.species_count
    assert np.abs(grad[:n_lin]).max() < 1e-8 * np.abs(grad[n_lin:]).max()


def test_scaling_cannot_be_optimized(images: list[Atoms], data) -> None:
    d = copy.deepcopy(data)
    d.optimized = ["scaling", "moment_coeffs"]
    with pytest.raises(ValueError, match="scaling"):
        TrainingLoss(images, d, LossSetting())


def test_neighbour_vectors_match_the_neighbour_list(images: list[Atoms]) -> None:
    atoms = images[7]
    js, rs = neighbour_vectors(atoms, 5.0)
    nl = NeighborList([2.5] * len(atoms))
    nl.update(atoms.pbc, atoms.cell, atoms.positions)
    for i in range(len(atoms)):
        j, off = nl.get_neighbors(i)
        assert list(js[i, : len(j)]) == list(j) and (js[i, len(j):] == -1).all()
        want = atoms.positions[j] + off @ atoms.cell.array - atoms.positions[i]
        np.testing.assert_allclose(rs[i, : len(j)], want, atol=1e-12)
        assert (rs[i, len(j):] == 5.0).all()
