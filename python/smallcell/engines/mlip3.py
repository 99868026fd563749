"""The production trainer/grader: an adapter over MLIP-3's ``mlp`` command line.

Facts this adapter is built around (shared/docs/mlip3-facts.md §4, checked against the real
``mlp`` and its outputs in shared/fixtures/mlip3):

- options are parsed only as ``--key=value``; ``--key value`` silently turns ``value`` into
  a positional argument. Every option here is written ``--key=value``.
- ``mlp`` exits 0 on an unknown command ("Error: command X does not exist.") and on a wrong
  number of arguments (a message on stdout); an MlipException goes to stderr with exit
  status 9. So every call is judged by its output text and its output files as well as by
  its exit status, and a failure becomes one :class:`Mlip3Error` line naming the command,
  the reason and the log file.
- ``--al_mode`` only matters when training starts from an untrained template; a trained
  file keeps the mode of its #MVS weights (``mlp train`` reads them back).
- MPI builds suffix per-rank outputs (``out.cfg.0``, ``out.cfg.1`` ...) of calculate_grade
  and the per-configuration error log; grades are merged back in input order by
  ``Feature ID``, error-log lines by MLIP-3's round-robin share (configuration k on rank
  k % ranks). An MPI check_errors pads every rank that got one configuration fewer with
  an empty comparison (a ``#atoms: 0`` line, counted in the report): see
  :func:`check_errors`.
- ``select_add`` keeps the features of the candidates it writes out, so each candidate is
  tagged ``Feature smallcell_candidate <k>`` before the call and found back by that tag
  (by coordinates if a build ever drops features).

The MLIP-3 potential has no in-process calculator: molecular dynamics with it runs in
LAMMPS (``pair_style mlip``), which also grades every step.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from smallcell.engines.motep_mtp import TrainResult, TrainSettings
from smallcell.engines.process import ProgramNotFound, run_logged, with_setup
from smallcell.errors import SmallcellError
from smallcell.formats.almtp import (
    AlmtpHeader,
    SelectionState,
    read_almtp_header,
    read_selection_state,
    set_template_fields,
)
from smallcell.formats.cfg import Cfg, atoms_to_cfg, iter_cfgs, read_cfgs, write_cfgs
from smallcell.formats.errors import FormatError

__all__ = [
    "POT",
    "TAG",
    "Mlip3Error",
    "Mlip3Potential",
    "Mlip3Selection",
    "Mlip3Settings",
    "Mlip3Trainer",
    "MlpRun",
    "TrainLog",
    "calculate_grade",
    "call_mlp",
    "check_errors",
    "errors_from_report",
    "match_selected",
    "parse_errors_log",
    "parse_errors_report",
    "parse_grade_log",
    "parse_select_add_log",
    "parse_train_log",
    "read_graded",
    "select_add",
    "train",
]

POT = "pot.almtp"
TRAIN_CFG = "train.cfg"
TAG = "smallcell_candidate"  # feature that carries a candidate's index through select_add
_KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a timed-out mlp (and its ranks)


class Mlip3Error(SmallcellError):
    """An ``mlp`` call failed; one line with the command, the reason and the log file."""

    def __init__(self, command: str, reason: str, *, argv: Sequence[str] | None = None,
                 cwd: Path | None = None, log: Path | None = None,
                 returncode: int | None = None) -> None:
        self.command = command
        self.reason = " ".join(reason.split())  # one line, whatever mlp printed
        self.argv = list(argv) if argv is not None else None
        self.cwd = cwd
        self.log = log
        self.returncode = returncode
        text = f"mlp {command}: {self.reason}"
        if self.argv is not None:
            text += f" [`{shlex.join(self.argv)}`" + (f" in {cwd}]" if cwd else "]")
        if log is not None:
            text += f"; see {log}"
        super().__init__(text)


# --------------------------------------------------------------------------- settings


@dataclass
class Mlip3Settings:
    """Everything an ``mlp train`` needs; program paths are config, never code.

    ``start``: "warm" continues from the previous potential (MLIP-3 keeps its
    coefficients, scaling and active set); "template" fits a fresh template every
    iteration (the report's choice, there with a fixed 100-iteration limit).
    ``weight_scaling`` None leaves mlp's default (1). ``setup`` lines (module loads) run
    in ``bash -c '<lines>; exec "$@"'`` before every mlp call, with the mlp argv as "$@".
    ``restarts``: this many more fits from the template with MLIP-3's random initialisation
    of the radial coefficients besides the usual start; see :func:`train`. ``timeout``
    applies to every mlp call.
    """

    mlp: list[str] = field(default_factory=lambda: ["mlp"])
    setup: list[str] = field(default_factory=list)
    template: Path | None = None
    templates_dir: Path | None = None  # MLIP-3's MTP_templates: <dir>/<level:02d>.almtp
    level: int = 8
    min_dist: float = 2.0
    max_dist: float = 5.0
    radial_basis_size: int = 8
    iteration_limit: int = 1000
    tolerance: float = 1e-3
    energy_weight: float = 1.0
    force_weight: float = 0.01
    stress_weight: float = 0.001
    weight_scaling: int | None = None
    al_mode: str = "nbh"
    start: str = "warm"
    timeout: float | None = None
    restarts: int = 0
    screen: bool = True  # restarts screened for SCREEN iterations, or each to convergence
    min_dist_update: bool = True  # False: --no_mindist_update=true (keep min_dist)

    def __post_init__(self) -> None:
        if isinstance(self.mlp, str):
            self.mlp = shlex.split(self.mlp)
        self.mlp = [str(a) for a in self.mlp]
        if not self.mlp:
            raise ValueError("mlp command is empty")
        if isinstance(self.setup, str):
            raise ValueError("mlip3.setup must be a list of shell lines, got a string")
        self.setup = [str(x) for x in self.setup]
        if self.al_mode not in ("cfg", "nbh"):
            raise ValueError(f"al_mode must be 'cfg' or 'nbh', got {self.al_mode!r}")
        if self.start not in ("warm", "template"):
            raise ValueError(f"start must be 'warm' or 'template', got {self.start!r}")
        if isinstance(self.restarts, bool) or int(self.restarts) != self.restarts \
                or self.restarts < 0:
            raise ValueError(f"restarts must be an integer >= 0, got {self.restarts!r}")
        self.restarts = int(self.restarts)
        if self.template is not None:
            self.template = Path(self.template)
        if self.templates_dir is not None:
            self.templates_dir = Path(self.templates_dir)

    def with_fit(self, ts: TrainSettings) -> Mlip3Settings:
        """These settings with the fit parameters the train stage passes (motep's
        TrainSettings, shared by both trainers): level, cutoffs, basis, weights, al_mode,
        restarts, and max_iter as the iteration limit."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(level=ts.level, min_dist=ts.min_dist, max_dist=ts.max_dist,
                      radial_basis_size=ts.radial_basis_size, iteration_limit=ts.max_iter,
                      energy_weight=ts.energy_weight, force_weight=ts.force_weight,
                      stress_weight=ts.stress_weight, al_mode=ts.al_mode,
                      restarts=ts.restarts, screen=ts.screen,
                      min_dist_update=ts.min_dist_update)
        return Mlip3Settings(**values)

    def template_path(self) -> Path:
        """The untrained template this fit starts from."""
        if self.template is not None:
            return self.template
        if self.templates_dir is not None:
            return self.templates_dir / f"{self.level:02d}.almtp"
        raise Mlip3Error("train", "no MTP template: set the template file or the MLIP-3 "
                         "MTP_templates folder (templates_dir) in the config")


