"""The active-learning loop (the report's Algorithm 1) over the folder state machine.

Iteration 0 is the initial fit: select (the initial data set) -> label -> collect -> train.
Iteration i >= 1: explore (MD with the potential of i-1) -> select -> label -> sample (the
error study: errors of i-1's potential on a labeled random sample) -> collect -> train.
The sample's labels run beside collect and train when run.jobs leaves a worker to spare
(training never waits for the study), unless the stop rule reads the sample's errors.
On SLURM they run in their own array and may end after the summary was written: its
sample fields are then completed by complete_sample, the same numbers either way.
Each stage runs only when its `done` marker is missing; `summary.json` is written last and
marks the iteration complete. The run stops after `run.converged_iterations`
consecutive iterations whose explore converged (no run broke and max gamma < gamma_break,
or nothing was preselected): the last one still labels and learns what it preselected,
then the loop ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallcell import protocol, stopping
from smallcell.config import Config
from smallcell.engines.base import trainer_for
from smallcell.errors import SmallcellError
from smallcell.formats.errors import FormatError
from smallcell.stages import (
    checkpoint,
    collect,
    explore,
    label,
    sample,
    select,
    train,
    validate,
)
from smallcell.stages.common import Iteration, Runner, progress
from smallcell.state import (
    RunPaths,
    atomic_write_json,
    clear_stopped,
    is_done,
    mark_stopped,
    read_json,
    sweep_debris,
)
from smallcell.status import finished, stage_ended, verdict

STAGES = ("explore", "select", "label", "sample", "collect", "train")


def run_iteration(it: Iteration, runner: Runner) -> dict[str, Any]:
    """Bring iteration `it` to completion from wherever its folders stand."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    sweep_debris(it.dir)  # scratch of a killed earlier attempt (we hold the run lock)
    clear_stopped(it.dir)  # a stopped SLURM chain's message is history once we go on

    def timed(name: str, fn: Any, *args: Any) -> Any:
        s = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - s
        return out

    if it.i > 0:
        rep = (explore.report_of(it) if is_done(it.stage("explore"))
               else timed("explore", explore.run, it, runner))
        explore_progress(it, rep)
    if not is_done(it.stage("select")):
        timed("select", select.run, it)
    start = _beside(runner) if sample.pending(it) and not sample.gates_training(
        it.cfg) and label.missing(it, which="sample") else None
    if label.n_tasks(it):
        timed("label", label.run, it, runner, "all" if start is None else "selected")
    t_sample = time.perf_counter()
    background = None
    if start is not None:  # the sample's labels beside collect and train
        todo = label.missing(it, which="sample")
        progress(it, "sample", f"labeling {len(todo)} error-sample task(s) beside training")
        background = start(label.run_task, it, todo, "sample",
                           label.reporter(it, len(todo), 0, "sample"))
    elif sample.pending(it):
        timed("sample", sample.run, it)
    if not is_done(it.stage("collect")):
        timed("collect", collect.run, it)
    if not is_done(it.stage("train")):
        timed("train", train.run, it, final_fit_due(it))
    if background is not None:
        background.wait()
        sample.run(it)
        timings["sample"] = time.perf_counter() - t_sample
    return finish_iteration(it, timings, time.perf_counter() - t0)


def finish_sample(it: Iteration, runner: Runner) -> dict[str, Any]:
    """Label what is missing of a complete iteration's error sample, measure it and
    complete the summary (a SLURM run continued locally); return the summary."""
    t0 = time.perf_counter()
    sweep_debris(it.stage(sample.STAGE))  # we hold the run lock: nobody else writes here
    label.run(it, runner, "sample")
    if sample.pending(it):
        sample.run(it)
    complete_sample(it, time.perf_counter() - t0)
    return read_json(it.paths.summary(it.i))


def _beside(runner: Runner) -> Callable[..., Any] | None:
    """The runner's way to start tasks beside the driver (LocalRunner.start), when it has
    a worker to spare within run.jobs; None otherwise (then everything runs in order)."""
    start = getattr(runner, "start", None)
    return start if start is not None and getattr(runner, "spare", 0) >= 1 else None


def stop_inputs(it: Iteration) -> tuple[explore.ExploreReport | None, bool, float | None]:
    """What the stop rule reads of an iteration whose explore and sample are done: the
    explore report, whether its MD converged, and the stop rule's force error."""
    rep = explore.report_of(it) if it.i > 0 else None
    conv = rep.converged(it.cfg["extrapolation"]["gamma_break"]) if rep else False
    prev = read_json(it.paths.summary(it.i - 1)) if it.i > 0 else {}
    sampled = sample.summary_fields(it)
    return rep, conv, stopping.force_error(it.cfg["stop"], sampled["sample_force_error_mean"],
                                           prev.get("test_errors"))


