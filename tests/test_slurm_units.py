"""The SLURM scheduler without a cluster: slicing tasks into elements, the resubmission
decision, jobs.json records, sbatch scripts (rendering and quoting: a config value must
never reach a shell unquoted), sbatch retries, status lines and the walltime margin of an
element. Slurm's own commands are played by small fake scripts on PATH."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from smallcell import jobs, loop
from smallcell.config import parse_config, slurm_seconds
from smallcell.errors import DiskFull, SmallcellError
from smallcell.sched import slurm
from smallcell.stages import label, select
from smallcell.stages.common import Iteration
from smallcell.state import RunLock, RunPaths, atomic_write_json, is_done, mark_done, mark_stopped
from smallcell.status import status_lines

REPO = Path(__file__).resolve().parents[1]

TINY = """\
species: [Pb]
grid: {temperatures: [300.0, 600.0], pressures: [1.0], seeds_per_point: 1}
md: {steps: 20}
initial: {n_configs: 7}
trainer: {level: 4, max_iter: 20, radial_basis_size: 4}
run: {seed: 7, jobs: 1}
engines: {scheduler: slurm}
slurm: {max_array_size: 3, throttle: 2, walltime_margin: 5}
"""


def _exe(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch / squeue / scancel stand-ins on PATH. sbatch logs its argv (one JSON list per
    line) to calls.jsonl and prints ids 100, 101, ...; squeue prints squeue.out."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    _exe(bindir / "sbatch", f"""#!/usr/bin/env python3
