"""Stages on real and hand-made run folders: select, label, collect, status, clean-iter."""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from smallcell.config import parse_config
from smallcell.engines.base import LabelError
from smallcell.engines.exploration import QUERIED
from smallcell.errors import DiskFull, SmallcellError
from smallcell.formats.cfg import Cfg, atoms_to_cfg, format_cfg, read_cfgs, write_cfgs
from smallcell.sched.local import LocalRunner
from smallcell.stages import collect, explore, label, select
from smallcell.stages.common import Iteration
from smallcell.state import (
    RunLock,
    RunPaths,
    atomic_write_json,
    is_done,
    is_failed,
    mark_done,
    mark_failed,
    mark_stopped,
    read_json,
)
from smallcell.status import HEADER, finished, status_lines
from smallcell.structures import displace, md_runs, supercell

REPO = Path(__file__).resolve().parents[1]
SMALLCELL = REPO / "bin" / "smallcell"

TINY = """\
species: [Pb]
grid: {temperatures: [300.0, 600.0], pressures: [1.0], seeds_per_point: 1}
md: {steps: 20, ensemble: nvt}
extrapolation: {gamma_save: 1.05, gamma_break: 3.0}
select: {policy: threshold, max_selected: 4}
initial: {n_configs: 6}
trainer: {level: 4, max_iter: 20, radial_basis_size: 4}
run: {seed: 7, jobs: 1}
"""


