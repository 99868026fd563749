"""`smallcell report` / `make report`: the page, the markdown, every figure, from the
iteration folders of a real (tiny) embedded run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smallcell import cli
from smallcell.study.report import diagnose
from smallcell.study.rundata import IterationData

REPO = Path(__file__).resolve().parents[1]
FIGS = ("labels_per_iteration", "gamma_max_per_iteration", "gamma_mean_std_per_iteration",
        "gamma_histograms", "errors_per_iteration", "loss_history")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    assert cli.main(["--run-dir", str(root), "iter", "--upto", "2", "--config",
                     str(REPO / "examples" / "tiny.yaml")]) == 0
    res = subprocess.run(["make", "-s", "report", f"RUN_DIR={root}"], cwd=REPO,
                         capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr
    return root


def _summaries(root: Path) -> list[dict]:
    return [json.loads((root / "iter" / str(i) / "summary.json").read_text())
            for i in range(3)]


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
    rows = {int(r[0]): r for r in (
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.splitlines() if re.match(r"\| \d+ \| 1x1x1", line))}
    assert sorted(rows) == [0, 1, 2]
    for s in _summaries(run):
        r = rows[s["iteration"]]
        assert int(r[6]) == s["n_labeled"] and int(r[8]) == s["n_train"]
        assert int(r[4]) == s["n_preselected"] and int(r[3]) == s["n_broke"]
        assert float(r[13]) == pytest.approx(1000 * s["train_errors"]["force_rmse"], abs=0.006)
        if s["gamma_max"] is not None:
            assert float(r[9]) == pytest.approx(s["gamma_max"], rel=6e-4)
        assert "<td>" + "</td><td>".join(r) + "</td>" in page  # the page shows the same row
    total = sum(s["n_labeled"] for s in _summaries(run))
    assert f"{total} labels in all" in md and f"{total} labels in all" in page
    assert "Converged at iteration 2" in md


def test_regenerated_from_the_folders_alone(run: Path, tmp_path: Path) -> None:
    before = (run / "report" / "report.md").read_text()
    copy = tmp_path / "copy"
    shutil.copytree(run / "iter", copy / "iter")
    assert cli.main(["--run-dir", str(copy), "report"]) == 0
    assert (copy / "report" / "report.md").read_text() == before


def test_no_run_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["--run-dir", str(tmp_path), "report"]) == 2
    assert "no finished iteration" in capsys.readouterr().err


def _it(i: int, e: float, f: float, converged: bool, warm: bool = True) -> IterationData:
    return IterationData({"iteration": i, "train_errors": {"energy_rmse": e, "force_rmse": f},
                          "train_converged": converged, "train_iterations": 100},
                         train_info={"warm_start": warm})


def test_rising_force_error_is_flagged_with_its_cause() -> None:
    flags = diagnose([_it(0, 3e-3, 0.030, True), _it(1, 2e-3, 0.040, False),
                      _it(2, 1e-3, 0.050, True, warm=False), _it(3, 9e-4, 0.045, True)])
    assert len(flags) == 2
    assert flags[0].startswith("iteration 1: force RMSE rose from 30.0 to 40.0 meV/Å")
    assert "iteration limit (100 iterations)" in flags[0]
    assert flags[1].startswith("iteration 2:") and "untrained template" in flags[1]
    # both falling, or both rising: nothing to flag
    assert diagnose([_it(0, 3e-3, 0.05, True), _it(1, 2e-3, 0.04, False)]) == []
    assert diagnose([_it(0, 1e-3, 0.03, True), _it(1, 2e-3, 0.04, False)]) == []
