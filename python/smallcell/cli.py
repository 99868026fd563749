"""The `smallcell` command (bin/smallcell): the one place that sees every layer."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from smallcell.errors import SmallcellError, disk_full
from smallcell.formats.errors import FormatError


def _root(args: argparse.Namespace) -> Path:
    return Path(args.run_dir).resolve()


def _run_config(args: argparse.Namespace) -> Any:
    """The config of a command that works on a run: --config, else the run's own
    (runconfig.resolve); `args.config` is set to the file used."""
    from smallcell import runconfig
    from smallcell.config import load_config

    args.config = runconfig.resolve(_root(args), args.config)
    return load_config(args.config)


def _pin(args: argparse.Namespace, cfg: Any) -> None:
    """Hold the run to its config (runconfig.pin); say so when a change was accepted."""
    from smallcell import runconfig
    from smallcell.state import RunPaths

    entry = runconfig.pin(_root(args), cfg, change=args.change_config)
    if entry:
        print(f"smallcell: config change accepted: from iteration {entry['from_iteration']} "
              f"on, {', '.join(entry['changed'])} as in {args.config} (recorded in "
              f"{runconfig.changes_path(RunPaths(_root(args)))})", flush=True)


def cmd_iter(args: argparse.Namespace) -> int:
    from smallcell import loop
    from smallcell.engines.base import check_engines
    from smallcell.sched.local import LocalRunner
    from smallcell.state import RunLock, RunPaths
    from smallcell.status import (
        HEADER,
        dft_so_far,
        line_for_summary,
        potential_text,
        run_cost,
        transition_line,
        validation_line,
    )

    root = _root(args)
    cfg = _run_config(args)
    check_engines(cfg, local_jobs=args.jobs if args.jobs is not None else cfg["run"]["jobs"])
    args.upto = _upto(args, cfg)
    t0 = time.perf_counter()
    jobs = args.jobs if args.jobs is not None else cfg["run"]["jobs"]
    with RunLock(RunPaths(root), f"smallcell iter --upto {args.upto}"), \
            LocalRunner(jobs) as runner:
        _pin(args, cfg)
        print(f"smallcell: iterations 0..{args.upto} of {args.config} in {root / 'iter'} "
              f"({runner.jobs} workers)", flush=True)
        summaries = loop.run(root, cfg, args.upto, runner)
    print()
    print(HEADER)
    shown = summaries[-20:]  # one screen; `make status` lists them all
    if len(summaries) > len(shown):
        print(f"  ... {len(summaries) - len(shown)} earlier iterations: make status")
    hours = dft_so_far(summaries)[-len(shown):]
    for s, h in zip(shown, hours, strict=True):
        print(line_for_summary(s, h))
        if transition_line(s):
            print(transition_line(s))
    print(f"\n{len(summaries)} iterations, {summaries[-1].get('n_train', 0)} configurations "
          f"in the training set; {run_cost(root, summaries)}")
    last = summaries[-1]
    later = [i for i in RunPaths(root).iterations() if i > last["iteration"]]
    verdict = (loop.verdict(last) if loop.finished(last) else
               f"iterations 0..{last['iteration']} are complete; the run goes on to iteration "
               f"{later[-1]} already (`make status`; `make iter N={later[-1]}` or more "
               "resumes it)" if later else
               f"not converged yet (run `make iter N={last['iteration'] + 1}` or more)")
    print(f"\n{verdict}; {potential_text(last)}; {time.perf_counter() - t0:.1f} s")
    checked = validation_line(root)
    if checked:
        print(checked)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from smallcell.status import status_lines

    print("\n".join(status_lines(_root(args))))
    return 0


def cmd_clean_iter(args: argparse.Namespace) -> int:
    from smallcell import runconfig
    from smallcell.stages import validate
    from smallcell.state import RunLock, RunPaths

    paths = RunPaths(_root(args))
    doomed = [i for i in paths.iterations() if i >= args.i]
    if not doomed:
        print(f"nothing to remove: no iteration >= {args.i} under {paths.iter_root}")
        return 0
    names = ", ".join(str(paths.it(i)) for i in doomed)
    if not args.force:
        if not sys.stdin.isatty():
            raise SmallcellError(f"would remove {names}; rerun with FORCE=1 (--force) to confirm")
        answer = input(f"remove {names}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("nothing removed")
            return 1
    with RunLock(paths, f"smallcell clean-iter {args.i}"):
        for i in sorted(doomed, reverse=True):
            # rename first so a half-deleted folder can never look like an iteration
            trash = paths.iter_root / f".trash.{i}.{os.getpid()}"
            os.replace(paths.it(i), trash)
            shutil.rmtree(trash)
        if not paths.iterations():  # nothing left: the next `iter` starts a new run
            runconfig.forget(paths)
        aside = validate.retire_removed(paths.root, args.i)
    if aside:
        print(f"the large-cell validation of a removed iteration moved to {aside}")
    print(f"removed {names}")
    return 0


def _print_records(records: list[dict]) -> None:
    for r in records:
        words = [f"  {r['stage']:<8} job {r['job_id']}"]
        if r.get("array"):
            words.append(f"array [{r['array']}]: {r['n_tasks']} tasks in {r['elements']} "
                         "element(s)")
        if r.get("after"):
            words.append(f"after {r['after']}")
        print(", ".join(words))


def _upto(args: argparse.Namespace, cfg: Any = None) -> int:
    """--upto, or the config's run.max_iterations."""
    if args.upto is not None:
        return int(args.upto)
    from smallcell.config import load_config

    return int((cfg or load_config(args.config))["run"]["max_iterations"])


