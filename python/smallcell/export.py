"""`smallcell export` / `make export`: a run's data sets as extended XYZ, for other MLIPs.

DeePMD-kit (through dpdata), MACE, NequIP/Allegro and GAP all read extended XYZ with
energy, forces and stress; formats/extxyz.py writes exactly that through ASE. Exported:

- train.extxyz: the training set of the last iteration with one (collect/train.cfg);
- test.extxyz: the held-out test split of the imported data (iter/0/select/test.cfg);
- sample.extxyz: every labeled error-sample configuration (iter/<i>/sample/labeled.cfg),
  MD configurations never trained on: a test set of the conditions the run explored.

Each file is written under a temporary name and renamed; a set the run does not have is
skipped. `smallcell convert x.extxyz x.cfg` brings any of them back.
"""

from __future__ import annotations

from pathlib import Path

from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg, iter_cfgs
from smallcell.formats.extxyz import write_extxyz
from smallcell.stages.common import Iteration
from smallcell.stages.initial import held_out
from smallcell.state import RunPaths, atomic_output


def _sets(paths: RunPaths, upto: int) -> dict[str, list[Path]]:
    train = next((paths.stage(i, "collect") / "train.cfg" for i in range(upto, -1, -1)
                  if (paths.stage(i, "collect") / "done").exists()), None)
    samples = [p for i in range(upto + 1)
               if (p := paths.stage(i, "sample") / "labeled.cfg").is_file()]
    test = held_out(paths.root)
    return {"train": [train] if train else [], "test": [test] if test else [],
            "sample": samples}


def export(root: Path, out: Path, upto: int | None = None) -> dict[str, int]:
    """Write out/<set>.extxyz for every data set the run has; return frames per set."""
    paths = RunPaths(root)
    its = paths.iterations()
    if not its:
        raise SmallcellError(f"{paths.iter_root}: no iterations to export")
    last = its[-1] if upto is None else upto
    species = Iteration.open(root, its[0]).species
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, files in _sets(paths, last).items():
        if not files:
            continue
        cfgs: list[Cfg] = [c for f in files for c in iter_cfgs(f)]
        with atomic_output(out / f"{name}.extxyz") as tmp:
            written[name] = write_extxyz(tmp, cfgs, species)
    return written
