"""label: one task folder `vasp/<k>/` per selected configuration, and `sample/<k>/` per
configuration of the error study's sample.

Both kinds are one numbered task list, so a SLURM array, a resubmission and the local
runner treat them alike: tasks 0..n_selected-1 are `vasp/<k>/`, the next n_sample are
`sample/<k - n_selected>/`. Only `vasp/` labels are collected into the training set.

`prepare` writes each task's inputs (`input.cfg`, `POSCAR`) once; `run_task` labels one
task and ends with `labeled.cfg` + `done`, or `failed` with the reason after `retries`
retries (failures are data: they never stop the other tasks). A task with a marker is never
run again, so a resumed iteration only labels what is missing.

Each marker also records the task's wall time and atom count: `expected_seconds` reads
them to size SLURM array elements by time (a task's own measure beats any guess).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smallcell.config import Config
from smallcell.engines.base import LabelError, labeler_for
from smallcell.errors import SmallcellError, reraise_disk_full
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
    DONE,
    FAILED,
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
WHICH = ("all", "selected", "sample")  # the task lists a runner or a resubmission takes

# A label task's duration before any was measured, per labeler: seconds for a 4-atom cell
# and the power of (atoms / 4) it grows with (docs/config.md, slurm.first_task_seconds).
# eam: mostly the task's own overhead; gpaw: 21 s measured for 4-atom Pb (Debian GPAW);
# vasp: the one to three minutes of a small-cell VASP label.
FIRST_ESTIMATE = {"eam": (0.2, 1.0), "gpaw": (30.0, 2.0), "vasp": (120.0, 2.0)}
REFERENCE_ATOMS = 4
LOOK_BACK = 10  # earlier iterations searched for measured tasks
MEASURED_MAX = 200  # markers read per iteration and kind (evenly spaced): bounded cost


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
    t0 = time.perf_counter()
    it = Iteration.open(root, i)
    return label_folder(task_dir(it, k), it.cfg, t0)


def write_input(folder: Path, cfg: Cfg, species: list[str]) -> None:
    """A task folder's inputs: input.cfg and the POSCAR a person would look at (once)."""
    from ase.io import write

    if (folder / "input.cfg").exists():
        return
    with atomic_output(folder / "POSCAR") as poscar:
        write(poscar, cfg_to_atoms(cfg, species), format="vasp", direct=True, sort=False)
    atomic_write_text(folder / "input.cfg", format_cfg(cfg))


def label_folder(folder: Path, config: Config, started: float | None = None) -> bool:
    """Label the task folder's input.cfg with the configured labeler and its retries;
    True when labeled, False when marked failed. Shared by the iterations' tasks and the
    large-cell validation's. The marker records the wall time since `started` (a
    perf_counter reading; default now) and the atom count (expected_seconds)."""
    if is_done(folder):
        return True
    if is_failed(folder):
        return False
    t0 = time.perf_counter() if started is None else started
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
        mark_done(folder, {"attempts": len(reasons) + 1, "atoms": len(atoms),
                           "seconds": time.perf_counter() - t0})
        return True
    mark_failed(folder, reasons[-1], attempts=len(reasons), all_reasons=reasons,
                atoms=len(atoms), seconds=time.perf_counter() - t0)
    return False


