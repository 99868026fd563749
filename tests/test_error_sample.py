"""The error study's sample: labeled in iter/<i>/sample/, never trained on, and the true
errors of the potential that explored (iteration i-1's) per configuration, in
sample/errors.json and summary.json."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from smallcell import cli
from smallcell.engines.motep_mtp import MotepPotential, config_errors_of, errors_of
from smallcell.formats.cfg import cfg_to_atoms, read_cfgs
from smallcell.metrics import correlations
from smallcell.stages import label, sample
from smallcell.stages.common import Iteration
from smallcell.state import is_done, mark_failed, read_json
from smallcell.status import status_lines

CONFIG = """\
species: [Pb]
structure: {lattice: fcc, a: 4.95, cell: [1, 1, 1], displacement: 0.1}
grid: {temperatures: [300.0, 600.0], pressures: [1.0], seeds_per_point: 1}
md: {steps: 60, timestep: 2.0}
extrapolation: {gamma_save: 1.5, gamma_break: 3.0}
initial: {n_configs: 8}
trainer: {level: 4, max_iter: 60, radial_basis_size: 4}
select: {max_selected: 4}
sample: {size: 25}
run: {seed: 3, jobs: 2}
"""


def _iter(root: Path, upto: int) -> None:
    assert cli.main(["--run-dir", str(root), "iter", "--upto", str(upto), "--config",
                     str(root / "c.yaml")]) == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample_run")
    (root / "c.yaml").write_text(CONFIG, encoding="utf-8")
    _iter(root, 2)
    return root


def _summary(root: Path, i: int) -> dict:
    return json.loads((root / "iter" / str(i) / "summary.json").read_text())


def _explored(root: Path) -> list[int]:
    return [i for i in (1, 2) if (root / "iter" / str(i) / "sample").is_dir()]


def test_the_run_samples_two_iterations(run: Path) -> None:
    """The fixture this file relies on: iterations 1 and 2 both drew a sample (2 after
    converging: the potential that made it converge is measured too)."""
    assert _explored(run) == [1, 2] and _summary(run, 2)["converged"]


def test_sample_is_labeled_beside_the_selection_but_never_trained(run: Path) -> None:
    assert _explored(run), "no iteration drew an error sample"
    assert not (run / "iter" / "0" / "sample").exists()  # iteration 0 ran no MD
    for i in _explored(run):
        it = Iteration.open(run, i)
        n_sel, n_smp = label.n_selected(it), label.n_sample(it)
        assert n_smp == 25 and label.n_tasks(it) == n_sel + n_smp
        assert sorted(int(p.name) for p in (it.dir / "sample").iterdir()
                      if p.name.isdigit()) == list(range(n_smp))
        assert all(is_done(label.sample_dir(it, j)) for j in range(n_smp))
        assert label.task_dir(it, n_sel) == label.sample_dir(it, 0)
        s = _summary(run, i)
        assert s["n_selected"] == n_sel and s["sample_n"] == n_smp
        # only the selected labels joined the training set
        assert s["n_new"] == s["n_labeled"] == n_sel
        origins = [c.feature("origin") for c in read_cfgs(it.stage("collect") / "train.cfg")]
        assert not [o for o in origins if o and "queried.cfg" in o]
        drawn = [c.feature("origin") for c in read_cfgs(it.stage("select") / "sample.cfg")]
        assert all("queried.cfg" in o for o in drawn) and len(drawn) == n_smp


def test_errors_are_those_of_the_potential_that_explored(run: Path) -> None:
    """Recomputed by hand from the task folders with iteration i-1's potential, whose
    grade of each configuration is also the gamma the MD recorded."""
    for i in _explored(run):
        it = Iteration.open(run, i)
        res = read_json(it.stage("sample") / "errors.json")
        assert res["potential"] == f"iter/{i - 1}/train" and res["n_labeled"] == 25
        pot = MotepPotential.load(run / "iter" / str(i - 1) / "train", ["Pb"], "nbh")
        for row in res["configs"]:
            folder = label.sample_dir(it, row["task"])
            [inp] = read_cfgs(folder / "input.cfg")
            [lab] = read_cfgs(folder / "labeled.cfg")
            ref = cfg_to_atoms(lab, ["Pb"])
            e, f, _ = pot.evaluate(ref.copy())
            df = np.linalg.norm(f - ref.get_forces(), axis=1)
            assert row["gamma"] == inp.mv_grade
            assert row["gamma"] == pytest.approx(pot.grade(ref.copy())[0], rel=1e-4)
            assert row["force_error"] == pytest.approx(np.sqrt(np.mean(df**2)), rel=1e-9)
            assert row["force_max_error"] == pytest.approx(df.max(), rel=1e-9)
            de = abs(e - ref.get_potential_energy())
            assert row["energy_error"] == pytest.approx(de, rel=1e-9, abs=1e-12)
            assert row["energy_per_atom_error"] == pytest.approx(de / len(ref), abs=1e-12)
            assert row["atoms"] == len(ref) == 4


def test_summary_holds_the_means_and_correlations(run: Path) -> None:
    for i in _explored(run):
        rows = read_json(run / "iter" / str(i) / "sample" / "errors.json")["configs"]
        s = _summary(run, i)
        g = [r["gamma"] for r in rows]
        f = [r["force_error"] for r in rows]
        epa = [r["energy_per_atom_error"] for r in rows]
        assert s["sample_force_error_mean"] == pytest.approx(np.mean(f))
        assert s["sample_energy_per_atom_error_mean"] == pytest.approx(np.mean(epa))
        assert s["sample_energy_error_mean"] == pytest.approx(
            np.mean([r["energy_error"] for r in rows]))
        assert s["sample_gamma_force_spearman"] == pytest.approx(spearmanr(g, f).statistic)
        assert s["sample_gamma_energy_spearman"] == pytest.approx(
            spearmanr(g, epa).statistic)
    assert _summary(run, 0)["sample_n"] == 0
    assert _summary(run, 0)["sample_force_error_mean"] is None


def test_rerun_keeps_the_errors(run: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(run, root)
    i = _explored(root)[-1]
    it = Iteration.open(root, i)
    path = sample.errors_path(it)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert not sample.pending(it)
    # the summary gone (killed before the end): the loop finishes without recomputing
    (root / "iter" / str(i) / "summary.json").unlink()
    _iter(root, 2)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_failed_sample_tasks_never_block_the_iteration(run: Path, tmp_path: Path) -> None:
    """label.min_success_ratio counts the selected tasks only: with every sample task
    failed the iteration trains as before and the sample says none was labeled."""
    root = tmp_path / "copy"
    shutil.copytree(run, root)
    i = _explored(root)[-1]
    d = root / "iter" / str(i)
    for name in ("collect", "train", "sample/errors.json", "sample/labeled.cfg",
                 "summary.json"):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for task in (d / "sample").iterdir():
        if task.name.isdigit():
            os.remove(task / "done")
            mark_failed(task, "VASP died (test)")
    _iter(root, 2)
    s = _summary(root, i)
    assert s["sample_n"] == 0 and s["sample_failed"] == 25
    assert s["sample_force_error_mean"] is None and s["n_labeled"] == s["n_selected"]
    assert (d / "train" / "done").exists()


def test_status_counts_the_sample_tasks(run: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(run, root)
    d = root / "iter" / "2"
    for name in ("collect", "train", "sample/errors.json", "summary.json"):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for j in range(10):
        os.remove(d / "sample" / str(j) / "done")
    [line] = [x for x in status_lines(root) if x.split()[:1] == ["2"]]
    assert "label" in line and "error sample 15/25" in line and "(stopped)" in line


def test_config_errors_agree_with_the_aggregate_errors(run: Path) -> None:
    """Per-configuration errors aggregate to errors_of's numbers (RMSE over atoms, MAE
    of energy per atom): the two views of one potential's errors cannot drift apart."""
    pot = MotepPotential.load(run / "iter" / "0" / "train", ["Pb"], "nbh")
    images = [cfg_to_atoms(c, ["Pb"]) for c in read_cfgs(run / "iter" / "1" / "collect"
                                                          / "train.cfg")]
    rows = config_errors_of(pot, images)
    agg = errors_of(pot, images)
    n = np.array([r["atoms"] for r in rows])
    rms = np.array([r["force_rms"] for r in rows])
    assert math.isclose(np.sqrt(np.sum(n * rms**2) / n.sum()), agg["force_rmse"], rel_tol=1e-9)
    epa = [r["energy_per_atom_diff"] for r in rows]
    assert math.isclose(np.mean(epa), agg["energy_mae"], rel_tol=1e-9)
    assert math.isclose(max(r["force_max"] for r in rows), agg["force_max"], rel_tol=1e-9)
    assert all(r["energy_per_atom_diff"] == pytest.approx(abs(r["energy_diff"]) / 4)
               for r in rows)


@pytest.mark.parametrize(("g", "e", "rho", "r"), [
    ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], 1.0, 1.0),       # proportional: both 1
    ([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1], -1.0, None),     # reversed ranks
    ([1, 2, 3, 4], [0.1, 0.2, 0.3, 9.0], 1.0, None),      # monotone, not log-linear
    ([1, 2], [0.1, 0.2], None, None),                     # too few pairs
    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], None, None),     # gamma constant
    ([1, 2, 3, 0, -1], [0.1, 0.2, 0.3, 0.4, 0.5], 1.0, 1.0),  # non-positive pairs dropped
])
def test_correlations(g: list[float], e: list[float], rho: float | None,
                      r: float | None) -> None:
    c = correlations(g, e)
    if rho is None:
        assert c["spearman"] is None
    else:
        assert c["spearman"] == pytest.approx(rho)
    if r is not None:
        assert c["pearson_log"] == pytest.approx(r)
    assert c["n"] == sum(1 for a, b in zip(g, e, strict=True) if a > 0 and b > 0)