import json, sys
from pathlib import Path
d = Path({str(bindir)!r})
with open(d / "calls.jsonl", "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
n = sum(1 for _ in open(d / "calls.jsonl"))
print(99 + n)
""")
    _exe(bindir / "squeue", f"#!/bin/sh\ncat {bindir}/squeue.out 2>/dev/null\n")
    _exe(bindir / "scancel", f"#!/bin/sh\necho \"$@\" >> {bindir}/scancel.log\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def _calls(bindir: Path) -> list[list[str]]:
    path = bindir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------ slices


@pytest.mark.parametrize(("n", "max_size", "per", "want"), [
    (10, 1000, None, 10), (1400, 50, None, 50), (1400, 1000, 28, 50), (10, 3, None, 3),
    (10, 3, 2, 3), (10, 1000, 4, 3), (1, 1000, None, 1), (0, 1000, None, 0),
    (5, 1000, 100, 1),
])
def test_elements_for(n: int, max_size: int, per: int | None, want: int) -> None:
    assert slurm.elements_for(n, max_size, per) == want


@pytest.mark.parametrize(("n", "max_size", "per", "task", "target", "want"), [
    (1000, 1000, None, 2.0, 60.0, 40),  # 2,000 s of work, at most 25 tasks in 60 - 10 s
    (200, 1000, None, 0.02, 1800.0, 1),  # the tiny example's sample: one element
    (1000, 20, None, 2.0, 60.0, 20),  # never above max_array_size: longer elements then
    (10, 1000, None, 600.0, 60.0, 10),  # a task longer than the target: one per element
    (1000, 1000, 100, 2.0, 60.0, 10),  # tasks_per_element overrides the time
    (12, 1000, None, 5.0, 60.0, 2),  # 60 s of work does not fit in 50 s
    (10, 1000, None, 0.0, 60.0, 1),  # nothing measurable: one element
])
def test_elements_sized_by_time(n: int, max_size: int, per: int | None, task: float,
                                target: float, want: int) -> None:
    m = slurm.elements_for(n, max_size, per, task, target)
    assert m == want
    longest = max(len(slurm.element_slice(n, m, e)) for e in range(m))
    if per is None and m < min(n, max_size):  # sized by time: each element within target
        assert longest * task <= target - slurm.ELEMENT_START_SECONDS


def test_element_target_stays_within_the_walltime() -> None:
    assert slurm.element_target(_slurm_cfg()) == 1800.0  # element_minutes' default
    assert slurm.element_target(_slurm_cfg("  element_minutes: 1\n")) == 60.0
    # a 10-minute label walltime with a 55 s margin leaves 545 s per element
    capped = _slurm_cfg('  element_minutes: 60\n  walltime_margin: 55\n  label: {time: "10"}\n')
    assert slurm.element_target(capped) == 545.0


@pytest.mark.parametrize(("n", "m"), [(10, 3), (1400, 50), (12, 12), (7, 1), (1000, 1000),
                                      (1001, 1000), (5, 5)])
def test_element_slices_cover_every_task_once_and_balance(n: int, m: int) -> None:
    parts = [slurm.element_slice(n, m, e) for e in range(m)]
    assert [k for p in parts for k in p] == list(range(n))
    sizes = {len(p) for p in parts}
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    if (n, m) == (1400, 50):
        assert sizes == {28}
    with pytest.raises(SmallcellError):
        slurm.element_slice(n, m, m)


def test_array_spec_throttles_only_when_it_limits() -> None:
    assert slurm.array_spec(1, 0) == "0"
    assert slurm.array_spec(10, 0) == "0-9"
    assert slurm.array_spec(10, 3) == "0-9%3"
    assert slurm.array_spec(3, 3) == "0-2"
    assert slurm.array_spec(2, 5) == "0-1"


# ------------------------------------------------------------------------ resubmission


def test_resubmit_decision() -> None:
    arr = {"n_tasks": 10, "stalls": 0}
    assert slurm.resubmit_decision(0, arr, 3).action == "proceed"
    # never submitted (a lost record): submit them
    assert slurm.resubmit_decision(4, None, 3) == slurm.Decision("resubmit", 0,
                                                                 "not submitted yet")
    # some finished (elements stopped at their walltime margin): go on, count reset
    d = slurm.resubmit_decision(4, {"n_tasks": 10, "stalls": 2}, 3)
    assert (d.action, d.stalls) == ("resubmit", 0)
    # none finished: count up to the limit, then stop
    assert slurm.resubmit_decision(10, {"n_tasks": 10, "stalls": 0}, 3).stalls == 1
    assert slurm.resubmit_decision(10, {"n_tasks": 10, "stalls": 2}, 3).action == "resubmit"
    d = slurm.resubmit_decision(10, {"n_tasks": 10, "stalls": 3}, 3)
    assert d.action == "stop" and "slurm.resubmit" in d.reason
    # resubmission off: stop at once, whatever happened
    assert slurm.resubmit_decision(4, arr, 0).action == "stop"


# ------------------------------------------------------------------------------ records


def test_records_append_and_supersede(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    assert slurm.read_jobs(paths, 0) == []
    slurm.record_job(paths, 0, {"stage": "select", "job_id": "5"})
    slurm.record_job(paths, 0, {"stage": "label", "job_id": "6", "n_tasks": 3})
    slurm.record_job(paths, 0, {"stage": "train", "job_id": "7"})
    jobs_ = slurm.read_jobs(paths, 0)
    assert [r["job_id"] for r in jobs_] == ["5", "6", "7"]
    assert json.loads((tmp_path / "iter/0/jobs.json").read_text())["jobs"] == jobs_
    assert slurm.last_record(jobs_, "label")["n_tasks"] == 3
    assert slurm.last_record(jobs_, "explore") is None
    assert not slurm.superseded(jobs_, "train", "7")
    slurm.record_job(paths, 0, {"stage": "train", "job_id": "9"})
    jobs_ = slurm.read_jobs(paths, 0)
    assert slurm.superseded(jobs_, "train", "7")  # a later collect+train job exists
    assert not slurm.superseded(jobs_, "train", "9")
    assert not slurm.superseded(jobs_, "train", "123")  # unknown: not ours to judge
    assert not slurm.superseded(jobs_, "train", None)  # run by hand
    assert slurm.recorded_ids(paths) == ["5", "6", "7", "9"]
    assert not [p for p in (tmp_path / "iter/0").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------ scripts


def _slurm_cfg(extra: str = "") -> dict:
    """The slurm section of TINY with `extra` lines added inside it (indented)."""
    text = TINY.replace("slurm: {max_array_size: 3, throttle: 2, walltime_margin: 5}\n",
                        "slurm:\n  max_array_size: 3\n  throttle: 2\n")
    if "walltime_margin" not in extra:
        text += "  walltime_margin: 5\n"
    return parse_config(text + extra)["slurm"]


@pytest.mark.parametrize("stage", slurm.STAGES)
def test_every_stage_renders(stage: str) -> None:
    text = slurm.render_script(stage, _slurm_cfg(), {
        "run_dir": "/r", "iteration": 2, "upto": 5, "config": "/c.yaml", "task_list": "x.1",
        "jobs": 4, "title": "t"})
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --time=" in text and "SMALLCELL_DEADLINE" in text
    last = text.rstrip().splitlines()[-1]
    assert last.startswith(f"exec {slurm.SMALLCELL} --run-dir /r job ")
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_template_values_are_strict() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        slurm.render_script("select", _slurm_cfg(), {"run_dir": "/r", "iteration": 0,
                                                     "title": "t"})


def test_sbatch_header_from_config() -> None:
    cfg = parse_config("""\
slurm:
  partition: batch
  account: proj42
  extra: ["--mail-type=FAIL"]
  label: {partition: gpu, time: "1-12:00:00", nodes: 2, ntasks: 64, cpus_per_task: 2,
          mem: 8G, extra: ["--gres=gpu:4"], setup: ["module load vasp/6.4"]}
""")["slurm"]
    assert slurm.sbatch_options(cfg, "label") == [
        "--partition=gpu", "--account=proj42", "--time=1-12:00:00", "--nodes=2",
        "--ntasks=64", "--cpus-per-task=2", "--mem=8G", "--mail-type=FAIL", "--gres=gpu:4"]
    assert slurm.sbatch_options(cfg, "select")[:2] == ["--partition=batch", "--account=proj42"]
    text = slurm.render_script("label", cfg, {"run_dir": "/r", "iteration": 0,
                                              "task_list": "label.1", "title": "t"})
    assert "#SBATCH --gres=gpu:4\n" in text and "\nmodule load vasp/6.4\n" in text
    assert "+ 129600 - 300 ))" in text  # time limit minus margin


def test_config_values_reach_the_shell_quoted(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run folder and config path full of shell syntax arrive as the very same words,
    and nothing in them runs."""
    evil = tmp_path / "we$(touch PWNED)ird 'dir\" `touch PWNED2`;x"
    evil.mkdir()
    argv_log = tmp_path / "argv.json"
    fake = _exe(tmp_path / "fake smallcell", "#!/usr/bin/env python3\nimport json, sys\n"
                f"json.dump(sys.argv[1:], open({str(argv_log)!r}, 'w'))\n")
    monkeypatch.setattr(slurm, "SMALLCELL", fake)
    cfg = evil / "c $HOME.yaml"
    text = slurm.render_script("train", _slurm_cfg(), {
        "run_dir": str(evil), "iteration": 3, "upto": 4, "config": str(cfg), "title": "t"})
    script = tmp_path / "job.sh"
    script.write_text(text)
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True, timeout=30)
    assert json.loads(argv_log.read_text()) == [
        "--run-dir", str(evil), "job", "collect-train", "--iter", "3", "--upto", "4",
        "--config", str(cfg)]
    assert not list(tmp_path.rglob("PWNED*"))


