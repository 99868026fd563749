"""DeePMD-kit's ``deepmd/npy`` data layout: MLIP-3 configurations written as DeePMD
systems, and read back.

A DeePMD *system* is a folder of frames with one atom count and one type per atom:

    <system>/type.raw         one integer per atom: the index into type_map.raw
    <system>/type_map.raw     the element names, one a line (the `species` given)
    <system>/set.000/coord.npy   (nframes, 3N) Å, cartesian
    <system>/set.000/box.npy     (nframes, 9) Å, the lattice vectors as rows
    <system>/set.000/energy.npy  (nframes, 1) eV
    <system>/set.000/force.npy   (nframes, 3N) eV/Å
    <system>/set.000/virial.npy  (nframes, 9) eV, only when every frame has a stress

so a set of configurations becomes one system per atom count (and per type sequence and
stress presence, which a system also holds fixed): `n4/`, `n32/`, a second 4-atom type
order `n4-1/`. All arrays are float64 (dpdata writes float32 unless asked). The virial is
DeePMD's: virial = -stress * volume, positive under compression, which is MLIP-3's
PlusStress exactly (cfg.py), in full 3x3 (xx xy xz / yx yy yz / zx zy zz), checked against
dpdata's reading of a VASP OUTCAR in tests/test_deepmd.py. The energy is the cfg's (VASP's
free energy TOTEN for VASP labels, as dpdata takes it).

`systems.json` beside the system folders records which frame of which system each
configuration became, so :func:`read_systems` gives them back in the order written.
DeePMD ignores it. Features (`Feature EFS_by`, grades) and per-atom extras are not
carried: DeePMD has no place for them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from smallcell.formats.cfg import Cfg

__all__ = ["MANIFEST", "read_system", "read_systems", "write_systems"]

MANIFEST = "systems.json"
_VOIGT_TO_3X3 = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])  # xx yy zz yz xz xy -> 3x3
_FROM_3X3 = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])  # 3x3 -> xx yy zz yz xz xy


def plus_stress_to_virial(plus_stress: np.ndarray) -> np.ndarray:
    """MLIP-3 PlusStress (xx yy zz yz xz xy, eV) as DeePMD's 3x3 virial (eV): the same
    tensor, -stress * volume."""
    return np.asarray(plus_stress, dtype=np.float64).reshape(6)[_VOIGT_TO_3X3]


def virial_to_plus_stress(virial: np.ndarray) -> np.ndarray:
    """DeePMD's virial (9 or 3x3, eV) as MLIP-3 PlusStress (xx yy zz yz xz xy, eV); the
    symmetric part (DeePMD's predicted virial is symmetric only to rounding)."""
    v = np.asarray(virial, dtype=np.float64).reshape(3, 3)
    v = 0.5 * (v + v.T)
    return v[_FROM_3X3]


def _check(cfg: Cfg, k: int) -> None:
    if cfg.cell is None or cfg.cell.shape != (3, 3):
        raise ValueError(f"configuration {k}: DeePMD systems here are periodic; it has "
                         f"{0 if cfg.cell is None else cfg.cell.shape[0]} lattice vectors")
    if cfg.energy is None or cfg.forces is None:
        raise ValueError(f"configuration {k}: no energy or forces (DeePMD trains on "
                         "labeled configurations)")


def write_systems(cfgs: Iterable[Cfg], species: Sequence[str], out: str | os.PathLike[str]
                  ) -> list[Path]:
    """Write labeled configurations as DeePMD systems under `out` (created; existing
    system folders of the same names are overwritten) and `out/systems.json`; return the
    system folders. `species[type]` names each cfg type (type_map.raw). ValueError for a
    configuration that is not periodic or not labeled, or a type outside `species`."""
    out = Path(out)
    species = [str(s) for s in species]
    if len(set(species)) != len(species):
        raise ValueError(f"species lists a name twice: {species} (type_map.raw needs "
                         "unique names)")
    groups: dict[tuple, list[int]] = {}
    cfgs = list(cfgs)
    for k, cfg in enumerate(cfgs):
        _check(cfg, k)
        if cfg.types.size and not 0 <= int(cfg.types.min()) <= int(cfg.types.max()) \
                < len(species):
            raise ValueError(f"configuration {k}: type {int(cfg.types.max())} has no "
                             f"species in {species}")
        key = (cfg.natoms, tuple(cfg.types.tolist()), cfg.plus_stress is not None)
        groups.setdefault(key, []).append(k)
    names: dict[tuple, str] = {}
    per_size: dict[int, int] = {}
    for key in groups:
        n = key[0]
        seen = per_size.get(n, 0)
        names[key] = f"n{n}" if seen == 0 else f"n{n}-{seen}"
        per_size[n] = seen + 1
    folders, frames = [], [("", 0)] * len(cfgs)
    for key, members in groups.items():
        folder = out / names[key]
        (folder / "set.000").mkdir(parents=True, exist_ok=True)
        stale = folder / "set.000" / "virial.npy"
        if stale.exists():
            stale.unlink()
        sel = [cfgs[k] for k in members]
        np.savetxt(folder / "type.raw", np.asarray(key[1], dtype=np.int64), fmt="%d")
        (folder / "type_map.raw").write_text("".join(f"{s}\n" for s in species),
                                             encoding="utf-8")
        arrays = {
            "coord": np.stack([c.positions.reshape(-1) for c in sel]),
            "box": np.stack([c.cell.reshape(9) for c in sel]),  # type: ignore[union-attr]
            "energy": np.array([[c.energy] for c in sel], dtype=np.float64),
            "force": np.stack([c.forces.reshape(-1) for c in sel]),  # type: ignore[union-attr]
        }
        if key[2]:
            arrays["virial"] = np.stack([plus_stress_to_virial(c.plus_stress).reshape(9)
                                         for c in sel])
        for name, arr in arrays.items():
            np.save(folder / "set.000" / f"{name}.npy", arr.astype(np.float64))
        for frame, k in enumerate(members):
            frames[k] = (names[key], frame)
        folders.append(folder)
    manifest = {"format": "deepmd/npy", "species": species,
                "systems": [names[key] for key in groups],
                "frames": [list(f) for f in frames]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return folders


def read_system(folder: str | os.PathLike[str], species: Sequence[str] | None = None
                ) -> list[Cfg]:
    """The frames of one DeePMD system (every set.* in order) as configurations. With
    `species`, types are re-indexed from the system's type_map.raw into `species` (a
    name missing from it is a ValueError); without, they stay type.raw's."""
    folder = Path(folder)
    types = np.loadtxt(folder / "type.raw", dtype=np.int64, ndmin=1)
    if species is not None:
        tmap = (folder / "type_map.raw").read_text(encoding="utf-8").split()
        missing = sorted(set(tmap[t] for t in types.tolist()) - set(species))
        if missing:
            raise ValueError(f"{folder}: element(s) {missing} not in species {list(species)}")
        index = {s: i for i, s in enumerate(species)}
        types = np.array([index[tmap[t]] for t in types.tolist()], dtype=np.int64)
    n = types.shape[0]
    out: list[Cfg] = []
    for set_dir in sorted(folder.glob("set.*")):
        coord = np.load(set_dir / "coord.npy").astype(np.float64)
        nf = coord.shape[0]
        box = np.load(set_dir / "box.npy").astype(np.float64).reshape(nf, 3, 3)
        energy = np.load(set_dir / "energy.npy").astype(np.float64).reshape(nf)
        force = np.load(set_dir / "force.npy").astype(np.float64).reshape(nf, n, 3)
        vpath = set_dir / "virial.npy"
        virial = np.load(vpath).astype(np.float64).reshape(nf, 9) if vpath.exists() else None
        for i in range(nf):
            out.append(Cfg(cell=box[i], types=types.copy(), positions=coord[i].reshape(n, 3),
                           forces=force[i], energy=float(energy[i]),
                           plus_stress=None if virial is None else
                           virial_to_plus_stress(virial[i])))
    return out


def read_systems(root: str | os.PathLike[str]) -> list[Cfg]:
    """What :func:`write_systems` wrote under `root`, in the order it was given (from
    systems.json), types indexed into the manifest's species."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    species = manifest["species"]
    frames = {name: read_system(root / name, species) for name in manifest["systems"]}
    return [frames[name][i] for name, i in manifest["frames"]]
