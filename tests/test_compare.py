"""`smallcell compare` (study/compare.py): the models it trains and keeps, the data each
is trained and measured on, the uncertainty metrics on data whose answer is known, the
report's section; the DeePMD committee where the adapter's extra is installed."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import small_run
from smallcell import cli
from smallcell.config import load_config
from smallcell.errors import SmallcellError
from smallcell.metrics import roc_auc
from smallcell.stages.sweep import _sha256
from smallcell.study import compare, compare_report, report

# every iteration adds one label (the loop breaks or selects each time), so each
# iteration's training set differs from the last: one learning-curve point per iteration
CONFIG = small_run.CONFIG.replace("gamma_break: 3.0", "gamma_break: 1.6").replace(
    "max_selected: 3", "max_selected: 1")


def _run(root: Path, upto: int) -> Path:
    if not root.exists():
        root.mkdir(parents=True)
        (root / "c.yaml").write_text(CONFIG)
    p = small_run.iterate(root, upto)
    assert p.returncode == 0, p.stderr
    return root


def _compare(root: Path, say: list[str] | None = None) -> dict:
    cfg = load_config(root / "c.yaml")
    return compare.run(root, root / "compare", cfg, deepmd=False,
                       say=(say.append if say is not None else lambda _m: None))


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _run(tmp_path_factory.mktemp("compare") / "run", 2)
    _compare(root)
    return root


# ------------------------------------------------------------------ ROC AUC


def _brute_auc(score: list[float], positive: list[bool]) -> float:
    pos = [s for s, p in zip(score, positive, strict=True) if p]
    neg = [s for s, p in zip(score, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize(("score", "positive", "auc"), [
    ([1, 2, 3, 4], [False, False, True, True], 1.0),
    ([4, 3, 2, 1], [False, False, True, True], 0.0),
    ([5, 5, 5, 5], [False, True, False, True], 0.5),
    # one tie between a positive and a negative counts one half: 3.5 of 4 pairs
    ([1, 2, 2, 3], [False, True, False, True], 0.875),
    ([1, 2, 3], [False, False, False], None),
    ([1, 2, 3], [True, True, True], None),
    ([1, float("nan"), 3], [False, True, True], 1.0),
])
def test_roc_auc_known_values(score: list[float], positive: list[bool],
                              auc: float | None) -> None:
    assert roc_auc(score, positive) == auc


def test_roc_auc_matches_counting_pairs_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        score = rng.integers(0, 6, 30).astype(float).tolist()  # many ties
        positive = (rng.random(30) < 0.4).tolist()
        assert roc_auc(score, positive) == pytest.approx(_brute_auc(score, positive))


def test_roc_auc_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        roc_auc([1, 2, 3], [True, False])


# ------------------------------------------------------------------ uncertainty metrics


def _pred(forces: np.ndarray, natoms: list[int], gamma: list[float] | None = None
          ) -> compare.Predictions:
    n = len(natoms)
    return compare.Predictions(np.zeros(n), np.asarray(forces, float).reshape(-1, 3),
                               np.zeros((n, 6)), np.asarray(natoms),
                               np.full(n, np.nan) if gamma is None else np.asarray(gamma))


def test_max_force_deviation_is_dpgen_max_devi_f() -> None:
    # configuration 0 (1 atom): members at 0 and (2, 0, 0): each 1 from the mean, std 1;
    # configuration 1 (2 atoms): atom 0 agrees, atom 1 spreads (0, 0, +-3): max 3
    a = _pred([[0, 0, 0], [1, 1, 1], [0, 0, 3]], [1, 2])
    b = _pred([[2, 0, 0], [1, 1, 1], [0, 0, -3]], [1, 2])
    assert compare.max_force_deviation([a, b]) == pytest.approx([1.0, 3.0])
    mean = compare.committee_mean([a, b])
    assert mean.forces.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]


def test_force_error_per_config_is_the_rms_over_atoms() -> None:
    ref = _pred(np.zeros((3, 3)), [1, 2])
    pred = _pred([[3, 4, 0], [0, 0, 1], [0, 0, 7]], [1, 2])
    assert compare.force_error_per_config(pred, ref) == pytest.approx([5.0, 5.0])
    e = compare.errors(pred, ref)
    assert e["force_rmse"] == pytest.approx(np.sqrt((25 + 1 + 49) / 3))
    assert e["force_mae"] == pytest.approx((5 + 1 + 7) / 3)
    assert e["stress_rmse"] == 0.0


def test_uncertainty_that_orders_the_errors_scores_one() -> None:
    """gamma equal to the MTP's error ranks it perfectly (rho 1, AUC 1); the committee's
    deviation, built to order the committee's error backwards, scores rho -1 and AUC 0;
    and each against the other model's error is what the constructed data make it."""
    rng = np.random.default_rng(0)
    n = 40
    err_mtp = rng.lognormal(0.0, 1.0, n)  # a tail: some errors above twice the median
    err_dp = rng.lognormal(0.0, 1.0, n)
    ref = _pred(np.zeros((n, 3)), [1] * n)
    mtp = _pred(np.column_stack([err_mtp, np.zeros(n), np.zeros(n)]), [1] * n,
                gamma=(2 * err_mtp).tolist())
    # two members at mean +-d along y: mean error err_dp along x, deviation d
    d = 1.0 / err_dp
    members = [_pred(np.column_stack([err_dp, s * d, np.zeros(n)]), [1] * n)
               for s in (1, -1)]
    got = compare.uncertainty(mtp, members, ref)
    p = got["pairs"]
    assert p["gamma|mtp"]["spearman"] == pytest.approx(1.0)
    assert p["gamma|mtp"]["auc"] == 1.0
    assert p["max_devi_f|committee"]["spearman"] == pytest.approx(-1.0)
    assert p["max_devi_f|committee"]["auc"] == 0.0
    flagged = err_mtp > 2 * np.median(err_mtp)
    assert p["gamma|mtp"]["n_flagged"] == int(flagged.sum())
    assert p["max_devi_f|mtp"]["auc"] == pytest.approx(roc_auc(d, flagged))
    assert got["values"]["error_committee"] == pytest.approx(err_dp.tolist())


