"""The SLURM chain on a real single-node Slurm (tests/slurm_local.py): `smallcell submit`
through real sbatch, job arrays and afterany dependencies, against the local loop.

- a 2-iteration embedded run submitted to Slurm writes the same folders, bytes and
  summaries (timings aside) as `smallcell iter` with the same config and seeds; its label
  arrays have more tasks than slurm.max_array_size (12 tasks in 3 elements); the error
  sample of iteration 1, slowed down, ends after iteration 2's explore has run and its
  numbers are filled into iteration 1's summary then;
- the same run survives a slurmctld restart mid-chain, and a `cancel` + `submit` redoes no
  finished task;
- label tasks rejected by label.max_force: above min_success_ratio the chain goes on with
  the failures counted, below it the chain stops with collect's message and no job left
  pending;
- an element killed by its time limit (TIMEOUT) is resumed by `submit` without redoing
  the tasks that finished;
- pilot mode: the whole loop in 1-minute allocations that resubmit themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smallcell.sched import slurm
from smallcell.state import RunPaths

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
SMALLCELL = REPO / "bin" / "smallcell"
UPTO = 2
TIMING_KEYS = frozenset({"time", "seconds", "train_seconds", "stage_seconds"})
# Scheduler-only files: what a SLURM run has beside the local run's folders.
SLURM_ONLY = {slurm.JOBS, slurm.SLURM_DIR}
# The pilot's 1-minute allocations keep 5 s for the loop, which takes about 7 s to
# iteration 2 (2026-11: faster fits made an earlier 8-s budget enough for one allocation).
# Iteration 1's error-sample elements sleep first: the chain must not wait for them.
SLOW_SAMPLE = 25
SLURM_SECTION = f"""\
engines: {{scheduler: slurm}}
slurm:
  max_array_size: 3
  tasks_per_element: 4
  walltime_margin: 55
  label:
    time: "10"
    setup: ['if [ "$SLURM_JOB_NAME" = smallcell.1.sample-label ]; then sleep {SLOW_SAMPLE}; fi']
  pilot: {{time: "1", cpus_per_task: 2}}
"""


# The chain compared with the local loop crosses a stage of the protocol: iteration 2 runs
# the 1x1x2 cell after the 1x1x1 stage's one iteration, and ends the run (its cap), so the
# chain submits the large-cell validation (a pilot job) after it.
TWO_STAGES = ("stages:\n  - {cell: [1, 1, 1], max_iterations: 1}\n"
              "  - {cell: [1, 1, 2], max_iterations: 1}\n"
              "validation: {cell: [2, 2, 2], steps: 30, sample: 2, stage_sample: 2, "
              "test_set: 2}\n")


def tiny(extra: str = "") -> str:
    return (REPO / "examples" / "tiny.yaml").read_text() + SLURM_SECTION + extra


# ---------------------------------------------------------------------------- helpers


@pytest.fixture()
def slurm_env(slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process and its children talk to the test cluster (smallcell.sched.slurm's
    squeue calls included); PYTHONPATH is left to bin/smallcell."""
    env = slurm_cluster.subprocess_env()
    env.pop("PYTHONPATH", None)
    for k in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])
    return env


def sc(env: dict[str, str], run: Path, *args: str, check: bool = True
       ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(SMALLCELL), "--run-dir", str(run), *args], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300, check=False)
    if check:
        assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res


def status(env: dict[str, str], run: Path) -> str:
    return sc(env, run, "status").stdout


def wait_chain(env: dict[str, str], run: Path, timeout: float = 240.0) -> None:
    """Until every job the run recorded is over (a job records its successors before it
    exits, so an idle record list means the chain has ended)."""
    paths = RunPaths(run)
    deadline = time.monotonic() + timeout
    quiet = None
    while True:
        ids = slurm.recorded_ids(paths)
        states = slurm.query_states(ids, timeout=10.0)
        idle = bool(ids) and states is not None and not any(
            slurm.is_active(states.get(j)) for j in ids)
        if idle:
            if quiet is not None and time.monotonic() - quiet[0] > 1.0 and quiet[1] == ids:
                return
            quiet = quiet if quiet is not None and quiet[1] == ids else (time.monotonic(), ids)
        else:
            quiet = None
        if time.monotonic() > deadline:
            raise AssertionError(f"chain still running after {timeout:.0f} s:\n"
                                 f"{status(env, run)}")
        time.sleep(0.3)