def test_newlines_never_reach_a_script() -> None:
    with pytest.raises(SmallcellError, match="spans lines"):
        slurm.render_script("select", _slurm_cfg(), {
            "run_dir": "/r\nrm -rf /", "iteration": 0, "upto": 1, "config": "/c",
            "title": "t"})
    cfg = dict(_slurm_cfg())
    cfg["setup"] = ["echo ok\nrm -rf /"]
    with pytest.raises(SmallcellError, match="spans lines"):
        slurm.render_script("select", cfg, {"run_dir": "/r", "iteration": 0, "upto": 1,
                                            "config": "/c", "title": "t"})
    cfg = dict(_slurm_cfg())
    cfg["extra"] = ["--comment=two words"]
    with pytest.raises(SmallcellError, match="one word"):
        slurm.render_script("select", cfg, {"run_dir": "/r", "iteration": 0, "upto": 1,
                                            "config": "/c", "title": "t"})


@pytest.mark.parametrize(("text", "message"), [
    ("slurm: {partition: 'a b'}", "slurm.partition must be one word"),
    ("slurm: {label: {mem: '4 G'}}", "slurm.label.mem must be one word"),
    ("slurm: {label: {time: '2h'}}", "not a Slurm time"),
    ("slurm: {label: {time: '0'}}", "must be positive"),
    ("slurm: {extra: [mail]}", "must be an sbatch option"),
    ("slurm: {label: {time: '5'}}", "walltime_margin (300 s) must be shorter"),
    ('slurm: {setup: ["a\\nb"]}', "one line"),
    ("slurm: {max_array_size: 0}", "slurm.max_array_size must be >= 1"),
    ("slurm: {partiton: x}", "did you mean 'slurm.partition'"),
    ("engines: {scheduler: pbs}", "must be one of local, slurm"),
])
def test_bad_slurm_config(text: str, message: str) -> None:
    with pytest.raises(SmallcellError) as info:
        parse_config(text)
    assert message in str(info.value)


