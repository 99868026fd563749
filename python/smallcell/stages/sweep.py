"""The MTP-level sweep (`smallcell sweep`, `make sweep`): one training set fitted at
several levels with the configured trainer, each potential evaluated on one or more
labeled test sets (for example equilibrium and non-equilibrium MD), with wall and CPU time.

Layout under the output folder (default `sweep/`):

    level<L>/train/        the trainer's files (pot.mtp or pot.almtp, train.log, ...)
    level<L>/result.json   level, data file and its hash, training wall/CPU seconds,
                           iterations, convergence, training errors, errors per test set
    level<L>/done          written last
    results.json, sweep.md, *.png   drawn from the result files by study/sweep_report.py

A finished level is never trained again: rerunning with more levels trains only those,
and a new test set is evaluated on the existing potentials. A level trained on other data
is refused (named, with its hash) instead of being mixed into one table.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smallcell.config import Config
from smallcell.engines.base import trainer_for
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import cfg_to_atoms, iter_cfgs
from smallcell.stages.common import require_labeled
from smallcell.stages.train import fit_settings
from smallcell.state import atomic_write_json, mark_done, read_json

RESULT = "result.json"


def level_dir(out: Path, level: int) -> Path:
    return out / f"level{level:02d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (mlp runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def check_labeled(path: Path, species: Sequence[str]) -> int:
    """Number of configurations of `path`, each labeled and of the config's species."""
    if not path.is_file():
        raise SmallcellError(f"{path}: no such file (expected a labeled MLIP-3 .cfg)")
    n = require_labeled(path, iter_cfgs(path), "a sweep needs labeled configurations",
                        species)
    if n == 0:
        raise SmallcellError(f"{path}: no configurations")
    return n


def run_level(out: Path, cfg: Config, level: int, data: Path, digest: str,
              tests: dict[str, Path], say: Any = print) -> dict[str, Any]:
    """Train (unless done) and evaluate one level on `data` (sha256 `digest`); return its
    result.json content."""
    folder = level_dir(out, level)
    species = list(cfg["species"])
    trainer = trainer_for(cfg)
    if (folder / "done").exists():
        result = read_json(folder / RESULT)
        if result["data_sha256"] != digest:
            raise SmallcellError(
                f"{folder} was trained on {result['data']} (sha256 {result['data_sha256'][:12]}"
                f"...), not on {data} ({digest[:12]}...): use another --out or remove {folder}")
    else:
        images = [cfg_to_atoms(c, species) for c in iter_cfgs(data)]
        say(f"[sweep | level {level}] fitting {trainer.name} on {len(images)} configurations")
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        res = trainer.train(images, species, folder / "train",
                            fit_settings(cfg["trainer"], cfg["run"]["seed"], level=level),
                            None)
        result = {"level": level, "trainer": trainer.name, "data": str(data),
                  "data_sha256": digest, "n_train": len(images),
                  "train_wall_seconds": time.perf_counter() - wall0,
                  "train_cpu_seconds": _cpu_seconds() - cpu0,
                  "iterations": res.iterations, "converged": res.converged,
                  "message": res.message, "train_errors": res.errors, "tests": {}}
    missing = {name: p for name, p in tests.items() if name not in result["tests"]}
    for name, path in missing.items():
        result["tests"][name] = {"path": str(path),
                                 **trainer.errors(folder / "train", species, path)}
    if missing or not (folder / "done").exists():
        atomic_write_json(folder / RESULT, result)
        mark_done(folder)
    e = {n: t["force_rmse"] for n, t in result["tests"].items()}
    say(f"[sweep | level {level}] trained in {result['train_wall_seconds']:.1f} s; force "
        "RMSE " + ", ".join(f"{n} {1000 * v:.1f}" for n, v in e.items()) + " meV/Å")
    return result


def test_names(tests: Sequence[Path]) -> dict[str, Path]:
    """Test sets by name (file stem; made unique with the parent folder when needed)."""
    out: dict[str, Path] = {}
    for p in tests:
        name = p.stem if p.stem not in out else f"{p.parent.name}/{p.stem}"
        if name in out:
            raise SmallcellError(f"{p}: given twice as a test set")
        out[name] = p
    return out


def run(out: Path, cfg: Config, levels: Sequence[int], data: Path,
        tests: Sequence[Path], say: Any = print) -> list[dict[str, Any]]:
    """Every level in order, after checking every input file once."""
    species = list(cfg["species"])
    for lv in levels:
        if not 2 <= lv <= 28:
            raise SmallcellError(f"level {lv}: expected an MTP level from 2 to 28")
    check_labeled(data, species)
    named = test_names(tests)
    for path in named.values():
        check_labeled(path, species)
    out.mkdir(parents=True, exist_ok=True)
    digest = _sha256(data)
    results = []
    for k, lv in enumerate(sorted(set(levels)), 1):
        say(f"[sweep] level {lv} ({k}/{len(set(levels))})")
        results.append(run_level(out, cfg, lv, data, digest, named, say))
    return results
