"""End to end: the tiny example through the real command line, folders as DESIGN.md says."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from smallcell.formats.cfg import read_cfgs

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"iteration", "cell", "n_preselected", "n_selected", "n_labeled", "n_failed",
                "gamma_max", "gamma_mean", "gamma_std", "broke", "converged",
                "train_seconds", "train_errors"}


def smallcell(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(run_dir), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    run = tmp_path_factory.mktemp("tiny")
    res = smallcell(run, "iter", "--upto", "3", "--config", "examples/tiny.yaml")
    assert res.returncode == 0, res.stderr
    return run, res.stdout, res.stderr


@pytest.mark.slow
def test_folders_are_the_state(tiny_run: tuple[Path, str, str]) -> None:
    run, _, _ = tiny_run
    it = run / "iter"
    assert sorted(p.name for p in it.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    for i in (0, 1, 2, 3):
        d = it / str(i)
        assert (d / "config.yaml").is_file()
        summary = json.loads((d / "summary.json").read_text())
        # an iteration with nothing new carries the potential over without refitting
        fitted = not summary["train_skipped"]
        for stage, files in {"select": ["selected.cfg", "selection.json"],
                             "collect": ["train.cfg"],
                             "train": ["pot.mtp", "active_set.npz", "errors.json",
                                       *(["train.log"] if fitted else [])]}.items():
            assert (d / stage / "done").is_file(), (i, stage)
            for f in files:
                assert (d / stage / f).is_file(), (i, stage, f)
        tasks = sorted((d / "vasp").iterdir(), key=lambda p: int(p.name)) \
            if summary["n_selected"] else []
        assert tasks or i > 0
        for t in tasks:
            assert {"POSCAR", "input.cfg", "labeled.cfg", "done"} <= {p.name for p in
                                                                   t.iterdir()}
        assert set(summary) >= SUMMARY_KEYS
        assert summary["iteration"] == i and summary["cell"] == [1, 1, 1]
        assert summary["n_labeled"] == len(tasks) == summary["n_selected"]
    assert not (it / "0" / "explore").exists()  # iteration 0 is the initial fit
    for i in (1, 2):
        runs = [p for p in (it / str(i) / "explore").iterdir() if p.is_dir()]
        assert len(runs) == 2
        for r in runs:
            assert {"in.lammps", "data.lmp", "md.log", "preselected.cfg", "gamma.json",
                    "done"} <= {p.name for p in r.iterdir()}
            text = (r / "in.lammps").read_text()
            assert "threshold_save=2.1 threshold_break=10" in text
            for cfg in read_cfgs(r / "preselected.cfg"):
                assert cfg.mv_grade is not None and cfg.mv_grade > 2.1
                assert cfg.energy is None and "nbh_grades" in cfg.atom_data


@pytest.mark.slow
def test_training_set_grows_once_per_label(tiny_run: tuple[Path, str, str]) -> None:
    run, _, _ = tiny_run
    prev = b""
    for i in (0, 1, 2, 3):
        d = run / "iter" / str(i)
        tasks = sorted((d / "vasp").iterdir(), key=lambda p: int(p.name)) \
            if (d / "vasp").exists() else []
        labels = b"".join((t / "labeled.cfg").read_bytes() for t in tasks)
        assert (d / "collect" / "train.cfg").read_bytes() == prev + labels
        prev = prev + labels
    cfgs = read_cfgs(run / "iter" / "3" / "collect" / "train.cfg")
    keys = {c.positions.round(5).tobytes() for c in cfgs}
    assert len(keys) == len(cfgs)
    assert all(c.energy is not None and c.forces is not None for c in cfgs)


@pytest.mark.slow
def test_progress_summary_and_status(tiny_run: tuple[Path, str, str]) -> None:
    run, out, err = tiny_run
    assert "[iter 1 | explore]" in err and "gamma max" in err and "tasks" in err
    assert "iter stage    cell    state" in out and "potential:" in out
    status = smallcell(run, "status")
    assert status.returncode == 0
    lines = status.stdout.strip().splitlines()
    assert len(lines) == 7 and lines[0].split()[:4] == ["iter", "stage", "cell", "state"]
    assert all(line.split()[0] == str(i) for i, line in enumerate(lines[1:5]))
    # the last line: why the run stopped and the delivered potential, which ran the MD of
    # the last iteration itself
    # (iteration 2 met the stop rule: its final refit passed the MD of iteration 3)
    assert lines[5] == ("converged: no MD run broke (the refitted potential passed its check "
                        "MD); potential: iter/3/train/pot.mtp (fitted in iteration 2; passed "
                        "the MD of iteration 3)")
    assert lines[5] in out
    # then the cost: every reference calculation, the error sample's included
    summaries = [json.loads((run / "iter" / str(i) / "summary.json").read_text())
                 for i in range(4)]
    train = sum(x["n_labeled"] for x in summaries)
    sample = sum(x["sample_n"] for x in summaries)
    dft = sum(x["dft_seconds"] for x in summaries) / 3600
    dft_train = sum(x["dft_seconds_train"] for x in summaries) / 3600
    assert lines[6] == (f"cost: {train + sample} reference calculations in all: {train} "
                        f"training labels (0 more failed), {sample} for the error sample, 0 "
                        f"for the large-cell validation; {dft:.3g} DFT core-hours (GPAW "
                        f"cost model), {dft_train:.3g} h of it for training labels")
    assert lines[6][len("cost: "):] in out
    make = subprocess.run(["make", "-s", "status", f"RUN_DIR={run}"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert make.returncode == 0 and make.stdout.strip().splitlines() == lines


def test_make_help_lists_every_target() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    text = (REPO / "Makefile").read_text()
    phony = text.split(".PHONY:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ").split()
    assert {"setup", "iter", "status", "test", "help", "clean-iter", "report", "sweep",
            "export", "validate", "bench-mlip3"} <= set(phony)
    for target in phony:  # every target, names with digits too (bench-mlip3)
        assert f"make {target} " in out, target


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extrapolation:\n  gama_save: 2.1\n")
    res = smallcell(tmp_path, "iter", "--upto", "1", "--config", str(bad))
    assert res.returncode == 2
    assert f"{bad}:2:" in res.stderr and "gamma_save" in res.stderr
    assert "Traceback" not in res.stderr


def test_setup_extras_gpaw_installs_only_what_is_missing(
        fake_apt: tuple[dict[str, str], Path]) -> None:
    """`make setup EXTRAS=gpaw` asks bin/install-debian-packages for gpaw and gpaw-data,
    which passes apt-get only the packages dpkg does not have (a second setup is free)."""
    plan = subprocess.run(["make", "-n", "setup", "EXTRAS=gpaw"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert "bin/install-debian-packages gpaw gpaw-data" in plan
    assert "install-debian-packages" not in subprocess.run(
        ["make", "-n", "setup"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    env, log = fake_apt
    script = str(REPO / "bin" / "install-debian-packages")
    done = subprocess.run([script, "coreutils", "bash"], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and not log.exists()  # installed: apt-get never runs
    some = subprocess.run([script, "coreutils", "no-such-package-smallcell"], env=env,
                          capture_output=True, text=True, check=False)
    assert some.returncode == 0, some.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].endswith("install -y -qq --no-install-recommends "
                             "no-such-package-smallcell")
