"""label: one task folder `vasp/<k>/` per selected configuration, and `sample/<k>/` per
configuration of the error study's sample.

Both kinds are one numbered task list, so a SLURM array, a resubmission and the local
runner treat them alike: tasks 0..n_selected-1 are `vasp/<k>/`, the next n_sample are
`sample/<k - n_selected>/`. Only `vasp/` labels are collected into the training set.

`prepare` writes each task's inputs (`input.cfg`, `POSCAR`) once; `run_task` labels one
task and ends with `labeled.cfg` + `done`, or `failed` with the reason after `retries`
retries (failures are data: they never stop the other tasks). A task with a marker is never
run again, so a resumed iteration only labels what is missing.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from smallcell.config import Config
from smallcell.engines.base import LabelError, labeler_for
from smallcell.errors import reraise_disk_full
from smallcell.formats.cfg import (
    Cfg,
    atoms_to_cfg,
    cfg_to_atoms,
    format_cfg,
    iter_cfgs,
    read_cfgs,
)
from smallcell.stages.common import Iteration, Runner, progress
from smallcell.stages.select import SAMPLE, SELECTED
from smallcell.state import (
    atomic_output,
    atomic_write_text,
    is_done,
    is_failed,
    mark_done,
    mark_failed,
    read_json,
)

KIND = "vasp"
SAMPLE_KIND = "sample"


def n_selected(it: Iteration) -> int:
    """Tasks whose labels go into the training set."""
    return int(read_json(it.stage("select") / "done")["n_selected"])


def n_sample(it: Iteration) -> int:
    """Tasks of the error study's sample (0 for runs selected before it existed)."""
    return int(read_json(it.stage("select") / "done").get("n_sample", 0))


def n_tasks(it: Iteration) -> int:
    return n_selected(it) + n_sample(it)


def task_dir(it: Iteration, k: int, n_sel: int | None = None) -> Path:
    """Task `k` of the combined list: vasp/<k>, or sample/<k - n_selected> (`n_sel`:
    n_selected when the caller has it, saving a read of the select marker)."""
    n_sel = n_selected(it) if n_sel is None else n_sel
    return selected_dir(it, k) if k < n_sel else sample_dir(it, k - n_sel)


def selected_dir(it: Iteration, k: int) -> Path:
    """Task folder of selected configuration `k` (labels that train)."""
    return it.paths.task(it.i, k, KIND)


def sample_dir(it: Iteration, j: int) -> Path:
    """Task folder of sample configuration `j`."""
    return it.paths.task(it.i, j, SAMPLE_KIND)


def _inputs(it: Iteration) -> Iterator[Cfg]:
    """The selected configurations, then the sample's (iteration 0 has no sample.cfg)."""
    folder = it.stage("select")
    yield from iter_cfgs(folder / SELECTED)
    if (folder / SAMPLE).exists():
        yield from iter_cfgs(folder / SAMPLE)


ABOUT = """\
Label tasks of this iteration: one folder per selected configuration (input.cfg, POSCAR
-> labeled.cfg, done | failed). Labeler: {labeler}.
The folder is named vasp/ whatever the labeler (VASP, GPAW, the embedded EAM): scripts and
the SLURM arrays address tasks as iter/<i>/vasp/<k>/, a public path kept stable.
"""


def prepare(it: Iteration) -> int:
    """Create the task folders with their inputs (idempotent); return the task count."""
    n = 0
    n_sel = n_selected(it)
    # why a GPAW or EAM task lives under vasp/: beside the folder, never in it (scripts
    # take every entry of vasp/ for a task)
    about = it.dir / f"{KIND}.README"
    if n_sel and not about.exists():
        atomic_write_text(about, ABOUT.format(labeler=it.cfg["engines"]["labeler"]))
    for k, cfg in enumerate(_inputs(it)):
        n += 1
        write_input(task_dir(it, k, n_sel), cfg, it.species)
    return n


def check_label(atoms, max_force: float) -> str | None:
    """Why a label is absurd (NaN, huge forces), or None when it is acceptable."""
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    if not math.isfinite(e) or not np.all(np.isfinite(f)):
        return "non-finite energy or forces"
    stress = atoms.calc.results.get("stress") if atoms.calc is not None else None
    if stress is not None and not np.all(np.isfinite(stress)):
        return "non-finite stress"  # the cfg writer would refuse it and crash the run
    fmax = float(np.abs(f).max()) if f.size else 0.0
    if fmax > max_force:
        return f"force component {fmax:.3g} eV/Å above label.max_force={max_force:g}"
    return None


