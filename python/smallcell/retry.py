"""`smallcell retry --iter I` (`make retry I=...`): re-queue an iteration's failed tasks.

A failed task is a label task (`vasp/<k>/`) or error-sample task (`sample/<j>/`) with a
`failed` marker, or an explore run (`explore/<run>/`) that crashed (its `error.log`, no
`done`). Re-queuing one moves its failed attempt aside, the way the labelers already keep
earlier attempts: the attempt's files (the `failed` marker, error.log, the program's
outputs) go into `<task>/attempts/<n>/` with a copy of its inputs, nothing is deleted, and
the task folder is left with its inputs and no marker, which is exactly what "not run yet"
means to every runner. Markers of the iteration that recorded the failure go too:
`iter/<i>/stopped` (a stopped chain), `sample/errors.json` when a sample task is retried
(moved to `sample/attempts/<n>/`), and collect and train, when they already ran without a
retried label (moved to `iter/<i>/attempts/<n>/`).

Then the iteration runs again from its folders: locally with the loop `make iter` runs
(under the run lock, up to this iteration), on SLURM by submitting the chain from this
iteration (jobs.start_iteration, as `make submit` does). Either way only the re-queued
tasks run: every other task still has its marker.

A complete iteration (summary.json) is not retried: its training set and potential were
built without the failed tasks (label.min_success_ratio accepted them) and later
iterations may build on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallcell.errors import SmallcellError
from smallcell.state import (
    FAILED,
    RunLock,
    RunPaths,
    clear_stopped,
    is_debris,
    is_done,
    is_failed,
    read_json,
)

if TYPE_CHECKING:
    from smallcell.stages.common import Iteration

ATTEMPTS = "attempts"
STAGES = ("explore", "label", "sample")
# Inputs a task folder keeps for its next attempt; a copy goes beside the archived one
# (except input.cfg, which never changes, and POTCAR: licensed, large, named in OUTCAR).
TASK_INPUTS = ("input.cfg", "POSCAR", "POTCAR", "INCAR", "KPOINTS", "gpaw.json",
               "gpaw_task.py")
COPIED_INPUTS = ("POSCAR", "INCAR", "KPOINTS", "gpaw.json")
SAMPLE_OUTPUTS = ("labeled.cfg", "check_errors", "errors.json")  # errors.json: the marker


@dataclass(frozen=True)
class Failed:
    """One failed task: its stage, its id in that stage's task list, folder and reason."""

    stage: str  # explore | label | sample
    task: int  # explore: run index; label and sample: the combined label task id
    folder: Path
    reason: str

    def name(self, root: Path) -> str:
        return str(self.folder.relative_to(root / "iter"))


