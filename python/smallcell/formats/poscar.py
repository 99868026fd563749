"""VASP POSCAR/CONTCAR: the structure file of a labeling task, read and written exactly.

Written files are VASP 5 POSCARs: a species line, one scale factor of 1.0, the
lattice and *direct* coordinates with 16 decimals, so that positions survive
the trip to VASP and back to well below the 1e-6 Å a cfg keeps.

**Atoms are reordered**: VASP needs the atoms of one species to be contiguous
and the groups in the order of the POTCAR, so :func:`write_poscar` writes the
atoms of type 0 first, then type 1, ... (stable within a type), and leaves out
species without atoms (their POTCAR must then be left out too).
:func:`poscar_order` returns that permutation: ``cfg.positions[poscar_order(cfg)]``
are the rows of the file, which is what a labeler needs to map VASP's forces
back onto the cfg's atoms.

The reader accepts what VASP accepts and what other programs write:

* VASP 5 files with a species line (``Ti_pv`` or ``Ti_pv/hash`` of VASP 6
  become ``Ti``), repeated species (``B O B O``) included;
* VASP 4 files and ``mlp convert --output_format=poscar`` files without a species
  line, when ``species`` is given (the k-th count is species[k], which is
  how ``mlp convert`` writes its types);
* a negative scale (the cell volume) or three scale factors (VASP 6), Direct or
  Cartesian coordinates (Cartesian ones are scaled, as VASP does), Selective
  dynamics flags (ignored), and velocity/predictor blocks after the positions
  (ignored).

Anything else is a :class:`FormatError` naming the file and the line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from smallcell.formats.cfg import Cfg
from smallcell.formats.errors import FormatError

__all__ = ["format_poscar", "poscar_order", "read_poscar", "read_poscar_species", "write_poscar"]

_ELEMENT = re.compile(r"^[A-Z][a-z]?$")


def poscar_order(cfg: Cfg) -> np.ndarray:
    """Indices of the cfg's atoms in the order :func:`write_poscar` writes them (by type)."""
    return np.argsort(cfg.types, kind="stable")