# ------------------------------------------------------------------ the comparison


def _model(root: Path, name: str) -> dict:
    return json.loads((root / "compare" / "models" / name / "model.json").read_text())


def test_learning_curve_sets_are_the_iterations_collect_sets(compared: Path) -> None:
    for k in range(3):
        train = compared / "iter" / str(k) / "collect" / "train.cfg"
        for family in ("mtp-l04", "mtp-l06"):
            info = _model(compared, f"{family}-k{k}")
            assert Path(info["data"]) == train
            assert info["data_sha256"] == _sha256(train)
            assert info["n_train"] == 6 + k
            assert info["final"] == (k == 2)
    results = json.loads((compared / "compare" / "results.json").read_text())
    curve = results["learning_curves"]["mtp-l04"]
    assert [(p["k"], p["n_train"]) for p in curve] == [(0, 6), (1, 7), (2, 8)]
    assert results["fixed_set"] == "samples"  # the run holds no test set out
    assert results["sets"]["samples"]["n_configs"] == 6  # 3 per explored iteration
    assert set(results["per_iteration"]) == {"1", "2"}
    assert results["uncertainty"]["pairs"]["gamma|mtp"]["n"] == 6
    assert {"mtp-l04", "mtp-l06"} == set(results["models"])
    for name in ("compare.md", *compare_report.FIGURES):
        assert (compared / "compare" / name).is_file(), name


def test_the_pooled_samples_are_the_iterations_error_samples(compared: Path) -> None:
    pooled = (compared / "compare" / "data" / "samples.cfg").read_bytes()
    assert pooled == b"".join((compared / "iter" / str(i) / "sample" / "labeled.cfg")
                              .read_bytes() for i in (1, 2))


