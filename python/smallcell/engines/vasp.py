"""The VASP labeler: one single point per task folder `iter/<i>/vasp/<k>/`.

write_inputs -> run -> parse, the file-based calculator pattern of ASE, with what a cluster
run needs on top:

- every input is rendered from `templates/vasp/` (INCAR, KPOINTS) or written by ASE
  (POSCAR), and IBRION = -1 / NSW = 0 are forced: a label is one configuration, and a
  relaxation sneaking in through the config would label a different structure;
- VASP wants the atoms grouped by species in POTCAR order, while the configuration keeps its
  own atom order (MLIP-3 cfgs, the selection): the permutation is remembered and forces are
  mapped back, so a label never pairs a force with the wrong atom;
- the command runs without a shell (`setup` lines run in `bash -c '...; exec "$@"'`, with the
  argv passed as positional arguments), so a path with spaces or a `;` is never re-parsed;
- a folder that holds outputs of an earlier attempt (killed job, retry) has them moved to
  `attempts/<n>/` first: nothing computed is lost or silently overwritten;
- the OUTCAR is read by smallcell's own parser (`smallcell.formats.outcar`), its status
  decides (unconverged SCF and unfinished runs are failures, with VASP's reason), and its
  positions must equal the POSCAR's (guard against a stale OUTCAR or a wrong folder).

POTCARs are the user's licensed files: they are read from `potcar_dir/<name>/POTCAR`,
concatenated into the task folder for the run and removed afterwards (unless
`keep_potcar`), so thousands of task folders do not hold thousands of POTCAR copies.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from smallcell.engines.base import LabelError
from smallcell.engines.kpoints import kpoint_mesh
from smallcell.engines.process import (
    KILL_GRACE,
    ProgramNotFound,
    archive_outputs,
    check_positive,
    command_words,
    exit_text,
    run_logged,
    tail_line,
    with_setup,
)
from smallcell.state import atomic_output, atomic_write_json, atomic_write_text

TEMPLATE_DIR = Path(__file__).resolve().parents[3] / "templates" / "vasp"

#: The INCAR tags the config names explicitly, in the order they are written; None = omitted.
#: Defaults suit metals such as Pb: Methfessel-Paxton smearing, accurate forces (LREAL
#: .FALSE.), no symmetrization of displaced snapshots (ISYM 0), no WAVECAR/CHGCAR per task
#: (they would multiply the disk use of thousands of tasks).
DEFAULT_INCAR: dict[str, Any] = {
    "ENCUT": None,
    "PREC": "Accurate",
    "EDIFF": 1e-6,
    "NELM": 100,
    "ISMEAR": 1,
    "SIGMA": 0.1,
    "ISYM": 0,
    "LREAL": False,
    "NCORE": None,
    "KPAR": None,
    "LWAVE": False,
    "LCHARG": False,
}

#: Tags smallcell sets itself or that would contradict the KPOINTS file it writes.
_FORCED = {"IBRION": -1, "NSW": 0}
_REFUSED = {
    "KSPACING": "set vasp.kspacing instead (smallcell writes a KPOINTS file, which VASP "
    "prefers over KSPACING)",
    "KGAMMA": "set vasp.gamma_centered instead",
}
_TAG = re.compile(r"[A-Z][A-Z0-9_]*\Z")

#: What a VASP run writes into its folder; an earlier attempt's copies go to attempts/<n>/.
VASP_OUTPUTS = (
    "OUTCAR", "OSZICAR", "CONTCAR", "vasprun.xml", "XDATCAR", "EIGENVAL", "DOSCAR",
    "IBZKPT", "PCDAT", "REPORT", "PROCAR", "CHG", "CHGCAR", "WAVECAR", "LOCPOT", "ELFCAR",
    "AECCAR0", "AECCAR1", "AECCAR2", "PARCHG", "vaspout.h5", "vaspwave.h5", "ML_LOGFILE",
    "STOPCAR", "vasp.out", "vasp.err", "label.json",
)
#: Inputs copied (not moved) beside an archived attempt, so it stays self-describing.
#: POTCAR is not among them: it is licensed, large and recorded by its TITEL in the OUTCAR.
_ARCHIVED_INPUTS = ("INCAR", "KPOINTS", "POSCAR")
ATTEMPTS = "attempts"

#: Largest distance (Å) between a POSCAR position and the OUTCAR's (printed with 5 decimals).
POSITION_TOLERANCE = 1e-3
_TAIL_LINES = 2
_TAIL_CHARS = 240


@dataclass
class VaspSettings:
    """How to run VASP on this machine and which DFT settings every label uses.

    Everything site-specific (launcher, modules, POTCAR library) is here, never in code.
    Exactly one of `kspacing` (Å⁻¹, VASP's KSPACING convention including 2π) and `kppra`
    (k-points per reciprocal atom) chooses the mesh, so every cell size of the small-cell
    protocol gets a mesh of the same density rather than one fixed mesh.
    """

    command: list[str] = field(default_factory=lambda: ["vasp_std"])
    setup: list[str] = field(default_factory=list)
    potcar_dir: Path = Path("potcars")
    potcars: dict[str, str] = field(default_factory=dict)
    incar: dict[str, Any] = field(default_factory=dict)
    kspacing: float | None = 0.2
    kppra: float | None = None
    gamma_centered: bool = True
    energy: Literal["free", "sigma0"] = "free"
    timeout: float | None = None
    keep_potcar: bool = False

    def __post_init__(self) -> None:
        self.command, self.setup = command_words(self.command, self.setup, "vasp")
        self.potcar_dir = Path(self.potcar_dir).expanduser()
        self.potcars = {str(k): str(v) for k, v in dict(self.potcars).items()}
        for sym, name in self.potcars.items():
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"vasp.potcars[{sym!r}] must be a folder name, got {name!r}")
        self.incar = dict(self.incar)
        if (self.kspacing is None) == (self.kppra is None):
            raise ValueError("set exactly one of vasp.kspacing and vasp.kppra")
        for key in ("kspacing", "kppra"):
            if getattr(self, key) is not None:
                check_positive(getattr(self, key), f"vasp.{key}")
        if self.energy not in ("free", "sigma0"):
            raise ValueError(f"vasp.energy must be 'free' or 'sigma0', got {self.energy!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"vasp.timeout must be positive seconds or None, got {self.timeout}")
        incar_tags(self.incar)  # refuse a bad INCAR when the settings are made, not per task

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> VaspSettings:
        """Settings from a plain mapping (the `vasp:` section of a config); unknown keys are
        errors, because a misspelt key silently ignored would change every label."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown vasp settings: {', '.join(unknown)}")
        return cls(**dict(data))

    def potcar_name(self, symbol: str) -> str:
        """The library folder of `symbol` (e.g. Pb -> Pb_d); the symbol itself by default."""
        return self.potcars.get(symbol, symbol)


