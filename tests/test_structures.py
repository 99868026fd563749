"""Input structures (Algorithm 2): cells, displacements, seeds, the (T, P) grid."""

from __future__ import annotations

import re

import numpy as np
import pytest

from smallcell.config import parse_config
from smallcell.structures import (
    displace,
    initial_structures,
    md_runs,
    rng_for,
    seed_for,
    start_structure,
    strain,
    supercell,
)


@pytest.mark.parametrize(("lattice", "reps", "n"), [
    ("fcc", (1, 1, 1), 4), ("fcc", (1, 1, 2), 8), ("fcc", (2, 2, 2), 32),
    ("bcc", (1, 1, 1), 2), ("bcc", (2, 2, 2), 16), ("bcc", (1, 2, 3), 12),
])
def test_supercell_atom_counts_and_lattice_parameter(lattice: str, reps: tuple, n: int) -> None:
    a = 4.95 if lattice == "fcc" else 3.3
    atoms = supercell(lattice, a, reps, "Pb")
    assert len(atoms) == n
    assert set(atoms.get_chemical_symbols()) == {"Pb"}
    np.testing.assert_allclose(atoms.cell.array, np.diag(np.array(reps) * a), atol=1e-12)
    assert all(atoms.pbc)
    # nearest-neighbour distance of the ideal lattice
    d = atoms.get_all_distances(mic=True)
    nn = d[d > 1e-8].min()
    expected = a / np.sqrt(2) if lattice == "fcc" else a * np.sqrt(3) / 2
    if max(reps) * a > 2 * nn:  # meaningful once the cell is bigger than a neighbour shell
        assert nn == pytest.approx(expected)


def test_supercell_rejects_other_lattices() -> None:
    with pytest.raises(ValueError, match="fcc or bcc"):
        supercell("hcp", 3.0, (1, 1, 1), "Pb")


def test_uniform_displacement_is_bounded_by_the_amplitude() -> None:
    base = supercell("fcc", 4.95, (3, 3, 3), "Pb")
    out = displace(base, 0.2, "uniform", np.random.default_rng(1))
    delta = out.positions - base.positions
    assert np.abs(delta).max() <= 0.2
    assert np.abs(delta).max() > 0.18  # the whole box is used, not a smaller one
    assert abs(delta.mean()) < 0.02
    # the input is not modified
    np.testing.assert_array_equal(base.positions, supercell("fcc", 4.95, (3, 3, 3), "Pb").positions)
    np.testing.assert_array_equal(out.cell.array, base.cell.array)


def test_gaussian_displacement_has_the_amplitude_as_std() -> None:
    base = supercell("fcc", 4.95, (6, 6, 6), "Pb")  # 864 atoms, 2592 components
    out = displace(base, 0.1, "gaussian", np.random.default_rng(2))
    delta = (out.positions - base.positions).ravel()
    assert delta.std() == pytest.approx(0.1, rel=0.05)
    assert abs(delta.mean()) < 0.01
    assert np.abs(delta).max() > 0.25  # tails beyond 2.5 sigma exist: not uniform


def test_zero_displacement_and_bad_kind() -> None:
    base = supercell("bcc", 3.3, (1, 1, 1), "Pb")
    out = displace(base, 0.0, "uniform", np.random.default_rng(0))
    np.testing.assert_array_equal(out.positions, base.positions)
    with pytest.raises(ValueError, match="uniform or gaussian"):
        displace(base, 0.1, "box", np.random.default_rng(0))


def test_strain_is_symmetric_and_bounded() -> None:
    base = supercell("fcc", 4.95, (1, 1, 1), "Pb")
    for k in range(20):
        out = strain(base, 0.05, np.random.default_rng(k))
        eps = np.linalg.solve(base.cell.array, out.cell.array) - np.eye(3)
        np.testing.assert_allclose(eps, eps.T, atol=1e-12)
        assert np.abs(eps).max() <= 0.05 + 1e-12
        # atoms move with the cell
        np.testing.assert_allclose(out.get_scaled_positions(), base.get_scaled_positions(),
                                   atol=1e-12)


