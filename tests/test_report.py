"""`smallcell report` / `make report`: the page, the markdown, every figure, from the
iteration folders of a real (tiny) embedded run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from smallcell import cli
from smallcell.study.report import COLUMNS, diagnose, gamma_vs_error, page, row
from smallcell.study.rundata import IterationData

REPO = Path(__file__).resolve().parents[1]
FIGS = ("gamma_vs_force_error", "gamma_vs_energy_error", "labels_per_iteration",
        "gamma_max_per_iteration", "gamma_mean_std_per_iteration", "gamma_histograms",
        "errors_per_iteration", "loss_history")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    assert cli.main(["--run-dir", str(root), "iter", "--upto", "3", "--config",
                     str(REPO / "examples" / "tiny.yaml")]) == 0
    res = subprocess.run(["make", "-s", "report", f"RUN_DIR={root}"], cwd=REPO,
                         capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr
    return root


def _summaries(root: Path) -> list[dict]:
    return [json.loads((root / "iter" / str(i) / "summary.json").read_text())
            for i in range(4)]


def test_every_figure_and_a_self_contained_page(run: Path) -> None:
    rep = run / "report"
    for name in FIGS:
        assert (rep / f"{name}.png").stat().st_size > 10_000, name
    page = (rep / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGS)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing outside the page
    md = (rep / "report.md").read_text()
    assert all(f"({name}.png)" in md for name in FIGS)


def test_table_numbers_are_the_summaries(run: Path) -> None:
    md = (run / "report" / "report.md").read_text()
    page = (run / "report" / "index.html").read_text()
    c = {name: k for k, name in enumerate(COLUMNS)}
    rows = {int(r[0]): r for r in (
        [x.strip() for x in line.strip("|").split("|")]
        for line in md.splitlines() if re.match(r"\| \d+ \| 1/1 \| 1x1x1", line))}
    assert sorted(rows) == [0, 1, 2, 3]
    for s in _summaries(run):
        r = rows[s["iteration"]]
        assert int(r[c["labeled"]]) == s["n_labeled"] and int(r[c["n_train"]]) == s["n_train"]
        assert int(r[c["preselected"]]) == s["n_preselected"]
        assert int(r[c["broke"]]) == s["n_broke"]
        assert float(r[c["train F meV/Å"]]) == pytest.approx(
            1000 * s["train_errors"]["force_rmse"], abs=0.006)
        if s["gamma_max"] is not None:
            assert float(r[c["gamma max"]]) == pytest.approx(s["gamma_max"], rel=6e-4)
        assert int(r[c["sample n"]]) == s["sample_n"]
        got = [r[c["sample F meV/Å"]], r[c["sample E meV/atom"]], r[c["sample ρ(γ,F)"]]]
        if s["sample_n"]:
            assert float(got[0]) == pytest.approx(1000 * s["sample_force_error_mean"],
                                                  abs=0.006)
            assert float(got[1]) == pytest.approx(
                1000 * s["sample_energy_per_atom_error_mean"], abs=6e-4)
            assert float(got[2]) == pytest.approx(s["sample_gamma_force_spearman"], abs=0.006)
        else:
            assert got == ["-", "-", "-"]
        assert "<td>" + "</td><td>".join(r) + "</td>" in page  # the page shows the same row
    # the cost: every reference calculation, by purpose, counted from the task folders
    sums = _summaries(run)
    train = sum(s["n_labeled"] for s in sums)
    sample = sum(len(list((run / "iter" / str(s["iteration"]) / "sample").glob("[0-9]*")))
                 for s in sums)
    assert sample > 0
    for s in sums:
        assert s["n_reference"] == s["n_labeled"] + s["n_failed"] + s["sample_n"] \
            + s["sample_failed"]
    text = (f"{train + sample} reference calculations in all: {train} training labels "
            f"(0 more failed), {sample} for the error sample")
    assert text in md and text in page
    from smallcell.status import status_lines

    assert any(line.startswith("cost: " + text) for line in status_lines(run))  # make status
    assert "Converged at iteration 3" in md
    # the 23-column table scrolls inside the page instead of being cut off
    assert "<div class='wide'><table>" in page and ".wide{overflow-x:auto" in page


def test_question_one_is_answered_from_the_error_samples(run: Path) -> None:
    """The pooled rank correlation and the per-iteration ones in the answer are those of
    the sample/errors.json rows and the summaries."""
    rows = [r for i in (1, 2, 3) for r in json.loads(
        (run / "iter" / str(i) / "sample" / "errors.json").read_text())["configs"]]
    rho = spearmanr([r["gamma"] for r in rows], [r["force_error"] for r in rows]).statistic
    md = (run / "report" / "report.md").read_text()
    q1 = next(line for line in md.splitlines() if "correlate with the true error" in line)
    assert f"Over {len(rows)} labeled MD configurations" in q1
    assert f"gamma vs force error: Spearman rho {rho:.2f}" in q1
    for s in _summaries(run)[1:]:
        assert (f"{s['iteration']}: {s['sample_gamma_force_spearman']:.2f}, "
                f"{s['sample_gamma_energy_spearman']:.2f}") in q1
    assert "Not measured" not in md


def test_regenerated_from_the_folders_alone(run: Path, tmp_path: Path) -> None:
    before = (run / "report" / "report.md").read_text()
    copy = tmp_path / "copy"
    shutil.copytree(run / "iter", copy / "iter")
    assert cli.main(["--run-dir", str(copy), "report"]) == 0
    assert (copy / "report" / "report.md").read_text() == before


def test_no_run_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["--run-dir", str(tmp_path), "report"]) == 2
    assert "no finished iteration" in capsys.readouterr().err


def _it(i: int, e: float, f: float, converged: bool, warm: bool = True,
        sample: tuple[float, float] | None = None, *, n_train: int = 50,
        test_f: float | None = None, skipped: bool = False, steps: int | None = None,
        sample_f: list[float] | None = None) -> IterationData:
    """An iteration's records: training errors and fit (converged, warm start, carried
    over), the error sample's means (and its configurations' force errors), the held-out
    test set's force RMSE, the MD's graded steps."""
    s = {"iteration": i, "train_errors": {"energy_rmse": e, "force_rmse": f},
         "train_converged": converged, "train_iterations": 100, "n_train": n_train}
    if sample:
        s["sample_energy_per_atom_error_mean"], s["sample_force_error_mean"] = sample
    if test_f is not None:
        s["test_errors"] = {"energy_rmse": e, "force_rmse": test_f}
    if steps is not None:
        s["gamma_count"] = steps
    info = {"warm_start": warm}
    if skipped:
        info["skipped"] = f"no new data: potential carried over from iteration {i - 1}"
    configs = [{"force_error": x} for x in sample_f or []]
    return IterationData(s, train_info=info, sample={"configs": configs} if configs else None)


BENCH = '(BENCHMARKS.md, "The report\'s force-error anomaly")'


def test_rising_force_error_is_flagged_with_its_cause() -> None:
    flags = diagnose([_it(0, 3e-3, 0.030, True), _it(1, 2e-3, 0.040, False),
                      _it(2, 1e-3, 0.050, True, warm=False), _it(3, 9e-4, 0.045, True)])
    assert len(flags) == 2
    assert flags[0].startswith("potential of iteration 1: training-set force error rose "
                               "from 30.0 to 40.0 meV/Å")
    assert "iteration limit (100 iterations)" in flags[0] and "trainer.max_iter" in flags[0]
    assert flags[1].startswith("potential of iteration 2:") and "untrained template" in flags[1]
    assert all(f.endswith(BENCH) for f in flags)
    # the MD sample of iteration i measures potential i-1: its rise is blamed on that fit
    flags = diagnose([_it(0, 3e-3, 0.05, True), _it(1, 2e-3, 0.04, False),
                      _it(2, 1e-3, 0.03, True, sample=(2e-3, 0.030)),
                      _it(3, 9e-4, 0.02, True, sample=(1e-3, 0.045))])
    assert len(flags) == 1
    assert flags[0].startswith("potential of iteration 2: MD-sample force error rose from "
                               "30.0 to 45.0 meV/Å while the energy error fell from 2.00 "
                               "to 1.00 meV/atom")
    assert "converged from a warm start" in flags[0]
    # without a held-out test set the records cannot tell a moved sample from a worse fit
    assert "no held-out test set (initial.test_fraction)" in flags[0]
    # both falling, or both rising: nothing to flag
    assert diagnose([_it(0, 3e-3, 0.05, True), _it(1, 2e-3, 0.04, False)]) == []
    assert diagnose([_it(0, 1e-3, 0.03, True), _it(1, 2e-3, 0.04, False)]) == []


def test_diagnosis_the_training_set_changed() -> None:
    [flag] = diagnose([_it(0, 3e-3, 0.030, True, n_train=8),
                       _it(1, 2e-3, 0.040, True, n_train=120)])
    assert "the training set itself changed (8 -> 120 configurations)" in flag
    [flag] = diagnose([_it(0, 3e-3, 0.030, True, n_train=8),
                       _it(1, 2e-3, 0.040, True, n_train=8)])
    assert "training set itself changed" not in flag


def test_diagnosis_template_fits_at_their_limit_are_the_reports_scatter() -> None:
    """The report's protocol: every fit from the untrained template, stopped at 100."""
    [flag] = diagnose([_it(0, 3e-3, 0.030, False, warm=False),
                       _it(1, 2e-3, 0.040, False, warm=False)])
    assert "refitted from the untrained template and stopped at its iteration limit (100 " \
        "iterations, not converged)" in flag
    assert "typical factor of 1.67" in flag and "cut that factor to 1.03" in flag
    assert "trainer.warm_start: true" in flag and flag.endswith(BENCH)