@dataclass
class VaspInputs:
    """What write_inputs produced: the order VASP sees and how to map its results back."""

    poscar_species: list[str]  # species in POSCAR/POTCAR order (only those present)
    counts: list[int]
    order: np.ndarray  # POSCAR atom j is input atom order[j]
    poscar_atoms: Atoms  # the atoms as written to POSCAR (grouped)
    mesh: tuple[int, int, int]
    potcars: list[Path]


# --------------------------------------------------------------------------- INCAR


def format_incar_value(value: Any, key: str = "value") -> str:
    """One INCAR value as VASP reads it: .TRUE./.FALSE., integers, floats as 1E-06 / 0.1,
    text verbatim, lists space-separated (MAGMOM = 4 4 0)."""
    if isinstance(value, bool | np.bool_):
        return ".TRUE." if value else ".FALSE."
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"INCAR {key}: not a finite number: {value!r}")
        return format(x, ".10G")
    if isinstance(value, str):
        text = value.strip()
        bad = [c for c in ("\n", "\r", "#", "!", "=", ";") if c in text]
        if not text or bad:
            raise ValueError(f"INCAR {key}: text value {value!r} is empty or contains {bad}")
        return text
    if isinstance(value, Sequence | np.ndarray) and len(value) > 0:
        return " ".join(format_incar_value(v, key) for v in value)
    raise ValueError(f"INCAR {key}: unsupported value {value!r}")


