"""`smallcell retry --iter I` (`make retry I=...`): an iteration's failed tasks are re-queued
(their failed attempt moved to `attempts/<n>/`, the markers that recorded the failure
cleared) and run again, locally or on SLURM, without touching the tasks that succeeded.

Failures are injected the way a broken labeler would fail a task: the local tests patch the
embedded labeler in-process (one worker, so tasks run in this process) to raise a
LabelError for one task folder; the SLURM variant rejects one label by label.max_force and
then raises it in the iteration's frozen config, as a person fixing the cause would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from small_run import CONFIG
from smallcell import cli
from smallcell.engines.base import LabelError
from smallcell.engines.eam_labeler import EAMLabeler
from smallcell.state import RunLock, RunPaths

# every label must succeed: one failed task stops iteration 0 at collect
RETRY_CONFIG = CONFIG + "label: {min_success_ratio: 1.0, retries: 0}\n"
BROKEN = 1  # the label task that fails


def smallcell(root: Path, *args: str) -> int:
    return cli.main(["--run-dir", str(root), *args])


@pytest.fixture()
def failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[Path]]:
    """Iteration 0 of a small run whose label task 1 failed (the iteration stopped at
    collect); returns the run and the list of task folders the labeler is called on."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "c.yaml").write_text(RETRY_CONFIG)
    original = EAMLabeler.label
    calls: list[Path] = []
    broken = {"on": True}

    def label(self: EAMLabeler, task_dir: Path, atoms: Any) -> Any:
        calls.append(Path(task_dir))
        if broken["on"] and Path(task_dir).name == str(BROKEN) and \
                Path(task_dir).parent.name == "vasp":
            raise LabelError("injected: the labeler's node lost its scratch disk")
        return original(self, task_dir, atoms)

    monkeypatch.setattr(EAMLabeler, "label", label)
    rc = smallcell(root, "iter", "--upto", "0", "--config", str(root / "c.yaml"),
                   "--jobs", "1")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "label tasks succeeded" in err and "min_success_ratio" in err
    it0 = root / "iter" / "0"
    assert json.loads((it0 / "vasp" / str(BROKEN) / "failed").read_text())["reason"] \
        .startswith("injected")
    assert not (it0 / "summary.json").exists() and not (it0 / "collect" / "done").exists()
    broken["on"] = False  # the cause is fixed
    calls.clear()
    return root, calls


def _done_markers(it0: Path) -> dict[str, bytes]:
    return {str(p.relative_to(it0)): p.read_bytes() for p in sorted(it0.glob("vasp/*/done"))}


