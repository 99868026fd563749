"""A run remembers its config (issue 17.1): a command without --config resumes with the
run's own config, another config is refused with the differing keys listed unless the
change is accepted, and an accepted change is recorded where users read it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from small_run import CONFIG, SMALLCELL, new_run
from smallcell import runconfig


def smallcell(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(SMALLCELL), "--run-dir", str(root), *args], cwd=root,
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def other_level(root: Path, name: str = "other.yaml") -> Path:
    path = root / name
    path.write_text(CONFIG.replace("level: 4", "level: 6"))
    return path


def test_differences_ignore_resources() -> None:
    old = {"run": {"jobs": 1, "seed": 1, "max_iterations": 5}, "slurm": {"partition": "a"},
           "vasp": {"timeout": 10, "command": "vasp_std"}, "trainer": {"level": 8}}
    new = {"run": {"jobs": 8, "seed": 1, "max_iterations": 9}, "slurm": {"partition": "b"},
           "vasp": {"timeout": 99, "command": "mpirun vasp_std"}, "trainer": {"level": 10}}
    assert runconfig.differences(old, new) == {"trainer.level": (8, 10),
                                               "vasp.command": ("vasp_std", "mpirun vasp_std")}


@pytest.mark.slow
def test_resume_uses_the_runs_config_and_refuses_another(tmp_path: Path) -> None:
    root = new_run(tmp_path / "run")
    assert smallcell(root, "iter", "--upto", "0", "--config", str(root / "c.yaml")).returncode == 0
    record = root / "iter" / "config.yaml"
    assert yaml.safe_load(record.read_text())["trainer"]["level"] == 4
    # a config.yaml in the folder is not what the run was started with: not used
    other_level(root, "config.yaml")
    res = smallcell(root, "iter", "--upto", "1")
    assert res.returncode == 0, res.stderr
    assert f"of {root / 'c.yaml'}" in res.stdout
    frozen = yaml.safe_load((root / "iter" / "1" / "config.yaml").read_text())
    assert frozen["trainer"]["level"] == 4
    # asking for less than the run has says so, not "not converged yet (N=1)"
    res = smallcell(root, "iter", "--upto", "0")
    assert res.returncode == 0 and "the run goes on to iteration 1 already" in res.stdout
    # the label tasks' folder says why it is named vasp/ with another labeler
    about = (root / "iter" / "0" / "vasp.README").read_text()
    assert "Labeler: eam" in about and "whatever the labeler" in about
    # another config is refused, with the keys that differ, and nothing is started
    res = smallcell(root, "iter", "--upto", "2", "--config", str(root / "config.yaml"))
    assert res.returncode == 2
    assert "trainer.level: 4 -> 6" in res.stderr and "CHANGE_CONFIG=1" in res.stderr
    assert not (root / "iter" / "2").exists()
    # resources may change freely
    (root / "jobs.yaml").write_text(CONFIG.replace("jobs: 1", "jobs: 2"))
    res = smallcell(root, "iter", "--upto", "1", "--config", str(root / "jobs.yaml"))
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_an_accepted_change_is_recorded(tmp_path: Path) -> None:
    root = new_run(tmp_path / "run")
    assert smallcell(root, "iter", "--upto", "0", "--config", str(root / "c.yaml")).returncode == 0
    other = other_level(root)
    res = smallcell(root, "iter", "--upto", "1", "--config", str(other), "--change-config")
    assert res.returncode == 0, res.stderr
    assert "config change accepted: from iteration 1" in res.stdout
    changes = json.loads((root / "iter" / "config-changes.json").read_text())
    assert changes[0]["from_iteration"] == 1
    assert changes[0]["changed"] == {"trainer.level": [4, 6]}
    text = (root / "iter" / "1" / "config.yaml").read_text()
    assert "# config changed before this iteration" in text and "trainer.level: 4 -> 6" in text
    assert yaml.safe_load(text)["trainer"]["level"] == 6
    assert yaml.safe_load((root / "iter" / "0" / "config.yaml").read_text())["trainer"][
        "level"] == 4  # a started iteration keeps its config
    # from now on the changed config is the run's own
    assert smallcell(root, "iter", "--upto", "1").returncode == 0
    res = smallcell(root, "report")
    assert res.returncode == 0, res.stderr
    page = (root / "report" / "report.md").read_text()
    assert "trainer.level: 4 -> 6" in page and "from iteration 1" in page


@pytest.mark.slow
def test_clean_iter_0_forgets_the_config(tmp_path: Path) -> None:
    root = new_run(tmp_path / "run")
    assert smallcell(root, "iter", "--upto", "0", "--config", str(root / "c.yaml")).returncode == 0
    assert smallcell(root, "clean-iter", "0", "--force").returncode == 0
    assert not (root / "iter" / "config.yaml").exists()
    res = smallcell(root, "iter", "--upto", "0", "--config", str(other_level(root)))
    assert res.returncode == 0, res.stderr
