"""`smallcell report` / `make report`: report/index.html (one self-contained page: the
figures embedded, a per-iteration table, the convergence verdict and the study's three
questions answered in numbers) and report/report.md, regenerated from the iteration
folders alone (rundata.py).

The three questions: (1) how gamma correlates with the true error; (2) how many
iterations and labels per iteration were needed; (3) whether max/mean gamma and the
errors fall as the data set grows, and how fast. The report also flags a force error
that rises over iterations while the energy error falls, with the diagnosis the run's
own records support (see `diagnose`): the moving error sample, a changed training set,
a fit stopped by its iteration limit or refitted from the untrained template.
"""

from __future__ import annotations

import base64
import html
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smallcell import runconfig
from smallcell.state import RunPaths, atomic_write_text
from smallcell.status import (
    CAPPED,
    CONVERGED,
    cost_text,
    dft_hours,
    dft_unit,
    finished,
    potential_text,
    reference_calls,
)
from smallcell.study import figures
from smallcell.study.rundata import (
    IterationData,
    load,
    load_comparison,
    load_large_cell,
    load_validation,
)

COLUMNS = ("iteration", "stage", "cell", "MD runs", "broke", "preselected", "selected", "labeled",
           "failed", "n_train", "gamma max", "gamma mean", "gamma std", "train E meV/atom",
           "train F meV/Å", "test E meV/atom", "test F meV/Å", "fit iterations",
           "fit converged", "sample n",
           "sample F meV/Å", "sample E meV/atom", "sample ρ(γ,F)")


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def row(d: IterationData) -> list[str]:
    """One table row; the numbers are the summary's, formatted."""
    s, te = d.summary, d.summary.get("train_errors") or {}
    conv = s.get("train_converged")
    return [str(d.i), f"{int(s.get('stage', 0)) + 1}/{int(s.get('n_stages', 1))}",
            "x".join(map(str, s.get("cell", []))) or "-",
            str(s.get("n_runs", 0)), str(s.get("n_broke", 0)), str(s.get("n_preselected", 0)),
            str(s.get("n_selected", 0)), str(s.get("n_labeled", 0)), str(s.get("n_failed", 0)),
            str(s.get("n_train", 0)), _f(s.get("gamma_max"), ".4g"),
            _f(s.get("gamma_mean"), ".4g"), _f(s.get("gamma_std"), ".4g"),
            _f(1000 * te["energy_rmse"] if "energy_rmse" in te else None, ".3f"),
            _f(1000 * te["force_rmse"] if "force_rmse" in te else None, ".2f"),
            _f(_milli((s.get("test_errors") or {}).get("energy_rmse")), ".3f"),
            _f(_milli((s.get("test_errors") or {}).get("force_rmse")), ".2f"),
            _f(s.get("train_iterations"), "d"),
            "-" if conv is None else ("yes" if conv else "no"),
            # a SLURM run's study still labeling (its job completes the summary later)
            "pending" if s.get("sample_pending") else str(s.get("sample_n", 0)),
            _f(_milli(s.get("sample_force_error_mean")), ".2f"),
            _f(_milli(s.get("sample_energy_per_atom_error_mean")), ".3f"),
            _f(s.get("sample_gamma_force_spearman"), ".2f")]


def _milli(v: float | None) -> float | None:
    return None if v is None else 1000 * v


def _error_series(data: Sequence[IterationData]) -> list[tuple[str, list[tuple[
        IterationData, float, float]]]]:
    """(name, [(the potential's iteration, energy error, force error)]) for the training
    RMSEs and for the error sample's means (the sample of iteration i measures i-1)."""
    by_i = {d.i: d for d in data}
    train = [(d, d.summary["train_errors"]["energy_rmse"], d.summary["train_errors"][
        "force_rmse"]) for d in data if {"energy_rmse", "force_rmse"} <= set(
            d.summary.get("train_errors") or {})]
    sample = [(by_i[d.i - 1], d.summary["sample_energy_per_atom_error_mean"],
               d.summary["sample_force_error_mean"]) for d in data
              if d.summary.get("sample_force_error_mean") is not None and d.i - 1 in by_i]
    return [("training-set", train), ("MD-sample", sample)]