def _sc(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([str(SMALLCELL), *args], capture_output=True, text=True,
                          stdin=stdin, timeout=120, check=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Iterations 0 and 1 of a tiny embedded run (about 3 s), shared read-only."""
    root = tmp_path_factory.mktemp("tiny_run")
    (root / "tiny.yaml").write_text(TINY, encoding="utf-8")
    res = _sc("--run-dir", str(root), "iter", "--upto", "1", "--config", str(root / "tiny.yaml"))
    assert res.returncode == 0, res.stderr
    assert (root / "iter" / "1" / "summary.json").exists()
    return root


@pytest.fixture()
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _iteration(root: Path, i: int, text: str = "run: {seed: 1}\n") -> Iteration:
    cfg = parse_config(text, root / "config.yaml")
    return Iteration.open(root, i, cfg)


def _cell(seed: int, energy: float | None = None) -> Atoms:
    atoms = displace(supercell("fcc", 4.95, (1, 1, 1), "Pb"), 0.1, "uniform",
                     np.random.default_rng(seed))
    if energy is not None:
        atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                           forces=np.full((4, 3), 0.01 * seed),
                                           stress=np.zeros(6))
    return atoms


def _write(path: Path, cfgs: list[Cfg]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cfgs(path, cfgs)


def _cfg(seed: int, energy: float | None = None, gamma: float | None = None) -> Cfg:
    c = atoms_to_cfg(_cell(seed, energy), ["Pb"])
    if gamma is not None:
        c.set_feature("MV_grade", f"{gamma:f}")
    return c


# ---------------------------------------------------------------- select: threshold

SELECT_CFG = ("extrapolation: {gamma_save: 2.0, gamma_break: 10.0}\n"
              "select: {policy: threshold, gamma_max: 6.0, max_selected: %s}\n"
              "grid: {temperatures: [100, 200, 300], pressures: [1.0]}\n")


def _candidates(gammas: dict[str, list[float]]) -> list[select.Candidate]:
    out = []
    for run, gs in gammas.items():
        out += [select.Candidate(run, k, g, _cfg(k)) for k, g in enumerate(gs)]
    return out


def test_threshold_rule_and_reasons(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1, SELECT_CFG % "null")
    cands = _candidates({"a": [1.5, 2.0, 3.0, 5.9, 6.0, 8.0],
                         "b": [12.0, 7.0, 9.0],  # broke, nothing below gamma_max
                         "c": [4.0, 11.0],  # broke, but one candidate is selected
                         "d": [15.0]})  # did not break: no fallback
    select._threshold(it, cands, {"b", "c"})
    picked = {(c.run, c.gamma) for c in cands if c.selected}
    assert picked == {("a", 3.0), ("a", 5.9), ("b", 7.0), ("c", 4.0)}
    why = {(c.run, c.gamma): c.reason for c in cands}
    assert why[("a", 3.0)] == "2 < gamma < 6"
    assert why[("a", 1.5)] == "gamma 1.5 <= 2"
    assert why[("a", 2.0)] == "gamma 2 <= 2"
    assert why[("a", 6.0)] == "gamma 6 >= 6"
    assert why[("a", 8.0)] == "gamma 8 >= 6"
    assert why[("b", 7.0)].startswith("break fallback")
    assert why[("b", 12.0)] == "gamma 12 >= 6"
    assert why[("c", 11.0)] == "gamma 11 >= 6"
    assert why[("d", 15.0)] == "gamma 15 >= 6"
    assert all(c.reason for c in cands)


def test_threshold_gamma_max_defaults_to_gamma_break(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1, "extrapolation: {gamma_save: 2.0, gamma_break: 10.0}\n")
    cands = _candidates({"a": [3.0, 9.99, 10.0, 11.0]})
    select._threshold(it, cands, set())
    assert [c.selected for c in cands] == [True, True, False, False]


def test_max_selected_keeps_the_highest_gammas(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1, SELECT_CFG % "3")
    cands = _candidates({"a": [2.5, 5.5, 3.0, 4.0], "b": [5.0, 2.2]})
    select._threshold(it, cands, set())
    assert sorted(c.gamma for c in cands if c.selected) == [4.0, 5.0, 5.5]
    dropped = [c for c in cands if not c.selected]
    assert {c.gamma for c in dropped} == {2.5, 3.0, 2.2}
    assert all(c.reason == "over max_selected=3 (lower gamma)" for c in dropped)


def _explore_folder(it: Iteration, per_run: list[tuple[bool, list[float]]]) -> None:
    runs = md_runs(it.cfg, it.i)
    assert len(runs) == len(per_run)
    seed = 0
    for run, (broke, gammas) in zip(runs, per_run, strict=True):
        folder = it.stage("explore") / run.name
        folder.mkdir(parents=True)
        cfgs = []
        for g in gammas:
            seed += 1
            c = _cfg(seed, gamma=g)
            c.atom_data["nbh_grades"] = np.full(4, g)
            cfgs.append(c)
        _write(folder / "preselected.cfg", cfgs)
        atomic_write_json(folder / "gamma.json", {"broke": broke})
        mark_done(folder)
    mark_done(it.stage("explore"))


def test_select_run_writes_selection_files(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1, SELECT_CFG % "null")
    _explore_folder(it, [(False, [2.5, 7.0]), (True, [8.0, 6.5]), (False, [])])
    n = select.run(it)
    assert n == 2
    folder = it.stage("select")
    assert read_json(folder / "done")["n_selected"] == 2
    chosen = read_cfgs(folder / "selected.cfg")
    assert [c.mv_grade for c in chosen] == [2.5, 6.5]  # candidate order, fallback included
    runs = md_runs(it.cfg, 1)
    assert [c.feature("origin") for c in chosen] == [f"iter1/explore/{runs[0].name}#0",
                                                      f"iter1/explore/{runs[1].name}#1"]
    sel = read_json(folder / "selection.json")
    assert sel["policy"] == "threshold"
    assert sel["n_candidates"] == 4 and sel["n_selected"] == 2
    assert sel["broken_runs"] == [runs[1].name]
    assert sel["candidate_gamma_max"] == 8.0
    assert [c["selected"] for c in sel["candidates"]] == [True, False, False, True]
    assert "break fallback" in sel["candidates"][3]["reason"]
    # label's task count comes from the marker
    assert label.n_tasks(it) == 2


def _queried(it: Iteration, kept: list[int], eligible: list[int]) -> list[str]:
    """Explore folders whose queried.cfg holds kept[r] configurations standing for
    eligible[r] queries (gammas 1.0 + run / 10 mark the run)."""
    runs = md_runs(it.cfg, it.i)
    for r, (run, n, e) in enumerate(zip(runs, kept, eligible, strict=True)):
        folder = it.stage("explore") / run.name
        folder.mkdir(parents=True)
        _write(folder / "preselected.cfg", [])
        _write(folder / QUERIED, [_cfg(100 * r + k, gamma=1.0 + r / 10) for k in range(n)])
        atomic_write_json(folder / "gamma.json", {"broke": False, "n_sample_eligible": e})
        mark_done(folder)
    mark_done(it.stage("explore"))
    return [run.name for run in runs]


def test_error_sample_weights_each_run_by_its_queries(tmp_path: Path) -> None:
    """Run 0 kept all of its 50 queries, run 1 kept 50 of 450 and run 2 none: a uniform
    draw over the 500 queries takes about 9 of run 1's for each of run 0's."""
    counts = np.zeros(3)
    for seed in range(1, 41):
        it = _iteration(tmp_path / str(seed), 1, SELECT_CFG % "null"
                        + f"run: {{seed: {seed}}}\nsample: {{size: 20}}\n")
        names = _queried(it, [50, 50, 0], [50, 450, 0])
        cfgs, rec = select.draw_sample(it)
        assert rec["n_eligible"] == 500 and rec["n_drawn"] == len(cfgs) == 20
        assert len({(d["run"], d["index"]) for d in rec["drawn"]}) == 20  # no repeats
        for c, d in zip(cfgs, rec["drawn"], strict=True):
            assert c.feature("origin") == f"iter1/explore/{d['run']}/{QUERIED}#{d['index']}"
            counts[names.index(d["run"])] += 1
    share = counts[1] / counts.sum()
    assert counts[2] == 0 and 0.8 < share < 0.97  # 0.9 expected
    # the same seed draws the same sample
    again = _iteration(tmp_path / "1", 1, SELECT_CFG % "null"
                       + "run: {seed: 1}\nsample: {size: 20}\n")
    first = select.draw_sample(_iteration(tmp_path / "1", 1, SELECT_CFG % "null"
                                          + "run: {seed: 1}\nsample: {size: 20}\n"))[1]
    assert select.draw_sample(again)[1] == first


def test_select_writes_the_error_sample(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1, SELECT_CFG % "null" + "sample: {size: 7}\n")
    _queried(it, [5, 5, 5], [5, 5, 5])
    select.run(it)
    assert len(read_cfgs(it.stage("select") / select.SAMPLE)) == 7
    assert read_json(it.stage("select") / "done")["n_sample"] == 7
    assert read_json(it.stage("select") / "selection.json")["sample"]["n_drawn"] == 7
    off = _iteration(tmp_path / "off", 1, SELECT_CFG % "null" + "sample: {size: 0}\n")
    _queried(off, [5, 5, 5], [5, 5, 5])
    select.run(off)
    assert read_cfgs(off.stage("select") / select.SAMPLE) == []


# ---------------------------------------------------------------- select: dopt


def test_dopt_selects_a_subset_and_records_reasons(run_copy: Path) -> None:
    d = run_copy / "iter" / "1"
    for name in ("select", "vasp", "collect", "train", "summary.json"):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    frozen = d / "config.yaml"
    text = frozen.read_text()
    assert "policy: threshold" in text
    frozen.write_text(text.replace("policy: threshold", "policy: dopt"))
    it = Iteration.open(run_copy, 1)
    assert it.cfg["select"]["policy"] == "dopt"
    n = select.run(it)
    sel = read_json(d / "select" / "selection.json")
    assert sel["policy"] == "dopt"
    n_cand = sel["n_candidates"]
    assert n_cand > 0 and 1 <= n <= 4 < n_cand  # max_selected = 4 in TINY
    assert n == sel["n_selected"] == len(read_cfgs(d / "select" / "selected.cfg"))
    reasons = Counter()
    for c in sel["candidates"]:
        assert c["reason"]
        if c["selected"]:
            assert c["reason"].startswith("enlarges the active set (entry")
            reasons["selected"] += 1
        elif "over max_selected" in c["reason"]:
            reasons["capped"] += 1
        else:
            assert c["reason"].startswith("inside the enlarged active set")
            reasons["inside"] += 1
    assert reasons["selected"] == n
    assert reasons["inside"] > 0
    # at most one candidate per row of the active set can enlarge it
    active = read_json(run_copy / "iter" / "0" / "train" / "errors.json")["active_set_size"]
    assert reasons["selected"] + reasons["capped"] <= active


def _redo_select(run_copy: Path, policy: str) -> Iteration:
    d = run_copy / "iter" / "1"
    for name in ("select", "vasp", "collect", "train", "summary.json"):
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    frozen = d / "config.yaml"
    text = re.sub(r"policy: \w+", f"policy: {policy}", frozen.read_text())
    frozen.write_text(text
                      .replace("max_selected: 4", "max_selected: null"))
    return Iteration.open(run_copy, 1)


def test_dopt_batch_takes_whole_configurations(run_copy: Path) -> None:
    it = _redo_select(run_copy, "dopt_batch")
    n = select.run(it)
    sel = read_json(run_copy / "iter" / "1" / "select" / "selection.json")
    assert sel["policy"] == "dopt_batch" and n == sel["n_selected"] >= 1
    taken = sorted((c for c in sel["candidates"] if c["selected"]),
                   key=lambda c: int(c["reason"].split(":")[0].split()[1]))
    assert [int(c["reason"].split(":")[0].split()[1]) for c in taken] == list(range(1, n + 1))
    for c in sel["candidates"]:
        if not c["selected"]:
            assert "once the taken configurations joined the active set" in c["reason"]
            assert float(c["reason"].split()[1]) <= 1.001
    # no more configurations than dopt (row by row) takes from the same candidates
    dopt = _redo_select(run_copy, "dopt")
    assert n <= select.run(dopt)


def test_dopt_batch_takes_one_of_identical_candidates(run_copy: Path) -> None:
    """Duplicates of one configuration never enter the active set twice."""
    folder = run_copy / "iter" / "1" / "explore"
    runs = sorted(p for p in folder.iterdir() if (p / "preselected.cfg").exists())
    best = max((c for r in runs for c in read_cfgs(r / "preselected.cfg")),
               key=lambda c: c.mv_grade)
    for r in runs:  # every run preselected only copies of the most extrapolative frame
        write_cfgs(r / "preselected.cfg", [best, best, best])
    for policy in ("dopt_batch", "dopt"):
        it = _redo_select(run_copy, policy)
        assert select.run(it) == 1, policy


# ---------------------------------------------------------------- label


class FakeLabeler:
    """Behaviour per task number; counts the calls."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()

    def label(self, task_dir: Path, atoms: Atoms) -> Atoms:
        k = int(task_dir.name)
        self.calls[k] += 1
        forces = np.full((len(atoms), 3), 0.5)
        energy, stress = -3.0 * len(atoms) + 0.01 * k, np.zeros(6)
        if k == 1:
            forces[2, 1] = math.nan
        elif k == 2:
            forces[0, 0] = 100.0
        elif k == 3:
            raise RuntimeError("segfault in the DFT code")
        elif k == 4 and self.calls[k] == 1:
            raise LabelError("SCF not converged (NELM reached)")
        elif k == 5:
            stress[2] = math.nan
        elif k == 6:
            energy = math.inf
        out = atoms.copy()
        out.calc = SinglePointCalculator(out, energy=energy, forces=forces, stress=stress)
        return out


@pytest.fixture()
def label_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Iteration, FakeLabeler]:
    it = _iteration(tmp_path, 0, "label: {retries: 2, max_force: 10.0}\n")
    cfgs = []
    for k in range(7):
        c = _cfg(k)
        c.set_feature("origin", f"test#{k}")
        c.set_feature("MV_grade", "3.5")
        cfgs.append(c)
    _write(it.stage("select") / "selected.cfg", cfgs)
    mark_done(it.stage("select"), {"n_selected": len(cfgs)})
    fake = FakeLabeler()
    # label.py imported the name: patch it where it is looked up
    monkeypatch.setattr(label, "labeler_for", lambda cfg: fake)
    return it, fake


def test_label_failures_are_data(label_it: tuple[Iteration, FakeLabeler]) -> None:
    it, fake = label_it
    with LocalRunner(1) as runner:
        labeled, failed = label.run(it, runner)
    assert (labeled, failed) == (2, 5)
    d = [label.task_dir(it, k) for k in range(7)]
    assert [is_done(x) for x in d] == [True, False, False, False, True, False, False]
    assert [is_failed(x) for x in d] == [False, True, True, True, False, True, True]
    # the good label: a cfg with energy and forces, features kept but MV_grade
    [out] = read_cfgs(d[0] / "labeled.cfg")
    assert out.energy == pytest.approx(-12.0)
    np.testing.assert_allclose(out.forces, 0.5)
    assert out.feature("origin") == "test#0" and out.feature("EFS_by") == "fake"
    assert out.mv_grade is None
    assert read_json(d[0] / "done")["attempts"] == 1
    # absurd labels and crashes: failed with the reason, after 1 + retries attempts
    reasons = {k: read_json(d[k] / "failed") for k in (1, 2, 3, 5, 6)}
    assert reasons[1]["reason"] == "non-finite energy or forces"
    assert reasons[2]["reason"] == "force component 100 eV/Å above label.max_force=10"
    assert reasons[3]["reason"] == "RuntimeError: segfault in the DFT code"
    assert reasons[5]["reason"] == "non-finite stress"
    assert reasons[6]["reason"] == "non-finite energy or forces"
    for k, rec in reasons.items():
        assert rec["attempts"] == 3 == fake.calls[k]
        assert rec["all_reasons"] == [rec["reason"]] * 3
        assert not (d[k] / "labeled.cfg").exists()
    log = (d[3] / "error.log").read_text()
    assert "Traceback" in log and "RuntimeError: segfault in the DFT code" in log
    assert not (d[1] / "error.log").exists()
    # a retry that succeeds: done, with the attempts counted
    assert fake.calls[4] == 2
    assert read_json(d[4] / "done")["attempts"] == 2
    # every task folder has its inputs
    for x in d:
        assert (x / "input.cfg").exists() and (x / "POSCAR").exists()


def test_label_tasks_with_markers_are_not_run_again(
        label_it: tuple[Iteration, FakeLabeler]) -> None:
    it, fake = label_it
    with LocalRunner(1) as runner:
        label.run(it, runner)
        before = dict(fake.calls)
        assert label.run(it, runner) == (2, 5)
    assert dict(fake.calls) == before
    assert label.run_task(it.paths.root, 0, 1) is False
    assert label.run_task(it.paths.root, 0, 0) is True
    assert dict(fake.calls) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_in_the_engine_is_not_a_failed_task(
        label_it: tuple[Iteration, FakeLabeler], monkeypatch: pytest.MonkeyPatch,
        code: int) -> None:
    """A DFT code that cannot write its OUTCAR has not failed the configuration: the run
    stops naming the file, no retry is spent, no marker is written, and the task labels
    once space is back."""
    it, fake = label_it
    real = fake.label

    def full(task_dir: Path, atoms: Atoms) -> Atoms:
        fake.calls[int(task_dir.name)] += 1
        raise OSError(code, os.strerror(code), str(task_dir / "OUTCAR"))

    monkeypatch.setattr(fake, "label", full)
    with LocalRunner(1) as runner, pytest.raises(DiskFull) as info:
        label.run(it, runner)
    d0 = label.task_dir(it, 0)
    assert str(info.value).startswith(f"{d0 / 'OUTCAR'}: ")
    assert ("no space left on device" if code == errno.ENOSPC
            else "disk quota exceeded") in str(info.value)
    assert fake.calls[0] == 1
    assert not (is_done(d0) or is_failed(d0) or (d0 / "error.log").exists())
    monkeypatch.setattr(fake, "label", real)
    assert label.run_task(it.paths.root, 0, 0) is True


def test_label_with_the_real_eam_labeler(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 0)
    _write(it.stage("select") / "selected.cfg", [_cfg(1), _cfg(2)])
    mark_done(it.stage("select"), {"n_selected": 2})
    with LocalRunner(1) as runner:
        assert label.run(it, runner) == (2, 0)
    [c] = read_cfgs(label.task_dir(it, 1) / "labeled.cfg")
    assert c.energy is not None and c.forces is not None and c.plus_stress is not None
    assert c.feature("EFS_by") == "eam"


# ---------------------------------------------------------------- collect


def _labeled_tasks(it: Iteration, n: int, failed: set[int]) -> None:
    mark_done(it.stage("select"), {"n_selected": n})
    for k in range(n):
        folder = label.task_dir(it, k)
        folder.mkdir(parents=True)
        if k in failed:
            mark_failed(folder, f"reason of task {k}")
            continue
        (folder / "labeled.cfg").write_text(format_cfg(_cfg(k, energy=-100.0 - k)))
        mark_done(folder)


def test_collect_appends_labels_in_task_order_once(tmp_path: Path) -> None:
    it0 = _iteration(tmp_path, 0)
    prev = it0.stage("collect") / "train.cfg"
    _write(prev, [_cfg(50, energy=-1.0), _cfg(51, energy=-2.0)])
    prev_bytes = prev.read_bytes()
    it = _iteration(tmp_path, 1)
    _labeled_tasks(it, 12, failed={5})  # 12 tasks: "10" sorts before "2" as text
    assert collect.run(it) == (11, 13)
    out = it.stage("collect") / "train.cfg"
    energies = [c.energy for c in read_cfgs(out)]
    assert energies == [-1.0, -2.0, *(-100.0 - k for k in range(12) if k != 5)]
    assert prev.read_bytes() == prev_bytes  # the previous set is never edited
    assert read_json(it.stage("collect") / "done") | {"time": 0} == {
        "time": 0, "n_new": 11, "n_train": 13}
    # running it again rebuilds the same file: no duplicates
    first = out.read_bytes()
    assert collect.run(it) == (11, 13)
    assert out.read_bytes() == first
    assert sorted(os.listdir(it.stage("collect"))) == ["done", "train.cfg"]


def test_collect_stops_below_min_success_ratio(tmp_path: Path) -> None:
    _iteration(tmp_path, 0)
    _write(tmp_path / "iter" / "0" / "collect" / "train.cfg", [_cfg(1, energy=-1.0)])
    it = _iteration(tmp_path, 1, "label: {min_success_ratio: 0.5}\n")
    _labeled_tasks(it, 5, failed={0, 2, 3})
    with pytest.raises(SmallcellError) as info:
        collect.run(it)
    msg = str(info.value)
    assert "only 2 of 5 label tasks succeeded" in msg
    assert "min_success_ratio = 0.5" in msg
    for k in (0, 2, 3):
        assert f"{label.task_dir(it, k)}: reason of task {k}" in msg
    for k in (1, 4):
        assert f"{label.task_dir(it, k)}:" not in msg
    assert not (it.stage("collect") / "train.cfg").exists()
    assert not is_done(it.stage("collect"))


def test_collect_accepts_exactly_the_min_success_ratio(tmp_path: Path) -> None:
    _iteration(tmp_path, 0)
    _write(tmp_path / "iter" / "0" / "collect" / "train.cfg", [_cfg(1, energy=-1.0)])
    it = _iteration(tmp_path, 1, "label: {min_success_ratio: 0.5}\n")
    _labeled_tasks(it, 4, failed={1, 2})
    assert collect.run(it) == (2, 3)


def test_collect_refuses_tasks_without_marker(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1)
    _labeled_tasks(it, 3, failed=set())
    os.unlink(label.task_dir(it, 2) / "done")
    with pytest.raises(SmallcellError, match="1 label task"):
        collect.run(it)


def test_collect_of_the_tiny_run(tiny_run: Path) -> None:
    it1 = tiny_run / "iter" / "1"
    n = read_json(it1 / "select" / "done")["n_selected"]
    assert n > 0
    parts = [(tiny_run / "iter" / "0" / "collect" / "train.cfg").read_bytes()]
    parts += [(it1 / "vasp" / str(k) / "labeled.cfg").read_bytes() for k in range(n)]
    assert (it1 / "collect" / "train.cfg").read_bytes() == b"".join(parts)
    done = read_json(it1 / "collect" / "done")
    assert done["n_new"] == n
    assert done["n_train"] == len(read_cfgs(it1 / "collect" / "train.cfg"))


# ---------------------------------------------------------------- status


def test_status_of_complete_iterations(tiny_run: Path) -> None:
    lines = status_lines(tiny_run)
    last = read_json(tiny_run / "iter" / "1" / "summary.json")
    assert lines[0] == HEADER and len(lines) == (5 if finished(last) else 4)
    assert lines[-1].startswith("cost: ") and "reference calculations in all" in lines[-1]
    for i, line in enumerate(lines[1:3]):
        s = read_json(tiny_run / "iter" / str(i) / "summary.json")
        words = line.split()
        assert words[0] == str(i) and words[1] == "1/1" and words[2] == "1x1x1"
        assert words[3] == ("converged" if finished(s) else "refit" if s.get("check_due")
                            else "complete")
        assert words[-2] == str(s["n_train"])
        hours = sum(read_json(tiny_run / "iter" / str(j) / "summary.json")["dft_seconds"]
                    for j in range(i + 1)) / 3600  # the running DFT cost
        assert words[-1] == f"{hours:.3g}"
        assert "in progress" not in line
    assert lines[1].split()[4:7] == ["0", "6", "6"]  # presel, select, label of iteration 0
    res = _sc("--run-dir", str(tiny_run), "status")
    assert res.returncode == 0 and res.stdout.splitlines() == lines


def _stage_of(root: Path, i: int) -> str:
    line = status_lines(root)[1 + i]
    assert line.endswith("(stopped)"), line  # nobody holds the lock, no SLURM job
    assert line.split()[1] == "1"  # the protocol stage, from the frozen config
    return line.split()[2]


def test_status_tells_running_from_stopped(run_copy: Path) -> None:
    """An unfinished iteration is `running` only while a process holds the run lock (or a
    SLURM job of it is queued); otherwise `stopped`, with the reason its stop left."""
    paths = RunPaths(run_copy)
    d = run_copy / "iter" / "1"
    (d / "summary.json").unlink()
    (d / "train" / "done").unlink()
    lines = status_lines(run_copy)
    assert lines[2].endswith("(stopped)")
    assert "STOPPED: no process holds the run lock" in lines[3]
    with RunLock(paths, "smallcell iter --upto 3"):
        lines = status_lines(run_copy)
        assert lines[2].endswith(f"(running: pid {os.getpid()} on {socket.gethostname()} "
                                 "(smallcell iter --upto 3))"), lines[2]
        assert not any("STOPPED" in line for line in lines)
    mark_stopped(d, "`smallcell iter` stopped with an error: every label task failed",
                 stage="iter")
    lines = status_lines(run_copy)
    assert lines[3].endswith("STOPPED: `smallcell iter` stopped with an error: every label "
                             "task failed")
    assert "`make iter` continues" in lines[4]


def test_status_of_an_iteration_in_progress(run_copy: Path) -> None:
    d = run_copy / "iter" / "1"
    (d / "summary.json").unlink()
    assert _stage_of(run_copy, 1) == "summary"
    (d / "train" / "done").unlink()
    assert _stage_of(run_copy, 1) == "train"  # collect done, the fit under way
    (d / "collect" / "done").unlink()
    (d / "vasp" / "3" / "done").unlink()
    assert _stage_of(run_copy, 1) == "label"
    words = status_lines(run_copy)[2].split()
    n_presel = read_json(d / "explore" / "explore.json")["n_preselected"]
    assert words[:7] == ["1", "1", "label", str(n_presel), "4", "3", "0"]  # 4 tasks, 3 done
    (d / "select" / "done").unlink()
    assert _stage_of(run_copy, 1) == "select"
    (d / "explore" / "done").unlink()
    assert _stage_of(run_copy, 1) == "explore"
    # iteration 0 has no explore stage
    d0 = run_copy / "iter" / "0"
    (d0 / "summary.json").unlink()
    (d0 / "train" / "done").unlink()
    assert _stage_of(run_copy, 0) == "train"
    for name in ("collect", "select"):
        (d0 / name / "done").unlink()
    assert _stage_of(run_copy, 0) == "select"


def test_status_label_counts_failed_tasks(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 2)
    _labeled_tasks(it, 5, failed={1, 4})
    os.unlink(label.task_dir(it, 3) / "done")
    words = status_lines(tmp_path)[1].split()
    assert words[:8] == ["2", "1", "label", "-", "5", "2", "2", "-"]


def test_status_counts_planned_explore_runs(tmp_path: Path) -> None:
    it = _iteration(tmp_path, 1, "grid: {temperatures: [100, 200, 300], seeds_per_point: 2}\n")
    runs = explore.write_plan(it)
    assert len(runs) == 6
    for run in runs[:2]:
        mark_done(it.stage("explore") / run.name)
    (it.stage("explore") / f".{runs[2].name}.tmp.12345").mkdir()  # a run under way
    assert "runs 2/6" in status_lines(tmp_path)[1]


# ---------------------------------------------------------------- clean-iter


def test_clean_iter_refuses_without_force_and_tty(run_copy: Path) -> None:
    res = _sc("--run-dir", str(run_copy), "clean-iter", "1")
    assert res.returncode == 2
    assert "would remove" in res.stderr and str(run_copy / "iter" / "1") in res.stderr
    assert "--force" in res.stderr
    assert (run_copy / "iter" / "1" / "summary.json").exists()


def test_clean_iter_force_removes_i_and_later_only(run_copy: Path) -> None:
    paths = RunPaths(run_copy)
    shutil.copytree(paths.it(1), paths.it(2))
    (paths.iter_root / "notes").mkdir()
    before0 = sorted(p.relative_to(paths.it(0)) for p in paths.it(0).rglob("*"))
    res = _sc("--run-dir", str(run_copy), "clean-iter", "1", "--force")
    assert res.returncode == 0, res.stderr
    assert "removed" in res.stdout
    assert paths.iterations() == [0]
    assert sorted(p.relative_to(paths.it(0)) for p in paths.it(0).rglob("*")) == before0
    assert (paths.iter_root / "notes").is_dir()
    assert not [n for n in os.listdir(paths.iter_root) if n.startswith(".trash")]
    res = _sc("--run-dir", str(run_copy), "clean-iter", "1", "--force")
    assert res.returncode == 0 and "nothing to remove" in res.stdout
    assert paths.iterations() == [0]


# ---------------------------------------------------------------- crashes, hand edits


def test_crashed_md_run_is_one_clear_error(run_copy: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from smallcell.config import load_config

    cfg = load_config(run_copy / "tiny.yaml")
    it = Iteration.open(run_copy, 2, cfg)

    class Boom:
        def run(self, *args: object, **kw: object) -> None:
            raise RuntimeError("lost atoms")

    monkeypatch.setattr(explore, "_explorer", lambda it: Boom())
    with pytest.raises(SmallcellError, match=r"MD run failed \(RuntimeError: lost atoms\)"):
        explore.run_task(run_copy, 2, 0)
    folder = explore.run_dir(it, md_runs(it.cfg, 2)[0])
    assert "lost atoms" in (folder / "error.log").read_text()
    assert not (folder / "done").exists()
    assert not [p for p in it.stage("explore").iterdir() if ".tmp." in p.name]


def test_file_deleted_by_hand_is_named(run_copy: Path) -> None:
    """An output removed behind a `done` marker: one line naming it, nothing else lost."""
    it1 = run_copy / "iter" / "1"
    (it1 / "summary.json").unlink()  # so that iteration 1 is finished again
    gone = it1 / "explore" / "explore.json"
    gone.unlink()
    res = _sc("--run-dir", str(run_copy), "iter", "--upto", "1", "--config",
              str(run_copy / "tiny.yaml"))
    assert res.returncode == 2
    assert str(gone) in res.stderr and "marked done" in res.stderr
    assert "Traceback" not in res.stderr
    assert (it1 / "train" / "pot.mtp").exists() and (it1 / "collect" / "train.cfg").exists()
