"""Nothing is written outside the run folder: a whole run (embedded, and production with
the stand-in programs), its status, report, export and large-cell validation, started from
another working directory with the config and the engines' inputs elsewhere, and HOME and
TMPDIR pointing to empty folders. Afterwards every folder but the run's is as it was.

The quoting of config values that reach a shell, LAMMPS or VASP is tested where each is
rendered (test_slurm_units, test_lammps_input, test_vasp, test_config_engines);
RELIABILITY.md lists them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from small_run import CONFIG, SMALLCELL
from test_production_loop import production_config

pytestmark = pytest.mark.slow

VALIDATION = "validation: {cell: [2, 2, 2], steps: 30, sample: 2}\n"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of everything under `folder`, by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _sandbox(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose HOME, TMPDIR and working directory are empty folders."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR")}
    for name in ("home", "tmp", "cwd"):
        (tmp_path / name).mkdir()
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"),
               PYTHONDONTWRITEBYTECODE="1")
    return env, tmp_path / "cwd"


def _every_command(run: Path, config: Path, env: dict[str, str], cwd: Path,
                   extra_env: dict[str, str] | None = None) -> None:
    for args in (["iter", "--upto", "2", "--config", str(config)], ["status"], ["report"],
                 ["export"], ["validate", "--config", str(config)]):
        res = subprocess.run([str(SMALLCELL), "--run-dir", str(run), *args], cwd=cwd,
                             env=env | (extra_env or {}), capture_output=True, text=True,
                             timeout=600, check=False)
        assert res.returncode == 0, f"{args[0]}: {res.stderr[-3000:]}"


def _ours(rel: str, run: Path) -> bool:
    """In the run folder, or matplotlib's per-user font cache (the report's figures: the
    library's own cache, written once per user; its config folder is created empty)."""
    if rel == run.name or rel.startswith(f"{run.name}/"):
        return True
    return rel in ("home", "home/.cache", "home/.config") or rel.startswith(
        ("home/.cache/matplotlib", "home/.config/matplotlib"))


def _assert_only_the_run_changed(tmp_path: Path, run: Path,
                                 before: dict[str, tuple[int, int]]) -> None:
    after = _tree(tmp_path)
    outside = {p: v for p, v in after.items() if not _ours(p, run)}
    before = {p: v for p, v in before.items() if not _ours(p, run)}
    assert not list((tmp_path / "home" / ".config" / "matplotlib").glob("*"))
    assert outside == before, {
        "new": sorted(set(outside) - set(before)),
        "changed": sorted(p for p in before if outside.get(p) != before[p])}
    assert {p.split("/")[1] for p in after if p.startswith(f"{run.name}/")} >= {
        "iter", "report", "export", "validation"}


def test_an_embedded_run_writes_only_in_its_folder(tmp_path: Path) -> None:
    env, cwd = _sandbox(tmp_path)
    (tmp_path / "inputs").mkdir()
    config = tmp_path / "inputs" / "c.yaml"
    config.write_text(CONFIG + VALIDATION)
    run = tmp_path / "run"
    before = _tree(tmp_path)
    _every_command(run, config, env, cwd)
    _assert_only_the_run_changed(tmp_path, run, before)


def test_a_production_run_writes_only_in_its_folder(tmp_path: Path, fixtures: Path) -> None:
    """VASP, mlp and LAMMPS stand-ins: their inputs (POTCAR library, MTP templates) are
    read where the config points and never written; their scratch stays in the task
    folders."""
    env, cwd = _sandbox(tmp_path)
    (tmp_path / "inputs").mkdir()
    config = production_config(tmp_path / "inputs")
    config.write_text(config.read_text() + VALIDATION)
    run = tmp_path / "run"
    before = _tree(tmp_path)
    _every_command(run, config, env, cwd, {"SMALLCELL_FIXTURES": str(fixtures),
                                           "SMALLCELL_LMP_GRADES": "break"})
    _assert_only_the_run_changed(tmp_path, run, before)
