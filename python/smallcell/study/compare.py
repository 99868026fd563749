"""`smallcell compare` / `make compare`: MTP against a DeePMD committee on one finished run
(issue 20): the same training data, the same test data, the same machine.

What is trained, all on the run's final training set (the last iteration's
collect/train.cfg), each kept under `compare/models/<name>/`:

- MTPs of the run's level and of the next template level (level + 2), fitted to
  convergence like `make sweep` (the embedded motep trainer, the run's `trainer:`
  settings): `mtp-l08-k2`;
- a committee of DeePMD models differing only in their seed (`deepmd.committee`,
  engines/deepmd.py): `deepmd-s1-k2`, ... The committee's own prediction is the mean of
  its members' (energies, forces, stresses).

The learning curves train each family again on the data of iterations 0..k for every k
(iter/<k>/collect/train.cfg holds exactly that: the initial set and every label added up
to k); an iteration that added nothing has its predecessor's set and adds no point. The
MTPs are refitted at every k; of the committee only its first member (its first seed) is,
to keep `make compare` on the default run within 10 minutes on 2 cores. A model is named
by the first iteration whose training set it was fitted to (`-k<k>`), so the final models
are the curves' last points and a run that goes on adds models instead of replacing them.

Measured on (each a `compare/data/<set>.cfg`, the large ones pooled):

- `test`: the held-out set (iter/0/select/test.cfg, initial.test_fraction), if any;
- `samples`: every iteration's labeled error sample (iter/<i>/sample/labeled.cfg), MD
  configurations no model was trained on; errors per iteration from the same predictions;
- `large`: the large-cell validation configurations (validation/ and the per-stage
  iter/<i>/validate/: their own samples and the fixed test set), when the run has them.

The learning curves are measured on one fixed set: `test` when the run holds one out,
else `samples` (never trained on, fixed once the run has finished).

The uncertainty study (question 3 of the issue) is on `samples`: MTP gamma (the
run-level MTP's, MotepPotential.grade with the active set of its own fit) and the
committee's maximal force deviation as DP-GEN defines it (max_devi_f: the largest, over
atoms, of sqrt(mean over members of |F_m - mean F|^2)), each against the true force error
(RMS over atoms of |F_ref - F_pred|) of the run-level MTP and of the committee's mean
prediction: Spearman's rho and the ROC AUC for flagging the configurations whose error
exceeds twice the median.

Rerunning: a model with its `done` marker is never trained again (a model trained on
other data under the same name is refused, naming both hashes); an evaluation whose set
changed, or that is missing, is redone from the model's files. Every output is written
through a temporary name; `done` is each model's last write.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallcell.config import Config
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import cfg_to_atoms, iter_cfgs
from smallcell.metrics import correlations, roc_auc
from smallcell.stages.initial import held_out
from smallcell.stages.sweep import MAX_ROUNDS, _cpu_seconds, _sha256, check_labeled, fit_level
from smallcell.state import (
    RunPaths,
    atomic_output,
    atomic_write_json,
    flocked,
    is_done,
    mark_done,
    read_json,
)

MODELS = "models"
DATA = "data"
RESULTS = "results.json"
MODEL_JSON = "model.json"
EV_A3_TO_GPA = 160.21766208
#: Configurations whose true force error exceeds this multiple of the median are the
#: ones an uncertainty should flag (the issue's definition).
FLAG_FACTOR = 2.0
COMMITTEE = "deepmd-committee"

Say = Callable[[str], None]


# ---------------------------------------------------------------- the run's data sets


@dataclass(frozen=True)
class TrainingSet:
    """The data of iterations 0..k: iter/<k>/collect/train.cfg, and its hash."""

    k: int
    path: Path
    sha256: str
    n: int


def training_sets(root: Path) -> list[TrainingSet]:
    """Every distinct training set of the run's finished iterations, in order: an
    iteration that added no label has its predecessor's set (same bytes) and is left
    out, so the last entry is the final set, named by the first iteration that had it."""
    paths = RunPaths(root)
    out: list[TrainingSet] = []
    for i in paths.iterations():
        path = paths.stage(i, "collect") / "train.cfg"
        if not (is_done(paths.stage(i, "collect")) and paths.summary(i).exists()):
            continue
        digest = _sha256(path)
        if out and out[-1].sha256 == digest:
            continue
        out.append(TrainingSet(i, path, digest, sum(1 for _ in iter_cfgs(path))))
    if not out:
        raise SmallcellError(f"{paths.iter_root}: no finished iteration with a training set "
                             "(iter/<i>/collect/train.cfg and summary.json); run `make iter`")
    return out


def _large_cell_tasks(root: Path) -> list[Path]:
    """The labeled large-cell configurations of the final and the per-stage validations,
    task folders with a `done` marker, in a fixed order."""
    stages = sorted((p for p in (root / "iter").glob("*/validate") if p.parent.name.isdigit()),
                    key=lambda p: int(p.parent.name))
    bases = [root / "validation", *stages]
    tasks = []
    for base in bases:
        for kind in ("label", "testset"):
            dirs = [d for d in (base / kind).glob("*") if d.name.isdigit()]
            tasks += [d for d in sorted(dirs, key=lambda d: int(d.name))
                      if is_done(d) and (d / "labeled.cfg").is_file()]
    return tasks


def _pool(files: Sequence[Path], dest: Path) -> None:
    """Concatenate cfg files into `dest` (atomically; rewritten only when it changes, so
    its hash, and every evaluation made on it, stays valid across reruns)."""
    data = b"".join(f.read_bytes() for f in files)
    if dest.is_file() and dest.read_bytes() == data:
        return
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)


@dataclass(frozen=True)
class EvalSet:
    """A labeled set every final model is measured on; `groups`: the iteration each
    configuration came from (the error samples), else None."""

    name: str
    path: Path
    sha256: str
    n: int
    groups: tuple[int, ...] | None = None


def eval_sets(root: Path, out: Path, test: Path | None = None) -> dict[str, EvalSet]:
    """The held-out set (`test`, else the run's own), the pooled error samples and the
    pooled large-cell configurations that the run has, copied under out/data/ (the run's
    files are never written)."""
    paths = RunPaths(root)
    sets: dict[str, EvalSet] = {}
    test = test or held_out(root)
    if test is not None:
        dest = out / DATA / "test.cfg"
        _pool([test], dest)
        sets["test"] = _set("test", dest)
    samples, groups = [], []
    for i in paths.iterations():
        f = paths.stage(i, "sample") / "labeled.cfg"
        if (paths.stage(i, "sample") / "errors.json").is_file() and f.is_file():
            samples.append(f)
            groups += [i] * sum(1 for _ in iter_cfgs(f))
    if samples:
        dest = out / DATA / "samples.cfg"
        _pool(samples, dest)
        sets["samples"] = _set("samples", dest, tuple(groups))
    large = _large_cell_tasks(root)
    if large:
        dest = out / DATA / "large.cfg"
        _pool([d / "labeled.cfg" for d in large], dest)
        sets["large"] = _set("large", dest)
    if not sets:
        raise SmallcellError(f"{root}: nothing to measure the models on: no held-out set "
                             "(initial.test_fraction), no labeled error sample (sample.size) "
                             "and no large-cell validation")
    return sets


def _set(name: str, path: Path, groups: tuple[int, ...] | None = None) -> EvalSet:
    n = sum(1 for _ in iter_cfgs(path))
    if groups is not None and len(groups) != n:
        raise SmallcellError(f"{path}: {n} configurations, but its sources hold {len(groups)}")
    return EvalSet(name, path, _sha256(path), n, groups)


def fixed_set(sets: dict[str, EvalSet]) -> EvalSet:
    """The learning curves' fixed set: the held-out set, else the pooled error samples."""
    for name in ("test", "samples", "large"):
        if name in sets:
            return sets[name]
    raise AssertionError("eval_sets returns at least one set")


# ---------------------------------------------------------------- the models


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: its family (`mtp-l08`, `deepmd-s1`), kind, level or seed, and
    the training set; `final` when it is fitted to the final set."""

    family: str
    kind: str  # "mtp" | "deepmd"
    level: int | None
    seed: int
    data: TrainingSet
    final: bool

    @property
    def name(self) -> str:
        return f"{self.family}-k{self.data.k}"


def mtp_levels(cfg: Config) -> list[int]:
    """The run's MTP level and the next template level (levels go in steps of 2)."""
    level = int(cfg["trainer"]["level"])
    return [level, level + 2]


def deepmd_settings(cfg: Config) -> Any:
    """The `deepmd:` section as the adapter's settings (engines/deepmd.py)."""
    from smallcell.engines.deepmd import DeepmdSettings

    return DeepmdSettings.from_mapping(cfg["deepmd"])


def committee_seeds(cfg: Config) -> list[int]:
    """The committee members' seeds: `deepmd.committee` of them, `deepmd.seed` + k
    (DeepmdSettings.member)."""
    s = deepmd_settings(cfg)
    return [s.member(k).seed for k in range(int(s.committee))]


def curve_sets(sets: Sequence[TrainingSet], points: int | None) -> list[TrainingSet]:
    """The training sets the learning curves are fitted to besides the final one: every
    earlier one, or `points` - 1 of them such that, with the final one, the points are
    spread evenly over the run's sets (the first included; for runs of many iterations,
    e.g. the label benchmark's)."""
    early = list(sets[:-1])
    if points is None or len(early) <= points - 1:
        return early
    if points <= 1:
        return []
    picks = np.unique(np.round(np.linspace(0, len(sets) - 1, points)).astype(int))
    return [sets[k] for k in picks if k < len(sets) - 1]


def plan(cfg: Config, sets: Sequence[TrainingSet], deepmd: bool,
         curve_points: int | None = None, levels: Sequence[int] | None = None
         ) -> list[ModelSpec]:
    """Every model of the comparison: final models first (MTPs, then the committee),
    then the learning curves' earlier points (each MTP level, the first member's seed;
    at most `curve_points` points per curve, the final one included). `levels`: the MTP
    levels (default mtp_levels: the run's and the next)."""
    final = sets[-1]
    seed = int(cfg["run"]["seed"])
    mtps = [("mtp", f"mtp-l{lv:02d}", lv, seed) for lv in (levels or mtp_levels(cfg))]
    dps = [("deepmd", f"deepmd-s{s}", None, s) for s in committee_seeds(cfg)] if deepmd else []
    specs = [ModelSpec(f, kind, lv, s, final, True) for kind, f, lv, s in mtps + dps]
    curves = mtps + dps[:1]
    specs += [ModelSpec(f, kind, lv, s, t, False) for t in curve_sets(sets, curve_points)
              for kind, f, lv, s in curves]
    return specs


def model_dir(out: Path, spec: ModelSpec) -> Path:
    return out / MODELS / spec.name


def _images(path: Path, species: list[str]) -> list:
    return [cfg_to_atoms(c, species) for c in iter_cfgs(path)]


def _train_mtp(spec: ModelSpec, cfg: Config, train_dir: Path, say: Say) -> dict[str, Any]:
    """An MTP fitted to convergence as `make sweep` fits a level (fit_level: rounds of
    trainer.max_iter, each going on from the last) with the embedded trainer, so the
    comparison runs on any machine and times both models in one process."""
    from smallcell.engines.motep_mtp import MotepTrainer
    from smallcell.stages.train import fit_settings

    species = list(cfg["species"])
    settings = fit_settings(cfg["trainer"], spec.seed, level=spec.level)
    res, rounds = fit_level(MotepTrainer(), _images(spec.data.path, species), species,
                            train_dir, settings, int(spec.level or 0), MAX_ROUNDS,
                            lambda m: say(m.replace("[sweep", "[compare")))
    return {"iterations": sum(r["iterations"] for r in rounds), "converged": res.converged,
            "rounds": rounds, "message": res.message, "train_errors": res.errors}


def _train_deepmd(spec: ModelSpec, cfg: Config, train_dir: Path, say: Say) -> dict[str, Any]:
    """One committee member: the adapter's fit with this member's seed."""
    from smallcell.engines.deepmd import DeepmdTrainer

    species = list(cfg["species"])
    settings = dataclasses.replace(deepmd_settings(cfg), seed=spec.seed)
    cfgs = list(iter_cfgs(spec.data.path))
    return dict(DeepmdTrainer(settings).train(cfgs, species, train_dir, settings, None))


def train_model(spec: ModelSpec, cfg: Config, out: Path, say: Say = print
                ) -> dict[str, Any]:
    """Train `spec` unless its folder is done; return its model.json. A finished model
    fitted to other data under this name is refused: its folder is named, to be removed
    or compared in another --out."""
    folder = model_dir(out, spec)
    if is_done(folder):
        info = read_json(folder / MODEL_JSON)
        if info["data_sha256"] != spec.data.sha256:
            raise SmallcellError(
                f"{folder} was trained on {info['data']} (sha256 {info['data_sha256'][:12]}"
                f"...), but the run's data of iterations 0..{spec.data.k} are now "
                f"{spec.data.path} ({spec.data.sha256[:12]}...): the run was changed since; "
                f"remove {folder} or use another --out")
        return info
    train_dir = folder / "train"
    shutil.rmtree(train_dir, ignore_errors=True)  # an unfinished fit: start it again
    train_dir.mkdir(parents=True)
    say(f"[compare] training {spec.name} on {spec.data.n} configurations "
        f"(iterations 0..{spec.data.k})")
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    fit = (_train_mtp if spec.kind == "mtp" else _train_deepmd)(spec, cfg, train_dir, say)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    info = {"name": spec.name, "family": spec.family, "kind": spec.kind,
            "level": spec.level, "seed": spec.seed, "final": spec.final,
            "data": str(spec.data.path), "data_sha256": spec.data.sha256,
            "n_train": spec.data.n, "upto": spec.data.k, "train_wall_seconds": wall,
            # the adapter's own count when it has one (a fit in a child process that is
            # still a grandchild of ours would escape os.times)
            "train_cpu_seconds": float(fit.get("cpu_seconds") or cpu), "fit": fit}
    atomic_write_json(folder / MODEL_JSON, info)
    mark_done(folder)
    say(f"[compare] {spec.name}: trained in {wall:.1f} s wall, {info['train_cpu_seconds']:.1f}"
        " s CPU")
    return info


# ---------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """Per configuration of a set: energy (eV), forces (eV/Å, all atoms stacked), stress
    (eV/Å^3, ASE's Voigt order and sign; NaN where unknown), atom counts, and gamma (the
    MTP's, NaN for other models)."""

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    natoms: np.ndarray
    gamma: np.ndarray

    def save(self, path: Path) -> None:
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path) as z:
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def of_atoms(cls, images: Sequence, gamma: Sequence[float] | None = None) -> Predictions:
        """The reference labels of labeled images, in the same layout."""
        stress = []
        for a in images:
            try:
                stress.append(a.get_stress())
            except Exception:  # a label without stress (e.g. an imported OUTCAR step)
                stress.append(np.full(6, np.nan))
        return cls(np.array([a.get_potential_energy() for a in images]),
                   np.concatenate([a.get_forces() for a in images]).reshape(-1, 3),
                   np.array(stress), np.array([len(a) for a in images]),
                   np.full(len(images), np.nan) if gamma is None else np.asarray(gamma))


def _predict_mtp(train_dir: Path, images: Sequence, cfg: Config
                 ) -> tuple[Predictions, float]:
    """The MTP's energies, forces and stresses on `images`, its gamma on each (its own
    fit's active set), and the seconds spent on energies and forces alone (the
    evaluation speed; grading is timed apart because MD pays for it only when it grades)."""
    from smallcell.engines.motep_mtp import MotepPotential

    pot = MotepPotential.load(train_dir, list(cfg["species"]), cfg["trainer"]["al_mode"])
    e, f, s, g = [], [], [], []
    seconds = 0.0
    for ref in images:
        atoms = ref.copy()
        t0 = time.perf_counter()
        energy, forces, stress = pot.evaluate(atoms)
        seconds += time.perf_counter() - t0
        e.append(energy)
        f.append(forces)
        s.append(stress)
        g.append(pot.grade(atoms)[0])
    return Predictions(np.array(e), np.concatenate(f).reshape(-1, 3), np.array(s),
                       np.array([len(a) for a in images]), np.array(g)), seconds


def _predict_deepmd(train_dir: Path, path: Path, images: Sequence, cfg: Config, work: Path
                    ) -> tuple[Predictions, float]:
    """The DeePMD model's predictions through the adapter (its stress, in GPa, back to
    ASE's eV/Å^3), and the seconds of the evaluations alone (model loading and process
    start-up excluded, as the MTP's loading is)."""
    from smallcell.engines.deepmd import DeepmdTrainer

    got = DeepmdTrainer(deepmd_settings(cfg)).predict(train_dir, list(cfg["species"]),
                                                      path, work)
    rows = got["configs"]
    n = np.array([len(a) for a in images])
    forces = np.concatenate([np.asarray(r["forces"], float).reshape(-1, 3) for r in rows])
    stress = np.array([np.full(6, np.nan) if r["stress"] is None
                       else np.asarray(r["stress"], float) / EV_A3_TO_GPA for r in rows])
    return Predictions(np.array([r["energy"] for r in rows], float), forces, stress, n,
                       np.full(len(n), np.nan)), float(got["eval_seconds"])


def evaluate(spec: ModelSpec, s: EvalSet, cfg: Config, out: Path, say: Say = print
             ) -> dict[str, Any]:
    """Predict `spec`'s model on `s` unless that was done on this very set (same hash):
    eval/<set>.npz, then eval/<set>.json (the marker, written last) with the timing."""
    folder = model_dir(out, spec) / "eval"
    marker = folder / f"{s.name}.json"
    if marker.is_file():
        info = read_json(marker)
        if info["sha256"] == s.sha256 and (folder / f"{s.name}.npz").is_file():
            return info
    species = list(cfg["species"])
    images = _images(s.path, species)
    train_dir = model_dir(out, spec) / "train"
    if spec.kind == "mtp":
        pred, seconds = _predict_mtp(train_dir, images, cfg)
    else:
        work = folder / f".work.{os.getpid()}"
        try:
            pred, seconds = _predict_deepmd(train_dir, s.path, images, cfg, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if len(pred.energy) != s.n or len(pred.forces) != int(pred.natoms.sum()):
        raise SmallcellError(f"{s.path}: {s.n} configurations, but {spec.name} predicted "
                             f"{len(pred.energy)} energies and {len(pred.forces)} forces")
    pred.save(folder / f"{s.name}.npz")
    atoms = int(pred.natoms.sum())
    info = {"set": s.name, "path": str(s.path), "sha256": s.sha256, "n_configs": s.n,
            "n_atoms": atoms, "seconds": seconds,
            "us_per_atom_step": 1e6 * seconds / atoms if atoms else None}
    atomic_write_json(marker, info)
    say(f"[compare] {spec.name} on {s.name} ({s.n} configurations): "
        f"{info['us_per_atom_step']:.1f} µs/atom/step")
    return info


def predictions(out: Path, spec: ModelSpec, s: EvalSet) -> Predictions:
    return Predictions.load(model_dir(out, spec) / "eval" / f"{s.name}.npz")


# ---------------------------------------------------------------- analysis


def committee_mean(members: Sequence[Predictions]) -> Predictions:
    """The committee's prediction: the mean of its members' energies, forces and
    stresses."""
    first = members[0]
    return Predictions(np.mean([m.energy for m in members], axis=0),
                       np.mean([m.forces for m in members], axis=0),
                       np.mean([m.stress for m in members], axis=0),
                       first.natoms, np.full(len(first.energy), np.nan))


def max_force_deviation(members: Sequence[Predictions]) -> np.ndarray:
    """DP-GEN's max_devi_f per configuration: the largest, over its atoms, of
    sqrt(mean over members of |F_m - <F>|^2), the force vectors' spread (eV/Å)."""
    f = np.stack([m.forces for m in members])  # (members, atoms, 3)
    per_atom = np.sqrt(np.mean(np.sum((f - f.mean(axis=0)) ** 2, axis=-1), axis=0))
    ends = np.cumsum(members[0].natoms)
    return np.array([per_atom[e - n:e].max() for n, e in zip(members[0].natoms, ends,
                                                             strict=True)])


def force_error_per_config(pred: Predictions, ref: Predictions) -> np.ndarray:
    """RMS over each configuration's atoms of |F_ref - F_pred| (eV/Å): the error study's
    force_error (stages/sample.py)."""
    sq = np.sum((pred.forces - ref.forces) ** 2, axis=-1)
    ends = np.cumsum(ref.natoms)
    return np.array([np.sqrt(sq[e - n:e].mean()) for n, e in zip(ref.natoms, ends,
                                                                 strict=True)])


def errors(pred: Predictions, ref: Predictions, mask: np.ndarray | None = None
           ) -> dict[str, float | None]:
    """RMSE and MAE of the energy per atom (eV/atom), of |F_ref - F_pred| per atom
    (eV/Å) and of the stress components (GPa; None when no reference has a stress), the
    keys of motep_mtp.errors_of; `mask` picks configurations."""
    m = np.ones(len(ref.energy), bool) if mask is None else np.asarray(mask, bool)
    atom_mask = np.repeat(m, ref.natoms)
    de = np.abs((pred.energy - ref.energy) / ref.natoms)[m]
    df = np.linalg.norm(pred.forces - ref.forces, axis=-1)[atom_mask]
    ds = np.abs(pred.stress - ref.stress)[m].ravel() * EV_A3_TO_GPA
    ds = ds[np.isfinite(ds)]
    rms = lambda x: float(np.sqrt(np.mean(x**2))) if x.size else None  # noqa: E731
    mae = lambda x: float(np.mean(x)) if x.size else None  # noqa: E731
    return {"n_configs": int(m.sum()), "energy_rmse": rms(de), "energy_mae": mae(de),
            "force_rmse": rms(df), "force_mae": mae(df), "stress_rmse": rms(ds),
            "stress_mae": mae(ds)}


def flag_stats(uncertainty: np.ndarray, error: np.ndarray) -> dict[str, Any]:
    """How well `uncertainty` ranks `error`: Spearman's rho, and the ROC AUC for flagging
    the configurations whose error exceeds FLAG_FACTOR x its median."""
    ok = np.isfinite(uncertainty) & np.isfinite(error)
    u, e = uncertainty[ok], error[ok]
    threshold = FLAG_FACTOR * float(np.median(e)) if e.size else None
    flagged = e > threshold if threshold is not None else np.zeros(0, bool)
    return {"n": int(ok.sum()), "spearman": correlations(u, e)["spearman"],
            "auc": roc_auc(u, flagged) if e.size else None,
            "threshold": threshold, "n_flagged": int(flagged.sum())}


def uncertainty(mtp: Predictions, members: Sequence[Predictions], ref: Predictions
                ) -> dict[str, Any]:
    """MTP gamma and the committee's max force deviation, each against the true force
    error of the MTP and of the committee's mean, on the same configurations."""
    scores = {"gamma": mtp.gamma}
    errs = {"mtp": force_error_per_config(mtp, ref)}
    if members:
        scores["max_devi_f"] = max_force_deviation(members)
        errs["committee"] = force_error_per_config(committee_mean(members), ref)
    return {"pairs": {f"{u}|{e}": flag_stats(scores[u], errs[e])
                      for u in scores for e in errs},
            "values": {**{u: v.tolist() for u, v in scores.items()},
                       **{f"error_{e}": v.tolist() for e, v in errs.items()}}}


def _time(infos: Sequence[dict[str, Any]]) -> float | None:
    """µs per atom per step over the evaluations given (all their atoms)."""
    atoms = sum(int(i["n_atoms"]) for i in infos)
    return 1e6 * sum(float(i["seconds"]) for i in infos) / atoms if atoms else None


def analyse(out: Path, specs: Sequence[ModelSpec], sets: dict[str, EvalSet],
            infos: dict[str, dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """results.json: per final model (and the committee's mean) its errors on every set,
    per error-sample iteration, training and evaluation cost; the learning curves; the
    uncertainty study."""
    species = list(cfg["species"])
    refs = {n: Predictions.of_atoms(_images(s.path, species)) for n, s in sets.items()}
    final = [s for s in specs if s.final]
    members = [s for s in final if s.kind == "deepmd"]
    models: dict[str, Any] = {}
    preds = {(m.name, n): predictions(out, m, s) for m in final for n, s in sets.items()}
    for m in final:
        evals = [read_json(model_dir(out, m) / "eval" / f"{n}.json") for n in sets]
        models[m.family] = {"name": m.name, "kind": m.kind, "level": m.level, "seed": m.seed,
                            "train_cpu_seconds": infos[m.name]["train_cpu_seconds"],
                            "train_wall_seconds": infos[m.name]["train_wall_seconds"],
                            "us_per_atom_step": _time(evals),
                            "converged": infos[m.name].get("fit", {}).get("converged"),
                            "sets": {n: errors(preds[m.name, n], refs[n]) for n in sets}}
    if members:
        models[COMMITTEE] = {
            "name": COMMITTEE, "kind": "deepmd", "level": None, "seed": None,
            "members": [m.name for m in members],
            "train_cpu_seconds": sum(models[m.family]["train_cpu_seconds"] for m in members),
            "train_wall_seconds": sum(models[m.family]["train_wall_seconds"]
                                      for m in members),
            "us_per_atom_step": sum(models[m.family]["us_per_atom_step"] or 0
                                    for m in members),
            "converged": None,
            "sets": {n: errors(committee_mean([preds[m.name, n] for m in members]), refs[n])
                     for n in sets}}
    per_iteration = _per_iteration(final, members, sets, preds, refs)
    fixed = fixed_set(sets)
    curves = _curves(out, specs, fixed, refs[fixed.name])
    study = None
    if "samples" in sets:
        mtp = next(m for m in final if m.kind == "mtp")
        study = {"mtp": mtp.name, "committee": [m.name for m in members],
                 **uncertainty(preds[mtp.name, "samples"],
                               [preds[m.name, "samples"] for m in members], refs["samples"])}
    return {"sets": {n: {"path": str(s.path), "n_configs": s.n, "sha256": s.sha256}
                     for n, s in sets.items()},
            "fixed_set": fixed.name, "final_k": final[0].data.k,
            "n_train": final[0].data.n, "models": models,
            "per_iteration": per_iteration, "learning_curves": curves,
            "uncertainty": study, "flag_factor": FLAG_FACTOR,
            "units": {"energy": "eV/atom", "force": "eV/Å (|F_ref - F_pred| per atom)",
                      "stress": "GPa (per component)", "time": "s (training: CPU and wall)",
                      "speed": "µs per atom per step (energy, forces and stress)"}}


def _per_iteration(final: Sequence[ModelSpec], members: Sequence[ModelSpec],
                   sets: dict[str, EvalSet], preds: dict, refs: dict[str, Predictions]
                   ) -> dict[str, dict[str, Any]]:
    """Errors on each iteration's error sample, from the pooled predictions."""
    s = sets.get("samples")
    if s is None or s.groups is None:
        return {}
    groups = np.asarray(s.groups)
    ref = refs["samples"]
    out: dict[str, dict[str, Any]] = {}
    for i in sorted(set(s.groups)):
        mask = groups == i
        row = {m.family: errors(preds[m.name, "samples"], ref, mask) for m in final}
        if members:
            row[COMMITTEE] = errors(committee_mean([preds[m.name, "samples"]
                                                    for m in members]), ref, mask)
        out[str(i)] = row
    return out


def _curves(out: Path, specs: Sequence[ModelSpec], fixed: EvalSet, ref: Predictions
            ) -> dict[str, list[dict[str, Any]]]:
    """Per family that has a learning curve: (iteration k, training-set size, errors on
    the fixed set) for every k it was fitted at."""
    curves: dict[str, list[dict[str, Any]]] = {}
    families = {s.family for s in specs if not s.final}
    for s in sorted(specs, key=lambda s: s.data.k):
        if s.family in families:
            curves.setdefault(s.family, []).append(
                {"k": s.data.k, "n_train": s.data.n, "model": s.name,
                 **errors(predictions(out, s, fixed), ref)})
    return curves


def _warn_unfinished(root: Path, say: Say) -> None:
    """A comparison is meant for a finished run; on one still going its final set is
    only the latest, and the next compare adds the models of the sets that follow."""
    from smallcell.status import finished

    paths = RunPaths(root)
    last = max(i for i in paths.iterations() if paths.summary(i).exists())
    if not finished(read_json(paths.summary(last))):
        say(f"[compare] warning: the run has not finished (iteration {last} is its last); "
            f"comparing on the training set of iterations 0..{last}")


def parity_data(out: Path, specs: Sequence[ModelSpec], fixed: EvalSet, cfg: Config
                ) -> dict[str, tuple[Predictions, Predictions]]:
    """(reference, prediction) on the fixed set for each final MTP and the committee's
    mean: what the parity figure draws."""
    ref = Predictions.of_atoms(_images(fixed.path, list(cfg["species"])))
    final = [s for s in specs if s.final]
    data = {s.family: (ref, predictions(out, s, fixed)) for s in final if s.kind == "mtp"}
    members = [predictions(out, s, fixed) for s in final if s.kind == "deepmd"]
    if members:
        data[COMMITTEE] = (ref, committee_mean(members))
    return data


# ---------------------------------------------------------------- the whole comparison


def run(root: Path, out: Path, cfg: Config, deepmd: bool = True, say: Say = print, *,
        test: Path | None = None, curve_points: int | None = None,
        levels: Sequence[int] | None = None) -> dict[str, Any]:
    """Train what is missing, evaluate what is missing, write results.json, compare.md
    and the figures; return the results. `deepmd`: False compares the MTP levels alone
    (no DeePMD committee; for machines without `make setup EXTRAS=deepmd`). `test`: a
    labeled held-out set from elsewhere (the run's own, iter/0/select/test.cfg, by
    default). `curve_points`: at most this many learning-curve points per model;
    `levels`: other MTP levels than the run's and the next."""
    from smallcell.study import compare_report

    if deepmd:  # DeePMD-kit missing: say how to install it before anything is trained
        from smallcell.engines.deepmd import programs

        programs(deepmd_settings(cfg))
    out.mkdir(parents=True, exist_ok=True)
    with flocked(out / ".lock", f"another `smallcell compare` writing {out}", 0):
        tsets = training_sets(root)
        _warn_unfinished(root, say)
        if test is not None:
            check_labeled(test, list(cfg["species"]))
        sets = eval_sets(root, out, test)
        specs = plan(cfg, tsets, deepmd, curve_points, levels)
        infos = {s.name: train_model(s, cfg, out, say) for s in specs}
        fixed = fixed_set(sets)
        for s in specs:
            for es in (sets.values() if s.final else [fixed]):
                evaluate(s, es, cfg, out, say)
        results = analyse(out, specs, sets, infos, cfg)
        results["run"] = str(root)
        atomic_write_json(out / RESULTS, results)
        compare_report.write(out, results, parity_data(out, specs, fixed, cfg))
    return results