def check_template(path: Path, level: int | None = None) -> None:
    """ValueError unless `path` is an .almtp that MLIP-3 can load (formats/almtp.py reads
    its header as mlp would) and, when `level` is given, of that MTP level when the file
    says (the template <templates_dir>/<level>.almtp must be that level's)."""
    try:
        head = read_almtp_header(path)
    except FormatError as exc:
        raise ValueError(f"not an MTP potential or template: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror})") from None
    if level is not None and head.level is not None and head.level != level:
        raise ValueError(f"{path} is a level-{head.level} MTP, trainer.level is {level}")


def _num(x: float) -> str:
    """A number for ``--key=value``: exact (repr), integers without a fraction."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


# --------------------------------------------------------------------------- running mlp


@dataclass
class MlpRun:
    """One finished ``mlp`` call: its argv, folder, exit status and captured output."""

    argv: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    log: Path  # stdout
    err: Path  # stderr
    seconds: float


_NO_COMMAND = re.compile(r"Error: command (\S+) does not exist\.")
_ARG_COUNT = re.compile(r"^\s*(?:mlp \w+: |Error: )?(?:at least )?\d+ arguments? (?:are )?"
                        r"required.*$", re.MULTILINE)
_CANT_OPEN = re.compile(r"^Can not open a file with configurations.*$", re.MULTILINE)


def _run(mlp: Sequence[str], args: Sequence[str], cwd: Path, name: str,
         timeout: float | None, setup: Sequence[str] = ()) -> MlpRun:
    """Run ``mlp`` (argv list, no shell; after the `setup` lines, see
    engines/process.with_setup) in `cwd`, stdout/stderr to `<name>.log/.err`.

    mlp runs in its own process group so that a timeout or an interrupt stops it with
    everything it started (``mpirun`` ranks). The run's argv is mlp's, without the setup
    wrapper.
    """
    argv = [*map(str, mlp), *map(str, args)]
    command = str(args[0]) if args else "?"
    log, err = cwd / f"{name}.log", cwd / f"{name}.err"
    t0 = time.perf_counter()
    try:
        code = run_logged(with_setup(argv, setup, "smallcell-mlp"), cwd, log, err, timeout,
                          grace=_KILL_GRACE)
    except ProgramNotFound as exc:
        what = "not executable" if exc.not_executable else "executable not found"
        raise Mlip3Error(command, f"{what}: {exc.program!r} (set the mlp command in the "
                         "config)", argv=argv, cwd=cwd) from None
    if code is None:
        raise Mlip3Error(command, f"timed out after {timeout:g} s (killed)", argv=argv,
                         cwd=cwd, log=log)
    return MlpRun(argv, cwd, code, log.read_text(errors="replace"),
                  err.read_text(errors="replace"), log, err, time.perf_counter() - t0)


def _error_line(text: str) -> str:
    """The line of an MLIP-3 error message that says what went wrong."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    for x in lines:
        if "ERROR" in x or "MlipException" in x or "Error" in x:
            return x[:300]
    return lines[0][:300] if lines else "(nothing on stderr)"


def _judge(run: MlpRun, *, expect: str | None = None, outputs: Iterable[Path] = (),
           log_dir: Path | None = None) -> None:
    """Raise Mlip3Error unless `run` succeeded: by signal, mlp's own error texts (which come
    with exit status 0), exit status, the text a complete run prints, and its files.
    `log_dir`: where the logs will be kept, when not in the folder mlp ran in."""
    command = _command_of(run)
    log = run.err if run.stderr.strip() else run.log
    if log_dir is not None:
        log = log_dir / log.name

    def fail(reason: str) -> Mlip3Error:
        return Mlip3Error(command, reason, argv=run.argv, cwd=run.cwd, log=log,
                          returncode=run.returncode)

    if run.returncode < 0:
        try:
            name = signal.Signals(-run.returncode).name
        except ValueError:
            name = f"signal {-run.returncode}"
        raise fail(f"killed by {name}" + (f": {_error_line(run.stderr)}"
                                          if run.stderr.strip() else ""))
    m = _NO_COMMAND.search(run.stdout)
    if m:
        raise fail(f"this mlp has no command {m.group(1)!r} ({m.group(0)})")
    m = _ARG_COUNT.search(run.stdout)
    if m:
        raise fail(f"wrong number of arguments ({m.group(0).strip()}); options must be "
                   "written --key=value")
    m = _CANT_OPEN.search(run.stdout)  # check_errors: this message, then exit status 9 on
    if m:                              # "Input stream is not open"; the message names it
        raise fail(m.group(0).strip())
    if run.returncode == 9 or "ERROR" in run.stderr or "MlipException" in run.stderr:
        raise fail(f"MLIP-3 error (exit status {run.returncode}): "
                   f"{_error_line(run.stderr or run.stdout)}")
    if run.returncode != 0:
        hint = ("; check the mlp command and setup lines in the config"
                if run.returncode in (126, 127) else "")
        raise fail(f"exit status {run.returncode}: {_error_line(run.stderr)}{hint}")
    if expect is not None and expect not in run.stdout:
        raise fail(f"{expect!r} missing from its output: mlp stopped early")
    for path in outputs:
        if not path.exists():
            raise fail(f"exit status 0 but no output file {path.name}")


_COMMANDS = ("train", "calculate_grade", "select_add", "check_errors", "calculate_efs",
             "convert", "relax", "mindist", "cut_extrapolative_nbh", "help", "list")


def _command_of(run: MlpRun) -> str:
    """The mlp command of a run: the first argument after the (possibly mpirun-wrapped)
    program that is not an option of the launcher."""
    for a in run.argv:
        if a in _COMMANDS:
            return a
    return Path(run.argv[0]).name


def call_mlp(mlp: Sequence[str], args: Sequence[str], cwd: str | os.PathLike[str], *,
             name: str | None = None, timeout: float | None = None,
             expect: str | None = None, outputs: Iterable[str] = (),
             setup: Sequence[str] = ()) -> MlpRun:
    """Run ``mlp <args>`` in `cwd` (after the `setup` lines) and judge it (see
    :func:`_judge`); `outputs` are file names relative to `cwd` that a successful call
    must leave behind."""
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    run = _run(mlp, args, cwd, name or (str(args[0]) if args else "mlp"), timeout, setup)
    _judge(run, expect=expect, outputs=[cwd / o for o in outputs])
    return run


# --------------------------------------------------------------------------- log parsers