# Where `make bench-anomaly` measured what the statements below rest on: the report's
# protocol (examples/report-protocol.yaml) and one-factor variants, each potential on its
# own MD sample and on a fixed held-out set, 20 iterations, 2-3 seeds.
_ANOMALY_BENCH = 'BENCHMARKS.md, "The report\'s force-error anomaly"'


def _sample_se(d: IterationData | None) -> float | None:
    """Standard error of the sample's mean force error (eV/Å), from its configurations."""
    f = [c["force_error"] for c in (d.sample_configs if d else [])
         if c.get("force_error") is not None]
    if len(f) < 2:
        return None
    mean = sum(f) / len(f)
    return (sum((x - mean) ** 2 for x in f) / (len(f) - 1) / len(f)) ** 0.5


def _moved_sample(by_i: dict[int, IterationData], p0: IterationData, p1: IterationData,
                  f0: float, f1: float) -> list[str]:
    """What the records say about a rise on the MD sample: the same potential, the
    samples' own noise, the held-out test set, the MD the samples came from."""
    out = []
    s0, s1 = by_i.get(p0.i + 1), by_i.get(p1.i + 1)  # the iterations holding the samples
    if p1.train_info.get("skipped") and p1.i == p0.i + 1:
        out.append(f"the potential did not change (iteration {p1.i} carried over "
                   f"iteration {p0.i}'s: no new data), only the MD sample did: the test set "
                   "moved, not the potential (in the benchmark the moving set flagged such "
                   "unchanged potentials 2 times in 32 under the report's protocol)")
    se0, se1 = _sample_se(s0), _sample_se(s1)
    if se0 is not None and se1 is not None:
        band = 2 * (se0**2 + se1**2) ** 0.5
        if f1 - f0 < band:
            out.append(f"the rise ({1000 * (f1 - f0):.1f} meV/Å) is within twice the "
                       f"standard error of the two samples' means ({1000 * band:.1f} meV/Å): "
                       "sampling noise of two MD samples")
    t0 = (p0.summary.get("test_errors") or {}).get("force_rmse")
    t1 = (p1.summary.get("test_errors") or {}).get("force_rmse")
    if t0 is not None and t1 is not None:
        if t1 <= 1.05 * t0:
            out.append(f"on the held-out test set the force RMSE did not rise ({1000 * t0:.1f}"
                       f" -> {1000 * t1:.1f} meV/Å): the MD sample moved (each iteration's "
                       "sample comes from its own potential's MD), the potential did not get "
                       "worse")
        else:
            out.append(f"the held-out test set's force RMSE rose too ({1000 * t0:.1f} -> "
                       f"{1000 * t1:.1f} meV/Å): the potential got worse on forces, not only "
                       "the test set moved")
    else:
        out.append("this run has no held-out test set (initial.test_fraction) to tell a "
                   "moved MD sample from a worse potential: in the benchmark the MD sample "
                   "and a fixed held-out set measured the same force error (ratio 0.80-1.21) "
                   "once the MD ran most of its steps")
    n0, n1 = (s.summary.get("gamma_count") if s else None for s in (s0, s1))
    if n0 and n1 and max(n0, n1) > 2 * min(n0, n1):
        out.append(f"the two samples come from MD of very different lengths ({n0} and {n1} "
                   "graded steps): different test sets; in the benchmark samples of MD "
                   "that broke early measured 0.91 (0.64-1.55) of the held-out force error "
                   "under the report's protocol, 0.68 with converged fits")
    return out


def _fit_causes(cur: IterationData) -> list[str]:
    """What the potential's own fit records say (train/errors.json, summary)."""
    if cur.train_info.get("skipped"):
        return []
    iters, limited = cur.summary.get("train_iterations"), \
        cur.summary.get("train_converged") is False
    template = cur.train_info.get("warm_start") is False and cur.i > 0
    if limited and template:
        return [f"it was refitted from the untrained template and stopped at its iteration "
                f"limit ({iters} iterations, not converged): in the benchmark such fits "
                "(the report's protocol) differed from one refit to the next by a typical "
                "factor of 1.67 in held-out force error, with the force and energy errors "
                "moving together (rank correlation 0.98), so a single rise is the scatter "
                "of unconverged fits; converged warm-started fits (trainer.warm_start: true, "
                "tolerance 0.01, restarts 2) cut that factor to 1.03"]
    if limited:
        return [f"its fit stopped at the iteration limit ({iters} iterations) before "
                "converging: raise trainer.max_iter"]
    if template:
        return ["it was fitted from the untrained template, not from the previous "
                "potential, and lands in another local minimum each time: set "
                "trainer.warm_start: true"]
    return ["the fit converged from a warm start: the new data are harder (larger forces) "
            "or the fit found another local minimum (trainer.restarts)"]


