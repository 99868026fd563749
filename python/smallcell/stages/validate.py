"""validate: the final potential on a larger cell, after the last stage (`validation`).

The small-cell protocol claims that a potential trained on 4- to 32-atom cells serves
large simulations. This stage tests the claim on the run's own potential: MD on
`validation.cell` (e.g. 3x3x3 = 108 atoms) at the last stage's temperatures and pressures
with extrapolation control (gamma statistics; a run that breaks is the answer "no"), then
`validation.sample` configurations drawn at random from the MD, labeled by the labeler,
and the potential's errors on them, beside the same numbers of the last small-cell
iteration.

Everything lives in `validation/` of the run folder, written like an iteration's stages:
config.yaml (frozen), explore/<run>/ (done markers), select/sample.cfg, label/<k>/ (done |
failed), sample/errors.json, summary.json, and `done` last. A validation of an earlier
potential (the run went on since) or with other settings is moved aside to
validation.iter<i>/, never deleted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from smallcell import protocol
from smallcell.config import Config, parse_config
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import write_cfgs
from smallcell.stages import explore, label, sample, select
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
from smallcell.structures import MDRun, md_runs, rng_for, supercell

FOLDER = "validation"
TESTSET = "testset"  # the fixed test set's task folders (checkpoint.py)
SEED_KEY = -1  # md_runs' iteration for the validation's seeds: apart from every iteration


def folder(root: Path) -> Path:
    return Path(root) / FOLDER


def wanted(cfg: Config) -> bool:
    return cfg["validation"]["cell"] is not None


def settings(cfg: Config) -> Config:
    """The validation's config: the last stage's, on the larger cell, its MD length, its
    temperatures and pressures (the last stage's when not given), the grid without
    random draws, and a query sample large enough for the draw."""
    v = cfg["validation"]
    out = protocol.effective(cfg, protocol.n_stages(cfg) - 1)
    data = out.data
    data["structure"]["cell"] = list(v["cell"])
    for key in ("temperatures", "pressures"):
        if v[key] is not None:
            data["grid"][key] = list(v[key])
    data["grid"].update(draws=0, seeds_per_point=1)
    data["md"]["steps"] = v["steps"]
    data["sample"]["size"] = v["sample"]
    return out


def runs(vcfg: Config) -> list[MDRun]:
    """The validation's MD runs (also the per-stage validations', checkpoint.py)."""
    return md_runs(vcfg, SEED_KEY)


def atom_count(vcfg: Config) -> int:
    st = vcfg["structure"]
    return len(supercell(st["lattice"], st["a"], st["cell"], vcfg["species"][0]))


def _config(root: Path) -> Config:
    return load_frozen(folder(root) / "config.yaml")


def md_task(root: Path, i: int, k: int) -> dict[str, object]:
    """MD run `k` of the validation with iteration `i`'s potential (any process)."""
    vcfg = _config(root)
    run = runs(vcfg)[k]
    return explore.run_md(folder(root) / "explore" / run.name, vcfg, run,
                          RunPaths(root).stage(i, "train"))


def label_task(root: Path, i: int, k: int) -> bool:
    """Label sample configuration `k` of the validation (any process)."""
    return label.label_folder(folder(root) / "label" / str(k), _config(root))


def _last_iteration(paths: RunPaths) -> int:
    done = [i for i in paths.iterations() if paths.summary(i).exists()]
    if not done:
        raise SmallcellError(f"{paths.iter_root}: no finished iteration, so no potential to "
                             "validate; run `make iter` first")
    return done[-1]


def _fresh(root: Path, last: int, want: Config) -> None:
    """Move a validation of another potential, or with other settings, aside
    (validation.iter<i>/): kept, not mixed with this one."""
    vdir = folder(root)
    if not (vdir / "config.yaml").exists():
        return
    meta = vdir / "potential.json"
    was = read_json(meta)["iteration"] if meta.exists() else None
    if was == last and _config(root).data == parse_config(want.dump()).data:
        return
    _aside(vdir, was)


