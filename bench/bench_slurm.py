"""Benchmark the SLURM chain on a real Slurm: label arrays sized by time, the error sample
beside training (issue 21). Three cases, each against its target:

- **tiny**: `examples/tiny.yaml` to iteration 1 through `smallcell submit` against
  `smallcell iter` on the same machine (each twice, medians): Slurm jobs per iteration
  (an array element is a job: what queues and their policies count; target at most 12)
  and wall time from the submission until the last job is over (target within 3x of the
  local loop), the summaries equal to the local loop's;
- **thousand**: one iteration of 1,000 label tasks of 2 s each (iteration 0 with
  `initial.n_configs: 1000`; a stand-in labeler: the EAM labeler after a 2-s sleep, run as
  the label stage's launcher, see `stand_in`) with `slurm.element_minutes: 1` and
  `first_task_seconds: 2`: the elements (target about 35, each within its minute), every
  task labeled once (the stand-in logs each call), and one element cancelled mid-run
  (`scancel`): its missing tasks resubmitted by the collect+train job as before;
- **slow sample**: the tiny example to iteration 2 with iteration 1's error-sample
  elements sleeping first: iteration 2's explore must start before iteration 1's sample
  labels end, and iteration 1's summary is completed afterwards with the local loop's
  numbers.

The cluster: the one SLURM_CONF points to when set (a real cluster works too), else a
local single-node Slurm from tests/slurm_local.py under /tmp/smallcell-bench/ on free ports
(beside a test suite's cluster), with 16 CPUs configured (the stand-in's tasks sleep), and
stopped afterwards. Writes its section of BENCHMARKS.md (benchlib.write_sections).

    .venv/bin/python bench/bench_slurm.py [--tasks 1000] [--task-seconds 2] [--keep]
                                          [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from benchlib import CACHE_ROOT, REPO, SMALLCELL, VENV_PY, Machine, machine, utc_now

from smallcell.sched import slurm
from smallcell.state import RunPaths

TINY = REPO / "examples" / "tiny.yaml"
TIMING = frozenset({"time", "seconds", "train_seconds", "stage_seconds"})
CALLS = "stand-in-calls.log"  # in the run folder: one line per label call of the stand-in
TITLE = "SLURM: the chain of arrays vs one job per task (1,000 label tasks)"  # run_all's

THOUSAND = """\
# bench/bench_slurm.py: one iteration of {tasks} label tasks of {seconds:g} s (a stand-in)
species: [Pb]
initial: {{n_configs: {tasks}}}
trainer: {{level: 4, max_iter: 1, radial_basis_size: 4}}
run: {{seed: 11, jobs: 1}}
engines: {{scheduler: slurm}}
slurm:
  element_minutes: {minutes:g}
  first_task_seconds: {seconds:g}
  walltime_margin: 30
  label: {{time: "10", launcher: [{python}, {bench}, --stand-in, "{seconds:g}"]}}
"""
SLOW_SAMPLE = """\
engines: {{scheduler: slurm}}
slurm:
  label:
    setup: ['if [ "$SLURM_JOB_NAME" = smallcell.1.sample-label ]; then sleep {sleep}; fi']
