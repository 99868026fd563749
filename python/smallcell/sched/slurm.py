"""SLURM: job arrays chained by dependencies, their records, states and cancellation.

DESIGN.md section 4. Per iteration a handful of submissions, whatever the number of tasks:

    explore array (one element per MD run, or a slice of runs)      [iteration i > 0]
      └─ afterany ─► select job: checks the runs, selects, writes the label task lists,
                       ├─ label array (the training labels, elements sized by time)
                       │    └─ afterany ─► collect+train job: checks the tasks, failure
                       │         policy, collect, train, summary, then the next iteration
                       └─ sample-label array (the error sample's labels, sized alike)
                            └─ afterany ─► sample job: the study's errors, filled into
                                 the summary when it is already written

The error sample runs beside the training labels and never delays the next iteration,
unless the stop rule reads it (stop.rule accuracy, stop.metric sample): then its tasks are
part of the label array and the collect+train job measures them, as the local loop does.

An array element runs a slice of the tasks one after another: as many as fit in
slurm.element_minutes by the tasks' expected duration (measured on earlier tasks of the
same kind and size, jobs.py), so 1,000 tasks of 2 s are 40 one-minute elements, not
1,000 jobs each paying a queue wait and a Python start-up.

Every dependency is `afterany`, never `afterok`: a failed or killed element must not leave
its dependent pending forever (DependencyNeverSatisfied). Instead the dependent job checks
the markers itself: missing runs or tasks are resubmitted as a new array of just those,
with the checking job again after it, until a round finishes none of them `resubmit` times
in a row; then the chain stops with a message in `iter/<i>/stopped`.

This module knows the scheduler only: sbatch scripts from templates/slurm/, sbatch/squeue/
scancel, `iter/<i>/jobs.json` (every submission: the source of `status` and `cancel`), how
tasks are sliced into elements (given their expected duration) and when to resubmit. It
never imports stages or engines (jobs start stages through the command line, `bin/smallcell
job ...`), and it imports only the standard library at module level so that `smallcell
status` stays fast.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallcell.errors import SmallcellError
from smallcell.state import RunPaths, atomic_write_json, atomic_write_text, flocked, read_json

REPO = Path(__file__).resolve().parents[3]
SMALLCELL = REPO / "bin" / "smallcell"
TEMPLATE_DIR = REPO / "templates" / "slurm"

JOBS = "jobs.json"  # iter/<i>/jobs.json: every submission of the iteration
SLURM_DIR = "slurm"  # iter/<i>/slurm/: scripts, task lists, job logs
CANCELLED = "slurm.cancelled"  # iter/slurm.cancelled: `make cancel` was run; jobs exit
CHAIN_LOCK = ".chain.lock"  # iter/.chain.lock: one checking job of the chain at a time
STAGES = ("explore", "select", "label", "train", "sample-label", "sample", "checkpoint",
          "pilot")
ARRAY_STAGES = ("explore", "label", "sample-label")
# What `status` calls each job (the train job also collects).
SHOWN = {"explore": "explore", "select": "select", "label": "label",
         "train": "collect+train", "sample-label": "sample labels", "sample": "error sample",
         "checkpoint": "per-stage validation", "pilot": "pilot"}
# The slurm.<section> whose resources a stage's jobs get, and the template they run, where
# not their own: the sample's labels run the labeler like the training labels, the sample
# job runs the trainer's error check like the collect+train job, the per-stage validation
# (MD, labels and errors in one allocation, as the pilot runs the final validation) gets
# the pilot's resources.
SECTION = {"sample-label": "label", "sample": "train", "checkpoint": "pilot"}
TEMPLATE = {"sample-label": "label"}
# An element's own start: bash, Python and imports, up to 8.5 s measured when 16 elements
# start together on a busy 2-core node (BENCHMARKS.md): budgeted out of its target length.
ELEMENT_START_SECONDS = 10.0
# Job states after which a job (or an array element) never changes again.
TERMINAL = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
})
SHORT = {"PENDING": "PD", "RUNNING": "R", "COMPLETED": "CD", "COMPLETING": "CG",
         "CONFIGURING": "CF", "FAILED": "F", "CANCELLED": "CA", "TIMEOUT": "TO",
         "NODE_FAIL": "NF", "PREEMPTED": "PR", "BOOT_FAIL": "BF", "DEADLINE": "DL",
         "OUT_OF_MEMORY": "OOM", "SUSPENDED": "S", "REQUEUED": "RQ"}
# sbatch errors worth a retry: the controller restarting or busy. Anything else (bad
# partition, bad option) fails at once with sbatch's own message.
TRANSIENT = ("Unable to contact slurm controller", "Socket timed out",
             "temporarily unavailable", "Slurm temporarily unable", "try again",
             "Transport endpoint is not connected", "Connection refused",
             "Zero Bytes were transmitted or received")
SBATCH_RETRY_SECONDS = 180.0  # a controller restart takes seconds; a failover minutes
QUERY_TIMEOUT = 0.5  # squeue for `status`: a slow controller must not make status slow


# ------------------------------------------------------------------------------- slices


def elements_for(n_tasks: int, max_array_size: int, tasks_per_element: int | None,
                 task_seconds: float | None = None, target_seconds: float | None = None
                 ) -> int:
    """How many array elements run `n_tasks` tasks, never more than max_array_size (then
    each element takes more tasks) nor than the tasks:

    - `tasks_per_element` (an explicit override): ceil(n / tasks_per_element);
    - else with the tasks' expected duration: as few as keep each element within
      `target_seconds` (its own start-up included): elements of at most
      floor((target - start) / task) tasks;
    - else one per task (explore runs: each is long, they run in parallel).

    1,400 tasks at max 50 are 50 x 28; 1,000 tasks of 2 s in 1-minute elements are 40."""
    if n_tasks <= 0:
        return 0
    if tasks_per_element is not None:
        want = -(-n_tasks // tasks_per_element)
    elif task_seconds is not None and target_seconds is not None:
        budget = max(target_seconds - ELEMENT_START_SECONDS, 1.0)
        fits = n_tasks if task_seconds <= 0 else max(1, int(budget // task_seconds))
        want = -(-n_tasks // fits)
    else:
        want = n_tasks
    return max(1, min(want, max_array_size, n_tasks))


def element_target(slurm: Mapping[str, Any]) -> float:
    """Seconds one label element should last: slurm.element_minutes, within the label
    walltime minus the margin at which an element stops taking tasks."""
    from smallcell.config import slurm_seconds

    room = slurm_seconds(slurm["label"]["time"]) - float(slurm["walltime_margin"])
    return max(min(60.0 * float(slurm["element_minutes"]), room), 1.0)


def element_slice(n_tasks: int, n_elements: int, element: int) -> range:
    """Positions in the task list that element `element` of `n_elements` runs: contiguous,
    balanced (sizes differ by at most one), together exactly 0..n_tasks-1."""
    if not 0 <= element < n_elements:
        raise SmallcellError(f"array element {element} outside 0..{n_elements - 1}")
    base, extra = divmod(n_tasks, n_elements)
    start = element * base + min(element, extra)
    return range(start, start + base + (element < extra))


def array_spec(n_elements: int, throttle: int) -> str:
    """sbatch --array value: 0-(n-1), with %throttle when it limits anything."""
    spec = "0" if n_elements == 1 else f"0-{n_elements - 1}"
    return f"{spec}%{throttle}" if 0 < throttle < n_elements else spec


# ------------------------------------------------------------------------ resubmission


@dataclass(frozen=True)
class Decision:
    """What a checking job does about the runs or tasks its array left without a marker."""

    action: str  # "proceed" | "resubmit" | "stop"
    stalls: int  # rounds in a row that finished none of their tasks
    reason: str = ""


def resubmit_decision(n_missing: int, last_array: Mapping[str, Any] | None,
                      limit: int) -> Decision:
    """Proceed when nothing is missing; else resubmit the missing ones, unless `limit`
    rounds in a row finished none of their tasks (a task that kills every element that
    runs it, a broken node setup) or resubmission is off (limit 0).

    A round that finished some tasks (elements stopped at their walltime margin, one
    element killed among many) resets the count, so a long label stage moves on through
    as many short allocations as it needs, while a hopeless one stops after `limit`."""
    if n_missing == 0:
        return Decision("proceed", 0)
    if last_array is None:  # nothing was submitted for them yet (or its record was lost)
        return Decision("resubmit", 0, "not submitted yet")
    progressed = n_missing < int(last_array["n_tasks"])
    stalls = 0 if progressed else int(last_array.get("stalls", 0)) + 1
    if limit == 0:
        return Decision("stop", stalls, "slurm.resubmit is 0")
    if stalls > limit:
        return Decision("stop", stalls, f"{limit} resubmission(s) in a row finished none "
                        "of them (slurm.resubmit)")
    return Decision("resubmit", stalls,
                    "the last round finished some" if progressed else f"attempt {stalls} of "
                    f"{limit} without progress")


# ----------------------------------------------------------------------------- records


def jobs_path(paths: RunPaths, i: int) -> Path:
    return paths.it(i) / JOBS


def read_jobs(paths: RunPaths, i: int) -> list[dict[str, Any]]:
    """The submissions recorded for iteration `i`, oldest first ([] when none)."""
    path = jobs_path(paths, i)
    if not path.exists():
        return []
    return list(read_json(path).get("jobs", []))


def record_job(paths: RunPaths, i: int, record: Mapping[str, Any]) -> None:
    """Append one submission to iter/<i>/jobs.json (append by atomic rewrite: a reader
    never sees half a file). Under a lock of its own: the collect+train job and the error
    sample's job of one iteration may both submit at the same moment."""
    with flocked(paths.it(i) / SLURM_DIR / ".jobs.lock", f"iter/{i}/jobs.json", 60.0):
        jobs = [*read_jobs(paths, i), dict(record)]
        atomic_write_json(jobs_path(paths, i), {"jobs": jobs})


