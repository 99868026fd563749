"""Per-stage validation: the potential of a stage's end on the target cell (issue 19).

The final validation (validate.py) says whether the last potential serves the large
cell; this stage says how the large-cell error fell on the way there, and at what DFT
cost. After an iteration that ends a stage of the protocol (validation.every_stage; the
last stage's end is the final validation's job) or every `validation.every` iterations,
its potential runs MD on `validation.cell` at the validation's temperatures and pressures
(validation.stage_steps) and is measured twice:

- on the fixed large-cell test set (validation.test_set configurations): drawn once, from
  the first checkpoint's MD, labeled once, and measured by every later checkpoint and by
  the final validation, so stages are compared on the same configurations;
- on its own MD's sample (validation.stage_sample configurations), which follows the
  configurations this potential visits.

Everything lives in iter/<i>/validate/, written like an iteration's stages:

    config.yaml           the checkpoint's settings (frozen)
    explore/<run>/        MD with iteration i's potential (done markers)
    select/sample.cfg     its own sample; select/testset.cfg the fixed test set (the
                          checkpoint that drew it only)
    label/<k>/            its own sample's labels; testset/<k>/ the test set's
    sample/errors.json    errors on its own sample; testset_errors.json on the test set
    summary.json, done    done last

A checkpoint with other settings is moved aside (validate.old<n>/), never deleted.
`smallcell validate --iter I` makes one for any finished iteration by hand.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from smallcell.config import Config, parse_config
from smallcell.engines.base import trainer_for
from smallcell.stages import explore, label, sample, select, validate
from smallcell.stages.common import Iteration, Runner, load_frozen, progress
from smallcell.state import (
    RunPaths,
    atomic_output,
    atomic_write_json,
    atomic_write_text,
    is_done,
    is_failed,
    mark_done,
    read_json,
)
from smallcell.status import finished, reference_calls
from smallcell.structures import rng_for

FOLDER = "validate"
TESTSET = validate.TESTSET
TESTSET_ERRORS = "testset_errors.json"


def folder(root: Path, i: int) -> Path:
    return RunPaths(root).it(i) / FOLDER


def due(cfg: Config, summary: dict[str, Any]) -> bool:
    """Whether the iteration of `summary` gets a checkpoint: it ends a stage but the last
    (every_stage), or its number is a multiple of validation.every; never the iteration
    that ends the run, whose potential the final validation measures."""
    v = cfg["validation"]
    if v["cell"] is None or finished(summary):
        return False
    i = int(summary["iteration"])
    return bool((v["every_stage"] and summary.get("stage_end"))
                or (v["every"] and i > 0 and i % v["every"] == 0))


def settings(cfg: Config) -> Config:
    """The final validation's settings with the per-stage MD length and sample."""
    v = cfg["validation"]
    out = validate.settings(cfg)
    out.data["md"]["steps"] = v["stage_steps"] or v["steps"]
    out.data["sample"]["size"] = v["stage_sample"]
    return out


def _config(root: Path, i: int) -> Config:
    return load_frozen(folder(root, i) / "config.yaml")


def md_task(root: Path, i: int, k: int) -> dict[str, object]:
    """MD run `k` of iteration i's checkpoint (any process)."""
    vcfg = _config(root, i)
    run = validate.runs(vcfg)[k]
    return explore.run_md(folder(root, i) / "explore" / run.name, vcfg, run,
                          RunPaths(root).stage(i, "train"))


def _label_dirs(cdir: Path) -> list[Path]:
    """The checkpoint's label tasks in task order: its own sample's, then the test set's
    (when it drew the test set). Every label task asks: the draw's record, not its cfgs."""
    own, n_test = validate.drawn(cdir)
    return ([cdir / "label" / str(k) for k in range(own)]
            + [cdir / TESTSET / str(k) for k in range(n_test)])


def label_task(root: Path, i: int, k: int) -> bool:
    """Label task `k` of iteration i's checkpoint (any process)."""
    return label.label_folder(_label_dirs(folder(root, i))[k], _config(root, i))


def testset_source(root: Path) -> Path | None:
    """The checkpoint folder holding the fixed test set: the earliest iteration's that
    drew one (None before any did)."""
    paths = RunPaths(root)
    for i in paths.iterations():
        cdir = paths.it(i) / FOLDER
        if (cdir / "select" / f"{TESTSET}.cfg").exists():
            return cdir
    return None


def measure_testset(root: Path, train_dir: Path, vcfg: Config, out: Path
                    ) -> dict[str, Any] | None:
    """Errors of `train_dir`'s potential on the fixed test set (None without one, or
    before its labels are done): RMSE and MAE of energy, forces and stress."""
    src = testset_source(root)
    if src is None:
        return None
    dirs = [d for d in _label_dirs(src) if d.parent.name == TESTSET]
    if not dirs or not all(is_done(d) or is_failed(d) for d in dirs):
        return None
    done = [d for d in dirs if is_done(d)]
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"source": str(src.relative_to(root)), "n": len(dirs),
                              "n_labeled": len(done)}
    if done:
        with atomic_output(out / "labeled.cfg") as tmp, open(tmp, "wb") as fh:
            for d in done:
                fh.write((d / "labeled.cfg").read_bytes())
        result.update(trainer_for(vcfg).errors(train_dir, list(vcfg["species"]),
                                                out / "labeled.cfg"))
    return result