def task_numbers(it: Iteration, which: str = "all", n: int | None = None) -> range:
    """The combined task numbers of `which` (WHICH): every task, the selected ones (their
    labels train), or the error sample's."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    n = n_tasks(it) if n is None else n
    n_sel = n_selected(it)
    return {"all": range(n), "selected": range(min(n_sel, n)), "sample": range(n_sel, n)}[which]


def run(it: Iteration, runner: Runner, which: str = "all") -> tuple[int, int]:
    """Label every task of `which` (WHICH) without a marker; return (labeled, failed) over
    the selected."""
    n = prepare(it)
    tasks = task_numbers(it, which, n)
    todo = missing(it, n, which)
    if todo:
        ns = n_sample(it)
        kinds = {"all": f" ({n - ns} selected + {ns} error sample)" if ns else "",
                 "selected": " (selected)", "sample": " (error sample)"}[which]
        progress(it, "label", f"{len(tasks) - len(todo)}/{len(tasks)} tasks done{kinds}, "
                 f"labeling {len(todo)}")
    runner.map(run_task, it, todo, "label", reporter(it, len(tasks), len(tasks) - len(todo)))
    return counts(it)


def reporter(it: Iteration, total: int, done: int, stage: str = "label"
             ) -> Callable[[int, bool], None]:
    """A runner's on_result: a progress line every tenth of `total` tasks and at each
    failure (`done` of them finished before)."""
    state = {"n": done, "failed": 0}
    step = max(1, total // 10)

    def report(k: int, ok: bool) -> None:
        state["n"] += 1
        state["failed"] += not ok
        if state["n"] % step == 0 or state["n"] == total or not ok:
            progress(it, stage, f"{state['n']}/{total} tasks"
                     f"{', ' + str(state['failed']) + ' failed' if state['failed'] else ''}"
                     f"{'' if ok else f' (task {k} failed)'}")

    return report


def counts(it: Iteration) -> tuple[int, int]:
    """(labeled, failed) over the selected tasks (whose labels train), from their markers
    (the sample's are counted by stages/sample.py)."""
    dirs = [selected_dir(it, k) for k in range(n_selected(it))]
    return sum(map(is_done, dirs)), sum(map(is_failed, dirs))


def missing(it: Iteration, n: int | None = None, which: str = "all") -> list[int]:
    """Tasks of `which` (WHICH: all, selected or sample) without a marker (never run, or
    cut short): what a resubmission must run."""
    n = n_tasks(it) if n is None else n
    n_sel = n_selected(it)
    return [k for k in task_numbers(it, which, n)
            if not (is_done(d := task_dir(it, k, n_sel)) or is_failed(d))]


# ------------------------------------------------------------------ expected duration


@dataclass(frozen=True)
class Estimate:
    """A label task's expected wall time, and where the number comes from (in words, for
    jobs.json and `make status`)."""

    seconds: float
    source: str


def _marker(folder: str) -> dict | None:
    for name in (DONE, FAILED):
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return None


def _measured(it_dir: Path, kind: str) -> dict[int, list[float]]:
    """{atom count: [seconds, ...]} of the finished tasks of one kind of an iteration,
    from their markers (at most MEASURED_MAX of them, evenly spaced)."""
    try:
        names = sorted((e.name for e in os.scandir(it_dir / kind) if e.name.isdigit()), key=int)
    except FileNotFoundError:
        return {}
    stride = max(1, len(names) // MEASURED_MAX)
    out: dict[int, list[float]] = {}
    for name in names[::stride]:
        m = _marker(os.path.join(it_dir, kind, name))
        if m and isinstance(m.get("seconds"), int | float) and m.get("atoms"):
            out.setdefault(int(m["atoms"]), []).append(float(m["seconds"]))
    return out


def atoms_of(it: Iteration, k: int) -> int:
    """The atom count of task `k` (its input.cfg)."""
    [cfg] = read_cfgs(task_dir(it, k) / "input.cfg")
    return len(cfg.types)


def expected_seconds(it: Iteration, tasks: Sequence[int], first: float | None = None
                     ) -> Estimate:
    """The expected wall time of one of `tasks` (of one kind, cells of one size): the mean
    measured on finished tasks of the same kind and atom count, from this iteration (a
    resubmission's finished ones) or the latest earlier one with any (the other kind when
    this one has none); else the nearest atom count measured, scaled by the labeler's
    power of the atom count; else the first estimate (`first`, slurm.first_task_seconds,
    else FIRST_ESTIMATE), scaled from 4 atoms. Only iterations of the same labeler count."""
    labeler = it.cfg["engines"]["labeler"]
    base, power = FIRST_ESTIMATE.get(labeler, (60.0, 2.0))
    n_sel = n_selected(it)
    kind = KIND if tasks and tasks[0] < n_sel else SAMPLE_KIND
    atoms = atoms_of(it, tasks[0]) if tasks else REFERENCE_ATOMS
    nearest: tuple[int, int, float] | None = None  # (distance, atoms, seconds)
    for j in range(it.i, max(-1, it.i - LOOK_BACK - 1), -1):
        if j != it.i:
            try:
                other = Iteration.open(it.paths.root, j)
            except SmallcellError:
                continue
            if other.cfg["engines"]["labeler"] != labeler:
                continue
        for k in (kind, SAMPLE_KIND if kind == KIND else KIND):
            measured = _measured(it.paths.it(j), k)
            if atoms in measured:
                secs = measured[atoms]
                where = "this iteration" if j == it.i else f"iteration {j}"
                return Estimate(sum(secs) / len(secs), f"mean of {len(secs)} {k} task(s) of "
                                f"{atoms} atoms measured in {where}")
            for a, secs in measured.items():
                if nearest is None or abs(a - atoms) < nearest[0]:
                    nearest = (abs(a - atoms), a, sum(secs) / len(secs))
    if nearest is not None:
        _, a, secs = nearest
        return Estimate(secs * (atoms / a) ** power, f"measured on {a} atoms, scaled to "
                        f"{atoms} by (atoms ratio)^{power:g}")
    if first is not None:
        return Estimate(first * (atoms / REFERENCE_ATOMS) ** power,
                        f"slurm.first_task_seconds, scaled to {atoms} atoms")
    return Estimate(base * (atoms / REFERENCE_ATOMS) ** power,
                    f"{labeler}'s first estimate, {atoms} atoms (nothing measured yet)")


def folders_cost(folders: Sequence[Path], labeler: str) -> float:
    """The DFT cost (smallcell.cost: seconds) of the task folders with a marker, failed
    ones included (a failed DFT run costs its core-hours too). The atom count comes from
    the marker, or from input.cfg for markers written before it was recorded."""
    from smallcell import cost

    total = 0.0
    for folder in folders:
        m = _marker(str(folder))
        if m is None:
            continue
        atoms = m.get("atoms")
        if not atoms:
            [cfg] = read_cfgs(Path(folder) / "input.cfg")
            atoms = len(cfg.types)
        secs = m.get("seconds")
        total += cost.task_cost(labeler, int(atoms),
                                float(secs) if isinstance(secs, int | float) else None)
    return total


def dft_cost(it: Iteration) -> dict[str, float]:
    """The iteration's DFT cost by purpose (seconds, see smallcell.cost): its training
    labels (`vasp/`, failed included) and its error sample's (`sample/`)."""
    labeler = it.cfg["engines"]["labeler"]
    n_sel, n_smp = n_selected(it), n_sample(it)
    return {"train": folders_cost([selected_dir(it, k) for k in range(n_sel)], labeler),
            "sample": folders_cost([sample_dir(it, j) for j in range(n_smp)], labeler)}