def _reason(folder: Path) -> str:
    """The first line of the failure's reason (marker), else the last line of error.log."""
    if is_failed(folder):
        try:
            return str(read_json(folder / FAILED).get("reason", "")).splitlines()[0]
        except (SmallcellError, IndexError, OSError):
            return "(unreadable failed marker)"
    log = folder / "error.log"
    with contextlib.suppress(OSError):
        lines = [x for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
        if lines:
            return lines[-1].strip()
    return "crashed (error.log)"


def failed_tasks(it: Iteration, stages: Iterable[str] = STAGES) -> list[Failed]:
    """The iteration's failed tasks of `stages`, in task order."""
    from smallcell.stages import explore, label

    stages = set(stages)
    out: list[Failed] = []
    if "explore" in stages and it.i > 0 and not is_done(it.stage("explore")):
        for run in explore.md_runs(it.cfg, it.i):
            d = explore.run_dir(it, run)
            if not is_done(d) and (d / "error.log").exists():
                out.append(Failed("explore", run.index, d, _reason(d)))
    if not is_done(it.stage("select")):
        return out  # no label task exists before select
    n_sel = label.n_selected(it)
    if "label" in stages:
        for k in range(n_sel):
            d = label.selected_dir(it, k)
            if is_failed(d):
                out.append(Failed("label", k, d, _reason(d)))
    if "sample" in stages:
        for j in range(label.n_sample(it)):
            d = label.sample_dir(it, j)
            if is_failed(d):
                out.append(Failed("sample", n_sel + j, d, _reason(d)))
    return out


def _archive(folder: Path, names: Sequence[str], copies: Sequence[str] = ()) -> Path | None:
    """Move `names` of `folder` (the marker, given last, moves last: a cut-short archive
    leaves the task still marked) into `folder/attempts/<n>/` (the next free n), with
    copies of `copies`; None when none of `names` exists."""
    present = [n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if not present:
        return None
    from smallcell.engines.process import archive_outputs

    return archive_outputs(folder, present, [c for c in copies if c not in present],
                           ATTEMPTS)


def requeue_task(task: Failed) -> Path | None:
    """Move a failed task's attempt aside; return where it went."""
    keep = {ATTEMPTS} | (set(TASK_INPUTS) if task.stage != "explore" else set())
    names = sorted((n for n in os.listdir(task.folder) if n not in keep and not is_debris(n)),
                   key=lambda n: (n == FAILED, n))
    return _archive(task.folder, names, COPIED_INPUTS if task.stage != "explore" else ())


def requeue(it: Iteration, tasks: Sequence[Failed]) -> list[str]:
    """Re-queue `tasks` of iteration `it` (run lock held) and clear the stage and
    iteration markers that recorded their failure; return one line per thing moved."""
    lines = []
    root = it.paths.root
    for t in tasks:
        dest = requeue_task(t)
        where = f"earlier attempt kept in {dest.relative_to(root)}/" if dest else "no files"
        lines.append(f"  {t.stage} task {t.task} ({t.name(root)}): {t.reason}; {where}")
    kinds = {t.stage for t in tasks}
    if "sample" in kinds:
        dest = _archive(it.stage("sample"), SAMPLE_OUTPUTS)
        if dest:
            lines.append(f"  sample errors measured without them: moved to "
                         f"{dest.relative_to(root)}/")
    if "label" in kinds and is_done(it.stage("collect")):
        dest = _archive(it.dir, ("train", "collect"))
        if dest:
            lines.append(f"  collect and train ran without them: moved to "
                         f"{dest.relative_to(root)}/")
    if (it.dir / "stopped").exists():
        clear_stopped(it.dir)
        lines.append(f"  iter/{it.i}/stopped cleared")
    return lines


# ------------------------------------------------------------------------------ command


def config_file(root: Path, given: str | None) -> str:
    """--config, else the run's own config when the run records one, else config.yaml."""
    from smallcell import runconfig

    return str(runconfig.resolve(root, given))


def _lock(paths: RunPaths, what: str) -> RunLock:
    lock = RunLock(paths, what)
    try:
        lock.__enter__()
    except SmallcellError as exc:
        raise SmallcellError(f"the run is live, nothing was retried: {exc}") from None
    return lock


def retry(root: Path, i: int, config: str, stages: Sequence[str] = STAGES, *,
          scheduler: str | None = None, jobs: int | None = None) -> int:
    """Re-queue iteration `i`'s failed tasks of `stages` and run them (see the module
    docstring); print what was re-queued. 0 when done (or nothing failed)."""
    from smallcell.stages.common import Iteration

    paths = RunPaths(root)
    if i not in paths.iterations() or not (paths.it(i) / "config.yaml").exists():
        have = paths.iterations()
        raise SmallcellError(f"iteration {i} does not exist under {paths.iter_root}"
                             + (f" (iterations: {have[0]}..{have[-1]})" if have else
                                " (no iteration yet: run `make iter` first)"))
    from smallcell.config import load_config

    cfg = load_config(config)
    sched = scheduler or cfg["engines"]["scheduler"]
    if sched == "slurm":
        from smallcell import jobs as slurm_jobs

        slurm_jobs._check_queue(paths)  # a live chain: refuse before touching anything
    lock = _lock(paths, f"smallcell retry --iter {i}")
    try:
        if sched == "slurm":
            slurm_jobs._check_queue(paths)  # again under the lock, as submit does
        it = Iteration.open(root, i)
        tasks = failed_tasks(it, stages)
        which = "/".join(stages) if set(stages) != set(STAGES) else "explore, label or sample"
        if not tasks:
            more = ("" if paths.summary(i).exists() else
                    f"; `make {'submit' if sched == 'slurm' else 'iter'}` goes on from "
                    "the folders")
            print(f"smallcell retry: nothing to retry: iteration {i} has no failed "
                  f"{which} task{more}")
            return 0
        if paths.summary(i).exists():
            names = ", ".join(t.name(root) for t in tasks[:10])
            raise SmallcellError(
                f"iteration {i} is complete (summary.json): its {len(tasks)} failed "
                f"task(s) ({names}{' ...' if len(tasks) > 10 else ''}) were accepted by "
                "label.min_success_ratio, and its training set and potential were built "
                "without them; retry works on an iteration that has not finished. Nothing "
                "was changed.")
        from smallcell.engines.base import check_engines

        check_engines(cfg)
        lines = requeue(it, tasks)
        by_stage: dict[str, list[int]] = {}
        for t in tasks:
            by_stage.setdefault(t.stage, []).append(t.task)
        print(f"smallcell retry: iteration {i}: re-queued " + "; ".join(
            f"{s} task(s) {', '.join(map(str, ks))}" for s, ks in by_stage.items()))
        print("\n".join(lines), flush=True)
        if sched == "slurm":
            return _submit(root, i, config, cfg, it)
        return _run_local(root, i, cfg, jobs)
    finally:
        lock.__exit__()


def _run_local(root: Path, i: int, cfg: Any, jobs: int | None) -> int:
    """Iteration `i` from its folders with the loop of `make iter` (the lock is held)."""
    from smallcell import loop
    from smallcell.sched.local import LocalRunner
    from smallcell.status import HEADER, line_for_summary

    n = jobs if jobs is not None else cfg["run"]["jobs"]
    with LocalRunner(n) as runner:
        summaries = loop.run(root, cfg, i, runner)
    last = summaries[-1]
    print(f"\n{HEADER}\n{line_for_summary(last)}")
    print(f"\niteration {i} is complete: {last.get('n_labeled', 0)} labeled, "
          f"{last.get('n_failed', 0)} failed; `make iter N=...` goes on from here")
    return 0


def _submit(root: Path, i: int, config: str, cfg: Any, it: Iteration) -> int:
    """Submit the chain from iteration `i` (up to it) with jobs.start_iteration."""
    from smallcell import jobs as slurm_jobs
    from smallcell.sched import slurm

    chain = slurm.Chain(root, Path(config).resolve(), i, cfg["slurm"], "retry")
    (RunPaths(root).iter_root / slurm.CANCELLED).unlink(missing_ok=True)
    records = slurm_jobs.start_iteration(it, chain)
    print(f"smallcell retry: submitted iteration {i} again "
          f"({RunPaths(root).iter_root}):")
    for r in records:
        extra = (f", array [{r['array']}]: {r['n_tasks']} task(s)" if r.get("array") else "")
        after = f", after {r['after']}" if r.get("after") else ""
        print(f"  {r['stage']:<8} job {r['job_id']}{extra}{after}")
    print(f"the chain ends after iteration {i}; `make status` shows it, "
          "`make submit N=...` goes on from there")
    return 0
