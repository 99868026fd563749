"""The error sample beside training (issue 21), without a cluster: Slurm's commands are the
small fakes of test_slurm_units.py, the jobs are run by calling them.

- the select job submits the training labels with the collect+train job after them, and
  the sample's labels in an array of their own with the sample job after it; each array
  sized by the time its tasks took in the iteration before;
- the study may end before or after the summary: either way the summary ends up the one
  the local loop writes, and measuring it again changes nothing;
- a killed sample element is resubmitted by the sample job, a hopeless one stops only the
  study (iter/<i>/sample/stopped), `submit` and `make iter` finish it;
- the expected duration of a label task, from markers, scaled, or first estimates;
- the local runner's side pool, and the local loop with the sample beside training.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import small_run
from smallcell import jobs, loop
from smallcell.config import load_config
from smallcell.sched import slurm
from smallcell.sched.local import LocalRunner
from smallcell.stages import label, sample
from smallcell.stages.common import Iteration
from smallcell.state import RunPaths, is_done, read_json
from smallcell.status import status_lines
from test_slurm_units import _calls, fake_slurm  # noqa: F401 (a fixture)

TIMING = small_run.TIMING


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_run's iterations 0 and 1 by the local loop (one worker): what every order of
    the SLURM jobs must end with. Iteration 1 selects 2 labels and samples 3."""
    root = small_run.new_run(tmp_path_factory.mktemp("ref") / "run")
    res = small_run.iterate(root, 1)
    assert res.returncode == 0, res.stderr
    return root


def _strip(data: Any) -> Any:
    return {k: v for k, v in data.items() if k not in TIMING}


def _summary(root: Path, i: int) -> dict[str, Any]:
    return read_json(root / "iter" / str(i) / "summary.json")


