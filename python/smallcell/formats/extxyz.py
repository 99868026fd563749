"""Extended XYZ through ``ase.io``: the training set in the format other MLIPs read.

NequIP, MACE, Allegro, GAP and ACE fitting tools all read extended XYZ with
``energy``, ``forces``, ``stress`` (ASE convention: eV/Å^3, sign of the stress
tensor, here written as 3x3), ``pbc`` and ``Lattice``, and element symbols per
atom. This module maps MLIP-3 configurations onto exactly that, using ASE's
own writer so that the files are what ASE-based tools expect:

* ``Energy`` -> ``energy`` and ``free_energy`` (a cfg's Energy is VASP's free
  energy TOTEN, the one consistent with the forces);
* ``PlusStress`` -> ``stress = -PlusStress / V`` (only for fully periodic cells);
* other AtomData columns (``nbh_grades``, ``charge``, ``magmom_x`` ...) ->
  per-atom columns of the same name;
* features -> one comment-line key each (``EFS_by=VASP MV_grade=2.9``); line
  k >= 2 of a multi-line feature is written as key ``<key>__<k>`` (ASE's reader
  cannot take escaped newlines or quotes in JSON), and a feature whose key ASE
  reserves (``energy``, ``stress``, ...) is written as ``feature_<key>``.

Reading inverts this. ASE parses comment-line values, so a numeric feature
comes back in Python's shortest spelling (``385949.696580`` -> ``385949.69658``,
the same number), and keys that other programs add (``config_type=bulk``)
become features too. A ``charge`` column, which ASE turns into the
``charges`` property, goes back to the cfg's ``charge`` column. Positions and
forces go through ASE's ``%16.8f`` columns, finer than the cfg's 6 decimals,
so cfg -> extxyz -> cfg reproduces every value the cfg file holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from smallcell.formats.cfg import Cfg, atoms_to_cfg, cfg_to_atoms
from smallcell.formats.errors import FormatError

__all__ = ["read_extxyz", "write_extxyz"]

# Comment-line keys that ASE's extxyz reader/writer give a meaning of their own.
_RESERVED = frozenset({
    "energy", "free_energy", "stress", "virial", "forces", "pbc", "Lattice", "Properties",
    "magmom", "magmoms", "charges", "dipole", "time", "step", "features", "MV_grade",
})
_PREFIX = "feature_"
_LINE = re.compile(r"^(.+)__([2-9]|[1-9][0-9]+)$")  # line k >= 2 of a multi-line feature


def _feature_info(features: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Features as comment-line keys (line k >= 2 of a multi-line one as ``<key>__<k>``)."""
    grouped: dict[str, list[str]] = {}
    for key, value in features:
        grouped.setdefault(key, []).append(value)
    out: dict[str, str] = {}
    for key, values in grouped.items():
        name = _PREFIX + key if key in _RESERVED else key
        out[name] = values[0]
        for k, value in enumerate(values[1:], start=2):
            out[f"{name}__{k}"] = value
    return out


def _info_features(info: dict[str, object]) -> list[tuple[str, str]]:
    """Inverse of :func:`_feature_info` for what ASE left in ``atoms.info``."""
    lines: dict[str, list[tuple[int, str]]] = {}
    for name, value in info.items():
        if name in _RESERVED:
            continue
        m = _LINE.match(name)
        base, k = (m.group(1), int(m.group(2))) if m and m.group(1) in info else (name, 1)
        if base.startswith(_PREFIX) and base[len(_PREFIX):] in _RESERVED:
            base = base[len(_PREFIX):]
        if isinstance(value, bool | np.bool_):
            text = "T" if value else "F"
        elif isinstance(value, np.ndarray):
            text = " ".join(str(x) for x in value.reshape(-1).tolist())
        else:
            text = str(value)
        lines.setdefault(base, []).append((k, text))
    return [(key, text) for key, rows in lines.items() for _, text in sorted(rows)]


def write_extxyz(path: str | os.PathLike[str], cfgs: Iterable[Cfg],
                 species: Sequence[str]) -> int:
    """Write configurations as extended XYZ; ``species[t]`` is the element of type t.

    Returns how many frames were written. Plain write (callers wanting
    atomicity write to a temporary name and rename).
    """
    import ase.io

    images = []
    for cfg in cfgs:
        atoms = cfg_to_atoms(cfg, species)
        atoms.info.clear()
        atoms.info.update(_feature_info(cfg.features))
        images.append(atoms)
    ase.io.write(os.fspath(path), images, format="extxyz")
    return len(images)


def read_extxyz(path: str | os.PathLike[str],
                species: Sequence[str] | None = None) -> tuple[list[Cfg], list[str]]:
    """All frames of an extended XYZ file and the species their types index.

    With ``species`` given, an atom's type is the index of its element there;
    otherwise the species are the elements in order of first appearance.
    """
    import ase.io

    path = os.fspath(path)
    try:
        images = ase.io.read(path, index=":", format="extxyz")
    except (ValueError, IndexError, KeyError) as exc:
        raise FormatError(path, None, f"not a readable extended XYZ file ({exc})") from None
    except OSError as exc:
        raise FormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if species is None:
        order: list[str] = []
        for atoms in images:
            order.extend(s for s in dict.fromkeys(atoms.get_chemical_symbols()) if s not in order)
    else:
        order = list(species)
    cfgs = []
    for i, atoms in enumerate(images):
        features = _info_features(atoms.info)
        results = getattr(atoms.calc, "results", {})
        if "charges" in results:  # ASE maps a "charge" column to the charges property
            atoms.arrays["charge"] = np.asarray(results["charges"], dtype=np.float64)
        atoms.info.clear()
        atoms.info["features"] = features
        try:
            cfgs.append(atoms_to_cfg(atoms, order))
        except ValueError as exc:
            raise FormatError(path, None, f"frame {i}: {exc}") from None
    return cfgs, order