"""


# ---------------------------------------------------------------------------- stand-in


def stand_in(seconds: float, argv: list[str]) -> int:
    """The label stage's launcher in the `thousand` case: `bench_slurm.py --stand-in S
    bin/smallcell ARGS`: smallcell's command line in this process, with the EAM labeler
    sleeping S seconds before each label and logging the call (task folder, pid) to the
    run folder's stand-in-calls.log, so that a task labeled twice shows."""
    from smallcell import cli
    from smallcell.engines import eam_labeler

    run_dir = Path(argv[argv.index("--run-dir") + 1])
    original = eam_labeler.EAMLabeler.label

    def slow(self: Any, task_dir: Path, atoms: Any) -> Any:
        time.sleep(seconds)
        out = original(self, task_dir, atoms)
        line = f"{task_dir.parent.name}/{task_dir.name} {os.getpid()}\n".encode()
        fd = os.open(run_dir / CALLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write, O_APPEND: lines never interleave
        finally:
            os.close(fd)
        return out

    eam_labeler.EAMLabeler.label = slow  # type: ignore[method-assign]
    return cli.main(argv[1:])  # argv[0] is bin/smallcell, whose work this process does


# ------------------------------------------------------------------------------ cluster


class Cluster:
    """SLURM_CONF's cluster, or a local one on free ports for the benchmark's duration."""

    def __init__(self) -> None:
        self.local: Any = None
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.where = ""

    def __enter__(self) -> Cluster:
        conf = os.environ.get("SLURM_CONF")
        if conf and subprocess.run(["sinfo", "-h"], capture_output=True, env=self.env,
                                   check=False, timeout=30).returncode == 0:
            self.where = f"the cluster of SLURM_CONF={conf}"
            return self
        sys.path.insert(0, str(REPO / "tests"))
        from slurm_local import LocalSlurm, port_in_use

        port = next(p for p in range(7817, 7917, 2)
                    if not port_in_use(p) and not port_in_use(p + 1))
        root = CACHE_ROOT / "slurm"
        shutil.rmtree(root, ignore_errors=True)
        self.local = LocalSlurm(root, cpus=16, ports=(port, port + 1)).start()
        self.env = self.local.subprocess_env(self.env)
        os.environ["SLURM_CONF"] = self.env["SLURM_CONF"]
        self.where = (f"a local single-node Slurm (tests/slurm_local.py, {self.local.cpus} "
                      f"CPUs configured, ports {port}/{port + 1})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.local is not None:
            self.local.stop()
            os.environ.pop("SLURM_CONF", None)

    def slurm_version(self) -> str:
        res = subprocess.run(["sbatch", "--version"], capture_output=True, text=True,
                             env=self.env, check=False)
        return res.stdout.strip() or "unknown"

    def elements(self, job: str) -> dict[int | None, dict[str, str]]:
        """{array task id (None for a plain job): scontrol's fields} of a job."""
        res = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True,
                             text=True, env=self.env, check=False, timeout=30)
        out: dict[int | None, dict[str, str]] = {}
        for line in res.stdout.splitlines():
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            task = fields.get("ArrayTaskId")
            out[int(task) if task and task.isdigit() else None] = fields
        return out


def _stamp(value: str | None) -> float | None:
    """scontrol's times (whole seconds) as epoch seconds; None when unknown."""
    try:
        return datetime.strptime(value or "", "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _run_seconds(fields: dict[str, str]) -> float | None:
    start, end = _stamp(fields.get("StartTime")), _stamp(fields.get("EndTime"))
    return None if start is None or end is None else end - start


# -------------------------------------------------------------------------------- runs


def _sc(cluster: Cluster, run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(SMALLCELL), "--run-dir", str(run), *args], capture_output=True,
                         text=True, env=cluster.env, cwd=REPO, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"smallcell {' '.join(args)} failed: {res.stdout}\n{res.stderr}")
    return res


def _wait(run: Path, timeout: float, during: Any = None) -> float:
    """Until every recorded job of the run is over and stays so for 1 s (a job records its
    successors before it exits); return when the last one was seen active."""
    paths = RunPaths(run)
    deadline = time.monotonic() + timeout
    last_active = time.time()
    quiet: tuple[float, list[str]] | None = None
    while True:
        ids = slurm.recorded_ids(paths)
        states = slurm.query_states(ids, timeout=30.0)
        busy = states is None or not ids or any(slurm.is_active(states.get(j)) for j in ids)
        if busy:
            last_active, quiet = time.time(), None
        elif quiet is None or quiet[1] != ids:
            quiet = (time.monotonic(), ids)
        elif time.monotonic() - quiet[0] > 1.0:
            return last_active
        if during is not None:
            during()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run}: the chain did not end within {timeout:.0f} s")
        time.sleep(0.2)


def _strip(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in TIMING}


def _summary(run: Path, i: int) -> dict[str, Any]:
    return json.loads((run / "iter" / str(i) / "summary.json").read_text())


def _jobs_per_iteration(run: Path) -> dict[int, int]:
    """Slurm jobs of each iteration, each array element counted (jobs.json)."""
    paths = RunPaths(run)
    return {i: sum(int(r.get("elements") or 1) for r in slurm.read_jobs(paths, i))
            for i in paths.iterations()}


@dataclass
class Tiny:
    """examples/tiny.yaml to iteration 1: `smallcell iter` and `smallcell submit`."""

    local_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)  # submission to the last job's end
    summary_s: list[float] = field(default_factory=list)  # submission to the last summary
    jobs: dict[int, int] = field(default_factory=dict)
    tally: dict[int, str] = field(default_factory=dict)
    same: bool = False

    @property
    def ratio(self) -> float:
        return _median(self.submit_s) / _median(self.local_s)

    @property
    def passed(self) -> bool:
        return self.same and max(self.jobs.values()) <= 12 and self.ratio <= 3.0


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2 if s else float("nan")


def run_tiny(cluster: Cluster, base: Path, repeats: int = 2) -> Tiny:
    res = Tiny()
    for n in range(repeats):
        local = base / f"tiny-local-{n}"
        t0 = time.time()
        _sc(cluster, local, "iter", "--upto", "1", "--config", str(TINY))
        res.local_s.append(time.time() - t0)
        run = base / f"tiny-slurm-{n}"
        t0 = time.time()
        _sc(cluster, run, "submit", "--upto", "1", "--config", str(TINY))
        end = _wait(run, timeout=900)
        res.submit_s.append(end - t0)
        res.summary_s.append(max((run / f"iter/{i}/summary.json").stat().st_mtime
                                 for i in (0, 1)) - t0)
        res.jobs = _jobs_per_iteration(run)
        res.tally = {i: slurm.tally_line(slurm.read_jobs(RunPaths(run), i)) for i in (0, 1)}
        res.same = all(_strip(_summary(run, i)) == _strip(_summary(local, i)) for i in (0, 1))
        print(f"bench_slurm: tiny {n}: local {res.local_s[-1]:.1f} s, submit "
              f"{res.submit_s[-1]:.1f} s, jobs {res.jobs}, same {res.same}", file=sys.stderr,
              flush=True)
    return res


@dataclass
class Thousand:
    """1,000 tasks of 2 s with element_minutes 1, one element cancelled."""

    tasks: int
    task_seconds: float
    target_s: float = 0.0
    elements: int = 0
    per_element: int = 0
    element_run_s: list[float] = field(default_factory=list)  # Slurm's (whole seconds)
    element_work_s: list[float] = field(default_factory=list)  # first task start to last end
    killed: int | None = None
    resubmitted: int = 0
    resubmit_elements: int = 0
    resubmit_estimate: str = ""
    labeled: int = 0
    failed: int = 0
    calls_twice: list[str] = field(default_factory=list)
    in_flight: int = 0  # tasks of the cancelled element that were labeling when it died
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ideal(self) -> float:
        """Elements if each were filled to its target exactly."""
        return self.tasks * self.task_seconds / self.target_s

    @property
    def passed(self) -> bool:
        within = bool(self.element_run_s) and max(self.element_run_s) <= self.target_s
        return (within and self.elements <= 1.25 * self.ideal + 1
                and self.labeled == self.tasks and self.failed == 0
                and len(self.calls_twice) <= self.in_flight and self.resubmitted > 0
                and not self.notes)


def run_thousand(cluster: Cluster, base: Path, tasks: int, seconds: float,
                 minutes: float = 1.0) -> Thousand:
    run = base / "thousand"
    run.mkdir()
    cfg = run / "bench.yaml"
    cfg.write_text(THOUSAND.format(tasks=tasks, seconds=seconds, minutes=minutes,
                                   python=json.dumps(str(VENV_PY)),
                                   bench=json.dumps(str(Path(__file__).resolve()))))
    res = Thousand(tasks, seconds, target_s=60.0 * minutes)
    t0 = time.time()
    _sc(cluster, run, "submit", "--upto", "0", "--config", str(cfg))
    paths = RunPaths(run)
    state: dict[str, Any] = {}

    def cancel_one() -> None:
        """Once the first array has labeled a tenth of its tasks, cancel a running element
        (the job of a node that died, say)."""
        if "killed" in state:
            return
        first = slurm.last_record(slurm.read_jobs(paths, 0), "label")
        if first is None or len(list((run / "iter/0/vasp").glob("*/done"))) < tasks // 10:
            return
        running = [k for k, f in cluster.elements(str(first["job_id"])).items()
                   if k is not None and f.get("JobState") == "RUNNING"]
        if running:
            k = running[len(running) // 2]
            subprocess.run(["scancel", f"{first['job_id']}_{k}"], env=cluster.env,
                           check=False, timeout=30)
            state["killed"] = k

    _wait(run, timeout=3 * 3600, during=cancel_one)
    res.wall_s = time.time() - t0
    res.killed = state.get("killed")
    if (run / "iter/0/stopped").exists():
        res.notes.append("STOPPED: " + json.loads((run / "iter/0/stopped").read_text())["reason"])
    labels = [r for r in slurm.read_jobs(paths, 0) if r["stage"] == "label"]
    first = labels[0]
    res.elements, res.per_element = int(first["elements"]), int(first["tasks_per_element"])
    slices = _slices(run, first)
    for k, fields in cluster.elements(str(first["job_id"])).items():
        if k is None or k == res.killed:
            continue
        secs = _run_seconds(fields)
        if secs is not None:
            res.element_run_s.append(secs)
        res.element_work_s.append(_work_span(run, slices[k]))
    if len(labels) > 1:
        res.resubmitted = sum(int(r["n_tasks"]) for r in labels[1:])
        res.resubmit_elements = sum(int(r["elements"]) for r in labels[1:])
        res.resubmit_estimate = str(labels[1].get("estimate", ""))
    res.labeled = len(list((run / "iter/0/vasp").glob("*/done")))
    res.failed = len(list((run / "iter/0/vasp").glob("*/failed")))
    calls: dict[str, int] = {}
    for line in (run / CALLS).read_text().splitlines():
        calls[line.split()[0]] = calls.get(line.split()[0], 0) + 1
    res.calls_twice = sorted(t for t, n in calls.items() if n > 1)
    res.in_flight = 1 if res.killed is not None else 0
    if len(calls) != tasks:
        res.notes.append(f"{len(calls)} tasks labeled by the stand-in, not {tasks}")
    return res


def _slices(run: Path, rec: dict[str, Any]) -> dict[int, list[int]]:
    data = json.loads((run / "iter/0/slurm" / rec["tasks"]).read_text())
    tasks, m = data["tasks"], int(data["elements"])
    return {e: [tasks[p] for p in slurm.element_slice(len(tasks), m, e)] for e in range(m)}


def _work_span(run: Path, tasks: list[int]) -> float:
    """First task's start to last task's end of one element, from the task markers (their
    time and wall seconds): the element's work without its start-up."""
    starts, ends = [], []
    for k in tasks:
        path = run / "iter/0/vasp" / str(k) / "done"
        if path.exists():
            m = json.loads(path.read_text())
            ends.append(float(m["time"]))
            starts.append(float(m["time"]) - float(m.get("seconds", 0.0)))
    return max(ends) - min(starts) if ends else 0.0


@dataclass
class SlowSample:
    """The tiny example to iteration 2 with iteration 1's sample elements sleeping."""

    sleep: int
    sample_end: float = 0.0  # iteration 1's last sample-label element's end (Slurm)
    measured: float = 0.0  # iteration 1's sample/errors.json
    explore2_start: float = 0.0  # iteration 2's first explore element's start (Slurm)
    summary2: float = 0.0  # iteration 2's summary.json
    completed: bool = False  # iteration 1's summary, completed late, equals the local one
    pending_seen: bool = False  # the summary was written while the sample was pending
    t0: float = 0.0
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.completed and self.explore2_start < self.sample_end


def run_slow_sample(cluster: Cluster, base: Path, sleep: int = 30) -> SlowSample:
    cfg = base / "slow-sample.yaml"
    cfg.write_text(TINY.read_text() + SLOW_SAMPLE.format(sleep=sleep))
    local, run = base / "slow-local", base / "slow-slurm"
    _sc(cluster, local, "iter", "--upto", "2", "--config", str(cfg))
    res = SlowSample(sleep)
    res.t0 = time.time()
    _sc(cluster, run, "submit", "--upto", "2", "--config", str(cfg))
    seen = {"pending": False}

    def look() -> None:
        path = run / "iter/1/summary.json"
        if not seen["pending"] and path.exists():
            seen["pending"] = bool(json.loads(path.read_text()).get("sample_pending"))

    _wait(run, timeout=1200, during=look)
    res.wall_s = time.time() - res.t0
    res.pending_seen = seen["pending"]
    paths = RunPaths(run)
    samples = [r for r in slurm.read_jobs(paths, 1) if r["stage"] == "sample-label"]
    ends = [_stamp(f.get("EndTime")) for r in samples
            for f in cluster.elements(str(r["job_id"])).values()]
    res.sample_end = max(e for e in ends if e is not None)
    res.measured = (run / "iter/1/sample/errors.json").stat().st_mtime
    explore = slurm.last_record(slurm.read_jobs(paths, 2), "explore")
    starts = [_stamp(f.get("StartTime")) for f in
              cluster.elements(str(explore["job_id"])).values()] if explore else []
    res.explore2_start = min((s for s in starts if s is not None), default=float("inf"))
    res.summary2 = (run / "iter/2/summary.json").stat().st_mtime
    res.completed = all(_strip(_summary(run, i)) == _strip(_summary(local, i))
                        for i in (0, 1, 2))
    return res


@dataclass
class Result:
    machine: Machine
    date: str
    where: str
    version: str
    tiny: Tiny
    thousand: Thousand
    slow: SlowSample
    load_end: float = 0.0

    @property
    def passed(self) -> bool:
        return self.tiny.passed and self.thousand.passed and self.slow.passed


def run(tasks: int = 1000, task_seconds: float = 2.0, keep: bool = False) -> Result:
    from benchlib import load1

    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="slurm-", dir=CACHE_ROOT))
    m, date = machine(), utc_now()
    try:
        with Cluster() as cluster:
            print(f"bench_slurm: {cluster.where}; run folders under {base}", file=sys.stderr,
                  flush=True)
            tiny = run_tiny(cluster, base)
            slow = run_slow_sample(cluster, base)
            print(f"bench_slurm: slow sample: {slow}", file=sys.stderr, flush=True)
            thousand = run_thousand(cluster, base, tasks, task_seconds)
            print(f"bench_slurm: thousand: {thousand}", file=sys.stderr, flush=True)
            return Result(m, date, cluster.where, cluster.slurm_version(), tiny, thousand,
                          slow, load1())
    finally:
        if keep:
            print(f"bench_slurm: run folders kept at {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _ok(flag: bool) -> str:
    return "**PASS**" if flag else "**FAIL**"


def markdown(r: Result) -> str:
    t, h, s = r.tiny, r.thousand, r.slow
    tasks_ok = h.labeled == h.tasks and h.failed == 0 and len(h.calls_twice) <= h.in_flight
    longest = max(h.element_run_s, default=float("nan"))
    work = max(h.element_work_s, default=float("nan"))
    per_iteration = ", ".join(f"iteration {i}: {n}" for i, n in t.jobs.items())
    lines = [
        f"- Date: {r.date}",
        f"- Machine: {r.machine.line()}; load average {r.load_end:.2f} at the end (other "
        "benchmarks ran beside it)",
        f"- Cluster: {r.where}; {r.version}",
        "- Jobs are Slurm jobs with each array element counted; times from the submission "
        "until the last job of the run is over (every job records its successors first).",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
        f"| tiny example (`examples/tiny.yaml`, iterations 0-1) through `smallcell submit`: "
        f"at most 12 Slurm jobs per iteration | {per_iteration} "
        f"| {_ok(max(t.jobs.values(), default=99) <= 12)} |",
        f"| ... wall time within 3x of `smallcell iter` (`make iter`) on the same machine "
        f"| submit {' / '.join(f'{x:.1f}' for x in t.submit_s)} s (last summary at "
        f"{' / '.join(f'{x:.1f}' for x in t.summary_s)} s), iter "
        f"{' / '.join(f'{x:.1f}' for x in t.local_s)} s: **{t.ratio:.1f}x** (medians); "
        f"summaries {'equal' if t.same else 'DIFFERENT'} | {_ok(t.ratio <= 3 and t.same)} |",
        f"| {h.tasks} label tasks of {h.task_seconds:g} s (stand-in), `element_minutes: 1`: "
        f"about {h.ideal:.0f} elements (the work over the target) | {h.elements} elements "
        f"of up to {h.per_element} tasks | {_ok(h.elements <= 1.25 * h.ideal + 1)} |",
        f"| ... each element within its target ({h.target_s:.0f} s) | longest {longest:.0f} "
        f"s by Slurm's clock (whole seconds, start-up included), {work:.1f} s of labeling "
        f"| {_ok(longest <= h.target_s)} |",
        f"| ... nothing lost or run twice | {h.labeled} labeled, {h.failed} failed; labeled "
        f"twice: {', '.join(h.calls_twice) or 'none'} | {_ok(tasks_ok)} |",
        f"| ... resubmission after a killed element | element {h.killed} cancelled: "
        f"{h.resubmitted} tasks resubmitted in {h.resubmit_elements} element(s) "
        f"({h.resubmit_estimate}); {h.wall_s:.0f} s in all | "
        f"{_ok(h.resubmitted > 0 and tasks_ok)} |",
        f"| next iteration's explore starts before the error sample's labels finish (tiny "
        f"to iteration 2, iteration 1's sample elements sleeping {s.sleep} s) | iteration "
        f"2's explore started at {s.explore2_start - s.t0:.0f} s, iteration 1's sample "
        f"labels ended at {s.sample_end - s.t0:.0f} s and were measured at "
        f"{s.measured - s.t0:.1f} s; iteration 2's summary at {s.summary2 - s.t0:.1f} s; "
        f"iteration 1's summary written {'with the sample pending, ' if s.pending_seen else ''}"
        f"completed {'equal to' if s.completed else 'DIFFERENT from'} the local loop's | "
        f"{_ok(s.passed)} |",
        "",
        f"Per stage (`make status`), tiny iteration 0: {t.tally.get(0, '-')}; iteration 1: "
        f"{t.tally.get(1, '-')}.",
        "",
        "Before issue 21 the tiny example took 150 s and 226 Slurm jobs on this machine "
        "(197 s in the issue): one label element per task, so iteration 1's 200 "
        "error-sample labels alone were 200 jobs, about 20x `make iter`, and training "
        "waited for the study. With elements sized by time each array of cheap labels is "
        f"one job, and what is left of the {t.ratio:.1f}x is the chain's hops: 7 jobs one "
        "after another (select, label, collect+train; explore, select, label, "
        "collect+train), each about a second of Slurm's scheduling and a second or more "
        "of Python start-up, against `make iter`'s one process. The stand-in's elements "
        f"labeled for {min(h.element_work_s, default=0):.1f}-{work:.1f} s each; the rest "
        "of their length is their start-up (bash, Python, imports), which grows when many "
        "start at once on a busy node: budgeted at "
        f"{slurm.ELEMENT_START_SECONDS:g} s of each target. One job per task, as before "
        "issue 21, would have been 1,001 Slurm jobs for them.",
    ]
    notes = h.notes
    if notes:
        lines += ["", "Problems: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--stand-in"]:  # the label stage's launcher in the `thousand` case
        return stand_in(float(argv[1]), argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--task-seconds", type=float, default=2.0)
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    args = p.parse_args(argv)
    res = run(args.tasks, args.task_seconds, args.keep)
    text = markdown(res)
    print(text)
    if not args.no_write:
        from benchlib import write_sections

        write_sections({"slurm": (TITLE, text)})
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