def test_retry_reruns_only_the_failed_task_and_keeps_its_attempt(
        failed_run: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    root, calls = failed_run
    it0 = root / "iter" / "0"
    before = _done_markers(it0)
    n = json.loads((it0 / "select" / "done").read_text())["n_selected"]
    assert len(before) == n - 1 >= 2

    # no --config: the run's own config
    assert smallcell(root, "retry", "--iter", "0", "--jobs", "1") == 0
    out = capsys.readouterr().out
    assert f"iteration 0: re-queued label task(s) {BROKEN}" in out, out
    assert f"vasp/{BROKEN}" in out and "injected" in out
    assert f"earlier attempt kept in iter/0/vasp/{BROKEN}/attempts/1/" in out
    assert "iteration 0 is complete: " in out

    # only the failed task ran again; the others kept their markers, byte for byte
    assert calls == [it0 / "vasp" / str(BROKEN)]
    after = _done_markers(it0)
    assert {k: v for k, v in after.items() if k != f"vasp/{BROKEN}/done"} == before
    task = it0 / "vasp" / str(BROKEN)
    assert (task / "done").exists() and not (task / "failed").exists()
    assert (task / "labeled.cfg").exists()
    # the earlier attempt is kept beside the task: its failure record and inputs
    old = task / "attempts" / "1"
    assert json.loads((old / "failed").read_text())["reason"].startswith("injected")
    assert (old / "POSCAR").read_bytes() == (task / "POSCAR").read_bytes()
    assert [p.parent.name for p in it0.glob("vasp/*/attempts")] == [str(BROKEN)]

    # the iteration completed with every label
    s = json.loads((it0 / "summary.json").read_text())
    assert (s["n_selected"], s["n_labeled"], s["n_failed"], s["n_train"]) == (n, n, 0, n)

    # nothing left to retry: a message and exit 0
    assert smallcell(root, "retry", "--iter", "0") == 0
    out = capsys.readouterr().out
    assert "nothing to retry: iteration 0 has no failed" in out
    assert calls == [it0 / "vasp" / str(BROKEN)]


def test_retry_refuses_a_live_run_and_a_missing_iteration(
        failed_run: tuple[Path, list[Path]], capsys: pytest.CaptureFixture[str]) -> None:
    root, calls = failed_run
    task = root / "iter" / "0" / "vasp" / str(BROKEN)
    with RunLock(RunPaths(root), "smallcell iter --upto 3 (the test)"):
        assert smallcell(root, "retry", "--iter", "0") == 2
    err = capsys.readouterr().err
    assert "the run is live, nothing was retried" in err and "(the test)" in err, err

    assert smallcell(root, "retry", "--iter", "4") == 2
    err = capsys.readouterr().err
    assert "iteration 4 does not exist" in err and "iterations: 0..0" in err, err

    # neither touched the failed task
    assert (task / "failed").exists() and not (task / "attempts").exists()
    assert calls == []


def test_retry_only_the_stage_asked(failed_run: tuple[Path, list[Path]],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, calls = failed_run
    assert smallcell(root, "retry", "--iter", "0", "--stage", "explore") == 0
    out = capsys.readouterr().out
    assert "nothing to retry: iteration 0 has no failed explore task" in out, out
    assert (root / "iter" / "0" / "vasp" / str(BROKEN) / "failed").exists()
    assert calls == []


def test_retry_a_crashed_md_run_then_label_and_sample_tasks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Iteration 1: an explore run crashes (the loop stops at explore); retry reruns it,
    but label task 0 and sample task 0 fail (collect stops); once the labeler is fixed,
    retry re-queues both, moves the sample's errors (measured without one of them) aside
    and completes the iteration. Every failed attempt is kept, numbered."""
    from smallcell.engines.embedded_md import EmbeddedExplorer

    root = tmp_path / "run"
    root.mkdir()
    (root / "c.yaml").write_text(RETRY_CONFIG)
    assert smallcell(root, "iter", "--upto", "0", "--config", str(root / "c.yaml"),
                     "--jobs", "1") == 0
    capsys.readouterr()
    md_run, labels = EmbeddedExplorer.run, EAMLabeler.label
    broken = {"md": True, "label": True}
    md_calls: list[str] = []

    def run(self: Any, out: Path, *args: Any) -> Any:
        md_calls.append(Path(out).name)
        if broken["md"] and "001_T600" in Path(out).name:
            raise RuntimeError("injected: MD node fault")
        return md_run(self, out, *args)

    def label(self: EAMLabeler, task_dir: Path, atoms: Any) -> Any:
        if broken["label"] and Path(task_dir).name == "0":
            raise LabelError(f"injected: {Path(task_dir).parent.name} 0 lost")
        return labels(self, task_dir, atoms)

    monkeypatch.setattr(EmbeddedExplorer, "run", run)
    monkeypatch.setattr(EAMLabeler, "label", label)
    assert smallcell(root, "iter", "--upto", "1", "--config", str(root / "c.yaml"),
                     "--jobs", "1") == 2
    assert "MD run failed" in capsys.readouterr().err
    it1 = root / "iter" / "1"
    [crashed] = [d for d in (it1 / "explore").iterdir() if (d / "error.log").exists()]
    assert crashed.name.startswith("001_T600") and not (crashed / "done").exists()

    # the MD is fixed, the labeler not yet: retry reruns only the crashed run, then the
    # iteration stops at collect again (exit 2) with label and sample task 0 failed
    broken["md"] = False
    md_calls.clear()
    assert smallcell(root, "retry", "--iter", "1", "--jobs", "1") == 2
    out, err = capsys.readouterr()
    assert "re-queued explore task(s) 1" in out and "injected: MD node fault" in out, out
    assert f"earlier attempt kept in iter/1/explore/{crashed.name}/attempts/1/" in out
    assert [n.split(".")[1] for n in md_calls] == [crashed.name]
    assert "label tasks succeeded" in err
    assert (crashed / "done").exists() and not (crashed / "error.log").exists()
    assert "injected: MD node fault" in (crashed / "attempts/1/error.log").read_text()
    n_sel = json.loads((it1 / "select/done").read_text())["n_selected"]
    assert n_sel >= 2 and (it1 / "vasp/0/failed").exists() and (it1 / "sample/0/failed").exists()
    first_errors = json.loads((it1 / "sample/errors.json").read_text())
    assert first_errors["n_failed"] == 1

    broken["label"] = False
    assert smallcell(root, "retry", "--iter", "1", "--jobs", "1") == 0
    out = capsys.readouterr().out
    assert f"re-queued label task(s) 0; sample task(s) {n_sel}" in out, out
    assert "sample errors measured without them: moved to iter/1/sample/attempts/1/" in out
    for kind in ("vasp", "sample"):
        assert json.loads((it1 / kind / "0/attempts/1/failed").read_text())["reason"] == \
            f"injected: {kind} 0 lost"
        assert (it1 / kind / "0/done").exists()
    assert json.loads((it1 / "sample/attempts/1/errors.json").read_text()) == first_errors
    s = json.loads((it1 / "summary.json").read_text())
    assert (s["n_labeled"], s["n_failed"], s["sample_failed"]) == (n_sel, 0, 0)
    assert s["sample_n"] == first_errors["n_sample"]


# ------------------------------------------------------------------------------ SLURM


@pytest.mark.slow
@pytest.mark.slurm
def test_retry_on_slurm(slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch,
                        tmp_path: Path) -> None:
    """One label of 12 rejected (label.max_force) with min_success_ratio 1: the chain
    stops at collect; with max_force raised in the frozen config, `retry` submits the
    iteration again: a label array of just that task, then collect+train, to the end."""
    import os
    import subprocess

    from test_slurm_chain import _max_forces, tiny, wait_chain

    env = slurm_cluster.subprocess_env()
    env.pop("PYTHONPATH", None)
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
    smallcell_bin = Path(__file__).resolve().parents[1] / "bin" / "smallcell"

    def sc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(smallcell_bin), "--run-dir", str(run), *args],
                              capture_output=True, text=True, env=env, timeout=300,
                              check=False)

    forces = sorted(_max_forces())
    cut = (forces[-2] + forces[-1]) / 2  # exactly 1 of 12 labels is rejected
    config = tmp_path / "c.yaml"
    config.write_text(tiny(f"label: {{max_force: {cut!r}, min_success_ratio: 1.0}}\n"))
    run = tmp_path / "run"
    res = sc("submit", "--upto", "0", "--config", str(config))
    assert res.returncode == 0, res.stderr
    wait_chain(env, run)
    it0 = run / "iter" / "0"
    failed = sorted(it0.glob("vasp/*/failed"))
    assert len(failed) == 1 and (it0 / "stopped").exists()
    k = failed[0].parent.name
    before = _done_markers(it0)

    frozen = it0 / "config.yaml"  # the cause, fixed
    text, n = re.subn(r"max_force: [0-9.eE+-]+", "max_force: 1000.0", frozen.read_text())
    assert n == 1
    frozen.write_text(text)
    res = sc("retry", "--iter", "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"re-queued label task(s) {k}" in res.stdout and "label" in res.stdout
    wait_chain(env, run)

    s = json.loads((it0 / "summary.json").read_text())
    assert (s["n_selected"], s["n_labeled"], s["n_failed"]) == (12, 12, 0)
    assert not (it0 / "stopped").exists()
    assert (it0 / "vasp" / k / "attempts" / "1" / "failed").exists()
    assert {p: v for p, v in _done_markers(it0).items() if p != f"vasp/{k}/done"} == before
    labels = [r for r in json.loads((it0 / "jobs.json").read_text())["jobs"]
              if r["stage"] == "label"]
    assert labels[-1]["n_tasks"] == 1  # the retry's label array: just that task