def last_record(jobs: Sequence[Mapping[str, Any]], stage: str) -> Mapping[str, Any] | None:
    for rec in reversed(jobs):
        if rec["stage"] == stage:
            return rec
    return None


def superseded(jobs: Sequence[Mapping[str, Any]], stage: str, job_id: str | None) -> bool:
    """True when a later submission of the same stage exists than job `job_id`: this job
    is a stale duplicate (a retried sbatch, a chain resubmitted after a cancel) and must
    not continue the chain a second time."""
    if not job_id:
        return False
    ids = [str(r["job_id"]) for r in jobs if r["stage"] == stage]
    return job_id in ids and ids[-1] != job_id


def cancelled(paths: RunPaths) -> bool:
    return (paths.iter_root / CANCELLED).exists()


# --------------------------------------------------------------------------- scripts


def _quote(value: Any) -> str:
    """|q: one shell word. Newlines and NULs are refused, never escaped: no config value
    may end or start a shell line."""
    text = str(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        raise SmallcellError(f"refusing to put {text!r} into a job script: it spans lines")
    return shlex.quote(text)


def _line(value: Any) -> str:
    """|line: a setup line (shell by design, like vasp.setup), but only one line."""
    text = str(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        raise SmallcellError(f"refusing setup line {text!r}: it spans lines")
    return text


def _sbatch_word(value: Any) -> str:
    """|sbatch: an #SBATCH option, read by sbatch and split at whitespace: one word."""
    text = str(value)
    if not text or any(c.isspace() for c in text) or "\x00" in text:
        raise SmallcellError(f"refusing #SBATCH option {text!r}: it must be one word")
    return text


def _environment() -> Any:
    import jinja2  # lazy: `status` imports this module and must stay light

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # a shell script, not HTML: quoting is |q
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = _quote
    env.filters["line"] = _line
    env.filters["sbatch"] = _sbatch_word
    return env


def sbatch_options(slurm: Mapping[str, Any], stage: str) -> list[str]:
    """The #SBATCH options of a stage: its resources, the section's defaults for what the
    stage leaves null, then slurm.extra and the stage's extra options."""
    st = slurm[SECTION.get(stage, stage)]
    opts = []
    for name in ("partition", "account", "qos"):
        value = st[name] if st[name] is not None else slurm[name]
        if value is not None:
            opts.append(f"--{name}={value}")
    opts += [f"--time={st['time']}", f"--nodes={st['nodes']}", f"--ntasks={st['ntasks']}",
             f"--cpus-per-task={st['cpus_per_task']}"]
    if st["mem"] is not None:
        opts.append(f"--mem={st['mem']}")
    return [*opts, *slurm["extra"], *st["extra"]]


def render_script(stage: str, slurm: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """The sbatch script of one job of `stage` (templates/slurm/<stage>.sbatch.j2).

    `slurm` is the run config's slurm section; `context` holds the job's own values
    (run_dir, iteration, upto, config, task_list, jobs, title)."""
    from smallcell.config import slurm_seconds

    st = slurm[SECTION.get(stage, stage)]
    template = f"{TEMPLATE.get(stage, stage)}.sbatch.j2"
    values = {
        "template": template,
        "sbatch_options": sbatch_options(slurm, stage),
        "time_seconds": slurm_seconds(st["time"]),
        "margin_seconds": round(slurm["walltime_margin"]),
        "setup": [*slurm["setup"], *st["setup"]],
        "launcher": list(st["launcher"]),
        "smallcell": str(SMALLCELL),
        **context,
    }
    return _environment().get_template(template).render(**values)


# ------------------------------------------------------------------------ slurm calls


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def sbatch(argv: Sequence[str], retry_seconds: float = SBATCH_RETRY_SECONDS) -> str:
    """Run `sbatch --parsable ARGV`; return the job id. Retries while the controller is
    unreachable (a restart must not break a chain whose job is submitting its successor);
    fails at once, with sbatch's message, on anything else."""
    cmd = ["sbatch", "--parsable", *argv]
    deadline = time.monotonic() + retry_seconds
    delay = 1.0
    while True:
        try:
            res = _run(cmd, timeout=120)
        except FileNotFoundError:
            raise SmallcellError("sbatch not found: is this a SLURM cluster (or is its "
                                 "module loaded)?") from None
        except subprocess.TimeoutExpired:
            raise SmallcellError(f"sbatch did not answer within 120 s: {shlex.join(cmd)}; "
                                 "check `make status` before submitting again") from None
        out = res.stdout.strip()
        if res.returncode == 0 and out.split(";")[0].isdigit():
            return out.split(";")[0]
        message = (res.stderr.strip() or out or f"exit {res.returncode}")
        if any(t.lower() in message.lower() for t in TRANSIENT) and \
                time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
            continue
        raise SmallcellError(f"sbatch failed: {message}\n  command: {shlex.join(cmd)}")


def query_states(job_ids: Iterable[str], timeout: float = QUERY_TIMEOUT
                 ) -> dict[str, dict[str, str]] | None:
    """{job id: {element ("" for a plain job): state}} of the jobs the controller still
    knows (finished ones for MinJobAge), from one `squeue` call; None when squeue is
    missing, fails or is slower than `timeout` (states are then unknown, not guessed)."""
    ids = sorted({str(j) for j in job_ids}, key=lambda j: (len(j), j))
    if not ids:
        return {}
    try:
        res = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids),
                    "-o", "%F|%K|%T"], timeout=timeout)
    except (FileNotFoundError, subprocess.TimeoutExpired, OSError):
        return None
    if res.returncode != 0:
        # squeue fails only when it knows none of the ids (all purged): nothing is active
        return {} if "Invalid job id" in res.stderr + res.stdout else None
    states: dict[str, dict[str, str]] = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        job, task, state = parts
        task = "" if task in ("N/A", "4294967294") else task
        states.setdefault(job, {})[task] = state.split()[0]
    return states


