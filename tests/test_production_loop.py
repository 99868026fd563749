"""The production configuration end to end: VASP, MLIP-3's mlp and LAMMPS with pair_style
mlip, each played by a stand-in that behaves like the real program (tests/standins/), so
that switching from the embedded default to production is only a change of config; and
the same loop with the real mlp (conftest.py's real_mlp, built from ../shared/vendor)
training, grading, selecting and measuring errors, beside the LAMMPS stand-in and the
embedded EAM labeler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smallcell.engines.mlip3_install import InstalledMlip3
from smallcell.engines.mtp_basis import write_template
from smallcell.formats.almtp import read_almtp_header
from smallcell.formats.cfg import read_cfgs

REPO = Path(__file__).resolve().parents[1]
STANDINS = REPO / "tests" / "standins"


def production_config(tmp: Path, policy: str = "threshold",
                      real: InstalledMlip3 | None = None) -> Path:
    """The production config with every program a stand-in; `real`: that build's mlp and
    MTP_templates instead of the mlp stand-in, and the embedded EAM labeler for VASP."""
    lib = tmp / "potpaw_PBE" / "Pb_d"
    lib.mkdir(parents=True)
    (lib / "POTCAR").write_text("  PAW_PBE Pb_d 06Sep2000\n   VRHFIN =Pb: s2p2\n"
                                "   TITEL  = PAW_PBE Pb_d 06Sep2000\n")
    write_template(tmp / "MTP_templates" / "08.almtp", 8)
    mlp = STANDINS / "mlp" if real is None else real.mlp
    templates = tmp / "MTP_templates" if real is None else real.templates_dir
    labeler = "vasp" if real is None else "eam"
    text = f"""
species: [Pb]
masses: [207.2]
structure: {{lattice: fcc, a: 4.95, cell: [1, 1, 1], displacement: 0.1}}
grid: {{temperatures: [300.0], pressures: [1.0], seeds_per_point: 2}}
md: {{steps: 60, ensemble: npt}}
extrapolation: {{gamma_save: 2.1, gamma_break: 10.0}}
select: {{policy: {policy}, max_selected: 3}}
initial: {{source: generate, n_configs: 4}}
sample: {{size: 5}}
trainer: {{level: 8, max_iter: 50}}
engines: {{explorer: lammps, labeler: {labeler}, trainer: mlip3, scheduler: local}}
vasp:
  command: ["{sys.executable}", "{STANDINS / 'vasp_eam'}"]
  potcar_dir: {tmp / 'potpaw_PBE'}
  potcars: {{Pb: Pb_d}}
  incar: {{ENCUT: 300, NCORE: 2}}
  kspacing: 0.3
mlip3:
  mlp: "{mlp}"
  templates_dir: {templates}
lammps:
  command: "{STANDINS / 'lmp'}"
  grade_floor: 0.1
