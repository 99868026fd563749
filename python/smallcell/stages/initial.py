"""Iteration 0's selection: the initial data set (generated, or imported already labeled).

- generate: strained and displaced copies of the cell go to `select/selected.cfg` and are
  labeled like any selection;
- cfg: a labeled MLIP-3 cfg file is copied to `select/imported.cfg` (no label tasks);
- outcar: every complete ionic step of every OUTCAR under a folder becomes a configuration
  of `select/imported.cfg`;
- import: the same for every entry of `initial.paths` (cfg files, extended XYZ files,
  OUTCAR folders), one after another.

Imported data are deduplicated (`initial.dedup`) and a random `initial.test_fraction` of
them is held out in `select/test.cfg`: never trained on, every potential is tested on it.
"""

from __future__ import annotations

import bisect
import sys
from pathlib import Path

import numpy as np

from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg, atoms_to_cfg, read_cfgs, write_cfgs
from smallcell.formats.errors import FormatError
from smallcell.formats.extxyz import read_extxyz
from smallcell.formats.outcar import read_outcar, step_to_cfg, usable_steps
from smallcell.stages.common import Iteration, progress, require_labeled
from smallcell.state import atomic_output, atomic_write_json
from smallcell.structures import initial_structures, rng_for

IMPORTED = "imported.cfg"
TEST = "test.cfg"


def _import_outcars(folder: Path, species: list[str]) -> list:
    """Every complete, converged DFT ionic step of every OUTCAR under `folder`, with types
    mapped from the OUTCAR's POTCAR order to the run's species order."""
    cfgs = []
    for path in sorted(folder.rglob("OUTCAR")):
        try:
            info, steps = read_outcar(path)
            found = [step_to_cfg(s, info)
                     for s in usable_steps(info, steps, keep_converged_steps=True)]
        except FormatError as exc:
            raise SmallcellError(f"cannot import this OUTCAR: {exc}") from None
        missing = sorted({info.species[t] for c in found for t in set(c.types.tolist())}
                         - set(species))
        if missing:
            raise SmallcellError(f"{path}: species {', '.join(missing)} not in the config's "
                                 f"species {species}")
        remap = np.array([species.index(s) if s in species else -1 for s in info.species])
        for cfg in found:
            cfg.types = remap[cfg.types]
            cfg.set_feature("origin", f"{path}")
            cfgs.append(cfg)
        dropped = len([s for s in steps if not s.ml]) - len(found)
        if dropped:
            progress_note = f"{path}: {dropped} ionic step(s) skipped ({info.status}"
            print(progress_note + (f": {info.reason})" if info.reason else ")"),
                  file=sys.stderr)
    if not cfgs:
        raise SmallcellError(f"{folder}: no OUTCAR with a complete ionic step found")
    return cfgs


def read_set(path: Path, species: list[str]) -> list[Cfg]:
    """One labeled data set: an OUTCAR folder, an extended XYZ file or a cfg file."""
    if path.is_dir():
        return _import_outcars(path, species)
    try:
        if path.suffix.lower() in (".extxyz", ".xyz"):
            found, _ = read_extxyz(path, species)
        else:
            found = read_cfgs(path)
    except FormatError as exc:
        raise SmallcellError(f"initial data: {exc}") from None
    except ValueError as exc:  # an element outside the species
        raise SmallcellError(f"{path}: {exc} (the config's species are {species})") from None
    require_labeled(path, found, "initial data must be labeled (energy and forces)", species)
    for k, cfg in enumerate(found):
        if cfg.feature("origin") is None:
            cfg.set_feature("origin", f"{path}#{k}")
    return found