def _aside(vdir: Path, was: int | None) -> Path:
    """Rename validation/ to validation.iter<was>[.n]/ (the first free name)."""
    aside = vdir.with_name(f"{FOLDER}.iter{was}")
    n = 1
    while aside.exists():
        aside = vdir.with_name(f"{FOLDER}.iter{was}.{n}")
        n += 1
    os.replace(vdir, aside)
    return aside


def retire_removed(root: Path, first_removed: int) -> Path | None:
    """After `clean-iter I`: a validation of a removed iteration's potential no longer
    describes the run; move it aside (kept, never deleted) and return where to."""
    vdir = folder(root)
    meta = vdir / "potential.json"
    if not vdir.is_dir():
        return None
    was = read_json(meta)["iteration"] if meta.exists() else None
    if was is not None and int(was) < first_removed:
        return None
    return _aside(vdir, was)


def run(root: Path, cfg: Config, runner: Runner) -> dict[str, Any]:
    """Validate the last finished iteration's potential; return summary.json's content."""
    paths = RunPaths(root)
    last = _last_iteration(paths)
    want = settings(cfg)
    _fresh(root, last, want)
    vdir = folder(root)
    if is_done(vdir):
        return read_json(vdir / "summary.json")
    vdir.mkdir(exist_ok=True)
    if not (vdir / "config.yaml").exists():
        atomic_write_json(vdir / "potential.json", {"iteration": last})
        atomic_write_text(vdir / "config.yaml", want.dump())
    from smallcell.stages import checkpoint

    vcfg = _config(root)
    it = Iteration.open(root, last)
    md = runs(vcfg)
    n_atoms = atom_count(vcfg)
    todo = [k for k, r in enumerate(md) if not is_done(vdir / "explore" / r.name)]
    progress(it, FOLDER, f"{len(md)} MD runs of {vcfg['md']['steps']} steps on the "
             f"{'x'.join(map(str, vcfg['structure']['cell']))} cell ({n_atoms} atoms) with "
             f"iteration {last}'s potential" + (f", {len(todo)} to run" if todo else ""))
    runner.map(md_task, it, todo, "validate md")
    results = [read_json(vdir / "explore" / r.name / "gamma.json") for r in md]
    rep = explore.aggregate(results)
    progress(it, FOLDER, f"{rep.n_runs} runs, {rep.n_broke} broke, gamma max "
             f"{rep.gamma_max:.4g} mean {rep.gamma_mean:.4g}")
    dirs = _label(root, vcfg, md, it, runner)
    measured = sample.measure(dirs, vdir / "sample", paths.stage(last, "train"), vcfg)
    atomic_write_json(vdir / "sample" / "errors.json", measured)
    if dirs:
        progress(it, FOLDER, sample.describe(measured))
    # the fixed test set of the per-stage validations, when the run has one
    tested = checkpoint.measure_testset(root, paths.stage(last, "train"), vcfg,
                                        vdir / "testset_errors")
    summary = {**_summary(paths, last, vcfg, md, results, rep, measured, n_atoms),
               "testset": tested, **checkpoint.so_far(root, last),
               **checkpoint.own_cost(dirs, vcfg)}
    atomic_write_json(vdir / "summary.json", summary)
    mark_done(vdir)
    return summary


def draw(vdir: Path, md: list[MDRun], n_own: int, n_test: int, rng: np.random.Generator,
         species: list[str], origin: str) -> None:
    """Draw, once, `n_own` configurations of the MD in vdir/explore/ (select/sample.cfg,
    task inputs in label/<k>/) and `n_test` more for the fixed test set of the per-stage
    validations (select/testset.cfg, inputs in testset/<k>/; checkpoint.py): one draw
    without replacement, so the two never overlap. sample.cfg is written last. `origin`:
    the MD folder as configurations name it (select.draw_from)."""
    sample_cfg = vdir / "select" / select.SAMPLE
    if sample_cfg.exists():
        return
    cfgs, record = select.draw_from([vdir / "explore" / r.name for r in md], n_own + n_test,
                                    rng, origin)
    test, own = cfgs[:n_test], cfgs[n_test:]
    (vdir / "select").mkdir(exist_ok=True)
    atomic_write_json(vdir / "select" / "sample.json", {**record, "n_testset": len(test)})
    for k, c in enumerate(test):
        label.write_input(vdir / TESTSET / str(k), c, species)
    for k, c in enumerate(own):
        label.write_input(vdir / "label" / str(k), c, species)
    if test:
        with atomic_output(vdir / "select" / f"{TESTSET}.cfg") as tmp:
            write_cfgs(tmp, test)
    with atomic_output(sample_cfg) as tmp:
        write_cfgs(tmp, own)