_BFGS = re.compile(r"^BFGS iter (\d+): f=(\S+)\s*$", re.MULTILINE)
# serial: "MTPR serial(?!?) training started"; MPI: "MTPR training started on 2 core(s)"
# (src/mtpr_trainer.cpp NonLinOptimize); the pre-training and the fit each print one
_PHASE = re.compile(r"^MTPR .*training started(?: on \d+ core\(s\))?\s*$")
_REPORT_BLOCKS = {
    "Energy": "energy",
    "Energy per atom": "energy_per_atom",
    "Forces": "forces",
    "Stresses (in energy units)": "stresses",
    "Stresses (in eV)": "stresses",  # older MLIP builds
    "Virial stresses (in pressure units)": "virial",
    "Stresses (in GPa)": "virial",  # older MLIP builds
}
_REPORT_FIELDS = {
    "Maximal absolute difference": "max",
    "Average absolute difference": "mean",
    "RMS absolute difference": "rms",
    "Max(ForceDiff) / Max(Force)": "max_rel",
    "RMS(ForceDiff) / RMS(Force)": "rms_rel",
    "Max(StresDiff) / Max(Stres)": "max_rel",
    "RMS(StresDiff) / RMS(Stres)": "rms_rel",
}
_CHECKED = re.compile(r"^Errors checked for (\d+) (configurations|atoms)$")


def _float(tok: str) -> float:
    """A number as MLIP-3 prints it (``-nan`` and ``inf`` included)."""
    t = tok.strip().lower()
    if t in ("nan", "-nan", "+nan"):
        return math.nan
    return float(t)


def parse_errors_report(text: str) -> dict[str, dict[str, float]] | None:
    """The last "Errors report" of a train/check_errors output, as
    {block: {count, max, mean, rms[, max_rel, rms_rel]}} with blocks energy,
    energy_per_atom, forces (per-atom |ΔF|, eV/Å), stresses (virial, eV), virial (GPa).
    None when the text has no report."""
    start = text.rfind("Errors report")
    if start < 0:
        return None
    out: dict[str, dict[str, float]] = {}
    block: dict[str, float] | None = None
    for raw in text[start:].splitlines()[1:]:
        line = raw.strip()
        if line.startswith("____"):
            break
        if not line:
            continue
        if not raw[:1].isspace() and line.endswith(":"):
            name = _REPORT_BLOCKS.get(line[:-1])
            block = out.setdefault(name, {}) if name else None
            continue
        if block is None:
            continue
        m = _CHECKED.match(line)
        if m:
            block["count"] = float(m.group(1))
            continue
        key, sep, value = line.partition("=")
        if sep:
            name = _REPORT_FIELDS.get(" ".join(key.split()))
            if name:
                block[name] = _float(value)
    return out


def errors_from_report(report: dict[str, dict[str, float]]) -> dict[str, float]:
    """The error keys the stages and summaries use (same keys as the motep trainer):
    energy_* per atom (eV/atom), force_* from MLIP-3's per-atom |F_ref - F_ML| (eV/Å, the
    design's definition), stress_* from the virial block in GPa (Frobenius norm of the 3x3
    difference). Blocks that checked nothing are left out."""
    out: dict[str, float] = {}
    epa = report.get("energy_per_atom", {})
    if epa.get("count", 0) > 0:
        out["n_configs"] = epa["count"]
        out.update(energy_rmse=epa.get("rms", math.nan), energy_mae=epa.get("mean", math.nan),
                   energy_max=epa.get("max", math.nan))
    frc = report.get("forces", {})
    if frc.get("count", 0) > 0:
        out.update(force_rmse=frc.get("rms", math.nan), force_mae=frc.get("mean", math.nan),
                   force_max=frc.get("max", math.nan), n_atoms=frc["count"])
    vir = report.get("virial", {})
    if vir.get("count", 0) > 0:
        out.update(stress_rmse=vir.get("rms", math.nan), stress_mae=vir.get("mean", math.nan),
                   stress_max=vir.get("max", math.nan))
    return out


@dataclass
class TrainLog:
    """What ``mlp train`` printed: one loss history per optimisation run (MLIP-3 pre-trains
    an untrained template first), whether each stopped at the iteration limit, the errors
    report, and whether it reached "training complete"."""

    phases: list[list[float]]
    hit_limit: list[bool]
    report: dict[str, dict[str, float]] | None
    n_configs: int | None
    complete: bool

    @property
    def loss_history(self) -> list[float]:
        """The final optimisation's loss per BFGS iteration."""
        return self.phases[-1] if self.phases else []

    @property
    def iterations(self) -> int:
        return len(self.loss_history)

    @property
    def converged(self) -> bool:
        """The final optimisation stopped before its iteration limit (tolerance reached)."""
        return bool(self.phases) and not self.hit_limit[-1]


def parse_train_log(text: str) -> TrainLog:
    """Parse ``mlp train`` stdout (format of fixtures generated/train_cfg.log)."""
    phases: list[list[float]] = []
    limit: list[bool] = []
    n_configs = None
    for line in text.splitlines():
        s = line.strip()
        if _PHASE.match(s):
            phases.append([])
            limit.append(False)
            continue
        m = _BFGS.match(s)
        if m:
            if not phases:
                phases.append([])
                limit.append(False)
            phases[-1].append(_float(m.group(2)))
            continue
        if s == "step limit reached" and limit:
            limit[-1] = True
            continue
        m = re.match(r"^(\d+) configurations found in the training set$", s)
        if m:
            n_configs = int(m.group(1))
    complete = any(x.strip() == "training complete" for x in text.splitlines())
    return TrainLog(phases, limit, parse_errors_report(text), n_configs, complete)


_ERRLOG = re.compile(r"^Errors: cfg# (\d+)\t(.*)$")
_ERRLOG_KEYS = {
    "#atoms": "atoms",
    "Diff(ene)": "energy_diff",  # signed E_ML - E_ref (eV)
    "Diff(epa)": "energy_per_atom_diff",  # |ΔE| / N (eV/atom)
    "RMS(force)": "force_rms",  # RMS over atoms of |ΔF| (eV/Å)
    "MAX(force)": "force_max",
    "Rel(force)": "force_rel",
    "Diff(stress)": "stress_diff",  # Frobenius norm of the virial-stress difference (GPa)
    "Rel(stress)": "stress_rel",
}


def parse_errors_log(text: str) -> list[dict[str, float]]:
    """Per-configuration lines of ``check_errors --log`` (``Errors: cfg# 1\\t#atoms: 2\\t
    Diff(ene):...``), one dict per line in file order with key ``cfg`` (1-based)."""
    rows: list[dict[str, float]] = []
    for line in text.splitlines():
        m = _ERRLOG.match(line.strip("\r\n"))
        if not m:
            continue
        row: dict[str, float] = {"cfg": float(m.group(1))}
        for item in m.group(2).split("\t"):
            key, sep, value = item.partition(":")
            name = _ERRLOG_KEYS.get(key.strip())
            if sep and name:
                row[name] = _float(value)
        rows.append(row)
    return rows


_GRADE = re.compile(r"^Sampling: cfg# (\d+)\tgrade: (\S+)\s*$", re.MULTILINE)


