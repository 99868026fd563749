"""Generated MTP templates: readable by motep, rotation invariant, and equal to upstream's basis.

The numpy evaluator below is deliberately independent of the generator: it reads templates
with motep's parser and evaluates ``alpha_index_basic``/``alpha_index_times`` literally.
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from motep.calculator import make_calculator
from motep.io.mlip.mtp import read_mtp

from smallcell.engines.mtp_basis import generate_template, scalar_levels, write_template

UPSTREAM_LEVELS = (6, 8, 10, 12, 14, 16)
# alpha_scalar_moments of MLIP-3's MTP_templates/NN.almtp
UPSTREAM_COUNTS = {6: 5, 8: 9, 10: 16, 12: 29, 14: 52, 16: 92}
ALL_LEVELS = tuple(range(2, 17))


def _upstream(fixtures: Path, level: int) -> Path:
    path = fixtures / "mlip3" / "mlip3_upstream" / "MTP_templates" / f"{level:02d}.almtp"
    if not path.is_file():
        pytest.skip(f"upstream template missing: {path}")
    return path


@cache
def _generated(level: int, species_count: int = 1) -> str:
    return generate_template(level, species_count=species_count)


def _read(tmp_path: Path, text: str, name: str = "t.almtp"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_mtp(path)


# ------------------------------------------------------------------------------------------
# independent evaluator
# ------------------------------------------------------------------------------------------


def _radial(mu: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Simple, distinct radial weights f_mu(r); any choice works for invariance and span."""
    return np.exp(-0.5 * (mu + 1) * r) * (1.0 + 0.3 * mu * r)


def _alphas(data, nbh: np.ndarray) -> np.ndarray:
    """All alpha values for neighbourhoods ``nbh`` (samples, neighbours, 3); NaN-padded."""
    basic = np.asarray(data.alpha_index_basic, dtype=int).reshape(-1, 4)
    times = np.asarray(data.alpha_index_times, dtype=int).reshape(-1, 4)
    n_alpha = int(data.alpha_moments_count)
    mask = ~np.isnan(nbh[..., 0])
    pts = np.where(mask[..., None], nbh, 0.0)
    r = np.linalg.norm(pts, axis=-1)
    out = np.zeros((nbh.shape[0], n_alpha))
    for idx, (mu, a, b, c) in enumerate(basic):
        terms = _radial(mu, r) * pts[..., 0] ** a * pts[..., 1] ** b * pts[..., 2] ** c
        out[:, idx] = np.where(mask, terms, 0.0).sum(axis=1)
    for i, j, mult, k in times:
        out[:, k] += mult * out[:, i] * out[:, j]
    return out


def _scalars(data, nbh: np.ndarray) -> np.ndarray:
    return _alphas(data, nbh)[:, np.asarray(data.alpha_moment_mapping, dtype=int)]