def _md(i: int, e: float, f: float, **kw) -> IterationData:
    """An iteration whose sample measured potential i-1 at (e, f); its own fit converged
    from a warm start."""
    return _it(i, 1e-3, 0.02, True, sample=(e, f), **kw)


def test_diagnosis_the_potential_did_not_change() -> None:
    """Iteration 2 carried iteration 1's potential over: only the MD sample moved."""
    [flag] = diagnose([_it(0, 3e-3, 0.05, True), _md(1, 3e-3, 0.040),
                       _md(2, 2e-3, 0.030, skipped=True), _md(3, 1e-3, 0.045)])
    assert flag.startswith("potential of iteration 2: MD-sample force error rose")
    assert "the potential did not change (iteration 2 carried over iteration 1's" in flag
    assert "the test set moved, not the potential" in flag
    assert "converged from a warm start" not in flag  # its fit records are iteration 1's


def test_diagnosis_held_out_test_set_did_or_did_not_rise() -> None:
    flags = diagnose([_it(0, 3e-3, 0.05, True, test_f=0.030),
                      _md(1, 2e-3, 0.030, test_f=0.029), _md(2, 1e-3, 0.045)])
    assert len(flags) == 1
    assert "on the held-out test set the force RMSE did not rise (30.0 -> 29.0 meV/Å): " \
        "the MD sample moved" in flags[0]
    assert "no held-out test set" not in flags[0]
    [flag] = diagnose([_it(0, 3e-3, 0.05, True, test_f=0.030),
                       _md(1, 2e-3, 0.030, test_f=0.040), _md(2, 1e-3, 0.045)])
    assert "the held-out test set's force RMSE rose too (30.0 -> 40.0 meV/Å): the " \
        "potential got worse on forces" in flag


