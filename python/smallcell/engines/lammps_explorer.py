"""The LAMMPS explorer: one explore run with LAMMPS and MLIP-3's ``pair_style mlip``.

The stage has already written ``in.lammps`` and ``data.lmp`` into the run folder
(engines/lammps_input.py); this adapter runs the user's LAMMPS command there and turns what
the program leaves behind into the same ``gamma.json`` and ``preselected.cfg`` as the
embedded explorer (engines/embedded_md.py). What it relies on (shared/docs/mlip3-facts.md
sections 1 and 3, and the real files under shared/fixtures/mlip3/smallcell):

- MLIP-3 grades every force call (one at setup, one per MD step); a grade above
  threshold_save appends the configuration to save_extrapolative_to (no energy/forces,
  ``Feature MV_grade``, ``nbh_grades`` in nbh mode, ``Feature ind`` = force-call counter in
  2023+ builds); a grade above threshold_break saves it too, prints "Breaking threshold
  exceeded (MV-grade: X)" on stderr (MPI: "Rank N, " first) and calls exit(777), which the
  shell sees as status 9. The log then just stops: no "Loop time" line.
- An interface library built with MPI writes ``<name>.<rank>`` files, even for one rank, and
  with several ranks the configurations are split pieces (no Supercell, a ``ghost``
  column), one per rank and force call.
- MLIP-3's own messages (the settings it applied) go to stdout, not to log.lammps.

Decisions:

- **The exit status is not enough**: 0 is a completed run only if log.lammps ends its run
  with "Loop time"; a non-zero status is a break only if the break message is there (then
  any status counts, since MPI launchers report a rank's exit(777) differently); anything
  else is an :class:`ExploreError` carrying the LAMMPS "ERROR" line (e.g. lost atoms).
- **Checked before running**: the potential exists and is the file in.lammps loads, and
  in.lammps' thresholds are the ones this run needs, so a mis-rendered input fails in a
  second instead of after hours of MD. Checked after: the thresholds MLIP-3 printed equal
  the requested ones (a build that ignored a key would otherwise use its defaults 2/11).
- **Rank files are merged and deleted**: ``preselected.cfg`` (plain file first, then ranks
  in numeric order, as formats/cfg.read_preselected reads them) is written atomically, then
  the rank files are removed. Keeping them would store every configuration twice and make
  any later ``read_preselected(run/preselected.cfg)`` count it twice.
- **grade_floor** (``lammps.grade_floor``, e.g. 0.1): MLIP-3 only reports grades it saves,
  so to know the distribution of all grades, in.lammps is rendered with threshold_save =
  grade_floor (see :meth:`LammpsExplorer.threshold_save`) and MLIP-3 saves nearly every
  force call. The statistics then cover every saved grade (``"grades": "all_queries"``;
  grades at or below the floor are not seen), ``preselected.cfg`` keeps those above the real
  gamma_save, and ``queried.cfg`` a uniform sample of all of them within the error study's
  bounds (``sample.*``, engines/exploration.QuerySample), as the embedded explorer keeps.
  Without it the statistics cover the saved grades only (``"grades": "saved_only"``) and
  there is no error sample. Cost: MLIP-3 writes one cfg block per MD step during the run
  (deleted afterwards), 0.63 kB (4 atoms) / 2.9 kB (32 atoms) per step in the interface's
  layout with nbh_grades, i.e. 0.63 / 2.9 MB per 1000 steps, and ~0.35 / 0.5 s per 1000
  steps here to read and split them (test_grade_floor_file_size prints the sizes).
- **Split pieces are one query**: with several rank files, pieces that share a ``Feature
  ind`` are one force call; its grade is their maximum. Each piece is still written to
  ``preselected.cfg`` as MLIP-3 wrote it (by its own grade); pieces are not sampled.
- **break_step**: from the breaking configuration's ``ind`` (force call ind-1 = MD step
  ind-1 for velocity Verlet) when present, else the last thermo step of log.lammps (a lower
  bound; ``break_step_source`` says which).

Files left in the run folder: ``lammps.out`` (stdout, with MLIP-3's messages),
``lammps.err``, ``log.lammps``, ``preselected.cfg``, ``queried.cfg`` (grade_floor only) and
``md.log`` (the thermo table in the embedded explorer's columns, so that every explorer
leaves the same files).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from ase import Atoms

from smallcell.engines.exploration import GammaStats, MDSettings, QuerySample
from smallcell.engines.lammps_input import IN_FILE
from smallcell.engines.process import (
    KILL_GRACE,
    ProgramNotFound,
    check_positive,
    command_words,
    exit_text,
    run_logged,
    tail_line,
    with_setup,
)
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import format_cfg, iter_cfgs
from smallcell.formats.errors import FormatError
from smallcell.state import atomic_output, atomic_write_text

POTENTIAL = "pot.almtp"
LOG_FILE = "log.lammps"
STDOUT_FILE = "lammps.out"
STDERR_FILE = "lammps.err"
PRESELECTED = "preselected.cfg"
QUERIED = "queried.cfg"
MD_LOG = "md.log"
BREAK_STATUS = 777 & 0xFF  # exit(777) as the shell sees it: 9
_TAIL_CHARS = 300
_BREAK = re.compile(r"Breaking threshold exceeded \(MV-grade:\s*([^)\s]+)\s*\)")
_SETTING = re.compile(r"^\t([\w:]+) = (.*?)\s*$")


class ExploreError(SmallcellError):
    """An explore run failed (not a break: a break is a result). One line: the exit status
    and the program's own error line."""