run: {{seed: 5, jobs: 2}}
"""
    path = tmp / "prod.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_production_loop_with_standins(tmp_path: Path, fixtures: Path) -> None:
    config = production_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SMALLCELL_FIXTURES=str(fixtures), SMALLCELL_LMP_GRADES="break")
    res = subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(tmp_path), "iter",
                          "--upto", "2", "--config", str(config)], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    it = tmp_path / "iter"
    # iteration 0: generated cells labeled by "VASP" from rendered inputs
    task = it / "0" / "vasp" / "0"
    names = {p.name for p in task.iterdir()}
    assert {"INCAR", "KPOINTS", "POSCAR", "OUTCAR", "labeled.cfg", "done"} <= names
    assert "POTCAR" not in names  # licensed file removed after the run
    incar = (task / "INCAR").read_text()
    assert "IBRION = -1" in incar and "NSW = 0" in incar and "ENCUT = 300" in incar
    assert "Pb" in (task / "POSCAR").read_text().splitlines()[5]
    [label] = read_cfgs(task / "labeled.cfg")
    assert label.feature("EFS_by") == "vasp" and label.energy == pytest.approx(-8.0, abs=0.3)
    # every iteration trained by mlp into pot.almtp with its log
    for i in (0, 1, 2):
        train = it / str(i) / "train"
        assert (train / "pot.almtp").read_bytes().startswith(b"MTP")
        errors = json.loads((train / "errors.json").read_text())
        assert "force_rmse" in errors["errors"]
    assert "training complete" in (it / "0" / "train" / "train.log").read_text()
    # explore: LAMMPS ran in.lammps with pair_style mlip, broke, kept MLIP-3's messages
    for i in (1, 2):
        summary = json.loads((it / str(i) / "summary.json").read_text())
        sel = json.loads((it / str(i) / "select" / "selection.json").read_text())
        in_range = [c for c in sel["candidates"] if 2.1 < c["gamma"] < 10.0]
        assert summary["broke"] is True and summary["n_selected"] == min(len(in_range), 3) > 0
        # the potential it hands on, named as MLIP-3 writes it; a broken MD checks nothing
        assert summary["potential"] == f"iter/{i}/train/pot.almtp"
        assert summary["potential_fit"] == i and summary["potential_checked"] is False
        assert summary["n_labeled"] == summary["n_selected"] and summary["n_failed"] == 0
        for run in sorted(p for p in (it / str(i) / "explore").iterdir() if p.is_dir()):
            files = {p.name for p in run.iterdir()}
            assert {"in.lammps", "data.lmp", "log.lammps", "lammps.out", "lammps.err",
                    "preselected.cfg", "queried.cfg", "gamma.json", "done"} <= files
            text = (run / "in.lammps").read_text()
            assert f"load_from=../../../{i - 1}/train/pot.almtp" in text
            assert "threshold_save=0.1 threshold_break=10" in text
            gamma = json.loads((run / "gamma.json").read_text())
            assert gamma["broke"] and gamma["grades"] == "all_queries"
            assert all(c.mv_grade > 2.1 for c in read_cfgs(run / "preselected.cfg"))
            assert "Breaking threshold exceeded" in (run / "lammps.err").read_text()
        # the error sample: drawn from LAMMPS' saved queries, labeled by "VASP", measured
        # by `mlp check_errors` with the potential that ran the MD
        errs = json.loads((it / str(i) / "sample" / "errors.json").read_text())
        assert errs["potential"] == f"iter/{i - 1}/train" and errs["n_labeled"] == 5
        assert summary["sample_n"] == 5 and summary["sample_force_error_mean"] > 0
        assert (it / str(i) / "sample" / "check_errors" / "check_errors.percfg").exists()
        for row in errs["configs"]:
            [inp] = read_cfgs(it / str(i) / "sample" / str(row["task"]) / "input.cfg")
            assert row["gamma"] == inp.mv_grade and 0.1 < row["gamma"] < 10.0
            assert (it / str(i) / "sample" / str(row["task"]) / "OUTCAR").exists()
    status = subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(tmp_path),
                             "status"], capture_output=True, text=True, env=env, check=True)
    lines = status.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[4].startswith("cost: ")  # 3 iterations, then the cost
    assert ("potential: iter/2/train/pot.almtp (fitted in iteration 2; not yet checked by "
            "MD)") in res.stdout


@pytest.mark.slow
def test_production_dopt_selection_by_mlp_select_add(tmp_path: Path, fixtures: Path) -> None:
    """policy dopt with MLIP-3: the select stage asks `mlp select_add`."""
    config = production_config(tmp_path, policy="dopt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SMALLCELL_FIXTURES=str(fixtures), SMALLCELL_LMP_GRADES="break",
               SMALLCELL_MLP_ARGV_LOG=str(tmp_path / "mlp_calls.jsonl"))
    res = subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(tmp_path), "iter",
                          "--upto", "1", "--config", str(config)], capture_output=True,
                         text=True, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    calls = (tmp_path / "mlp_calls.jsonl").read_text()
    assert "select_add" in calls and "train" in calls
    sel = json.loads((tmp_path / "iter" / "1" / "select" / "selection.json").read_text())
    assert sel["policy"] == "dopt" and sel["n_candidates"] >= 1
    assert sel["n_selected"] == sum(c["selected"] for c in sel["candidates"])


@pytest.mark.slow
def test_production_loop_with_the_real_mlp(tmp_path: Path, real_mlp: InstalledMlip3) -> None:
    """Iterations 0-2 of the production loop with the real mlp training every potential,
    grading and selecting the candidates LAMMPS saved (policy dopt: calculate_grade and
    select_add) and measuring the error sample (check_errors); LAMMPS is the stand-in (it
    breaks every run), the labels come from the embedded EAM."""
    config = production_config(tmp_path, policy="dopt", real=real_mlp)
    env = {k: v for k, v in os.environ.items()
           if k != "PYTHONPATH" and not k.startswith("SMALLCELL_MLP_")}
    env.update(SMALLCELL_LMP_GRADES="break")
    res = subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(tmp_path), "iter",
                          "--upto", "2", "--config", str(config)], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    it = tmp_path / "iter"
    frozen = (it / "0" / "config.yaml").read_text()
    assert str(real_mlp.mlp) in frozen and "labeler: eam" in frozen
    n_train = 0
    for i in (0, 1, 2):
        train = it / str(i) / "train"
        head = read_almtp_header(train / "pot.almtp")
        assert head.trained and head.has_active_set and head.level == 8
        assert "training complete" in (train / "train.log").read_text()
        errors = json.loads((train / "errors.json").read_text())["errors"]
        assert 0 < errors["force_rmse"] < 1 and errors["n_configs"] > n_train
        n_train = errors["n_configs"]
    for i in (1, 2):
        summary = json.loads((it / str(i) / "summary.json").read_text())
        sel = json.loads((it / str(i) / "select" / "selection.json").read_text())
        assert sel["policy"] == "dopt" and summary["broke"] is True
        picked = [c for c in sel["candidates"] if c["selected"]]
        assert 0 < len(picked) == summary["n_selected"] <= 3
        assert all("enlarges the active set" in c["reason"] for c in picked)
        assert summary["n_labeled"] == summary["n_selected"] and summary["n_failed"] == 0
        assert len(read_cfgs(it / str(i) / "select" / "selected.cfg")) == len(picked)
        # the error sample, measured by the real `mlp check_errors` with the MD's potential
        errs = json.loads((it / str(i) / "sample" / "errors.json").read_text())
        assert errs["potential"] == f"iter/{i - 1}/train" and errs["n_labeled"] == 5
        assert len(errs["configs"]) == 5
        assert all(0 < row["force_error"] < 1 for row in errs["configs"])
        assert (it / str(i) / "sample" / "check_errors" / "check_errors.percfg").exists()
        assert summary["sample_n"] == 5 and summary["sample_force_error_mean"] > 0
    assert ("potential: iter/2/train/pot.almtp (fitted in iteration 2; not yet checked by "
            "MD)") in res.stdout