def diagnose(data: Sequence[IterationData]) -> list[str]:
    """Potentials whose force error rose (> 5 %) over the previous one's while the energy
    error fell, on the training set or on the MD error sample, each with the diagnosis
    the run's own records support: an unchanged potential, the samples' noise, the
    held-out test set, the MD the samples came from, the fit's convergence and start
    (tied to what `make bench-anomaly` measured: BENCHMARKS.md)."""
    by_i = {d.i: d for d in data}
    out = []
    for name, series in _error_series(data):
        for (prev, e0, f0), (cur, e1, f1) in itertools.pairwise(series):
            if not (f1 > 1.05 * f0 and e1 < e0):
                continue
            if name == "MD-sample":
                found = _moved_sample(by_i, prev, cur, f0, f1)
            else:
                n0, n1 = prev.summary.get("n_train"), cur.summary.get("n_train")
                found = [f"the training set itself changed ({n0} -> {n1} configurations): "
                         "each potential's training errors are on another set"] \
                    if n0 is not None and n1 is not None and n0 != n1 else []
            found = found + _fit_causes(cur) or ["no record of this run explains it"]
            out.append(f"potential of iteration {cur.i}: {name} force error rose from "
                       f"{1000 * f0:.1f} to {1000 * f1:.1f} meV/Å while the energy error "
                       f"fell from {1000 * e0:.2f} to {1000 * e1:.2f} meV/atom; diagnosis: "
                       + "; ".join(found) + f" ({_ANOMALY_BENCH})")
    return out


def answers(data: Sequence[IterationData], checked: dict[str, Any] | None = None,
            large: Sequence[dict[str, Any]] = ()) -> dict[str, str]:
    """The three questions, answered with this run's numbers."""
    ex = [d for d in data if d.explored]
    labels = [d.summary.get("n_labeled", 0) for d in data]
    calls = [_calls(d.summary) for d in data]
    q1 = gamma_vs_error(data)
    stages_checked = [s for s in large if not s.get("final")]
    q2 = (f"{len(data)} iterations ({len(ex)} with MD); "
          f"{cost_text(reference_calls([d.summary for d in data], checked, stages_checked))}"
          ". Training "
          "labels (all reference calculations) per iteration: "
          + ", ".join(f"{d.i}: {n} ({c})" for d, n, c in zip(data, labels, calls, strict=True))
          + f". Largest: {max(labels)} training labels (iteration "
          f"{data[labels.index(max(labels))].i}).")
    if len(ex) >= 2:
        f, last = ex[0].summary, ex[-1].summary
        q3 = (f"Max gamma went from {f['gamma_max']:.3g} (iteration {ex[0].i}) to "
              f"{last['gamma_max']:.3g} (iteration {ex[-1].i}), mean gamma from "
              f"{f['gamma_mean']:.3g} to {last['gamma_mean']:.3g}.")
    else:
        q3 = "Fewer than two iterations with MD: no trend yet."
    te = [(d.i, d.summary["train_errors"]) for d in data if d.summary.get("train_errors")]
    if len(te) >= 2:
        (i0, e0), (i1, e1) = te[0], te[-1]
        q3 += (f" Training-set errors from iteration {i0} to {i1}: energy "
               f"{1000 * e0['energy_rmse']:.2f} -> {1000 * e1['energy_rmse']:.2f} meV/atom, "
               f"force {1000 * e0['force_rmse']:.1f} -> {1000 * e1['force_rmse']:.1f} meV/Å.")
    sampled = [d for d in data if d.summary.get("sample_force_error_mean") is not None]
    if len(sampled) >= 2:
        a, b = sampled[0].summary, sampled[-1].summary
        q3 += (f" True errors on the MD sample, potential of iteration {sampled[0].i - 1} "
               f"-> {sampled[-1].i - 1}: energy "
               f"{1000 * a['sample_energy_per_atom_error_mean']:.2f} -> "
               f"{1000 * b['sample_energy_per_atom_error_mean']:.2f} meV/atom, force "
               f"{1000 * a['sample_force_error_mean']:.1f} -> "
               f"{1000 * b['sample_force_error_mean']:.1f} meV/Å (means per configuration).")
    return {"How does gamma correlate with the true error?": q1,
            "How many iterations and labels per iteration were needed?": q2,
            "Do max/mean gamma and the errors decrease as the data set grows?": q3}