@dataclass
class LammpsSettings:
    """How to run LAMMPS on this machine (the ``lammps:`` section of the config).

    ``command`` is argv (e.g. ``["mpirun", "-np", "4", "lmp_mpi"]``); smallcell appends
    ``-in in.lammps -log log.lammps`` and never hands it to a shell. ``setup`` lines (module
    loads) run in ``bash -c '<lines>; exec "$@"'`` with the command as "$@".
    """

    command: list[str] = field(default_factory=lambda: ["lmp"])
    setup: list[str] = field(default_factory=list)
    timeout: float | None = None
    grade_floor: float | None = None

    #: keys of the ``lammps:`` section that are for the in.lammps renderer, not for running
    RENDER_KEYS = ("dump_every",)

    def __post_init__(self) -> None:
        self.command, self.setup = command_words(self.command, self.setup, "lammps")
        for key in ("timeout", "grade_floor"):
            if getattr(self, key) is not None:
                check_positive(getattr(self, key), f"lammps.{key}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LammpsSettings:
        """Settings from the ``lammps:`` config section (renderer keys ignored); an unknown
        key is an error, because a misspelt key silently ignored would change every run."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(cls.RENDER_KEYS))
        if unknown:
            raise ValueError(f"unknown lammps settings: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- parsing


@dataclass
class MlipLine:
    """The ``pair_style mlip`` line of an in.lammps (prefixed keys folded in)."""

    load_from: str | None
    control: bool
    threshold_save: float | None
    threshold_break: float | None
    save_to: str | None


def read_mlip_line(in_text: str) -> MlipLine | None:
    """The last ``pair_style mlip`` of an input script, or None (another pair style)."""
    found: MlipLine | None = None
    for raw in in_text.splitlines():
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            continue
        if words[:1] != ["pair_style"]:
            continue
        if words[1:2] != ["mlip"]:
            found = None
            continue
        opts: dict[str, str] = {}
        for word in words[2:]:
            key, _, value = word.partition("=")
            opts[key.removeprefix("extrapolation_control:")] = value

        def num(key: str, opts: dict[str, str] = opts) -> float | None:
            try:
                return float(opts[key]) if key in opts else None
            except ValueError:
                return None

        found = MlipLine(
            load_from=opts.get("load_from", opts.get("mlip:load_from")),
            control=opts.get("extrapolation_control", "false").lower() == "true",
            threshold_save=num("threshold_save"), threshold_break=num("threshold_break"),
            save_to=opts.get("save_extrapolative_to") or None)
    return found


@dataclass
class ThermoLog:
    """What log.lammps says: thermo rows (all runs), whether the last run completed, and the
    ERROR lines."""

    columns: list[str] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    completed: bool = False
    errors: list[str] = field(default_factory=list)
    last_command: str | None = None

    @property
    def last_step(self) -> int | None:
        """Step of the last thermo line (None before the first one)."""
        if not self.rows or "Step" not in self.columns:
            return None
        return int(self.rows[-1][self.columns.index("Step")])

    def column(self, name: str) -> list[float]:
        if name not in self.columns:
            return []
        k = self.columns.index(name)
        return [r[k] for r in self.rows]


def parse_log(text: str) -> ThermoLog:
    """Parse a LAMMPS log (or screen output). A header line starts with "Step"; its rows are
    the following lines with as many numbers; "Loop time" closes a run; WARNING lines inside
    the table and a last line cut off by a kill are skipped."""
    log = ThermoLog()
    in_table = False
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "Step" and len(words) > 1:
            log.columns, in_table, log.completed = words, True, False
            continue
        if words[0].startswith("ERROR"):
            log.errors.append(" ".join(words))
            in_table = False
            continue
        if words[0] == "Last" and words[1:2] == ["command:"]:
            log.last_command = " ".join(words[2:])
            continue
        if line.startswith("Loop time of"):
            in_table, log.completed = False, True
            continue
        if in_table and len(words) == len(log.columns):
            with contextlib.suppress(ValueError):  # a line cut off by a kill
                log.rows.append([float(w) for w in words])
    return log


def parse_mlip_messages(text: str) -> dict[str, str]:
    """The settings MLIP-3 printed between "Wrapper initialization" and "... complete"
    (tab-indented ``key = value`` lines, as in sampleMD.txt); the last block wins."""
    settings: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith("Wrapper initialization complete"):
            inside = False
        elif line.startswith("Wrapper initialization"):
            inside, settings = True, {}
        elif inside and (m := _SETTING.match(line)):
            settings[m.group(1)] = m.group(2)
    return settings


def parse_break(text: str) -> float | None:
    """The highest grade of MLIP-3's "Breaking threshold exceeded (MV-grade: X)" messages
    (several with MPI ranks), or None when there is none."""
    grades = []
    for m in _BREAK.finditer(text):
        try:
            grades.append(float(m.group(1)))
        except ValueError:
            grades.append(math.inf)
    return max(grades) if grades else None


# --------------------------------------------------------------------------- preselected


@dataclass
class Collected:
    """The configurations MLIP-3 saved, merged: counts and one grade per query."""

    n_preselected: int = 0
    n_queried: int = 0
    grades: list[float] = field(default_factory=list)  # one per force call seen
    inds: list[int | None] = field(default_factory=list)  # its `Feature ind`, if any
    sources: list[str] = field(default_factory=list)
    trimmed: list[str] = field(default_factory=list)  # files whose cut-off tail was dropped


def saved_files(prefix: Path) -> list[Path]:
    """The plain file, then ``<prefix>.<rank>`` in numeric rank order (what exists)."""
    files = [prefix] if prefix.is_file() else []
    ranks: list[tuple[int, Path]] = []
    stem = prefix.name + "."
    if prefix.parent.is_dir():
        for p in prefix.parent.iterdir():
            rank = p.name[len(stem):]
            if p.name.startswith(stem) and rank.isascii() and rank.isdigit() and p.is_file():
                ranks.append((int(rank), p))
    return files + [p for _, p in sorted(ranks)]


def trim_partial_tail(path: Path, window: int = 8 << 20) -> bool:
    """Cut a configuration left half-written at the end of ``path`` (a rank killed while
    writing); True when something was cut. Looks at the last ``window`` bytes only: a
    configuration of a small cell is a few kB."""
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb+") as fh:
        start = max(0, size - window)
        fh.seek(start)
        tail = fh.read()
        if tail.rstrip().endswith(b"END_CFG"):
            return False
        k = tail.rfind(b"END_CFG\n")
        if k < 0 and start > 0:
            return False  # cannot tell here; the reader will name the problem
        end = start + k + len(b"END_CFG\n") if k >= 0 else 0
        fh.truncate(end)
        if end:
            fh.seek(end)
            fh.write(b"\n")
    return True


def collect_preselected(out: Path, save_to: str, gamma_save: float, split_queried: bool,
                        sample: QuerySample | None = None) -> Collected:
    """Merge what MLIP-3 saved under ``out/save_to`` (and its rank files) into
    ``out/preselected.cfg``; when ``split_queried`` (grade_floor), keep only those graded
    above ``gamma_save`` there. Every whole configuration is offered to ``sample``, whose
    draw goes to ``out/queried.cfg`` (the error study); split pieces of several ranks are
    not configurations, so then nothing is sampled (``sample.eligible`` stays 0). Written
    atomically; then the sources other than ``preselected.cfg`` are deleted."""
    prefix = out / save_to
    sources = saved_files(prefix)
    res = Collected(sources=[p.name for p in sources])
    for p in sources:
        if trim_partial_tail(p):
            res.trimmed.append(p.name)
    pieces: dict[int, float] = {}  # ind -> max grade over the ranks' pieces
    whole = len(sources) <= 1
    with _text_output(out / PRESELECTED) as pre:
        for p in sources:
            try:
                for cfg in iter_cfgs(p):
                    grade = cfg.mv_grade
                    if grade is None:
                        raise ExploreError(
                            f"{p.name}: a configuration without Feature MV_grade (MLIP-3's "
                            "add_grade_feature is off?): its grade is unknown")
                    ind_text = cfg.feature("ind")
                    ind = int(ind_text) if ind_text and ind_text.strip().isdigit() else None
                    if split_queried and not grade > gamma_save:
                        res.n_queried += 1
                    else:
                        pre.write(format_cfg(cfg))
                        res.n_preselected += 1
                    if sample is not None and whole:
                        sample.offer(grade, lambda c=cfg: format_cfg(c))
                    if not whole and ind is not None:
                        pieces[ind] = max(pieces.get(ind, -math.inf), grade)
                    else:
                        res.grades.append(grade)
                        res.inds.append(ind)
            except FormatError as exc:
                raise ExploreError(f"cannot read what MLIP-3 saved: {exc}") from exc
    if sample is not None:
        atomic_write_text(out / QUERIED, "".join(sample.kept))
    for ind in sorted(pieces):
        res.grades.append(pieces[ind])
        res.inds.append(ind)
    for p in sources:
        if p != out / PRESELECTED:
            p.unlink()
    return res


@contextlib.contextmanager
def _text_output(path: Path) -> Iterator[IO[str]]:
    """A text stream to ``path`` that appears under its name only when complete."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        yield fh


# --------------------------------------------------------------------------- running


def run_process(argv: Sequence[str], cwd: Path, timeout: float | None,
                grace: float = KILL_GRACE) -> int | None:
    """Run argv in ``cwd`` with stdout -> lammps.out, stderr -> lammps.err; return the exit
    status (negative: killed by that signal) or None when it timed out and was killed.

    Its own process group (engines/process.py), so that a timeout or an interrupt of
    smallcell stops mpirun and its ranks together instead of leaving them on the node.
    """
    cwd = Path(cwd)
    try:
        return run_logged(argv, cwd, cwd / STDOUT_FILE, cwd / STDERR_FILE, timeout, grace)
    except ProgramNotFound as exc:
        what = "not executable" if exc.not_executable else "not found"
        raise ExploreError(f"LAMMPS command {what}: {exc.program!r} ({exc.reason}); "
                           "check lammps.command and lammps.setup") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def failure_message(rc: int | None, log: ThermoLog, screen: ThermoLog, stderr: str,
                    timeout: float | None = None) -> str:
    """One line for a failed run: how it ended, LAMMPS' own ERROR line (log first, then
    screen), the last thermo step, and the stderr tail when it says something else."""
    how = (f"timed out after {timeout:g} s and was killed" if rc is None
           else exit_text(rc))
    errors = log.errors or screen.errors
    parts = [f"LAMMPS {how}"]
    if errors:
        parts.append(errors[-1])
    err_tail = tail_line(stderr, lines=2, limit=_TAIL_CHARS)
    if err_tail and not (errors and err_tail in errors[-1]):
        parts.append(f"stderr: {err_tail}")
    if not errors and not err_tail:
        parts.append("no ERROR line in log.lammps or lammps.out")
    step = log.last_step if log.rows else screen.last_step
    if step is not None:
        parts.append(f"last thermo step {step}")
    if rc in (126, 127):
        parts.append("check lammps.command and lammps.setup")
    return "; ".join(parts)


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _write_md_log(path: Path, log: ThermoLog, outcome: str) -> None:
    """The thermo table in the embedded explorer's md.log columns (no per-step grade:
    MLIP-3 does not print it)."""
    cols = [("Step", "step", 9, "d"), ("Temp", "T/K", 9, ".2f"), ("Press", "P/bar", 11, ".2f"),
            ("PotEng", "E/eV", 14, ".6f"), ("Volume", "V/A3", 10, ".3f")]
    have = [c for c in cols if c[0] in log.columns]
    lines = [f"# lammps explorer: {outcome}",
             "# " + " ".join(f"{label:>{w}}" for _, label, w, _ in have)]
    idx = [log.columns.index(c[0]) for c in have]
    for row in log.rows:
        cells = []
        for k, (_, _, w, fmt) in zip(idx, have, strict=True):
            value = int(row[k]) if fmt == "d" else row[k]
            cells.append(f"{value:>{w}{fmt}}")
        lines.append("  " + " ".join(cells))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _sample_record(s: MDSettings, sample: QuerySample | None, floor: float | None,
                   split: bool) -> dict[str, object]:
    """gamma.json's error-sample keys (as the embedded explorer's), and why there is no
    sample when there is none."""
    if not s.sample_size:
        return {"n_sample_eligible": None, "n_sampled": 0}
    if sample is None:
        return {"n_sample_eligible": None, "n_sampled": 0, "sample_note":
                "MLIP-3 saved only gamma > gamma_save: set lammps.grade_floor (e.g. 0.1) "
                "for an error sample"}
    rec: dict[str, object] = {"n_sample_eligible": sample.eligible,
                              "n_sampled": len(sample.kept), "sample_gamma_min": sample.lo}
    if split:
        rec["sample_note"] = ("configurations split over MPI ranks (pieces, not whole "
                              "configurations): nothing to sample")
    return rec


class LammpsExplorer:
    """The ``Explorer`` interface (engines/base.py) with LAMMPS + MLIP-3 as a subprocess."""

    name = "lammps"

    def __init__(self, settings: LammpsSettings) -> None:
        self.settings = settings

    def threshold_save(self, s: MDSettings) -> float:
        """The threshold_save in.lammps must be rendered with: the grade floor when set (so
        MLIP-3 reports nearly every grade), else the run's gamma_save."""
        floor = self.settings.grade_floor
        if floor is None:
            return s.gamma_save
        if not floor < s.gamma_save:
            raise ValueError(f"lammps.grade_floor ({floor:g}) must be below "
                             f"extrapolation.gamma_save ({s.gamma_save:g})")
        return floor

    def command_argv(self) -> list[str]:
        """The argv executed: the command (+ -in/-log), or bash running the setup lines and
        then exec'ing the command passed as "$@" (never re-parsed by the shell)."""
        argv = [*self.settings.command, "-in", IN_FILE, "-log", LOG_FILE]
        return with_setup(argv, self.settings.setup, "smallcell-lammps")

    def _check_inputs(self, out: Path, s: MDSettings, pot: Path) -> MlipLine | None:
        """Refuse to start a run whose in.lammps would not give what this run needs."""
        in_path = out / IN_FILE
        if not in_path.is_file():
            raise ExploreError(f"{in_path}: missing (the explore stage writes it)")
        mlip = read_mlip_line(in_path.read_text(encoding="utf-8"))
        if mlip is None:  # pair_override (tests): plain MD, nothing graded
            return None
        if mlip.load_from is None or not (out / mlip.load_from).exists() or not os.path.samefile(
                out / mlip.load_from, pot):
            raise ExploreError(f"{in_path}: pair_style mlip loads {mlip.load_from!r}, which "
                               f"is not {pot}")
        want = {"threshold_save": self.threshold_save(s), "threshold_break": s.gamma_break}
        for key, value in want.items():
            if not mlip.control or not _close(getattr(mlip, key), value):
                hint = (" (render it with LammpsExplorer.threshold_save(settings): "
                        "lammps.grade_floor)" if key == "threshold_save" else "")
                raise ExploreError(f"{in_path}: pair_style mlip needs extrapolation_control="
                                   f"true and {key}={value:g}, got {getattr(mlip, key)}{hint}")
        if not mlip.save_to:
            raise ExploreError(f"{in_path}: pair_style mlip has no save_extrapolative_to")
        return mlip

    def run(self, out: Path, atoms: Atoms, species: list[str], settings: MDSettings,
            train_dir: Path) -> dict[str, object]:
        """Run LAMMPS in ``out``; leave preselected.cfg, md.log and the LAMMPS logs there;
        return gamma.json's data: the embedded explorer's keys plus ``grades``
        (all_queries | saved_only | none), ``grade_floor``, ``n_queried`` (graded at or
        below gamma_save, grade_floor only), ``n_sample_eligible`` / ``n_sampled`` (the
        error study's sample in queried.cfg; ``sample_note`` says why there is none),
        ``exit_code``, ``break_step_source`` (ind | thermo), ``mlip_settings`` (what MLIP-3
        printed) and ``trimmed`` (files whose cut-off last configuration was dropped).
        Raises ExploreError when the run failed (a break is not a failure)."""
        t0 = time.perf_counter()
        s = settings
        out = Path(out)
        pot = Path(train_dir) / POTENTIAL
        if not pot.is_file():
            raise ExploreError(f"{pot}: no such potential (the previous iteration's train "
                               "stage writes it; engines.explorer lammps needs engines.trainer "
                               "mlip3)")
        mlip = self._check_inputs(out, s, pot)
        if mlip is not None and mlip.save_to:
            for stale in saved_files(out / mlip.save_to):  # a rerun in the same folder
                stale.unlink()
        if not self.settings.setup and shutil.which(self.settings.command[0]) is None:
            raise ExploreError(f"lammps.command: {self.settings.command[0]!r} not found on "
                               "PATH (give its full path, or load its module in lammps.setup)")

        rc = run_process(self.command_argv(), out, self.settings.timeout)
        log = parse_log(_read(out / LOG_FILE))
        stdout, stderr = _read(out / STDOUT_FILE), _read(out / STDERR_FILE)
        screen = parse_log(stdout)
        break_grade = parse_break(stderr + "\n" + stdout)
        if rc == 0 and not log.completed:
            raise ExploreError(failure_message(rc, log, screen, stderr) +
                               "; exit status 0 but log.lammps has no final 'Loop time' line")
        broke = rc not in (0, None) and break_grade is not None
        if rc != 0 and not broke:
            raise ExploreError(failure_message(rc, log, screen, stderr, self.settings.timeout))

        mlip_settings = parse_mlip_messages(stdout)
        if mlip is not None:
            for key, value in (("threshold_save", mlip.threshold_save),
                               ("threshold_break", mlip.threshold_break)):
                printed = mlip_settings.get(key)
                if printed is not None and value is not None and not math.isclose(
                        float(printed), value, rel_tol=1e-5, abs_tol=1e-6):
                    raise ExploreError(
                        f"MLIP-3 applied {key} = {printed}, in.lammps asked {value:g}: this "
                        "interface build does not read the key as written (try the "
                        "extrapolation_control:-prefixed form in templates/lammps)")

        sample = None
        if mlip is not None and mlip.save_to:
            floor = self.settings.grade_floor
            if floor is not None and s.sample_size:
                sample = QuerySample(s.sample_size, max(s.sample_gamma_min, floor),
                                     s.sample_gamma_max, s.seed)
            got = collect_preselected(out, mlip.save_to, s.gamma_save, floor is not None,
                                      sample)
            mode = "all_queries" if floor is not None else "saved_only"
        else:
            atomic_write_text(out / PRESELECTED, "")
            got, mode, floor = Collected(), "none", None
        stats = GammaStats()
        for g in got.grades:
            if math.isfinite(g):
                stats.add(g)

        last = log.last_step
        break_step, source, reason = None, None, ""
        if broke:
            assert break_grade is not None
            reason = f"gamma {break_grade:.4g} > gamma_break"
            inds = [i for g, i in zip(got.grades, got.inds, strict=True)
                    if i is not None and g > s.gamma_break]
            if inds and (last is None or max(inds) - 1 >= last) and max(inds) - 1 <= s.steps:
                break_step, source = max(inds) - 1, "ind"
            else:
                break_step, source = last or 0, "thermo"
            steps_done = break_step
        else:
            steps_done = last if last is not None else s.steps
        outcome = (f"broke at step {break_step} ({reason})" if broke
                   else f"completed {steps_done} steps")
        _write_md_log(out / MD_LOG, log, outcome)
        return {"settings": asdict(s), "steps_done": steps_done, "broke": broke,
                "break_step": break_step, "break_reason": reason,
                "n_preselected": got.n_preselected, "seconds": time.perf_counter() - t0,
                **stats.as_dict(), "grades": mode, "grade_floor": floor,
                "n_queried": got.n_queried, "exit_code": rc, "break_step_source": source,
                "mlip_settings": mlip_settings, "trimmed": got.trimmed,
                **_sample_record(s, sample, floor, len(got.sources) > 1)}