def parse_grade_log(text: str) -> list[float]:
    """Grades of a calculate_grade log (``Sampling: cfg# 1\\tgrade: 7.36151``) in cfg# order
    (6 significant digits: the output cfg's ``MV_grade`` feature is the precise value)."""
    found = {int(n): _float(g) for n, g in _GRADE.findall(text)}
    return [found[k] for k in sorted(found)]


_INCREASED = re.compile(r"Training set was increased by (\d+) configurations")


def parse_select_add_log(text: str) -> int | None:
    """N of select_add's last line "Training set was increased by N configurations"."""
    m = _INCREASED.findall(text)
    return int(m[-1]) if m else None


# --------------------------------------------------------------------------- train


def _prepare_template(settings: Mlip3Settings, species: Sequence[str], dst: Path) -> Path:
    """Copy the untrained template with species_count/min_dist/max_dist/radial_basis_size
    set from the config (the lines upstream's readme says to edit)."""
    src = settings.template_path()
    if not src.is_file():
        raise Mlip3Error("train", f"MTP template not found: {src}")
    head = read_almtp_header(src)
    if head.trained:
        raise Mlip3Error("train", f"template {src} is a trained potential; a fresh fit needs "
                         "an untrained template (MLIP-3 MTP_templates/NN.almtp)")
    if head.level is not None and head.level != settings.level:
        raise Mlip3Error("train", f"template {src} is level {head.level}, the config asks "
                         f"for level {settings.level}")
    text = src.read_bytes().decode("utf-8")
    if "#" in text:  # mlp train takes any '#' for the start of selection data
        raise Mlip3Error("train", f"template {src} contains '#': mlp train would read what "
                         "follows as active-learning state; remove it")
    dst.write_bytes(set_template_fields(
        text, species_count=len(species), min_dist=settings.min_dist,
        max_dist=settings.max_dist, radial_basis_size=settings.radial_basis_size,
        path=str(src)).encode("utf-8"))
    return dst


def _as_settings(settings: Mlip3Settings | TrainSettings | None,
                 base: Mlip3Settings | None = None) -> Mlip3Settings:
    base = base or Mlip3Settings()
    if settings is None:
        return base
    if isinstance(settings, Mlip3Settings):
        return settings
    if isinstance(settings, TrainSettings):
        return base.with_fit(settings)
    raise TypeError(f"settings must be Mlip3Settings or TrainSettings, got {type(settings)}")


SCREEN = 100  # with restarts, every start runs this many iterations; the lowest loss goes on


