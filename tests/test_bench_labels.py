"""The label-efficiency benchmark's pipeline, end to end on a minutes-long problem
(`bench/label_efficiency.py --quick`): runs, held-out errors, final fits, tables, figures."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_label_efficiency_run(tmp_path: Path) -> None:
    res = subprocess.run([str(REPO / ".venv" / "bin" / "python"),
                          str(REPO / "bench" / "label_efficiency.py"), "--quick",
                          "--policies", "all", "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=900,
                         check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    by = {r["name"]: r for r in results}
    assert {"threshold-s1", "dopt-s1", "dopt_cap4-s1", "dopt_batch-s1",
            "threshold-grade_every_10-s1", "dopt_batch-grade_every_10-s1"} == set(by)
    for r in results:
        its = r["iterations"]
        labels = [it["labels"] for it in its]
        assert labels == sorted(labels) and labels[0] == r["initial_labels"] == 4
        assert r["labels"] == labels[-1]
        # the labels per iteration are what the run's own summaries say
        sums = [json.loads((tmp_path / r["name"] / "iter" / str(i) / "summary.json")
                           .read_text()) for i in range(len(its))]
        assert labels[-1] == sum(s["n_labeled"] for s in sums)
        for it in its:
            assert 0 < it["force_rmse"] < 1000 and 0 < it["energy_rmse"] < 100
        if not r["over"]:
            assert r["final"]["force_rmse"] > 0 and r["final"]["iterations"] >= 1
            # the best refit: independent fits from the delivered potential and fresh
            # templates, the lowest training loss winning
            starts = r["final"]["attempts"]
            assert [a["start"] for a in starts] == ["warm start", "fresh template 1",
                                                    "fresh template 2", "fresh template 3"]
            assert r["final"]["loss"] == min(a["loss"] for a in starts)
            assert len({a["loss"] for a in starts}) == len(starts)  # other starts, other fits
            # the delivered potential (the summary's) is measured beside its best refit
            assert r["delivered"]["potential"].endswith("/train/pot.mtp")
            assert r["delivered"]["force_rmse"] > 0
    # the cap holds in every iteration
    capped = by["dopt_cap4-s1"]["iterations"]
    assert all(b["labels"] - a["labels"] <= 4 for a, b in itertools.pairwise(capped))
    report = (tmp_path / "report.md").read_text()
    assert "| threshold | 0/1 |" in report or "| threshold | 1/1 |" in report
    ratio = by["dopt-s1"]["labels"] / by["threshold-s1"]["labels"]
    assert f"{ratio:.3f}" in report
    for name in ("labels_learning_curves.png", "labels_gamma_and_labels.png"):
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # BENCHMARKS.md is not touched by a quick run
    assert "labels-quick" not in (REPO / "BENCHMARKS.md").read_text()
