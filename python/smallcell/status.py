"""`smallcell status`: one line per iteration, from markers and summaries only.

Finished iterations are read from their `summary.json`; only the iteration in progress is
scanned (its `done`/`failed` markers, with os.scandir), and the sample folder of a finished
one whose error sample is still running on SLURM (summary.json's `sample_pending`).
Nothing heavier than the standard library is imported, so the command answers in well
under a second even for 60 iterations x 1,500 label tasks (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smallcell.state import DONE, FAILED, STOPPED, SUMMARY, RunPaths, lock_holder

_ORDER = ("explore", "select", "label", "collect", "train")
# How a stage of the protocol ends (summary.json stage_end; protocol.py decides)
CONVERGED = "converged"
CAPPED = "iteration cap"
HEADER = (f"{'iter':>4} {'stage':>5} {'cell':>7} {'state':>8} {'presel':>7} {'select':>6} "
          f"{'label':>6} "
          f"{'fail':>5} {'gmax':>9} {'gmean':>7} {'broke':>5} {'E meV/at':>8} "
          f"{'F eV/Å':>7} {'train s':>7} {'n_train':>7} {'DFT h':>7}")


def _fmt(v: Any, spec: str, width: int) -> str:
    if v is None:
        return f"{'-':>{width}}"
    return f"{v:{width}{spec}}"


def _count_tasks(folder: Path) -> tuple[int, int, int]:
    """(total, done, failed) task folders under `folder` (vasp/ or sample/)."""
    total = done = failed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0, 0, 0
    for e in entries:
        if not e.name.isdigit():
            continue
        total += 1
        if os.path.exists(os.path.join(e.path, DONE)):
            done += 1
        elif os.path.exists(os.path.join(e.path, FAILED)):
            failed += 1
    return total, done, failed


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def finished(summary: dict[str, Any]) -> bool:
    """The run ends with this iteration: it ended the last stage of the protocol (by
    convergence or the stage's iteration cap; protocol.py). Summaries written before the
    protocol: enough consecutive converged iterations (before the streak was recorded, a
    converged one was enough)."""
    if "stage_end" in summary:
        return bool(summary["stage_end"]) and (
            int(summary.get("stage", 0)) >= int(summary.get("n_stages", 1)) - 1)
    if not summary.get("converged"):
        return False
    return summary.get("converged_streak", 1) >= summary.get("converged_needed", 1)


def _stage(s: dict[str, Any]) -> str:
    """The protocol stage as k/n (1-based)."""
    return f"{int(s.get('stage', 0)) + 1}/{int(s.get('n_stages', 1))}"


def stage_ended(s: dict[str, Any]) -> str:
    """How the stage of an iteration that ended it ended, in words (status, the loop's
    progress line)."""
    how = ("converged" if s["stage_end"] == CONVERGED else
           f"reached its cap ({s.get('stage_max_iterations')} iterations), not converged")
    return (f"stage {int(s['stage']) + 1}/{int(s['n_stages'])} ({s.get('stage_name')}) "
            f"{how} after {s.get('stage_iteration')} iteration(s)")


def verdict(summary: dict[str, Any]) -> str:
    """How a finished run ended, in words."""
    n = summary.get("converged_needed", 1)
    of = (f" (the last of {summary['n_stages']} stages, {summary.get('stage_name')})"
          if summary.get("n_stages", 1) > 1 else "")
    if summary.get("stage_end") == CAPPED:
        return (f"stopped: the iteration cap of {summary.get('stage_max_iterations')} was "
                f"reached{of} without convergence")
    how = ("converged: no MD run broke" if n == 1 else
           f"converged: no MD run broke in {n} consecutive iterations")
    if summary.get("stop_note"):
        how += f" ({summary['stop_note']})"
    return how + of


def potential_text(s: dict[str, Any]) -> str:
    """The potential an iteration hands on, in words: its file, the fit that made it, and
    whether it passed an MD of the stage itself (summary.json's potential* keys; older
    summaries name the train folder)."""
    path = s.get("potential") or f"iter/{s['iteration']}/train"
    fit = s.get("potential_fit")
    if s.get("potential_checked"):
        how = f"passed the MD of iteration {s['iteration']}"
    elif s.get("stage_end") == CAPPED:
        how = "not checked by MD: the stage stopped at its cap"
    else:
        how = "not yet checked by MD"
    return f"potential: {path} ({'' if fit is None else f'fitted in iteration {fit}; '}{how})"


def transition_line(s: dict[str, Any]) -> str | None:
    """Under an iteration that ended a stage of the protocol (not the last): how, and
    which stage comes next."""
    k, n = int(s.get("stage", 0)), int(s.get("n_stages", 1))
    if not s.get("stage_end") or k + 1 >= n:
        return None
    return f"{'':>6}{stage_ended(s)} -> stage {k + 2}/{n}"


def reference_calls(summaries: list[dict[str, Any]],
                    validation: dict[str, Any] | None = None,
                    checkpoints: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Every reference (DFT) calculation the run made, by purpose: training labels, the
    failed ones (they cost core-hours too), the error sample's (failed included) and the
    large-cell validations' (the final one and the per-stage ones); and their DFT cost in
    seconds (summary `dft_seconds`, smallcell.cost). Why: with VASP these are the run's
    cost, and the training labels alone were a fraction of it (the error sample adds
    sample.size per iteration)."""
    train = sum(int(s.get("n_labeled", 0)) for s in summaries)
    failed = sum(int(s.get("n_failed", 0)) for s in summaries)
    sample = sum(int(s.get("sample_n", 0)) + int(s.get("sample_failed", 0)) for s in summaries)
    checks = [v for v in (validation, *checkpoints) if v]
    checked = sum(int(v.get("n_reference", int(v.get("sample_n", 0))
                                + int(v.get("sample_failed", 0)))) for v in checks)
    return {"train": train, "failed": failed, "sample": sample, "validation": checked,
            "total": train + failed + sample + checked,
            "dft_train": sum(float(s.get("dft_seconds_train") or 0) for s in summaries),
            "dft_seconds": sum(float(s.get("dft_seconds") or 0) for s in summaries + checks),
            "dft_modeled": any(s.get("dft_modeled") for s in summaries)}


def dft_so_far(summaries: list[dict[str, Any]]) -> list[float]:
    """The run's DFT cost in hours up to each of `summaries` (iteration order)."""
    out, total = [], 0.0
    for x in summaries:
        total += float(x.get("dft_seconds") or 0)
        out.append(total / 3600)
    return out


def checkpoints(root: Path, iterations: list[int]) -> list[dict[str, Any]]:
    """The finished per-stage validations (iter/<i>/validate/summary.json) of `iterations`."""
    paths = RunPaths(root)
    found = (_load(paths.it(i) / "validate" / SUMMARY) for i in iterations)
    return [s for s in found if s]


def run_cost(root: Path, summaries: list[dict[str, Any]]) -> str:
    """The run's reference calculations in words, its validations' included."""
    its = [int(s["iteration"]) for s in summaries]
    return cost_text(reference_calls(summaries, _load(Path(root) / "validation" / SUMMARY),
                                     checkpoints(root, its)))


def dft_unit(modeled: bool) -> str:
    """What a run's DFT hours are: core-hours of the GPAW cost model (embedded labels), or
    hours of the labels' measured wall time."""
    return "DFT core-hours (GPAW cost model)" if modeled else "h of DFT wall time"


def dft_hours(seconds: float, modeled: bool) -> str:
    """A DFT cost in words (dft_unit)."""
    return f"{seconds / 3600:.3g} {dft_unit(modeled)}"


def cost_text(c: dict[str, Any]) -> str:
    """reference_calls in words."""
    text = (f"{c['total']} reference calculations in all: {c['train']} training labels "
            f"({c['failed']} more failed), {c['sample']} for the error sample, "
            f"{c['validation']} for the large-cell validation")
    if c.get("dft_seconds"):
        text += (f"; {dft_hours(c['dft_seconds'], c['dft_modeled'])}, "
                 f"{c['dft_train'] / 3600:.3g} h of it for training labels")
    return text


def line_for_summary(s: dict[str, Any], dft_so_far: float | None = None) -> str:
    """A finished iteration's line; `dft_so_far`: the run's DFT cost up to it (hours)."""
    err = s.get("train_errors") or {}
    e = err.get("energy_rmse")
    cell = "x".join(str(n) for n in s.get("cell", [])) or "-"
    stage = (("capped" if s.get("stage_end") == CAPPED else "converged")
             if finished(s) else
             "refit" if s.get("check_due") else
             f"conv {s.get('converged_streak', 1)}/{s.get('converged_needed', 1)}"
             if s.get("converged") else "complete")
    broke = "-" if s.get("broke") is None else ("yes" if s["broke"] else "no")
    return (f"{s['iteration']:>4} {_stage(s):>5} {cell:>7} {stage:>8} "
            f"{s.get('n_preselected', 0):>7} "
            f"{s.get('n_selected', 0):>6} {s.get('n_labeled', 0):>6} {s.get('n_failed', 0):>5} "
            f"{_fmt(s.get('gamma_max'), '.3g', 9)} {_fmt(s.get('gamma_mean'), '.3g', 7)} "
            f"{broke:>5} {_fmt(None if e is None else 1000 * e, '.2f', 8)} "
            f"{_fmt(err.get('force_rmse'), '.4f', 7)} {_fmt(s.get('train_seconds'), '.1f', 7)} "
            f"{_fmt(s.get('n_train'), 'd', 7)} {_fmt(dft_so_far, '.3g', 7)}")


def _stage_of_frozen(d: Path) -> str:
    """The protocol stage of an iteration in progress, from its frozen config's `stage:`
    line (a text scan: status stays free of YAML)."""
    try:
        text = (d / "config.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        return "-"
    for line in text.splitlines():
        if line.startswith("stage: ") and line[7:].strip().isdigit():
            return f"{int(line[7:]) + 1}"
    return "-"


def activity(holder: str | None, slurm_active: bool | None) -> str:
    """Whether an unfinished iteration is being worked on: a live holder of the run lock,
    a SLURM job of the iteration still pending or running, or nobody (stopped)."""
    if holder:
        return f"running: {holder}"
    if slurm_active:
        return "queued or running on SLURM"
    if slurm_active is None:
        return "state unknown: squeue did not answer"
    return "stopped"


def line_in_progress(paths: RunPaths, i: int, state: str = "in progress") -> str:
    d = paths.it(i)
    # the stage after the last one with a marker (label has none: its tasks have theirs)
    done_at = [k for k, s in enumerate(_ORDER) if os.path.exists(d / s / DONE)]
    nxt = max(done_at) + 1 if done_at else (1 if i == 0 else 0)
    stage = _ORDER[nxt] if nxt < len(_ORDER) else "summary"
    total, done, failed = _count_tasks(d / "vasp")
    ex = _load(d / "explore" / "explore.json") or {}
    planned = (_load(d / "explore" / "plan.json") or {}).get("runs", [])
    n_runs = len(planned)
    runs_done = sum(os.path.exists(d / "explore" / name / DONE) for name in planned)
    extra = f" runs {runs_done}/{n_runs}" if stage == "explore" and n_runs else ""
    s_total, s_done, s_failed = _count_tasks(d / "sample")
    if stage != "explore" and s_total:  # on SLURM it runs beside collect and train too
        extra += f" error sample {s_done + s_failed}/{s_total}"
    broke = "-" if not ex else ("yes" if ex.get("broke") else "no")
    frozen = _stage_of_frozen(d)
    return (f"{i:>4} {frozen:>5} {'':>7} {stage:>8} {ex.get('n_preselected', '-'):>7} {total:>6} "
            f"{done:>6} {failed:>5} {_fmt(ex.get('gamma_max'), '.3g', 9)} "
            f"{_fmt(ex.get('gamma_mean'), '.3g', 7)} {broke:>5}{extra}  ({state})")


def validation_text(s: dict[str, Any]) -> str:
    """A finished validation (its summary.json) in words: cell, breaks, gamma, errors."""
    cell = "x".join(map(str, s.get("cell", [])))
    err = s.get("sample_force_error_mean")
    errors = ("" if err is None else f"; force error {1000 * err:.1f} meV/Å, |dE| "
              f"{1000 * s['sample_energy_per_atom_error_mean']:.2f} meV/atom on "
              f"{s.get('sample_n')} labeled configurations")
    t = s.get("testset") or {}
    if t.get("force_rmse") is not None:
        errors += (f"; fixed test set ({t.get('n_labeled')}): force RMSE "
                   f"{1000 * t['force_rmse']:.1f} meV/Å")
    return (f"{cell} ({s.get('n_atoms')} atoms, {s.get('n_runs')} MD runs of "
            f"{s.get('steps')} steps), iteration {s.get('iteration')}'s potential: "
            f"{s.get('n_broke')} broke, gamma max {s.get('gamma_max', 0):.3g} mean "
            f"{s.get('gamma_mean', 0):.3g}{errors}")


def validation_line(root: Path) -> str | None:
    """The large-cell validation (validation/), in one line: done, or how far it got."""
    vdir = Path(root) / "validation"
    return checkpoint_text(vdir) if vdir.is_dir() else None


def checkpoint_text(vdir: Path) -> str:
    """A large-cell validation folder (validation/ or a per-stage iter/<i>/validate/) in
    words: its result, how far it got, or why it stopped."""
    s = _load(vdir / SUMMARY)
    if s:
        return "validation " + validation_text(s)
    runs = [e for e in _scan(vdir / "explore") if not e.name.startswith(".")]
    ran = sum(os.path.exists(os.path.join(e.path, DONE)) for e in runs)
    total, done, failed = _count_tasks(vdir / "label")
    t_total, t_done, t_failed = _count_tasks(vdir / "testset")
    stopped = _load(vdir / STOPPED)
    why = f"; STOPPED: {str(stopped.get('reason', '')).splitlines()[0]}" if stopped else ""
    return (f"validation in progress: {ran}/{len(runs)} MD runs done, "
            f"{done + failed + t_done + t_failed}/{total + t_total} labels{why}")


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        return [e for e in os.scandir(folder) if e.is_dir()]
    except FileNotFoundError:
        return []


def sample_line(paths: RunPaths, i: int, active: bool | None) -> list[str]:
    """Under a complete iteration whose error sample is still being labeled or measured
    (SLURM: the study runs beside the chain): how far it is, or why it stopped."""
    d = paths.it(i)
    total, done, failed = _count_tasks(d / "sample")
    how = ("its labels and errors follow (SLURM)" if active else
           "state unknown: squeue did not answer" if active is None else
           "no job of it is queued: `make submit` (or `make iter`) measures it")
    lines = [f"{'':>6}error sample: {done + failed}/{total} labeled"
             f"{f' ({failed} failed)' if failed else ''}, errors pending: {how}"]
    stopped = _load(d / "sample" / STOPPED)
    if stopped:
        first, *rest = str(stopped.get("reason", "")).splitlines() or [""]
        lines += [f"{'':>6}error sample STOPPED: {first}", *[f"{'':>8}{x}" for x in rest[:6]],
                  f"{'':>8}(from {d / 'sample' / STOPPED}; `make submit` continues)"]
    return lines


def _stop_lines(paths: RunPaths, i: int, idle: bool) -> list[str]:
    """Why iteration i stopped: its stop record (written by `make iter` on Ctrl-C or an
    error, and by a SLURM job that could not go on), else, when nothing works on it
    (`idle`), what is known."""
    stopped = _load(paths.it(i) / STOPPED)
    if not stopped and not idle:
        return []
    if not stopped:
        return [f"{'':>6}STOPPED: no process holds the run lock and no job of this run is "
                "queued, and the last attempt left no reason (killed, or its machine went "
                "down?); `make iter` or `make submit` goes on from here"]
    first, *rest = str(stopped.get("reason", "")).splitlines() or [""]
    how = "`make iter` continues" if stopped.get("stage") == "iter" else \
        "`make submit` continues"
    return [f"{'':>6}STOPPED: {first}", *[f"{'':>8}{line}" for line in rest[:12]],
            f"{'':>8}(from {paths.it(i) / STOPPED}; {how})"]


def status_lines(root: Path) -> list[str]:
    """The status table; under an iteration submitted to SLURM, its jobs (ids and states
    from one squeue call with a short timeout), and why its chain stopped, if it did."""
    from smallcell.sched import slurm

    paths = RunPaths(root)
    lines = [HEADER]
    its = paths.iterations()
    summaries = {i: _load(paths.summary(i)) for i in its}
    complete = {i for i, s in summaries.items() if s}
    # iterations whose jobs are all over: complete, and no error sample still coming
    settled = {i for i in complete if not summaries[i].get("sample_pending")}
    jobs, active = slurm.job_lines(paths, its, settled)
    holder = lock_holder(paths) if len(complete) < len(its) else None
    hours = dict(zip(sorted(complete), dft_so_far([summaries[i] for i in sorted(complete)]),
                     strict=True))
    for i in its:
        s = summaries[i]
        state = activity(holder, active.get(i, False)) if not s else ""
        lines.append(line_for_summary(s, hours[i]) if s else line_in_progress(paths, i, state))
        moved = transition_line(s) if s else None
        if moved:
            lines.append(moved)
        if s and os.path.isdir(paths.it(i) / "validate"):
            lines.append(f"{'':>6}per-stage " + checkpoint_text(paths.it(i) / "validate"))
        if s and s.get("sample_pending"):
            lines += sample_line(paths, i, active.get(i, False))
        lines += [f"{'':>6}{text}" for text in jobs.get(i, [])]
        if not s:  # a stop record is shown even while stragglers of the chain still run
            lines += _stop_lines(paths, i, state == "stopped")
    last = summaries[its[-1]] if its else None
    if last and finished(last):
        lines.append(f"{verdict(last)}; {potential_text(last)}")
    if complete:
        lines.append("cost: " + run_cost(root, [summaries[i] for i in sorted(complete)]))
    checked = validation_line(root)
    if checked:
        lines.append(checked)
    if slurm.cancelled(paths):
        lines.append(f"(cancelled: {paths.iter_root / slurm.CANCELLED}; `make submit` "
                     "starts again)")
    if len(lines) == 1:
        lines.append(f"(no iterations under {paths.iter_root} yet: run `make iter`)")
    return lines
