"""When the loop stops: one or several consecutive converged iterations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from smallcell.loop import finished, stop_reason

REPO = Path(__file__).resolve().parents[1]


def _s(i: int, conv: bool, streak: int | None = None, needed: int | None = None) -> dict:
    s = {"iteration": i, "converged": conv}
    if streak is not None:
        s["converged_streak"] = streak
    if needed is not None:
        s["converged_needed"] = needed
    return s


def test_one_converged_iteration_is_enough_by_default() -> None:
    assert finished(_s(2, True, 1, 1))
    assert stop_reason(_s(2, True, 1, 1), 10) == "converged: no MD run broke"
    assert not finished(_s(2, False, 0, 1))
    assert stop_reason(_s(2, False, 0, 1), 10) is None
    assert stop_reason(_s(10, False, 0, 1), 10) == "reached iteration 10"
    # summaries written before the streak was recorded
    assert finished(_s(2, True)) and not finished(_s(2, False))


def test_two_consecutive_converged_iterations() -> None:
    assert not finished(_s(3, True, 1, 2))
    assert stop_reason(_s(3, True, 1, 2), 10) is None
    assert finished(_s(4, True, 2, 2))
    assert "2 consecutive iterations" in stop_reason(_s(4, True, 2, 2), 10)
    assert not finished(_s(4, False, 0, 2))


@pytest.mark.slow
def test_loop_goes_on_until_two_consecutive_converged_iterations(tmp_path: Path) -> None:
    text = (REPO / "examples" / "tiny.yaml").read_text()
    assert "run: {seed: 7, jobs: 2}" in text
    cfg = tmp_path / "tiny2.yaml"
    cfg.write_text(text.replace("run: {seed: 7, jobs: 2}",
                                "run: {seed: 7, jobs: 2, converged_iterations: 2}"))
    res = subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(tmp_path), "iter",
                          "--upto", "12", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    sums = [json.loads(p.read_text()) for p in
            sorted(tmp_path.glob("iter/*/summary.json"), key=lambda p: int(p.parent.name))]
    streak = 0
    for s in sums[1:]:
        streak = streak + 1 if s["converged"] else 0
        assert s["converged_streak"] == streak and s["converged_needed"] == 2
    assert sums[-1]["converged_streak"] >= 2 and sums[-2]["converged"]
    assert sums[-1]["stage_end"] == "converged" and sums[-1]["n_new"] == 0
    # it did not stop at an earlier lone converged iteration; a pair that added labels
    # is followed by one check of the refit, which ends the run
    assert all(s["converged_streak"] < 2 or s["check_due"] for s in sums[:-1])
    assert sums[-1]["converged_streak"] == 2 or sums[-1]["check"]
    assert "in 2 consecutive iterations" in res.stdout
    # status tells a lone converged iteration from the end of the run
    words = {int(line.split()[0]): line.split()[3] for line in
             res.stdout.splitlines() if line.strip()[:1].isdigit() and "1x1x1" in line}
    assert words[sums[-1]["iteration"]] == "converged"
    assert words[sums[-2]["iteration"]] == ("refit" if sums[-1]["check"] else "conv")