def incar_tags(incar: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (TAG, text) pairs of the INCAR: DEFAULT_INCAR overridden by `incar`, None omitted.

    The known tags come first in DEFAULT_INCAR's order, extra tags after in the given order.
    IBRION/NSW are forced (a conflicting value is an error, not silently replaced), and tags
    that would make the run something else than a labelled single point are refused.
    """
    merged: dict[str, Any] = dict(DEFAULT_INCAR)
    for raw_key, value in incar.items():
        key = str(raw_key).strip().upper()
        if not _TAG.match(key):
            raise ValueError(f"INCAR tag {raw_key!r} is not a VASP tag name")
        merged[key] = value
    tags = []
    for key, value in merged.items():
        if value is None:
            continue
        if key in _FORCED:
            if not isinstance(value, numbers.Integral) or int(value) != _FORCED[key]:
                raise ValueError(
                    f"INCAR {key} = {value!r}: smallcell labels are single points and force "
                    f"{key} = {_FORCED[key]}; remove it from vasp.incar"
                )
            continue
        if key in _REFUSED:
            raise ValueError(f"INCAR {key}: {_REFUSED[key]}")
        if key == "ISIF" and isinstance(value, numbers.Integral) and int(value) < 2:
            raise ValueError("INCAR ISIF < 2 computes no full stress tensor, which labels need")
        tags.append((key, format_incar_value(value, key)))
    return tags


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # VASP input, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_incar(incar: Mapping[str, Any], system: str = "smallcell label") -> str:
    """The INCAR text of a single point (templates/vasp/INCAR.j2)."""
    tags = incar_tags(incar)
    if any(k == "SYSTEM" for k, _ in tags):
        system = next(v for k, v in tags if k == "SYSTEM")
        tags = [(k, v) for k, v in tags if k != "SYSTEM"]
    return _environment().get_template("INCAR.j2").render(system=system, tags=tags)


# --------------------------------------------------------------------------- KPOINTS


def render_kpoints(mesh: Sequence[int], gamma_centered: bool, comment: str) -> str:
    """The KPOINTS text of an automatic mesh (templates/vasp/KPOINTS.j2)."""
    comment = " ".join(comment.split()) or "smallcell"
    return _environment().get_template("KPOINTS.j2").render(
        comment=comment, mesh=[int(n) for n in mesh], gamma_centered=gamma_centered)


# --------------------------------------------------------------------------- POSCAR, POTCAR


def group_by_species(atoms: Atoms, species: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The permutation that groups atoms by species in `species` order (stable inside a
    species), and the species present in that order: POSCAR and POTCAR must agree on it."""
    symbols = atoms.get_chemical_symbols()
    index = {s: i for i, s in enumerate(species)}
    unknown = sorted({s for s in symbols if s not in index})
    if unknown:
        raise ValueError(f"atoms have species {unknown} not in the potential's {list(species)}")
    keys = np.array([index[s] for s in symbols], dtype=int)
    order = np.argsort(keys, kind="stable")
    present = [s for s in species if s in set(symbols)]
    return order, present


def potcar_paths(settings: VaspSettings, species: Sequence[str]) -> list[Path]:
    """The library POTCAR of each species; ValueError naming the first missing file."""
    paths = []
    for sym in species:
        path = settings.potcar_dir / settings.potcar_name(sym) / "POTCAR"
        if not path.is_file():
            raise ValueError(
                f"POTCAR for {sym} not found: {path} (vasp.potcar_dir / vasp.potcars[{sym!r}])")
        paths.append(path)
    return paths


_TITEL = re.compile(r"^\s*TITEL\s*=\s*(.*?)\s*$", re.M)


def check_potcar(path: Path, symbol: str) -> None:
    """ValueError unless `path` reads as the VASP POTCAR of `symbol`: one data set whose
    PSCTR header has the ``TITEL =`` and ``VRHFIN =`` lines VASP prints back in every
    OUTCAR, and whose title names that element (``TITEL = PAW_PBE Pb_d 06Sep2000`` for
    Pb). An empty file, a placeholder or the POTCAR of another element would otherwise
    fail every task, or label with the wrong pseudopotential."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(4 << 20).decode("latin-1")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    titles = _TITEL.findall(text)
    if not titles or "VRHFIN" not in text:
        first = next((x.strip() for x in text.splitlines() if x.strip()), "")
        got = f"this one with {first[:40]!r}" if first else "this one is empty"
        raise ValueError(f"{path}: not a VASP POTCAR (no 'TITEL =' and 'VRHFIN =' lines; "
                         f"a POTCAR of the PAW library starts like 'PAW_PBE Pb_d 06Sep2000', "
                         f"{got})")
    if len(titles) > 1:
        raise ValueError(f"{path}: holds {len(titles)} POTCARs ({', '.join(titles)}); "
                         f"<potcar_dir>/<name>/POTCAR must be the one of {symbol}")
    element = _element(titles[0])
    if element != symbol:
        raise ValueError(f"{path}: the POTCAR of {element} (TITEL = {titles[0]}), not of "
                         f"{symbol}")


def check_settings(settings: VaspSettings, species: Sequence[str]) -> None:
    """Fail at config time, not in every task: the POTCAR of every species must exist."""
    potcar_paths(settings, species)


def _concatenate(paths: Sequence[Path], dest: Path) -> None:
    with atomic_output(dest) as tmp, open(tmp, "wb") as out:
        for path in paths:
            data = path.read_bytes()
            out.write(data)
            if not data.endswith(b"\n"):
                out.write(b"\n")


def write_inputs(
    task_dir: Path, atoms: Atoms, species: Sequence[str], settings: VaspSettings
) -> VaspInputs:
    """Write INCAR, KPOINTS, POSCAR (grouped by species) and POTCAR into `task_dir`.

    Raises ValueError with the reason (unknown species, missing POTCAR, bad INCAR); nothing
    is written when the POTCARs are missing, so a folder never holds a half set of inputs.
    """
    task_dir = Path(task_dir)
    from ase.io import write as ase_write

    if not all(atoms.pbc):
        raise ValueError("VASP labels need a periodic cell (pbc on all three axes)")
    order, present = group_by_species(atoms, species)
    potcars = potcar_paths(settings, present)
    grouped = atoms[order]
    grouped.calc = None
    counts = [int(sum(1 for s in grouped.get_chemical_symbols() if s == sp)) for sp in present]
    mesh = kpoint_mesh(grouped.cell, len(grouped),
                       kspacing=settings.kspacing, kppra=settings.kppra)
    how = (f"kspacing {settings.kspacing:g} 1/A (incl. 2pi)" if settings.kspacing is not None
           else f"kppra {settings.kppra:g}")
    kind = "Gamma" if settings.gamma_centered else "Monkhorst-Pack"
    task_dir.mkdir(parents=True, exist_ok=True)
    formula = grouped.get_chemical_formula(mode="metal")
    atomic_write_text(task_dir / "INCAR", render_incar(settings.incar, f"smallcell {formula}"))
    atomic_write_text(task_dir / "KPOINTS", render_kpoints(
        mesh, settings.gamma_centered,
        f"written by smallcell: {how} -> {mesh[0]}x{mesh[1]}x{mesh[2]} {kind}"))
    with atomic_output(task_dir / "POSCAR") as tmp:
        ase_write(tmp, grouped, format="vasp", direct=True, sort=False)
    _concatenate(potcars, task_dir / "POTCAR")
    return VaspInputs(poscar_species=present, counts=counts, order=order,
                      poscar_atoms=grouped, mesh=mesh, potcars=potcars)


# --------------------------------------------------------------------------- running


def archive_previous(task_dir: Path) -> Path | None:
    """Move the outputs of an earlier attempt into `attempts/<n>/` (n = 1, 2, ...), with a
    copy of its inputs; return that folder, or None when the folder had no outputs."""
    return archive_outputs(task_dir, VASP_OUTPUTS, _ARCHIVED_INPUTS, ATTEMPTS)


def command_argv(settings: VaspSettings) -> list[str]:
    """The argv actually executed: the command itself, or, with setup lines, bash running
    them and then exec'ing the command passed as "$@" (never re-parsed by the shell)."""
    return with_setup(settings.command, settings.setup, "smallcell-vasp")


def run_command(
    argv: Sequence[str], cwd: Path, timeout: float | None, grace: float = KILL_GRACE
) -> int | None:
    """Run argv in `cwd` with stdout -> vasp.out and stderr -> vasp.err; return the exit
    status (negative: killed by that signal), or None when it timed out and was killed.

    The run gets its own process group so that a timeout or an interrupt of smallcell stops
    the launcher and its ranks together instead of leaving orphans on the node
    (engines/process.py).
    """
    cwd = Path(cwd)
    try:
        return run_logged(argv, cwd, cwd / "vasp.out", cwd / "vasp.err", timeout, grace)
    except ProgramNotFound as exc:
        what = "not executable" if exc.not_executable else "not found"
        raise LabelError(f"vasp command {what}: {exc.program!r} ({exc.reason}); "
                         "check vasp.command and vasp.setup") from exc


def _logs_tail(task_dir: Path) -> str:
    parts = []
    for name in ("vasp.err", "vasp.out"):
        tail = tail_line(task_dir / name, lines=_TAIL_LINES, limit=_TAIL_CHARS)
        if tail:
            parts.append(f"{name}: {tail}")
    return "; ".join(parts) if parts else "no output in vasp.err or vasp.out"


# --------------------------------------------------------------------------- parsing


def _element(name: str) -> str:
    """'Pb_d' / 'PAW_PBE Pb_d 06Sep2000' / 'Pb' -> 'Pb' (what OUTCAR species may look like)."""
    words = name.split()
    if len(words) >= 2 and words[0].upper().startswith(("PAW", "US", "NC")):
        name = words[1]
    elif words:
        name = words[0]
    return re.split(r"[_.:]", name)[0]


def check_positions(step: Any, info: Any, inputs: VaspInputs) -> None:
    """The OUTCAR must describe the structure we wrote: same atoms, species, cell and
    positions. A stale OUTCAR or a folder mix-up would otherwise label the wrong structure."""
    ref = inputs.poscar_atoms
    if step.positions is None:
        raise LabelError("OUTCAR prints no positions for the ionic step (NWRITE=0?)")
    positions = np.asarray(step.positions, dtype=float)
    if positions.shape != (len(ref), 3):
        raise LabelError(
            f"OUTCAR has {len(positions)} atoms, POSCAR {len(ref)}: stale or foreign OUTCAR")
    species = list(getattr(info, "species", None) or [])
    types = getattr(step, "types", None)
    if species and types is not None and len(types) == len(ref):
        outcar_symbols = [_element(species[int(t)]) for t in types]
        if outcar_symbols != ref.get_chemical_symbols():
            raise LabelError(
                f"OUTCAR species {sorted(set(outcar_symbols))} do not match the POSCAR's "
                f"{inputs.poscar_species}: stale or foreign OUTCAR")
    cell = np.asarray(ref.cell[:], dtype=float)
    if step.cell is not None and not np.allclose(np.asarray(step.cell, float), cell, atol=1e-3):
        raise LabelError("OUTCAR cell differs from the POSCAR's: stale or foreign OUTCAR")
    frac = (positions - ref.positions) @ np.linalg.inv(cell)
    frac -= np.round(frac)
    worst = float(np.linalg.norm(frac @ cell, axis=1).max()) if len(ref) else 0.0
    if worst > POSITION_TOLERANCE:
        raise LabelError(
            f"OUTCAR positions differ from the POSCAR's by up to {worst:.3g} Å: "
            "stale or foreign OUTCAR")


def stress_kb_to_ase(stress_kb: Sequence[float]) -> np.ndarray:
    """OUTCAR 'in kB' (XX YY ZZ XY YZ ZX, pressure sign) -> ASE stress (eV/Å³, Voigt xx yy zz
    yz xz xy, tension positive): the sign flips and kB = 0.1 GPa."""
    xx, yy, zz, xy, yz, zx = (float(v) for v in stress_kb)
    return -np.array([xx, yy, zz, yz, zx, xy]) * 1e-1 * units.GPa


def read_label(outcar: Path, inputs: VaspInputs, atoms: Atoms, energy: str = "free") -> Atoms:
    """`atoms` (input order) with the energy, forces and stress of the OUTCAR attached.

    The energy is VASP's free energy TOTEN ('free', what MLIP-3's converter takes) or the
    sigma -> 0 extrapolation ('sigma0'); with 'sigma0' no free_energy is attached, so the
    cfg writer takes the chosen energy.
    """
    from smallcell.formats.outcar import read_outcar

    try:
        info, steps = read_outcar(outcar)
    except Exception as exc:  # a garbled OUTCAR is a failed label, not a crashed run
        raise LabelError(f"OUTCAR unreadable: {exc}") from exc
    status = getattr(info, "status", "complete")
    if status != "complete":
        reason = getattr(info, "reason", "") or "no reason given"
        raise LabelError(f"OUTCAR {status}: {reason}")
    if not steps:
        raise LabelError("OUTCAR holds no ionic step")
    step = steps[-1]
    if getattr(step, "converged", True) is False:
        raise LabelError("OUTCAR: the SCF of the ionic step did not converge (reached NELM)")
    check_positions(step, info, inputs)
    e_free = step.energy_free
    e_sigma0 = step.energy_sigma0
    chosen = e_free if energy == "free" else e_sigma0
    if chosen is None:
        raise LabelError(f"OUTCAR has no {'TOTEN' if energy == 'free' else 'energy(sigma->0)'}")
    if step.forces is None:
        raise LabelError("OUTCAR has no forces (TOTAL-FORCE block)")
    if step.stress_kb is None:
        raise LabelError("OUTCAR has no stress ('in kB' line); is ISIF >= 2?")
    forces = np.empty((len(atoms), 3))
    forces[inputs.order] = np.asarray(step.forces, dtype=float)
    results: dict[str, Any] = {
        "energy": float(chosen),
        "forces": forces,
        "stress": stress_kb_to_ase(step.stress_kb),
    }
    if energy == "free":
        results["free_energy"] = float(e_free)
    out = atoms.copy()
    out.info["vasp_energy_free"] = None if e_free is None else float(e_free)
    out.info["vasp_energy_sigma0"] = None if e_sigma0 is None else float(e_sigma0)
    out.calc = SinglePointCalculator(out, **results)
    return out


# --------------------------------------------------------------------------- the labeler


class VaspLabeler:
    """The production labeler: VASP single points, one per task folder."""

    name = "vasp"

    def __init__(self, settings: VaspSettings, species: Sequence[str]) -> None:
        self.settings = settings
        self.species = list(species)

    def label(self, task_dir: Path, atoms: Atoms) -> Atoms:
        task_dir = Path(task_dir)
        s = self.settings
        t0 = time.perf_counter()
        archived = archive_previous(task_dir)
        try:
            inputs = write_inputs(task_dir, atoms, self.species, s)
        except ValueError as exc:
            raise LabelError(str(exc)) from exc
        argv = command_argv(s)
        program = Path(s.command[0]).name
        try:
            rc = run_command(argv, task_dir, s.timeout)
        finally:
            if not s.keep_potcar:
                with contextlib.suppress(FileNotFoundError):
                    (task_dir / "POTCAR").unlink()
        outcar = task_dir / "OUTCAR"
        if rc is None:
            raise LabelError(f"{program} timed out after {s.timeout:g} s (vasp.timeout) and "
                             f"was killed; {_logs_tail(task_dir)}")
        if rc != 0:
            raise LabelError(f"{program} {exit_text(rc)}; {_logs_tail(task_dir)}")
        if not outcar.is_file():
            raise LabelError(f"{program} wrote no OUTCAR; {_logs_tail(task_dir)}")
        labeled = read_label(outcar, inputs, atoms, s.energy)
        atomic_write_json(task_dir / "label.json", {
            "labeler": self.name,
            "energy": labeled.get_potential_energy(),
            "energy_kind": s.energy,
            "energy_free": labeled.info["vasp_energy_free"],
            "energy_sigma0": labeled.info["vasp_energy_sigma0"],
            "kpoints": list(inputs.mesh),
            "potcars": [str(p) for p in inputs.potcars],
            "command": argv,
            "previous_attempt": None if archived is None else str(archived.relative_to(task_dir)),
            "seconds": time.perf_counter() - t0,
        })
        return labeled