def wait_for(cond: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timeout waiting for {what}"
        time.sleep(0.1)


def records(run: Path, i: int) -> list[dict[str, Any]]:
    return slurm.read_jobs(RunPaths(run), i)


def real_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SLURM_ONLY]
        for f in filenames:
            if not f.startswith(".") and f not in SLURM_ONLY and f != slurm.CANCELLED:
                yield Path(dirpath) / f


def strip(data: Any) -> Any:
    return {k: v for k, v in data.items() if k not in TIMING_KEYS} if isinstance(
        data, dict) else data


def assert_same_run(ref: Path, run: Path, iterations: range | None = None) -> None:
    """The SLURM run wrote what the local run wrote: the same files under real names,
    the same bytes (train.cfg, pot.mtp, selected.cfg, POSCARs, logs of MD), the same JSON
    except clock readings. Only the scheduler's own files (jobs.json, slurm/) are extra."""
    def rel_set(root: Path) -> set[str]:
        out = {str(p.relative_to(root)) for p in real_files(root)}
        if iterations is not None:
            out = {r for r in out if not r.startswith("iter/")
                   or not r.split("/")[1].isdigit()  # the run's own (iter/config.yaml)
                   or int(r.split("/")[1]) in iterations}
        return out

    a, b = rel_set(ref), rel_set(run)
    assert a == b, f"only local: {sorted(a - b)}; only SLURM: {sorted(b - a)}"
    for i in iterations or range(UPTO + 1):
        d, r = ref / "iter" / str(i), run / "iter" / str(i)
        if not (d / "summary.json").exists():
            continue
        assert strip(json.loads((r / "summary.json").read_text())) == strip(
            json.loads((d / "summary.json").read_text())), f"iteration {i}: summary differs"
        for name in ("collect/train.cfg", "train/pot.mtp"):
            assert (r / name).read_bytes() == (d / name).read_bytes(), f"iter {i}: {name}"
    for rel in sorted(a):
        x, y = ref / rel, run / rel
        if x.name == "train.log":  # motep's log holds timings only besides errors.json
            continue
        if x.name in ("done", "failed") or x.suffix == ".json":
            assert strip(json.loads(y.read_text())) == strip(json.loads(x.read_text())), rel
        else:
            assert y.read_bytes() == x.read_bytes(), rel


def fingerprint(run: Path, pattern: str) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file in the finished task folders matching `pattern`:
    a redone task would rename new files into place."""
    out = {}
    for marker in run.glob(pattern):
        for p in marker.parent.iterdir():
            out[str(p)] = (p.stat().st_ino, p.stat().st_mtime_ns)
    return out


def assert_no_job_left(run: Path) -> None:
    ids = slurm.recorded_ids(RunPaths(run))
    states = slurm.query_states(ids, timeout=10.0)
    assert states is not None
    left = {j: states.get(j) for j in ids if slurm.is_active(states.get(j))}
    assert not left, f"jobs left pending or running: {left}"


@pytest.fixture(scope="module")
def same_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One config file for the local reference and every SLURM run compared with it (the
    frozen iteration configs name their source file)."""
    path = tmp_path_factory.mktemp("config") / "tiny-slurm.yaml"
    path.write_text(tiny(TWO_STAGES))
    return path


