"""VASP OUTCAR: streaming reader of ionic steps, run classifier, OUTCAR -> MLIP-3 cfg.

Why a parser of our own: the label stage reads one OUTCAR per task (10^3-10^5 of them per
run) and must tell a usable single point from a killed, crashed or unconverged one, while
``ase.io.read(format="vasp-out")`` is slow (every line goes through every property parser)
and fails outright on layouts this project meets: vdW runs ("w/o vdW" fields, 9-column force
rows), NWRITE=0 runs (no force block in most ionic steps), VASP 6 ML force-field runs
("(ML)" blocks), VASP 5.2.2 (energy block printed before the forces). The conventions follow
MLIP-3's own converter (``Configuration::LoadDynamicsFromOUTCAR``), because ``mlp convert
--input_format=outcar`` is the reference for what a training configuration from an OUTCAR is:

* ``Energy`` = "free  energy   TOTEN" of the "FREE ENERGIE OF THE ION-ELECTRON SYSTEM" block;
* ``PlusStress`` = the ``Total`` line under "FORCE on cell =-STRESS" (eV, VASP order
  XX YY ZZ XY YZ ZX reordered to xx yy zz yz xz xy), copied as mlp does; only when that line
  is missing it is computed as "in kB" * V / 1602.1766 (the two agree to print precision);
* atom types = index of the species in POTCAR order, a species with 0 atoms included;
* an ionic step whose electronic loop ran NELM iterations is not converged: VASP 5 prints
  "aborting loop because EDIFF is reached" even then, so the count is the only evidence
  (VASP 6's "aborting loop EDIFF was not reached (unconverged)" is honoured too).

How it reads, and why not line by line: a Python loop that only iterates the lines of an
OUTCAR already costs about a third of what ASE needs for the whole parse, and every
substring test per line adds as much again. So the file is streamed in blocks of a few MiB
(constant memory in the file size) and ``bytes.find`` (C speed, ~2 GB/s) locates the
blocks of each ionic step: one pass for "FORCE" (the stress block "FORCE on cell" and the
"TOTAL-FORCE" block) and one for "FREE ENERGIE". The lattice is looked up right after each
stress block, and the text between two blocks - the electronic loop - is read backwards
from its end: its last "Iteration N(k)" line gives the ionic step and the number of
electronic steps, the "aborting loop" line VASP 6's verdict. Only the lines at those places
are read; numeric blocks go to numpy in one call; no regex runs per line. A step is emitted
when the next one starts (or at the end of the file), so the order of the blocks inside a
step does not matter (5.2.2 prints the energy first). The timing footer, "reached required
accuracy" and the error that stopped VASP are looked up in the last 64 KiB. Line numbers
(for messages only) are counted when one is needed. Measured (BENCHMARKS.md, ``outcar``):
about 11x ASE's throughput over the fixture OUTCARs together and on a 50 MB relaxation,
from 5x on a 40 KB file (a fixed ~0.2 ms per file) to 20x on a 0.5 MB one.

Classification (:func:`read_outcar`): ``complete`` (timing footer present, every DFT step
converged), ``unconverged`` (some step reached NELM) or ``unfinished`` (no timing footer:
killed, cut, crashed with a VASP error, or stopped before NIONS was printed).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from smallcell.formats.cfg import Cfg
from smallcell.formats.errors import FormatError

__all__ = [
    "KBAR_A3_PER_EV",
    "IonicStep",
    "OutcarInfo",
    "iter_outcar",
    "outcar_to_cfgs",
    "read_outcar",
    "step_to_cfg",
    "usable_steps",
]

# 1 eV/Å^3 = 160.21766 GPa = 1602.1766 kB: PlusStress (eV) = in_kB * V / KBAR_A3_PER_EV.
KBAR_A3_PER_EV = 1602.1766208
# VASP prints XX YY ZZ XY YZ ZX; MLIP-3 (and ASE's Voigt) order is xx yy zz yz xz xy.
_VASP_TO_VOIGT = [0, 1, 2, 4, 5, 3]

_ELEMENT_TEXT = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm "
    "Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U "
    "Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
)
_ELEMENTS = frozenset(_ELEMENT_TEXT.split(" "))
# Fortran fixed-width fields can touch ("-10443.44439-10443.44439"); split them (as ASE does).
_MERGED = re.compile(r"(\d)-(?=[\d.])")
_VERSION = re.compile(r"vasp\.(\d+\.\d+\.\d+)")
_ERROR_STARTS = ("Error", "ERROR", "VERY BAD NEWS", "internal error", "Internal error")
_STRESS_BYTES = 4000  # from "FORCE on cell" to its "in kB" line (~1.3 KB in every layout)
_ENERGY_BYTES = 1000  # from "FREE ENERGIE" to "energy(sigma->0)" (~300 bytes)
_CHUNK = 4 << 20  # bytes read at a time
_TAIL = 64 << 10  # bytes kept for the end-of-file scan (footer, required accuracy)
_ERROR_TAIL = 16 << 10  # the last bytes searched for the error that stopped VASP

# The blocks of an ionic step that the body scan locates (event kinds, their names).
_STRESS, _FORCES, _ENERGY = range(3)
_BLOCK_NAMES = ("stress block", "TOTAL-FORCE block", "energy block")
# Header lines worth reading (anything else in the header is skipped unread).
_PARAMETER_KEYS = (b"NELM", b"NWRITE", b"IBRION", b"NSW")
_HEADER_KEYS = (b"POTCAR:", b"TITEL", b"VRHFIN", b"ions per type", b"NIONS",
                *_PARAMETER_KEYS, b"direct lattice vectors")


@dataclass(eq=False)
class IonicStep:
    """One ionic step as VASP printed it (``eq=False``: compare fields explicitly).

    ``positions`` and ``forces`` share one printed block, so both are None in the ionic
    steps where NWRITE=0 printed none (VASP then prints it only for the first and the last
    step); ``cell`` is then the last lattice VASP printed (it prints none in those steps).
    """

    index: int  # 0-based ionic step ("Iteration N(k)" -> N-1; ML steps: count of ML blocks)
    cell: np.ndarray  # (3,3) Å, rows = lattice vectors
    positions: np.ndarray | None  # (N,3) Å cartesian
    types: np.ndarray  # (N,) index into OutcarInfo.species (POTCAR order)
    forces: np.ndarray | None  # (N,3) eV/Å, TOTAL-FORCE (the total, vdW included)
    energy_free: float | None  # "free  energy   TOTEN" (eV): MLIP-3's Energy
    energy_sigma0: float | None  # "energy(sigma->0)"
    energy_no_entropy: float | None  # "energy  without entropy"
    stress_kb: np.ndarray | None  # (6,) the "in kB" line as printed: XX YY ZZ XY YZ ZX
    plus_stress: np.ndarray | None  # (6,) eV, xx yy zz yz xz xy (MLIP-3 PlusStress)
    n_electronic: int  # electronic iterations of this step
    converged: bool  # n_electronic < NELM (and no VASP 6 "not reached" text)
    ml: bool = False  # a VASP ML force-field step (not DFT): never training data

    @property
    def natoms(self) -> int:
        return int(self.types.shape[0])


@dataclass
class OutcarInfo:
    """What the whole file says: header values and the classification of the run."""

    path: str
    version: str | None  # "5.4.4", "6.3.0", ...
    nelm: int | None
    nions: int | None
    nwrite: int | None
    species: list[str]  # element symbols in POTCAR order (a 0-atom species included)
    ions_per_type: list[int]
    status: str  # "complete" | "unconverged" | "unfinished"
    reason: str  # one line: why not complete ("" when complete)
    notes: list[str]
    n_steps: int  # DFT ionic steps read (ML steps not counted)
    version_line: str = ""
    ibrion: int | None = None
    nsw: int | None = None
    n_ml_steps: int = 0
    has_footer: bool = False  # "General timing and accounting informations" present
    error: str | None = None  # the VASP error text of a crashed run, if any
    reason_line: int | None = None  # line of the OUTCAR the reason points at
    # line of the first DFT step printed without a TOTAL-FORCE block (NWRITE=0, or damage)
    no_forces_line: int | None = None


class _Cut(Exception):
    """The file ends inside a block (killed or cut while VASP wrote it)."""

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(what)
        self.offset = offset
        self.what = what


class _NeedMore(Exception):
    """A block reaches past the bytes read so far: read more, retry from ``restart``."""

    def __init__(self, restart: int) -> None:
        super().__init__(restart)
        self.restart = restart


class _Rec:
    """An ionic step under construction."""

    __slots__ = (
        "cell", "e_free", "e_noent", "e_sigma0", "forces", "index", "iter_offset", "ml", "n_el",
        "not_converged_text", "offset", "positions", "stress_ev", "stress_kb",
    )

    def __init__(self, index: int, ml: bool, offset: int) -> None:
        self.index = index
        self.ml = ml
        self.offset = offset  # file offset of the line that opened the step
        self.n_el = 0
        self.iter_offset = offset  # file offset of the "Iteration N(n_el)" line
        self.cell: np.ndarray | None = None
        self.positions: np.ndarray | None = None
        self.forces: np.ndarray | None = None
        self.e_free: float | None = None
        self.e_sigma0: float | None = None
        self.e_noent: float | None = None
        self.stress_kb: np.ndarray | None = None
        self.stress_ev: np.ndarray | None = None
        self.not_converged_text = False


def _element(tokens: list[str]) -> str | None:
    """The element of a POTCAR title ('PAW_PBE Ti_sv 26Sep2005', 'US H', 'PAW_PBE H1.25')."""
    for tok in tokens:
        word = tok.split("_")[0]
        end = 0
        while end < len(word) and word[end].isalpha():
            end += 1
        if word[:end] in _ELEMENTS:
            return word[:end]
    return None


def _line_number(path: str, offset: int) -> int:
    """1-based line of a byte offset, counted in a second pass over the file: messages need
    it rarely, so the fast path never counts lines."""
    lines, done = 1, 0
    with open(path, "rb") as f:
        while data := f.read(_CHUNK):
            if offset <= done + len(data):
                return lines + data.count(b"\n", 0, offset - done)
            lines += data.count(b"\n")
            done += len(data)
    return lines


class _Parser:
    """One pass over an OUTCAR: ``steps()`` yields, the attributes hold what the file says.

    Handlers never yield themselves: a step they finish goes to ``self.out`` and the main
    loop hands it on, so a block that ends a step (an ML block after a DFT step, the next
    Iteration) needs no generator plumbing. Offsets are file byte offsets.
    """

    def __init__(self, path: str, *, include_ml: bool, strict: bool,
                 chunk: int = _CHUNK) -> None:
        self.path = path
        self.include_ml = include_ml
        self.strict = strict
        self.chunk = chunk  # bytes read at a time (small in tests: block boundaries)
        # header
        self.version: str | None = None
        self.version_line = ""
        self.nelm: int | None = None
        self.nions: int | None = None
        self.nwrite: int | None = None
        self.ibrion: int | None = None
        self.nsw: int | None = None
        self.potcar: list[str] = []
        self.titel: list[str] = []
        self.vrhfin: list[str] = []
        self.ions_per_type: list[int] | None = None
        self.ions_offset = 0
        self.species: list[str] = []
        self.types: np.ndarray | None = None
        self.cell: np.ndarray | None = None  # the last lattice printed anywhere
        # the block being scanned
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.end = 0  # buf[:end] holds complete lines only (unless at EOF)
        self.eof = False
        self.size = 0  # bytes read so far
        self.file_size = 0  # when opened
        self.tail = b""  # the last _TAIL bytes read (end-of-file scan)
        # body
        self.out: list[IonicStep] = []  # finished steps not yet handed out
        self.dft: _Rec | None = None
        self.ml: _Rec | None = None
        self.n_ml_blocks = 0
        self.n_ml_done = 0
        self.last_dft_index = -1
        self.footer = False
        self.error: tuple[int, str] | None = None  # (offset, text)
        self.reached_accuracy = False
        self.cut: _Cut | None = None
        self.eof_rec: _Rec | None = None  # DFT step still incomplete at the end of the file
        self.notes: list[str] = []
        # per DFT step emitted: (index, converged, has forces, n_electronic, offset of its
        # last "Iteration" line)
        self.dft_steps: list[tuple[int, bool, bool, int, int]] = []

    # ------------------------------------------------------------------ helpers

    def err(self, offset: int | None, message: str) -> FormatError:
        return FormatError(self.path, None if offset is None else self.line_of(offset), message)

    def short(self, restart: int, what: str) -> None:
        """A block needs lines past buf[:end]: read more, or the file ends inside it."""
        if self.eof:
            raise _Cut(self.base + len(self.buf), what)
        raise _NeedMore(restart)

    def line_end(self, i: int) -> int:
        """Index of the newline ending the line that contains i (len(buf) at a cut end)."""
        j = self.buf.find(b"\n", i, self.end)
        return j if j >= 0 else self.end

    def floats(self, text: str, offset: int, what: str) -> list[float]:
        """Every number of ``text`` (touching Fortran fields split); FormatError if garbled."""
        try:
            return [float(t) for t in text.split()]
        except ValueError:
            pass
        try:
            return [float(t) for t in _MERGED.sub(r"\1 -", text).split()]
        except ValueError:
            raise self.err(offset, f"cannot read the {what}: {text.strip()[:100]!r}") from None

    @staticmethod
    def int_after(line: str, sep: str) -> int | None:
        """The integer after ``sep`` or None (the INCAR echo is free text: never fatal)."""
        rest = line.split(sep, 1)[1].replace(";", " ").split()
        try:
            return int(rest[0])
        except (IndexError, ValueError):
            return None

    # ------------------------------------------------------------------ header

    def header(self, text: bytes, base: int) -> None:
        """Header values, from the few lines that hold them (a header can hold thousands of
        k-point lines). VASP 5.2-6.4 print NIONS just before "ions per type" and the
        parameter block (NELM, NWRITE, IBRION, NSW) just after it, so those are looked up in
        small windows; the POTCAR: lines come first in the file. Without "ions per type"
        (a run that stopped early) every key is searched everywhere, later lines winning."""
        nl = text.find(b"\n")
        first = text[: nl if nl >= 0 else len(text)].decode("latin-1")
        m = _VERSION.search(first)
        if m is None:  # not on the first line: look a little further
            for line in text[:2000].decode("latin-1").split("\n")[1:]:
                if m := _VERSION.search(line):
                    first = line
                    break
        if m:
            self.version, self.version_line = m.group(1), first.strip()
        ipt = text.find(b"ions per type")
        if ipt < 0:
            for ls in self.key_lines(text, _HEADER_KEYS, 0, len(text)):
                self.header_line(text, ls, base)
            return
        self.header_line(text, text.rfind(b"\n", 0, ipt) + 1, base)
        n = len(self.ions_per_type or ())
        for ls in self.key_lines(text, (b"NIONS",), max(0, ipt - 2000), ipt):
            self.header_line(text, ls, base)
        for ls in self.key_lines(text, _PARAMETER_KEYS, ipt, min(len(text), ipt + 6000)):
            self.header_line(text, ls, base)
        if None in (self.nelm, self.nwrite, self.ibrion, self.nsw):  # an unusual layout
            for ls in self.key_lines(text, _PARAMETER_KEYS, 0, len(text)):
                self.header_line(text, ls, base)
        i = text.find(b"POTCAR:")
        while i >= 0 and len(self.potcar) < n:
            self.header_line(text, text.rfind(b"\n", 0, i) + 1, base)
            i = text.find(b"POTCAR:", i + 7)
        if len(self.species_guess(n)) != n:  # fall back on TITEL / VRHFIN lines
            for ls in self.key_lines(text, (b"TITEL", b"VRHFIN"), 0, ipt):
                self.header_line(text, ls, base)
        i = text.rfind(b"direct lattice vectors", ipt)
        if i >= 0:
            self.header_line(text, text.rfind(b"\n", 0, i) + 1, base)

    @staticmethod
    def key_lines(text: bytes, keys: tuple[bytes, ...], a: int, b: int) -> list[int]:
        """Sorted starts of the lines of text[a:b] that hold one of ``keys``."""
        starts: set[int] = set()
        for key in keys:
            i = text.find(key, a, b)
            while i >= 0:
                starts.add(text.rfind(b"\n", 0, i) + 1)
                i = text.find(key, i + len(key), b)
        return sorted(starts)

    def header_line(self, text: bytes, ls: int, base: int) -> None:
        le = text.find(b"\n", ls)
        if le < 0:
            le = len(text)
        line = text[ls:le].decode("latin-1")
        if "direct lattice vectors" in line:
            parts = text[le + 1 :].split(b"\n", 3)
            if len(parts) == 4:  # three complete rows
                self.cell = self.lattice([r.decode("latin-1") for r in parts[:3]],
                                         base + le + 1)
        elif "POTCAR:" in line:
            toks = line.split()
            if toks and toks[0] == "POTCAR:":
                self.potcar.append(_element(toks[1:]) or "")
        elif "=" in line:
            self.header_value(line, base + ls)

    def header_value(self, line: str, offset: int) -> None:
        head, _, rest = line.partition("=")
        key = head.strip()
        if key == "TITEL":
            self.titel.append(_element(rest.split()) or "")
        elif key == "VRHFIN":
            self.vrhfin.append(_element([rest.split(":")[0].strip()]) or "")
        elif key == "ions per type":
            try:
                self.ions_per_type = [int(t) for t in rest.split()]
            except ValueError:
                raise self.err(offset, f"cannot read 'ions per type': {line.strip()!r}") \
                    from None
            self.ions_offset = offset
        elif "NIONS =" in line:
            value = self.int_after(line, "NIONS =")
            if value is None or value <= 0:
                raise self.err(offset, f"cannot read NIONS: {line.strip()!r}")
            self.nions = value
        elif key in ("NELM", "NWRITE", "IBRION", "NSW"):
            value = self.int_after(line, "=")
            if value is not None:
                setattr(self, key.lower(), value)

    def resolve_species(self, offset: int) -> None:
        """Species and atom types; called when the first ionic step starts."""
        if self.nions is None or self.ions_per_type is None:
            raise self.err(offset, "an ionic step starts before NIONS and 'ions per type' "
                                   "were printed: not an OUTCAR header")
        if sum(self.ions_per_type) != self.nions or min(self.ions_per_type, default=0) < 0:
            raise self.err(self.ions_offset, f"'ions per type' {self.ions_per_type} does not "
                                             f"add up to NIONS = {self.nions}")
        n = len(self.ions_per_type)
        self.species = self.species_guess(n)
        if not self.species:
            self.notes.append("could not tell the element names from the POTCAR:, TITEL or "
                              "VRHFIN lines; types are still the POTCAR index")
        self.types = np.repeat(np.arange(n, dtype=np.int64), self.ions_per_type)

    def species_guess(self, n: int | None) -> list[str]:
        """POTCAR: lines list every species once, then once more each (ASE's rule); with
        NWRITE=0 they are the only source. TITEL, then VRHFIN lines are the fallback."""
        if n is None:  # no 'ions per type' (crashed early): halve the POTCAR: lines
            candidates = [self.potcar[: (len(self.potcar) + 1) // 2], self.titel, self.vrhfin]
        else:
            candidates = [self.potcar[:n], self.titel[:n], self.vrhfin[:n]]
        for names in candidates:
            if names and (n is None or len(names) == n) and all(names):
                return list(names)
        return []

    # ------------------------------------------------------------------ records

    def enter_ml(self, offset: int) -> _Rec:
        """ML output: it ends the DFT step in progress (VASP predicts before it computes)."""
        if self.dft is not None:
            self.close_dft()
        if self.ml is None:
            self.ml = _Rec(self.n_ml_blocks, True, offset)
            self.n_ml_blocks += 1
        return self.ml

    def enter_dft(self, offset: int) -> _Rec:
        """DFT output: an ML block still open has ended without its energy (incomplete)."""
        if self.ml is not None:
            self.close_ml()
        if self.dft is None:  # DFT output without an Iteration header (never seen in practice)
            self.dft = _Rec(self.last_dft_index + 1, False, offset)
        return self.dft

    def make_step(self, r: _Rec) -> IonicStep:
        assert self.types is not None
        cell = r.cell if r.cell is not None else self.cell
        if cell is None:
            raise self.err(r.offset, f"no lattice vectors printed before ionic step "
                                     f"{r.index + 1}")
        plus = None
        if r.stress_ev is not None:
            plus = r.stress_ev[_VASP_TO_VOIGT]
        elif r.stress_kb is not None:
            volume = abs(float(np.linalg.det(cell)))
            plus = r.stress_kb[_VASP_TO_VOIGT] * (volume / KBAR_A3_PER_EV)
        converged = True
        if not r.ml:
            converged = not r.not_converged_text and (self.nelm is None or r.n_el < self.nelm)
        return IonicStep(
            index=r.index,
            cell=cell.copy(),
            positions=r.positions,
            types=self.types.copy(),
            forces=r.forces,
            energy_free=r.e_free,
            energy_sigma0=r.e_sigma0,
            energy_no_entropy=r.e_noent,
            stress_kb=r.stress_kb,
            plus_stress=plus,
            n_electronic=r.n_el,
            converged=converged,
            ml=r.ml,
        )

    def close_ml(self) -> None:
        r, self.ml = self.ml, None
        if r is None:
            return
        if r.e_free is None or r.forces is None:
            self.notes.append(f"an ML force-field block (ML step {r.index + 1}) is incomplete "
                              "(skipped)")
            return
        self.n_ml_done += 1
        if self.include_ml:
            self.out.append(self.make_step(r))

    def close_dft(self, *, at_end: bool = False) -> None:
        r, self.dft = self.dft, None
        if r is None:
            return
        self.last_dft_index = max(self.last_dft_index, r.index)
        usable = r.e_free is not None
        # Killed while this step was printed: it counts only if nothing is missing
        # (5.2.2 prints the energy before the forces).
        complete = usable and (r.forces is not None or self.nwrite == 0)
        if at_end and not self.footer and not complete:
            self.eof_rec = r
            return
        if not usable:  # VASP always ends a step with it: the file is damaged
            raise self.err(r.iter_offset, f"ionic step {r.index + 1} has no 'FREE ENERGIE' "
                                          "block (its energy) before the next step or the end")
        step = self.make_step(r)
        if not self.strict:  # read_outcar classifies the run; iter_outcar keeps nothing
            self.dft_steps.append((r.index, step.converged, r.forces is not None, r.n_el,
                                   r.iter_offset))
        self.out.append(step)

    # ------------------------------------------------------------------ blocks
    # Each handler gets the event's line [ls, le) of self.buf, reads what it needs (raising
    # _NeedMore/_Cut before it changes any state, so a retry is harmless) and returns the
    # index where its block ends.

    def on_iteration(self, ls: int, le: int) -> None:
        line = self.buf[ls:le].decode("latin-1")
        after = line.split("Iteration", 1)[1]
        try:
            n = int(after.split("(", 1)[0])
            k = int(after.split("(", 1)[1].split(")", 1)[0])
        except (IndexError, ValueError):
            raise self.err(self.base + ls, f"cannot read the Iteration line "
                                           f"{line.strip()[:100]!r}") from None
        if self.ml is not None:
            self.close_ml()
        d = self.dft
        if d is None or d.index != n - 1:
            self.close_dft()
            self.dft = d = _Rec(n - 1, False, self.base + ls)
        if k > d.n_el:
            d.n_el, d.iter_offset = k, self.base + ls

    def catch_up(self, a: int, b: int) -> None:
        """The electronic loop between two blocks, read backwards: "aborting loop" ends it
        (VASP 6 writes "EDIFF was not reached" there when it stopped at NELM), and the last
        "Iteration N(k)" line before says which ionic step ran and how many electronic
        steps it took (the earlier lines say less). Between them VASP may print the
        eigenvalues (hundreds of KB): searching from the end reads that stretch once."""
        buf = self.buf
        k = buf.rfind(b"aborting loop", a, b)
        j = buf.rfind(b"- Iteration", a, k if k >= 0 else b)
        if j >= 0:
            ls = buf.rfind(b"\n", 0, j) + 1
            le = buf.find(b"\n", j, self.end)
            if le < 0:  # the file ends inside this line: the one before counts
                j = buf.rfind(b"- Iteration", a, ls)
                if j >= 0:
                    ls = buf.rfind(b"\n", 0, j) + 1
                    le = buf.find(b"\n", j, self.end)
            if j >= 0:
                self.on_iteration(ls, le)
        if k >= 0 and self.dft is not None and b"not reached" in buf[k : self.line_end(k)]:
            self.dft.not_converged_text = True

    def on_stress(self, ls: int, le: int, limit: int) -> int:
        """'FORCE on cell =-STRESS' block: the 'Total' (eV) and 'in kB' lines, then the
        lattice VASP prints right after it ("VOLUME and BASIS-vectors"), if any, before
        ``limit`` (the next block)."""
        buf, end = self.buf, self.end
        k = buf.find(b"in kB", le, min(end, le + _STRESS_BYTES))
        kle = buf.find(b"\n", k, end) if k >= 0 else -1
        if kle < 0:
            if end < le + _STRESS_BYTES:  # not all read yet: read more (or the file ends)
                self.short(ls, "stress block")
            raise self.err(self.base + ls, f"no 'in kB' line within {_STRESS_BYTES} bytes "
                                           "after 'FORCE on cell =-STRESS'")
        kls = buf.rfind(b"\n", 0, k) + 1
        kb = self.six(buf[k + 5 : kle], self.base + kls, "'in kB' line")
        total = None
        t = buf.rfind(b"Total", le, kls)
        if t >= 0:
            tls = buf.rfind(b"\n", 0, t) + 1
            if not buf[tls:t].strip():  # the line starts with 'Total' ('Total:' in ML)
                tle = buf.find(b"\n", t, kls)
                total = self.six(buf[t + 5 : tle].lstrip(b":"), self.base + tls,
                                 "stress 'Total' line")
        cell = None
        lat = buf.find(b"direct lattice vectors", kle, limit)
        if lat >= 0:
            cell, kle = self.read_lattice(lat, ls)
        elif limit >= end and not self.eof:
            self.short(ls, "stress block")  # the lattice may follow in the next block
        ml = buf[ls:le].lstrip().startswith(b"ML")
        rec = self.enter_ml(self.base + ls) if ml else self.enter_dft(self.base + ls)
        rec.stress_kb, rec.stress_ev = kb, total
        if cell is not None:
            self.cell = cell
            if rec.forces is None:  # printed before the forces of its step, in every layout
                rec.cell = cell
        return kle

    def six(self, raw: bytes, offset: int, what: str) -> np.ndarray:
        try:  # the common case, straight from the bytes
            vals = [float(t) for t in raw.split()]
        except ValueError:
            vals = []
        if len(vals) == 6 and math.isfinite(sum(vals)):
            return np.array(vals)
        text = raw.decode("latin-1")
        vals = self.floats(text, offset, what)
        if len(vals) != 6:
            raise self.err(offset, f"expected 6 numbers on the {what}, got {text.strip()!r}")
        if not math.isfinite(sum(vals)):
            raise self.err(offset, f"non-finite number in the {what}")
        return np.array(vals)

    def lattice(self, rows: list[str], offset: int) -> np.ndarray:
        """The three rows after 'direct lattice vectors' (direct, then reciprocal vectors)."""
        try:
            vals = [float(t) for t in " ".join(rows).split()]
        except ValueError:
            vals = []
        if len(vals) == 18 and math.isfinite(sum(vals)):
            return np.array(vals).reshape(3, 6)[:, :3].copy()
        cell = np.empty((3, 3))
        for k, row in enumerate(rows):  # touching fields, or a row to blame
            vals = self.floats(row, offset, "lattice vectors")
            if len(vals) != 6:
                raise self.err(offset, f"expected 6 numbers (direct and reciprocal lattice "
                                       f"vector) on the row, got {row.strip()[:100]!r}")
            if not math.isfinite(sum(vals)):
                raise self.err(offset, "non-finite number in the lattice vectors")
            cell[k] = vals[:3]
            offset += len(row) + 1
        return cell

    def read_lattice(self, i: int, restart: int) -> tuple[np.ndarray, int]:
        buf, end = self.buf, self.end
        le = self.line_end(i)
        r1 = buf.find(b"\n", le + 1, end)
        r2 = buf.find(b"\n", r1 + 1, end) if r1 >= 0 else -1
        r3 = buf.find(b"\n", r2 + 1, end) if r2 >= 0 else -1
        if r3 < 0:
            self.short(restart, "lattice vectors")
        try:  # the common case, straight from the bytes
            vals = [float(t) for t in buf[le + 1 : r3].split()]
        except ValueError:
            vals = []
        if len(vals) == 18 and math.isfinite(sum(vals)):
            return np.array(vals).reshape(3, 6)[:, :3].copy(), r3
        rows = [buf[le + 1 : r1], buf[r1 + 1 : r2], buf[r2 + 1 : r3]]
        return self.lattice([r.decode("latin-1") for r in rows], self.base + le + 1), r3

    def on_forces(self, ls: int, le: int) -> int:
        assert self.nions is not None
        n = self.nions
        buf = self.buf
        rows_start = buf.find(b"\n", le + 1, self.end) + 1  # after the '-----' line
        if rows_start == 0:
            self.short(ls, "TOTAL-FORCE block")
        first = buf[le + 1 : rows_start - 1]
        if not first.lstrip().startswith(b"---"):
            raise self.err(self.base + le + 1, f"expected a '-----' line after the TOTAL-FORCE "
                                               f"header, got {first.strip()[:60]!r}")
        # The n rows, then the closing '-----' line (numbers never hold "---").
        d = buf.find(b"---", rows_start, self.end)
        q = buf.find(b"\n", d, self.end) if d >= 0 else -1
        if q < 0:
            self.short(ls, "TOTAL-FORCE block")
        closing_start = buf.rfind(b"\n", rows_start, d) + 1
        if buf.count(b"\n", rows_start, closing_start) != n or buf[closing_start:d].strip():
            p = rows_start  # where the closing line should be, to say so
            for _ in range(n):
                p = max(p, buf.find(b"\n", p, self.end) + 1)
            got = buf[p : buf.find(b"\n", p, self.end)].strip()[:60]
            raise self.err(self.base + p, f"expected the '-----' line that closes the "
                                          f"TOTAL-FORCE block after NIONS = {n} rows, got "
                                          f"{got!r}")
        table = self.force_table(buf[rows_start:closing_start], n, self.base + rows_start)
        header = buf[ls:le]
        rec = self.enter_ml(self.base + ls) if b"(ML)" in header else self.enter_dft(
            self.base + ls)
        rec.positions = np.ascontiguousarray(table[:, 0:3])
        rec.forces = np.ascontiguousarray(table[:, 3:6])
        return q

    def force_table(self, rows: bytes, n: int, offset: int) -> np.ndarray:
        """(n, >=6) array of the rows, in one numpy call when the block is clean."""
        tokens = rows.split()
        ncol = len(tokens) // n
        if ncol >= 6 and ncol * n == len(tokens):
            try:
                table = np.array(tokens, dtype=np.float64).reshape(n, ncol)
            except ValueError:
                pass
            else:
                if np.isfinite(table[:, :6]).all():
                    return table
        # Slow path: touching Fortran fields, or garbage: say which row.
        out = np.empty((n, 6))
        for i, row in enumerate(rows.decode("latin-1").split("\n")[:n]):
            vals = self.floats(row, offset, "TOTAL-FORCE row")
            if len(vals) < 6:
                raise self.err(offset, f"expected 6 numbers (position, force) in the "
                                       f"TOTAL-FORCE row, got {row.strip()[:100]!r}")
            if not math.isfinite(sum(vals[:6])):
                raise self.err(offset, "non-finite number in the TOTAL-FORCE row")
            out[i] = vals[:6]
            offset += len(row) + 1
        return out

    def on_energy(self, ls: int, le: int) -> int:
        """'FREE ENERGIE' block: TOTEN two lines below, then the line with the energy
        without entropy and energy(sigma->0) ('w/o vdW' fields follow in vdW runs)."""
        buf, end = self.buf, self.end
        window = min(end, le + _ENERGY_BYTES)
        t = buf.find(b"TOTEN", le, window)
        s = buf.find(b"entropy=", le, window)
        sle = buf.find(b"\n", s, end) if s >= 0 else -1
        if t < 0 or sle < 0:
            if end < le + _ENERGY_BYTES:  # not all read yet: read more (or the file ends)
                self.short(ls, "energy block")
            raise self.err(self.base + ls, "no 'free  energy   TOTEN' and 'energy  without "
                                           "entropy' lines in the FREE ENERGIE block")
        tle = buf.find(b"\n", t, end)
        tls = buf.rfind(b"\n", 0, t) + 1
        sls = buf.rfind(b"\n", 0, s) + 1
        free = self.energy_value(buf[t + 5 : tle], "TOTEN", self.base + tls)
        noent = self.energy_value(buf[s + 8 : sle], "entropy=", self.base + sls)
        sigma0 = None
        g = buf.find(b"sigma->0)", s, sle)
        if g >= 0:
            sigma0 = self.energy_value(buf[g + 9 : sle], "energy(sigma->0)", self.base + sls)
        ml = buf[ls:le].lstrip().startswith(b"ML")
        rec = self.enter_ml(self.base + ls) if ml else self.enter_dft(self.base + ls)
        rec.e_free, rec.e_sigma0, rec.e_noent = free, sigma0, noent
        if ml:
            self.close_ml()  # the energy is the last block VASP prints for an ML step
        return max(tle, sle)

    def energy_value(self, raw: bytes, key: str, offset: int) -> float:
        """The first number after ``key`` and its '=': '  =  -1.23 eV  w/o vdW = ...'."""
        rest = raw.lstrip()
        if rest[:1] == b"=":
            rest = rest[1:]
        toks = rest.split(None, 1)
        try:
            value = float(toks[0]) if toks else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise self.err(offset, f"cannot read the energy after {key!r}: "
                                   f"{raw.decode('latin-1').strip()[:80]!r}")
        return value

    # ------------------------------------------------------------------ the pass

    def read_more(self, f: IO[bytes], keep_from: int) -> int:
        """Drop buf[:keep_from] and append the next block; return where buf[keep_from] is
        now. buf[:end] ends on a newline. At the end of the file nothing is dropped: a
        small file stays whole in memory, for line numbers without a second pass."""
        want = max(self.chunk, 2 * (len(self.buf) - keep_from))
        # Never ask for more than the file holds: a 4 MiB read() of a 40 KB file costs
        # more than parsing it.
        left = self.file_size - self.size  # (a file still being written may hold more)
        data = f.read(min(want, left + 1) if left >= 0 else want)
        if not data:
            self.eof = True
            self.end = len(self.buf)
            return keep_from
        if keep_from >= _TAIL:
            self.tail = self.buf[keep_from - _TAIL : keep_from]
        elif keep_from:
            self.tail = (self.tail + self.buf[:keep_from])[-_TAIL:]
        self.base += keep_from
        self.buf = self.buf[keep_from:] + data if keep_from < len(self.buf) else data
        self.size += len(data)
        self.end = self.buf.rfind(b"\n") + 1
        return 0

    def steps(self) -> Iterator[IonicStep]:
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                yield from self.run(f)
        except _Cut as cut:
            self.cut = cut
            k = self.dft.index + 1 if self.dft is not None else self.last_dft_index + 2
            self.finish()
            self.close_dft(at_end=True)
            yield from self.out
            self.out.clear()
            if self.strict:
                raise self.err(cut.offset, f"file ends inside the {cut.what} of ionic step "
                                           f"{k}: truncated OUTCAR") from None
        except FormatError:
            raise
        except (ValueError, IndexError, TypeError, KeyError, AssertionError) as exc:
            raise self.err(self.base, f"cannot read this OUTCAR ({exc})") from None

    def run(self, f: IO[bytes]) -> Iterator[IonicStep]:
        # The header: everything before the first line of an ionic step (read whole: its
        # size does not grow with the number of steps).
        self.read_more(f, 0)
        while True:
            first = self.body_start()
            if first >= 0 or self.eof:
                break
            self.read_more(f, 0)
        if first < 0:
            self.header(self.buf[: self.end], 0)
            self.species = self.species_guess(
                len(self.ions_per_type) if self.ions_per_type else None)
            self.finish()
            return
        first = self.buf.rfind(b"\n", 0, first) + 1
        self.header(self.buf[:first], 0)
        self.resolve_species(first)
        pos = first
        while True:
            try:
                pos = self.scan(pos)
            except _NeedMore as more:
                pos = more.restart
            if self.out:
                yield from self.out
                self.out.clear()
            if self.eof:
                break
            pos = self.read_more(f, pos)
        self.finish()
        if self.ml is not None:
            self.close_ml()
        self.close_dft(at_end=True)
        yield from self.out
        self.out.clear()

    def body_start(self) -> int:
        """Index of the first line of an ionic step in buf[:end] (its first "Iteration", or
        the stress or force block of an ML step before it), or -1."""
        first = self.buf.find(b"- Iteration", 0, self.end)
        # An ML run predicts a step (stress block first) before its first Iteration.
        limit = self.end if first < 0 else first
        i = self.buf.find(b"FORCE", 0, limit)
        while i >= 0:
            if self.buf.startswith(b"FORCE on cell", i) or self.buf[i - 6 : i] == b"TOTAL-":
                return i
            i = self.buf.find(b"FORCE", i + 5, limit)
        return first

    def scan(self, start: int) -> int:
        """Handle the blocks in buf[start:end] in file order; return where to go on.

        Two passes of bytes.find locate the blocks: "FORCE" (stress and force blocks; the
        "FORCES acting on ions" table is skipped) and "FREE ENERGIE". The text between two
        blocks is the electronic loop, read backwards from its end by :meth:`catch_up`;
        the lattice is looked up right after each stress block.
        """
        buf, end = self.buf, self.end
        events: list[tuple[int, int]] = []
        i = buf.find(b"FORCE", start, end)
        while i >= 0:
            if buf.startswith(b"FORCE on cell", i):
                events.append((i, _STRESS))
            elif buf[i - 6 : i] == b"TOTAL-":
                events.append((i, _FORCES))
            i = buf.find(b"FORCE", i + 5, end)
        i = buf.find(b"FREE ENERGIE", start, end)
        while i >= 0:
            events.append((i, _ENERGY))
            i = buf.find(b"FREE ENERGIE", i + 12, end)
        events.sort()
        cursor = start
        for e, (i, kind) in enumerate(events):
            if i < cursor:  # inside a block a handler already read
                continue
            ls = buf.rfind(b"\n", 0, i) + 1
            le = self.line_end(i)
            if le == end and self.eof and not buf.endswith(b"\n"):
                raise _Cut(self.base + ls, _BLOCK_NAMES[kind])  # ends inside this line
            self.catch_up(cursor, ls)
            if kind == _STRESS:
                nxt = events[e + 1][0] if e + 1 < len(events) else end
                cursor = self.on_stress(ls, le, buf.rfind(b"\n", 0, nxt) + 1)
            elif kind == _FORCES:
                cursor = self.on_forces(ls, le)
            else:
                cursor = self.on_energy(ls, le)
        self.catch_up(cursor, end)  # an electronic loop still running at the block's end
        return end

    def finish(self) -> None:
        """The end-of-file scan: the timing footer, "reached required accuracy" and the
        error that stopped VASP are all printed in the last lines of the file (VASP 6.2
        prints profiling data after the footer: up to ~40 KB)."""
        buf = self.buf
        tail = buf[-_TAIL:] if len(buf) >= _TAIL else (self.tail + buf)[-_TAIL:]
        tail_base = self.base + len(buf) - len(tail)
        self.footer = tail.rfind(b"General timing and accounting") >= 0
        if self.ibrion in (1, 2, 3):  # only a relaxation reaches (or not) EDIFFG
            self.reached_accuracy = tail.rfind(b"reached required accuracy") >= 0
        if self.footer:
            return
        # VASP stops right after printing its error: look in the last lines only.
        last = max(0, len(tail) - _ERROR_TAIL)
        best: tuple[int, str] | None = None
        for key in (b"rror", b"RROR", b"BAD NEWS"):
            i = tail.find(key, last)
            while i >= 0 and (best is None or i < best[0]):
                ls = tail.rfind(b"\n", 0, i) + 1
                le = tail.find(b"\n", i)
                body = tail[ls : le if le >= 0 else len(tail)].decode("latin-1").strip(" |\t\r")
                if body.startswith(_ERROR_STARTS):
                    best = (ls, body)
                    break
                i = tail.find(key, i + 1)
        if best is not None:
            self.error = (tail_base + best[0], best[1])

    def line_of(self, offset: int) -> int:
        """1-based line of a file offset: counted in the buffer when the file's start is
        still there (every small file), else in a second pass over the file."""
        if self.base == 0 and offset <= len(self.buf):
            return self.buf.count(b"\n", 0, offset) + 1
        return _line_number(self.path, offset)


# ---------------------------------------------------------------------------- public API


def iter_outcar(path: str | os.PathLike[str], *, include_ml: bool = False) -> Iterator[IonicStep]:
    """Yield the ionic steps of an OUTCAR one at a time (constant memory in the file size).

    DFT steps only, unless ``include_ml``: then the VASP ML force-field steps come too, with
    ``ml=True`` (never training data). A step is yielded once VASP has printed all of it
    (when the next one starts, or at the end of the file); a file that stops elsewhere
    (killed mid-SCF, crashed) simply ends the iteration - :func:`read_outcar` tells why.
    Raises FormatError (path, line) on garbled numbers, on a header that does not add up,
    and when the file ends inside a block (the step being printed cannot be read).
    """
    yield from _Parser(os.fspath(path), include_ml=include_ml, strict=True).steps()


def read_outcar(
    path: str | os.PathLike[str], *, include_ml: bool = False
) -> tuple[OutcarInfo, list[IonicStep]]:
    """Every ionic step and the classification of the run, in one pass.

    A file that ends inside a block is classified ``unfinished`` here instead of raising (a
    job killed by its walltime is an ordinary outcome); garbled numbers and inconsistent
    headers still raise FormatError.
    """
    p = _Parser(os.fspath(path), include_ml=include_ml, strict=False)
    steps = list(p.steps())
    return _classify(p), steps


def _steps_phrase(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:8])
    more = f", ... ({len(numbers)} in all)" if len(numbers) > 8 else ""
    return ("ionic step " if len(numbers) == 1 else "ionic steps ") + shown + more


def _classify(p: _Parser) -> OutcarInfo:
    dft = p.dft_steps
    notes = list(p.notes)
    status, reason, reason_at = "complete", "", None
    if p.n_ml_done:
        verb = "included (ml=True)" if p.include_ml else "skipped"
        notes.append(f"{p.n_ml_done} ML force-field steps {verb}")
    no_forces_line = None
    without = [off for _, _, has_f, _, off in dft if not has_f]
    if without:
        no_forces_line = p.line_of(without[0])
        with_forces = [i + 1 for i, _, has_f, _, _ in dft if has_f]
        shown = ", ".join(map(str, with_forces)) or "none"
        notes.append(f"NWRITE={p.nwrite}: positions and forces only for ionic steps {shown} "
                     f"(of {len(dft)})")
    relax = p.ibrion in (1, 2, 3) and (p.nsw or 0) > 0
    if p.footer and relax and not p.reached_accuracy and len(dft) >= (p.nsw or 0):
        notes.append(f"relaxation stopped at NSW={p.nsw} before reaching EDIFFG")
    unconverged = [(i + 1, n_el, off) for i, conv, _, n_el, off in dft if not conv]
    # The last line of the file (not the empty one after its final newline).
    eof = p.base + p.buf.rstrip(b"\n").rfind(b"\n") + 1
    if p.nions is None:
        status, reason, reason_at = "unfinished", "stopped before NIONS was printed", eof
    elif not p.footer:
        status = "unfinished"
        if p.error is not None:
            reason, reason_at = f"VASP error: {p.error[1]}", p.error[0]
        else:
            reason_at = eof
            if p.cut is not None:
                k = p.eof_rec.index + 1 if p.eof_rec is not None else p.last_dft_index + 2
                detail = f"file ends inside the {p.cut.what} of ionic step {k}"
            elif p.eof_rec is not None:
                r = p.eof_rec
                detail = (f"during electronic step {r.n_el} of ionic step {r.index + 1}"
                          if r.e_free is None else f"while ionic step {r.index + 1} was printed")
            else:
                detail = f"after {len(dft)} complete ionic step{'s' if len(dft) != 1 else ''}"
            reason = f"no timing footer: killed or cut ({detail})"
        if unconverged:
            notes.append(f"{_steps_phrase([n for n, _, _ in unconverged])} reached "
                         f"NELM={p.nelm}")
    elif unconverged:
        status = "unconverged"
        nums = [n for n, _, _ in unconverged]
        if p.nelm is not None and all(n_el >= p.nelm for _, n_el, _ in unconverged):
            reason = f"{_steps_phrase(nums)} reached NELM={p.nelm} electronic steps"
        else:
            reason = f"{_steps_phrase(nums)}: electronic loop not converged (VASP says so)"
        reason_at = unconverged[0][2]
    reason_line = None if reason_at is None else p.line_of(reason_at)
    return OutcarInfo(
        path=p.path,
        version=p.version,
        nelm=p.nelm,
        nions=p.nions,
        nwrite=p.nwrite,
        species=list(p.species),
        ions_per_type=list(p.ions_per_type or []),
        status=status,
        reason=reason,
        notes=notes,
        n_steps=len(dft),
        version_line=p.version_line,
        ibrion=p.ibrion,
        nsw=p.nsw,
        n_ml_steps=p.n_ml_done,
        has_footer=p.footer,
        error=p.error[1] if p.error else None,
        reason_line=reason_line,
        no_forces_line=no_forces_line,
    )


def step_to_cfg(step: IonicStep, info: OutcarInfo, *, energy: str = "free") -> Cfg:
    """The MLIP-3 configuration of one DFT ionic step, as ``mlp convert`` writes it.

    ``energy``: "free" (TOTEN, MLIP-3's choice and the energy consistent with the forces)
    or "sigma0". Types are the POTCAR index; ``Feature EFS_by`` is ``VASP``, or
    ``VASP_not_converged`` for a step that reached NELM (as mlp marks it).
    """
    if energy not in ("free", "sigma0"):
        raise ValueError(f"energy must be 'free' or 'sigma0', got {energy!r}")
    if step.ml:
        raise ValueError(f"ionic step {step.index + 1} is a VASP ML force-field step, "
                         "not DFT: never training data")
    if step.positions is None or step.forces is None:
        raise FormatError(info.path, None,
                          f"ionic step {step.index + 1} has no positions and forces "
                          f"(NWRITE={info.nwrite} printed no TOTAL-FORCE block)")
    value = step.energy_free if energy == "free" else step.energy_sigma0
    if value is None:
        raise FormatError(info.path, None,
                          f"ionic step {step.index + 1} has no "
                          f"{'TOTEN' if energy == 'free' else 'energy(sigma->0)'}")
    cfg = Cfg(
        cell=step.cell.copy(),
        types=step.types.copy(),
        positions=step.positions.copy(),
        forces=step.forces.copy(),
        energy=value,
        plus_stress=None if step.plus_stress is None else step.plus_stress.copy(),
    )
    cfg.set_feature("EFS_by", "VASP" if step.converged else "VASP_not_converged")
    return cfg


def outcar_to_cfgs(
    path: str | os.PathLike[str], *, energy: str = "free", keep_converged_steps: bool = False
) -> list[Cfg]:
    """Training configurations of an OUTCAR: every DFT ionic step with forces.

    By default the run must be complete: an unfinished or unconverged file raises
    FormatError naming the file and the reason (a label task then fails with that reason).
    ``keep_converged_steps=True`` serves relaxations and MD: it keeps the complete,
    converged DFT steps (the unfinished tail and NELM steps are dropped, as ``mlp convert``
    drops non-converged steps) and raises only when none is left. Steps without forces
    (NWRITE=0) and ML force-field steps are never returned.
    """
    if energy not in ("free", "sigma0"):
        raise ValueError(f"energy must be 'free' or 'sigma0', got {energy!r}")
    info, steps = read_outcar(path)
    usable = usable_steps(info, steps, keep_converged_steps=keep_converged_steps)
    return [step_to_cfg(s, info, energy=energy) for s in usable]


def usable_steps(info: OutcarInfo, steps: list[IonicStep], *,
                 keep_converged_steps: bool = False) -> list[IonicStep]:
    """The steps that are training data (the rule of `outcar_to_cfgs`), or FormatError."""
    if info.status != "complete" and not keep_converged_steps:
        raise FormatError(info.path, info.reason_line, f"{info.status} run: {info.reason}")
    usable = [s for s in steps if s.converged and s.forces is not None]
    if not usable:
        why = f"{info.status}: {info.reason}" if info.reason else info.status
        raise FormatError(info.path, info.reason_line or info.no_forces_line,
                          f"no complete, converged DFT ionic step with forces ({why})")
    return usable