def _calls(s: dict[str, Any]) -> int:
    """An iteration's reference calculations (summary `n_reference`; older summaries: from
    their counts)."""
    return int(s.get("n_reference", s.get("n_labeled", 0) + s.get("n_failed", 0)
                     + s.get("sample_n", 0) + s.get("sample_failed", 0)))


def _strength(rho: float | None) -> str:
    if rho is None:
        return "not measurable"
    a = abs(rho)
    word = "strong" if a >= 0.7 else "moderate" if a >= 0.4 else "weak" if a >= 0.2 else "none"
    return word + (" (negative)" if rho < 0 and a >= 0.2 else "")


def gamma_vs_error(data: Sequence[IterationData]) -> str:
    """Question 1 from the error samples: rank correlations pooled and per iteration, and
    the mean force error above and below gamma_save."""
    sampled = [d for d in data if d.sample_configs]
    if not sampled:
        why = next((d.sample_note for d in reversed(data) if d.sample_note), None)
        return ("Not measured in this run: it has no labeled error sample "
                "(iter/<i>/sample/; config section `sample`), so the true error of the MD "
                "configurations is not known; the training-set errors are not a test of "
                "gamma." + (f" The explorer says: {why}." if why else ""))
    rows = [r for d in sampled for r in d.sample_configs]
    cf = figures.pooled_correlation(data, "force_error")
    ce = figures.pooled_correlation(data, "energy_per_atom_error")
    text = (f"Over {len(rows)} labeled MD configurations drawn at random (iterations "
            f"{sampled[0].i}-{sampled[-1].i}), gamma vs force error: Spearman rho "
            f"{_f(cf['spearman'], '.2f')} ({_strength(cf['spearman'])}), log-log Pearson r "
            f"{_f(cf['pearson_log'], '.2f')}; gamma vs energy error per atom: rho "
            f"{_f(ce['spearman'], '.2f')} ({_strength(ce['spearman'])}). Per iteration "
            "(force, energy): " + ", ".join(
                f"{d.i}: {_f(d.summary.get('sample_gamma_force_spearman'), '.2f')}, "
                f"{_f(d.summary.get('sample_gamma_energy_spearman'), '.2f')}"
                for d in sampled) + ".")
    save = next((d.gamma_save for d in reversed(sampled) if d.gamma_save), None)
    if save:
        hi = [r["force_error"] for r in rows if r["gamma"] > save]
        lo = [r["force_error"] for r in rows if r["gamma"] <= save]
        if hi and lo:
            text += (f" Mean force error with gamma > gamma_save ({save:g}): "
                     f"{1000 * sum(hi) / len(hi):.1f} meV/Å ({len(hi)} configurations), "
                     f"with gamma <= {save:g}: {1000 * sum(lo) / len(lo):.1f} meV/Å "
                     f"({len(lo)}).")
    return text


def stages(data: Sequence[IterationData]) -> list[str]:
    """One line per stage of the protocol the run went through: its cell, iterations,
    labels, and how it ended (the transitions)."""
    out: list[str] = []
    by_stage: dict[int, list[IterationData]] = {}
    for d in data:
        by_stage.setdefault(int(d.summary.get("stage", 0)), []).append(d)
    for k, its in sorted(by_stage.items()):
        s0, last = its[0].summary, its[-1].summary
        n = int(last.get("n_stages", 1))
        end = last.get("stage_end")
        how = ("converged" if end == CONVERGED else
               f"stopped at its cap of {last.get('stage_max_iterations')} iterations, not "
               "converged" if end else "in progress")
        labels = sum(int(d.summary.get("n_labeled", 0)) for d in its)
        cell = "x".join(map(str, s0.get("cell", [])))
        named = s0.get("stage_name") or cell
        out.append(f"stage {k + 1}/{n} ({named if named == cell else named + ', ' + cell}): "
                   f"iterations {its[0].i}-{its[-1].i}, {labels} labels, training set "
                   f"{last.get('n_train')} configurations at its end; {how}")
    return out


