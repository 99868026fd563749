"""``smallcell convert IN OUT``: move configurations between VASP, MLIP-3 and other MLIPs.

Formats (from the file name, or ``--from`` / ``--to``):

=========  =====================================  ======================================
format     names recognised                       direction
=========  =====================================  ======================================
outcar     ``OUTCAR*``, ``*.outcar``              input only
vasprun    ``vasprun*.xml``                       input only
cfg        ``*.cfg``, ``*.cfgs``, ``*.cfg.<N>``   both (MLIP-3 text cfg)
poscar     ``POSCAR*``, ``CONTCAR*``, ``*.vasp``,  both (VASP 5 POSCAR written; VASP 4 and
           ``*.poscar``                           ``mlp convert`` POSCARs read)
extxyz     ``*.xyz``, ``*.extxyz``                both (energy, forces, stress, pbc)
=========  =====================================  ======================================

Extensions are looked at before prefixes, so ``OUTCAR_relax.cfg`` is a cfg.

Species. A cfg holds type numbers, not elements, so ``--species Pb,Ag`` names
the element of type 0, 1, ... wherever a cfg is read or written. For VASP
input the default type order is the POTCAR order, a species with zero atoms or
a repeated POTCAR included (what ``mlp convert`` writes); ``--species`` remaps
the types by element. POSCAR and extxyz input carry their elements.

VASP input is checked like a label task checks it: an unfinished (killed,
crashed) or unconverged (an ionic step reached NELM) OUTCAR/vasprun.xml is an
error with a one-line reason; ``--keep-converged-steps`` keeps the complete,
converged ionic steps of such a run instead. ``--energy sigma0`` takes
energy(sigma->0) instead of the free energy TOTEN that ``mlp convert`` takes
(and that is consistent with the forces).

A POSCAR holds one configuration: with several, the command refuses unless
``--last`` is given (``mlp convert`` writes POSCAR0, POSCAR1, ... instead; a
silent fan-out of thousands of files next to OUT was judged worse than asking).
Written POSCARs group the atoms by type (see :mod:`smallcell.formats.poscar`).
Every output is written to a temporary name and renamed, so OUT is either the
old file or the complete new one.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from smallcell.errors import SmallcellError
from smallcell.formats.errors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    from smallcell.formats.cfg import Cfg

# Module-level imports stay standard-library only: cli.py builds every subparser on each
# call, and `smallcell status` must not pay for numpy/ASE; the readers load on use.

__all__ = ["FORMATS", "add_parser", "convert", "detect_format", "main", "run"]

FORMATS = ("outcar", "vasprun", "cfg", "poscar", "extxyz")
_INPUT_ONLY = ("outcar", "vasprun")
# (pattern on the lower-cased file name, format); first match wins, extensions first.
_PATTERNS: tuple[tuple[str, str], ...] = (
    ("*.cfg", "cfg"), ("*.cfgs", "cfg"), ("*.cfg.[0-9]*", "cfg"),
    ("*.xyz", "extxyz"), ("*.extxyz", "extxyz"),
    ("*.vasp", "poscar"), ("*.poscar", "poscar"),
    ("vasprun*.xml", "vasprun"),
    ("*.outcar", "outcar"), ("outcar*", "outcar"),
    ("poscar*", "poscar"), ("contcar*", "poscar"),
)
_KNOWN_NAMES = ("OUTCAR*, vasprun*.xml, *.cfg, POSCAR*/CONTCAR*/*.vasp, *.xyz/*.extxyz")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a file from its name; SmallcellError when the name says nothing."""
    name = Path(path).name.lower()
    for pattern, fmt in _PATTERNS:
        if fnmatch.fnmatchcase(name, pattern):
            return fmt
    raise SmallcellError(
        f"{path}: cannot tell the format from the name (known: {_KNOWN_NAMES}); "
        f"give it with --from/--to ({', '.join(FORMATS)})"
    )


def _parse_species(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",")]
    if not all(names):
        raise SmallcellError(f"--species {text!r}: expected element symbols separated by "
                             "commas, e.g. --species Pb,Ag")
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise SmallcellError(f"--species {text!r}: {dup[0]} appears twice")
    return names


