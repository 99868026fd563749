"""What each SLURM job runs (`bin/smallcell job ...`), and `submit` / `pilot` themselves.

Every job does one stage of one iteration with the very functions the local loop calls
(stages/*.py, loop.finish_iteration), so local and SLURM runs write identical folders;
then the job that ends a stage submits the next link of the chain (sched/slurm.py):

- `job explore` / `job label`: one array element, its slice of the runs or tasks, one
  after another; it stops taking new ones when SMALLCELL_DEADLINE (walltime minus
  slurm.walltime_margin) has passed. A failed or crashed task never stops the others.
- `job select`: checks the explore runs (resubmits the missing ones, or stops), aggregates
  them, selects, prepares the label task folders and submits the label array with the
  collect+train job after it, then the error sample's label array with the sample job
  after it (training first: it is what the next iteration waits for).
- `job collect-train`: checks the training label tasks (resubmits the missing ones, or
  stops), applies the failure policy, collects, trains, writes the summary and submits
  the next iteration, or ends the chain when converged or at --upto. It does not wait for
  the error sample, unless the stop rule reads it (stages/sample.py gates_training): then
  the sample's tasks are in its label array and it measures them first, as before.
- `job sample`: checks the error sample's tasks (resubmits the missing ones, or stops),
  measures the sample and, when the summary is already written, completes it
  (loop.complete_sample: the same numbers the local loop writes).
- `job pilot`: the whole local loop (`smallcell iter`) inside one allocation, interrupted
  before the walltime and resubmitted to go on from the folders.

Label arrays are sized by time: each element runs as many tasks as their expected duration
(stages/label.py expected_seconds) fits in slurm.element_minutes.

Locks: every job holds the run lock shared (no `make iter` beside a chain); the select and
collect+train jobs also hold the chain lock (one checking job at a time), while the error
sample's elements and job, which run beside them, only take the sample's own lock around
measuring it and writing the summary (iter/<i>/slurm/.sample.lock), so a late study and the
summary never miss each other.

Why a stop is written to `iter/<i>/stopped` (the sample job's: `iter/<i>/sample/stopped`):
nobody reads batch logs while waiting for a chain; `status` shows it and the next `submit`
clears it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallcell import protocol, runconfig
from smallcell.config import Config, load_config
from smallcell.errors import DiskFull, SmallcellError
from smallcell.sched import slurm
from smallcell.stages.common import Iteration, progress
from smallcell.state import (
    STOPPED,
    RunLock,
    RunPaths,
    atomic_write_json,
    clear_stopped,
    flocked,
    is_done,
    mark_stopped,
    read_json,
    sweep_debris,
)

# Stage modules are imported where they are used: an array element imports only its own
# stage (a label element starts in ~0.3 s instead of ~1 s; a 1,000-task stage pays it
# once per element).

LOCK_WAIT = 600.0  # seconds a job waits for the run lock (its submitter may still be exiting)
STAGE_SECONDS = "stage_seconds.json"  # iter/<i>/slurm/: the select job's timings
SAMPLE_LOCK = ".sample.lock"  # iter/<i>/slurm/.sample.lock: measuring the sample, summary


def job_id() -> str | None:
    """This job's id (the array's id for an element), None outside SLURM."""
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")


def deadline() -> float:
    """When to stop taking new tasks (epoch seconds; set by the job script)."""
    try:
        return float(os.environ["SMALLCELL_DEADLINE"])
    except (KeyError, ValueError):
        return float("inf")


def _chain(root: Path, config: str | os.PathLike, upto: int, by: str) -> tuple[
        slurm.Chain, Config]:
    cfg = load_config(config)
    path = Path(config).resolve()
    return slurm.Chain(root, path, upto, cfg["slurm"], by), cfg


def first_incomplete(paths: RunPaths, upto: int) -> tuple[int | None, str]:
    """The first iteration without a summary (None, and why, when there is nothing to do)."""
    from smallcell import loop

    for i in range(upto + 1):
        if not paths.summary(i).exists():
            if i > 0 and not paths.summary(i - 1).exists():
                raise SmallcellError(f"{paths.summary(i - 1)}: missing")
            return i, ""
        if loop.finished(read_json(paths.summary(i))):
            return None, f"converged at iteration {i}"
    return None, f"iterations 0..{upto} are complete"


def pilot_work(paths: RunPaths, upto: int, cfg: Config) -> tuple[int | None, str]:
    """What a pilot job has left: the first incomplete iteration, or, once the loop is
    over, the large-cell validation when the config asks for one and it is not done (the
    pilot's `smallcell iter` runs it); None and why when nothing is left."""
    from smallcell.stages import validate
    from smallcell.status import finished

    i, why = first_incomplete(paths, upto)
    if i is None and validate.wanted(cfg) and not is_done(validate.folder(paths.root)):
        done = [k for k in paths.iterations() if paths.summary(k).exists()]
        if done and finished(read_json(paths.summary(done[-1]))):
            return done[-1], ""
    return i, why


# ---------------------------------------------------------------------------- submit


def _check_queue(paths: RunPaths) -> None:
    active = slurm.active_jobs(paths)
    if active is None:
        raise SmallcellError("squeue did not answer: cannot tell whether this run's jobs are "
                             f"still queued{slurm.environment_note()}; try again")
    if active:
        raise SmallcellError(f"this run still has jobs in the queue ({', '.join(active)}): "
                             "wait for them (`make status`) or `make cancel` first")


def start_iteration(it: Iteration, chain: slurm.Chain) -> list[dict[str, Any]]:
    """Submit what iteration `it` needs from where its folders stand: an explore array of
    the runs without a marker (i > 0), and the select job after it. The select job goes
    on from there whatever is already done, so this is also how a chain resumes."""
    from smallcell.stages import explore

    records = []
    after = None
    if it.i > 0 and not is_done(it.stage("explore")):
        runs = explore.write_plan(it)
        todo = [r.index for r in runs if not is_done(explore.run_dir(it, r))]
        if todo:
            records.append(chain.submit_array(it.i, "explore", todo))
            after = records[-1]["job_id"]
    records.append(chain.submit_job(it.i, "select", after=after))
    return records


def start_sample(it: Iteration, chain: slurm.Chain) -> list[dict[str, Any]]:
    """Submit the error sample of iteration `it` from where its folders stand: an array of
    its label tasks without a marker, sized by time, and the sample job after it."""
    from smallcell.stages import label

    records = []
    todo = label.missing(it, which="sample")
    after = None
    if todo:
        records.append(_submit_labels(it, chain, "sample-label", todo))
        after = records[-1]["job_id"]
    records.append(chain.submit_job(it.i, "sample", after=after))
    return records


def _submit_labels(it: Iteration, chain: slurm.Chain, stage: str, todo: list[int],
                   stalls: int = 0) -> dict[str, Any]:
    """A label or sample-label array over `todo`, its elements sized by the tasks'
    expected duration (label.expected_seconds)."""
    from smallcell.stages import label

    est = label.expected_seconds(it, todo, chain.slurm["first_task_seconds"])
    return chain.submit_array(it.i, stage, todo, stalls=stalls, task_seconds=est.seconds,
                              estimate=est.source)


def pending_samples(paths: RunPaths) -> list[int]:
    """Complete iterations whose error sample is not measured yet (summary.json says
    sample_pending): a chain cut short left them; `submit` and `make iter` finish them."""
    out = []
    for i in paths.iterations():
        path = paths.summary(i)
        if path.exists() and read_json(path).get("sample_pending"):
            out.append(i)
    return out


def pending_checkpoints(paths: RunPaths, cfg: Config) -> list[int]:
    """Complete iterations whose per-stage validation is due and not done (a job of it
    may still run, or it stopped)."""
    from smallcell.stages import checkpoint

    out = []
    for i in paths.iterations():
        path = paths.summary(i)
        if (path.exists() and checkpoint.due(cfg, read_json(path))
                and not is_done(checkpoint.folder(paths.root, i))):
            out.append(i)
    return out


def _after_studies(paths: RunPaths, cfg: Config) -> str | None:
    """The latest sample job of every iteration whose study is pending, and the latest
    job of every per-stage validation not done (':'-joined), for a pilot job to start
    after: its `smallcell iter` needs the run to itself."""
    ids = []
    for stage, its in (("sample", pending_samples(paths)),
                       ("checkpoint", pending_checkpoints(paths, cfg))):
        for j in its:
            rec = slurm.last_record(slurm.read_jobs(paths, j), stage)
            if rec is not None:
                ids.append(str(rec["job_id"]))
    return ":".join(ids) or None


def _resume_samples(paths: RunPaths, chain: slurm.Chain, cfg: Config
                    ) -> list[dict[str, Any]]:
    """Submit again what a cut-short chain left beside it: error samples not measured and
    per-stage validations not done."""
    from smallcell.stages import checkpoint

    records = []
    for j in pending_samples(paths):
        it = Iteration.open(paths.root, j)
        clear_stopped(it.stage("sample"))
        records += start_sample(it, chain)
    for j in pending_checkpoints(paths, cfg):
        clear_stopped(checkpoint.folder(paths.root, j))
        records.append(chain.submit_checkpoint(j, cfg["slurm"]["pilot"]["cpus_per_task"]))
    return records


def submit(root: Path, config: str | os.PathLike, upto: int,
           change: bool = False) -> list[dict[str, Any]]:
    """`smallcell submit`: submit the chain from the first iteration without a summary and
    return at once. Refuses while jobs of this run are still queued (two chains on one
    folder would run the same tasks twice), and a config other than the run's unless
    `change` (runconfig.pin)."""
    from smallcell.engines.base import check_engines

    chain, cfg = _chain(root, config, upto, "submit")
    if cfg["engines"]["scheduler"] != "slurm":  # the command itself asks for SLURM
        print(f"note: {config} says engines.scheduler {cfg['engines']['scheduler']!r}; "
              "submitting to SLURM with the slurm: section's settings", file=sys.stderr)
    check_engines(cfg)
    paths = RunPaths(root)
    _check_queue(paths)  # first: the clearer message when the chain is still running
    with RunLock(paths, f"smallcell submit --upto {upto}"):
        _check_queue(paths)  # again under the lock: nothing can submit while we hold it
        runconfig.pin(root, cfg, change=change)
        (paths.iter_root / slurm.CANCELLED).unlink(missing_ok=True)
        samples = _resume_samples(paths, chain, cfg)  # studies a cut-short chain left unmeasured
        i, why = first_incomplete(paths, upto)
        if i is None:
            j, _ = pilot_work(paths, upto, cfg)
            if j is not None:  # the loop is over, its validation is not
                print("the loop is complete; submitting the large-cell validation")
                return [*samples, chain.submit_pilot(j, cfg["slurm"]["pilot"]["cpus_per_task"],
                                                     after=_after_studies(paths, cfg))]
            if not samples:
                print(f"nothing to submit: {why}")
            return samples
        it = protocol.open_iteration(root, i, cfg)
        clear_stopped(it.dir)
        return [*samples, *start_iteration(it, chain)]


def pilot(root: Path, config: str | os.PathLike, upto: int,
          change: bool = False) -> dict[str, Any] | None:
    """`smallcell pilot`: submit one job that runs the whole local loop (None: nothing to
    do); a config other than the run's only with `change` (runconfig.pin)."""
    chain, cfg = _chain(root, config, upto, "pilot")
    paths = RunPaths(root)
    _check_queue(paths)
    with RunLock(paths, f"smallcell pilot --upto {upto}"):
        _check_queue(paths)
        runconfig.pin(root, cfg, change=change)
        (paths.iter_root / slurm.CANCELLED).unlink(missing_ok=True)
        i, why = pilot_work(paths, upto, cfg)
        if i is None:
            print(f"nothing to submit: {why}")
            return None
        clear_stopped(paths.it(i))
        return chain.submit_pilot(i, cfg["slurm"]["pilot"]["cpus_per_task"])


# ------------------------------------------------------------------------- the jobs


def _skip(paths: RunPaths, i: int, stage: str) -> bool:
    """A job that must not act: the run was cancelled, or a later job of the same stage
    exists (this one is a stale duplicate)."""
    if slurm.cancelled(paths):
        print(f"smallcell: {paths.iter_root / slurm.CANCELLED} exists (make cancel): "
              "exiting without work", flush=True)
        return True
    if slurm.superseded(slurm.read_jobs(paths, i), stage, job_id()):
        print(f"smallcell: a later {stage} job of iteration {i} was submitted; this one "
              "(a stale duplicate) exits without work", flush=True)
        return True
    return False


def _guard(paths: RunPaths, i: int, stage: str, fn: Callable[[], int]) -> int:
    """Run a chain link; any error stops the chain with its message in iter/<i>/stopped
    (the sample job's in iter/<i>/sample/stopped: the chain itself goes on)."""
    try:
        return fn()
    except SmallcellError as exc:
        reason = str(exc)
    except Exception:
        reason = f"unexpected error in the {stage} job:\n{traceback.format_exc()}"
    return _stop(paths, i, stage, reason)


def _stop(paths: RunPaths, i: int, stage: str, reason: str) -> int:
    """Write why the chain (or the error sample's jobs) stopped beside the iteration, say
    it in the job log, exit 2."""
    log = f"; job log: iter/{i}/slurm/ (job {job_id()})" if job_id() else ""
    where = paths.stage(i, "sample") if stage == "sample" else paths.it(i)
    what = "the error sample's jobs" if stage == "sample" else "chain"
    try:
        mark_stopped(where, reason, stage=stage, job=job_id())
    except DiskFull as exc:  # no room for the record: the job log still says why
        log += f" (not recorded in {where.relative_to(paths.root)}/{STOPPED}: {exc})"
    print(f"smallcell: {what} stopped at iteration {i} ({stage}): {reason}{log}",
          file=sys.stderr, flush=True)
    return 2


def run_element(root: Path, stage: str, i: int, list_name: str, element: int) -> int:
    """`job explore|label`: this element's slice of the task list, one task after another.
    Exit 1 when a task raised (the checking job sees its missing marker), else 0."""
    paths = RunPaths(root)
    if stage == "explore":
        from smallcell.stages.explore import run_task as fn
    else:
        from smallcell.stages.label import run_task as fn
    with RunLock(paths, f"{stage} element", shared=True, wait=LOCK_WAIT):
        if slurm.cancelled(paths):
            print("smallcell: run cancelled (make cancel): exiting without work", flush=True)
            return 0
        tasks, n_elements = slurm.task_list(paths, i, list_name)
        mine = [tasks[p] for p in slurm.element_slice(len(tasks), n_elements, element)]
        it = Iteration.open(root, i)
        stop_at = deadline()
        errors = 0
        progress(it, stage, f"element {element}: {len(mine)} task(s) of {list_name}: "
                 f"{mine[:5]}{' ...' if len(mine) > 5 else ''}")
        for n, k in enumerate(mine):
            if time.time() >= stop_at:
                progress(it, stage, f"walltime margin reached: {len(mine) - n} task(s) left "
                         "to the checking job, which resubmits them")
                break
            t0 = time.perf_counter()
            try:
                res = fn(root, i, k)
            except DiskFull as exc:  # the next tasks would meet the same full disk
                progress(it, stage, f"task {k}: {exc}; this element stops")
                return 1
            except Exception as exc:  # one task's failure never costs the others
                errors += 1
                detail = str(exc) if isinstance(exc, SmallcellError) else traceback.format_exc()
                progress(it, stage, f"task {k} failed: {detail}")
                continue
            ok = res if isinstance(res, bool) else True
            progress(it, stage, f"task {k} {'done' if ok else 'failed (marked)'} in "
                     f"{time.perf_counter() - t0:.1f} s")
        return 1 if errors else 0


def _resubmit(it: Iteration, chain: slurm.Chain, stage: str, missing: list[int],
              checker: str) -> None:
    """Resubmit `missing` runs/tasks of `stage` with the checking job after them, or stop
    the chain (SmallcellError with the reason and the folders), by resubmit_decision.
    Label arrays are sized by time as at their first submission, with the tasks that
    finished meanwhile measured."""
    from smallcell.stages import explore, label

    jobs = slurm.read_jobs(it.paths, it.i)
    last = slurm.last_record(jobs, stage)
    d = slurm.resubmit_decision(len(missing), last, chain.slurm["resubmit"])
    what = "runs" if stage == "explore" else "tasks"
    if d.action == "resubmit":
        rec = (chain.submit_array(it.i, stage, missing, stalls=d.stalls) if stage == "explore"
               else _submit_labels(it, chain, stage, missing, d.stalls))
        chain.submit_job(it.i, checker, after=rec["job_id"])
        progress(it, stage, f"{len(missing)} {what} without a marker ({d.reason}): "
                 f"resubmitted as array {rec['job_id']} [{rec['array']}]")
        return
    folders = [explore.run_dir(it, explore.md_runs(it.cfg, it.i)[k]) if stage == "explore"
               else label.task_dir(it, k) for k in missing]
    lines = [f"  {f}" + ("  (see error.log)" if (f / "error.log").exists() else "")
             for f in folders[:10]]
    more = f"\n  ... and {len(folders) - 10} more" if len(folders) > 10 else ""
    logs = f"; the last array's logs: {last['log']}" if last else ""
    kind = {"sample-label": "error-sample label"}.get(stage, stage)
    raise SmallcellError(
        f"iteration {it.i}: {len(missing)} {kind} {what} still have no marker: {d.reason}"
        f"{logs}\n" + "\n".join(lines) + more
        + "\nFix the cause (or raise the stage's time), then `make submit` to go on.")


def _stage_seconds(it: Iteration, update: dict[str, float] | None = None) -> dict[str, float]:
    path = it.dir / slurm.SLURM_DIR / STAGE_SECONDS
    seconds = read_json(path) if path.exists() else {}
    if update:
        seconds.update(update)
        atomic_write_json(path, seconds)
    return seconds


def _since_first(it: Iteration, stage: str) -> float | None:
    """Wall seconds since the first submission of `stage` in this iteration (queue time
    included: what a person waiting for the stage sees)."""
    times = [r["time"] for r in slurm.read_jobs(it.paths, it.i) if r["stage"] == stage]
    return time.time() - min(times) if times else None


def _select(it: Iteration, chain: slurm.Chain) -> int:
    from smallcell import loop
    from smallcell.sched.local import LocalRunner
    from smallcell.stages import explore, label, sample, select

    seconds: dict[str, float] = {}
    sweep_debris(it.dir)  # scratch of killed elements (they are all over: afterany)
    if it.i > 0:
        if not is_done(it.stage("explore")):
            runs = explore.write_plan(it)
            missing = [r.index for r in runs if not is_done(explore.run_dir(it, r))]
            if missing:
                _resubmit(it, chain, "explore", missing, "select")
                return 0
            wall = _since_first(it, "explore")
            if wall is not None:
                seconds["explore"] = wall
            rep = explore.run(it, LocalRunner(1))  # every run is done: aggregate, mark
        else:
            rep = explore.report_of(it)
        loop.explore_progress(it, rep)
    if not is_done(it.stage("select")):
        t0 = time.perf_counter()
        select.run(it)
        seconds["select"] = time.perf_counter() - t0
    n = label.n_tasks(it)
    if n:
        label.prepare(it)
    # the error sample in its own array, unless the stop rule reads it before training
    beside = sample.pending(it) and not sample.gates_training(it.cfg)
    todo = label.missing(it, n, "selected" if beside else "all") if n else []
    _stage_seconds(it, seconds)
    after = None
    if todo:
        rec = _submit_labels(it, chain, "label", todo)
        after = rec["job_id"]
        progress(it, "label", f"{len(todo)} of {n} tasks submitted: array {after} "
                 f"[{rec['array']}], {rec['elements']} element(s) of up to "
                 f"{rec['tasks_per_element']} ({rec['estimate']}: ~{rec['task_seconds']:.3g} "
                 "s per task)")
    rec = chain.submit_job(it.i, "train", after=after)
    progress(it, "collect", f"collect+train job {rec['job_id']}"
             + (f" after {after}" if after else ""))
    if beside:
        recs = start_sample(it, chain)
        progress(it, "sample", "error sample: " + ", ".join(
            f"{slurm.SHOWN[r['stage']]} {r['job_id']}"
            + (f" [{r['array']}], {r['n_tasks']} task(s) in {r['elements']} element(s)"
               if r.get("array") else "") for r in recs))
    return 0


def _collect_train(it: Iteration, chain: slurm.Chain, cfg: Config) -> int:
    from smallcell import loop
    from smallcell.stages import checkpoint, collect, label, sample, train
    from smallcell.status import potential_text

    n = label.n_tasks(it)
    gated = sample.gates_training(it.cfg)
    missing = label.missing(it, n, "all" if gated else "selected") if n else []
    if missing:
        _resubmit(it, chain, "label", missing, "train")
        return 0
    # the error sample's elements, running beside this job, own their scratch
    sweep_debris(it.dir, skip=() if gated else (sample.STAGE,))
    timings = _stage_seconds(it)
    wall = _since_first(it, "label")
    if wall is not None and n:
        timings["label"] = wall
    if gated and sample.pending(it):
        t0 = time.perf_counter()
        sample.run(it)
        timings["sample"] = time.perf_counter() - t0
    for stage, fn in (("collect", collect.run),
                      ("train", lambda it: train.run(it, loop.final_fit_due(it)))):
        if not is_done(it.stage(stage)):
            t0 = time.perf_counter()
            fn(it)
            timings[stage] = time.perf_counter() - t0
    total = _since_first(it, "select") or 0.0
    if it.i > 0:
        total = max(total, _since_first(it, "explore") or 0.0)
    # the sample job may be measuring the sample right now: the summary is written
    # either before it (and completed by it) or after it (with its numbers)
    lock = it.dir / slurm.SLURM_DIR / SAMPLE_LOCK
    with flocked(lock, "the error sample's measurement", LOCK_WAIT):
        summary = loop.finish_iteration(it, timings, total)
    if summary["sample_pending"]:
        progress(it, "sample", "the error sample's labels are still running: its numbers "
                 "are filled into the summary when they end")
    reason = loop.stop_reason(summary, chain.upto)
    if reason:
        progress(it, "done", f"{reason}; {potential_text(summary)}; the chain ends here")
        j, _ = pilot_work(it.paths, chain.upto, cfg)
        if j is not None:
            rec = chain.submit_pilot(j, cfg["slurm"]["pilot"]["cpus_per_task"],
                                     after=_after_studies(it.paths, cfg))
            progress(it, "done", f"large-cell validation submitted: job {rec['job_id']}"
                     + (f" after the error sample's job(s) {rec['after']}" if rec["after"]
                        else ""))
        return 0
    if summary.get("stage_end"):
        progress(it, "done", loop.transition(summary))
    nxt = protocol.open_iteration(it.paths.root, it.i + 1, cfg)
    clear_stopped(nxt.dir)
    records = start_iteration(nxt, chain)
    progress(it, "done", "next iteration submitted: " + ", ".join(
        f"{r['stage']} {r['job_id']}" for r in records))
    # after the chain's next jobs: in a first-come queue the study never delays the chain
    if checkpoint.due(cfg, summary) and not is_done(checkpoint.folder(it.paths.root, it.i)):
        rec = chain.submit_checkpoint(it.i, cfg["slurm"]["pilot"]["cpus_per_task"])
        progress(it, "done", f"per-stage validation submitted: job {rec['job_id']}")
    return 0


def _sample(it: Iteration, chain: slurm.Chain) -> int:
    """`job sample`: the error sample's tasks all marked (else resubmitted), measure them
    and complete the summary if the collect+train job already wrote it."""
    from smallcell import loop
    from smallcell.stages import label, sample

    missing = label.missing(it, which="sample")
    if missing:
        _resubmit(it, chain, "sample-label", missing, "sample")
        return 0
    with flocked(it.dir / slurm.SLURM_DIR / SAMPLE_LOCK, "the summary", LOCK_WAIT):
        sweep_debris(it.stage(sample.STAGE))  # scratch of killed sample elements
        if sample.pending(it):
            sample.run(it)
        wall = _since_first(it, "sample-label")
        if loop.complete_sample(it, wall):
            progress(it, "sample", f"summary of iteration {it.i} completed with the error "
                     "sample's numbers")
    return 0


def run_checker(root: Path, stage: str, i: int, upto: int, config: str) -> int:
    """`job select` / `job collect-train` / `job sample`: one link of the chain. Under the
    run lock, shared (elements and the error sample's jobs run beside it), and, but for
    the sample job, the chain lock (one checking job at a time)."""
    paths = RunPaths(root)
    key = {"select": "select", "collect-train": "train", "sample": "sample"}[stage]
    what = f"slurm job {job_id()}: smallcell job {stage} --iter {i}"
    lock = RunLock(paths, what, shared=True, wait=LOCK_WAIT)
    try:
        lock.__enter__()
    except SmallcellError as exc:  # e.g. `make iter` running on the same folder
        return _stop(paths, i, stage, str(exc))
    try:
        if _skip(paths, i, key):
            return 0

        def body() -> int:
            chain, cfg = _chain(root, config, upto, f"job {job_id()} ({stage} {i})")
            if key == "sample":  # beside the chain: no config pin, no chain lock
                return _sample(Iteration.open(root, i), chain)
            with flocked(paths.iter_root / slurm.CHAIN_LOCK, f"the chain ({what})",
                               LOCK_WAIT):
                if _skip(paths, i, key):  # a later duplicate went first while we waited
                    return 0
                runconfig.pin(root, cfg)  # the config file edited under a running chain
                it = Iteration.open(root, i)
                return _select(it, chain) if key == "select" else _collect_train(it, chain,
                                                                                 cfg)

        return _guard(paths, i, stage, body)
    finally:
        lock.__exit__()


def run_checkpoint(root: Path, i: int, config: str, jobs: int) -> int:
    """`job checkpoint`: the per-stage validation of iteration i's potential, beside the
    chain (the run lock shared, as the chain's jobs hold it; the checkpoint's own lock
    keeps a duplicate job from working beside it). A failure is recorded in its folder
    (iter/<i>/validate/stopped): the chain goes on without it."""
    from smallcell.sched.local import LocalRunner
    from smallcell.stages import checkpoint

    paths = RunPaths(root)
    what = f"slurm job {job_id()}: smallcell job checkpoint --iter {i}"
    folder = checkpoint.folder(root, i)
    try:
        with RunLock(paths, what, shared=True, wait=LOCK_WAIT):
            if _skip(paths, i, "checkpoint"):
                return 0
            folder.mkdir(exist_ok=True)
            with flocked(folder / ".lock", f"the per-stage validation ({what})", LOCK_WAIT), \
                    LocalRunner(jobs) as runner:
                clear_stopped(folder)
                s = checkpoint.run(root, load_config(config), i, runner)
        print(f"per-stage validation of iteration {i}: {checkpoint.describe(s)}", flush=True)
        return 0
    except SmallcellError as exc:
        reason = str(exc)
    except Exception:
        reason = f"unexpected error in the checkpoint job:\n{traceback.format_exc()}"
    with contextlib.suppress(OSError, SmallcellError):
        mark_stopped(folder, reason, stage="checkpoint", job=job_id())
    print(f"smallcell: the per-stage validation of iteration {i} stopped: {reason}",
          file=sys.stderr, flush=True)
    return 2


def run_pilot(root: Path, upto: int, config: str, jobs: int) -> int:
    """`job pilot`: `smallcell iter` until SMALLCELL_DEADLINE, then Ctrl-C it (finished
    work is kept, a task cut short has no marker) and resubmit this job after itself."""
    paths = RunPaths(root)
    if slurm.cancelled(paths):
        print("smallcell: run cancelled (make cancel): exiting without work", flush=True)
        return 0
    cfg = load_config(config)
    i, why = pilot_work(paths, upto, cfg)
    if i is None:
        print(f"smallcell pilot: nothing to do: {why}", flush=True)
        return 0
    stop_at = deadline()
    cmd = [str(slurm.SMALLCELL), "--run-dir", str(root), "iter", "--upto", str(upto),
           "--config", str(config), "--jobs", str(jobs)]
    print(f"smallcell pilot: {' '.join(cmd)} until {time.ctime(stop_at)}", flush=True)
    proc = subprocess.Popen(cmd)
    interrupted = False
    try:
        rc = proc.wait(timeout=max(stop_at - time.time(), 0.0))
    except subprocess.TimeoutExpired:
        interrupted = True
        proc.send_signal(signal.SIGINT)  # the loop kills its workers and keeps finished work
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    if not interrupted and rc == 0:
        print("smallcell pilot: the loop is complete", flush=True)
        return 0
    if not interrupted:
        first, _ = first_incomplete(paths, upto)
        mark_stopped(paths.it(first if first is not None else i),
                     f"the pilot's `smallcell iter` failed (exit {rc}); see its job log",
                     stage="pilot", job=job_id())
        return rc
    nxt, why = pilot_work(paths, upto, cfg)
    if nxt is None:
        print(f"smallcell pilot: {why}", flush=True)
        return 0

    def resubmit() -> int:
        chain, _ = _chain(root, config, upto, f"job {job_id()} (pilot)")
        with RunLock(paths, f"slurm job {job_id()}: pilot resubmission", wait=LOCK_WAIT):
            if slurm.cancelled(paths):
                return 0
            rec = chain.submit_pilot(nxt, jobs, after=job_id())
        print(f"smallcell pilot: walltime margin reached; resubmitted as job "
              f"{rec['job_id']} (iteration {nxt} on)", flush=True)
        return 0

    return _guard(paths, nxt, "pilot", resubmit)