def verdict(data: Sequence[IterationData], checked: dict[str, Any] | None = None) -> str:
    """The headline: how the small-cell loop ended, and what the large-cell validation of
    its potential found (a loop that converged on small cells but whose potential breaks
    on the large cell has not delivered what the protocol promises)."""
    return _loop_verdict(data) + _validation_verdict(data, checked)


def _validation_verdict(data: Sequence[IterationData], checked: dict[str, Any] | None) -> str:
    if not checked or not finished(data[-1].summary):
        return ""
    cell = "x".join(map(str, checked.get("cell", [])))
    broke, runs = int(checked.get("n_broke", 0)), int(checked.get("n_runs", 0))
    if broke:
        return (f" But the large-cell validation FAILED: {broke} of {runs} MD runs on the "
                f"{cell} cell broke (gamma max {_f(checked.get('gamma_max'), '.3g')}): the "
                "potential is not validated for that cell.")
    return (f" The large-cell validation passed: none of {runs} MD runs on the {cell} cell "
            f"broke (gamma max {_f(checked.get('gamma_max'), '.3g')}).")


def _loop_verdict(data: Sequence[IterationData]) -> str:
    last = data[-1].summary
    if finished(last) and last.get("stage_end") == CAPPED:
        return (f"Stopped at iteration {last['iteration']}: the last stage reached its cap "
                f"of {last.get('stage_max_iterations')} iterations without converging. The "
                f"delivered {potential_text(last)}.")
    if finished(last):
        rule = ("the accuracy rule (no MD run broke and the force error stopped falling)"
                if last.get("stop_rule") == "accuracy" else
                "the gamma rule (no MD run broke)")
        why = f" {last['stop_note'][0].upper()}{last['stop_note'][1:]}." \
            if last.get("stop_note") else ""
        return (f"Converged at iteration {last['iteration']} by {rule}, "
                f"{last.get('converged_needed', 1)} consecutive iteration(s) needed.{why} "
                f"The delivered {potential_text(last)}.")
    return (f"Not converged after iteration {last['iteration']}: "
            f"{last.get('n_broke', 0)} of {last.get('n_runs', 0)} MD runs broke, "
            f"max gamma {_f(last.get('gamma_max'), '.3g')}.")


def validation(checked: dict[str, Any] | None) -> list[str]:
    """The large-cell validation (validation/summary.json) beside the last small-cell
    iteration: the numbers that say whether small cells were enough."""
    if not checked:
        return ["not run (set validation.cell, e.g. [3, 3, 3], then `make validate`)"]
    v, small = checked, checked.get("small_cell") or {}
    cell = "x".join(map(str, v.get("cell", [])))
    temps = sorted({r["temperature"] for r in v.get("runs", [])})
    out = [f"iteration {v['iteration']}'s potential on the {cell} cell ({v['n_atoms']} "
           f"atoms), {v['n_runs']} MD runs of {v['steps']} steps at "
           f"{', '.join(f'{t:g}' for t in temps)} K: {v['n_broke']} broke; gamma max "
           f"{_f(v.get('gamma_max'), '.3g')}, mean {_f(v.get('gamma_mean'), '.3g')} (last "
           f"small-cell iteration, {'x'.join(map(str, small.get('cell') or []))}: max "
           f"{_f(small.get('gamma_max'), '.3g')}, mean {_f(small.get('gamma_mean'), '.3g')})"]
    if v.get("sample_n"):
        out.append(
            f"errors on {v['sample_n']} labeled configurations of its MD: force "
            f"{_f(_milli(v['sample_force_error_mean']), '.1f')} meV/Å, energy "
            f"{_f(_milli(v['sample_energy_per_atom_error_mean']), '.2f')} meV/atom (means per "
            f"configuration); on the small cells: MD sample "
            f"{_f(_milli(small.get('sample_force_error_mean')), '.1f')} meV/Å, "
            f"{_f(_milli(small.get('sample_energy_per_atom_error_mean')), '.2f')} meV/atom; "
            f"training RMSE {_f(_milli(small.get('train_force_rmse')), '.1f')} meV/Å")
    else:
        out.append("no labeled configurations (validation.sample 0, or every label failed)")
    return out


