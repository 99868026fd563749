"""The DFT cost model behind smallcell's "DFT cost" of an EAM label: GPAW single points of
fcc Pb measured at the project's GPAW settings, and the power law fitted to them.

The embedded labeler (EAM) takes milliseconds, which says nothing about what the same
label would cost in DFT. So every EAM label is charged what one GPAW plane-wave single
point of the same cell costs here, modeled as cost(N) = c * N^p core-seconds. This script
measures those single points and fits c and p:

- the cells: fcc Pb at a = 5.04 Å, 1x1x1 (4 atoms), 1x1x2 (8), 1x2x2 (16), 2x2x2 (32),
  every atom displaced uniformly in [-0.1, 0.1] Å per component (the protocol's
  displacement), a fixed seed per (size, repeat): each repeat is another configuration,
  so the spread includes the SCF's dependence on the structure, as a run's labels would;
- the settings: examples/pb-gpaw.yaml's `gpaw:` section (PW 500 eV, PBE, Fermi-Dirac
  0.1 eV, kspacing 0.33 Å⁻¹ incl. 2π, so the k-mesh shrinks as the cell grows), one
  process (launcher none) and one BLAS/OpenMP thread, so the seconds are core-seconds;
- the code path: engines/gpaw.py's GpawLabeler.label on a task folder, as a label task
  runs it. Recorded: the CPU time (user + system) of the GPAW process, which is what is
  fitted (core-seconds; wall time on a shared machine also counts the others' work), and
  the wall seconds of its label.json (what a run records for a GPAW label), with the
  load average before and after.

Raw timings go to bench/data/dft_cost.json (kept and added to unless --fresh); the fit
(least squares of log(CPU seconds) against log(N) over the per-size medians) goes to
python/smallcell/data/dft_cost.json, which smallcell.cost reads.

    .venv/bin/python bench/dft_cost.py [--sizes 4 8 16 32] [--repeats 2] [--fit-only]
                                       [--fresh] [--timeout S]      (or: make bench-dft-cost)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from benchlib import CACHE_ROOT, REPO, load1, machine, utc_now

from smallcell import cost
from smallcell.engines.base import LabelError
from smallcell.engines.gpaw import GpawLabeler, GpawSettings
from smallcell.state import atomic_write_json
from smallcell.structures import displace, rng_for, supercell

RAW = REPO / "bench" / "data" / "dft_cost.json"
CONFIG = REPO / "examples" / "pb-gpaw.yaml"
REPS = {4: (1, 1, 1), 8: (1, 1, 2), 16: (1, 2, 2), 32: (2, 2, 2)}
A, DISPLACEMENT, SEED = 5.04, 0.1, 2024
WORK = CACHE_ROOT / "dft_cost"
# One thread: Debian's OpenBLAS is the pthread build and would otherwise use every core,
# and the model is in core-seconds of one process.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def settings(timeout: float | None) -> GpawSettings:
    """pb-gpaw.yaml's DFT settings, run as one process (no launcher)."""
    section = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["gpaw"]
    return GpawSettings.from_mapping({**section, "launcher": None, "timeout": timeout})