def is_active(states: Mapping[str, str] | None) -> bool:
    """A job (all its elements) that may still run: any element not in a final state."""
    return bool(states) and any(s not in TERMINAL for s in states.values())


def summarize_states(states: Mapping[str, str] | None) -> str:
    """`R2 PD8 CD5` for an array, `R` for a plain job, `?` when unknown (purged)."""
    if not states:
        return "?"
    counts: dict[str, int] = {}
    for s in states.values():
        short = SHORT.get(s, s)
        counts[short] = counts.get(short, 0) + 1
    if list(states) == [""]:
        return next(iter(counts))
    return " ".join(f"{k}{v}" for k, v in counts.items())


def recorded_ids(paths: RunPaths, iterations: Iterable[int] | None = None) -> list[str]:
    """Job ids of every recorded submission (of the given iterations)."""
    its = paths.iterations() if iterations is None else iterations
    return [str(r["job_id"]) for i in its for r in read_jobs(paths, i)]


def active_jobs(paths: RunPaths) -> list[str] | None:
    """Recorded jobs that are still pending or running; None when squeue cannot tell."""
    ids = recorded_ids(paths)
    states = query_states(ids, timeout=10.0)
    if states is None:
        return None
    return [j for j in ids if is_active(states.get(j))]


def cancel(paths: RunPaths, wait: float = 60.0) -> list[str]:
    """Cancel every job of this run and wait (up to `wait` s) until none is active, so that
    `make submit` may follow at once. A flag file goes first, so that a job starting or
    about to submit its successor stops by itself; scancel is repeated while a job of the
    run is active (one may have submitted a successor between our look and our scancel)."""
    if not recorded_ids(paths):
        return []  # never submitted: nothing to cancel, no flag to leave behind
    atomic_write_text(paths.iter_root / CANCELLED, f"cancelled at {time.time():.0f}\n")
    cancelled_ids: list[str] = []
    deadline = time.monotonic() + wait
    signalled: dict[str, float] = {}
    while True:
        ids = recorded_ids(paths)
        states = query_states(ids, timeout=10.0)
        if states is None:  # no squeue: cancel every recorded job once, blindly
            targets = [j for j in ids if j not in signalled]
            if targets:
                _scancel(targets)
            return targets
        active = [j for j in ids if is_active(states.get(j))]
        if not active or time.monotonic() > deadline:
            return cancelled_ids
        # again every few seconds for a job that ignores it (KillWait), at once for new ones
        targets = [j for j in active if time.monotonic() - signalled.get(j, -1e9) > 5.0]
        if targets:
            _scancel(targets)
            for j in targets:
                signalled[j] = time.monotonic()
                if j not in cancelled_ids:
                    cancelled_ids.append(j)
        time.sleep(0.5)


