"""Iteration 0's selection: the initial data set (generated, or imported already labeled).

- generate: strained and displaced copies of the cell go to `select/selected.cfg` and are
  labeled like any selection;
- cfg: a labeled MLIP-3 cfg file is copied to `select/imported.cfg` (no label tasks);
- outcar: every complete ionic step of every OUTCAR under a folder becomes a configuration
  of `select/imported.cfg`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from smallcell.errors import SmallcellError
from smallcell.formats.cfg import atoms_to_cfg, read_cfgs, write_cfgs
from smallcell.formats.errors import FormatError
from smallcell.formats.outcar import read_outcar, step_to_cfg, usable_steps
from smallcell.stages.common import Iteration, progress, require_labeled
from smallcell.state import atomic_output, atomic_write_json
from smallcell.structures import initial_structures

IMPORTED = "imported.cfg"


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


def select(it: Iteration, folder: Path) -> int:
    """Write iteration 0's selection; return the number of configurations to label."""
    init = it.cfg["initial"]
    source = init["source"]
    selected: list = []
    if source == "generate":
        for k, atoms in enumerate(initial_structures(it.cfg)):
            cfg = atoms_to_cfg(atoms, it.species)
            cfg.set_feature("origin", f"initial#{k}")
            selected.append(cfg)
    else:
        path = it.cfg.resolve(init["path"])
        assert path is not None
        if source == "cfg":
            try:
                imported = read_cfgs(path)
            except FormatError as exc:
                raise SmallcellError(f"initial.path: {exc}") from None
            require_labeled(path, imported, "initial.source cfg needs labeled data")
        else:
            imported = _import_outcars(path, it.species)
        with atomic_output(folder / IMPORTED) as tmp:
            write_cfgs(tmp, imported)
        progress(it, "select", f"imported {len(imported)} labeled configurations from {path}")
    with atomic_output(folder / "selected.cfg") as tmp:
        write_cfgs(tmp, selected)
    atomic_write_json(folder / "selection.json", {
        "policy": f"initial:{source}", "n_candidates": len(selected),
        "n_selected": len(selected), "candidates": []})
    return len(selected)
