"""train: fit the potential on collect/train.cfg (warm start from the previous one).

Writes `train/pot.mtp`, `train/active_set.npz`, `train/train.log`, `train/errors.json` and
the marker. When the iteration added no data, the previous potential is carried over
unchanged (recorded as `skipped`), because refitting on the same data only burns time.
"""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import asdict

from smallcell.engines.base import trainer_for
from smallcell.engines.motep_mtp import TrainSettings
from smallcell.errors import SmallcellError, reraise_disk_full
from smallcell.formats.cfg import cfg_to_atoms, iter_cfgs
from smallcell.stages.collect import TRAIN
from smallcell.stages.common import Iteration, progress
from smallcell.stages.initial import held_out
from smallcell.state import atomic_write_json, atomic_write_text, mark_done, read_json
from smallcell.structures import seed_for

STAGE = "train"


def fit_settings(tr: dict, seed: int, *, level: int | None = None,
                 final: bool = False) -> TrainSettings:
    """A fit's settings from the config's `trainer` section (the level overridable, for
    the level sweep); `final`: the final refit's (final_restarts starts, each to
    final_tolerance, unscreened)."""
    return TrainSettings(
        level=tr["level"] if level is None else level, min_dist=tr["min_dist"],
        max_dist=tr["max_dist"], radial_basis_size=tr["radial_basis_size"],
        max_iter=tr["final_max_iter"] if final else tr["max_iter"],
        tolerance=tr["final_tolerance"] if final else tr["tolerance"],
        restarts=tr["final_restarts"] if final else tr["restarts"], screen=not final,
        energy_weight=tr["energy_weight"], force_weight=tr["force_weight"],
        stress_weight=tr["stress_weight"], al_mode=tr["al_mode"], seed=seed,
        min_dist_update=tr["min_dist_update"])


def settings(it: Iteration, final: bool = False) -> TrainSettings:
    return fit_settings(it.cfg["trainer"], seed_for(it.cfg["run"]["seed"], "train", it.i),
                        final=final)


def run(it: Iteration, final: bool = False) -> dict:
    """Fit (or carry over) the potential; return errors.json's content. `final`: the
    iteration met the stop rule, so this fit is the final refit (fit_settings), done even
    without new data: the stage hands on what it makes once it has passed an MD."""
    folder = it.stage(STAGE)
    folder.mkdir(parents=True, exist_ok=True)
    new = int(read_json(it.stage("collect") / "done")["n_new"])
    prev = it.previous_train
    trainer = trainer_for(it.cfg)
    final = final and bool(it.cfg["trainer"]["final_restarts"])
    if final and new == 0 and prev is not None \
            and read_json(prev / "errors.json").get("final_quality"):
        final = False  # the previous potential is already a final refit of this data
    if prev is not None and new == 0 and not final:
        for name in trainer.files:
            tmp = folder / f".{name}.tmp"
            shutil.copyfile(prev / name, tmp)
            tmp.replace(folder / name)
        info = dict(read_json(prev / "errors.json"), skipped="no new data: potential carried "
                    f"over from iteration {it.i - 1}", seconds=0.0, final_fit=False)
        atomic_write_json(folder / "errors.json", info)
        progress(it, STAGE, "no new data: previous potential carried over")
        mark_done(folder)
        return info
    images = [cfg_to_atoms(c, it.species) for c in iter_cfgs(it.stage("collect") / TRAIN)]
    warm = prev is not None and it.cfg["trainer"]["warm_start"]
    start = trainer.start_file(prev) if warm else None
    how = f"{'warm start' if start else 'from scratch'}" + (
        f", final refit: {it.cfg['trainer']['final_restarts']} fresh templates besides, each "
        "to convergence" if final else "")
    progress(it, STAGE, f"fitting level-{it.cfg['trainer']['level']} MTP on {len(images)} "
             f"configurations ({how})")
    t0 = time.perf_counter()
    try:
        res = trainer.train(images, it.species, folder, settings(it, final), start)
    except Exception as exc:  # keep the traceback beside the stage, say it in one line
        reraise_disk_full(exc, folder)  # no room for the traceback either: say what filled up
        atomic_write_text(folder / "error.log", traceback.format_exc())
        raise SmallcellError(f"{folder}: training failed ({type(exc).__name__}: {exc}); "
                             "traceback in error.log; run again to retry") from None
    info = {**asdict(res), "seconds": time.perf_counter() - t0, "n_train": len(images),
            # final_fit: refitted here; final_quality: the potential is a final refit of
            # its training set (kept by carry-overs)
            "warm_start": start is not None, "final_fit": final, "final_quality": final}
    held = held_out(it.paths.root)
    if held is not None:
        info["test_errors"] = trainer.errors(folder, it.species, held)
        progress(it, STAGE, f"held-out test set: force RMSE "
                 f"{info['test_errors']['force_rmse']:.4f} eV/Å, energy RMSE "
                 f"{1000 * info['test_errors']['energy_rmse']:.2f} meV/atom")
    atomic_write_json(folder / "errors.json", info)
    e = res.errors
    progress(it, STAGE, f"done in {info['seconds']:.1f} s, {res.iterations} iterations: "
             f"energy RMSE {1000 * e['energy_rmse']:.2f} meV/atom, force RMSE "
             f"{e['force_rmse']:.4f} eV/Å, active set {res.active_set_size} rows from "
             f"{res.active_set_configs} configurations")
    mark_done(folder)
    return info
