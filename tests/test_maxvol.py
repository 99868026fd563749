"""MaxVol active sets and D-optimal selection (maxvol.py), on random rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smallcell.engines.maxvol import ActiveSet, build_active_set, select_add, select_batch

TOL = 1e-3


def _owners(m: int, atoms: int = 1) -> np.ndarray:
    k = np.arange(m)
    return np.column_stack([k // atoms, k % atoms if atoms > 1 else -np.ones(m, int)])


def _logdet(a: np.ndarray) -> float:
    return float(np.linalg.slogdet(a)[1])


@pytest.mark.parametrize("seed", range(5))
def test_full_rank_active_set_has_the_maxvol_property(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = 80, 12
    rows = rng.normal(size=(m, n)) * rng.uniform(0.1, 10.0, size=n)  # uneven columns
    owners = _owners(m, atoms=4)
    act = build_active_set(rows, owners, tol=TOL)
    assert act.rows.shape == (n, n) and act.inverse.shape == (n, n)
    np.testing.assert_allclose(act.rows @ act.inverse, np.eye(n), atol=1e-8)
    # the active rows are training rows, and owners say which ones
    for row, (c, a) in zip(act.rows, act.owners, strict=True):
        np.testing.assert_array_equal(row, rows[4 * c + a])
    assert len({tuple(o) for o in act.owners}) == n
    assert act.grades(act.rows).max() <= 1 + 1e-9
    assert act.grades(rows).max() <= 1 + TOL
    assert act.n_configs == len(np.unique(act.owners[:, 0]))
    # |det| is at least that of random choices of n training rows
    best = _logdet(act.rows)
    for _ in range(50):
        pick = rng.choice(m, n, replace=False)
        assert best >= _logdet(rows[pick]) - 1e-9


def test_grades_of_new_rows() -> None:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(40, 6))
    act = build_active_set(rows, _owners(40))
    # inside the parallelotope: coefficients of at most 0.5 in the active rows
    inside = rng.uniform(-0.5, 0.5, size=(20, 6)) @ act.rows
    assert act.grades(inside).max() <= 0.5 + 1e-9
    # far outside: 5 x an active row
    far = 5.0 * act.rows[2]
    assert act.grades(far)[0] == pytest.approx(5.0)
    assert act.grades(far).shape == (1,)


def test_rank_deficient_input_is_padded() -> None:
    rng = np.random.default_rng(3)
    n, r, m = 12, 5, 40
    basis = rng.normal(size=(r, n))
    rows = rng.normal(size=(m, r)) @ basis
    act = build_active_set(rows, _owners(m))
    assert act.size == n
    pads = act.owners[:, 0] == -1
    assert pads.sum() == n - r
    assert (act.owners[pads] == -1).all()
    assert act.n_configs == r
    assert np.isfinite(act.inverse).all()
    # a row outside the span of the training rows grades huge
    outside = rng.normal(size=n)
    outside -= basis.T @ np.linalg.lstsq(basis.T, outside, rcond=None)[0]
    assert act.grades(outside)[0] > 1e6
    # rows inside the span stay finite and moderate
    assert act.grades(rows).max() < 10


@pytest.mark.parametrize("seed", range(5))
def test_rank_deficient_active_set_has_the_maxvol_property(seed: int) -> None:
    """MTP rows are rank-deficient in practice (fcc Pb, level 6: 48 rows of 22 coefficients,
    rank 19), so the padded branch is the common one: its training rows must grade <= 1 too,
    or training configurations look extrapolative."""
    rng = np.random.default_rng(seed)
    n, r, m = 12, 5, 40
    rows = rng.normal(size=(m, r)) @ rng.normal(size=(r, n))
    act = build_active_set(rows, _owners(m), tol=TOL)
    assert act.grades(rows).max() <= 1 + TOL


def test_empty_training_set_is_all_padding() -> None:
    act = build_active_set(np.zeros((0, 4)), np.zeros((0, 2), dtype=int))
    assert act.size == 4 and (act.owners == -1).all() and act.n_configs == 0
    assert act.grades(np.ones(4))[0] > 1e6


def _base(seed: int = 0, m: int = 60, n: int = 8) -> tuple[ActiveSet, np.random.Generator]:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(m, n))
    return build_active_set(rows, _owners(m)), rng


def test_select_add_ignores_candidates_inside_and_takes_far_ones() -> None:
    act, rng = _base()
    n = act.size
    inside = rng.uniform(-0.4, 0.4, size=(6, n)) @ act.rows  # candidates 0..5
    far = np.array([4.0 * act.rows[1] + 0.1 * act.rows[3], -6.0 * act.rows[5]])
    cand = np.vstack([inside, far])
    owner = np.arange(len(cand))
    before = act.rows.copy()
    sel = select_add(act, cand, owner, threshold=1.001)
    assert sorted(sel.selected) == [6, 7]
    assert sel.selected[0] == 7  # largest grade enters first
    np.testing.assert_allclose(sel.initial_grades[6:], [4.0, 6.0], rtol=1e-9)
    assert sel.initial_grades[:6].max() <= 0.4 + 1e-9
    assert sel.active.grades(cand).max() <= 1.001 + 1e-9
    assert _logdet(sel.active.rows) > _logdet(act.rows)
    # candidate rows are marked as not yet in the training set: (-1, candidate)
    new = sel.active.owners[:, 0] == -1
    assert sorted(sel.active.owners[new, 1]) == [6, 7]
    np.testing.assert_allclose(sel.active.rows @ sel.active.inverse, np.eye(n), atol=1e-8)
    # the input active set is not modified
    np.testing.assert_array_equal(act.rows, before)
    assert act.grades(cand).max() == pytest.approx(6.0)


def _nbh_candidates(rng: np.random.Generator, n: int,
                    configs: int) -> tuple[np.ndarray, np.ndarray]:
    """Random candidate configurations of 4 rows (atoms) each, of scales 0.2 to 3."""
    scale = np.repeat(rng.uniform(0.2, 3.0, configs), 4)[:, None]
    return rng.normal(size=(4 * configs, n)) * scale, np.repeat(np.arange(configs), 4)


def test_select_add_random_candidates_nbh_rows() -> None:
    act, rng = _base(seed=1)
    n = act.size
    cand, owner = _nbh_candidates(rng, n, 10)  # some far outside
    sel = select_add(act, cand, owner, threshold=1.1)
    grades = sel.active.grades(cand)
    assert grades.max() <= 1.1 + 1e-9
    assert _logdet(sel.active.rows) > _logdet(act.rows)
    assert len(sel.selected) == len(set(sel.selected)) > 0
    assert set(sel.selected) <= set(range(10))
    # every configuration owning a row of the final set is selected, and only those
    in_final = {int(o) for k, o in sel.active.owners if k == -1 and o >= 0}
    assert in_final == set(sel.selected)
    # initial grades are per configuration: the max over its rows
    per_row = act.grades(cand)
    np.testing.assert_allclose(sel.initial_grades, per_row.reshape(10, 4).max(axis=1))
    # configurations far outside at the start are among the selected
    assert int(np.argmax(sel.initial_grades)) in sel.selected


def test_select_add_respects_max_swaps() -> None:
    act, _ = _base(seed=2)
    n = act.size
    cand = np.vstack([3.0 * act.rows[i] for i in range(5)])
    owner = np.arange(5)
    one = select_add(act, cand, owner, threshold=1.001, max_swaps=1)
    assert len(one.selected) == 1
    changed = ~np.all(one.active.rows == act.rows, axis=1)
    assert changed.sum() == 1
    assert _logdet(one.active.rows) == pytest.approx(_logdet(act.rows) + np.log(3.0))
    none = select_add(act, cand, owner, threshold=1.001, max_swaps=0)
    assert none.selected == []
    np.testing.assert_array_equal(none.active.rows, act.rows)
    allof = select_add(act, cand, owner, threshold=1.001)
    assert sorted(allof.selected) == [0, 1, 2, 3, 4]
    assert _logdet(allof.active.rows) == pytest.approx(_logdet(act.rows) + 5 * np.log(3.0))
    assert n == allof.active.size


def test_select_add_without_candidates() -> None:
    act, _ = _base()
    sel = select_add(act, np.zeros((0, act.size)), np.zeros(0, dtype=int))
    assert sel.selected == [] and sel.initial_grades.size == 0
    np.testing.assert_array_equal(sel.active.rows, act.rows)


def test_save_load_round_trip(tmp_path: Path) -> None:
    act, _ = _base(seed=4)
    path = tmp_path / "active_set.npz"
    act.save(path)
    back = ActiveSet.load(path)
    np.testing.assert_array_equal(back.rows, act.rows)
    np.testing.assert_array_equal(back.inverse, act.inverse)
    np.testing.assert_array_equal(back.owners, act.owners)
    assert back.owners.dtype.kind == "i"
    probe = np.random.default_rng(0).normal(size=(5, act.size))
    np.testing.assert_array_equal(back.grades(probe), act.grades(probe))
    assert [p.name for p in tmp_path.iterdir()] == ["active_set.npz"]


# ---------------------------------------------------------------- batch-diverse selection


def _identity(n: int = 2) -> ActiveSet:
    return ActiveSet(np.eye(n), np.eye(n), np.column_stack([np.arange(n), -np.ones(n, int)]))


def test_batch_skips_a_near_duplicate_that_select_add_takes() -> None:
    # two 2-atom frames A and B, B a near-copy of A; the active set is the identity, so
    # c = b. select_add swaps A's first row in, then B's second row (2.001 > A's 2.0):
    # both frames labeled. Taking A as a whole (both rows) leaves B inside (1.0005).
    a = [[3.0, 0.0], [0.0, 2.0]]
    b = [[2.99, 0.0], [0.0, 2.001]]
    rows, owner = np.array(a + b), np.array([0, 0, 1, 1])
    assert sorted(select_add(_identity(), rows, owner).selected) == [0, 1]
    sel = select_batch(_identity(), rows, owner, threshold=1.001)
    assert sel.selected == [0]
    np.testing.assert_allclose(sel.at_pick, [3.0])
    np.testing.assert_allclose(sel.initial_grades, [3.0, 2.99])
    assert sel.final_grades[1] == pytest.approx(1.0005)
    np.testing.assert_allclose(sel.active.rows, np.diag([3.0, 2.0]))
    np.testing.assert_allclose(sel.active.rows @ sel.active.inverse, np.eye(2), atol=1e-12)
    assert sorted(map(tuple, sel.active.owners)) == [(-1, 0), (-1, 0)]


def test_batch_takes_highest_grade_first_and_respects_the_cap() -> None:
    rows = np.array([[0.0, 2.0], [3.0, 0.0], [2.9, 0.1], [0.5, 0.5]])
    owner = np.arange(4)
    sel = select_batch(_identity(), rows, owner, threshold=1.001)
    assert sel.selected == [1, 0]  # 2 is a near-copy of 1, 3 is inside
    np.testing.assert_allclose(sel.at_pick, [3.0, 2.0])
    assert sel.over_cap == []
    capped = select_batch(_identity(), rows, owner, threshold=1.001, max_configs=1)
    assert capped.selected == [1] and capped.over_cap == [0]
    # candidates that grade below the threshold from the start are never taken
    high = select_batch(_identity(), rows, owner, threshold=2.5)
    assert high.selected == [1]


@pytest.mark.parametrize("batch", [False, True])
def test_duplicates_never_enter_the_active_set_twice(batch: bool) -> None:
    act, rng = _base(seed=3)
    n = act.size
    one = rng.normal(size=(4, n)) * 3.0  # a 4-atom configuration far outside
    other = rng.normal(size=(4, n)) * 3.0
    rows = np.vstack([one, other, one, one, other])
    owner = np.repeat(np.arange(5), 4)
    sel = (select_batch(act, rows, owner) if batch else select_add(act, rows, owner))
    assert len(sel.selected) == len(set(sel.selected))
    copies = [{0, 2, 3}, {1, 4}]
    for group in copies:
        assert len(group & set(sel.selected)) <= 1
    left = ~np.isin(owner, sel.selected)
    assert sel.active.grades(rows[left]).max() <= 1.001 + 1e-9


def test_batch_random_nbh_candidates_end_inside() -> None:
    act, rng = _base(seed=4)
    n = act.size
    cand, owner = _nbh_candidates(rng, n, 15)
    sel = select_batch(act, cand, owner, threshold=1.1)
    left = [k for k in range(15) if k not in sel.selected]
    # what was not taken lies inside the final set (a taken configuration's own rows may
    # be swapped out again by a later one: it joins the training set whole anyway)
    assert sel.active.grades(cand[np.isin(owner, left)]).max() <= 1.1 + 1e-9
    np.testing.assert_allclose(sel.final_grades[left],
                               sel.active.grades(cand).reshape(15, 4).max(axis=1)[left])
    assert _logdet(sel.active.rows) > _logdet(act.rows)
    assert len(sel.selected) == len(set(sel.selected)) > 0
    assert np.all(sel.at_pick > 1.1)
    assert int(np.argmax(sel.initial_grades)) == sel.selected[0]