def test_slurm_seconds() -> None:
    assert slurm_seconds("30") == 1800
    assert slurm_seconds("0:10") == 60  # Slurm rounds up to a minute
    assert slurm_seconds("1:30") == 120
    assert slurm_seconds("02:00:00") == 7200
    assert slurm_seconds("1-00:00:00") == 86400
    assert slurm_seconds("2-3") == 2 * 86400 + 3 * 3600
    assert slurm_seconds("2-3:04") == 2 * 86400 + 3 * 3600 + 240


# --------------------------------------------------------------------- slurm commands


def test_sbatch_retries_while_the_controller_is_away(tmp_path: Path, fake_slurm: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "n"
    _exe(fake_slurm / "sbatch", f"""#!/bin/sh
n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}
if [ "$n" -lt 2 ]; then
  echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller \
(connect failure)" >&2; exit 1
fi
echo "4711;cluster"
""")
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert slurm.sbatch(["job.sh"]) == "4711"
    assert counter.read_text().strip() == "3"
    _exe(fake_slurm / "sbatch", "#!/bin/sh\necho 'sbatch: error: invalid partition "
                                "specified: nope' >&2; exit 1\n")
    with pytest.raises(SmallcellError, match="invalid partition specified: nope"):
        slurm.sbatch(["job.sh"])


def test_query_states_and_summary(fake_slurm: Path) -> None:
    (fake_slurm / "squeue.out").write_text(
        "7|0|COMPLETED\n7|1|RUNNING\n7|2|PENDING\n7|3|PENDING\n8|N/A|PENDING\n")
    states = slurm.query_states(["7", "8", "9"])
    assert states == {"7": {"0": "COMPLETED", "1": "RUNNING", "2": "PENDING", "3": "PENDING"},
                      "8": {"": "PENDING"}}
    assert slurm.summarize_states(states["7"]) == "CD1 R1 PD2"
    assert slurm.summarize_states(states["8"]) == "PD"
    assert slurm.summarize_states(None) == "?"
    assert slurm.is_active(states["7"]) and not slurm.is_active({"0": "TIMEOUT"})
    assert not slurm.is_active(None)


def test_query_states_without_squeue(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue anywhere
    assert slurm.query_states(["1"]) is None
    assert slurm.query_states([]) == {}


# ------------------------------------------------------------------ chain and elements


@pytest.fixture()
def iter0(tmp_path: Path) -> Iteration:
    """Iteration 0 of TINY with its selection and label task folders (no labels yet)."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    from smallcell.config import load_config

    it = Iteration.open(tmp_path, 0, load_config(tmp_path / "tiny.yaml"))
    select.run(it)
    label.prepare(it)
    return it


def _chain(it: Iteration) -> slurm.Chain:
    from smallcell.config import load_config

    cfg = load_config(it.paths.root / "tiny.yaml")
    return slurm.Chain(it.paths.root, it.paths.root / "tiny.yaml", 1, cfg["slurm"], "test")


def test_chain_submits_arrays_with_task_lists(iter0: Iteration, fake_slurm: Path) -> None:
    chain = _chain(iter0)
    rec = chain.submit_array(0, "label", list(range(7)))
    train = chain.submit_job(0, "train", after=rec["job_id"])
    assert (rec["job_id"], train["job_id"]) == ("100", "101")
    assert rec["array"] == "0-2%2" and rec["elements"] == 3 and rec["n_tasks"] == 7
    tasks, m = slurm.task_list(iter0.paths, 0, "label.1")
    assert (tasks, m) == (list(range(7)), 3)
    calls = _calls(fake_slurm)
    assert calls[0][:1] == ["--parsable"] and "--array=0-2%2" in calls[0]
    assert f"--dependency=afterany:{rec['job_id']}" in calls[1]
    assert calls[1][-1] == str(iter0.dir / "slurm" / "train.1.sbatch")
    assert "--job-name=smallcell.0.train" in calls[1]
    assert [r["stage"] for r in slurm.read_jobs(iter0.paths, 0)] == ["label", "train"]
    # a resubmission gets its own list and script
    again = chain.submit_array(0, "label", [4, 6], stalls=1)
    assert again["tasks"] == "label.2.tasks.json" and again["array"] == "0-1"
    assert slurm.task_list(iter0.paths, 0, "label.2") == ([4, 6], 2)
    # a cancelled run submits nothing more
    (iter0.paths.iter_root / slurm.CANCELLED).write_text("x")
    with pytest.raises(SmallcellError, match="cancelled"):
        chain.submit_job(0, "select")


def test_element_runs_its_slice_and_stops_at_the_margin(
        iter0: Iteration, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    chain = _chain(iter0)
    chain.submit_array(0, "label", list(range(7)))  # 3 elements: 3 + 2 + 2 tasks
    root = iter0.paths.root
    monkeypatch.setenv("SMALLCELL_DEADLINE", str(time.time() - 1))  # margin already reached
    assert jobs.run_element(root, "label", 0, "label.1", 1) == 0
    assert "walltime margin reached: 2 task(s) left" in capsys.readouterr().err
    assert label.missing(iter0) == list(range(7))
    monkeypatch.setenv("SMALLCELL_DEADLINE", str(time.time() + 3600))
    assert jobs.run_element(root, "label", 0, "label.1", 1) == 0
    assert label.missing(iter0) == [0, 1, 2, 5, 6]  # element 1 owns tasks 3 and 4
    # elements share the run: a local loop cannot start while one runs
    with RunLock(iter0.paths, "element", shared=True), RunLock(
            iter0.paths, "other element", shared=True), pytest.raises(
            SmallcellError, match="in use"), RunLock(iter0.paths, "smallcell iter"):
        pass


def test_element_stops_at_a_full_disk(
        iter0: Iteration, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The element's next tasks would meet the same full disk: it stops at the first and
    leaves them (unmarked) to the checking job."""
    _chain(iter0).submit_array(0, "label", list(range(7)))
    monkeypatch.setenv("SMALLCELL_DEADLINE", str(time.time() + 3600))
    tried = []

    def full(root: Path, i: int, k: int) -> bool:
        tried.append(k)
        raise DiskFull(f"{root}/iter/0/vasp/{k}/OUTCAR: no space left on device")

    monkeypatch.setattr(label, "run_task", full)
    assert jobs.run_element(iter0.paths.root, "label", 0, "label.1", 0) == 1
    assert tried == [0]
    assert "task 0: " in capsys.readouterr().err
    assert label.missing(iter0) == list(range(7))


def test_a_chain_stopped_by_a_full_disk_still_says_why(
        iter0: Iteration, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def full(*args: object, **kw: object) -> None:
        raise DiskFull("iter/0/stopped: no space left on device")

    monkeypatch.setattr(jobs, "mark_stopped", full)
    assert jobs._stop(iter0.paths, 0, "label", "disk full while labeling") == 2
    err = capsys.readouterr().err
    assert "chain stopped at iteration 0 (label): disk full while labeling" in err
    assert "not recorded in iter/0/stopped" in err


def test_collect_train_resubmits_missing_tasks_then_stops(
        iter0: Iteration, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checking job's decisions, from the folders and jobs.json alone."""
    root = iter0.paths.root
    chain = _chain(iter0)
    chain.submit_array(0, "label", list(range(7)))
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    slurm.record_job(iter0.paths, 0, {"stage": "train", "job_id": "101", "time": time.time()})
    monkeypatch.setenv("SMALLCELL_DEADLINE", str(time.time() + 3600))
    jobs.run_element(root, "label", 0, "label.1", 0)  # 3 of 7 done; elements 1, 2 "killed"
    cfg_path = str(root / "tiny.yaml")
    assert jobs.run_checker(root, "collect-train", 0, 1, cfg_path) == 0
    recs = slurm.read_jobs(iter0.paths, 0)
    assert [r["stage"] for r in recs][-2:] == ["label", "train"]
    assert recs[-2]["n_tasks"] == 4 and recs[-2]["stalls"] == 0  # progress was made
    # sized by the time of the 3 tasks that finished: 4 cheap tasks fit in one element
    assert slurm.task_list(iter0.paths, 0, "label.2") == ([3, 4, 5, 6], 1)
    assert recs[-2]["estimate"].startswith("mean of 3 vasp task(s) of 4 atoms measured in "
                                           "this iteration")
    # the resubmitted array finished none: stalls 1..3 resubmit, the 4th stops
    for stalls in (1, 2, 3):
        monkeypatch.setenv("SLURM_JOB_ID", recs[-1]["job_id"])
        assert jobs.run_checker(root, "collect-train", 0, 1, cfg_path) == 0
        recs = slurm.read_jobs(iter0.paths, 0)
        assert recs[-2]["stalls"] == stalls
    monkeypatch.setenv("SLURM_JOB_ID", recs[-1]["job_id"])
    assert jobs.run_checker(root, "collect-train", 0, 1, cfg_path) == 2
    stopped = json.loads((iter0.dir / "stopped").read_text())
    assert "4 label tasks still have no marker" in stopped["reason"]
    assert "iter/0/vasp/3" in stopped["reason"]
    assert len(slurm.read_jobs(iter0.paths, 0)) == len(recs)  # nothing left pending
    # a stale duplicate of an earlier collect+train job does nothing at all
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    assert jobs.run_checker(root, "collect-train", 0, 1, cfg_path) == 0
    assert len(slurm.read_jobs(iter0.paths, 0)) == len(recs)
    assert not is_done(iter0.stage("collect"))


def test_status_shows_jobs_and_why_a_chain_stopped(iter0: Iteration, fake_slurm: Path) -> None:
    chain = _chain(iter0)
    chain.submit_job(0, "select")
    chain.submit_array(0, "label", list(range(7)))
    (fake_slurm / "squeue.out").write_text("100|N/A|COMPLETED\n101|0|RUNNING\n101|1|RUNNING\n"
                                           "101|2|PENDING\n")
    mark_stopped(iter0.dir, "iteration 0: something broke\n  detail line")
    lines = status_lines(iter0.paths.root)
    text = "\n".join(lines)
    assert "jobs: select 100 CD, label 101[0-2%2] R2 PD1" in text
    assert "STOPPED: iteration 0: something broke" in text and "detail line" in text
    (fake_slurm / "squeue").unlink()
    text = "\n".join(status_lines(iter0.paths.root))
    assert "label 101[0-2%2] (state unknown: no answer from squeue)" in text


def test_stop_reason() -> None:
    assert loop.stop_reason({"iteration": 1, "converged": True}, 5).startswith("converged")
    assert loop.stop_reason({"iteration": 5, "converged": False}, 5) == "reached iteration 5"
    assert loop.stop_reason({"iteration": 2, "converged": False}, 5) is None


def test_submit_of_a_local_config_goes_to_slurm_with_a_note(
        tmp_path: Path, fake_slurm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make submit CONFIG=examples/tiny.yaml` works: the command itself asks for SLURM."""
    cfg = tmp_path / "local.yaml"
    cfg.write_text(TINY.replace("engines: {scheduler: slurm}\n", ""))
    jobs.submit(tmp_path, cfg, 1)
    assert "engines.scheduler 'local'" in capsys.readouterr().err
    assert _calls(fake_slurm)


def test_submit_refuses_while_jobs_are_queued(iter0: Iteration, fake_slurm: Path) -> None:
    root = iter0.paths.root
    slurm.record_job(iter0.paths, 0, {"stage": "select", "job_id": "55", "time": 0})
    (fake_slurm / "squeue.out").write_text("55|N/A|RUNNING\n")
    with pytest.raises(SmallcellError, match=r"still has jobs in the queue \(55\)"):
        jobs.submit(root, root / "tiny.yaml", 1)
    (fake_slurm / "squeue.out").write_text("55|N/A|COMPLETED\n")
    recs = jobs.submit(root, root / "tiny.yaml", 1)
    assert [r["stage"] for r in recs] == ["select"] and recs[0]["after"] is None


def test_cancel_flags_the_run_and_scancels_until_nothing_runs(
        iter0: Iteration, fake_slurm: Path) -> None:
    paths = iter0.paths
    assert slurm.cancel(paths) == []  # nothing ever submitted: no flag left behind
    assert not slurm.cancelled(paths)
    for job in ("7", "8"):
        slurm.record_job(paths, 0, {"stage": "label", "job_id": job, "time": 0})
    (fake_slurm / "squeue.out").write_text("7|0|COMPLETED\n8|N/A|PENDING\n")
    # scancel plays Slurm: the job leaves the queue as cancelled
    _exe(fake_slurm / "scancel", f"#!/bin/sh\necho \"$@\" >> {fake_slurm}/scancel.log\n"
         f"printf '7|0|COMPLETED\\n8|N/A|CANCELLED\\n' > {fake_slurm}/squeue.out\n")
    assert slurm.cancel(paths, wait=10) == ["8"]
    assert (fake_slurm / "scancel.log").read_text().split() == ["8"]
    assert slurm.cancelled(paths)
    assert "(cancelled:" in "\n".join(status_lines(paths.root))


def test_a_checking_job_that_cannot_get_the_run_stops_the_chain(
        iter0: Iteration, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "LOCK_WAIT", 0.2)
    root = iter0.paths.root
    with RunLock(iter0.paths, "smallcell iter --upto 3"):
        assert jobs.run_checker(root, "select", 0, 1, str(root / "tiny.yaml")) == 2
    reason = json.loads((iter0.dir / "stopped").read_text())["reason"]
    assert "in use by" in reason and "smallcell iter --upto 3" in reason
    assert _calls(fake_slurm) == []


def test_select_job_resubmits_missing_explore_runs_then_stops(
        tmp_path: Path, fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Iteration 1 with one of its two MD runs killed: the select job submits an array of
    just that run and itself after it; runs that never finish stop the chain, naming them."""
    from smallcell.config import load_config
    from smallcell.state import mark_done

    (tmp_path / "tiny.yaml").write_text(TINY.replace("max_array_size: 3", "max_array_size: 3, "
                                                     "resubmit: 1"))
    cfg_path = tmp_path / "tiny.yaml"
    it = Iteration.open(tmp_path, 1, load_config(cfg_path))
    chain = slurm.Chain(tmp_path, cfg_path, 2, load_config(cfg_path)["slurm"], "test")
    recs = jobs.start_iteration(it, chain)
    assert [(r["stage"], r.get("array")) for r in recs] == [("explore", "0-1"), ("select", None)]
    assert recs[1]["after"] == recs[0]["job_id"]
    runs = json.loads((it.stage("explore") / "plan.json").read_text())["runs"]
    mark_done(it.stage("explore") / runs[0])  # run 0 finished, run 1 was killed
    monkeypatch.setenv("SLURM_JOB_ID", recs[1]["job_id"])
    assert jobs.run_checker(tmp_path, "select", 1, 2, str(cfg_path)) == 0
    recs = slurm.read_jobs(it.paths, 1)
    assert [r["stage"] for r in recs] == ["explore", "select", "explore", "select"]
    assert slurm.task_list(it.paths, 1, "explore.2") == ([1], 1)
    assert recs[2]["stalls"] == 0  # run 0 finished in the first round
    for expect in (0, 2):  # one round without progress is allowed (resubmit: 1), not two
        monkeypatch.setenv("SLURM_JOB_ID", recs[-1]["job_id"])
        assert jobs.run_checker(tmp_path, "select", 1, 2, str(cfg_path)) == expect
        recs = slurm.read_jobs(it.paths, 1)
    reason = json.loads((it.dir / "stopped").read_text())["reason"]
    assert "1 explore runs still have no marker" in reason and runs[1] in reason
    assert not is_done(it.stage("explore"))


def test_pilot_work_includes_the_large_cell_validation(tmp_path: Path) -> None:
    """What a pilot (or the chain's last job) has left: iterations first, then, once the
    run is over, the validation the config asks for; nothing when it is done."""
    cfg = parse_config("validation: {cell: [2, 2, 2]}\n")
    paths = RunPaths(tmp_path)
    atomic_write_json(paths.summary(0), {"iteration": 0, "stage": 0, "n_stages": 1,
                                         "stage_end": None})
    assert jobs.pilot_work(paths, 3, cfg) == (1, "")  # iteration 1 is missing
    atomic_write_json(paths.summary(1), {"iteration": 1, "stage": 0, "n_stages": 1,
                                         "stage_end": "converged"})
    assert jobs.first_incomplete(paths, 3)[0] is None
    assert jobs.pilot_work(paths, 3, cfg) == (1, "")  # the loop is over, its validation not
    assert jobs.pilot_work(paths, 3, parse_config("{}"))[0] is None  # none asked for
    mark_done(tmp_path / "validation")
    i, why = jobs.pilot_work(paths, 3, cfg)
    assert i is None and "converged at iteration 1" in why
