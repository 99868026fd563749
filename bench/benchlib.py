"""Helpers shared by the benchmarks: the machine, timing a command, BENCHMARKS.md sections.

Benchmarks measure whole commands as a user runs them (a fresh process each time), because
the speed targets are about what a person waits for at a terminal or in a batch job, not
about one function inside a warm interpreter. They are kept out of the test suite on
purpose: timings depend on the machine and its load, so they are recorded with the
machine's description instead of being asserted.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_PY = REPO / ".venv" / "bin" / "python"
SMALLCELL = REPO / "bin" / "smallcell"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# Everything a benchmark caches or scratches lives here, never in the repository.
CACHE_ROOT = Path("/tmp/smallcell-bench")


@dataclass(frozen=True)
class Machine:
    """What a timing means nothing without: cores, CPU, Python, kernel, memory."""

    nproc: int
    cpu_model: str
    python: str
    kernel: str
    mem_gib: float
    load1: float  # 1-minute load average when measuring started: others' work skews timings

    def line(self) -> str:
        return (f"{self.nproc} cores ({self.cpu_model}), {self.mem_gib:.0f} GiB RAM, "
                f"Python {self.python}, Linux {self.kernel}; load average "
                f"{self.load1:.2f} at start")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown CPU"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or "unknown CPU")


def _mem_gib() -> float:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    m = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) / 2**20 if m else 0.0


def machine() -> Machine:
    """Describe this machine; the Python version is the venv's, the one smallcell runs on."""
    try:
        py = subprocess.run([str(VENV_PY), "-c", "import platform; "
                             "print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        py = platform.python_version() + " (not the venv's)"
    # `nproc` honours the CPU affinity mask (containers, cgroups, SLURM), os.cpu_count not.
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return Machine(nproc, _cpu_model(), py, platform.release(), _mem_gib(), load1())


def load1() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def timed_run(cmd: Sequence[str], *, cwd: Path = REPO, env: Mapping[str, str] | None = None,
              stdout_path: Path | None = None) -> tuple[float, int, str]:
    """Run `cmd` once; return (wall seconds, exit code, captured stdout or '').

    Output goes to a pipe (or a file), as under `make` or a batch job, so terminal
    rendering never counts."""
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    if stdout_path is not None:
        with open(stdout_path, "w", encoding="utf-8") as fh:
            proc = subprocess.run(list(cmd), cwd=cwd, env=full_env, stdout=fh,
                                  stderr=subprocess.STDOUT, check=False)
        out = ""
    else:
        proc = subprocess.run(list(cmd), cwd=cwd, env=full_env, capture_output=True,
                              text=True, check=False)
        out = proc.stdout + proc.stderr
    return time.perf_counter() - t0, proc.returncode, out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def start_marker(name: str) -> str:
    return f"<!-- bench:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def replace_section(text: str, name: str, body: str, title: str) -> str:
    """Put `body` between the markers of section `name`, leaving everything else as is.

    Hand-written text lives outside the markers, so rerunning a benchmark never loses it.
    A section whose markers are missing is appended under a `## title` heading."""
    start, end = start_marker(name), end_marker(name)
    block = f"{start}\n{body.strip()}\n{end}"
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    if i >= 0 and j >= 0:
        return text[:i] + block + text[j + len(end):]
    if i >= 0 or text.find(end) >= 0:
        raise ValueError(f"BENCHMARKS.md: unbalanced markers for section {name!r}; fix "
                         f"them by hand ({start} ... {end})")
    return text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"


def write_sections(sections: Mapping[str, tuple[str, str]], path: Path = BENCHMARKS_MD) -> None:
    """Rewrite the given sections {name: (title, body)} of BENCHMARKS.md atomically."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    for name, (title, body) in sections.items():
        text = replace_section(text, name, body, title)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def reference_npt_frames(cell: Sequence[int], t: float, p: float, seed: int, steps: int,
                         skip: int, every: int) -> list:
    """Frames of one NPT run of fcc Pb (`cell` repetitions, displaced 0.1 Å) with the
    reference EAM at (t K, p bar), every `every` steps after `skip`, labeled by it: the
    held-out and test sets the benchmarks measure potentials on (never trained on)."""
    import warnings

    import numpy as np
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevinbaoab import LangevinBAOAB
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from smallcell.engines.eam_pb import calculator
    from smallcell.structures import displace, supercell

    rng = np.random.default_rng(seed)
    atoms = displace(supercell("fcc", 4.95, tuple(cell), "Pb"), 0.1, "uniform", rng)
    atoms.set_masses([207.2] * len(atoms))
    atoms.calc = calculator()
    thermalize_momenta(atoms, temperature_K=t, rng=rng)
    Stationary(atoms)
    with warnings.catch_warnings():  # ASE announces its heuristic barostat mass
        warnings.simplefilter("ignore", UserWarning)
        dyn = LangevinBAOAB(atoms, 2.0 * units.fs, temperature_K=t,
                            externalstress=p * units.bar, hydrostatic=True,
                            T_tau=100 * units.fs, P_tau=1000 * units.fs, rng=rng)
    frames = []
    for step in range(1, steps + 1):
        dyn.run(1)
        if step > skip and step % every == 0:
            a = atoms.copy()
            a.calc = SinglePointCalculator(a, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(), stress=atoms.get_stress())
            frames.append(a)
    return frames


def write_frames(futs: Sequence, path: Path) -> None:
    """The frames of finished reference-MD futures (reference_npt_frames), in order, as
    one cfg file written under a temporary name (nothing when `futs` is empty)."""
    from smallcell.formats.cfg import atoms_to_cfg, write_cfgs

    if not futs:
        return
    frames = [a for f in futs for a in f.result()]
    tmp = path.with_suffix(".tmp")
    write_cfgs(tmp, [atoms_to_cfg(a, ["Pb"]) for a in frames])
    tmp.replace(path)


def start_frames(pool, fn, grid: Mapping, seed0: int) -> list:
    """Queue `fn(t, p, seed0 + k)` (a reference-MD sampler) for every (T, P) of `grid`
    ahead of the runs, which wait for its file (write_frames, wait_file) only when they
    need it."""
    points = [(t, p) for t in grid["temperatures"] for p in grid["pressures"]]
    return [pool.submit(fn, t, p, seed0 + k) for k, (t, p) in enumerate(points)]


def wait_file(path: Path, timeout: float = 3600.0) -> Path:
    """`path` once another worker has written it (TimeoutError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(1.0)
    return path