def format_poscar(cfg: Cfg, species: Sequence[str], comment: str | None = None) -> str:
    """The text of a VASP 5 POSCAR of ``cfg``; ``species[t]`` is the element of type ``t``."""
    if cfg.cell is None or np.asarray(cfg.cell).shape != (3, 3):
        raise ValueError("a POSCAR needs a periodic cell with 3 lattice vectors")
    cell = np.asarray(cfg.cell, dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("the cell is singular (zero volume)")
    if cfg.natoms == 0:
        raise ValueError("a POSCAR needs at least one atom")
    bad = sorted({int(t) for t in cfg.types if not 0 <= t < len(species)})
    if bad:
        raise ValueError(f"type {bad[0]} has no species in {list(species)}")
    order = poscar_order(cfg)
    types = cfg.types[order]
    present = [t for t in range(len(species)) if np.any(types == t)]
    frac = np.linalg.solve(cell.T, cfg.positions[order].T).T
    frac[np.abs(frac) < 1e-15] = 0.0  # no "-0.0000000000000000" from round-off
    if comment is None:
        comment = " ".join(f"{species[t]}{int(np.sum(types == t))}" for t in present)
    lines = [comment.replace("\n", " "), "   1.0"]
    lines += ["  " + " ".join(f"{x:22.16f}" for x in row) for row in cell.tolist()]
    lines.append("   " + " ".join(f"{species[t]:>4}" for t in present))
    lines.append("   " + " ".join(f"{int(np.sum(types == t)):>4}" for t in present))
    lines.append("Direct")
    lines += [" ".join(f"{x:20.16f}" for x in row) for row in frac.tolist()]
    return "\n".join(lines) + "\n"


def write_poscar(path: str | os.PathLike[str], cfg: Cfg, species: Sequence[str],
                 comment: str | None = None) -> None:
    """Write ``cfg`` as a VASP 5 POSCAR (atoms grouped by type; see :func:`poscar_order`).

    Plain write: callers that need atomicity write to a temporary name first
    (formats have no side effects beyond the file they are asked to write).
    """
    text = format_poscar(cfg, species, comment)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


# --------------------------------------------------------------------------- reading


@dataclass
class _Poscar:
    cell: np.ndarray
    positions: np.ndarray  # Cartesian Å
    counts: list[int]
    symbols: list[str] | None  # one per count, None without a species line


def _symbol(token: str) -> str:
    """``Ti_pv/1a2b`` (VASP 6 CONTCAR) -> ``Ti``."""
    return token.split("/")[0].split("_")[0]


def _parse(path: str) -> _Poscar:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read().splitlines()
    except OSError as exc:
        raise FormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    pos = 1  # index of the next line to read (0-based); line 0 is the comment

    def line(what: str) -> tuple[int, list[str]]:
        nonlocal pos
        if pos >= len(raw):
            raise FormatError(path, pos + 1, f"end of file, expected {what}")
        pos += 1
        return pos, raw[pos - 1].split()

    def floats(lineno: int, toks: list[str], n: int, what: str) -> list[float]:
        try:
            vals = [float(t) for t in toks[:n]]
        except ValueError:
            vals = []
        if len(vals) < n or not all(np.isfinite(vals)):
            raise FormatError(path, lineno, f"expected {what}, got {' '.join(toks)!r}")
        return vals

    if not raw:
        raise FormatError(path, 1, "empty file, expected a POSCAR")
    lineno, toks = line("the scale factor")
    if len(toks) >= 3 and _all_float(toks[:3]):
        scale = np.array(floats(lineno, toks, 3, "three scale factors"))
        if np.any(scale <= 0):
            raise FormatError(path, lineno, "three scale factors must all be positive")
    else:
        scale = np.array(floats(lineno, toks, 1, "the scale factor (a number)"))
        if scale[0] == 0:
            raise FormatError(path, lineno, "scale factor 0")
    lattice = np.array([floats(*line("a lattice vector"), 3, "a lattice vector (3 numbers)")
                        for _ in range(3)])
    det = float(np.linalg.det(lattice))
    if abs(det) < 1e-12:
        raise FormatError(path, lineno + 3, "the lattice vectors are singular (zero volume)")
    if scale.size == 1 and scale[0] < 0:  # VASP: a negative scale is the cell volume
        factor = np.full(3, (-scale[0] / abs(det)) ** (1.0 / 3.0))
    else:
        factor = np.resize(scale, 3)
    cell = lattice * factor  # per-axis scaling multiplies the Cartesian components
    lineno, toks = line("the species or the atom counts")
    symbols: list[str] | None = None
    if toks and not toks[0].lstrip("+").isdigit():
        symbols = [_symbol(t) for t in toks]
        bad = [t for t, s in zip(toks, symbols, strict=True) if not _ELEMENT.match(s)]
        if bad:
            raise FormatError(path, lineno, f"{bad[0]!r} is not an element symbol")
        lineno, toks = line("the atom counts")
    try:
        counts = [int(t) for t in toks] if toks else []
    except ValueError:
        counts = []
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise FormatError(path, lineno, f"expected atom counts (integers), got {' '.join(toks)!r}")
    if symbols is not None and len(symbols) != len(counts):
        raise FormatError(path, lineno,
                          f"{len(counts)} atom counts for {len(symbols)} species {symbols}")
    lineno, toks = line("Direct or Cartesian")
    if toks and toks[0][0] in "sS":  # Selective dynamics
        lineno, toks = line("Direct or Cartesian")
    if not toks:
        raise FormatError(path, lineno, "expected Direct or Cartesian, got an empty line")
    cartesian = toks[0][0] in "cCkK"
    n = sum(counts)
    coords = np.array([floats(*line(f"the position of atom {i + 1} of {n}"), 3,
                              f"the position of atom {i + 1} of {n} (3 numbers)")
                       for i in range(n)])
    positions = coords * factor if cartesian else coords @ cell
    return _Poscar(cell=cell, positions=positions, counts=counts, symbols=symbols)


def _all_float(toks: list[str]) -> bool:
    try:
        [float(t) for t in toks]
    except ValueError:
        return False
    return True


def read_poscar_species(path: str | os.PathLike[str]) -> list[str] | None:
    """The distinct elements of the species line in file order, None without one."""
    symbols = _parse(os.fspath(path)).symbols
    return None if symbols is None else list(dict.fromkeys(symbols))


def read_poscar(path: str | os.PathLike[str], species: Sequence[str] | None = None) -> Cfg:
    """The configuration of a POSCAR/CONTCAR; ``species`` sets the type numbers.

    With a species line, an atom's type is the index of its element in
    ``species`` (default: the distinct elements in file order, see
    :func:`read_poscar_species`). Without one (VASP 4, ``mlp convert``),
    ``species`` is required and the k-th count is type k.
    """
    path = os.fspath(path)
    p = _parse(path)
    if p.symbols is None:
        if species is None:
            raise FormatError(path, 6, "no species line (VASP 4 / mlp convert POSCAR): "
                              "give the species, one per atom count, in order")
        if len(p.counts) > len(species):
            raise FormatError(path, 6, f"{len(p.counts)} atom counts but only "
                              f"{len(species)} species {list(species)}")
        types = np.repeat(np.arange(len(p.counts)), p.counts)
    else:
        order = list(dict.fromkeys(p.symbols)) if species is None else list(species)
        index = {s: i for i, s in enumerate(order)}
        missing = [s for s in p.symbols if s not in index]
        if missing:
            raise FormatError(path, 6, f"element {missing[0]} is not in species {order}")
        types = np.repeat([index[s] for s in p.symbols], p.counts)
    return Cfg(cell=p.cell, types=types, positions=p.positions)