def gpaw_version() -> str:
    res = subprocess.run(["/usr/bin/python3", "-c", "import gpaw; print(gpaw.__version__)"],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip() or "unknown"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialize read-modify-write of the raw file (sizes may be measured in parallel)."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".raw.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def read_raw() -> dict[str, Any]:
    if not RAW.exists():
        return {"measurements": []}
    return json.loads(RAW.read_text(encoding="utf-8"))


def _record(entry: dict[str, Any]) -> None:
    with _locked():
        raw = read_raw()
        raw["description"] = ("GPAW plane-wave single points of displaced fcc Pb through "
                              "smallcell's GpawLabeler, one process; written by "
                              "bench/dft_cost.py")
        raw["measurements"] = [*raw.get("measurements", []), entry]
        atomic_write_json(RAW, raw)


def _irreducible_kpoints(task: Path) -> int | None:
    try:
        text = (task / "gpaw.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^(\d+) k-points in the irreducible part", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children: the GPAW process
    the labeler ran, whatever else shares the cores meanwhile."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(n: int, repeat: int, s: GpawSettings, version: str) -> dict[str, Any] | None:
    """One single point of the n-atom cell (configuration `repeat`); the record, or None
    when it failed or timed out (said on stderr, nothing recorded)."""
    atoms = displace(supercell("fcc", A, REPS[n], "Pb"), DISPLACEMENT, "uniform",
                     rng_for(SEED, "dft_cost", n, repeat))
    task = WORK / f"{n:03d}-{repeat}"
    task.mkdir(parents=True, exist_ok=True)
    m = machine()
    t0 = time.perf_counter()
    cpu0 = _children_cpu()
    try:
        GpawLabeler(s).label(task, atoms)
    except LabelError as exc:
        print(f"{n} atoms, repeat {repeat}: failed after {time.perf_counter() - t0:.0f} s: "
              f"{exc}", file=sys.stderr)
        return None
    cpu = _children_cpu() - cpu0
    info = json.loads((task / "label.json").read_text(encoding="utf-8"))
    result = json.loads((task / "result.json").read_text(encoding="utf-8"))
    return {
        "atoms": n, "repeat": repeat, "seed": SEED, "cell": [list(map(float, v)) for v in
                                                            atoms.cell[:]],
        "supercell": list(REPS[n]), "kpoints": info["kpoints"],
        "irreducible_kpoints": _irreducible_kpoints(task),
        "cpu_seconds": cpu, "wall_seconds": float(info["seconds"]),
        "scf_iterations": info.get("scf_iterations"),
        "gpaw_seconds": result.get("seconds"), "mpi_ranks": info.get("mpi_ranks"),
        "gpaw_version": info.get("gpaw_version") or version,
        "machine": {"cores": m.nproc, "cpu": m.cpu_model, "load1_start": m.load1,
                    "load1_end": load1(), "mem_gib": round(m.mem_gib, 1)},
        "threads": 1, "date": utc_now(),
        "settings": {"ecut": s.ecut, "xc": s.xc, "kspacing": s.kspacing,
                     "smearing": s.smearing, "width": s.width, "launcher": None},
    }


def write_fit() -> dict[str, Any]:
    """Fit the raw file's measurements and write the package's data file."""
    model = cost.fit(read_raw()["measurements"])
    atomic_write_json(cost.DATA_FILE, model)
    return model


def markdown(model: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The measured table and the fit, for BENCHMARKS.md's "DFT cost model"."""
    out = ["| atoms | supercell | k-mesh (irreducible k) | repeats | CPU s: median | min-max "
           "| wall s: median | SCF iterations | model s | median / model |",
           "|" + "---:|" * 10]
    for i, n in enumerate(model["sizes"]):
        mine = [r for r in rows if r["atoms"] == n]
        scf = "/".join(str(r.get("scf_iterations")) for r in mine)
        out.append(
            f"| {n} | {'x'.join(map(str, REPS[n]))} | {'x'.join(map(str, model['kpoints'][i]))}"
            f" ({model['irreducible_kpoints'][i]}) | {model['repeats'][i]} | "
            f"{model['medians_seconds'][i]:.0f} | {model['min_seconds'][i]:.0f}-"
            f"{model['max_seconds'][i]:.0f} | {model['wall_medians_seconds'][i]:.0f} | {scf} | "
            f"{cost.model_seconds(n):.0f} | {math.exp(model['residuals_log'][i]):.3f} |")
    loads = [r["machine"][k] for r in rows for k in ("load1_start", "load1_end")]
    out += ["", f"c = {model['c']:.4g} s, p = {model['p']:.3f} (seconds per irreducible "
            f"k-point grow as N^{model['per_kpoint_p']:.2f}); model at 4/8/16/32/108 atoms: "
            + ", ".join(f"{cost.model_seconds(n):.0f}" for n in (4, 8, 16, 32, 108))
            + f" s; {model['machine']}, GPAW {model['gpaw_version']}, "
            f"{' to '.join(model['dates'])}; load average {min(loads):.1f}-{max(loads):.1f}"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32],
                   choices=sorted(REPS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--fit-only", action="store_true",
                   help="re-fit from bench/data/dft_cost.json without measuring")
    p.add_argument("--fresh", action="store_true", help="drop the previous measurements")
    p.add_argument("--no-fit", action="store_true",
                   help="measure only (e.g. a size run in the background beside others)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per single point; a single point past it is dropped")
    args = p.parse_args(argv)
    if not args.fit_only:
        os.environ.update(ONE_THREAD)
        s = settings(args.timeout)
        version = gpaw_version()
        if args.fresh:
            with _locked():
                atomic_write_json(RAW, {"measurements": []})
        for n in args.sizes:
            for r in range(args.repeats):
                entry = measure(n, r, s, version)
                if entry is not None:
                    _record(entry)
                    print(f"{n} atoms, repeat {r}: {entry['cpu_seconds']:.1f} CPU s "
                          f"({entry['wall_seconds']:.1f} s wall), k-mesh "
                          f"{'x'.join(map(str, entry['kpoints']))}, "
                          f"{entry['scf_iterations']} SCF iterations", flush=True)
    if args.no_fit:
        return 0
    model = write_fit()
    cost._model.cache_clear()  # the file just written
    print(markdown(model, read_raw()["measurements"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