def _scancel(ids: Sequence[str]) -> None:
    try:
        _run(["scancel", *ids], timeout=60)
    except FileNotFoundError:
        raise SmallcellError("scancel not found: is this a SLURM cluster?") from None


# ----------------------------------------------------------------------------- submit


@dataclass
class Chain:
    """Submits the jobs of one run: knows the run folder, the run's config file (whose
    slurm section is read at every submission), and how far the chain goes."""

    root: Path
    config: Path
    upto: int
    slurm: Mapping[str, Any]
    submitted_by: str = "submit"

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.root)

    def _folder(self, i: int) -> Path:
        folder = self.paths.it(i) / SLURM_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _count(self, i: int, stage: str) -> int:
        return sum(r["stage"] == stage for r in read_jobs(self.paths, i)) + 1

    def _submit(self, i: int, stage: str, context: Mapping[str, Any], *,
                array: str | None = None, after: str | None = None,
                extra_record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """sbatch one job (or array) of `stage` after the jobs `after` names (ids joined
        by ':'), and record it in iter/<i>/jobs.json."""
        if cancelled(self.paths):
            raise SmallcellError(f"{self.paths.iter_root / CANCELLED}: this run was "
                                 "cancelled; `make submit` to start again")
        n = self._count(i, stage)
        folder = self._folder(i)
        name = f"{stage}.{n}"
        script = folder / f"{name}.sbatch"
        text = render_script(stage, self.slurm, {
            "run_dir": str(self.root), "iteration": i, "upto": self.upto,
            "config": str(self.config), **context})
        atomic_write_text(script, text)
        log = folder / (f"{name}-%A_%a.out" if array else f"{name}-%j.out")
        argv = [f"--job-name=smallcell.{i}.{stage}", f"--output={log}",
                f"--chdir={self.root}"]
        if array:
            argv.append(f"--array={array}")
        if after:
            argv.append(f"--dependency=afterany:{after}")
        argv.append(str(script))
        job_id = sbatch(argv)
        record = {"stage": stage, "job_id": job_id, "array": array, "after": after,
                  "time": time.time(), "command": ["sbatch", "--parsable", *argv],
                  "script": str(script.relative_to(self.root)),
                  "log": str(log.relative_to(self.root)),
                  "submitted_by": self.submitted_by, **(extra_record or {})}
        record_job(self.paths, i, record)
        return record

    def submit_array(self, i: int, stage: str, tasks: Sequence[int], *, stalls: int = 0,
                     after: str | None = None, task_seconds: float | None = None,
                     estimate: str = "") -> dict[str, Any]:
        """An array over `tasks` (run or task numbers): the task list goes to
        iter/<i>/slurm/<stage>.<n>.tasks.json, each element runs its slice of it. With
        `task_seconds` (a task's expected duration; `estimate` says where it comes from)
        the elements are sized by slurm.element_minutes, else one per task."""
        assert stage in ARRAY_STAGES
        sl = self.slurm
        target = element_target(sl) if task_seconds is not None else None
        m = elements_for(len(tasks), sl["max_array_size"], sl["tasks_per_element"],
                         task_seconds, target)
        per = -(-len(tasks) // m)
        n = self._count(i, stage)
        list_name = f"{stage}.{n}"
        atomic_write_json(self._folder(i) / f"{list_name}.tasks.json",
                          {"tasks": list(tasks), "elements": m})
        sizing: dict[str, Any] = {"tasks_per_element": per}
        if task_seconds is not None:
            sizing.update(task_seconds=round(task_seconds, 3), estimate=estimate,
                          element_target_seconds=target,
                          element_seconds=round(per * task_seconds, 1))
        return self._submit(i, stage, {"task_list": list_name,
                                       "title": f"{SHOWN[stage]} array of iteration {i}: "
                                                f"{len(tasks)} tasks in {m} elements"},
                            array=array_spec(m, sl["throttle"]), after=after,
                            extra_record={"n_tasks": len(tasks), "elements": m,
                                          "stalls": stalls, "tasks": f"{list_name}.tasks.json",
                                          **sizing})

    def submit_job(self, i: int, stage: str, *, after: str | None = None) -> dict[str, Any]:
        """The select, collect+train or error-sample job of iteration `i` (after the
        arrays `after` names)."""
        assert stage in ("select", "train", "sample")
        return self._submit(i, stage, {"title": f"{SHOWN[stage]} job of iteration {i}"},
                            after=after)

    def submit_checkpoint(self, i: int, jobs: int) -> dict[str, Any]:
        """The per-stage validation of iteration `i`'s potential (stages/checkpoint.py),
        beside the chain: nothing waits for it."""
        return self._submit(i, "checkpoint", {"jobs": jobs, "title": f"per-stage validation "
                                              f"of iteration {i}'s potential"})

    def submit_pilot(self, i: int, jobs: int, *, after: str | None = None) -> dict[str, Any]:
        """The pilot job (recorded with iteration `i`, the first one it will work on)."""
        return self._submit(i, "pilot", {"jobs": jobs, "title": f"pilot job: iterations "
                                         f"{i}..{self.upto} in one allocation"}, after=after)


def task_list(paths: RunPaths, i: int, name: str) -> tuple[list[int], int]:
    """(tasks, elements) of a task list written by Chain.submit_array."""
    data = read_json(paths.it(i) / SLURM_DIR / f"{name}.tasks.json")
    return [int(k) for k in data["tasks"]], int(data["elements"])


# ----------------------------------------------------------------------------- status


def job_lines(paths: RunPaths, iterations: Sequence[int], settled: set[int]
              ) -> tuple[dict[int, list[str]], dict[int, bool | None]]:
    """Per iteration with records: a `jobs:` line, each submission's stage, id and array
    with its states (one squeue call for every iteration not `settled`; settled ones, whose
    jobs are all over, show their ids only), and the per-stage tally (tally_line); and per
    unsettled iteration with records, whether any of its jobs is still pending or running
    (None: squeue did not answer)."""
    records = {i: read_jobs(paths, i) for i in iterations}
    live = [str(r["job_id"]) for i, recs in records.items() if i not in settled for r in recs]
    states = query_states(live) if live else {}
    out: dict[int, list[str]] = {}
    active: dict[int, bool | None] = {}
    for i, recs in records.items():
        if not recs:
            continue
        if i not in settled:
            active[i] = None if states is None else any(
                is_active(states.get(str(r["job_id"]))) for r in recs)
        parts = []
        for r in recs:
            ident = f"{r['job_id']}" + (f"[{r['array']}]" if r.get("array") else "")
            text = f"{SHOWN.get(r['stage'], r['stage'])} {ident}"
            if i not in settled:
                text += " " + ("(state unknown: no answer from squeue)" if states is None else
                               summarize_states(states.get(str(r["job_id"]))))
            parts.append(text)
        out[i] = ["jobs: " + ", ".join(parts), tally_line(recs)]
    return out, active


def tasks_per_element(rec: Mapping[str, Any]) -> int:
    """The most tasks one element of an array record runs (older records: from counts)."""
    if rec.get("tasks_per_element"):
        return int(rec["tasks_per_element"])
    return -(-int(rec.get("n_tasks") or 0) // max(int(rec.get("elements") or 1), 1))


def tally_line(recs: Sequence[Mapping[str, Any]]) -> str:
    """Per stage of an iteration, the Slurm jobs submitted (each array element is a job:
    what queue policies count) and, for arrays, their tasks and tasks per element, e.g.
    `Slurm jobs: 5 = select 1, label 1 (12 tasks, 12/element, ~0.03 s each), ...`."""
    by_stage: dict[str, list[Mapping[str, Any]]] = {}
    for r in recs:
        by_stage.setdefault(r["stage"], []).append(r)
    parts = []
    total = 0
    for stage, rs in by_stage.items():
        n_jobs = sum(int(r.get("elements") or 1) for r in rs)
        total += n_jobs
        text = f"{SHOWN.get(stage, stage)} {n_jobs}"
        if stage in ARRAY_STAGES:
            per = sorted({tasks_per_element(r) for r in rs})
            span = f"{per[0]}" if len(per) == 1 else f"{per[0]}-{per[-1]}"
            tasks = sum(int(r.get("n_tasks") or 0) for r in rs)
            secs = [float(r["task_seconds"]) for r in rs if r.get("task_seconds") is not None]
            each = f", ~{secs[-1]:.2g} s each" if secs else ""
            text += f" ({tasks} tasks, {span}/element{each})"
        parts.append(text)
    return f"Slurm jobs: {total} = " + ", ".join(parts)


def environment_note() -> str:
    """Where the jobs' Slurm commands point (SLURM_CONF), for messages."""
    conf = os.environ.get("SLURM_CONF")
    return f" (SLURM_CONF={conf})" if conf else ""
