"""The local Slurm fixture itself: arrays with a throttle, dependencies, self-submitting
chains, a controller restart with jobs queued. Real slurmctld/slurmd (tests/slurm_local.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

STAMP = "date +%s.%N"


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/bash\nset -eu\n{body}\n")
    path.chmod(0o755)
    return path


def stamp(path: Path) -> float:
    return float(path.read_text())


def test_array_throttle_then_afterany(slurm_cluster, tmp_path: Path) -> None:
    job = script(tmp_path / "task.sh",
                 f"{STAMP} > start.$SLURM_ARRAY_TASK_ID\n"
                 "sleep 1; echo $SLURM_ARRAY_TASK_ID > out.$SLURM_ARRAY_TASK_ID\n"
                 f"{STAMP} > end.$SLURM_ARRAY_TASK_ID")
    after = script(tmp_path / "after.sh", f"{STAMP} > after.start; ls out.* | wc -l > after.n")
    array = slurm_cluster.sbatch(["--array=0-5%2", "-o", "slurm-%A_%a.out", str(job)],
                                 cwd=tmp_path)
    dep = slurm_cluster.sbatch([f"--dependency=afterany:{array}", str(after)], cwd=tmp_path)

    most_running = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        tasks = slurm_cluster.job_state(array)
        running = sum(state == "RUNNING" for state, _ in tasks.values())
        most_running = max(most_running, running)
        if len(tasks) == 6 and all(s == "COMPLETED" for s, _ in tasks.values()):
            break
        assert slurm_cluster.job_state(dep)[None][0] == "PENDING", "afterany ran too early"
        time.sleep(0.1)
    assert 1 <= most_running <= 2

    states = slurm_cluster.wait_jobs([array, dep], timeout=20)
    assert states[array] == {i: ("COMPLETED", 0) for i in range(6)}
    assert states[dep] == {None: ("COMPLETED", 0)}
    for i in range(6):
        assert (tmp_path / f"out.{i}").read_text() == f"{i}\n"
    # never more than 2 tasks ran at once, by the tasks' own clocks
    spans = [(stamp(tmp_path / f"start.{i}"), stamp(tmp_path / f"end.{i}")) for i in range(6)]
    assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2
    last_end = max(e for _, e in spans)
    assert stamp(tmp_path / "after.start") >= last_end
    assert (tmp_path / "after.n").read_text().strip() == "6"


def test_job_state_exit_codes(slurm_cluster, tmp_path: Path) -> None:
    ok = slurm_cluster.sbatch(["--wrap", "true"], cwd=tmp_path)
    bad = slurm_cluster.sbatch(["--wrap", "exit 3"], cwd=tmp_path)
    killed = slurm_cluster.sbatch(["--wrap", "kill -KILL $$"], cwd=tmp_path)
    states = slurm_cluster.wait_jobs([ok, bad, killed], timeout=20)
    assert states[ok] == {None: ("COMPLETED", 0)}
    assert states[bad] == {None: ("FAILED", 3)}
    assert states[killed] == {None: ("FAILED", 128 + signal.SIGKILL)}
    assert slurm_cluster.job_state(10**8) == {}


def test_job_that_submits_the_next_job(slurm_cluster, tmp_path: Path) -> None:
    chain = script(tmp_path / "chain.sh",
                   f'n=$1; {STAMP} > stage.$n\n'
                   f'if [ "$n" -lt 3 ]; then sbatch --parsable "{tmp_path}/chain.sh" '
                   '$((n + 1)) > next.$n; fi')
    ids = [slurm_cluster.sbatch([str(chain), "1"], cwd=tmp_path)]
    deadline = time.monotonic() + 30
    while not (tmp_path / "stage.3").exists():
        assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
        time.sleep(0.1)
    ids += [(tmp_path / f"next.{n}").read_text().strip() for n in (1, 2)]
    states = slurm_cluster.wait_jobs(ids, timeout=20)
    assert all(s == {None: ("COMPLETED", 0)} for s in states.values()), states
    stages = [stamp(tmp_path / f"stage.{n}") for n in (1, 2, 3)]
    assert stages == sorted(stages)


# The first job must outlive the restart: one that ends while slurmctld is down, or after
# the state save a SIGKILL falls back to, is reported late or lost (the stepd is done).
@pytest.mark.parametrize(("sig", "seconds"), [(signal.SIGTERM, 5), (signal.SIGKILL, 12)],
                         ids=["SIGTERM", "SIGKILL"])
def test_controller_restart_keeps_the_queue(slurm_cluster, tmp_path: Path, sig, seconds) -> None:
    first = slurm_cluster.sbatch(["--wrap", f"sleep {seconds}; echo a > a.out"], cwd=tmp_path)
    second = slurm_cluster.sbatch([f"--dependency=afterok:{first}", "--wrap", "echo b > b.out"],
                                  cwd=tmp_path)
    deadline = time.monotonic() + 20
    while slurm_cluster.job_state(first)[None][0] != "RUNNING":
        assert time.monotonic() < deadline, slurm_cluster.job_state(first)
        time.sleep(0.1)
    if sig == signal.SIGKILL:  # a crash keeps only the last state save (up to 5 s old)
        slurm_cluster.wait_state_saved()
    slurm_cluster.restart_controller(sig)
    assert slurm_cluster.job_state(first)[None][0] == "RUNNING"
    assert slurm_cluster.job_state(second)[None][0] == "PENDING"
    states = slurm_cluster.wait_jobs([first, second], timeout=30)
    assert states == {first: {None: ("COMPLETED", 0)}, second: {None: ("COMPLETED", 0)}}
    assert (tmp_path / "a.out").read_text() == "a\n"
    assert (tmp_path / "b.out").read_text() == "b\n"