def _fresh(cdir: Path, want: Config) -> None:
    """Move a checkpoint made with other settings aside (validate.old<n>/): kept."""
    frozen = cdir / "config.yaml"
    if not frozen.exists() or load_frozen(frozen).data == parse_config(want.dump()).data:
        return
    n = 1
    while cdir.with_name(f"{FOLDER}.old{n}").exists():
        n += 1
    os.replace(cdir, cdir.with_name(f"{FOLDER}.old{n}"))


def run(root: Path, cfg: Config, i: int, runner: Runner) -> dict[str, Any]:
    """Validate iteration i's potential on the target cell; return summary.json's content."""
    cdir = folder(root, i)
    _fresh(cdir, settings(cfg))
    if is_done(cdir):
        return read_json(cdir / "summary.json")
    t0 = time.perf_counter()
    cdir.mkdir(exist_ok=True)
    if not (cdir / "config.yaml").exists():
        atomic_write_text(cdir / "config.yaml", settings(cfg).dump())
    vcfg = _config(root, i)
    it = Iteration.open(root, i)
    runs = validate.runs(vcfg)
    n_atoms = validate.atom_count(vcfg)
    todo = [k for k, r in enumerate(runs) if not is_done(cdir / "explore" / r.name)]
    progress(it, FOLDER, f"per-stage validation: {len(runs)} MD runs of "
             f"{vcfg['md']['steps']} steps on {n_atoms} atoms with iteration {i}'s potential"
             + (f", {len(todo)} to run" if todo else ""))
    runner.map(md_task, it, todo, "checkpoint md")
    results = [read_json(cdir / "explore" / r.name / "gamma.json") for r in runs]
    rep = explore.aggregate(results)
    _draw(root, cdir, vcfg, runs)
    dirs = _label_dirs(cdir)
    missing = [k for k, d in enumerate(dirs) if not (is_done(d) or is_failed(d))]
    if missing:
        progress(it, FOLDER, f"labeling {len(missing)} of {len(dirs)} configurations")
    runner.map(label_task, it, missing, "checkpoint label")
    train_dir = RunPaths(root).stage(i, "train")
    own = [d for d in dirs if d.parent.name == "label"]
    measured = sample.measure(own, cdir / "sample", train_dir, vcfg)
    atomic_write_json(cdir / "sample" / "errors.json", measured)
    tested = measure_testset(root, train_dir, vcfg, cdir / "testset_errors")
    if tested is not None:
        atomic_write_json(cdir / TESTSET_ERRORS, tested)
    summary = {**validate.md_summary(it, vcfg, runs, results, rep, n_atoms),
               **sample.summarize(measured), "testset": tested,
               **so_far(root, i), **own_cost(dirs, vcfg),
               "seconds": time.perf_counter() - t0}  # this attempt's wall time
    progress(it, FOLDER, describe(summary))
    atomic_write_json(cdir / "summary.json", summary)
    mark_done(cdir)
    return summary


def _draw(root: Path, cdir: Path, vcfg: Config, md: list) -> None:
    """Draw the checkpoint's own sample, and the fixed test set when no checkpoint has
    one yet (validate.draw)."""
    if (cdir / "select" / select.SAMPLE).exists():
        return
    n_test = vcfg["validation"]["test_set"] if testset_source(root) is None else 0
    validate.draw(cdir, md, vcfg["sample"]["size"], n_test,
                  rng_for(vcfg["run"]["seed"], f"checkpoint {cdir.parent.name}"),
                  list(vcfg["species"]), f"iter/{cdir.parent.name}/{FOLDER}/explore")


def so_far(root: Path, i: int) -> dict[str, Any]:
    """What making iteration i's potential had cost: its training labels, every training
    reference calculation (failed ones included) and their DFT cost (seconds). The error
    study is left out: it measures the potentials, it does not make them (and on SLURM it
    may still be running when this is written)."""
    paths = RunPaths(root)
    sums = [read_json(paths.summary(j)) for j in range(i + 1) if paths.summary(j).exists()]
    calls = reference_calls(sums)
    return {"labels_so_far": calls["train"],
            "reference_so_far": calls["train"] + calls["failed"],
            "dft_seconds_so_far": calls["dft_train"]}


def own_cost(dirs: list[Path], vcfg: Config) -> dict[str, Any]:
    """The validation's own reference calculations and their DFT cost."""
    marked = [d for d in dirs if is_done(d) or is_failed(d)]
    return {"n_reference": len(marked),
            "dft_seconds": label.folders_cost(marked, vcfg["engines"]["labeler"])}


def describe(s: dict[str, Any]) -> str:
    """One line of a checkpoint's (or the final validation's) result."""
    t = s.get("testset") or {}
    test = (f"test set ({t.get('n_labeled')}) force RMSE {1000 * t['force_rmse']:.1f} meV/Å, "
            f"energy {1000 * t['energy_rmse']:.2f} meV/atom; " if t.get("force_rmse") is not None
            else "")
    own = s.get("sample_force_error_mean")
    return (f"{s.get('n_broke')}/{s.get('n_runs')} runs broke, gamma max "
            f"{s.get('gamma_max', 0):.3g}; {test}"
            + ("" if own is None else f"own MD sample ({s.get('sample_n')}) force error "
               f"{1000 * own:.1f} meV/Å; ")
            + f"{s.get('labels_so_far')} training labels so far")