def _remap(cfgs: list[Cfg], source: Sequence[str], target: Sequence[str], path: str) -> None:
    """Renumber types from ``source`` species to ``target`` species, by element."""
    import numpy as np

    index = {s: i for i, s in enumerate(target)}
    used = sorted({int(t) for c in cfgs for t in c.types.tolist()})
    missing = sorted({source[t] for t in used if source[t] not in index})
    if missing:
        raise SmallcellError(f"{path}: element(s) {', '.join(missing)} not in --species "
                             f"{','.join(target)}")
    table = np.array([index.get(s, -1) for s in source], dtype=np.int64)
    for c in cfgs:
        c.types = table[c.types]


def _read_outcar(path: str, energy: str, keep: bool) -> tuple[list[Cfg], list[str]]:
    from smallcell.formats.outcar import read_outcar, step_to_cfg, usable_steps

    info, steps = read_outcar(path)  # one pass gives the steps and the species
    usable = usable_steps(info, steps, keep_converged_steps=keep)
    return [step_to_cfg(s, info, energy=energy) for s in usable], list(info.species)


def _read_vasprun(path: str, energy: str, keep: bool) -> tuple[list[Cfg], list[str]]:
    from smallcell.formats.vasprun import read_vasprun, usable_steps, vasprun_step_to_cfg

    info, steps = read_vasprun(path)
    usable = usable_steps(info, steps, keep_converged_steps=keep)
    return ([vasprun_step_to_cfg(s, info, energy=energy) for s in usable],  # type: ignore[arg-type]
            list(info.species))


def read_any(path: str, fmt: str, *, species: list[str] | None = None, energy: str = "free",
             keep_converged_steps: bool = False) -> tuple[list[Cfg], list[str] | None]:
    """Configurations of ``path`` and the species their types index (None: a bare cfg).

    ``species`` (from ``--species``) becomes the type order of the result.
    """
    if fmt == "cfg":
        from smallcell.formats.cfg import read_cfgs

        cfgs = read_cfgs(path)
        if species is not None:
            top = max((int(c.types.max()) for c in cfgs if c.natoms), default=-1)
            if top >= len(species):
                raise SmallcellError(f"{path}: has type {top} but --species names only "
                                     f"{len(species)} element(s): {','.join(species)}")
        return cfgs, species
    if fmt == "poscar":
        from smallcell.formats.poscar import read_poscar, read_poscar_species

        own = read_poscar_species(path)
        if own is None and species is None:
            raise SmallcellError(f"{path}: no species line (VASP 4 or mlp convert POSCAR): "
                                 "give the element of each atom count with --species A,B")
        order = species if species is not None else own
        return [read_poscar(path, order)], order
    if fmt == "extxyz":
        from smallcell.formats.extxyz import read_extxyz

        cfgs, order = read_extxyz(path, species)
        return cfgs, order
    if fmt in ("outcar", "vasprun"):
        reader = _read_outcar if fmt == "outcar" else _read_vasprun
        cfgs, potcar = reader(path, energy, keep_converged_steps)
        if species is None:
            return cfgs, potcar
        _remap(cfgs, potcar, species, path)
        return cfgs, species
    raise SmallcellError(f"unknown input format {fmt!r}; one of {', '.join(FORMATS)}")