def dedup(cfgs: list[Cfg], tol: float = 1e-5) -> tuple[list[Cfg], int]:
    """The configurations without repeats of an earlier one (same types, and cell and
    positions within `tol` Å, atoms in the same order), and how many were dropped.

    Rounding to a grid would split equal values that straddle a grid line (a cfg file's 6
    decimals against an extxyz file's 8), so each configuration is compared within the
    tolerance with the kept ones whose weighted coordinate sum is close enough to be
    equal: sorted sums and a bisect window, not all pairs."""
    groups: dict[bytes, tuple[list[float], list[np.ndarray]]] = {}
    kept = []
    for cfg in cfgs:
        cell = np.zeros(9) if cfg.cell is None else np.asarray(cfg.cell, float).ravel()
        flat = np.concatenate([cell, np.asarray(cfg.positions, float).ravel()])
        sums, members = groups.setdefault(np.asarray(cfg.types, np.int64).tobytes(), ([], []))
        w = np.random.default_rng(len(flat)).uniform(0.5, 1.5, len(flat))
        f = float(flat @ w)
        reach = tol * float(w.sum())
        lo, hi = bisect.bisect_left(sums, f - reach), bisect.bisect_right(sums, f + reach)
        if any(np.allclose(members[k], flat, rtol=0.0, atol=tol) for k in range(lo, hi)):
            continue
        at = bisect.bisect_left(sums, f)
        sums.insert(at, f)
        members.insert(at, flat)
        kept.append(cfg)
    return kept, len(cfgs) - len(kept)


def split(cfgs: list[Cfg], fraction: float, rng: np.random.Generator
          ) -> tuple[list[Cfg], list[Cfg]]:
    """(train, test): round(fraction * n) configurations drawn at random are held out,
    both parts keeping file order."""
    n_test = round(fraction * len(cfgs))
    test = set(rng.choice(len(cfgs), size=n_test, replace=False).tolist()) if n_test else set()
    return ([c for k, c in enumerate(cfgs) if k not in test],
            [c for k, c in enumerate(cfgs) if k in test])


def held_out(root: Path) -> Path | None:
    """The held-out test set of a run (iter/0/select/test.cfg), if it has one."""
    path = root / "iter" / "0" / "select" / TEST
    return path if path.is_file() and path.stat().st_size else None


def _imported(it: Iteration) -> tuple[list[Cfg], dict]:
    """Every imported configuration (deduplicated), and the record of where they came
    from."""
    init = it.cfg["initial"]
    entries = init["paths"] if init["source"] == "import" else [init["path"]]
    cfgs: list[Cfg] = []
    sources = []
    for entry in entries:
        path = it.cfg.resolve(entry)
        assert path is not None
        got = read_set(path, it.species)
        sources.append({"path": str(path), "n": len(got)})
        progress(it, "select", f"imported {len(got)} labeled configurations from {path}")
        cfgs += got
    dropped = 0
    if init["dedup"]:
        cfgs, dropped = dedup(cfgs)
        if dropped:
            progress(it, "select", f"dropped {dropped} duplicate configuration(s)")
    return cfgs, {"sources": sources, "n_duplicates": dropped}


def select(it: Iteration, folder: Path) -> int:
    """Write iteration 0's selection; return the number of configurations to label."""
    init = it.cfg["initial"]
    source = init["source"]
    selected: list = []
    record: dict = {}
    if source == "generate":
        for k, atoms in enumerate(initial_structures(it.cfg)):
            cfg = atoms_to_cfg(atoms, it.species)
            cfg.set_feature("origin", f"initial#{k}")
            selected.append(cfg)
    else:
        imported, record = _imported(it)
        train, test = split(imported, init["test_fraction"],
                            rng_for(it.cfg["run"]["seed"], "test split"))
        with atomic_output(folder / TEST) as tmp:
            write_cfgs(tmp, test)
        with atomic_output(folder / IMPORTED) as tmp:
            write_cfgs(tmp, train)
        record.update(n_train=len(train), n_test=len(test))
        if test:
            progress(it, "select", f"{len(train)} configurations to train on, {len(test)} "
                     f"held out as the test set ({folder / TEST})")
    with atomic_output(folder / "selected.cfg") as tmp:
        write_cfgs(tmp, selected)
    atomic_write_json(folder / "selection.json", {
        "policy": f"initial:{source}", "n_candidates": len(selected),
        "n_selected": len(selected), "candidates": [], "imported": record})
    return len(selected)