def train(images: Sequence[Atoms], species: Sequence[str], out_dir: Path,
          settings: Mlip3Settings, start: Path | None) -> TrainResult:
    """Fit with ``mlp train`` on `images`; write pot.almtp, train.log (mlp's stdout) and
    train.err into `out_dir`.

    Runs in a scratch folder inside `out_dir` (mlp writes where it runs), renames
    pot.almtp into place last, so a killed fit leaves the previous state untouched. Starts
    from `start` (warm) unless settings.start is "template" or there is none.

    With ``settings.restarts`` = k, k more fits start from the template with
    ``--init_random=true`` (MLIP-3 draws the radial coefficients at random); every start
    (the usual one included) runs SCREEN iterations, each in its own scratch subfolder,
    and the lowest final loss goes on alone, from the potential it saved (a warm start),
    for the rest of the iteration limit unless it converged. A failed start loses; when
    every start fails, the first error is raised. train.log then holds every attempt's
    output under a "# attempt k: <label>: loss <x> after <n> iterations" line ("(kept)"
    for the winner, whose continuation follows "# continued"), as the motep trainer writes
    it. Why: MTP fits have local minima and a warm start stays in its basin.
    Restarts are NOT reproducible: MLIP-3 seeds its random initialisation from
    std::random_device (src/mtpr_trainer.cpp), and mlp has no seed option.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".mlp.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        return _train_in(work, images, species, out_dir, settings, start)
    except Mlip3Error as exc:
        if exc.log is None or exc.log.parent != work:
            raise
        raise Mlip3Error(exc.command, exc.reason, argv=exc.argv, cwd=exc.cwd,
                         log=out_dir / exc.log.name, returncode=exc.returncode) from None
    finally:
        for name in ("train.log", "train.err"):  # kept beside the stage, success or not
            if (work / name).exists():
                os.replace(work / name, out_dir / name)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Fit:
    """One successful ``mlp train``: its run, parsed output, training errors and the
    potential it wrote (in run.cwd)."""

    run: MlpRun
    parsed: TrainLog
    errors: dict[str, float]
    header: AlmtpHeader
    state: SelectionState

    @property
    def loss(self) -> float:
        """The last loss of the final optimisation (the last BFGS f; nan without one)."""
        h = self.parsed.loss_history
        return h[-1] if h else math.nan

    @property
    def rank(self) -> float:
        """The loss to compare: a missing or non-finite loss loses to any other."""
        return self.loss if math.isfinite(self.loss) else math.inf


def _mlp_train(settings: Mlip3Settings, cwd: Path, src: Path, train_cfg: str, limit: int,
               out_dir: Path, *, al_mode: bool, init_random: bool = False) -> _Fit:
    """Run ``mlp train src train_cfg`` in `cwd` (pot.almtp written there) and check what
    it printed and wrote; Mlip3Error names the log as it will be in `out_dir`."""
    args = ["train", str(src), train_cfg, f"--save_to={POT}",
            f"--iteration_limit={int(limit)}",
            f"--tolerance={_num(settings.tolerance)}",
            f"--energy_weight={_num(settings.energy_weight)}",
            f"--force_weight={_num(settings.force_weight)}",
            f"--stress_weight={_num(settings.stress_weight)}"]
    if settings.weight_scaling is not None:
        args.append(f"--weight_scaling={int(settings.weight_scaling)}")
    if al_mode:  # only an untrained template takes it; a trained file keeps its mode
        args.append(f"--al_mode={settings.al_mode}")
    if init_random:
        args.append("--init_random=true")
    if not settings.min_dist_update:
        args.append("--no_mindist_update=true")
    try:
        run = _run(settings.mlp, args, cwd, "train", settings.timeout, settings.setup)
    except Mlip3Error as exc:  # timed out: its log will be beside the stage
        if exc.log is None or exc.log.parent != cwd:
            raise
        raise Mlip3Error(exc.command, exc.reason, argv=exc.argv, cwd=exc.cwd,
                         log=out_dir / exc.log.name, returncode=exc.returncode) from None
    log_at = out_dir / "train.log"  # where the log will be when the error is read

    def fail(reason: str) -> Mlip3Error:
        return Mlip3Error("train", reason, argv=run.argv, cwd=cwd, log=log_at,
                          returncode=run.returncode)

    _judge(run, expect="training complete", outputs=[cwd / POT], log_dir=out_dir)
    parsed = parse_train_log(run.stdout)
    if parsed.report is None:
        raise fail("no errors report in its output")
    errors = errors_from_report(parsed.report)
    for key in ("energy_rmse", "force_rmse"):
        if key not in errors:
            raise fail(f"errors report has no {key.split('_')[0]} block with data "
                       "(no energies/forces in the training set?)")
    if not all(math.isfinite(v) for v in errors.values()):
        raise fail(f"training diverged: non-finite training errors {errors}")
    try:
        header = read_almtp_header(cwd / POT)
        state = read_selection_state(cwd / POT)
    except FormatError as exc:
        raise fail(f"wrote an unreadable potential ({exc})") from None
    if not header.trained or state is None:
        raise fail("the potential it wrote has no coefficients or no active-learning state")
    if al_mode and header.al_mode != settings.al_mode:
        raise fail(f"asked for --al_mode={settings.al_mode}, the potential it wrote selects "
                   f"in {header.al_mode} mode")
    return _Fit(run, parsed, errors, header, state)


def _train_in(work: Path, images: Sequence[Atoms], species: Sequence[str], out_dir: Path,
              settings: Mlip3Settings, start: Path | None) -> TrainResult:
    n = write_cfgs(work / TRAIN_CFG, (atoms_to_cfg(a, species) for a in images))
    if n == 0:
        raise Mlip3Error("train", "no training configurations")
    from_template = settings.start == "template" or start is None
    if not from_template:
        assert start is not None
        head = read_almtp_header(start)
        if not head.trained:
            raise Mlip3Error("train", f"warm start from {start}: not a trained potential")
        if head.al_mode is not None and head.al_mode != settings.al_mode:
            raise Mlip3Error("train", f"warm start from {start}, which selects in "
                             f"{head.al_mode} mode, but al_mode is {settings.al_mode}: "
                             "MLIP-3 keeps the mode of the file; start from the template "
                             "to change it")
        src = Path(start).resolve()
    else:
        src = _prepare_template(settings, species, work / "template.almtp")
    if settings.restarts:
        return _train_restarts(work, species, out_dir, settings, src, from_template)
    fit = _mlp_train(settings, work, src, TRAIN_CFG, settings.iteration_limit, out_dir,
                     al_mode=from_template)
    os.replace(work / POT, out_dir / POT)
    return _result(settings, [fit], fit.run.seconds, from_template, src, "")


def _result(settings: Mlip3Settings, phases: list[_Fit], seconds: float,
            from_template: bool, src: Path, note: str,
            extra: dict[str, object] | None = None) -> TrainResult:
    """The TrainResult of a fit run as `phases` (a screened start, then its continuation
    if any); the last phase wrote the potential."""
    first, last = phases[0], phases[-1]
    message = ("iteration limit reached" if last.parsed.phases and last.parsed.hit_limit[-1]
               else "converged (tolerance reached)" if last.parsed.phases else "")
    return TrainResult(
        seconds=seconds,
        iterations=sum(p.parsed.iterations for p in phases),
        converged=last.parsed.converged,
        loss_history=[x for p in phases for x in p.parsed.loss_history],
        errors=last.errors,
        active_set_size=last.state.size,
        active_set_configs=last.state.n_configs,
        message=message + note,
        extra={
            "engine": "mlip3",
            "start": "template" if from_template else "warm",
            "start_file": str(src) if not from_template else str(settings.template_path()),
            "al_mode": last.header.al_mode,
            "level": last.header.level,
            "min_dist": last.header.min_dist,
            "max_dist": last.header.max_dist,
            "pretrain_history": [x for p in first.parsed.phases[:-1] for x in p],
            "report": last.parsed.report,
            "argv": last.run.argv,
            **(extra or {}),
        },
    )


def _train_restarts(work: Path, species: Sequence[str], out_dir: Path,
                    settings: Mlip3Settings, src: Path, from_template: bool) -> TrainResult:
    """The usual start and settings.restarts random-initialised ones, SCREEN iterations
    each in work/attempt<k>/; the lowest loss continues in work/continued/ (see train)."""
    template = src if from_template else _prepare_template(settings, species,
                                                           work / "template.almtp")
    plan = [(src.resolve(), from_template, False, "template" if from_template
             else "warm start")]
    plan += [(template.resolve(), True, True, f"template, random initialisation {k}")
             for k in range(1, settings.restarts + 1)]
    # unscreened (the final refit): every start runs the whole limit, the lowest loss wins
    screen = min(SCREEN, int(settings.iteration_limit)) if settings.screen \
        else int(settings.iteration_limit)
    train_cfg = str((work / TRAIN_CFG).resolve())
    outcomes: list[_Fit | Mlip3Error] = []
    best: int | None = None
    t0 = time.perf_counter()
    try:
        for k, (path, al_mode, init_random, _label) in enumerate(plan):
            folder = work / f"attempt{k}"
            folder.mkdir()
            try:
                outcomes.append(_mlp_train(settings, folder, path, train_cfg, screen, out_dir,
                                           al_mode=al_mode, init_random=init_random))
            except Mlip3Error as exc:
                outcomes.append(exc)
        fits = {k: o for k, o in enumerate(outcomes) if isinstance(o, _Fit)}
        if not fits:
            raise next(o for o in outcomes if isinstance(o, Mlip3Error))
        best = min(fits, key=lambda k: fits[k].rank)  # the first of equals
        kept = fits[best]
        phases = [kept]
        if kept.parsed.phases and not kept.parsed.converged \
                and settings.iteration_limit > screen:
            folder = work / "continued"
            folder.mkdir()
            phases.append(_mlp_train(settings, folder, (work / f"attempt{best}" / POT).resolve(),
                                     train_cfg, int(settings.iteration_limit) - screen,
                                     out_dir, al_mode=False))
        os.replace(phases[-1].run.cwd / POT, out_dir / POT)
    finally:
        _write_attempt_logs(work, [p[3] for p in plan], outcomes, best)
    attempts: list[dict[str, object]] = []
    for (_p, _a, _r, name), o in zip(plan, outcomes, strict=True):
        if isinstance(o, _Fit):
            attempts.append({"start": name, "loss": o.loss, "converged": o.parsed.converged})
        else:
            attempts.append({"start": name, "loss": None, "converged": False,
                             "error": str(o)})
    return _result(settings, phases, time.perf_counter() - t0, from_template or best > 0, src,
                   f"; best of {len(plan)} fits: {plan[best][3]}",
                   {"attempts": attempts, "screen_iterations": screen,
                    "continued": len(phases) > 1})


def _write_attempt_logs(work: Path, labels: Sequence[str],
                        outcomes: Sequence[_Fit | Mlip3Error], best: int | None) -> None:
    """work/train.log and train.err: every attempt's output under its header line, the
    continuation after the kept one's (the motep trainer's layout)."""
    bar = "#" * 72

    def text(path: Path) -> str:
        t = path.read_text(errors="replace") if path.is_file() else ""
        return t if not t or t.endswith("\n") else t + "\n"

    for name in ("train.log", "train.err"):
        parts = []
        for k, label in enumerate(labels):
            o = outcomes[k] if k < len(outcomes) else None
            if o is None and not (work / f"attempt{k}").is_dir():
                break
            if o is None:  # interrupted while it ran
                head = f"# attempt {k}: {label}: interrupted"
            elif isinstance(o, _Fit):
                head = (f"# attempt {k}: {label}: loss {o.loss:.6g} after "
                        f"{o.parsed.iterations} iterations"
                        + (" (kept)" if k == best else ""))
            else:
                head = f"# attempt {k}: {label}: failed: {o.reason}"
            parts.append(f"{bar}\n{head}\n{text(work / f'attempt{k}' / name)}")
            if k == best and (work / "continued").is_dir():
                parts.append(f"{bar}\n# continued\n{text(work / 'continued' / name)}")
        (work / name).write_text("".join(parts), encoding="utf-8")


# --------------------------------------------------------------------------- grading


def _rank_files(path: Path) -> list[Path]:
    """`path` itself if present, then `path.<rank>` in rank order (MPI builds)."""
    files = [path] if path.is_file() else []
    ranks = []
    if path.parent.is_dir():
        stem = path.name + "."
        for p in path.parent.iterdir():
            rank = p.name[len(stem):]
            if p.name.startswith(stem) and rank.isdigit() and rank.isascii():
                ranks.append((int(rank), p))
    return files + [p for _, p in sorted(ranks)]


def _remove_outputs(path: Path) -> None:
    for p in _rank_files(path):
        p.unlink()


def _count_cfgs(path: Path) -> int:
    return sum(1 for _ in iter_cfgs(path))


def read_graded(out_path: Path, n: int) -> list[Cfg]:
    """calculate_grade's output (serial `out`, or MPI `out.0`, `out.1`, ...) as one list in
    input order, by ``Feature ID``; ValueError names what is missing."""
    by_id: dict[int, Cfg] = {}
    files = _rank_files(Path(out_path))
    for f in files:
        for cfg in iter_cfgs(f):
            ident = cfg.feature("ID")
            if ident is None or not ident.strip().isdigit():
                raise ValueError(f"{f}: a configuration without 'Feature ID'")
            k = int(ident)
            if k in by_id:
                raise ValueError(f"{f}: configuration ID {k} appears twice")
            if cfg.mv_grade is None:
                raise ValueError(f"{f}: configuration ID {k} has no MV_grade")
            by_id[k] = cfg
    missing = [k for k in range(n) if k not in by_id]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        names = ", ".join(p.name for p in files) or "no output file"
        raise ValueError(f"grades for {n - len(missing)} of {n} configurations in {names} "
                         f"(missing IDs {shown}: an MPI rank's file missing?)")
    extra = sorted(set(by_id) - set(range(n)))
    if extra:
        raise ValueError(f"unexpected configuration IDs {extra[:10]} (input has {n})")
    return [by_id[k] for k in range(n)]


def _calculate_grade_cfgs(pot: Path, cfgs_path: Path, out_path: Path, *,
                          mlp: Sequence[str], timeout: float | None,
                          setup: Sequence[str] = ()) -> list[Cfg]:
    out_path = Path(out_path)
    folder = out_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_outputs(out_path)
    n = _count_cfgs(cfgs_path)
    run = _run(mlp, ["calculate_grade", str(Path(pot).resolve()),
                     str(Path(cfgs_path).resolve()), out_path.name],
               folder, "calculate_grade", timeout, setup)
    _judge(run, expect="Grade evaluation complete")
    try:
        return read_graded(out_path, n)
    except (ValueError, FormatError) as exc:
        raise Mlip3Error("calculate_grade", str(exc), argv=run.argv, cwd=folder,
                         log=run.log) from None


def calculate_grade(pot: str | os.PathLike[str], cfgs_path: str | os.PathLike[str],
                    out_path: str | os.PathLike[str], *, mlp: Sequence[str] = ("mlp",),
                    timeout: float | None = None, setup: Sequence[str] = ()) -> list[float]:
    """MV grade of every configuration of `cfgs_path`, in input order (``mlp
    calculate_grade``; MPI rank files merged). The graded configurations stay in
    `out_path` (or its rank files); logs go beside it."""
    cfgs = _calculate_grade_cfgs(Path(pot), Path(cfgs_path), Path(out_path), mlp=mlp,
                                 timeout=timeout, setup=setup)
    return [float(c.mv_grade) for c in cfgs]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- select_add


def _same_cfg(a: Cfg, b: Cfg, atol: float) -> bool:
    if a.natoms != b.natoms or not np.array_equal(a.types, b.types):
        return False
    if not np.allclose(a.positions, b.positions, rtol=0.0, atol=atol):
        return False
    if (a.cell is None) != (b.cell is None):
        return False
    return a.cell is None or (a.cell.shape == b.cell.shape  # type: ignore[union-attr]
                              and np.allclose(a.cell, b.cell, rtol=0.0, atol=atol))


def match_selected(selected: Sequence[Cfg], candidates: Sequence[Cfg], *,
                   atol: float = 2e-6) -> list[int]:
    """Index in `candidates` of every configuration select_add wrote, by the
    ``smallcell_candidate`` tag, else by atoms, types and coordinates (mlp writes 6
    decimals, hence `atol`). ValueError when one cannot be matched."""
    used: set[int] = set()
    out: list[int] = []
    for j, cfg in enumerate(selected):
        tag = cfg.feature(TAG)
        if tag is not None and tag.strip().isdigit():
            k = int(tag)
            if not 0 <= k < len(candidates) or candidates[k].natoms != cfg.natoms:
                raise ValueError(f"selected configuration {j + 1} carries {TAG} {k}, which "
                                 f"is not one of the {len(candidates)} candidates")
        else:
            k = next((i for i, c in enumerate(candidates)
                      if i not in used and _same_cfg(cfg, c, atol)), -1)
            if k < 0:
                raise ValueError(f"selected configuration {j + 1} ({cfg.natoms} atoms) "
                                 "matches no candidate")
        used.add(k)
        out.append(k)
    return out


def select_add(pot: str | os.PathLike[str], train_cfg: str | os.PathLike[str] | None,
               candidates_cfg: str | os.PathLike[str], out_cfg: str | os.PathLike[str], *,
               mlp: Sequence[str] = ("mlp",), timeout: float | None = None,
               threshold: float | None = None, swap_limit: int | None = None,
               setup: Sequence[str] = ()) -> list[int]:
    """Indices (into `candidates_cfg`, in the order mlp wrote them) of the candidates that
    ``mlp select_add`` adds to the training set; they are written to `out_cfg` as mlp wrote
    them (with ``Feature selected_eqn_inds``). `train_cfg` None: an empty training set, so
    the selection rests on the active set stored in `pot`."""
    out_cfg = Path(out_cfg)
    folder = out_cfg.parent
    folder.mkdir(parents=True, exist_ok=True)
    cands = read_cfgs(candidates_cfg)
    tagged = folder / f"{out_cfg.name}.candidates.cfg"
    for k, c in enumerate(cands):
        c.set_feature(TAG, str(k))
    write_cfgs(tagged, cands)
    if train_cfg is None:
        train_path = folder / f"{out_cfg.name}.empty_train.cfg"
        train_path.write_text("")
    else:
        train_path = Path(train_cfg).resolve()
    _remove_outputs(out_cfg)
    args = ["select_add", str(Path(pot).resolve()), str(train_path), tagged.name,
            out_cfg.name]
    if threshold is not None:
        args.append(f"--threshold={_num(threshold)}")
    if swap_limit is not None:
        args.append(f"--swap_limit={int(swap_limit)}")
    run = _run(mlp, args, folder, "select_add", timeout, setup)
    _judge(run, expect="Training set was increased by", outputs=[out_cfg])
    try:
        selected = read_cfgs(out_cfg)
        reported = parse_select_add_log(run.stdout)
        if reported != len(selected):
            raise ValueError(f"it reports {reported} configurations added but wrote "
                             f"{len(selected)} to {out_cfg.name}")
        indices = match_selected(selected, cands)
    except (ValueError, FormatError) as exc:
        raise Mlip3Error("select_add", str(exc), argv=run.argv, cwd=folder,
                         log=run.log) from None
    for c in selected:  # out_cfg as mlp would write it for untagged candidates
        c.features = [(k, v) for k, v in c.features if k != TAG]
    tmp = folder / f".{out_cfg.name}.tmp"
    write_cfgs(tmp, selected)
    os.replace(tmp, out_cfg)
    tagged.unlink()
    if train_cfg is None:
        train_path.unlink()
    return indices


# --------------------------------------------------------------------------- check_errors


def check_errors(pot: str | os.PathLike[str], cfg: str | os.PathLike[str], *,
                 mlp: Sequence[str] = ("mlp",), timeout: float | None = None,
                 out_dir: str | os.PathLike[str] | None = None,
                 setup: Sequence[str] = ()) -> dict[str, Any]:
    """Errors of `pot` on the labelled configurations of `cfg` (``mlp check_errors``): the
    summary keys of :func:`errors_from_report`, plus ``report`` (every block of the errors
    report) and ``per_config`` (the per-configuration log lines, in file order, ``cfg``
    numbering them 1..N). Files go to `out_dir` (default: beside `cfg`).

    MPI (rank files ``check_errors.percfg.<rank>``): MLIP-3 gives configuration k to rank
    k % ranks and, when the count is not a multiple of the ranks, lets each rank that got
    one fewer compare a configuration with itself (src/mlp/mlp_commands.cpp, check_errors):
    a ``#atoms: 0`` line with zero errors, counted in the report. Those lines are dropped
    and the report's counts, means and RMS are corrected (:func:`_unpad_report`); the
    rank files are merged in input order when their lines fit that share (atom counts
    checked), else left rank after rank with their own ``cfg#``."""
    folder = Path(out_dir) if out_dir is not None else Path(cfg).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    report_path = folder / "check_errors.report"
    per_path = folder / "check_errors.percfg"
    _remove_outputs(report_path)
    _remove_outputs(per_path)
    run = _run(mlp, ["check_errors", str(Path(pot).resolve()), str(Path(cfg).resolve()),
                     f"--report_to={report_path.name}", f"--log={per_path.name}"],
               folder, "check_errors", timeout, setup)
    _judge(run, outputs=[report_path])
    report = parse_errors_report(report_path.read_text(errors="replace"))
    if report is None:
        raise Mlip3Error("check_errors", f"no errors report in {report_path.name}",
                         argv=run.argv, cwd=folder, log=run.log)
    files = _rank_files(per_path)
    if files == [per_path] or not files:  # serial
        per_cfg = parse_errors_log(per_path.read_text(errors="replace")) if files else []
        return {**errors_from_report(report), "report": report, "per_config": per_cfg}
    by_rank = [parse_errors_log(f.read_text(errors="replace")) for f in files
               if f != per_path]
    padding = sum(1 for rows in by_rank for r in rows if r.get("atoms") == 0)
    by_rank = [[r for r in rows if r.get("atoms") != 0] for rows in by_rank]
    if padding:
        report = _unpad_report(report, padding)
    per_cfg = _round_robin(by_rank, [c.natoms for c in iter_cfgs(cfg)])
    if per_cfg is None:
        per_cfg = [r for rows in by_rank for r in rows]
    return {**errors_from_report(report), "report": report, "per_config": per_cfg}