def write_any(path: str, fmt: str, cfgs: list[Cfg], species: list[str] | None) -> None:
    """Write ``cfgs`` atomically (temporary name + rename) in format ``fmt``."""
    from smallcell.state import atomic_output

    if fmt in _INPUT_ONLY:
        raise SmallcellError(f"{path}: {fmt} is an input format only; write cfg, poscar "
                             "or extxyz")
    if fmt not in FORMATS:
        raise SmallcellError(f"unknown output format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt != "cfg" and species is None:
        raise SmallcellError(f"{path}: a cfg holds type numbers, not elements; give the "
                             "element of type 0, 1, ... with --species A,B")
    if fmt == "poscar" and len(cfgs) != 1:
        raise SmallcellError(f"{path}: the input holds {len(cfgs)} configurations and a "
                             "POSCAR holds one; pass --last for the last one, or convert "
                             "to a .cfg or .xyz")
    with atomic_output(path) as tmp:
        try:
            if fmt == "cfg":
                from smallcell.formats.cfg import write_cfgs

                write_cfgs(tmp, cfgs)
            elif fmt == "poscar":
                from smallcell.formats.poscar import write_poscar

                write_poscar(tmp, cfgs[0], species)  # type: ignore[arg-type]
            else:
                from smallcell.formats.extxyz import write_extxyz

                write_extxyz(tmp, cfgs, species)  # type: ignore[arg-type]
        except ValueError as exc:  # a cfg the format cannot hold (no cell, unknown type)
            raise SmallcellError(f"{path}: cannot write {fmt}: {exc}") from None


def convert(src: str, dst: str, *, src_format: str | None = None, dst_format: str | None = None,
            species: list[str] | None = None, energy: str | None = None,
            keep_converged_steps: bool = False, last: bool = False) -> tuple[int, str, str]:
    """Convert ``src`` to ``dst``; returns (configurations written, input format, output format)."""
    fin = src_format or detect_format(src)
    fout = dst_format or detect_format(dst)
    vasp = fin in _INPUT_ONLY
    if energy is not None and not vasp:
        raise SmallcellError(f"--energy applies to OUTCAR/vasprun input only ({src} is {fin})")
    if keep_converged_steps and not vasp:
        raise SmallcellError(f"--keep-converged-steps applies to OUTCAR/vasprun input only "
                             f"({src} is {fin})")
    if not os.path.exists(src):
        raise SmallcellError(f"{src}: no such file")
    cfgs, order = read_any(src, fin, species=species, energy=energy or "free",
                           keep_converged_steps=keep_converged_steps)
    if not cfgs:
        raise SmallcellError(f"{src}: no configuration to convert")
    if last:
        cfgs = cfgs[-1:]
    write_any(dst, fout, cfgs, order)
    return len(cfgs), fin, fout


def run(args: argparse.Namespace) -> int:
    """The ``convert`` subcommand (errors propagate as SmallcellError / FormatError)."""
    n, fin, fout = convert(
        args.input, args.output, src_format=args.src_format, dst_format=args.dst_format,
        species=_parse_species(args.species), energy=args.energy,
        keep_converged_steps=args.keep_converged_steps, last=args.last,
    )
    print(f"{args.output}: {n} configuration{'s' if n != 1 else ''} ({fout}) from "
          f"{args.input} ({fin})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` on the ``smallcell`` command's subparsers."""
    p = subparsers.add_parser(
        "convert", help="convert configurations: OUTCAR/vasprun.xml/cfg/POSCAR/extxyz",
        description="Convert configurations between VASP (OUTCAR, vasprun.xml), MLIP-3 "
        "(.cfg), POSCAR and extended XYZ. Formats come from the file names "
        f"({_KNOWN_NAMES}) unless --from/--to are given. An unfinished or unconverged "
        "VASP run is an error unless --keep-converged-steps.",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--from", dest="src_format", choices=FORMATS, default=None,
                   help="input format (default: from the name of IN)")
    p.add_argument("--to", dest="dst_format", choices=FORMATS[2:], default=None,
                   help="output format (default: from the name of OUT)")
    p.add_argument("--species", default=None, metavar="A,B",
                   help="element of type 0, 1, ... for cfg input/output (default for "
                        "OUTCAR/vasprun input: POTCAR order, as mlp convert)")
    p.add_argument("--energy", choices=("free", "sigma0"), default=None,
                   help="VASP energy: free energy TOTEN (default, as mlp convert) or "
                        "energy(sigma->0)")
    p.add_argument("--keep-converged-steps", action="store_true",
                   help="keep the converged, complete ionic steps of an unfinished or "
                        "unconverged OUTCAR/vasprun.xml instead of failing")
    p.add_argument("--last", action="store_true", help="only the last configuration")
    p.set_defaults(fn=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``smallcell convert`` on its own: the same messages and exit codes as the CLI."""
    parser = argparse.ArgumentParser(prog="smallcell")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.fn(args)
    except (SmallcellError, FormatError) as exc:
        print(f"smallcell: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