def cmd_submit(args: argparse.Namespace) -> int:
    from smallcell import jobs, runconfig

    args.config = runconfig.resolve(_root(args), args.config)
    args.upto = _upto(args)
    root = _root(args)
    records = jobs.submit(root, args.config, args.upto, args.change_config)
    if records:
        print(f"smallcell: submitted the chain of iterations up to {args.upto} of {args.config} "
              f"({root / 'iter'}):")
        _print_records(records)
        print("the jobs submit the rest themselves; `make status` shows them, `make cancel` "
              "stops them, `make submit` again continues where the folders say")
    return 0


def cmd_pilot(args: argparse.Namespace) -> int:
    from smallcell import jobs, runconfig

    args.config = runconfig.resolve(_root(args), args.config)
    args.upto = _upto(args)
    rec = jobs.pilot(_root(args), args.config, args.upto, args.change_config)
    if rec:
        print(f"smallcell: submitted the pilot job {rec['job_id']} (iterations up to "
              f"{args.upto} in one allocation; it resubmits itself before its walltime)")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from smallcell.sched import slurm
    from smallcell.state import RunPaths

    paths = RunPaths(_root(args))
    ids = slurm.cancel(paths)
    if ids:
        print(f"smallcell: cancelled {len(ids)} job(s): {' '.join(ids)}")
    else:
        print("smallcell: no job of this run is queued or running")
    print("finished tasks are kept; `make submit` continues where the folders say")
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from smallcell import jobs, runconfig

    root = _root(args)
    args.config = runconfig.resolve(root, args.config)
    if args.stage in ("explore", "label"):
        if args.list is None or args.element is None:
            raise SmallcellError(f"job {args.stage} needs --list and --element")
        return jobs.run_element(root, args.stage, args.iter, args.list, args.element)
    if args.stage == "pilot":
        return jobs.run_pilot(root, args.upto, args.config, args.jobs)
    if args.iter is None:
        raise SmallcellError(f"job {args.stage} needs --iter")
    if args.stage == "checkpoint":
        return jobs.run_checkpoint(root, args.iter, args.config, args.jobs)
    return jobs.run_checker(root, args.stage, args.iter, args.upto, args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every problem of a config in one report, in file order: the loader's (schema, rules
    between keys, files named) and engines/preflight.py's (FILL IN lines, adapters,
    programs after the setup lines, POTCAR / template / initial data contents, settings
    that cannot deliver). Errors: the report on stderr, exit status 1. Otherwise the
    effective config on stdout (warnings on stderr), exit status 0."""
    import re

    from smallcell.config import load_config
    from smallcell.engines.preflight import Problem, problems

    loaded: list[str] = []
    cfg = load_config(args.config, problems=loaded)
    local = cfg["run"]["jobs"] if cfg["engines"]["scheduler"] == "local" else None
    found = {p.text: p for p in [*(Problem(t) for t in loaded),
                                 *problems(cfg, local_jobs=local)]}

    def line_of(p: Problem) -> int:
        m = re.match(r"[^\n]*?:(\d+): ", p.text)
        return int(m.group(1)) if m else 1 << 30

    ordered = sorted(found.values(), key=line_of)
    errors = [p.text for p in ordered if not p.warning]
    for p in ordered:
        if p.warning:
            print(f"smallcell: warning: {p.text}", file=sys.stderr)
    if errors:
        print(f"smallcell: check-config: {len(errors)} problem(s) in {args.config}:",
              file=sys.stderr)
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(cfg.dump(), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from smallcell.config import load_config
    from smallcell.engines.base import check_engines
    from smallcell.stages import sweep
    from smallcell.study import sweep_report

    cfg = load_config(args.config)
    check_engines(cfg)
    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    sweep.run(out, cfg, args.levels, Path(args.data).resolve(),
              [Path(t).resolve() for t in args.test])
    print("\n" + sweep_report.write(out))
    print(f"\nsweep: {out}/sweep.md, figures {', '.join(sweep_report.FIGURES)}; "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from smallcell.study import compare, compare_report

    root = _root(args)
    cfg = _run_config(args)
    out = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    t0 = time.perf_counter()
    compare.run(root, out, cfg, deepmd=not args.mtp_only,
                test=Path(args.test).resolve() if args.test else None,
                curve_points=args.curve_points)
    print(f"\ncompare: {out}/compare.md, {out}/{compare.RESULTS}, figures "
          f"{', '.join(compare_report.FIGURES)}; {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from smallcell.study import report

    root = _root(args)
    try:
        page = report.build(root)
    except FileNotFoundError:
        raise SmallcellError(f"{root / 'iter'}: no finished iteration (no summary.json) to "
                             "report on; run `make iter` first") from None
    print(f"report: {page} (and report.md, figures beside it)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from smallcell.engines.base import check_engines
    from smallcell.sched.local import LocalRunner
    from smallcell.stages import validate
    from smallcell.state import RunLock, RunPaths
    from smallcell.status import validation_line

    cfg = _run_config(args)
    if not validate.wanted(cfg):
        raise SmallcellError(f"{args.config}: validation.cell is not set: nothing to validate "
                             "(e.g. validation: {cell: [3, 3, 3]})")
    check_engines(cfg, local_jobs=args.jobs if args.jobs is not None else cfg["run"]["jobs"])
    root = _root(args)
    jobs = args.jobs if args.jobs is not None else cfg["run"]["jobs"]
    paths = RunPaths(root)
    if args.iter is not None and not paths.summary(args.iter).exists():
        raise SmallcellError(f"{paths.summary(args.iter)}: missing: iteration {args.iter} "
                             "has not finished, so it has no potential to validate")
    with RunLock(paths, "smallcell validate"), LocalRunner(jobs) as runner:
        _pin(args, cfg)
        if args.iter is None:
            validate.run(root, cfg, runner)
        else:
            from smallcell.stages import checkpoint

            s = checkpoint.run(root, cfg, args.iter, runner)
            print(f"per-stage validation of iteration {args.iter}: {checkpoint.describe(s)}")
            return 0
    print(validation_line(root))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from smallcell.export import export

    root = _root(args)
    out = Path(args.out) if Path(args.out).is_absolute() else root / args.out
    written = export(root, out, args.upto)
    for name, n in written.items():
        print(f"{out / (name + '.extxyz')}: {n} configurations")
    if not written:
        print("nothing to export yet: no iteration has collected a training set")
    return 0


def cmd_config_doc(args: argparse.Namespace) -> int:
    from smallcell.config import reference_markdown

    print(reference_markdown(), end="")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """`smallcell retry`: re-queue an iteration's failed tasks and run them (retry.py)."""
    from smallcell import retry

    root = _root(args)
    return retry.retry(root, args.iter, retry.config_file(root, args.config),
                       args.stage or retry.STAGES, scheduler=args.scheduler, jobs=args.jobs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smallcell", description=__doc__)
    p.add_argument("--run-dir", default=os.environ.get("SMALLCELL_RUN_DIR", "."),
                   help="folder holding iter/ (default: current folder)")
    sub = p.add_subparsers(dest="command", required=True)
    upto_help = "the last iteration (default: the config's run.max_iterations)"
    config_help = ("the run's config file (default: the one the run was started with, "
                   "recorded in iter/config.yaml; else config.yaml)")
    s = sub.add_parser("iter", help="run the loop locally up to iteration N")
    s.add_argument("--upto", type=int, default=None, metavar="N", help=upto_help)
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--change-config", action="store_true",
                   help="accept a config whose results-bearing keys differ from the run's "
                        "(recorded in iter/config-changes.json and the report)")
    s.add_argument("--jobs", type=int, default=None, help="worker processes (default: run.jobs)")
    s.set_defaults(fn=cmd_iter)
    s = sub.add_parser("submit", help="submit the SLURM chain up to iteration N and return")
    s.add_argument("--upto", type=int, default=None, metavar="N", help=upto_help)
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--change-config", action="store_true",
                   help="accept a config whose results-bearing keys differ from the run's "
                        "(recorded in iter/config-changes.json and the report)")
    s.set_defaults(fn=cmd_submit)
    s = sub.add_parser("pilot", help="submit one SLURM job that runs the whole loop")
    s.add_argument("--upto", type=int, default=None, metavar="N", help=upto_help)
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--change-config", action="store_true",
                   help="accept a config whose results-bearing keys differ from the run's "
                        "(recorded in iter/config-changes.json and the report)")
    s.set_defaults(fn=cmd_pilot)
    s = sub.add_parser("cancel", help="cancel this run's SLURM jobs")
    s.set_defaults(fn=cmd_cancel)
    s = sub.add_parser("job", help="what a SLURM job runs (used by the sbatch scripts)")
    s.add_argument("stage", choices=("explore", "select", "label", "collect-train", "sample",
                                     "checkpoint", "pilot"))
    s.add_argument("--iter", type=int, metavar="I")
    s.add_argument("--list", help="task list name (array jobs)")
    s.add_argument("--element", type=int, help="array element (SLURM_ARRAY_TASK_ID)")
    s.add_argument("--upto", type=int, default=0, metavar="N")
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--jobs", type=int, default=1,
                   help="worker processes (pilot, checkpoint)")
    s.set_defaults(fn=cmd_job)
    s = sub.add_parser("status", help="one line per iteration")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("clean-iter", help="remove iteration I and later")
    s.add_argument("i", type=int, metavar="I", help="the first iteration to remove")
    s.add_argument("--force", action="store_true", help="do not ask (FORCE=1)")
    s.set_defaults(fn=cmd_clean_iter)
    s = sub.add_parser("validate", help="the final potential on validation.cell: gamma and "
                       "errors on a larger cell (also run by iter after the last stage)")
    s.add_argument("--config", default=None, help=config_help)
    s.add_argument("--change-config", action="store_true",
                   help="accept a config whose results-bearing keys differ from the run's "
                        "(recorded in iter/config-changes.json and the report)")
    s.add_argument("--jobs", type=int, default=None, help="worker processes (default: run.jobs)")
    s.add_argument("--iter", type=int, default=None, metavar="I",
                   help="validate iteration I's potential instead (a per-stage validation "
                        "in iter/I/validate/, measured on the fixed test set too)")
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("export", help="the training, test and error-sample sets as extended "
                       "XYZ (for other MLIPs)")
    s.add_argument("--out", default="export", help="folder (default: RUN_DIR/export)")
    s.add_argument("--upto", type=int, default=None, metavar="I",
                   help="the training set of iteration I (default: the last)")
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("check-config", help="validate a config and print the effective one")
    s.add_argument("config", nargs="?", default="config.yaml")
    s.set_defaults(fn=cmd_check_config)
    from smallcell import convert

    convert.add_parser(sub)
    s = sub.add_parser("sweep", help="train several MTP levels on one data set, test each")
    s.add_argument("--levels", type=int, nargs="+", required=True, metavar="L")
    s.add_argument("--data", required=True, help="labeled training set (.cfg)")
    s.add_argument("--test", nargs="+", required=True, help="labeled test set(s) (.cfg)")
    s.add_argument("--out", default="sweep", help="output folder (default: sweep/)")
    s.add_argument("--config", default="config.yaml",
                   help="trainer settings and species (default: config.yaml)")
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("compare", help="MTP against a DeePMD committee on a finished run's "
                       "final training set: errors, learning curves, uncertainties")
    s.add_argument("--out", default="compare", help="folder (default: RUN_DIR/compare)")
    s.add_argument("--config", default=None,
                   help="trainer and deepmd settings (default: the run's own config)")
    s.add_argument("--mtp-only", action="store_true",
                   help="the MTP levels alone, without DeePMD (no `make setup "
                        "EXTRAS=deepmd` needed)")
    s.add_argument("--test", default=None, metavar="CFG",
                   help="a labeled held-out set (default: the run's iter/0/select/test.cfg)")
    s.add_argument("--curve-points", type=int, default=None, metavar="N",
                   help="at most N learning-curve points per model (default: one per "
                        "iteration that added labels)")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("report", help="write report/index.html and report/report.md")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("config-doc", help="print the config reference (docs/config.md)")
    s.set_defaults(fn=cmd_config_doc)
    s = sub.add_parser("retry", help="re-queue iteration I's failed tasks (earlier attempts "
                       "kept in attempts/) and run them, locally or on SLURM")
    s.add_argument("--iter", type=int, required=True, metavar="I")
    s.add_argument("--stage", action="append", choices=("explore", "label", "sample"),
                   help="only this stage's failed tasks (repeatable; default: all)")
    s.add_argument("--config", default=None,
                   help="the run's config (default: the one the run was started with, "
                        "else config.yaml)")
    s.add_argument("--scheduler", choices=("local", "slurm"), default=None,
                   help="where to run them (default: the config's engines.scheduler)")
    s.add_argument("--jobs", type=int, default=None, help="worker processes (local; "
                   "default: run.jobs)")
    s.set_defaults(fn=cmd_retry)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (SmallcellError, FormatError) as exc:
        print(f"smallcell: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"smallcell: error: {exc.filename}: missing although its stage was marked done "
              "(edited by hand?); delete that stage's `done` marker to redo it",
              file=sys.stderr)
        return 2
    except OSError as exc:  # a write outside state.py's helpers (a log, a figure)
        full = disk_full(exc)
        if full is None:
            raise
        print(f"smallcell: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsmallcell: interrupted; finished work is kept, run the same command to "
              "resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