def test_same_iteration_set_adds_no_curve_point(tmp_path: Path) -> None:
    """An iteration that labels nothing has its predecessor's training set: the
    comparison fits it once, named by the first iteration that had it."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "c.yaml").write_text(small_run.CONFIG)  # converges at 2, adding nothing there
    assert small_run.iterate(root, 2).returncode == 0
    sets = compare.training_sets(root)
    assert [s.k for s in sets] == [0, 1]


def test_rerun_trains_nothing_and_adds_what_is_missing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    root = _run(tmp_path / "run", 1)
    _compare(root)
    models = root / "compare" / "models"
    before = {p: p.read_bytes() for p in models.rglob("train/*") if p.is_file()}
    assert {p.parent.parent.name for p in before} == {"mtp-l04-k0", "mtp-l06-k0",
                                                      "mtp-l04-k1", "mtp-l06-k1"}

    trained: list[str] = []
    real = compare._train_mtp

    def spy(spec, cfg, train_dir, say):
        trained.append(spec.name)
        return real(spec, cfg, train_dir, say)

    monkeypatch.setattr(compare, "_train_mtp", spy)
    _compare(root)  # nothing missing: nothing trained
    assert trained == []

    _run(root, 2)  # the run goes on: one more training set, one more error sample
    said: list[str] = []
    _compare(root, said)
    assert sorted(trained) == ["mtp-l04-k2", "mtp-l06-k2"]
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was rewritten"
    # the grown error sample is measured again by every model (it is the fixed set)
    assert sum("on samples" in m for m in said) == 6
    results = json.loads((root / "compare" / "results.json").read_text())
    assert results["final_k"] == 2
    assert [p["k"] for p in results["learning_curves"]["mtp-l06"]] == [0, 1, 2]

    # an unfinished model (no done marker) is fitted again, and only it
    (models / "mtp-l04-k1" / "done").unlink()
    trained.clear()
    _compare(root)
    assert trained == ["mtp-l04-k1"]


def test_a_model_fitted_to_other_data_is_refused(compared: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "run"
    shutil.copytree(compared, root)
    info = root / "compare" / "models" / "mtp-l04-k1" / "model.json"
    data = json.loads(info.read_text())
    info.write_text(json.dumps({**data, "data_sha256": "0" * 64}))
    with pytest.raises(SmallcellError, match=r"mtp-l04-k1 was trained on .* remove"):
        _compare(root)


def test_report_has_the_section_only_with_a_comparison(compared: Path, tmp_path: Path
                                                       ) -> None:
    import shutil

    root = tmp_path / "run"
    shutil.copytree(compared, root)
    page = report.build(root)
    md = (page.parent / "report.md").read_text()
    assert "## MTP against DeePMD" in md
    assert "MTP level 4: on the samples set force RMSE" in md
    assert "MTP against DeePMD" in page.read_text()
    shutil.rmtree(root / "compare")
    report.build(root)
    assert "MTP against DeePMD" not in (page.parent / "report.md").read_text()


def test_cli_compare_mtp_only(compared: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--run-dir", str(compared), "compare", "--mtp-only"]) == 0
    assert "compare.md" in capsys.readouterr().out


def test_no_data_to_measure_on_is_refused(tmp_path: Path) -> None:
    root = _run(tmp_path / "run", 0)
    with pytest.raises(SmallcellError, match="nothing to measure the models on"):
        _compare(root)


def test_curve_points_spread_over_the_run() -> None:
    sets = [compare.TrainingSet(k, Path(f"{k}.cfg"), str(k), k) for k in range(12)]
    assert [s.k for s in compare.curve_sets(sets, None)] == list(range(11))
    assert [s.k for s in compare.curve_sets(sets, 4)] == [0, 4, 7]  # and the final, 11
    assert [s.k for s in compare.curve_sets(sets, 3)] == [0, 6]
    assert [s.k for s in compare.curve_sets(sets, 1)] == []
    assert [s.k for s in compare.curve_sets(sets[:3], 4)] == [0, 1]


def test_a_held_out_set_is_the_fixed_set(compared: Path, tmp_path: Path) -> None:
    """With a held-out set (here one from elsewhere, as the label benchmark passes its
    own) the learning curves are measured on it, and the final models on every set."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(compared, root)
    held = root / "iter" / "1" / "sample" / "labeled.cfg"
    results = compare.run(root, root / "compare", load_config(root / "c.yaml"),
                          deepmd=False, say=lambda _m: None, test=held)
    assert results["fixed_set"] == "test"
    assert set(results["models"]["mtp-l04"]["sets"]) == {"test", "samples"}
    assert results["learning_curves"]["mtp-l04"][0]["n_configs"] == 3