def run_task(root: Path, i: int, k: int) -> bool:
    """Label task `k` of iteration `i`; True when labeled, False when marked failed."""
    it = Iteration.open(root, i)
    return label_folder(task_dir(it, k), it.cfg)


def write_input(folder: Path, cfg: Cfg, species: list[str]) -> None:
    """A task folder's inputs: input.cfg and the POSCAR a person would look at (once)."""
    from ase.io import write

    if (folder / "input.cfg").exists():
        return
    with atomic_output(folder / "POSCAR") as poscar:
        write(poscar, cfg_to_atoms(cfg, species), format="vasp", direct=True, sort=False)
    atomic_write_text(folder / "input.cfg", format_cfg(cfg))


def label_folder(folder: Path, config: Config) -> bool:
    """Label the task folder's input.cfg with the configured labeler and its retries;
    True when labeled, False when marked failed. Shared by the iterations' tasks and the
    large-cell validation's."""
    if is_done(folder):
        return True
    if is_failed(folder):
        return False
    species = list(config["species"])
    labeler = labeler_for(config)
    [cfg] = read_cfgs(folder / "input.cfg")
    atoms = cfg_to_atoms(cfg, species)
    lab = config["label"]
    reasons = []
    for _attempt in range(lab["retries"] + 1):
        try:
            labeled = labeler.label(folder, atoms)
            bad = check_label(labeled, lab["max_force"])
            if bad:
                raise LabelError(bad)
        except LabelError as exc:
            reasons.append(str(exc))
            continue
        except Exception as exc:  # an engine crash is a failed task, not a dead run
            reraise_disk_full(exc, folder)  # a full disk is not: the task resumes later
            reasons.append(f"{type(exc).__name__}: {exc}")
            atomic_write_text(folder / "error.log", traceback.format_exc())
            continue
        out = atoms_to_cfg(labeled, species)
        out.features = [f for f in cfg.features if f[0] != "MV_grade"]
        out.set_feature("EFS_by", labeler.name)
        atomic_write_text(folder / "labeled.cfg", format_cfg(out))
        mark_done(folder, {"attempts": len(reasons) + 1})
        return True
    mark_failed(folder, reasons[-1], attempts=len(reasons), all_reasons=reasons)
    return False


def run(it: Iteration, runner: Runner) -> tuple[int, int]:
    """Label every task without a marker; return (labeled, failed) over the selected."""
    n = prepare(it)
    todo = missing(it, n)
    if todo:
        ns = n_sample(it)
        kinds = f" ({n - ns} selected + {ns} error sample)" if ns else ""
        progress(it, "label", f"{n - len(todo)}/{n} tasks done{kinds}, labeling {len(todo)}")
    state = {"n": n - len(todo), "failed": 0}
    step = max(1, n // 10)

    def report(k: int, ok: bool) -> None:
        state["n"] += 1
        state["failed"] += not ok
        if state["n"] % step == 0 or state["n"] == n or not ok:
            progress(it, "label", f"{state['n']}/{n} tasks"
                     f"{', ' + str(state['failed']) + ' failed' if state['failed'] else ''}"
                     f"{'' if ok else f' (task {k} failed)'}")

    runner.map(run_task, it, todo, "label", report)
    return counts(it)


def counts(it: Iteration) -> tuple[int, int]:
    """(labeled, failed) over the selected tasks (whose labels train), from their markers
    (the sample's are counted by stages/sample.py)."""
    dirs = [selected_dir(it, k) for k in range(n_selected(it))]
    return sum(map(is_done, dirs)), sum(map(is_failed, dirs))


def missing(it: Iteration, n: int | None = None) -> list[int]:
    """Tasks (selected and sample) without a marker (never run, or cut short): what a
    resubmission must run."""
    n = n_tasks(it) if n is None else n
    n_sel = n_selected(it)
    dirs = (task_dir(it, k, n_sel) for k in range(n))
    return [k for k, d in enumerate(dirs) if not (is_done(d) or is_failed(d))]