def final_fit_due(it: Iteration) -> bool:
    """The iteration meets the stop rule and is not itself a check: its fit is the final
    refit (train.run), which must then pass a check iteration's MD. Shared by the local
    loop and the SLURM collect+train job."""
    if it.i == 0 or protocol.is_check(it):
        return False
    _, conv, force_error = stop_inputs(it)
    return conv and protocol.stop_met(it, conv, force_error)


def _recording_stops(it: Iteration, runner: Runner) -> dict[str, Any]:
    """run_iteration, leaving the reason in `iter/<i>/stopped` when it stops short (Ctrl-C,
    an error), so that `make status` can say why the iteration is not going on."""
    try:
        return run_iteration(it, runner)
    except (KeyboardInterrupt, SmallcellError, FormatError) as exc:
        # complete after all: nothing to explain; a full disk may refuse the note too,
        # and the error that stopped the run is the one to report
        if not it.paths.summary(it.i).exists():
            with contextlib.suppress(OSError, SmallcellError):
                mark_stopped(it.dir, "interrupted (Ctrl-C or SIGINT) during `smallcell iter`; "
                             "finished tasks are kept" if isinstance(exc, KeyboardInterrupt)
                             else f"`smallcell iter` stopped with an error: {exc}",
                             stage="iter")
        raise


def explore_progress(it: Iteration, rep: explore.ExploreReport) -> None:
    """The one line that tells how the explore stage ended (local loop and SLURM job)."""
    progress(it, "explore", f"{rep.n_runs} runs, {rep.n_broke} broke, "
             f"{rep.n_preselected} preselected, gamma max {rep.gamma_max:.4g} "
             f"mean {rep.gamma_mean:.4g} std {rep.gamma_std:.4g}")


def finish_iteration(it: Iteration, timings: dict[str, float], seconds: float) -> dict[str, Any]:
    """Write `summary.json` (last, it marks the iteration complete) from the folders alone.

    Shared by the local loop and the SLURM collect+train job: everything comes from the
    stages' files and markers, never from values held in memory, so both schedulers write
    the same summary for the same folders (only the clock readings differ)."""
    rep, conv, force_error = stop_inputs(it)
    n_sel = label.n_selected(it)
    labeled, failed = label.counts(it)
    errors = read_json(it.stage("train") / "errors.json")
    coll = read_json(it.stage("collect") / "done")
    prev = read_json(it.paths.summary(it.i - 1)) if it.i > 0 else {}
    refit = bool(errors.get("final_fit"))
    stage = protocol.summary_fields(it, conv, int(coll["n_new"]), force_error, refit)
    summary: dict[str, Any] = {
        "iteration": it.i,
        "cell": it.cfg["structure"]["cell"],
        "lattice": it.cfg["structure"]["lattice"],
        "n_runs": rep.n_runs if rep else 0,
        "n_broke": rep.n_broke if rep else 0,
        "n_preselected": rep.n_preselected if rep else 0,
        "n_selected": n_sel,
        "n_labeled": labeled,
        "n_failed": failed,
        "n_new": coll["n_new"],
        "n_train": coll["n_train"],
        "gamma_max": rep.gamma_max if rep else None,
        "gamma_mean": rep.gamma_mean if rep else None,
        "gamma_std": rep.gamma_std if rep else None,
        "gamma_count": rep.gamma_count if rep else 0,
        "broke": (rep.n_broke > 0) if rep else None,
        "converged": conv,
        **stage,
        **delivered(it, prev, errors, checked=conv and int(coll["n_new"]) == 0 and not refit),
        "policy": it.cfg["select"]["policy"],
        "train_seconds": errors.get("seconds"),
        "train_iterations": errors.get("iterations"),
        "train_converged": errors.get("converged"),
        "train_skipped": errors.get("skipped"),
        "active_set_size": errors.get("active_set_size"),
        "active_set_configs": errors.get("active_set_configs"),
        "train_errors": errors.get("errors", {}),
        "test_errors": errors.get("test_errors"),
        **sample_fields(it, labeled, failed, prev),
        "stage_seconds": timings,
        "seconds": seconds,
    }
    atomic_write_json(it.paths.summary(it.i), summary)
    return summary


def sample_fields(it: Iteration, labeled: int, failed: int, prev: dict[str, Any]
                  ) -> dict[str, Any]:
    """The summary keys that come from the error sample (finish_iteration writes them,
    complete_sample fills them in later): its own fields, whether its labels are still
    running (SLURM), the stop rule's force error (the sample's mean under stop.metric
    sample; `prev`: the previous summary) and every reference calculation of the
    iteration (`labeled` and `failed` training labels, the sample's): the run's cost in
    DFT calls, and in DFT seconds (smallcell.cost; the training labels' share apart)."""
    sampled = sample.summary_fields(it)
    cost = label.dft_cost(it)
    return {**sampled, "sample_pending": sample.pending(it),
            "stop_force_error": stopping.force_error(
                it.cfg["stop"], sampled["sample_force_error_mean"], prev.get("test_errors")),
            "n_reference": labeled + failed + sampled["sample_n"] + sampled["sample_failed"],
            "dft_seconds": cost["train"] + cost["sample"], "dft_seconds_train": cost["train"],
            "dft_modeled": dft_modeled(it.cfg)}


