"""sample: the true errors of the potential that explored, on the error study's sample.

select draws `sample.size` configurations at random from everything the MD queried with
sample.gamma_min < gamma < sample.gamma_max (select/sample.cfg); label labels them in
`sample/<k>/` beside the selected ones (never collected into the training set). This stage
evaluates iteration i-1's potential (the one that ran the MD and graded the queries) on
the labeled ones and writes, per configuration, its gamma and its errors, their means,
and how well gamma ranks them (metrics.py), to `sample/errors.json`. That file
is written last, under a temporary name: it is the stage's marker.

The study needs only iteration i-1's potential, so it runs beside the iteration's
training (and, on SLURM, past it): nothing the loop decides reads it, unless the stop rule
does (gates_training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smallcell.config import Config
from smallcell.engines.base import trainer_for
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import read_cfgs
from smallcell.metrics import correlations
from smallcell.stages import label
from smallcell.stages.common import Iteration, progress
from smallcell.state import atomic_output, atomic_write_json, is_done, is_failed, read_json

STAGE = "sample"
ERRORS = "errors.json"
LABELED = "labeled.cfg"


def errors_path(it: Iteration) -> Path:
    return it.stage(STAGE) / ERRORS


def gates_training(cfg: Config) -> bool:
    """Whether the iteration's fit must wait for the sample's errors: the accuracy stop
    rule on the sample's force error decides the final refit (loop.final_fit_due) and
    the stage's end. Otherwise the study is data only, and runs beside training."""
    stop = cfg["stop"]
    return stop["rule"] == "accuracy" and stop["metric"] == "sample"


def pending(it: Iteration) -> bool:
    """The iteration has a sample whose errors are not written yet."""
    return it.i > 0 and label.n_sample(it) > 0 and not errors_path(it).exists()


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def measure(dirs: list[Path], out: Path, train_dir: Path, config: Config) -> dict[str, Any]:
    """Errors of `train_dir`'s potential on the labeled task folders among `dirs` (their
    labels joined in out/labeled.cfg): per configuration its gamma (from input.cfg) and
    errors, their means, and how well gamma ranks them. Shared with the validation."""
    done = [j for j, d in enumerate(dirs) if is_done(d)]
    rows: list[dict[str, Any]] = []
    if done:
        with atomic_output(out / LABELED) as tmp, open(tmp, "wb") as fh:
            for j in done:
                fh.write((dirs[j] / "labeled.cfg").read_bytes())
        errs = trainer_for(config).config_errors(train_dir, list(config["species"]),
                                                 out / LABELED, out / "check_errors")
        if len(errs) != len(done):
            raise SmallcellError(f"{out / LABELED}: {len(done)} configurations but the "
                                 f"trainer returned errors for {len(errs)}")
        for j, e in zip(done, errs, strict=True):
            [cfg] = read_cfgs(dirs[j] / "input.cfg")
            rows.append({"task": j, "gamma": cfg.mv_grade, "atoms": int(e["atoms"]),
                         "energy_error": abs(e["energy_diff"]),
                         "energy_per_atom_error": e["energy_per_atom_diff"],
                         "force_error": e["force_rms"], "force_max_error": e["force_max"]})
    gamma = [r["gamma"] for r in rows]
    force = [r["force_error"] for r in rows]
    epa = [r["energy_per_atom_error"] for r in rows]
    return {
        "n_sample": len(dirs),
        "n_labeled": len(done),
        "n_failed": len(dirs) - len(done),
        "force_error_mean": _mean(force),
        "energy_error_mean": _mean([r["energy_error"] for r in rows]),
        "energy_per_atom_error_mean": _mean(epa),
        "gamma_vs_force": correlations(gamma, force),
        "gamma_vs_energy": correlations(gamma, epa),
        "units": {"force_error": "eV/Å (RMS over atoms of |F_ref - F_ML|)",
                  "energy_error": "eV (|E_ref - E_ML|)", "energy_per_atom_error": "eV/atom"},
        "configs": rows,
    }


def describe(result: dict[str, Any]) -> str:
    """One progress line of a measured sample."""
    if not result["configs"]:
        return f"none of the {result['n_sample']} sample configurations was labeled"
    rho = result["gamma_vs_force"]["spearman"]
    return (f"{result['n_labeled']} configurations: mean force error "
            f"{result['force_error_mean']:.4f} eV/Å, mean |dE| "
            f"{1000 * result['energy_per_atom_error_mean']:.2f} meV/atom; gamma vs force "
            f"error: Spearman {'-' if rho is None else f'{rho:.2f}'}")


def run(it: Iteration) -> dict[str, Any]:
    """Evaluate the exploring potential on the labeled sample; write and return errors.json."""
    n = label.n_sample(it)
    dirs = [label.sample_dir(it, j) for j in range(n)]
    unmarked = [str(d) for d in dirs if not (is_done(d) or is_failed(d))]
    if unmarked:
        raise SmallcellError(f"iteration {it.i}: {len(unmarked)} error-sample label task(s) "
                             f"have no marker yet, e.g. {unmarked[0]}")
    prev = it.previous_train
    assert prev is not None  # iteration 0 explores nothing, so it has no sample
    result = {"iteration": it.i, "potential": str(prev.relative_to(it.paths.root)),
              **measure(dirs, it.stage(STAGE), prev, it.cfg)}
    atomic_write_json(errors_path(it), result)
    progress(it, STAGE, describe(result))
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The summary.json keys of a measured sample (measure's result; {} for none: zero
    counts, None values). The iterations' summaries and the validation's share them."""
    return {
        "sample_n": result.get("n_labeled", 0),
        "sample_failed": result.get("n_failed", 0),
        "sample_force_error_mean": result.get("force_error_mean"),
        "sample_energy_error_mean": result.get("energy_error_mean"),
        "sample_energy_per_atom_error_mean": result.get("energy_per_atom_error_mean"),
        "sample_gamma_force_spearman": (result.get("gamma_vs_force") or {}).get("spearman"),
        "sample_gamma_energy_spearman": (result.get("gamma_vs_energy") or {}).get("spearman"),
    }


def summary_fields(it: Iteration) -> dict[str, Any]:
    """What summary.json keeps of the iteration's sample (None values without one)."""
    path = errors_path(it)
    return summarize(read_json(path) if path.exists() else {})