def _unpad_report(report: dict[str, dict[str, float]], padding: int
                  ) -> dict[str, dict[str, float]]:
    """The report without `padding` zero-error comparisons of an MPI check_errors: in the
    per-configuration blocks (energy, energy per atom, stresses, virial) the count drops by
    `padding` and mean and RMS grow by count/real and its square root; maxima stay (a
    zero difference is no maximum). Forces count atoms, and the padding has none. The
    stress blocks' RMS ratio also summed the padding configuration's own stress, which
    the report does not give: it is left out."""
    out = {name: dict(block) for name, block in report.items()}
    for name in ("energy", "energy_per_atom", "stresses", "virial"):
        block = out.get(name)
        if not block or block.get("count", 0) <= padding:
            continue
        count = block["count"]
        real = count - padding
        block["count"] = real
        if "mean" in block:
            block["mean"] *= count / real
        if "rms" in block:
            block["rms"] *= math.sqrt(count / real)
        block.pop("rms_rel", None)
    return out


def _round_robin(by_rank: Sequence[Sequence[dict[str, float]]], natoms: Sequence[int]
                 ) -> list[dict[str, float]] | None:
    """Per-configuration lines of an MPI check_errors in input order: line j of rank r is
    configuration j * ranks + r, numbered again 1..N. None when the lines do not fit that
    share (another count, or another number of atoms)."""
    ranks = len(by_rank)
    n = len(natoms)
    if ranks == 0 or sum(len(rows) for rows in by_rank) != n:
        return None
    out: list[dict[str, float]] = []
    for k in range(n):
        rows = by_rank[k % ranks]
        j = k // ranks
        if j >= len(rows) or int(rows[j].get("atoms", -1)) != natoms[k]:
            return None
        out.append({**rows[j], "cfg": float(k + 1)})
    return out