@pytest.fixture(scope="module")
def reference(same_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local loop (`smallcell iter`) on the same config: what every SLURM run must
    reproduce."""
    run = tmp_path_factory.mktemp("local")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(SMALLCELL), "--run-dir", str(run), "iter", "--upto", str(UPTO),
                          "--config", str(same_config)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    return run


# ------------------------------------------------------------------------------ tests


def test_submitted_chain_equals_the_local_loop(slurm_env: dict[str, str], same_config: Path,
                                               reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    t0 = time.monotonic()
    out = sc(slurm_env, run, "submit", "--upto", str(UPTO), "--config", str(same_config))
    assert time.monotonic() - t0 < 30  # returns at once, printing the job ids
    [select] = records(run, 0)
    assert select["stage"] == "select" and f"job {select['job_id']}" in out.stdout
    wait_chain(slurm_env, run)
    assert_same_run(reference, run)
    # 12 label tasks, max_array_size 3: one array of 3 elements x 4 tasks
    stages = [(r["stage"], r.get("array"), r.get("n_tasks")) for r in records(run, 0)]
    assert stages == [("select", None, None), ("label", "0-2", 12), ("train", None, None)]
    for i in range(1, UPTO + 1):
        if (run / "iter" / str(i)).exists():
            assert records(run, i)[0]["stage"] == "explore"
    # iteration 1's error sample ran in its own array beside the training labels, its job
    # measured it after iteration 2's explore had run (its elements slept) and completed
    # the summary (compared with the local loop's above)
    s1 = json.loads((run / "iter" / "1" / "summary.json").read_text())
    recs1 = records(run, 1)
    label1 = next(r for r in recs1 if r["stage"] == "label")
    sample1 = next(r for r in recs1 if r["stage"] == "sample-label")
    assert s1["sample_n"] > 0 and s1["sample_force_error_mean"] is not None
    assert not s1["sample_pending"]
    assert label1["n_tasks"] == s1["n_selected"]
    assert sample1["n_tasks"] == s1["sample_n"] + s1["sample_failed"]
    assert [r["stage"] for r in recs1].count("sample") == 1
    explored = max(p.stat().st_mtime for p in run.glob("iter/2/explore/*/done"))
    assert explored < (run / "iter/1/sample/errors.json").stat().st_mtime
    # the collect+train job moved the chain to the next stage of the protocol
    assert s1["stage_end"] and s1["stage"] == 0
    s2 = json.loads((run / "iter" / "2" / "summary.json").read_text())
    assert s2["stage"] == 1 and s2["cell"] == [1, 1, 2] and s2["stage_end"]
    # ... and submitted the first stage's per-stage validation beside the chain, one job
    # (its folder compared with the local loop's above)
    assert [r["stage"] for r in recs1].count("checkpoint") == 1
    assert (run / "iter" / "1" / "validate" / "done").exists()
    # ... and, the run over, a pilot job ran the validation (compared above with the
    # local loop's, file by file)
    assert [r["stage"] for r in records(run, 2)][-1] == "pilot"
    text = status(slurm_env, run)
    assert "Slurm jobs: 5 = select 1, label 3 (12 tasks, 4/element" in text, text
    assert (run / "validation" / "done").exists()
    last = max(RunPaths(run).iterations())
    text = status(slurm_env, run)
    assert "collect+train" in text and "STOPPED" not in text, text
    assert json.loads((run / "iter" / str(last) / "summary.json").read_text())["converged"] \
        or last == UPTO


def test_controller_restart_then_cancel_and_submit(slurm_env: dict[str, str], slurm_cluster: Any,
                                                   same_config: Path, reference: Path,
                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    sc(slurm_env, run, "submit", "--upto", str(UPTO), "--config", str(same_config))
    # restart slurmctld while the label array of iteration 0 and its checker are queued
    wait_for(lambda: any(r["stage"] == "label" for r in records(run, 0)), "label array")
    slurm_cluster.restart_controller()
    # cancel once iteration 1 is under way, then go on with `submit`
    wait_for(lambda: (run / "iter" / "1" / "jobs.json").exists(), "iteration 1's jobs")
    res = sc(slurm_env, run, "cancel")
    assert "cancelled" in res.stdout
    assert_no_job_left(run)
    text = status(slurm_env, run)
    assert "cancelled" in text and "CA" in text, text
    before = fingerprint(run, "iter/*/vasp/*/done") | fingerprint(run, "iter/*/explore/*/done")
    assert before  # iteration 0's labels at least
    res = sc(slurm_env, run, "submit", "--upto", str(UPTO), "--config", str(same_config))
    wait_chain(slurm_env, run)
    after = {k: v for k, v in (fingerprint(run, "iter/*/vasp/*/done")
                               | fingerprint(run, "iter/*/explore/*/done")).items() if k in before}
    assert after == before, "finished tasks were redone after cancel + submit"
    assert_same_run(reference, run)
    assert not (run / "iter" / slurm.CANCELLED).exists()


def _max_forces() -> list[float]:
    """The largest force component of each of iteration 0's generated configurations,
    from the EAM labeler itself (test-side: production code has no test-only path)."""
    from smallcell.config import parse_config
    from smallcell.engines import eam_pb
    from smallcell.structures import initial_structures

    cfg = parse_config(tiny())
    calc = eam_pb.calculator()
    out = []
    for atoms in initial_structures(cfg):
        atoms.calc = calc
        out.append(float(abs(atoms.get_forces()).max()))
    return out


def test_rejected_labels_proceed_or_stop(slurm_env: dict[str, str], tmp_path: Path) -> None:
    forces = sorted(_max_forces())
    assert len(forces) == 12 and forces[-3] < forces[-2]
    cut = (forces[-3] + forces[-2]) / 2  # exactly 2 of 12 labels are rejected
    some = tmp_path / "some.yaml"
    some.write_text(tiny(f"label: {{max_force: {cut!r}, min_success_ratio: 0.75}}\n"))
    every = tmp_path / "every.yaml"
    every.write_text(tiny("label: {max_force: 1.0e-6, retries: 0}\n"))
    run_some, run_every = tmp_path / "some", tmp_path / "every"
    sc(slurm_env, run_some, "submit", "--upto", "0", "--config", str(some))
    sc(slurm_env, run_every, "submit", "--upto", "0", "--config", str(every))
    wait_chain(slurm_env, run_some)
    wait_chain(slurm_env, run_every)

    # 10 of 12 >= 0.75: the iteration goes on, the failures are counted and kept
    s = json.loads((run_some / "iter/0/summary.json").read_text())
    assert (s["n_selected"], s["n_labeled"], s["n_failed"], s["n_train"]) == (12, 10, 2, 10)
    failed = sorted(run_some.glob("iter/0/vasp/*/failed"))
    assert len(failed) == 2
    for f in failed:
        assert "above label.max_force" in json.loads(f.read_text())["reason"]
    assert not (run_some / "iter/0/stopped").exists()

    # 0 of 12: collect's message in iter/0/stopped and on status, no job left pending
    assert not (run_every / "iter/0/summary.json").exists()
    reason = json.loads((run_every / "iter/0/stopped").read_text())["reason"]
    assert "only 0 of 12 label tasks succeeded" in reason and "min_success_ratio" in reason
    text = status(slurm_env, run_every)
    assert "STOPPED: iteration 0: only 0 of 12 label tasks succeeded" in text, text
    assert_no_job_left(run_every)
    assert [r["stage"] for r in records(run_every, 0)] == ["select", "label", "train"]


def test_timeout_resumed_by_submit(slurm_env: dict[str, str], slurm_cluster: Any,
                                   tmp_path: Path) -> None:
    """Element 1 of the label array sleeps past its 1-minute limit (TIMEOUT) while
    element 0 labels its tasks; with slurm.resubmit 0 the chain stops, and `submit`
    (without the sleep) finishes the iteration without touching the finished tasks."""
    sleeper = 'if [ "$SLURM_ARRAY_TASK_ID" = 1 ]; then sleep 300; fi'
    cfg = tmp_path / "timeout.yaml"
    cfg.write_text((REPO / "examples" / "tiny.yaml").read_text() + f"""\
engines: {{scheduler: slurm}}
slurm:
  max_array_size: 2
  tasks_per_element: 6
  resubmit: 0
  walltime_margin: 5
  label: {{time: "1", setup: ['{sleeper}']}}
""")
    run = tmp_path / "run"
    sc(slurm_env, run, "submit", "--upto", "0", "--config", str(cfg))
    wait_chain(slurm_env, run, timeout=200)
    label_rec = next(r for r in records(run, 0) if r["stage"] == "label")
    states = slurm_cluster.job_state(label_rec["job_id"])
    assert states[0][0] == "COMPLETED" and states[1][0] == "TIMEOUT", states
    done = sorted(int(p.parent.name) for p in run.glob("iter/0/vasp/*/done"))
    assert done == list(range(6))  # element 0's half
    reason = json.loads((run / "iter/0/stopped").read_text())["reason"]
    assert "6 label tasks still have no marker" in reason and "slurm.resubmit is 0" in reason
    assert_no_job_left(run)
    before = fingerprint(run, "iter/0/vasp/*/done")

    cfg.write_text(cfg.read_text().replace(f", setup: ['{sleeper}']", ""))
    sc(slurm_env, run, "submit", "--upto", "0", "--config", str(cfg))
    wait_chain(slurm_env, run)
    s = json.loads((run / "iter/0/summary.json").read_text())
    assert (s["n_labeled"], s["n_failed"]) == (12, 0)
    assert fingerprint(run, "iter/0/vasp/*/done").items() >= before.items()
    resubmitted = [r for r in records(run, 0) if r["stage"] == "label"][-1]
    assert resubmitted["n_tasks"] == 6  # only the missing ones
    assert not (run / "iter/0/stopped").exists()


def test_pilot_resubmits_itself_and_equals_the_local_loop(
        slurm_env: dict[str, str], same_config: Path, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = sc(slurm_env, run, "pilot", "--upto", str(UPTO), "--config", str(same_config))
    assert "pilot job" in res.stdout
    wait_chain(slurm_env, run, timeout=300)
    pilots = [r for i in RunPaths(run).iterations() for r in records(run, i)
              if r["stage"] == "pilot"]
    assert len(pilots) >= 2, pilots  # 5 s of loop per allocation: it had to resubmit
    assert all(r["after"] for r in pilots[1:])  # each after the one before it
    assert_same_run(reference, run, range(0, UPTO + 1))
    assert (run / f"iter/{UPTO}/summary.json").exists()
    assert not (run / f"iter/{UPTO + 1}").exists()
