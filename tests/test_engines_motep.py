"""The embedded trainer/grader (motep) and the embedded MD explorer, on a small Pb fit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from smallcell.engines.eam_labeler import EAMLabeler
from smallcell.engines.embedded_md import run_md
from smallcell.engines.exploration import HIST_EDGES, MDSettings
from smallcell.engines.maxvol import ActiveSet
from smallcell.engines.motep_mtp import (
    ACTIVE,
    POT,
    SCREEN,
    MotepPotential,
    TrainResult,
    TrainSettings,
    train,
)
from smallcell.formats.cfg import read_cfgs
from smallcell.structures import displace, strain, supercell

SPECIES = ["Pb"]
TOL = 1e-3  # build_active_set's maxvol tolerance


@dataclass
class Fit:
    folder: Path
    images: list[Atoms]
    result: TrainResult
    pot: MotepPotential


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    root = tmp_path_factory.mktemp("motep")
    rng = np.random.default_rng(12)
    base = supercell("fcc", 4.95, (1, 1, 1), "Pb")
    labeler = EAMLabeler()
    images = []
    for k in range(12):
        task = root / "label" / str(k)
        task.mkdir(parents=True)
        atoms = displace(strain(base, 0.03, rng), 0.15, "uniform", rng)
        images.append(labeler.label(task, atoms))
    cwd = Path.cwd()
    result = train(images, SPECIES, root / "train", TrainSettings(level=6, max_iter=50), None)
    assert Path.cwd() == cwd  # the trainer works in its own folder and comes back
    pot = MotepPotential.load(root / "train", SPECIES, "nbh")
    return Fit(root / "train", images, result, pot)


def _fresh(fit: Fit) -> MotepPotential:
    return MotepPotential.load(fit.folder, SPECIES, "nbh")


# ---------------------------------------------------------------- training outputs


def test_train_writes_its_files_and_nothing_else(fit: Fit) -> None:
    names = sorted(os.listdir(fit.folder))
    assert names == sorted([ACTIVE, POT, "train.log"])  # no .work.<pid>, no intermediates
    assert not list(Path.cwd().glob("intermediate_*.mtp"))
    assert fit.result.active_set_size == fit.pot.active.size
    assert 1 <= fit.result.active_set_configs <= len(fit.images)
    assert fit.result.iterations > 0
    assert fit.result.loss_history and np.isfinite(fit.result.loss_history[-1])
    assert fit.result.loss_history[-1] < fit.result.loss_history[0]


def test_pot_mtp_is_legacy_and_round_trips_exactly(fit: Fit, tmp_path: Path) -> None:
    from motep.io.mlip.mtp import read_mtp, write_mtp

    text = (fit.folder / POT).read_text()
    assert "\tmin_dist = " in text and "\tradial_basis_size = " in text  # flat legacy keys
    data = read_mtp(str(fit.folder / POT))
    copy = tmp_path / "again.mtp"
    write_mtp(str(copy), data, legacy=True)
    assert copy.read_text() == text  # the printed precision is a fixed point
    back = read_mtp(str(copy))
    for name in ("moment_coeffs", "species_coeffs", "radial_coeffs"):
        a, b = getattr(data, name), getattr(back, name)
        assert a is not None and np.asarray(a).size > 0
        np.testing.assert_array_equal(a, b)
    assert back.radial_basis.min == data.radial_basis.min  # min_dist follows the data
    assert back.radial_basis.max == data.radial_basis.max == 5.0


def _shortest(images: list[Atoms]) -> float:
    from ase.neighborlist import neighbor_list

    return min(float(neighbor_list("d", a, 5.0).min()) for a in images)


def test_min_dist_follows_the_training_set_as_mlp_train_does(fit: Fit, tmp_path: Path) -> None:
    """mlp train's rule (mtpr_trainer.cpp): min_dist = 0.99 x the training set's shortest
    distance, for a fresh template and for a warm start; min_dist_update false keeps the
    template's trainer.min_dist and a warm start's own value."""
    from motep.io.mlip.mtp import read_mtp

    shortest = _shortest(fit.images)
    assert 2.5 < shortest < 3.5  # displaced fcc Pb, nearest neighbours 3.5 Å
    assert float(read_mtp(str(fit.folder / POT)).radial_basis.min) == \
        pytest.approx(0.99 * shortest, rel=1e-12)
    assert fit.result.extra["min_dist"] == pytest.approx(0.99 * shortest, rel=1e-12)
    assert (fit.folder / "train.log").read_text().startswith(
        f"radial basis: min_dist {0.99 * shortest:.6g} (0.99 x the training set's")
    # a warm start on data with a shorter distance moves it down
    close = fit.images[0].copy()
    close.positions[1] = close.positions[0] + 2.9 * (close.positions[1] - close.positions[0]) \
        / np.linalg.norm(close.positions[1] - close.positions[0])
    (tmp_path / "label").mkdir()
    more = [*fit.images, EAMLabeler().label(tmp_path / "label", close)]
    assert _shortest(more) < shortest
    warm = train(more, SPECIES, tmp_path / "warm", TrainSettings(level=6, max_iter=20),
                 fit.folder / POT)
    assert warm.extra["min_dist"] == pytest.approx(0.99 * _shortest(more), rel=1e-12)
    # off: a fresh template keeps trainer.min_dist, a warm start its file's value
    fresh = train(more, SPECIES, tmp_path / "fixed", TrainSettings(
        level=6, max_iter=20, min_dist=2.2, min_dist_update=False), None)
    assert fresh.extra["min_dist"] == 2.2
    assert "(kept: min_dist_update off)" in (tmp_path / "fixed" / "train.log").read_text()
    kept = train(more, SPECIES, tmp_path / "kept", TrainSettings(
        level=6, max_iter=20, min_dist=2.2, min_dist_update=False), fit.folder / POT)
    assert kept.extra["min_dist"] == pytest.approx(0.99 * shortest, rel=1e-12)


def test_active_set_file(fit: Fit) -> None:
    act = ActiveSet.load(fit.folder / ACTIVE)
    n = act.size
    assert act.rows.shape == act.inverse.shape == (n, n)
    assert n == fit.pot.rows(fit.images[0].copy()).shape[1]  # one column per coefficient
    np.testing.assert_allclose(act.rows @ act.inverse, np.eye(n), atol=1e-6)


def test_errors_are_finite_and_small(fit: Fit) -> None:
    e = fit.result.errors
    assert e["n_configs"] == len(fit.images)
    assert all(np.isfinite(v) for v in e.values())
    forces = np.concatenate([a.get_forces().ravel() for a in fit.images])
    assert e["force_rmse"] < 0.5 * forces.std()
    assert e["energy_rmse"] < 0.01  # eV/atom
    assert e["force_mae"] <= e["force_rmse"] <= e["force_max"]
    # the reported error is what the potential gives
    a = fit.images[3].copy()
    _, f, _ = fit.pot.evaluate(a)
    assert np.abs(f - fit.images[3].get_forces()).max() <= e["force_max"] + 1e-12


def test_fit_stops_on_its_tolerance_and_reports_it(fit: Fit, tmp_path: Path) -> None:
    # a loose tolerance: the fit ends at the first window that gains less than 90%
    loose = train(fit.images, SPECIES, tmp_path / "loose",
                  TrainSettings(level=6, max_iter=400, tolerance=0.9), None)
    assert loose.converged and loose.iterations % 50 == 0 and loose.iterations < 400
    assert loose.message.startswith("converged")
    windows = [line for line in (tmp_path / "loose" / "train.log").read_text().splitlines()
               if line.startswith("window: ")]
    assert len(windows) == loose.iterations // 50
    gains = [float(w.split("(")[1].split("%")[0]) for w in windows]
    assert gains[-1] < 90 and all(g >= 90 for g in gains[:-1])
    # an impossible one: max_iter ends the fit, which is then not converged
    tight = train(fit.images, SPECIES, tmp_path / "tight",
                  TrainSettings(level=6, max_iter=60, tolerance=1e-12), None)
    assert not tight.converged and 50 < tight.iterations <= 60
    assert "max_iter 60" in tight.message
    # the loss history is in the loss's own units, the BFGS part continuing the LLS one
    h = tight.loss_history
    assert len(h) > 50 and h[-1] <= h[2] and h[-1] < 1.0


def test_fit_goes_on_where_raw_lbfgs_stopped(fit: Fit, tmp_path: Path) -> None:
    """The raw loss of a good fit is ~1e-5, below scipy's absolute thresholds: without the
    normalization L-BFGS stopped after a few iterations (2 in the measurement). With it,
    a warm start on the same data keeps improving."""
    more = train(fit.images, SPECIES, tmp_path / "more",
                 TrainSettings(level=6, max_iter=100, tolerance=1e-9), fit.folder / POT)
    assert more.iterations > 50
    assert more.loss_history[-1] < 0.99 * more.loss_history[1]  # still falling


def test_restarts_keep_the_lowest_loss(fit: Fit, tmp_path: Path) -> None:
    res = train(fit.images, SPECIES, tmp_path / "r",
                TrainSettings(level=6, max_iter=60, tolerance=0.05, restarts=2, seed=3),
                fit.folder / POT)
    tries = res.extra["attempts"]
    assert [t["start"] for t in tries] == ["warm start", "fresh template, seed 4",
                                           "fresh template, seed 5"]
    losses = [t["loss"] for t in tries]
    assert len(set(losses)) == 3  # different starts end in different places
    assert "best of 3 fits" in res.message
    log = (tmp_path / "r" / "train.log").read_text()
    assert log.count("# attempt ") == 3 and log.count("(kept)") == 1
    kept = tries[int(log.split("(kept)")[0].rsplit("# attempt ", 1)[1].split(":")[0])]
    assert kept["loss"] == min(losses)
    # the written potential is the kept one: its loss history ends at the kept loss
    assert res.loss_history[-1] == pytest.approx(min(losses), rel=1e-6)


def test_restarts_screen_then_continue_the_best(fit: Fit, tmp_path: Path) -> None:
    """With max_iter above the screening length, every start fits SCREEN iterations and
    only the lowest loss goes on: the result is that attempt continued, not a new one."""
    res = train(fit.images, SPECIES, tmp_path / "c",
                TrainSettings(level=6, max_iter=SCREEN + 60, tolerance=1e-12, restarts=1,
                              seed=3), fit.folder / POT)
    assert res.extra["screen_iterations"] == SCREEN and res.extra["continued"] is True
    losses = [t["loss"] for t in res.extra["attempts"]]
    assert res.loss_history[-1] < min(losses)  # the continuation lowered the best loss
    assert SCREEN < res.iterations <= SCREEN + 60  # screening plus continuation, once
    log = (tmp_path / "c" / "train.log").read_text()
    assert log.count("# continued") == 1 and log.count("(kept)") == 1
    assert res.message.startswith("stopped at max_iter") and "continued" in res.message


# ---------------------------------------------------------------- grades


def test_training_configurations_interpolate(fit: Fit) -> None:
    pot = _fresh(fit)
    grades = [pot.grade(a.copy())[0] for a in fit.images]
    assert max(grades) <= 1 + TOL
    assert max(grades) > 0.99  # the active set's own configurations sit on the boundary


def test_distorted_configuration_extrapolates(fit: Fit) -> None:
    pot = _fresh(fit)
    base = supercell("fcc", 4.95, (1, 1, 1), "Pb")
    squeezed = base.copy()
    squeezed.set_cell(base.cell.array * 0.85, scale_atoms=True)
    squeezed = displace(squeezed, 0.4, "uniform", np.random.default_rng(0))
    gamma, nbh = pot.grade(squeezed)
    assert gamma > 10
    assert nbh is not None and nbh.shape == (4,)
    assert nbh.max() == pytest.approx(gamma)


def test_rows_are_not_cached_between_configurations(fit: Fit) -> None:
    pot = _fresh(fit)
    a, b = fit.images[0].copy(), fit.images[5].copy()
    ra = pot.rows(a)
    rb = pot.rows(b)
    assert ra.shape == rb.shape == (4, pot.active.size)
    assert not np.allclose(ra, rb)
    # a's rows again after b: the same as the first time, and as a fresh potential gives
    np.testing.assert_allclose(pot.rows(a.copy()), ra, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_fresh(fit).rows(b.copy()), rb, rtol=1e-10, atol=1e-12)
    # moving atoms of the same Atoms object changes its rows
    moved = a.copy()
    moved.positions[0] += [0.2, -0.1, 0.05]
    assert not np.allclose(pot.rows(moved), ra)
    # rows of a 2x cell are those of the 4-atom cell, repeated
    big = fit.images[0].repeat((2, 1, 1))
    np.testing.assert_allclose(pot.rows(big), np.vstack([ra, ra]), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["cfg", "nbh"])
@pytest.mark.parametrize("batch", [False, True])
def test_dopt_takes_one_of_duplicate_candidates(fit: Fit, tmp_path: Path, mode: str,
                                                batch: bool) -> None:
    """In both active-set modes and with both D-optimal selectors, copies of one
    configuration never enter the active set twice."""
    folder = tmp_path / mode
    train(fit.images, SPECIES, folder, TrainSettings(level=6, max_iter=50, al_mode=mode),
          fit.folder / POT)
    pot = MotepPotential.load(folder, SPECIES, mode)
    rng = np.random.default_rng(5)
    far = displace(fit.images[0].copy(), 0.45, "uniform", rng)
    far.calc = None
    inside = fit.images[1].copy()
    assert pot.grade(far.copy())[0] > 1.5 and pot.grade(inside.copy())[0] <= 1.0 + TOL
    sel = pot.select([inside, far.copy(), far.copy(), far.copy()], batch=batch)
    assert len(set(sel.selected) & {1, 2, 3}) == 1
    if mode == "cfg":  # one row per configuration: what is inside stays out
        assert 0 not in sel.selected


def test_cells_of_different_sizes_mix(fit: Fit, tmp_path: Path) -> None:
    """Training sets mix cell sizes (imported data, the next stage's larger cell): the
    potential must evaluate and grade a 4-atom and an 8-atom cell one after the other."""
    pot = _fresh(fit)
    small = fit.images[4].copy()
    e4, f4, _ = pot.evaluate(small)
    big = fit.images[4].repeat((1, 2, 1))
    e8, f8, _ = pot.evaluate(big)
    assert e8 == pytest.approx(2 * e4, rel=1e-10)
    np.testing.assert_allclose(f8, np.vstack([f4, f4]), atol=1e-9)
    assert pot.evaluate(fit.images[4].copy())[0] == pytest.approx(e4, rel=1e-12)
    assert pot.grade(big)[0] == pytest.approx(pot.grade(fit.images[4].copy())[0], rel=1e-8)
    # and a fit on such a set works (tiny and short: only the plumbing is tested)
    images = [*fit.images[:3], *(a.repeat((2, 1, 1)) for a in fit.images[3:5])]
    for a, ref in zip(images[3:], fit.images[3:5], strict=True):
        a.calc = SinglePointCalculator(a, energy=2 * ref.get_potential_energy(),
                                       forces=np.vstack([ref.get_forces()] * 2),
                                       stress=ref.get_stress())
    res = train(images, SPECIES, tmp_path / "mixed",
                TrainSettings(level=4, radial_basis_size=4, max_iter=5), None)
    assert np.isfinite(res.errors["force_rmse"])


def test_cfg_mode_rows(fit: Fit) -> None:
    pot = MotepPotential.load(fit.folder, SPECIES, "cfg")
    a = fit.images[2].copy()
    row = pot.rows(a)
    assert row.shape == (1, pot.active.size)
    nbh = _fresh(fit).rows(fit.images[2].copy())
    np.testing.assert_allclose(row[0], nbh.sum(axis=0), rtol=1e-8, atol=1e-10)
    assert pot.grade(a)[1] is None


def test_forces_are_minus_the_energy_gradient(fit: Fit) -> None:
    pot = _fresh(fit)
    atoms = fit.images[7].copy()
    _, forces, _ = pot.evaluate(atoms)
    h = 1e-4
    for i, k in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(pot.evaluate(plus)[0] - pot.evaluate(minus)[0]) / (2 * h)
        assert fd == pytest.approx(forces[i, k], abs=1e-5, rel=1e-4)
    assert np.abs(forces.sum(axis=0)).max() < 1e-8


# ---------------------------------------------------------------- embedded MD


def _settings(**kw: object) -> MDSettings:
    base = {"temperature": 300.0, "pressure": 1.0, "seed": 3, "steps": 12, "timestep": 2.0,
            "ensemble": "nvt", "thermostat_tau": 100.0, "barostat_tau": 1000.0,
            "grade_every": 1, "gamma_save": 2.1, "gamma_break": 10.0, "log_every": 5}
    base.update(kw)
    return MDSettings(**base)  # type: ignore[arg-type]


def _start() -> Atoms:
    return displace(supercell("fcc", 4.95, (1, 1, 1), "Pb"), 0.05, "uniform",
                    np.random.default_rng(5))


def test_md_breaks_at_once_with_a_tiny_gamma_break(fit: Fit, tmp_path: Path) -> None:
    res = run_md(_start(), fit.pot, SPECIES, _settings(gamma_save=1e-6, gamma_break=2e-6),
                 tmp_path)
    assert res["broke"] is True
    assert res["break_step"] == 0 and res["steps_done"] == 0
    assert "gamma_break" in str(res["break_reason"])
    assert res["count"] == 1 and res["n_preselected"] == 1
    cfgs = read_cfgs(tmp_path / "preselected.cfg")
    assert len(cfgs) == 1
    c = cfgs[0]
    assert c.mv_grade is not None and c.mv_grade > 2e-6
    assert c.mv_grade == pytest.approx(res["max"], rel=1e-5)
    assert c.energy is None and c.forces is None and c.plus_stress is None
    nbh = c.atom_data["nbh_grades"]
    assert nbh.shape == (4,)
    assert nbh.max() == pytest.approx(c.mv_grade, abs=1e-5)
    assert (tmp_path / "md.log").read_text().startswith("#")


def test_md_with_a_huge_gamma_break_runs_every_step(fit: Fit, tmp_path: Path) -> None:
    res = run_md(_start(), fit.pot, SPECIES,
                 _settings(gamma_save=1e5, gamma_break=1e6, steps=12, grade_every=3), tmp_path)
    assert res["broke"] is False and res["break_step"] is None
    assert res["steps_done"] == 12
    assert res["count"] == 5  # steps 0, 3, 6, 9, 12
    assert res["n_preselected"] == 0
    assert (tmp_path / "preselected.cfg").read_text() == ""
    assert sum(res["hist"]) == res["count"]
    assert len(res["hist"]) == len(HIST_EDGES) + 1


@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_md_saves_every_graded_step_above_gamma_save(fit: Fit, tmp_path: Path,
                                                     ensemble: str) -> None:
    res = run_md(_start(), fit.pot, SPECIES,
                 _settings(gamma_save=1e-6, gamma_break=1e6, steps=10, grade_every=2,
                           ensemble=ensemble), tmp_path)
    assert res["steps_done"] == 10 and not res["broke"]
    assert res["count"] == 6 == res["n_preselected"]
    cfgs = read_cfgs(tmp_path / "preselected.cfg")
    assert len(cfgs) == 6
    grades = np.array([c.mv_grade for c in cfgs])
    assert (grades > 1e-6).all()
    for c in cfgs:
        assert c.energy is None and c.forces is None
        assert "nbh_grades" in c.atom_data
    # gamma.json statistics are those of the graded steps
    assert sum(res["hist"]) == res["count"]
    assert res["max"] == pytest.approx(grades.max(), rel=1e-5)
    assert res["mean"] == pytest.approx(grades.mean(), rel=1e-5)
    assert res["std"] == pytest.approx(grades.std(), rel=1e-3, abs=1e-6)
    assert res["sum"] == pytest.approx(res["mean"] * res["count"])
    expected_hist = np.bincount(np.searchsorted(HIST_EDGES, np.log10(grades), side="right"),
                                minlength=len(HIST_EDGES) + 1)
    assert res["hist"] == expected_hist.tolist()
    # positions move during the run
    assert not np.allclose(cfgs[0].positions, cfgs[-1].positions)


def test_md_keeps_a_uniform_sample_of_all_queries(fit: Fit, tmp_path: Path) -> None:
    """Every graded step is a query; those inside the sample's gamma bounds are eligible,
    and the sample holds min(size, eligible) of them with their grades, beside (not
    instead of) preselected.cfg."""
    for name in "abc":
        (tmp_path / name).mkdir()
    every = run_md(_start(), fit.pot, SPECIES,
                   _settings(gamma_save=1e-6, gamma_break=1e6, steps=10, sample_size=50,
                             sample_gamma_min=0.0, sample_gamma_max=1e6), tmp_path / "a")
    assert every["n_sample_eligible"] == every["count"] == 11 == every["n_sampled"]
    kept = read_cfgs(tmp_path / "a" / "queried.cfg")
    pre = read_cfgs(tmp_path / "a" / "preselected.cfg")
    assert [c.mv_grade for c in kept] == [c.mv_grade for c in pre]  # all, in order
    assert all(c.energy is None and "nbh_grades" in c.atom_data for c in kept)
    grades = sorted(c.mv_grade for c in pre)
    # bounds between grades (the files round them to 6 decimals): 5 queries inside
    lo, hi = (grades[2] + grades[3]) / 2, (grades[7] + grades[8]) / 2
    few = run_md(_start(), fit.pot, SPECIES,
                 _settings(gamma_save=1e-6, gamma_break=1e6, steps=10, sample_size=4,
                           sample_gamma_min=lo, sample_gamma_max=hi), tmp_path / "b")
    assert few["n_sample_eligible"] == 5 and few["n_sampled"] == 4
    got = [c.mv_grade for c in read_cfgs(tmp_path / "b" / "queried.cfg")]
    assert len(got) == 4 and all(lo < g < hi for g in got)
    off = run_md(_start(), fit.pot, SPECIES, _settings(), tmp_path / "c")
    assert off["n_sample_eligible"] is None and not (tmp_path / "c" / "queried.cfg").exists()


def test_one_explorer_runs_one_potential_on_cells_of_different_sizes(fit: Fit,
                                                                      tmp_path: Path) -> None:
    """A worker's explorer keeps the potential it loaded; the same potential then runs a
    larger cell (a per-stage validation on 3x3x3) and a smaller one (the next stage's MD):
    both must work (the cached calculator once failed with "Wrong number of cutoff
    radii: 108 != 8")."""
    from smallcell.engines.embedded_md import EmbeddedExplorer
    from smallcell.engines.motep_mtp import MotepTrainer

    explorer = EmbeddedExplorer(MotepTrainer(), "nbh")
    for n, cell in ((108, (3, 3, 3)), (8, (1, 1, 2)), (4, (1, 1, 1))):
        atoms = displace(supercell("fcc", 4.95, cell, "Pb"), 0.05, "uniform",
                         np.random.default_rng(n))
        (tmp_path / str(n)).mkdir()
        res = explorer.run(tmp_path / str(n), atoms, SPECIES,
                           _settings(steps=2, gamma_break=1e6, ensemble="npt"), fit.folder)
        assert res["steps_done"] == 2, n