# --------------------------------------------------------------------------- potential


@dataclass
class Mlip3Selection:
    """Outcome of ``select_add`` as stages/select.py reads it (like maxvol.Selection)."""

    selected: list[int]  # candidates to label, highest initial grade first
    initial_grades: np.ndarray  # per candidate, from calculate_grade before selection
    cfgs: list[Cfg] = field(default_factory=list)  # mlp's output, in `selected` order


class Mlip3Potential:
    """A trained .almtp as the selector uses it: grades and D-optimal selection through
    ``mlp``. Each call works in a fresh folder under `work_dir` (default: the system
    temporary folder), removed on success and kept, named in the error, on failure."""

    def __init__(self, pot: str | os.PathLike[str], species: Sequence[str],
                 al_mode: str | None = None, *, mlp: Sequence[str] = ("mlp",),
                 train_cfg: str | os.PathLike[str] | None = None,
                 timeout: float | None = None,
                 work_dir: str | os.PathLike[str] | None = None,
                 setup: Sequence[str] = ()) -> None:
        self.pot = Path(pot).resolve()
        self.header = read_almtp_header(self.pot)
        if not self.header.has_active_set:
            raise Mlip3Error("select_add", f"{self.pot} has no active-learning state "
                             "(#MVS): only potentials written by mlp train can grade")
        self.species = list(species)
        self.al_mode = self.header.al_mode or al_mode
        self.mlp = [str(a) for a in mlp]
        self.train_cfg = Path(train_cfg).resolve() if train_cfg is not None else None
        self.timeout = timeout
        if isinstance(setup, str):
            raise ValueError("setup must be a list of shell lines, got a string")
        self.setup = [str(x) for x in setup]
        self.work_dir = Path(work_dir) if work_dir is not None else None

    @property
    def calc(self) -> object:
        """There is none: MLIP-3 evaluates potentials only in its own programs."""
        raise NotImplementedError(
            "an MLIP-3 potential has no in-process calculator: molecular dynamics with it "
            "runs in LAMMPS (pair_style mlip), which grades every step with MLIP-3 itself; "
            "use engines.trainer=motep for the embedded explorer")

    @contextlib.contextmanager
    def _folder(self):  # type: ignore[no-untyped-def]
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="mlp-", dir=self.work_dir))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)  # not reached on error: kept for the log

    def _write(self, images: Sequence[Atoms], path: Path) -> None:
        write_cfgs(path, (atoms_to_cfg(a, self.species) for a in images))

    def grade_many(self, images: Sequence[Atoms]) -> list[tuple[float, np.ndarray | None]]:
        """(gamma, per-atom grades in nbh mode else None) of each configuration."""
        if not images:
            return []
        with self._folder() as folder:
            self._write(images, folder / "in.cfg")
            cfgs = _calculate_grade_cfgs(self.pot, folder / "in.cfg", folder / "graded.cfg",
                                         mlp=self.mlp, timeout=self.timeout,
                                         setup=self.setup)
        out = []
        for c in cfgs:
            nbh = c.atom_data.get("nbh_grades")
            out.append((float(c.mv_grade),  # type: ignore[arg-type]
                        np.asarray(nbh, dtype=float) if nbh is not None else None))
        return out

    def grade(self, atoms: Atoms) -> tuple[float, np.ndarray | None]:
        """gamma of one configuration (one mlp call: grade many at once when you can)."""
        return self.grade_many([atoms])[0]

    def select(self, candidates: Sequence[Atoms], threshold: float = 1.001, *,
               batch: bool = False, limit: int | None = None) -> Mlip3Selection:
        """D-optimal selection with ``mlp select_add`` against this potential's active set
        (and its training set when known). MLIP-3 does not report the order in which
        candidates entered the active set; `selected` is ordered by initial grade, the
        order in which a greedy MaxVol starts swapping, so a cap keeps the most
        extrapolative ones. `batch` (select.policy dopt_batch) is refused when the config
        is loaded: mlp has no per-configuration selection."""
        if batch:
            raise ValueError("mlp select_add has no batch-diverse mode; use policy dopt")
        del limit  # the stage applies max_selected to the order above
        if not candidates:
            return Mlip3Selection([], np.zeros(0))
        with self._folder() as folder:
            self._write(candidates, folder / "candidates.cfg")
            graded = _calculate_grade_cfgs(self.pot, folder / "candidates.cfg",
                                           folder / "graded.cfg", mlp=self.mlp,
                                           timeout=self.timeout, setup=self.setup)
            grades = np.array([float(c.mv_grade) for c in graded])  # type: ignore[arg-type]
            picked = select_add(self.pot, self.train_cfg, folder / "candidates.cfg",
                                folder / "selected.cfg", mlp=self.mlp, timeout=self.timeout,
                                threshold=None if threshold == 1.001 else threshold,
                                setup=self.setup)
            cfgs = read_cfgs(folder / "selected.cfg")
        order = sorted(range(len(picked)), key=lambda j: -grades[picked[j]])
        return Mlip3Selection([picked[j] for j in order], grades, [cfgs[j] for j in order])