def _where(s: dict[str, Any]) -> str:
    """Which potential a large-cell measurement is of, in words."""
    name = f"stage {int(s.get('stage', 0)) + 1} ({s.get('stage_name') or '-'})"
    if s.get("final"):
        return f"final validation, iteration {s['iteration']} ({name})"
    return (f"end of {name}, iteration {s['iteration']}" if s.get("stage_end") else
            f"iteration {s['iteration']} ({name})")


def cell_size(data: Sequence[IterationData], large: Sequence[dict[str, Any]]) -> list[str]:
    """The cell-size question from the run's own records: the large-cell error of each
    validated potential (per-stage validations and the final one) beside the labels and
    DFT cost spent to make it, and what each stage cost."""
    sums = [d.summary for d in data]
    modeled = any(s.get("dft_modeled") for s in sums)
    hours = lambda sec: dft_hours(sec, modeled)  # noqa: E731
    out = []
    for s in large:
        t = s.get("testset") or {}
        test = (f"fixed test set ({t.get('n_labeled')} configurations of {t.get('source')}): "
                f"force RMSE {_f(_milli(t.get('force_rmse')), '.1f')} meV/Å, energy "
                f"{_f(_milli(t.get('energy_rmse')), '.2f')} meV/atom, stress "
                f"{_f(t.get('stress_rmse'), '.3f')} GPa; " if t.get("force_rmse") is not None
                else "")
        own = (f"own MD sample ({s.get('sample_n')}): force "
               f"{_f(_milli(s.get('sample_force_error_mean')), '.1f')} meV/Å; "
               if s.get("sample_force_error_mean") is not None else "")
        out.append(f"{_where(s)}: {s.get('n_broke')}/{s.get('n_runs')} MD runs on "
                   f"{'x'.join(map(str, s.get('cell', [])))} ({s.get('n_atoms')} atoms) broke, "
                   f"gamma max {_f(s.get('gamma_max'), '.3g')}; {test}{own}made with "
                   f"{s.get('labels_so_far')} training labels costing "
                   f"{hours(float(s.get('dft_seconds_so_far') or 0))}")
    if not large:
        out.append("no large-cell validation yet: set validation.cell (e.g. [3, 3, 3]); "
                   "validation.every_stage validates each stage's potential")
    per: dict[int, list[dict[str, Any]]] = {}
    for x in sums:
        per.setdefault(int(x.get("stage", 0)), []).append(x)
    if any(x.get("dft_seconds") for x in sums):
        h = lambda xs, key: sum(float(x.get(key) or 0) for x in xs) / 3600  # noqa: E731
        out.append(f"cost per stage ({dft_unit(modeled)}; the error sample "
                   "included): " + "; ".join(
                       f"{xs[0].get('stage_name') or k + 1}: "
                       f"{sum(int(x.get('n_labeled', 0)) for x in xs)} training labels, "
                       f"{h(xs, 'dft_seconds'):.3g} h ({h(xs, 'dft_seconds_train'):.3g} for "
                       "training labels)" for k, xs in sorted(per.items())))
    if large:
        out.append(f"the large-cell validations themselves: "
                   f"{sum(int(s.get('n_reference', 0)) for s in large)} reference "
                   f"calculations, {hours(sum(float(s.get('dft_seconds') or 0) for s in large))}"
                   " (not in the costs above)")
    return out


def config_changes(changes: Sequence[dict[str, Any]]) -> list[str]:
    """The config changes the user accepted mid-run (runconfig.py), one line each."""
    return [f"from iteration {c['from_iteration']} ({c['time']}, {c['config']} instead of "
            f"{c['previous']}): " + "; ".join(f"{k}: {runconfig.show(a)} -> "
                                             f"{runconfig.show(b)}"
                                             for k, (a, b) in c["changed"].items())
            for c in changes] or ["none: every iteration ran with the config the run "
                                  "started with"]


