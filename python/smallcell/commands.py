"""What a configured command line runs: its programs, word by word, and its MPI ranks.

`vasp.command: mpirun -np 16 vasp_std` runs two programs, `mpirun` and `vasp_std`; both
must exist where the task runs. This module reads such a command (already split into argv
words, config.py `_check_command`) the way the launcher would: a launcher (mpirun, srun,
...) or wrapper (env, time, nice, ...) takes options, some of which take values, and then
the next word is the program it starts, which may itself be a launcher or wrapper. The
first word that is neither ends the walk: the rest are that program's own arguments
(`lmp -sf omp` is one program).

Options: `--opt=value` carries its value. A known option takes the values its table says
(`--mca key value` two). An unknown option takes the next word when it looks like a value
(a number, or text with `,` `:` `=` `/` `@`, e.g. `--map-by ppr:2:node`), else none; so
`mpirun --oversubscribe vasp_std` finds vasp_std, and a misjudged option makes the check
name a word that is not a program, never silently skip one. Pure: imports nothing of
smallcell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# launcher basename -> {option: number of values it takes}; options not listed are judged
# by the look of the next word (see the module docstring)
_MPIRUN = {
    "-np": 1, "--np": 1, "-n": 1, "--n": 1, "-c": 1, "-N": 1, "-npernode": 1,
    "--npernode": 1, "-npersocket": 1, "--npersocket": 1, "-ppn": 1, "--ppn": 1,
    "-host": 1, "--host": 1, "-H": 1, "-hosts": 1, "-hostfile": 1, "--hostfile": 1,
    "-machinefile": 1, "--machinefile": 1, "-f": 1, "-x": 1, "-genv": 2, "-env": 2,
    "-genvlist": 1, "--mca": 2, "-mca": 2, "--gmca": 2, "-gmca": 2, "--map-by": 1,
    "-map-by": 1, "--bind-to": 1, "-bind-to": 1, "--rank-by": 1, "-rank-by": 1,
    "-wdir": 1, "--wdir": 1, "-wd": 1, "--prefix": 1, "-launcher": 1, "-bootstrap": 1,
    "-iface": 1, "--cpus-per-proc": 1, "--cpus-per-rank": 1, "-cpus-per-proc": 1,
    "--oversubscribe": 0, "-oversubscribe": 0, "--allow-run-as-root": 0,
    "--report-bindings": 0, "-report-bindings": 0, "--display-map": 0, "-v": 0,
    "--verbose": 0, "-q": 0, "--quiet": 0, "--tag-output": 0, "-tag-output": 0,
    "--timestamp-output": 0, "--use-hwthread-cpus": 0, "-use-hwthread-cpus": 0,
    "-l": 0, "-prepend-rank": 0, "--bind-to-core": 0, "-bind-to-core": 0,
}
_SRUN = {
    "-n": 1, "-N": 1, "-c": 1, "-p": 1, "-A": 1, "-t": 1, "-J": 1, "-w": 1, "-x": 1,
    "-o": 1, "-e": 1, "-i": 1, "-m": 1, "-D": 1, "-C": 1, "-G": 1, "--ntasks": 1,
    "--nodes": 1, "--cpus-per-task": 1, "--mpi": 1, "--cpu-bind": 1, "--mem": 1,
    "--partition": 1, "--account": 1, "--time": 1, "--exclusive": 0, "--overlap": 0,
    "--exact": 0, "-l": 0, "--label": 0, "-u": 0, "--unbuffered": 0, "-v": 0, "-Q": 0,
    "--quiet": 0, "-K": 0, "-k": 0, "-O": 0, "--overcommit": 0,
}
_APRUN = {"-n": 1, "-N": 1, "-d": 1, "-j": 1, "-S": 1, "-cc": 1, "-m": 1, "-L": 1}
LAUNCHERS: dict[str, dict[str, int]] = {
    "mpirun": _MPIRUN, "mpiexec": _MPIRUN, "mpiexec.hydra": _MPIRUN, "orterun": _MPIRUN,
    "mpirun_rsh": _MPIRUN, "prun": _MPIRUN, "ibrun": _MPIRUN, "srun": _SRUN,
    "aprun": _APRUN, "jsrun": {"-n": 1, "-a": 1, "-c": 1, "-g": 1, "-r": 1},
}
WRAPPERS: dict[str, dict[str, int]] = {
    "env": {"-u": 1, "--unset": 1, "-C": 1, "--chdir": 1, "-i": 0, "--ignore-environment": 0},
    "time": {"-f": 1, "--format": 1, "-o": 1, "--output": 1, "-p": 0, "-v": 0},
    "nice": {"-n": 1, "--adjustment": 1},
    "nohup": {},
    "stdbuf": {"-i": 1, "-o": 1, "-e": 1},
    "numactl": {"-N": 1, "-m": 1, "-C": 1, "-i": 1, "-p": 1, "--cpunodebind": 1,
                "--membind": 1, "--physcpubind": 1, "--interleave": 1, "--preferred": 1,
                "-l": 0, "--localalloc": 0},
}
# options that set the number of MPI ranks, per launcher kind
_RANK_OPTIONS = {"mpirun": ("-np", "--np", "-n", "--n", "-c"), "srun": ("-n", "--ntasks"),
                 "aprun": ("-n",), "jsrun": ("-n",)}
_VALUE_LOOK = re.compile(r"^[-+]?\d|[,:=/@]")


@dataclass
class CommandLine:
    """What one argv runs: ``programs`` in order (launchers and wrappers first, the
    program last), ``launcher`` (the first launcher's basename, or None), ``ranks`` (the
    number of MPI ranks it asks for: 1 without a launcher, None when a launcher is given
    no count), ``oversubscribe`` (the launcher is told to accept more ranks than cores)."""

    programs: list[str] = field(default_factory=list)
    launcher: str | None = None
    ranks: int | None = 1
    oversubscribe: bool = False


def _base(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _kind(table: dict[str, int]) -> str:
    return next((k for k, v in LAUNCHERS.items() if v is table), "")


def parse_command(words: list[str]) -> CommandLine:
    """The programs and MPI ranks of `words` (see the module docstring)."""
    out = CommandLine()
    i = 0
    while i < len(words):
        word = words[i]
        out.programs.append(word)
        name = _base(word)
        table = LAUNCHERS.get(name)
        wrapper = WRAPPERS.get(name)
        if table is None and wrapper is None:
            break  # the program itself: the rest are its arguments
        if table is not None and out.launcher is None:
            out.launcher = name
            out.ranks = None
        i += 1
        opts = table if table is not None else wrapper or {}
        while i < len(words):
            w = words[i]
            if name == "env" and "=" in w and not w.startswith("-"):
                i += 1  # VAR=value
                continue
            if w == "--":
                i += 1
                break
            if not w.startswith("-") or w == "-":
                break
            opt, eq, value = w.partition("=")
            n = opts.get(opt)
            if n is None and not eq and i + 1 < len(words):
                n = 1 if _VALUE_LOOK.search(words[i + 1]) else 0
            values = [value] if eq else words[i + 1:i + 1 + (n or 0)]
            if "oversubscribe" in w.lower() or any("OVERSUBSCRIBE" in v.upper()
                                                    for v in values):
                out.oversubscribe = True
            if (table is not None and opt in _RANK_OPTIONS.get(_kind(table), ())
                    and values and values[0].isdigit()):
                out.ranks = int(values[0])
            i += 1 if eq else 1 + (n or 0)
    return out