# --------------------------------------------------------------------------- trainer


class Mlip3Trainer:
    """The `Trainer` interface (engines/base.py) over ``mlp``."""

    name = "mlip3"
    files = (POT,)

    def __init__(self, settings: Mlip3Settings | None = None) -> None:
        self.settings = settings or Mlip3Settings()

    def train(self, images: Sequence[Atoms], species: Sequence[str], out_dir: Path,
              settings: Mlip3Settings | TrainSettings | None, start: Path | None
              ) -> TrainResult:
        return train(images, species, out_dir, _as_settings(settings, self.settings), start)

    def start_file(self, train_dir: Path) -> Path:
        return Path(train_dir) / POT

    def load(self, train_dir: Path, species: Sequence[str], al_mode: str) -> Mlip3Potential:
        """The potential of a train folder. Its training set (select_add's second
        argument) is the iteration's collect/train.cfg next to it when that exists."""
        train_dir = Path(train_dir)
        ts = train_dir.parent / "collect" / TRAIN_CFG
        return Mlip3Potential(train_dir / POT, species, al_mode, mlp=self.settings.mlp,
                              train_cfg=ts if ts.is_file() else None,
                              timeout=self.settings.timeout, setup=self.settings.setup)

    def errors(self, train_dir: Path, species: Sequence[str], cfg_path: Path
               ) -> dict[str, float]:
        """``mlp check_errors``; its files go to train_dir/check_errors/<cfg name>/."""
        out = Path(train_dir) / "check_errors" / Path(cfg_path).stem
        res = check_errors(Path(train_dir) / POT, cfg_path, mlp=self.settings.mlp,
                           timeout=self.settings.timeout, out_dir=out,
                           setup=self.settings.setup)
        return {k: float(v) for k, v in res.items() if k not in ("report", "per_config")}

    def config_errors(self, train_dir: Path, species: Sequence[str], cfg_path: Path,
                      work: Path) -> list[dict[str, float]]:
        """``mlp check_errors`` per-configuration log, in file order; files go to `work`.

        Under MPI each rank logs its own share with its own ``cfg#`` count; check_errors
        merges them in input order (MLIP-3's round-robin share). Should a build share
        otherwise, every configuration is checked alone (work/one/<k>/): exact, at one
        mlp start per configuration."""
        pot, work = Path(train_dir) / POT, Path(work)
        kw = {"mlp": self.settings.mlp, "timeout": self.settings.timeout,
              "setup": self.settings.setup}
        rows = check_errors(pot, cfg_path, out_dir=work, **kw)["per_config"]
        n = _count_cfgs(cfg_path)
        if [int(r["cfg"]) for r in rows] != list(range(1, n + 1)):
            rows = []
            for k, cfg in enumerate(iter_cfgs(cfg_path)):
                one = work / "one" / str(k)
                one.mkdir(parents=True, exist_ok=True)
                write_cfgs(one / "one.cfg", [cfg])
                got = check_errors(pot, one / "one.cfg", out_dir=one, **kw)["per_config"]
                if len(got) != 1:
                    raise Mlip3Error("check_errors", f"{len(got)} per-configuration lines "
                                     "for one configuration", log=one / "check_errors.percfg")
                rows += got
        return [{k: v for k, v in row.items() if k != "cfg"} for row in rows]
