"""DeePMD-kit models behind the `Trainer` interface, for comparisons with the MTP.

DeePMD-kit (TensorFlow backend) lives in its own venv, `.venv-deepmd/` (`make setup
EXTRAS=deepmd`), so smallcell never imports it: training runs its `dp` program and
inference runs `deepmd_task.py` with its Python, each as its own process (argv, never a
shell; engines/process.py), as GPAW's labels do.

- `train` writes the data as DeePMD systems (formats/deepmd_npy.py) and `input.json` (the
  `deepmd:` section) into a scratch folder `<out>/.work.<pid>/`, runs `dp --tf train
  input.json` and `dp --tf freeze -o frozen_model.pb` there, and renames the logs
  (train.log, freeze.log, lcurve.out), input.json, train.json and, last,
  frozen_model.pb into `<out>`: a killed or failed fit leaves no model (its scratch is
  debris that state.sweep_debris removes), a failed one its log as train.failed.log.
- `predict` evaluates every configuration of a cfg file: energy (eV), forces (eV/Å),
  stress (GPa, Voigt xx yy zz yz xz xy, ASE's sign: stress = -virial / volume, the sign
  motep_mtp and cfg_to_atoms use), the virial (eV, 3x3 rows, DeePMD's sign), and the
  evaluation speed, `us_per_atom_step`: microseconds per atom per evaluation (one MD
  step), summed over the configurations' evaluations after one warm-up (model loading and
  process start-up excluded; they are `load_seconds` and part of `seconds`).
- `errors` / `config_errors` are computed from `predict` with the keys and units of
  motep_mtp.errors_of / config_errors_of, so the numbers of both trainers mean the same.
- DeePMD has no extrapolation grade: `load` (a grader for the loop's exploration) and
  `start_file` (warm starts) raise SmallcellError.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from smallcell.engines.process import ProgramNotFound, exit_text, run_logged, tail_line
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg, atoms_to_cfg, read_cfgs
from smallcell.formats.deepmd_npy import write_systems
from smallcell.state import atomic_write_json

REPO = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("deepmd_task.py")
MODEL = "frozen_model.pb"
VENV_ENV = "SMALLCELL_DEEPMD_VENV"
INSTALL_HINT = "install DeePMD-kit with `make setup EXTRAS=deepmd` (its own venv .venv-deepmd/)"
_EV_A3_TO_GPA = 160.21766208
_VOIGT = ([0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1])  # 3x3 -> xx yy zz yz xz xy


@dataclass
class DeepmdSettings:
    """The `deepmd:` section (config.py documents every key)."""

    descriptor: str = "se_e2_a"
    rcut: float = 5.0
    rcut_smth: float = 0.5
    sel: int = 32
    neuron: list[int] = field(default_factory=lambda: [8, 16, 32])
    axis_neuron: int = 4
    fitting_neuron: list[int] = field(default_factory=lambda: [32, 32, 32])
    steps: int = 2000
    start_lr: float = 1e-3
    stop_lr: float = 1e-5
    decay_steps: int | None = None
    start_pref_e: float = 0.02
    limit_pref_e: float = 1.0
    start_pref_f: float = 1000.0
    limit_pref_f: float = 1.0
    start_pref_v: float = 0.02
    limit_pref_v: float = 1.0
    batch_size: int | None = 1
    seed: int = 1
    committee: int = 4
    threads: int = 1
    venv: str | None = None
    timeout: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DeepmdSettings:
        """Settings from the (validated) `deepmd:` section; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown deepmd settings: {', '.join(unknown)}")
        out = cls(**dict(data))
        if out.venv is not None:
            out.venv = str(out.venv)
        return out

    def member(self, k: int) -> DeepmdSettings:
        """The settings of committee member k (0-based): seed + k."""
        return replace(self, seed=self.seed + k)

    def venv_dir(self) -> Path:
        """deepmd.venv, else $SMALLCELL_DEEPMD_VENV, else the repo's .venv-deepmd/."""
        return Path(self.venv or os.environ.get(VENV_ENV) or REPO / ".venv-deepmd")

    def env(self) -> dict[str, str]:
        t = str(self.threads)
        return {"DP_INTRA_OP_PARALLELISM_THREADS": t, "DP_INTER_OP_PARALLELISM_THREADS": t,
                "OMP_NUM_THREADS": t, "TF_CPP_MIN_LOG_LEVEL": "1"}

    def input_json(self, species: Sequence[str], systems: Sequence[str]) -> dict[str, Any]:
        """DeePMD-kit's input.json for training on `systems` (folders, relative to the
        training folder)."""
        decay = self.decay_steps or max(1, self.steps // 20)
        return {
            "model": {
                "type_map": list(species),
                "descriptor": {"type": self.descriptor, "rcut": self.rcut,
                               "rcut_smth": self.rcut_smth,
                               "sel": [self.sel] * len(species), "neuron": list(self.neuron),
                               "axis_neuron": self.axis_neuron, "resnet_dt": False,
                               "seed": self.seed},
                "fitting_net": {"neuron": list(self.fitting_neuron), "resnet_dt": True,
                                "seed": self.seed},
            },
            "learning_rate": {"type": "exp", "start_lr": self.start_lr,
                              "stop_lr": self.stop_lr, "decay_steps": decay},
            "loss": {"type": "ener",
                     "start_pref_e": self.start_pref_e, "limit_pref_e": self.limit_pref_e,
                     "start_pref_f": self.start_pref_f, "limit_pref_f": self.limit_pref_f,
                     "start_pref_v": self.start_pref_v, "limit_pref_v": self.limit_pref_v},
            "training": {
                "training_data": {"systems": list(systems),
                                  "batch_size": "auto" if self.batch_size is None
                                  else self.batch_size},
                "numb_steps": self.steps, "seed": self.seed, "disp_file": "lcurve.out",
                "disp_freq": max(1, min(100, self.steps // 10)), "save_freq": self.steps,
                "save_ckpt": "model.ckpt", "disp_training": True, "time_training": True,
            },
        }


def programs(s: DeepmdSettings) -> tuple[Path, Path]:
    """The venv's `dp` and `python`, or SmallcellError with the install hint."""
    venv = s.venv_dir()
    dp, python = venv / "bin" / "dp", venv / "bin" / "python"
    for prog in (dp, python):
        if not os.access(prog, os.X_OK):
            raise SmallcellError(f"DeePMD-kit not found ({prog} missing): {INSTALL_HINT}")
    return dp, python


def _as_cfg(item: Atoms | Cfg, species: Sequence[str]) -> Cfg:
    return item if isinstance(item, Cfg) else atoms_to_cfg(item, species)


def read_lcurve(path: Path) -> dict[str, float]:
    """The last row of DeePMD's lcurve.out by its header's column names (step, rmse_trn,
    rmse_e_trn (eV/atom), rmse_f_trn (eV/Å), rmse_v_trn (eV/atom), lr)."""
    header: list[str] = []
    last: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            if line[1:].split()[:1] == ["step"]:  # other comment lines are notes
                header = line[1:].split()
        elif line.strip():
            last = line.split()
    if not header or not last:
        return {}
    return {k: float(v) for k, v in zip(header, last, strict=False)}


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(argv: list[str], work: Path, log: str, s: DeepmdSettings, what: str) -> float:
    """Run one DeePMD process in `work` (stdout to <log>.out, stderr to <log>.log); its
    wall seconds, or SmallcellError naming the step and the end of its log."""
    t0 = time.perf_counter()
    try:
        rc = run_logged(argv, work, work / f"{log}.out", work / f"{log}.log", s.timeout,
                        env=s.env())
    except ProgramNotFound as exc:
        raise SmallcellError(f"deepmd: {exc.program!r} {exc.reason}; {INSTALL_HINT}") from exc
    if rc is None:
        raise SmallcellError(f"deepmd: {what} timed out after {s.timeout:g} s "
                             "(deepmd.timeout) and was killed")
    if rc != 0:
        raise SmallcellError(f"deepmd: {what} {exit_text(rc)}: "
                             f"{tail_line(work / f'{log}.log') or tail_line(work / f'{log}.out')}")
    return time.perf_counter() - t0


class DeepmdTrainer:
    """DeePMD-kit (TensorFlow) through the `Trainer` interface (engines/base.py)."""

    name = "deepmd"
    files = (MODEL,)

    def __init__(self, settings: DeepmdSettings | Mapping[str, Any] | None = None) -> None:
        self.settings = _settings(settings) if settings is not None else DeepmdSettings()

    # -- training ----------------------------------------------------------------------

    def train(self, images: Sequence[Atoms | Cfg], species: Sequence[str], out_dir: Path,
              settings: DeepmdSettings | Mapping[str, Any] | None = None,
              start: Path | None = None) -> dict[str, Any]:
        """Fit one model on the labeled `images` (ASE Atoms with a calculator's results,
        or Cfg) and leave frozen_model.pb in `out_dir`; returns (also as train.json)
        seconds (wall: train + freeze), train_seconds, freeze_seconds, cpu_seconds (user
        + sys of the DeePMD processes), steps, lcurve (the last row of lcurve.out),
        n_configs, systems, seed."""
        s = _settings(settings) if settings is not None else self.settings
        if start is not None:
            raise SmallcellError("deepmd: no warm start (init-model) is supported; train "
                                 "from scratch (start=None)")
        dp, _ = programs(s)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cfgs = [_as_cfg(x, species) for x in images]
        if not cfgs:
            raise SmallcellError("deepmd: no configurations to train on")
        work = out_dir / f".work.{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            systems = write_systems(cfgs, species, work / "data")
            names = [str(p.relative_to(work)) for p in systems]
            (work / "input.json").write_text(
                json.dumps(s.input_json(species, names), indent=1) + "\n", encoding="utf-8")
            cpu0 = _cpu()
            try:
                train_s = _run([str(dp), "--tf", "train", "input.json"], work, "train", s,
                               "dp train")
                freeze_s = _run([str(dp), "--tf", "freeze", "-o", MODEL], work, "freeze", s,
                                "dp freeze")
            except BaseException:
                for log in ("train.log", "freeze.log"):
                    if (work / log).exists():
                        os.replace(work / log, out_dir / log.replace(".log", ".failed.log"))
                raise
            cpu = _cpu() - cpu0
            if not (work / MODEL).is_file():
                raise SmallcellError(f"deepmd: dp freeze wrote no {MODEL}; see freeze.log")
            lcurve = read_lcurve(work / "lcurve.out")
            if not all(math.isfinite(v) for v in lcurve.values()):
                raise SmallcellError(f"deepmd: training diverged (lcurve {lcurve})")
            result = {"trainer": self.name, "seconds": train_s + freeze_s,
                      "train_seconds": train_s, "freeze_seconds": freeze_s,
                      "cpu_seconds": cpu, "steps": int(lcurve.get("step", s.steps)),
                      "lcurve": lcurve, "n_configs": len(cfgs), "systems": names,
                      "seed": s.seed, "threads": s.threads}
            for name in ("input.json", "lcurve.out", "train.log", "freeze.log"):
                os.replace(work / name, out_dir / name)
            atomic_write_json(out_dir / "train.json", result)
            os.replace(work / MODEL, out_dir / MODEL)  # last: the model means a finished fit
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def start_file(self, train_dir: Path) -> Path:
        raise SmallcellError("deepmd: no warm starts; DeePMD models are for `smallcell "
                             "compare`, not for the loop")

    def load(self, train_dir: Path, species: Sequence[str], al_mode: str) -> Any:
        raise SmallcellError("deepmd: DeePMD has no extrapolation grade, so it cannot drive "
                             "the loop's exploration; it is for `smallcell compare`")

    # -- inference ---------------------------------------------------------------------

    def predict(self, train_dir: Path, species: Sequence[str], cfg_path: Path | Sequence[Cfg],
                work: Path) -> dict[str, Any]:
        """The model of `train_dir` on every configuration of `cfg_path` (a cfg file, or
        Cfg objects), in file order. Returns {"configs": [{"atoms", "energy" (eV),
        "forces" (N x 3 list, eV/Å), "stress" (6 GPa, Voigt xx yy zz yz xz xy, ASE sign:
        -virial/volume; None without a periodic cell), "virial" (3x3 list, eV)}, ...],
        "n_configs", "seconds" (wall of the whole call: process start, model load,
        evaluations), "load_seconds", "eval_seconds" (the evaluations alone),
        "us_per_atom_step" (eval_seconds per atom per configuration, microseconds),
        "model"}. `work` gets predict_in.npz, predict_out.npz and the process's logs."""
        t0 = time.perf_counter()
        s = self.settings
        _, python = programs(s)
        model = Path(train_dir) / MODEL
        if not model.is_file():
            raise SmallcellError(f"deepmd: no {MODEL} in {train_dir}")
        cfgs = read_cfgs(cfg_path) if isinstance(cfg_path, (str, os.PathLike)) \
            else list(cfg_path)
        index = _model_types(Path(train_dir), species)
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        natoms = np.array([c.natoms for c in cfgs], dtype=np.int64)
        cells = np.zeros((len(cfgs), 9))
        for k, c in enumerate(cfgs):
            if c.cell is None or c.cell.shape != (3, 3):
                raise SmallcellError(f"deepmd: configuration {k} of {cfg_path} is not "
                                     "periodic in 3D")
            cells[k] = c.cell.reshape(9)
        coords = np.concatenate([c.positions for c in cfgs]) if cfgs else np.zeros((0, 3))
        types = np.concatenate([index[c.types] for c in cfgs]) if cfgs else np.zeros(0, int)
        np.savez(work / "predict_in.npz", natoms=natoms, cells=cells, coords=coords,
                 types=types)
        out = work / "predict_out.npz"
        out.unlink(missing_ok=True)
        # a copy beside its input: run from the package folder, `import deepmd` would find
        # this module (engines/deepmd.py) first; and the folder can be re-run by hand
        shutil.copyfile(SCRIPT, work / SCRIPT.name)
        _run([str(python), SCRIPT.name, str(model.resolve()), "predict_in.npz",
              "predict_out.npz"], work, "predict", s, "inference (deepmd_task.py)")
        res = np.load(out)
        offsets = np.concatenate([[0], np.cumsum(natoms)])
        rows = []
        for k, c in enumerate(cfgs):
            vir = res["virial"][k].reshape(3, 3)
            vol = abs(float(np.linalg.det(c.cell)))
            stress = (-0.5 * (vir + vir.T) / vol)[_VOIGT] * _EV_A3_TO_GPA
            rows.append({"atoms": int(natoms[k]), "energy": float(res["energy"][k]),
                         "forces": res["forces"][offsets[k]:offsets[k + 1]].tolist(),
                         "stress": stress.tolist(), "virial": vir.tolist()})
        eval_s = float(res["eval_seconds"].sum())
        n_atoms = int(natoms.sum())
        return {"configs": rows, "n_configs": len(cfgs), "model": str(model),
                "seconds": time.perf_counter() - t0,
                "load_seconds": float(res["load_seconds"]), "eval_seconds": eval_s,
                "us_per_atom_step": 1e6 * eval_s / n_atoms if n_atoms else float("nan")}

    def _residuals(self, train_dir: Path, species: Sequence[str], cfg_path: Path,
                   work: Path) -> list[tuple[int, float, np.ndarray, np.ndarray | None]]:
        """Per labeled configuration: atoms, E_ML - E_ref (eV), F_ML - F_ref (N x 3,
        eV/Å), S_ML - S_ref (GPa, Voigt; None without a reference stress)."""
        cfgs = read_cfgs(cfg_path)
        if not cfgs:
            raise SmallcellError(f"deepmd: no configurations in {cfg_path}")
        for k, c in enumerate(cfgs):
            if c.energy is None or c.forces is None:
                raise SmallcellError(f"deepmd: configuration {k} of {cfg_path} has no "
                                     "energy or forces")
        pred = self.predict(train_dir, species, cfgs, work)
        out = []
        for c, p in zip(cfgs, pred["configs"], strict=True):
            ds = None
            if c.plus_stress is not None:
                ref = -c.plus_stress / abs(float(np.linalg.det(c.cell))) * _EV_A3_TO_GPA
                ds = np.asarray(p["stress"]) - ref
            out.append((c.natoms, p["energy"] - c.energy, np.asarray(p["forces"]) - c.forces,
                        ds))
        return out

    def errors(self, train_dir: Path, species: Sequence[str], cfg_path: Path
               ) -> dict[str, float]:
        """motep_mtp.errors_of's keys and units: n_configs, energy_rmse / _mae / _max
        (eV/atom), force_rmse / _mae / _max (|F_ref - F_ML| per atom, eV/Å), stress_rmse
        (GPa, over the Voigt components of the configurations with a stress)."""
        with tempfile.TemporaryDirectory(prefix="smallcell-deepmd-") as tmp:
            res = self._residuals(train_dir, species, cfg_path, Path(tmp))
        de = np.abs(np.array([e / n for n, e, _f, _s in res]))
        df = np.concatenate([np.linalg.norm(f, axis=1) for _n, _e, f, _s in res])
        ds = [s for *_rest, s in res if s is not None]
        out = {
            "n_configs": float(len(res)),
            "energy_rmse": float(np.sqrt(np.mean(de**2))),
            "energy_mae": float(np.mean(de)),
            "energy_max": float(de.max()),
            "force_rmse": float(np.sqrt(np.mean(df**2))),
            "force_mae": float(np.mean(df)),
            "force_max": float(df.max()),
        }
        if ds:
            out["stress_rmse"] = float(np.sqrt(np.mean(np.concatenate(ds) ** 2)))
        return out

    def config_errors(self, train_dir: Path, species: Sequence[str], cfg_path: Path,
                      work: Path) -> list[dict[str, float]]:
        """motep_mtp.config_errors_of's keys per configuration, in file order: atoms,
        energy_diff (E_ML - E_ref, eV), energy_per_atom_diff (|dE|/N), force_rms (RMS over
        atoms of |dF|, eV/Å), force_max."""
        rows = []
        for n, e, f, _s in self._residuals(train_dir, species, cfg_path, Path(work)):
            norms = np.linalg.norm(f, axis=1)
            rows.append({"atoms": float(n), "energy_diff": float(e),
                         "energy_per_atom_diff": abs(float(e)) / n,
                         "force_rms": float(np.sqrt(np.mean(norms**2))),
                         "force_max": float(norms.max())})
        return rows


def _settings(value: DeepmdSettings | Mapping[str, Any]) -> DeepmdSettings:
    return value if isinstance(value, DeepmdSettings) else DeepmdSettings.from_mapping(value)


def _model_types(train_dir: Path, species: Sequence[str]) -> np.ndarray:
    """cfg type -> the model's type index, through the model's type_map (input.json)."""
    try:
        tmap = json.loads((train_dir / "input.json").read_text(encoding="utf-8"))[
            "model"]["type_map"]
    except (OSError, ValueError, KeyError):
        tmap = list(species)
    missing = [s for s in species if s not in tmap]
    if missing:
        raise SmallcellError(f"deepmd: the model of {train_dir} knows {tmap}, not {missing}")
    return np.array([tmap.index(s) for s in species], dtype=np.int64)
