"""What a run needs, checked before it starts: `smallcell check-config`, and `check_engines`
before `iter`, `submit`, `validate` and `sweep`.

The config loader (config.py) checks types, ranges, rules between keys and that files
exist, cheaply, every time a config is loaded (every task loads one). This module checks
what costs a file read or a subprocess, once per command, and collects every problem
instead of stopping at the first:

- **placeholders**: a line still marked FILL IN (the examples' marker) is not filled in;
- **adapters**: each configured adapter is built (settings it refuses, e.g. an INCAR tag
  that would relax), and GPAW's interpreter is asked for GPAW and its setups;
- **commands, word by word**: every program of a command line (commands.parse_command:
  `mpirun -np 16 vasp_std` runs mpirun and vasp_std) must resolve as the task would
  resolve it. Without setup lines that is PATH (or a path to an executable file); with
  them (`vasp.setup`, and with engines.scheduler slurm `slurm.setup` and the stage's
  `slurm.<stage>.setup`) it is `command -v` in bash after those lines ran, as the job
  does, with a timeout; a setup line that fails is reported itself;
- **input contents, not existence**: each POTCAR must be the VASP POTCAR of its species
  (vasp.check_potcar), the MTP template must load (mlip3.check_template, formats/almtp),
  and the initial data must hold labeled configurations: at least one OUTCAR with a
  converged ionic step (formats/outcar), a labeled cfg or extended XYZ file;
- **settings that cannot deliver what the config asks for**: an error sample from a LAMMPS
  explorer that cannot save one, and locally more MPI ranks than cores (`_cores`).

Each problem is one line in the loader's words: "<file>:<line>: <key>: what is wrong and
what was expected". Warnings (`Problem.warning`) are printed and do not stop a run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from smallcell.commands import parse_command
from smallcell.config import ENGINE_STAGES, Config, job_setups, mlip3_template, placeholders
from smallcell.errors import SmallcellError
from smallcell.formats.errors import FormatError

SETUP_TIMEOUT = 60.0  # s: module systems can be slow, a hung line must not hang the check
OUTCAR_BUDGET = 256 << 20  # bytes of OUTCARs read once one usable OUTCAR is found
_MARK = "@smallcell-check@"


@dataclass(frozen=True)
class Problem:
    """One line of the report; a warning does not stop a run."""

    text: str
    warning: bool = False


def problems(cfg: Config, *, local_jobs: int | None = None) -> list[Problem]:
    """Every problem found in `cfg`, errors and warnings, in the order of the checks.
    `local_jobs`: tasks run at once on this machine (run.jobs or --jobs; 0 = all cores)
    when the run is local, to compare MPI ranks with the cores; None: not local."""
    found: list[Problem] = []
    if cfg.source is not None and cfg.source.is_file():
        text = cfg.source.read_text(encoding="utf-8")
        found += [Problem(t) for t in placeholders(text, cfg.name or str(cfg.source))]
    found += [Problem(t) for t in _adapters(cfg)]
    found += [Problem(t) for t in _commands(cfg)]
    found += [Problem(t) for t in _inputs(cfg)]
    found += _sample(cfg)
    found += _md(cfg)
    if local_jobs is not None:
        found += _cores(cfg, local_jobs)
    unique: dict[str, Problem] = {}
    for p in found:  # a setup line shared by several commands fails once
        unique.setdefault(p.text, p)
    return list(unique.values())


def _adapters(cfg: Config) -> list[str]:
    """Build each configured adapter once (base.py's builders): what an adapter refuses."""
    from smallcell.engines.base import explorer_for, labeler_for, trainer_for

    out = []
    eng = cfg["engines"]
    for section, build in ((eng["labeler"], labeler_for), ("mlip3", trainer_for),
                           ("lammps", explorer_for)):
        try:
            build(cfg)
            if section == "gpaw":  # GPAW lives outside the venv: is it there, with setups?
                from smallcell.engines.gpaw import GpawSettings, check_installed

                check_installed(GpawSettings.from_mapping(cfg["gpaw"]), list(cfg["species"]))
        except ValueError as exc:
            out.append(f"{cfg.name or cfg.source or '<config>'}: {section}: {exc}")
    return out


def _configured_commands(cfg: Config) -> list[tuple[str, str, list[str]]]:
    """(section, key, argv words) of every external command the configured engines run."""
    eng = cfg["engines"]
    out = []
    if eng["labeler"] == "vasp":
        out.append(("vasp", "command", cfg["vasp"]["command"]))
    if eng["labeler"] == "gpaw" and cfg["gpaw"]["launcher"]:
        out.append(("gpaw", "launcher", cfg["gpaw"]["launcher"]))
    if eng["trainer"] == "mlip3":
        out.append(("mlip3", "mlp", cfg["mlip3"]["mlp"]))
    if eng["explorer"] == "lammps":
        out.append(("lammps", "command", cfg["lammps"]["command"]))
    return out


def _setup_keys(cfg: Config, section: str) -> str:
    """The keys whose lines job_setups() runs before `section`'s programs, for messages."""
    own = f"{section}.setup"
    if cfg["engines"]["scheduler"] != "slurm":
        return own
    stages = [f"slurm.{st}.setup" for st in ENGINE_STAGES[section]]
    return ", ".join(["slurm.setup", *stages, own])


def _commands(cfg: Config) -> list[str]:
    out = []
    for section, key, words in _configured_commands(cfg):
        where = f"{section}.{key}"
        programs = parse_command(words).programs
        setups = [s for s in job_setups(cfg, section) if s]
        if not setups:  # the loader looked them up on PATH: are the paths executable?
            for prog in programs:
                path = Path(prog)
                if "/" in prog and path.is_file() and not os.access(path, os.X_OK):
                    out.append(cfg.problem(where, f"{where}: {prog!r} is not executable "
                                           f"(chmod +x it, or name the program to run)"))
            continue
        for lines in {tuple(s): s for s in setups}.values():
            out += _resolve_after_setup(cfg, section, where, programs, lines)
    return out


def _setup_script(lines: list[str]) -> str:
    """bash that runs each setup line as the job does and marks a line that fails (on
    stdout, and on stderr after the line's own messages), then looks up every program
    ("$@") with `command -v`."""
    script = [f"__sc_failed() {{ printf '{_MARK} setup %s %s\\n' \"$1\" \"$2\"; "
              f"printf '{_MARK}\\n' >&2; }}"]
    for k, line in enumerate(lines):
        script.append(f"{{ {line}\n}} || __sc_failed {k} $?")
    script.append(f'for p in "$@"; do if r=$(command -v -- "$p"); then '
                  f'printf \'{_MARK} found %s\\n\' "$p"; else '
                  f'printf \'{_MARK} missing %s\\n\' "$p"; fi; done')
    script.append(f"printf '{_MARK} end\\n'")
    return "\n".join(script)


def _tails(stderr: str) -> list[str]:
    """The last message line before each failure mark on stderr (without bash's
    "$0: line N: " prefix, whose line numbers are the check script's)."""
    out, last = [], ""
    for x in stderr.splitlines():
        if x.startswith(_MARK):
            out.append(last)
            last = ""
        elif x.strip():
            last = re.sub(r"^smallcell-check: line \d+: ", "", x.strip())
    return [*out, last]


def _resolve_after_setup(cfg: Config, section: str, where: str, programs: list[str],
                         keyed: list[tuple[str, str]]) -> list[str]:
    keys = _setup_keys(cfg, section)
    lines = [x for _, x in keyed]
    bash = shutil.which("bash") or "/bin/bash"
    argv = [bash, "-c", _setup_script(lines), "smallcell-check", *programs]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        return [cfg.problem(where, f"{where}: cannot run bash to try the setup lines ({exc})")]
    try:
        stdout, stderr = proc.communicate(timeout=SETUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # bash and whatever the lines started
        proc.communicate()
        return [cfg.problem(keyed[-1][0].split("[")[0],
                            f"{keys}: the setup lines did not finish in {SETUP_TIMEOUT:g} s "
                            f"when run in bash as the job runs them ({'; '.join(lines)})")]
    out = []
    tails = _tails(stderr)
    marks = [(x[len(_MARK):].strip() + " ").split(" ", 1) for x in stdout.splitlines()
             if x.startswith(_MARK)]
    failed = 0
    for what, rest in marks:
        rest = rest.strip()
        if what == "setup":
            k, rc = rest.split()
            key, line = keyed[int(k)]
            tail = tails[failed]
            failed += 1
            out.append(cfg.problem(key.split("[")[0],
                                   f"{key}: setup line {line!r} failed (exit status {rc}"
                                   f"{': ' + tail if tail else ''}) when run in bash "
                                   "as the job runs it"))
        elif what == "missing":
            out.append(cfg.problem(where, f"{where}: program {rest!r} not found on PATH after "
                                   f"the setup lines ({keys}) ran in bash: load its module "
                                   "there or give its full path"))
    if not any(what == "end" for what, _ in marks):
        tail = tails[-1]
        out.append(cfg.problem(keyed[-1][0].split("[")[0],
                               f"{keys}: the setup lines stopped bash (exit status "
                               f"{proc.returncode}{': ' + tail if tail else ''}) before "
                               f"{where} could be looked up; a job would stop there too"))
    return out


def _inputs(cfg: Config) -> list[str]:
    out = []
    eng = cfg["engines"]
    if eng["labeler"] == "vasp":
        from smallcell.engines.vasp import check_potcar

        v = cfg["vasp"]
        lib = cfg.resolve(v["potcar_dir"])
        for sym in cfg["species"]:
            potcar = lib / str(v["potcars"].get(sym, sym)) / "POTCAR" if lib else None
            if potcar is not None and potcar.is_file():
                try:
                    check_potcar(potcar, sym)
                except ValueError as exc:
                    out.append(cfg.problem("vasp.potcars", f"vasp.potcars: {exc}"))
    if eng["trainer"] == "mlip3":
        from smallcell.engines.mlip3 import check_template

        template = mlip3_template(cfg)
        if template is not None and template.is_file():
            key = "mlip3.template" if cfg["mlip3"]["template"] else "mlip3.templates_dir"
            level = None if cfg["mlip3"]["template"] else cfg["trainer"]["level"]
            try:
                check_template(template, level)
            except ValueError as exc:
                out.append(cfg.problem(key, f"{key}: {exc}"))
    init = cfg["initial"]
    if init["source"] in ("outcar", "cfg"):
        path = cfg.resolve(init["path"])
        if path is not None and path.exists():
            out += [cfg.problem("initial.path", f"initial.path: {m}")
                    for m in _data_set(path, list(cfg["species"]))]
    elif init["source"] == "import":
        for k, entry in enumerate(init["paths"]):
            path = cfg.resolve(entry)
            if path is not None and path.exists():
                out += [cfg.problem("initial.paths", f"initial.paths[{k}]: {m}")
                        for m in _data_set(path, list(cfg["species"]))]
    return out


def _data_set(path: Path, species: list[str]) -> list[str]:
    """What iteration 0 would refuse in one initial data set (stages/initial.py reads it):
    a folder of OUTCARs, an extended XYZ file or a cfg file; one message per problem."""
    if path.is_dir():
        return _outcars(path, species)
    from smallcell.stages.initial import read_set

    try:
        found = read_set(path, species)  # exactly what iteration 0 will read
    except SmallcellError as exc:
        return [str(exc)]
    if not found:
        return [f"{path}: no configuration in it (expected labeled configurations)"]
    return []


def _outcars(folder: Path, species: list[str]) -> list[str]:
    """Every OUTCAR under `folder` must be readable (the import refuses the whole folder
    otherwise), its species among the config's, and one at least must hold a converged
    ionic step; reading stops after OUTCAR_BUDGET bytes once one usable file was found."""
    from smallcell.formats.outcar import read_outcar, usable_steps

    files = sorted(folder.rglob("OUTCAR"))
    if not files:
        return [f"{folder}: no OUTCAR in this folder or below (expected finished VASP runs, "
                "each folder with its OUTCAR)"]
    out, usable, read = [], 0, 0
    for path in files:
        if usable and read > OUTCAR_BUDGET:
            break
        read += path.stat().st_size
        try:
            info, steps = read_outcar(path)
            found = usable_steps(info, steps, keep_converged_steps=True)
        except FormatError as exc:
            if "no complete, converged DFT ionic step" not in str(exc):
                out.append(f"cannot import this OUTCAR: {exc}")
            continue
        other = sorted({info.species[t] for s in found for t in set(s.types.tolist())}
                       - set(species))
        if other:
            out.append(f"{path}: species {', '.join(other)} not in the config's species "
                       f"{species}")
        usable += 1
    if not usable:
        out.append(f"{folder}: none of its {len(files)} OUTCAR(s) holds a complete, converged "
                   "ionic step with forces (expected finished VASP runs)")
    return out


def _lammps_ranks(cfg: Config) -> int | None:
    """MPI ranks of one LAMMPS run: the launcher's count; with SLURM a launcher without one
    fills the explore job's slurm.explore.ntasks; None when unknown."""
    line = parse_command(cfg["lammps"]["command"])
    if line.ranks is None and cfg["engines"]["scheduler"] == "slurm":
        return int(cfg["slurm"]["explore"]["ntasks"])
    return line.ranks


MAX_TIMESTEP = 10.0  # fs: above it no MD of atoms integrates stably (metals: 1-5 fs)


def _md(cfg: Config) -> list[Problem]:
    """A time step no MD can integrate: a warning, not an error (a user may test the
    extrapolation control on nonsense MD on purpose). Why: with 200 fs the atoms fly
    apart in a few steps, every run breaks, and the loop labels explosions, while the
    config loader accepted it silently."""
    dt = cfg["md"]["timestep"]
    if dt <= MAX_TIMESTEP:
        return []
    return [Problem(cfg.problem("md.timestep", (
        f"md.timestep: {dt:g} fs is above {MAX_TIMESTEP:g} fs: atoms move too far per step "
        "for the integrator (energy drift, atoms flying apart), so MD runs break on the "
        "integration, not on the potential's extrapolation; metals use 1-5 fs (lighter "
        "elements less)")), warning=True)]


def _sample(cfg: Config) -> list[Problem]:
    """sample.size > 0 with the LAMMPS explorer needs whole configurations of every query:
    lammps.grade_floor (else MLIP-3 saves only those above gamma_save) and one MPI rank
    (ranks save pieces of configurations, lammps_explorer.collect_preselected samples
    none). An error when the config asks for the sample (sets sample.size, or
    stop.metric sample with the accuracy rule needs it); a warning when sample.size is
    only the default."""
    size = cfg["sample"]["size"]
    if cfg["engines"]["explorer"] != "lammps" or not size:
        return []
    needed = cfg.given("sample.size") or (cfg["stop"]["rule"] == "accuracy"
                                          and cfg["stop"]["metric"] == "sample")
    default = "" if cfg.given("sample.size") else " (the default)"
    ask = f"sample.size is {size}{default}, an error sample from every MD run, but"
    ranks = _lammps_ranks(cfg)
    if cfg["lammps"]["grade_floor"] is None:
        why = ("lammps.grade_floor is null: MLIP-3 saves only configurations graded above "
               "gamma_save, so there is nothing to sample; set lammps.grade_floor (e.g. 0.1) "
               "or sample.size: 0")
    elif ranks is None:
        return [Problem(cfg.problem("sample.size", f"sample.size: {ask} lammps.command gives "
                                    "its launcher no rank count: with more than one MPI rank "
                                    "MLIP-3 saves configurations in pieces and nothing can be "
                                    "sampled; give it one (e.g. -np 1)"), warning=True)]
    elif ranks > 1:
        why = (f"lammps.command runs {ranks} MPI ranks: MLIP-3 then saves every configuration "
               "in pieces, one per rank, and no whole configuration can be sampled; run "
               "LAMMPS on one rank (explore runs already run in parallel) or set "
               "sample.size: 0")
    else:
        return []
    return [Problem(cfg.problem("sample.size", f"sample.size: {ask} {why}"),
                    warning=not needed)]


def _cores(cfg: Config, jobs: int) -> list[Problem]:
    """Local runs: MPI ranks of the label and explore commands against os.cpu_count().

    An **error** when one task alone starts more ranks than the machine has cores: Open
    MPI refuses to start it ("not enough slots"), so every task would fail, and other MPIs
    time-slice the ranks, which for busy-polling MPI codes is many times slower (a launcher
    told --oversubscribe is taken at its word: a warning then). A **warning** when only
    run.jobs tasks together exceed the cores: the tasks run, oversubscribed and slower but
    correct, and --jobs / `make iter JOBS=` can change the count at run time."""
    cores = os.cpu_count() or 1
    jobs = jobs or cores
    out = []
    for section, key, words in _configured_commands(cfg):
        if section == "mlip3":
            continue  # mlp trains and grades alone, not one per worker
        line = parse_command(words)
        ranks = line.ranks
        if ranks is None or ranks <= 1:
            continue
        where = f"{section}.{key}"
        if ranks > cores:
            out.append(Problem(cfg.problem(where, (
                f"{where}: each task starts {ranks} MPI ranks but this machine has {cores} "
                f"cores: Open MPI refuses to start more ranks than cores (every task would "
                f"fail) and other MPIs time-slice them; use at most {cores} ranks, or run "
                f"on SLURM (engines.scheduler: slurm)")), warning=line.oversubscribe))
        elif jobs * ranks > cores:
            out.append(Problem(cfg.problem("run.jobs", (
                f"run.jobs: {jobs} tasks at once x {ranks} MPI ranks ({where}) = "
                f"{jobs * ranks} processes on {cores} cores: the tasks run oversubscribed "
                f"(slower, not wrong); run.jobs {max(1, cores // ranks)} fits")),
                warning=True))
    return out
