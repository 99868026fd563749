"""The DFT cost of a label: what the reference calculation costs, in seconds.

The study's question is how many DFT seconds the active learning spends, but the embedded
default labels with an EAM potential, whose milliseconds say nothing about DFT. So an EAM
label is charged a cost model instead: the core-seconds of one GPAW plane-wave single point
of the same number of Pb atoms at the project's GPAW settings (examples/pb-gpaw.yaml),
cost(N) = c * N^p, fitted to single points measured through the GPAW labeler by
bench/dft_cost.py (`make bench-dft-cost`; BENCHMARKS.md, "DFT cost model"). A real DFT
label (GPAW, VASP) is charged its measured wall seconds.

The fitted coefficients ship as package data (data/dft_cost.json beside this file; the
package is imported from python/ without an install step, so the path is the module's).
Beyond the largest measured cell the power law is an extrapolation, and `extrapolated`
says so. Plane-wave DFT tends to N^3 for large cells, while at a fixed k-point density
the k-mesh shrinks as the cell grows, so small cells grow more slowly than that (p well
below 3). Once the mesh stops shrinking (2x2x2 at kspacing 0.33 from 32 atoms on, 108
included) the cost grows like one k-point's, faster than the law: there it is a lower
bound. The numbers: BENCHMARKS.md, "DFT cost model".
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from smallcell.errors import SmallcellError

DATA_FILE = Path(__file__).with_name("data") / "dft_cost.json"
COST_UNIT = "DFT s (GPAW-model core-seconds for EAM labels; measured wall s for DFT labels)"
MODELED = frozenset({"eam"})  # labelers charged the model, not their own time
MEASURED = frozenset({"gpaw", "vasp"})  # labelers that are DFT: their wall time is the cost
_REQUIRED = {"c": float, "p": float, "sizes": list, "max_measured_atoms": int}


def is_modeled(labeler: str) -> bool:
    """True when `labeler`'s cost is the model's (its own time is not DFT's)."""
    return labeler in MODELED


def fit(measurements: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The model fitted to raw timings (each with "atoms" and "cpu_seconds", the GPAW
    process's user + system time: core-seconds, unlike wall time not inflated by whatever
    else shares the cores): least squares of log(cpu_seconds) against log(atoms) over the
    per-size medians, so every size weighs the same whatever its number of repeats and one
    slow repeat does not pull the line.

    Returns the data file's contents: c, p, the sizes with their medians, repeats,
    k-meshes and residuals (log(measured median / model)), the largest measured size, the
    machine and GPAW version of the measurements and the date range.
    """
    rows = list(measurements)
    by_size: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_size.setdefault(int(r["atoms"]), []).append(r)
    if len(by_size) < 2:
        raise SmallcellError(f"the DFT cost model needs timings of at least 2 cell sizes, got "
                             f"{sorted(by_size) or 'none'}")
    sizes = sorted(by_size)
    medians = [statistics.median(float(r["cpu_seconds"]) for r in by_size[n]) for n in sizes]
    xs = [math.log(n) for n in sizes]
    ys = [math.log(t) for t in medians]
    p = _slope(xs, ys)
    log_c = statistics.fmean(ys) - p * statistics.fmean(xs)
    residuals = [y - (log_c + p * x) for x, y in zip(xs, ys, strict=True)]
    ikpts = [by_size[n][0].get("irreducible_kpoints") for n in sizes]
    per_k = None  # the exponent of seconds per irreducible k-point: how one k-point scales
    if all(isinstance(k, int) and k > 0 for k in ikpts):
        per_k = _slope(xs, [y - math.log(k) for y, k in zip(ys, ikpts, strict=True)])
    machines = sorted({f"{r['machine']['cores']} cores, {r['machine']['cpu']}"
                       for r in rows if "machine" in r})
    dates = sorted(str(r["date"]) for r in rows if "date" in r)
    per_k_text = "?" if per_k is None else f"{per_k:.2f}"
    return {
        "model": "seconds = c * atoms^p: one GPAW plane-wave single point of fcc Pb, "
                 "core-seconds (CPU time of one process with one thread)",
        "method": "least squares of log(cpu_seconds) on log(atoms) over the per-size medians",
        "c": math.exp(log_c), "p": p, "sizes": sizes, "medians_seconds": medians,
        "min_seconds": [min(float(r["cpu_seconds"]) for r in by_size[n]) for n in sizes],
        "max_seconds": [max(float(r["cpu_seconds"]) for r in by_size[n]) for n in sizes],
        "wall_medians_seconds": [
            statistics.median(float(r.get("wall_seconds", math.nan)) for r in by_size[n])
            for n in sizes],
        "repeats": [len(by_size[n]) for n in sizes],
        "kpoints": [by_size[n][0].get("kpoints") for n in sizes],
        "irreducible_kpoints": ikpts, "per_kpoint_p": per_k,
        "residuals_log": residuals, "max_abs_residual_log": max(abs(r) for r in residuals),
        "max_measured_atoms": sizes[-1],
        "extrapolation": f"beyond {sizes[-1]} atoms the power law is carried on with the "
                         f"fitted p. Its p is below plane-wave DFT's asymptotic 3 because at a "
                         f"fixed k-point density the k-mesh shrinks as the cell grows; where "
                         f"the mesh stops shrinking (kspacing 0.33: 2x2x2 for 32 and for 108 "
                         f"atoms) the cost grows like one k-point's, N^{per_k_text} here and "
                         f"toward N^3, so large cells cost more than the law says: a lower "
                         f"bound there",
        "machine": "; ".join(machines) or "unknown",
        "gpaw_version": ", ".join(sorted({str(r.get("gpaw_version")) for r in rows})),
        "dates": [dates[0], dates[-1]] if dates else [],
        "settings": rows[0].get("settings", {}),
        "source": "bench/dft_cost.py (raw timings: bench/data/dft_cost.json)",
    }


def _slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys on xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)


@functools.cache
def _model() -> dict[str, Any]:
    """The shipped coefficients, read once and checked (a bad file is named, not a
    KeyError in the middle of a report)."""
    try:
        data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SmallcellError(f"{DATA_FILE}: cannot read the DFT cost model ({exc}); expected "
                             "the JSON written by bench/dft_cost.py --fit-only") from exc
    if not isinstance(data, dict):
        raise SmallcellError(f"{DATA_FILE}: expected a JSON object with "
                             f"{', '.join(_REQUIRED)}, got {type(data).__name__}")
    for key, kind in _REQUIRED.items():
        value = data.get(key)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise SmallcellError(f"{DATA_FILE}: expected {key!r} ({kind.__name__}) in the DFT "
                                 f"cost model, got {value!r}")
    if not (data["c"] > 0 and math.isfinite(data["c"]) and math.isfinite(data["p"])):
        raise SmallcellError(f"{DATA_FILE}: expected c > 0 and a finite p, got "
                             f"c={data['c']!r}, p={data['p']!r}")
    return data


def model_seconds(n_atoms: int) -> float:
    """Modeled GPAW core-seconds of one single point of `n_atoms` Pb atoms (c * N^p)."""
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, int) or n_atoms < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
    m = _model()
    return float(m["c"] * n_atoms ** m["p"])


def extrapolated(n_atoms: int) -> bool:
    """True when `n_atoms` lies beyond the largest measured cell (the power law is then
    carried past its data)."""
    return n_atoms > int(_model()["max_measured_atoms"])


def task_cost(labeler: str, n_atoms: int, seconds: float | None) -> float:
    """A label task's DFT cost in seconds: the model for a modeled labeler (EAM), the
    measured wall seconds for a DFT labeler (GPAW, VASP; 0.0 when not recorded)."""
    if labeler in MODELED:
        return model_seconds(n_atoms)
    if labeler in MEASURED:
        return 0.0 if seconds is None else float(seconds)
    raise ValueError(f"no DFT cost rule for labeler {labeler!r} (known: "
                     f"{', '.join(sorted(MODELED | MEASURED))})")


def describe() -> str:
    """One line naming the model, for reports."""
    m = _model()
    sizes = ", ".join(str(n) for n in m["sizes"])
    return (f"EAM labels charged the GPAW cost model {m['c']:.3g} * N^{m['p']:.2f} "
            f"core-seconds (fcc Pb single points measured at {sizes} atoms, power law "
            f"extrapolated beyond {m['max_measured_atoms']}; {m['machine']}; GPAW "
            f"{m['gpaw_version']})")