def test_diagnosis_sampling_noise_and_md_length() -> None:
    wide = [0.005, 0.055] * 10  # 20 configurations, standard error ~5.7 meV/Å each
    [flag] = diagnose([_it(0, 3e-3, 0.05, True),
                       _md(1, 2e-3, 0.030, sample_f=wide, steps=300),
                       _md(2, 1e-3, 0.033, sample_f=wide, steps=5001)])
    assert "the rise (3.0 meV/Å) is within twice the standard error of the two samples' " \
        "means (16.2 meV/Å)" in flag
    assert "MD of very different lengths (300 and 5001 graded steps)" in flag
    narrow = [0.030, 0.031] * 100
    [flag] = diagnose([_it(0, 3e-3, 0.05, True),
                       _md(1, 2e-3, 0.0305, sample_f=narrow, steps=5001),
                       _md(2, 1e-3, 0.040, sample_f=[x + 0.01 for x in narrow], steps=4000)])
    assert "standard error" not in flag and "different lengths" not in flag


def test_question_one_without_a_sample_says_why() -> None:
    d = _it(1, 1e-3, 0.03, True)
    d.sample_note = "MLIP-3 saved only gamma > gamma_save: set lammps.grade_floor (e.g. 0.1)"
    text = gamma_vs_error([_it(0, 2e-3, 0.04, True), d])
    assert text.startswith("Not measured in this run") and "set lammps.grade_floor" in text
    assert "explorer says" not in gamma_vs_error([_it(0, 2e-3, 0.04, True)])


def test_the_page_escapes_what_the_config_named() -> None:
    """A stage name is the user's text: in the HTML it is text, never markup."""
    evil = "<script>alert(1)</script> & <b>"
    data = [_it(0, 2e-3, 0.04, True), _it(1, 1e-3, 0.03, True)]
    for d in data:
        d.summary.update(stage=0, n_stages=1, stage_name=evil, cell=[1, 1, 1])
    html = page(data, [])
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in html
    assert "<script" not in html and "<b>" not in html


def test_a_pending_study_is_shown_as_pending() -> None:
    """A SLURM run's error sample still labeling: its column says so, not 0."""
    k = COLUMNS.index("sample n")
    base = {"iteration": 1, "sample_n": 0}
    assert row(IterationData({**base, "sample_pending": True}))[k] == "pending"
    assert row(IterationData({**base, "sample_pending": False}))[k] == "0"
    assert row(IterationData({"iteration": 2, "sample_n": 200}))[k] == "200"
