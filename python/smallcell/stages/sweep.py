"""The MTP-level sweep (`smallcell sweep`, `make sweep`): one training set fitted at
several levels with the configured trainer, each potential evaluated on one or more
labeled test sets (for example equilibrium and non-equilibrium MD), with wall and CPU time.

Layout under the output folder (default `sweep/`):

    level<L>/train/        the trainer's files (pot.mtp or pot.almtp, train.log, ...)
    level<L>/result.json   level, data file and its hash, training wall/CPU seconds,
                           iterations, convergence (and the rounds it took), training
                           errors, errors per test set
    level<L>/done          written last
    results.json, sweep.md, *.png   drawn from the result files by study/sweep_report.py

Each level is fitted to convergence: a fit that stops at `trainer.max_iter` goes on from
where it stopped (a warm start, no restarts) for another `trainer.max_iter` iterations, up
to MAX_ROUNDS rounds in all. A level that still has not converged is recorded as such and
shown as "NOT converged" in the table and as hollow markers in the figures: an unfinished
fit's errors are not the accuracy of its level (issue 17: force errors rising with the
level, 10.4, 13.6, 27.3 meV/Å for levels 6, 8, 10, were fits cut at 300 iterations).

Test sets are named by the shortest tail of their path that tells them apart
(`vasp/labeled` and `sample/labeled`, not `labeled` and `sample/labeled`), over every test
set the sweep folder holds, so the names stay distinct when a rerun adds one.

A finished level is never trained again: rerunning with more levels trains only those,
and a new test set is evaluated on the existing potentials. A level trained on other data
is refused (named, with its hash) instead of being mixed into one table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from smallcell.config import Config
from smallcell.engines.base import trainer_for
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import cfg_to_atoms, iter_cfgs
from smallcell.stages.common import require_labeled
from smallcell.stages.train import fit_settings
from smallcell.state import atomic_write_json, atomic_write_text, mark_done, read_json

RESULT = "result.json"
#: A level's fit runs at most this many rounds of trainer.max_iter iterations: the first
#: as configured (restarts included), each next one warm from the last, until it converges.
MAX_ROUNDS = 5


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


def _sweep_trainer(cfg: Config) -> Any:
    """The configured trainer, continuing from its own fit when asked to (warm_start only
    decides what the loop starts from; a sweep's first round always starts fresh)."""
    data = dict(cfg.data, trainer=dict(cfg["trainer"], warm_start=True))
    return trainer_for(dataclasses.replace(cfg, data=data))


def fit_level(trainer: Any, images: list, species: list[str], train_dir: Path, settings: Any,
              level: int, max_rounds: int = MAX_ROUNDS, say: Any = print
              ) -> tuple[Any, list[dict[str, Any]]]:
    """Fit `images` at one level until the fit converges or `max_rounds` rounds of
    settings.max_iter iterations are spent; return the last round's TrainResult and one
    record per round. Round 1 is the configured fit; each next round starts from the
    potential the last one wrote, without restarts. train.log keeps every round's log."""
    rounds: list[dict[str, Any]] = []
    logs: list[str] = []
    log = train_dir / "train.log"
    res = None
    for k in range(1, max_rounds + 1):
        if k == 1:
            res = trainer.train(images, species, train_dir, settings, None)
        else:
            spent = sum(r["iterations"] for r in rounds)
            say(f"[sweep | level {level}] not converged after {spent} iterations: going on "
                f"from that fit for up to {settings.max_iter} more (round {k} of at most "
                f"{max_rounds})")
            res = trainer.train(images, species, train_dir,
                                dataclasses.replace(settings, restarts=0),
                                trainer.start_file(train_dir))
        rounds.append({"round": k, "iterations": int(res.iterations),
                       "converged": bool(res.converged), "message": res.message})
        if log.is_file():
            logs.append(f"{'#' * 72}\n# sweep round {k}: {res.iterations} iterations, "
                        f"{'converged' if res.converged else 'not converged'}\n"
                        + log.read_text(encoding="utf-8", errors="replace"))
        if res.converged:
            break
    if len(rounds) > 1 and logs:
        atomic_write_text(log, "".join(logs))
    return res, rounds


def run_level(out: Path, cfg: Config, level: int, data: Path, digest: str,
              tests: dict[str, Path], say: Any = print, max_rounds: int = MAX_ROUNDS,
              names: dict[str, Path] | None = None) -> dict[str, Any]:
    """Train (unless done) and evaluate one level on `data` (sha256 `digest`); return its
    result.json content. `tests`: the test sets to evaluate, by name; `names`: every test
    set's name (default `tests`), which an earlier result's test sets are renamed to."""
    folder = level_dir(out, level)
    species = list(cfg["species"])
    trainer = _sweep_trainer(cfg)
    changed = not (folder / "done").exists()
    if not changed:
        result = read_json(folder / RESULT)
        if result["data_sha256"] != digest:
            raise SmallcellError(
                f"{folder} was trained on {result['data']} (sha256 {result['data_sha256'][:12]}"
                f"...), not on {data} ({digest[:12]}...): use another --out or remove {folder}")
        changed = _rename_tests(result, names or tests)
    else:
        images = [cfg_to_atoms(c, species) for c in iter_cfgs(data)]
        say(f"[sweep | level {level}] fitting {trainer.name} on {len(images)} configurations")
        settings = fit_settings(cfg["trainer"], cfg["run"]["seed"], level=level)
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()
        res, rounds = fit_level(trainer, images, species, folder / "train", settings, level,
                                max_rounds, say)
        result = {"level": level, "trainer": trainer.name, "data": str(data),
                  "data_sha256": digest, "n_train": len(images),
                  "train_wall_seconds": time.perf_counter() - wall0,
                  "train_cpu_seconds": _cpu_seconds() - cpu0,
                  "iterations": sum(r["iterations"] for r in rounds),
                  "converged": res.converged, "rounds": rounds,
                  "max_iter": settings.max_iter, "max_rounds": max_rounds,
                  "message": res.message, "train_errors": res.errors, "tests": {}}
        if not res.converged:
            say(f"[sweep | level {level}] WARNING: NOT CONVERGED after {len(rounds)} rounds "
                f"({result['iterations']} iterations): its errors are those of an unfinished "
                "fit, not of the level (raise trainer.max_iter and remove "
                f"{folder} to fit it again)")
    missing = {name: p for name, p in tests.items() if name not in result["tests"]}
    for name, path in missing.items():
        result["tests"][name] = {"path": str(path),
                                 **trainer.errors(folder / "train", species, path)}
    if missing or changed:
        atomic_write_json(folder / RESULT, result)
        mark_done(folder)
    e = {n: result["tests"][n]["force_rmse"] for n in tests}
    state = "" if result["converged"] else " (NOT CONVERGED)"
    say(f"[sweep | level {level}] trained in {result['train_wall_seconds']:.1f} s{state}; "
        "force RMSE " + ", ".join(f"{n} {1000 * v:.1f}" for n, v in e.items()) + " meV/Å")
    return result


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _rename_tests(result: dict[str, Any], tests: dict[str, Path]) -> bool:
    """Give the test sets of an existing result the names `tests` has for their paths
    (names are drawn over every test set of the sweep folder); True when one changed."""
    renamed, changed = {}, False
    for name, entry in result["tests"].items():
        new = next((n for n, p in tests.items() if _same(p, entry["path"])), name)
        changed |= new != name
        renamed[new] = entry
    result["tests"] = renamed
    return changed


def test_names(tests: Iterable[Path]) -> dict[str, Path]:
    """Test sets by name: the shortest tail of each path (file stem, then parent folders)
    that no other test set shares, e.g. `vasp/labeled` and `sample/labeled` for
    iter/3/vasp/labeled.cfg and iter/3/sample/labeled.cfg; a unique stem stays alone."""
    paths = [Path(p) for p in tests]
    resolved = [p.resolve() for p in paths]
    seen: dict[Path, Path] = {}
    for p, r in zip(paths, resolved, strict=True):
        if r in seen:
            raise SmallcellError(f"{p}: given twice as a test set")
        seen[r] = p

    parts = [r.with_name(r.stem).parts for r in resolved]
    out: dict[str, Path] = {}
    for i, p in enumerate(paths):
        name = str(resolved[i])  # only when two paths differ in their suffix alone
        for k in range(1, len(parts[i]) + 1):
            if all(other[-k:] != parts[i][-k:] for j, other in enumerate(parts) if j != i):
                name = "/".join(parts[i][-k:])
                break
        out[name] = p
    return out


def _finished_levels(out: Path) -> set[int]:
    return {int(d.name[5:]) for d in out.glob("level*")
            if re.fullmatch(r"level\d+", d.name) and (d / "done").exists()}


def _existing_tests(out: Path) -> list[Path]:
    """The test sets of the finished levels under `out`, in order of first appearance."""
    found: list[Path] = []
    for lv in sorted(_finished_levels(out)):
        for entry in read_json(level_dir(out, lv) / RESULT).get("tests", {}).values():
            p = Path(entry["path"])
            if not any(_same(p, q) for q in found):
                found.append(p)
    return found


def run(out: Path, cfg: Config, levels: Sequence[int], data: Path,
        tests: Sequence[Path], say: Any = print,
        max_rounds: int = MAX_ROUNDS) -> list[dict[str, Any]]:
    """Every level in order, after checking every input file once. Levels not asked for
    this time keep their results; their test sets are renamed like the others'."""
    species = list(cfg["species"])
    for lv in levels:
        if not 2 <= lv <= 28:
            raise SmallcellError(f"level {lv}: expected an MTP level from 2 to 28")
    check_labeled(data, species)
    named = test_names(tests)
    for path in named.values():
        check_labeled(path, species)
    out.mkdir(parents=True, exist_ok=True)
    earlier = [p for p in _existing_tests(out) if not any(_same(p, q) for q in tests)]
    every = test_names([*tests, *earlier])
    asked = {n: p for n, p in every.items() if any(_same(p, q) for q in tests)}
    for lv in _finished_levels(out) - set(levels):
        result = read_json(level_dir(out, lv) / RESULT)
        if _rename_tests(result, every):
            atomic_write_json(level_dir(out, lv) / RESULT, result)
    digest = _sha256(data)
    results = []
    for k, lv in enumerate(sorted(set(levels)), 1):
        say(f"[sweep] level {lv} ({k}/{len(set(levels))})")
        results.append(run_level(out, cfg, lv, data, digest, asked, say, max_rounds, every))
    return results