def _neighbourhoods(rng: np.random.Generator, samples: int, max_nbh: int = 16) -> np.ndarray:
    """Random neighbourhoods with 6..max_nbh points at distances 0.5..1.5 (NaN padding)."""
    out = np.full((samples, max_nbh, 3), np.nan)
    for s in range(samples):
        k = int(rng.integers(6, max_nbh + 1))
        d = rng.normal(size=(k, 3))
        d *= (rng.uniform(0.5, 1.5, size=k) / np.linalg.norm(d, axis=1))[:, None]
        out[s, :k] = d
    return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _orthonormal_basis(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Orthonormal basis of the column space (columns normalised first) and its rank."""
    cols = values / np.linalg.norm(values, axis=0)
    u, s, _ = np.linalg.svd(cols, full_matrices=False)
    rank = int((s > 1e-9 * s[0]).sum())
    return u[:, :rank], rank


def _outside(values: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Relative norm of each column's part outside span(basis)."""
    resid = values - basis @ (basis.T @ values)
    return np.linalg.norm(resid, axis=0) / np.linalg.norm(values, axis=0)


# ------------------------------------------------------------------------------------------
# (1) motep reads and evaluates every generated template
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("species_count", [1, 2])
def test_motep_reads_and_evaluates(tmp_path: Path, species_count: int) -> None:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    species = [29, 82][:species_count]
    if species_count == 2:
        atoms.numbers[::3] = 82
    atoms.rattle(0.05, seed=1)
    for level in ALL_LEVELS:
        text = _generated(level, species_count)
        data = _read(tmp_path, text, f"{level}_{species_count}.almtp")
        assert data.species_count == species_count
        assert data.alpha_scalar_moments == len(data.alpha_moment_mapping)
        assert data.alpha_index_times_count == len(data.alpha_index_times)
        assert data.alpha_index_basic_count == len(data.alpha_index_basic)
        data.species = species
        data.initialize(np.random.default_rng(level))
        atoms.calc = make_calculator(data, engine="cext", mode="run")
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        assert np.isfinite(energy), level
        assert np.all(np.isfinite(forces)), level
        # momentum conservation: no net force on a periodic cell
        assert np.abs(forces.sum(axis=0)).max() < 1e-8 * max(1.0, np.abs(forces).max())
        assert np.abs(forces).max() > 1e-6, level  # rattled cell: forces are not all zero


def test_motep_energies_agree_with_upstream(tmp_path: Path, fixtures: Path) -> None:
    """Same radial/species coefficients, moment_coeffs mapped through the span identity.

    Because both scalar sets span the same space, upstream scalar k = sum_i T_ik * ours_i
    is a polynomial identity in the moment tensors, independent of the radial functions; so
    motep must give the same energy and forces for both templates.
    """
    rng = np.random.default_rng(7)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[::2] = 82
    atoms.rattle(0.1, seed=3)
    nbh = _neighbourhoods(rng, 260, max_nbh=20)
    for level in (8, 12):
        ours = _read(tmp_path, _generated(level, 2), f"g{level}.almtp")
        ups = read_mtp(_upstream(fixtures, level))
        g_val, u_val = _scalars(ours, nbh), _scalars(ups, nbh)
        transfer, *_ = np.linalg.lstsq(g_val, u_val, rcond=None)
        assert np.abs(g_val @ transfer - u_val).max() < 1e-8 * np.abs(u_val).max()
        ups.species_count = 2
        ups.species = ours.species = [29, 82]
        ups.initialize(rng)
        ours.radial_coeffs = ups.radial_coeffs.copy()
        ours.species_coeffs = ups.species_coeffs.copy()
        ours.moment_coeffs = transfer @ ups.moment_coeffs
        results = []
        for data in (ups, ours):
            atoms.calc = make_calculator(data, engine="cext", mode="run")
            results.append((atoms.get_potential_energy(), atoms.get_forces()))
        (e_up, f_up), (e_ours, f_ours) = results
        assert e_ours == pytest.approx(e_up, rel=1e-7, abs=1e-7)
        np.testing.assert_allclose(f_ours, f_up, rtol=1e-6, atol=1e-6 * np.abs(f_up).max())
        # the check has teeth: perturbing one coefficient changes the energy
        ours.moment_coeffs = ours.moment_coeffs.copy()
        ours.moment_coeffs[-1] += 1.0
        atoms.calc = make_calculator(ours, engine="cext", mode="run")
        assert atoms.get_potential_energy() != pytest.approx(e_up, rel=1e-7, abs=1e-7)


# ------------------------------------------------------------------------------------------
# (2) rotational invariance
# ------------------------------------------------------------------------------------------


def test_scalars_are_rotation_invariant(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    nbh = _neighbourhoods(rng, 4, max_nbh=10)
    for level in ALL_LEVELS:
        data = _read(tmp_path, _generated(level), f"{level}.almtp")
        rot = _random_rotation(rng)
        before = _alphas(data, nbh)
        after = _alphas(data, nbh @ rot.T)
        mapping = np.asarray(data.alpha_moment_mapping, dtype=int)
        scale = np.abs(before[:, mapping])
        np.testing.assert_array_less(
            np.abs(after[:, mapping] - before[:, mapping]), 1e-10 * scale + 1e-300
        )
        basic = np.asarray(data.alpha_index_basic).reshape(-1, 4)
        tensor_cols = np.flatnonzero(basic[:, 1:].sum(axis=1) > 0)
        if level >= 6:  # level 6 is the first with a vector moment
            change = np.abs(after[:, tensor_cols] - before[:, tensor_cols])
            assert change.max() > 1e-3 * np.abs(before[:, tensor_cols]).max()
        else:
            assert tensor_cols.size == 0


# ------------------------------------------------------------------------------------------
# (3) equality with upstream
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", UPSTREAM_LEVELS)
def test_same_span_as_upstream(tmp_path: Path, fixtures: Path, level: int) -> None:
    ups = read_mtp(_upstream(fixtures, level))
    ours = _read(tmp_path, _generated(level))
    assert ups.alpha_scalar_moments == UPSTREAM_COUNTS[level]
    # counts match at every upstream level (no expected difference to record)
    assert ours.alpha_scalar_moments == ups.alpha_scalar_moments
    assert ours.radial_funcs_count == ups.radial_funcs_count
    rng = np.random.default_rng(level)
    nbh = _neighbourhoods(rng, 3 * UPSTREAM_COUNTS[level] + 40)
    g_val, u_val = _scalars(ours, nbh), _scalars(ups, nbh)
    g_basis, g_rank = _orthonormal_basis(g_val)
    u_basis, u_rank = _orthonormal_basis(u_val)
    n = UPSTREAM_COUNTS[level]
    assert g_rank == n  # our scalars are linearly independent
    assert u_rank == n
    assert _outside(u_val, g_basis).max() < 1e-6
    assert _outside(g_val, u_basis).max() < 1e-6
    # the check has teeth: without one of our functions upstream is no longer covered
    smaller, _ = _orthonormal_basis(g_val[:, :-1])
    assert _outside(u_val, smaller).max() > 1e-4


# ------------------------------------------------------------------------------------------
# (4) levels, determinism, API details
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_levels_bounded_and_deterministic(level: int) -> None:
    text = generate_template(level)
    assert text == generate_template(level)
    levels = scalar_levels(text)
    assert levels and max(levels) <= level
    assert levels.count(2) == 1  # M_{0,0} alone
    assert min(levels) == 2
    if level >= 4:
        assert max(levels) == level - level % 2  # the level is actually used


def test_scalar_levels_of_upstream(fixtures: Path) -> None:
    for level in UPSTREAM_LEVELS:
        ours = sorted(scalar_levels(_generated(level)))
        assert sorted(scalar_levels(_upstream(fixtures, level))) == ours


def test_upstream_06_shape_reproduced() -> None:
    """Level 6 is small enough to pin completely (same as upstream's entries)."""
    text = generate_template(6)
    assert "alpha_index_basic = {{0, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}, " in text
    assert (
        "alpha_index_times = {{0, 0, 1, 5}, {1, 1, 1, 6}, {2, 2, 1, 6}, {3, 3, 1, 6}, "
        "{0, 5, 1, 7}}" in text
    )
    assert "alpha_moment_mapping = {0, 4, 5, 6, 7}" in text


def test_layout_and_options(tmp_path: Path) -> None:
    text = generate_template(10, species_count=3, min_dist=1.5, max_dist=7.0, radial_basis_size=6)
    lines = text.split("\n")
    assert "\r" not in text and text.endswith("}\n")
    assert lines[:6] == [
        "MTP",
        "version = 1.1.0",
        "potential_name = MTP1m",
        "species_count = 3",
        "potential_tag = ",
        "radial_basis_type = RBChebyshev",
    ]
    assert lines[6:10] == [
        "\tmin_dist = 1.5",
        "\tmax_dist = 7",
        "\tradial_basis_size = 6",
        "\tradial_funcs_count = 3",
    ]
    # fewer radial functions drop the tensors with large mu (and their basis functions)
    reduced = _read(tmp_path, generate_template(10, radial_funcs_count=2))
    assert max(np.asarray(reduced.alpha_index_basic)[:, 0]) == 1
    assert reduced.alpha_scalar_moments < UPSTREAM_COUNTS[10]
    for bad in ({"species_count": 0}, {"min_dist": 5.0, "max_dist": 5.0}):
        with pytest.raises(ValueError):
            generate_template(8, **bad)
    with pytest.raises(ValueError):
        generate_template(1)


def test_write_template_is_atomic_and_equal(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "08.almtp"
    got = write_template(target, 8, max_dist=7.0)
    assert got == target
    assert target.read_text(encoding="utf-8") == generate_template(8, max_dist=7.0)
    assert [p.name for p in target.parent.iterdir()] == ["08.almtp"]  # no tmp left behind
    assert scalar_levels(target) == scalar_levels(generate_template(8))


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_template(16, radial_funcs_count=5)
    assert time.perf_counter() - start < 5.0