def _sections(data: Sequence[IterationData], checked: dict[str, Any] | None,
              changes: Sequence[dict[str, Any]], large: Sequence[dict[str, Any]] = (),
              comparison: dict[str, Any] | None = None) -> list[tuple[str, list[str]]]:
    flags = diagnose(data) or ["none found"]
    out = [("Stages", stages(data)), ("Large-cell validation", validation(checked)),
           ("Cell size", cell_size(data, large)),
           ("Anomalies", flags), ("Config changes", config_changes(changes))]
    if comparison:
        from smallcell.study import compare_report

        out.append(("MTP against DeePMD", compare_report.section(comparison)))
    return out


def markdown(data: Sequence[IterationData], pngs: Sequence[Path],
             checked: dict[str, Any] | None = None,
             changes: Sequence[dict[str, Any]] = (),
             large: Sequence[dict[str, Any]] = (),
             comparison: dict[str, Any] | None = None) -> str:
    lines = ["# smallcell report", "", f"**{verdict(data, checked)}**", "", "## Answers", ""]
    for q, a in answers(data, checked, large).items():
        lines += [f"- **{q}** {a}"]
    for title, items in _sections(data, checked, changes, large, comparison):
        lines += ["", f"## {title}", ""] + [f"- {x}" for x in items]
    lines += ["", "## Per iteration", "", "| " + " | ".join(COLUMNS) + " |",
              "| " + " | ".join(["---:"] * len(COLUMNS)) + " |"]
    lines += ["| " + " | ".join(row(d)) + " |" for d in data]
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    return "\n".join(lines) + "\n"


def page(data: Sequence[IterationData], pngs: Sequence[Path],
         checked: dict[str, Any] | None = None,
         changes: Sequence[dict[str, Any]] = (),
         large: Sequence[dict[str, Any]] = (),
         comparison: dict[str, Any] | None = None) -> str:
    """index.html: everything inline (figures as data URIs), no external file."""
    e = html.escape
    qa = "".join(f"<dt>{e(q)}</dt><dd>{e(a)}</dd>"
                 for q, a in answers(data, checked, large).items())
    lists = "".join(f"<h2>{e(title)}</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in items)
                    + "</ul>" for title, items in _sections(data, checked, changes, large,
                                                            comparison))
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row(d)) + "</tr>"
                   for d in data)
    imgs = "".join(
        f'<figure><img alt="{e(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{e(p.stem)}'
        "</figcaption></figure>" for p in pngs)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             # 23 columns: the table scrolls inside the page, headers wrap, never cut off
             ".wide{overflow-x:auto;max-width:100%}"
             "table{border-collapse:collapse;font-size:80%}td,th{border:1px solid #ccc;"
             "padding:2px 4px;text-align:right}th{max-width:6em;white-space:normal}"
             "td{white-space:nowrap}dt{font-weight:bold;margin-top:.6em}"
             "img{max-width:100%}figure{margin:1.5em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>smallcell report"
            f"</title><style>{style}</style></head><body><h1>smallcell report</h1>"
            f"<p><strong>{e(verdict(data, checked))}</strong></p><h2>Answers</h2><dl>{qa}</dl>"
            f"{lists}<h2>Per iteration</h2><div class='wide'><table><tr>{head}</tr>"
            f"{body}</table></div><h2>Figures</h2>{imgs}</body></html>\n")


def build(root: Path, out: Path | None = None) -> Path:
    """Write report/index.html, report/report.md and the figures; return index.html. The
    "MTP against DeePMD" section appears when `make compare` has written
    compare/results.json."""
    data = load(root)
    if not data:
        raise FileNotFoundError(root / "iter" / "<i>" / "summary.json")
    checked = load_validation(root)
    out = out or root / "report"
    large = load_large_cell(root, data)
    pngs = figures.draw_all(data, out, large)
    changes = runconfig.changes(RunPaths(root))
    comparison = load_comparison(root)
    atomic_write_text(out / "report.md",
                      markdown(data, pngs, checked, changes, large, comparison))
    return atomic_write_text(out / "index.html",
                             page(data, pngs, checked, changes, large, comparison))