# ------------------------------------------------------------------ DeePMD (gated)
# gated as tests/test_deepmd.py gates the adapter's: skip without DeePMD-kit's venv,
# saying why; fail instead under SMALLCELL_REQUIRE_DEEPMD=1 (CI)


def _deepmd_available() -> None:
    import os

    from smallcell.engines.deepmd import DeepmdSettings, programs

    try:
        programs(DeepmdSettings())
    except SmallcellError as exc:
        if os.environ.get("SMALLCELL_REQUIRE_DEEPMD"):
            pytest.fail(f"SMALLCELL_REQUIRE_DEEPMD is set but DeePMD-kit is missing: {exc}")
        pytest.skip(f"DeePMD-kit not installed: {exc} (`make test DEEPMD=1` installs it)")


def test_missing_deepmd_names_the_setup_before_training(compared: Path, tmp_path: Path
                                                       ) -> None:
    import shutil

    root = tmp_path / "run"
    shutil.copytree(compared, root)
    (root / "d.yaml").write_text(CONFIG + f"deepmd: {{venv: {tmp_path / 'none'}}}\n")
    with pytest.raises(SmallcellError, match="make setup EXTRAS=deepmd"):
        compare.run(root, root / "cmp", load_config(root / "d.yaml"), say=lambda _m: None)
    assert not (root / "cmp" / "models").exists()


@pytest.mark.slow
def test_committee_and_both_uncertainties(compared: Path, tmp_path: Path) -> None:
    """A committee of 4 short DeePMD fits beside the MTPs: the committee's mean, DP-GEN's
    max force deviation against both models' errors, a DeePMD learning curve of the
    first member; a rerun trains nothing."""
    import shutil

    _deepmd_available()
    root = tmp_path / "run"
    shutil.copytree(compared, root)
    (root / "d.yaml").write_text(CONFIG + "deepmd: {steps: 100, committee: 4, seed: 7}\n")
    cfg = load_config(root / "d.yaml")
    assert compare.committee_seeds(cfg) == [7, 8, 9, 10]
    said: list[str] = []
    r = compare.run(root, root / "compare", cfg, say=said.append)
    members = [f"deepmd-s{s}" for s in (7, 8, 9, 10)]
    assert set(r["models"]) == {"mtp-l04", "mtp-l06", *members, compare.COMMITTEE}
    assert r["models"][compare.COMMITTEE]["members"] == [f"{m}-k2" for m in members]
    assert set(r["uncertainty"]["pairs"]) == {"gamma|mtp", "gamma|committee",
                                              "max_devi_f|mtp", "max_devi_f|committee"}
    assert all(v > 0 for v in r["uncertainty"]["values"]["max_devi_f"])
    assert [p["k"] for p in r["learning_curves"]["deepmd-s7"]] == [0, 1, 2]
    assert "deepmd-s8" not in r["learning_curves"]
    for m in members:
        assert (root / "compare" / "models" / f"{m}-k2" / "train" / "frozen_model.pb").is_file()
    assert r["models"]["deepmd-s7"]["train_cpu_seconds"] > 0
    said.clear()
    compare.run(root, root / "compare", cfg, say=said.append)
    assert not [m for m in said if m.startswith("[compare] training ")]


def test_large_cell_configurations_are_every_validations_labeled_tasks(tmp_path: Path
                                                                       ) -> None:
    """The final validation's and the per-stage validations' labeled tasks (their own
    samples and the fixed test set), done ones only, in a fixed order."""
    def task(path: Path, done: bool = True) -> Path:
        path.mkdir(parents=True)
        (path / "labeled.cfg").write_text("x")
        if done:
            (path / "done").write_text("{}")
        return path

    want = [task(tmp_path / "validation" / "label" / "0"),
            task(tmp_path / "validation" / "label" / "10"),
            task(tmp_path / "iter" / "2" / "validate" / "label" / "0"),
            task(tmp_path / "iter" / "2" / "validate" / "testset" / "0"),
            task(tmp_path / "iter" / "10" / "validate" / "label" / "1")]
    task(tmp_path / "validation" / "label" / "2", done=False)  # failed or unfinished
    (tmp_path / "validation" / "label" / "9").mkdir()
    assert compare._large_cell_tasks(tmp_path) == want