def drawn(vdir: Path) -> tuple[int, int]:
    """(own sample, fixed test set) sizes of a finished draw, from its record (draw):
    the task folders follow from them without parsing the cfg files."""
    record = read_json(vdir / "select" / "sample.json")
    n_test = int(record.get("n_testset", 0))
    return int(record["n_drawn"]) - n_test, n_test


def _label(root: Path, vcfg: Config, md: list[MDRun], it: Iteration,
           runner: Runner) -> list[Path]:
    """Draw the sample once (select/sample.cfg), label it; the task folders."""
    vdir = folder(root)
    draw(vdir, md, vcfg["sample"]["size"], 0,
         rng_for(vcfg["run"]["seed"], "validation sample"), list(vcfg["species"]),
         FOLDER + "/explore")
    dirs = [vdir / "label" / str(k) for k in range(drawn(vdir)[0])]
    todo = [k for k, d in enumerate(dirs) if not (is_done(d) or is_failed(d))]
    if todo:
        progress(it, FOLDER, f"labeling {len(todo)} of {len(dirs)} sample configurations")
    runner.map(label_task, it, todo, "validate label")
    return dirs


def md_summary(it: Iteration, vcfg: Config, md: list[MDRun], results: list[dict],
               rep: explore.ExploreReport, n_atoms: int) -> dict[str, Any]:
    """The summary keys of a large-cell MD with iteration `it`'s potential (the final
    validation's and the per-stage ones')."""
    s = read_json(it.paths.summary(it.i))
    return {
        "iteration": it.i,
        "stage": s.get("stage", 0),
        "stage_name": s.get("stage_name"),
        "stage_end": s.get("stage_end"),
        "potential": f"iter/{it.i}/train",
        "cell": vcfg["structure"]["cell"],
        "n_atoms": n_atoms,
        "steps": vcfg["md"]["steps"],
        "runs": [{"run": r.name, "temperature": r.temperature, "pressure": r.pressure,
                  "steps_done": g.get("steps_done"), "broke": g.get("broke"),
                  "gamma_max": g.get("max"), "gamma_mean": g.get("mean")}
                 for r, g in zip(md, results, strict=True)],
        **{k: v for k, v in rep.as_dict().items() if not k.startswith("gamma_hist")},
    }


def _summary(paths: RunPaths, last: int, vcfg: Config, md: list[MDRun],
             results: list[dict], rep: explore.ExploreReport, measured: dict[str, Any],
             n_atoms: int) -> dict[str, Any]:
    small = read_json(paths.summary(last))
    return {
        **md_summary(Iteration.open(paths.root, last), vcfg, md, results, rep, n_atoms),
        **sample.summarize(measured),
        # the last small-cell iteration, to compare: its MD's gamma, its error sample
        # (which measured the potential before it) and its fit's training/test errors
        "small_cell": {
            "cell": small.get("cell"),
            "gamma_max": small.get("gamma_max"),
            "gamma_mean": small.get("gamma_mean"),
            "sample_force_error_mean": small.get("sample_force_error_mean"),
            "sample_energy_per_atom_error_mean": small.get(
                "sample_energy_per_atom_error_mean"),
            "train_force_rmse": (small.get("train_errors") or {}).get("force_rmse"),
            "test_force_rmse": (small.get("test_errors") or {}).get("force_rmse"),
        },
    }