def test_seeds_depend_on_labels_only() -> None:
    assert seed_for(1, "md", 0, 0) == seed_for(1, "md", 0, 0)
    assert seed_for(1, "md", 0, 0) != seed_for(1, "md", 1, 0)
    assert seed_for(1, "md", 0, 0) != seed_for(2, "md", 0, 0)
    assert 1 <= seed_for(5, "x") < 2**31 - 1
    a = rng_for(3, "initial").random(5)
    b = rng_for(3, "initial").random(5)
    np.testing.assert_array_equal(a, b)


GRID = ("species: [Pb]\nstructure: {cell: [1, 1, 2], displacement: 0.1}\n"
        "grid: {temperatures: [200, 300, 450.5], pressures: [1, 1000], seeds_per_point: 2}\n"
        "run: {seed: 11}\n")


def test_md_runs_grid_size_and_stable_names() -> None:
    cfg = parse_config(GRID)
    runs = md_runs(cfg, 1)
    assert len(runs) == 3 * 2 * 2
    assert [r.index for r in runs] == list(range(12))
    names = [r.name for r in runs]
    assert names == [r.name for r in md_runs(cfg, 1)]  # stable across calls
    assert names == [r.name for r in md_runs(cfg, 2)]  # and across iterations
    assert len(set(names)) == 12
    assert names == sorted(names)
    assert names[0] == "000_T200_P1_s0"
    assert names[1] == "001_T200_P1_s1"
    assert names[2] == "002_T200_P1000_s0"
    assert names[-1] == "011_T450.5_P1000_s1"
    assert all(re.fullmatch(r"\d{3}_T[0-9.]+_P[0-9.e+-]+_s\d+", n) for n in names)
    points = {(r.temperature, r.pressure) for r in runs}
    assert points == {(t, p) for t in (200.0, 300.0, 450.5) for p in (1.0, 1000.0)}


def test_md_seeds_are_reproducible_and_differ_between_iterations() -> None:
    cfg = parse_config(GRID)
    s1 = [r.seed for r in md_runs(cfg, 1)]
    assert s1 == [r.seed for r in md_runs(parse_config(GRID), 1)]
    assert len(set(s1)) == len(s1)
    s2 = [r.seed for r in md_runs(cfg, 2)]
    assert not set(s1) & set(s2)
    other = parse_config(GRID.replace("seed: 11", "seed: 12"))
    assert [r.seed for r in md_runs(other, 1)] != s1


def test_start_structure_is_seeded_by_the_run() -> None:
    cfg = parse_config(GRID)
    r1, r2 = md_runs(cfg, 1), md_runs(cfg, 2)
    a = start_structure(cfg, r1[0])
    assert len(a) == 8
    np.testing.assert_array_equal(a.positions, start_structure(cfg, r1[0]).positions)
    assert not np.allclose(a.positions, start_structure(cfg, r1[1]).positions)
    assert not np.allclose(a.positions, start_structure(cfg, r2[0]).positions)
    base = supercell("fcc", cfg["structure"]["a"], cfg["structure"]["cell"], "Pb")
    delta = a.positions - base.positions
    assert np.abs(delta).max() <= cfg["structure"]["displacement"]
    assert np.abs(delta).max() > 0


def test_initial_structures_count_strain_and_displacement() -> None:
    cfg = parse_config("initial: {n_configs: 15, strain: 0.03, displacement: 0.12}\n"
                       "structure: {lattice: bcc, a: 3.6, cell: [2, 1, 1]}\nrun: {seed: 4}\n")
    images = initial_structures(cfg)
    assert len(images) == 15
    base = supercell("bcc", 3.6, (2, 1, 1), "Pb")
    eps_max = 0.0
    for atoms in images:
        assert len(atoms) == 4
        eps = np.linalg.solve(base.cell.array, atoms.cell.array) - np.eye(3)
        np.testing.assert_allclose(eps, eps.T, atol=1e-12)
        assert np.abs(eps).max() <= 0.03 + 1e-12
        eps_max = max(eps_max, np.abs(eps).max())
        # displacement measured from the strained lattice sites
        sites = base.get_scaled_positions() @ atoms.cell.array
        assert np.abs(atoms.positions - sites).max() <= 0.12 + 1e-9
    assert eps_max > 0.01  # not all (nearly) unstrained
    # reproducible, and different configurations differ
    again = initial_structures(cfg)
    for a, b in zip(images, again, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
    assert not np.allclose(images[0].positions, images[1].positions)