def dft_modeled(cfg: Config) -> bool:
    """Whether the run's DFT cost is the cost model's (the embedded labeler) rather than
    the labels' measured wall time."""
    from smallcell import cost

    return cost.is_modeled(cfg["engines"]["labeler"])


def complete_sample(it: Iteration, seconds: float | None = None) -> bool:
    """Fill the error sample's numbers into a summary written before they were measured
    (SLURM: the study ran beside training). Only the sample's keys change: nothing the
    chain decided depends on them (sample.gates_training), so the completed summary is
    the one the local loop writes. Idempotent; True when the summary was rewritten."""
    path = it.paths.summary(it.i)
    if not path.exists():
        return False
    summary = read_json(path)
    prev = read_json(it.paths.summary(it.i - 1)) if it.i > 0 else {}
    new = sample_fields(it, int(summary["n_labeled"]), int(summary["n_failed"]), prev)
    if all(summary.get(k) == v for k, v in new.items()):
        return False
    timings = dict(summary.get("stage_seconds") or {})
    if seconds is not None:
        timings["sample"] = seconds
    atomic_write_json(path, {**summary, **new, "stage_seconds": timings})
    return True


def delivered(it: Iteration, prev: dict[str, Any], train_info: dict[str, Any], *,
              checked: bool) -> dict[str, Any]:
    """The potential the iteration hands on: its file (named per trainer), the iteration
    whose fit made it (an unchanged potential is carried over), and whether it passed
    this iteration's MD itself (it explored here, no run broke, and nothing was added)."""
    name = trainer_for(it.cfg).files[0]
    fit = prev.get("potential_fit", it.i - 1) if train_info.get("skipped") else it.i
    return {"potential": str((it.stage("train") / name).relative_to(it.paths.root)),
            "potential_fit": fit, "potential_checked": bool(it.i > 0 and checked)}


def transition(summary: dict[str, Any]) -> str:
    """The progress line that says a stage ended here and which one comes next."""
    return (f"{stage_ended(summary)}; stage {int(summary['stage']) + 2}/"
            f"{int(summary['n_stages'])} starts with iteration {summary['iteration'] + 1}, "
            "data and potential carried forward")


def stop_reason(summary: dict[str, Any], upto: int) -> str | None:
    """Why the loop ends after this iteration (None: go on with the next one). The one
    decision of the local loop and of the SLURM chain's collect+train job."""
    if finished(summary):
        return verdict(summary)
    if summary["iteration"] >= upto:
        return f"reached iteration {upto}"
    return None


def _checkpoint(root: Path, cfg: Config, summary: dict[str, Any], runner: Runner) -> None:
    """The per-stage validation of the iteration of `summary`, when due and not done."""
    i = int(summary["iteration"])
    if checkpoint.due(cfg, summary) and not is_done(checkpoint.folder(root, i)):
        checkpoint.run(root, cfg, i, runner)


def run(root: Path, cfg: Config, upto: int, runner: Runner) -> list[dict[str, Any]]:
    """Complete iterations 0..upto (or until converged); return all summaries."""
    paths = RunPaths(root)
    summaries: list[dict[str, Any]] = []
    for i in range(upto + 1):
        if paths.summary(i).exists():
            s = read_json(paths.summary(i))
            if s.get("sample_pending"):  # a SLURM run's study cut short: finish it here
                s = finish_sample(Iteration.open(root, i), runner)
            _checkpoint(root, cfg, s, runner)
            summaries.append(s)
            if finished(s):
                print(f"converged at iteration {i}: nothing left to do", flush=True)
                break
            continue
        if i > 0 and not paths.summary(i - 1).exists():
            raise SmallcellError(f"{paths.summary(i - 1)}: missing; iteration {i - 1} must "
                                 "finish first")
        it = protocol.open_iteration(root, i, cfg)
        s = _recording_stops(it, runner)
        _checkpoint(root, cfg, s, runner)
        summaries.append(s)
        reason = stop_reason(s, upto)
        if reason and finished(s):
            progress(it, "done", reason)
        elif s.get("stage_end"):
            progress(it, "done", transition(s))
        if reason:
            break
    if summaries and finished(summaries[-1]) and validate.wanted(cfg):
        validate.run(root, cfg, runner)
    return summaries