@pytest.fixture()
def selected(reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the reference with iteration 1 taken back to just after its selection:
    no label task, no collect, train, sample errors or summary. No SLURM job id in the
    environment (the jobs are run by hand) and a deadline far away."""
    root = tmp_path / "run"
    shutil.copytree(reference, root)
    it1 = root / "iter" / "1"
    for name in ("vasp", "sample", "collect", "train", "summary.json", "vasp.README"):
        path = it1 / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SMALLCELL_DEADLINE", str(time.time() + 3600))
    return root


def _check(root: Path, stage: str, upto: int = 1) -> int:
    return jobs.run_checker(root, stage, 1, upto, str(root / "c.yaml"))


def _elements(root: Path, rec: dict[str, Any]) -> None:
    """Run every element of an array record, as Slurm would."""
    stage = "explore" if rec["stage"] == "explore" else "label"
    for e in range(rec["elements"]):
        assert jobs.run_element(root, stage, 1, rec["tasks"].removesuffix(".tasks.json"),
                                e) == 0


def _records(root: Path) -> list[dict[str, Any]]:
    return slurm.read_jobs(RunPaths(root), 1)


def test_select_submits_training_first_and_the_sample_beside_it(
        selected: Path, fake_slurm: Path) -> None:  # noqa: F811
    root = selected
    assert _check(root, "select") == 0
    recs = _records(root)
    assert [r["stage"] for r in recs] == ["label", "train", "sample-label", "sample"]
    lab, train, slab, samp = recs
    assert (lab["n_tasks"], slab["n_tasks"]) == (2, 3)  # selected, then the sample
    assert slurm.task_list(RunPaths(root), 1, "label.1") == ([0, 1], 1)
    assert slurm.task_list(RunPaths(root), 1, "sample-label.1") == ([2, 3, 4], 1)
    # training waits for its own labels only; the study for its own
    assert train["after"] == lab["job_id"] and samp["after"] == slab["job_id"]
    assert slab["after"] is None
    calls = _calls(fake_slurm)
    assert f"--dependency=afterany:{lab['job_id']}" in calls[1]
    assert not any(a.startswith("--dependency") for a in calls[2])
    assert "--job-name=smallcell.1.sample-label" in calls[2]
    # the sample's elements run the label command with the label resources; its job the
    # error check with the train resources
    script = (root / "iter/1/slurm/sample-label.1.sbatch").read_text()
    assert "job label --iter 1 --list sample-label.1 --element" in script
    assert "#SBATCH --time=04:00:00" in script
    script = (root / "iter/1/slurm/sample.1.sbatch").read_text()
    assert "job sample --iter 1 --upto 1" in script and "#SBATCH --time=02:00:00" in script
    # sized by the time iteration 0's tasks of the same size took
    assert lab["estimate"].startswith("mean of 6 vasp task(s) of 4 atoms measured in "
                                      "iteration 0")
    assert slab["estimate"] == lab["estimate"]  # no sample in iteration 0: the other kind
    assert 0 < lab["task_seconds"] < 5 and lab["tasks_per_element"] == 2
    text = "\n".join(status_lines(root))
    assert ("Slurm jobs: 4 = label 1 (2 tasks, 2/element, ~") in text
    assert "sample labels 1 (3 tasks, 3/element, ~" in text and "error sample 1" in text


def test_the_stop_rule_on_the_sample_keeps_it_before_training(
        selected: Path, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """stop.rule accuracy on the sample: the study decides the final refit, so its tasks
    are in the label array and the collect+train job measures them first."""
    assert sample.gates_training(load_config(small_run.REPO / "examples" / "tiny.yaml")
                                 ) is False
    monkeypatch.setattr(sample, "gates_training", lambda cfg: True)
    root = selected
    assert _check(root, "select") == 0
    recs = _records(root)
    assert [(r["stage"], r.get("n_tasks")) for r in recs] == [("label", 5), ("train", None)]
    _elements(root, recs[0])
    assert _check(root, "collect-train") == 0
    assert (root / "iter/1/sample/errors.json").exists()
    assert not _summary(root, 1)["sample_pending"]


def test_a_late_study_completes_the_summary(selected: Path, reference: Path,
                                            fake_slurm: Path) -> None:  # noqa: F811
    """collect+train runs before any sample label: its summary says the sample is
    pending; the sample job fills the numbers in, and a second run changes nothing."""
    root = selected
    assert _check(root, "select") == 0
    lab, _train, slab, _samp = _records(root)
    _elements(root, lab)
    assert _check(root, "collect-train") == 0  # the sample's labels have not started
    early = _summary(root, 1)
    assert early["sample_pending"] and early["sample_n"] == 0
    assert early["sample_force_error_mean"] is None and early["stop_force_error"] is None
    want = _strip(_summary(reference, 1))
    assert _strip(early) != want
    text = "\n".join(status_lines(root))
    assert "error sample: 0/3 labeled, errors pending" in text, text
    _elements(root, slab)
    assert _check(root, "sample") == 0
    done = _summary(root, 1)
    assert _strip(done) == want
    assert not done["sample_pending"] and "sample" in done["stage_seconds"]
    assert (root / "iter/1/sample/errors.json").read_bytes() != b""
    before = (root / "iter/1/summary.json").stat()
    assert _check(root, "sample") == 0  # again: nothing to do, nothing rewritten
    after = (root / "iter/1/summary.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "errors pending" not in "\n".join(status_lines(root))


def test_an_early_study_is_in_the_first_summary(selected: Path, reference: Path,
                                                fake_slurm: Path) -> None:  # noqa: F811
    root = selected
    assert _check(root, "select") == 0
    lab, _train, slab, _samp = _records(root)
    _elements(root, slab)
    assert _check(root, "sample") == 0  # measured before there is a summary to complete
    assert (root / "iter/1/sample/errors.json").exists()
    assert not (root / "iter/1/summary.json").exists()
    _elements(root, lab)
    assert _check(root, "collect-train") == 0
    assert _strip(_summary(root, 1)) == _strip(_summary(reference, 1))


def test_killed_sample_elements_are_resubmitted_then_the_study_stops(
        selected: Path, reference: Path, fake_slurm: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    (selected / "c.yaml").write_text(small_run.CONFIG + "slurm: {resubmit: 1}\n")
    root = selected
    assert _check(root, "select") == 0
    lab, _train, _slab, samp = _records(root)
    _elements(root, lab)
    assert _check(root, "collect-train") == 0
    # the sample's only element was killed: nothing labeled; the sample job resubmits
    monkeypatch.setenv("SLURM_JOB_ID", samp["job_id"])
    assert _check(root, "sample") == 0
    again = _records(root)[-2:]
    assert [r["stage"] for r in again] == ["sample-label", "sample"]
    assert again[0]["n_tasks"] == 3 and again[0]["stalls"] == 1
    assert again[1]["after"] == again[0]["job_id"]
    # killed again: resubmit 1 allows one round without progress, not two
    monkeypatch.setenv("SLURM_JOB_ID", again[1]["job_id"])
    assert _check(root, "sample") == 2
    reason = read_json(root / "iter/1/sample/stopped")["reason"]
    assert "3 error-sample label tasks still have no marker" in reason
    assert not (root / "iter/1/stopped").exists()  # the chain itself went on
    text = "\n".join(status_lines(root))
    assert "error sample STOPPED: iteration 1: 3 error-sample label tasks" in text, text
    # `submit` picks the study up again (and has no iteration left to submit)
    n = len(_records(root))
    monkeypatch.delenv("SLURM_JOB_ID")
    (fake_slurm / "squeue.out").write_text("")  # every job of the run is over
    recs = jobs.submit(root, root / "c.yaml", 1)
    assert [r["stage"] for r in recs] == ["sample-label", "sample"]
    assert len(_records(root)) == n + 2 and not (root / "iter/1/sample/stopped").exists()
    _elements(root, recs[0])
    monkeypatch.setenv("SLURM_JOB_ID", recs[1]["job_id"])
    assert _check(root, "sample") == 0
    assert _strip(_summary(root, 1)) == _strip(_summary(reference, 1))


def test_make_iter_finishes_a_study_a_chain_left(selected: Path, reference: Path,
                                                 fake_slurm: Path) -> None:  # noqa: F811
    root = selected
    assert _check(root, "select") == 0
    _elements(root, _records(root)[0])
    assert _check(root, "collect-train") == 0
    assert _summary(root, 1)["sample_pending"]
    cfg = load_config(root / "c.yaml")
    with LocalRunner(1) as runner:
        summaries = loop.run(root, cfg, 1, runner)
    assert _strip(summaries[1]) == _strip(_summary(reference, 1)) == _strip(_summary(root, 1))


# --------------------------------------------------------------------- expected duration


def _mark(folder: Path, seconds: float, atoms: int) -> None:
    data = read_json(folder / "done")
    data.update(seconds=seconds, atoms=atoms)
    (folder / "done").write_text(json.dumps(data))


def test_expected_seconds(reference: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(reference, root)
    it1 = Iteration.open(root, 1)
    sel, smp = [0, 1], [2, 3, 4]
    for d in (root / "iter/0/vasp").iterdir():
        _mark(d, 3.0, 4)
    est = label.expected_seconds(it1, sel)  # its own finished tasks come first
    assert est.seconds < 1.0 and est.source == ("mean of 2 vasp task(s) of 4 atoms measured "
                                                "in this iteration")
    for k in range(5):
        (label.task_dir(it1, k) / "done").unlink()
    est = label.expected_seconds(it1, sel)
    assert (est.seconds, est.source) == (3.0, "mean of 6 vasp task(s) of 4 atoms measured "
                                         "in iteration 0")
    for d in (root / "iter/0/vasp").iterdir():
        _mark(d, 1.0 if int(d.name) % 2 else 3.0, 2)
    est = label.expected_seconds(it1, smp)  # 2-atom tasks of 2 s on average, eam: linear
    assert est.seconds == pytest.approx(4.0) and "measured on 2 atoms" in est.source
    for d in (root / "iter/0/vasp").iterdir():
        (d / "done").write_text(json.dumps({"attempts": 1}))  # before markers had times
    est = label.expected_seconds(it1, sel)
    assert est.seconds == label.FIRST_ESTIMATE["eam"][0] and "first estimate" in est.source
    assert label.expected_seconds(it1, sel, first=10.0).seconds == 10.0
    # a finished task of this iteration: sample tasks measure sample tasks
    (label.task_dir(it1, 3) / "done").write_text(json.dumps({"seconds": 7.0, "atoms": 4}))
    est = label.expected_seconds(it1, [2, 4])
    assert est.seconds == 7.0 and est.source.startswith("mean of 1 sample task(s)")


def test_markers_record_time_and_size(reference: Path) -> None:
    for kind in ("vasp", "sample"):
        for d in (reference / "iter/1" / kind).iterdir():
            if d.name.isdigit():
                m = read_json(d / "done")
                assert m["atoms"] == 4 and 0 < m["seconds"] < 60


# ------------------------------------------------------------------------ local runner


def _square(root: Path, i: int, k: int) -> int:
    time.sleep(0.05 * (k % 2))
    return k * k


def test_local_runner_starts_tasks_beside_the_driver(tmp_path: Path) -> None:
    it = Iteration(RunPaths(tmp_path), 0, None)  # type: ignore[arg-type]
    seen: list[int] = []
    with LocalRunner(3) as runner:
        assert runner.spare == 2
        pending = runner.start(_square, it, [3, 1, 2], "x", lambda k, r: seen.append(k))
        assert pending.wait() == [9, 1, 4]
    assert sorted(seen) == [1, 2, 3]
    with LocalRunner(1) as runner, pytest.raises(ValueError, match="jobs >= 2"):
        runner.start(_square, it, [1], "x")


def test_local_loop_labels_the_sample_beside_training(reference: Path, tmp_path: Path) -> None:
    """Two workers: the sample's labels go to the side pool while the driver trains; the
    run's files are those of the one-worker run."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "c.yaml").write_text(small_run.CONFIG.replace("jobs: 1", "jobs: 2"))
    res = small_run.iterate(root, 1)
    assert res.returncode == 0, res.stderr
    assert "labeling 3 error-sample task(s) beside training" in res.stderr
    for i in (0, 1):
        assert _strip(_summary(root, i)) == _strip(_summary(reference, i))
    for rel in ("iter/1/collect/train.cfg", "iter/1/sample/errors.json"):
        a, b = (root / rel).read_bytes(), (reference / rel).read_bytes()
        assert (json.loads(a) if rel.endswith(".json") else a) == (
            json.loads(b) if rel.endswith(".json") else b)
    assert is_done(root / "iter/1/train")
