"""DeePMD-kit for comparisons (engines/deepmd.py, formats/deepmd_npy.py): the npy layout
round trip, the layout and virial sign against dpdata's reading of a real VASP OUTCAR, a
real tiny training run and the consistency of errors / config_errors / predict, the
missing-extra error, and no model left by a failed or killed fit.

The real-DeePMD tests need DeePMD-kit's own venv (.venv-deepmd/, `make setup
EXTRAS=deepmd`; $SMALLCELL_DEEPMD_VENV names another): they skip, saying so, without it
(`make test DEEPMD=1` installs it), and fail instead under SMALLCELL_REQUIRE_DEEPMD=1 (CI)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from ase.build import bulk

from smallcell.config import parse_config
from smallcell.engines import eam_pb
from smallcell.engines.deepmd import MODEL, DeepmdSettings, DeepmdTrainer, programs
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg, atoms_to_cfg, read_cfgs, write_cfgs
from smallcell.formats.deepmd_npy import read_system, read_systems, write_systems
from smallcell.formats.outcar import outcar_to_cfgs, read_outcar

GPA = 160.21766208
REQUIRE = "SMALLCELL_REQUIRE_DEEPMD"
#: a tiny fit: seconds, not accuracy (the defaults train 2000 steps)
TINY = {"steps": 300, "seed": 5}


def _has_deepmd() -> str | None:
    try:
        programs(DeepmdSettings())
    except SmallcellError as exc:
        return f"DeePMD-kit not installed: {exc}"
    return None


@pytest.fixture(scope="session")
def real_deepmd() -> None:
    """Skip without DeePMD-kit's venv, saying why; fail instead under
    SMALLCELL_REQUIRE_DEEPMD=1 (CI installs it with `make test DEEPMD=1`)."""
    why = _has_deepmd()
    if why and os.environ.get(REQUIRE):
        pytest.fail(f"{REQUIRE} is set but {why}")
    if why:
        pytest.skip(f"{why} (`make test DEEPMD=1` installs it)")


def needs_deepmd(test):  # a decorator
    return pytest.mark.slow(pytest.mark.usefixtures("real_deepmd")(test))


def pb_configs(n: int, seed: int, *, size: int = 1, stress: bool = True) -> list[Cfg]:
    """Displaced, strained fcc Pb cells labeled by the embedded EAM."""
    rng = np.random.default_rng(seed)
    calc = eam_pb.calculator()
    out = []
    for _ in range(n):
        atoms = bulk("Pb", "fcc", a=4.95, cubic=True).repeat((1, 1, size))
        eps = rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
        atoms.calc = calc
        cfg = atoms_to_cfg(atoms, ["Pb"], energy=atoms.get_potential_energy(),
                           forces=atoms.get_forces(), stress=atoms.get_stress())
        if not stress:
            cfg.plus_stress = None
        out.append(cfg)
    return out


def _same(a: Cfg, b: Cfg, tol: float = 1e-12) -> None:
    assert np.array_equal(a.types, b.types)
    np.testing.assert_allclose(b.cell, a.cell, rtol=0, atol=tol)
    np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=tol)
    np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=tol)
    assert abs(b.energy - a.energy) <= tol
    if a.plus_stress is None:
        assert b.plus_stress is None
    else:
        np.testing.assert_allclose(b.plus_stress, a.plus_stress, rtol=0, atol=tol)


# -- the npy layout ---------------------------------------------------------------------


def test_npy_round_trip(tmp_path):
    """cfg -> npy -> cfg gives every configuration back, in order, to 1e-12: mixed atom
    counts, two species in two type orders, with and without stress."""
    cfgs = pb_configs(3, 1) + pb_configs(2, 2, size=2) + pb_configs(2, 3, stress=False)
    cfgs[1].types = np.array([0, 1, 1, 0])  # a second element, another type sequence
    order = [0, 3, 1, 5, 2, 4, 6]
    given = [cfgs[k] for k in order]
    folders = write_systems(given, ["Pb", "Sn"], tmp_path)
    assert sorted(p.name for p in folders) == ["n4", "n4-1", "n4-2", "n8"]
    for p in folders:
        assert (p / "type_map.raw").read_text() == "Pb\nSn\n"
        for name in ("coord", "box", "energy", "force"):
            assert np.load(p / "set.000" / f"{name}.npy").dtype == np.float64
    n4 = np.load(tmp_path / "n4" / "set.000" / "coord.npy")
    assert n4.shape == (2, 12)
    assert np.load(tmp_path / "n4" / "set.000" / "energy.npy").shape == (2, 1)
    assert np.load(tmp_path / "n4" / "set.000" / "virial.npy").shape == (2, 9)
    assert not (tmp_path / "n4-2" / "set.000" / "virial.npy").exists()  # no stress there
    back = read_systems(tmp_path)
    assert len(back) == len(given)
    for a, b in zip(given, back, strict=True):
        _same(a, b)
    # one system by itself, types re-indexed through its type_map
    sn_first = read_system(tmp_path / "n4-1", ["Sn", "Pb"])
    assert sn_first[0].types.tolist() == [1, 0, 0, 1]


def test_npy_virial_is_plus_stress(tmp_path):
    """DeePMD's virial is MLIP-3's PlusStress as a symmetric 3x3 (-stress * volume)."""
    cfg = pb_configs(1, 4)[0]
    write_systems([cfg], ["Pb"], tmp_path)
    v = np.load(tmp_path / "n4" / "set.000" / "virial.npy").reshape(3, 3)
    xx, yy, zz, yz, xz, xy = cfg.plus_stress
    assert np.array_equal(v, [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_npy_refuses(tmp_path):
    cfg = pb_configs(1, 5)[0]
    with pytest.raises(ValueError, match="periodic"):
        write_systems([Cfg(cell=None, types=cfg.types, positions=cfg.positions,
                           forces=cfg.forces, energy=1.0)], ["Pb"], tmp_path)
    with pytest.raises(ValueError, match="no energy or forces"):
        write_systems([Cfg(cell=cfg.cell, types=cfg.types, positions=cfg.positions)],
                      ["Pb"], tmp_path)
    with pytest.raises(ValueError, match="no species"):
        write_systems([cfg], [], tmp_path)
    with pytest.raises(ValueError, match="twice"):
        write_systems([cfg], ["Pb", "Pb"], tmp_path)


_DPDATA = """
import sys, dpdata
s = dpdata.LabeledSystem(sys.argv[1], fmt="vasp/outcar")
s.to("deepmd/npy", sys.argv[2])
"""


@needs_deepmd
@pytest.mark.parametrize("case", ["vasp632_fccAl4_strained", "vasp630_TiO_8at"])
def test_npy_matches_dpdata(case, fixtures, tmp_path):
    """The layout, units and virial sign of our writer against dpdata's conversion of the
    same real OUTCAR (a strained Al cell: a large diagonal stress; TiO: two elements, the
    POTCAR listing Ti twice, off-diagonal stress): OUTCAR -> smallcell's reader -> cfg ->
    our npy, and dpdata's `vasp/outcar` -> `deepmd/npy`, array by array."""
    outcar = fixtures / "vasp" / "single_point" / case / "OUTCAR"
    _, python = programs(DeepmdSettings())
    ref = tmp_path / "dpdata"
    subprocess.run([str(python), "-c", _DPDATA, str(outcar), str(ref)], check=True,
                   capture_output=True, timeout=300)
    info, _ = read_outcar(outcar)
    cfgs = outcar_to_cfgs(outcar)
    names = list(dict.fromkeys(info.species))  # POTCAR order, each element once
    for c in cfgs:  # POTCAR index -> element index
        c.types = np.array([names.index(info.species[t]) for t in c.types])
    ours = write_systems(cfgs, names, tmp_path / "ours")
    assert len(ours) == 1
    mine = ours[0]
    assert (ref / "type_map.raw").read_text().split() == names
    assert np.array_equal(np.loadtxt(ref / "type.raw", dtype=int, ndmin=1),
                          np.loadtxt(mine / "type.raw", dtype=int, ndmin=1))
    # the same printed numbers: equal to float precision
    for name in ("coord", "box", "energy", "force"):
        a = np.load(ref / "set.000" / f"{name}.npy")
        b = np.load(mine / "set.000" / f"{name}.npy")
        assert a.shape == b.shape, name
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=name)
    # virial: dpdata takes VASP's "in kB" line times the volume, smallcell the "Total"
    # line in eV (5 decimals): the same tensor to the printed precision, sign included
    a = np.load(ref / "set.000" / "virial.npy")
    b = np.load(mine / "set.000" / "virial.npy")
    assert a.shape == b.shape == (1, 9)
    assert np.abs(a).max() > 1.0  # a real stress, so the sign is tested
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-5)


# -- the trainer without DeePMD -----------------------------------------------------------


def test_missing_extra_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLCELL_DEEPMD_VENV", str(tmp_path / "no-venv"))
    trainer = DeepmdTrainer()
    with pytest.raises(SmallcellError, match=r"make setup EXTRAS=deepmd") as exc:
        trainer.train(pb_configs(2, 1), ["Pb"], tmp_path / "train")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "train" / MODEL).exists()
    write_cfgs(tmp_path / "test.cfg", pb_configs(1, 2))
    with pytest.raises(SmallcellError, match=r"make setup EXTRAS=deepmd"):
        trainer.errors(tmp_path / "train", ["Pb"], tmp_path / "test.cfg")


def test_no_grader_no_warm_start(tmp_path):
    trainer = DeepmdTrainer()
    with pytest.raises(SmallcellError, match="no extrapolation grade"):
        trainer.load(tmp_path, ["Pb"], "nbh")
    with pytest.raises(SmallcellError, match="no warm starts"):
        trainer.start_file(tmp_path)
    assert trainer.name == "deepmd" and trainer.files == (MODEL,)


def test_failed_train_leaves_no_model(tmp_path):
    """A dp that fails (here a stand-in exiting 1): SmallcellError with the end of its
    log, the log kept as train.failed.log, no model, no scratch left."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    dp = venv / "bin" / "dp"
    dp.write_text("#!/bin/sh\necho 'partial' > frozen_model.pb\n"
                  "echo 'RuntimeError: the stand-in fails' >&2\nexit 1\n")
    dp.chmod(0o755)
    (venv / "bin" / "python").symlink_to("/bin/true")
    trainer = DeepmdTrainer({"venv": str(venv)})
    out = tmp_path / "train"
    with pytest.raises(SmallcellError, match=r"dp train exited with status 1: .*stand-in fails"):
        trainer.train(pb_configs(2, 1), ["Pb"], out)
    assert sorted(p.name for p in out.iterdir()) == ["train.failed.log"]


def test_config_section():
    cfg = parse_config("species: [Pb]\n")
    s = DeepmdSettings.from_mapping(cfg["deepmd"])
    assert s == DeepmdSettings()  # the schema's defaults are the class's
    assert s.rcut == cfg["trainer"]["max_dist"]
    assert s.member(2).seed == s.seed + 2
    doc = s.input_json(["Pb"], ["data/n4"])
    assert doc["model"]["descriptor"]["sel"] == [32]
    assert doc["learning_rate"]["decay_steps"] == 100  # steps / 20
    with pytest.raises(SmallcellError) as exc:
        parse_config("deepmd: {rcut_smth: 6.0, committee: 2, neuron: [8, 0], "
                     "stop_lr: 0.1, decay_steps: 5000}\n")
    text = str(exc.value)
    for key in ("deepmd.rcut_smth", "deepmd.committee", "deepmd.neuron[1]",
                "deepmd.stop_lr", "deepmd.decay_steps"):
        assert key in text


# -- real DeePMD-kit ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_deepmd):
    """One tiny real fit (300 steps) on 40 four-atom configurations, and a held-out cfg
    of 4- and 8-atom cells."""
    root = tmp_path_factory.mktemp("deepmd")
    trainer = DeepmdTrainer(TINY)
    result = trainer.train(pb_configs(40, 11), ["Pb"], root / "train")
    write_cfgs(root / "test.cfg", pb_configs(5, 12) + pb_configs(3, 13, size=2))
    return trainer, root, result


@needs_deepmd
def test_train_result(trained):
    _, root, res = trained
    out = root / "train"
    assert (out / MODEL).stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch left
    for name in ("input.json", "lcurve.out", "train.log", "freeze.log", "train.json"):
        assert (out / name).is_file(), name
    assert res["steps"] == TINY["steps"] and res["n_configs"] == 40
    assert res["seconds"] > 0 and res["cpu_seconds"] > 0
    assert res["seconds"] == pytest.approx(res["train_seconds"] + res["freeze_seconds"])
    assert {"rmse_e_trn", "rmse_f_trn", "rmse_v_trn", "lr"} <= set(res["lcurve"])
    assert json.loads((out / "train.json").read_text())["steps"] == TINY["steps"]
    assert json.loads((out / "input.json").read_text())["training"]["seed"] == TINY["seed"]


@needs_deepmd
def test_errors_match_predict(trained, tmp_path):
    """errors() and config_errors() are what predict()'s numbers give by hand, with
    motep's keys; the held-out forces are learned (well below the raw force scale)."""
    trainer, root, _ = trained
    cfg_path = root / "test.cfg"
    refs = read_cfgs(cfg_path)
    pred = trainer.predict(root / "train", ["Pb"], cfg_path, tmp_path / "p")
    assert pred["n_configs"] == len(refs) == 8
    assert pred["us_per_atom_step"] > 0 and pred["eval_seconds"] < pred["seconds"]
    de, dfs, ds = [], [], []
    for c, p in zip(refs, pred["configs"], strict=True):
        assert p["atoms"] == c.natoms
        f = np.asarray(p["forces"])
        assert f.shape == (c.natoms, 3)
        de.append((p["energy"] - c.energy) / c.natoms)
        dfs.append(np.linalg.norm(f - c.forces, axis=1))
        vol = abs(np.linalg.det(c.cell))
        ds.append(np.asarray(p["stress"]) - (-c.plus_stress / vol * GPA))
        # stress and virial are one tensor: stress = -virial / volume
        v = np.asarray(p["virial"])
        assert p["stress"][0] == pytest.approx(-v[0, 0] / vol * GPA)
        assert p["stress"][3] == pytest.approx(-0.5 * (v[1, 2] + v[2, 1]) / vol * GPA)
    de, df = np.abs(de), np.concatenate(dfs)
    errors = trainer.errors(root / "train", ["Pb"], cfg_path)
    # the keys of the MTP's errors (motep_mtp.errors_of), so both read alike
    assert set(errors) == {"n_configs", "energy_rmse", "energy_mae", "energy_max",
                           "force_rmse", "force_mae", "force_max", "stress_rmse"}
    assert errors["n_configs"] == 8
    assert errors["energy_rmse"] == pytest.approx(np.sqrt(np.mean(de**2)), rel=1e-9)
    assert errors["energy_mae"] == pytest.approx(np.mean(de), rel=1e-9)
    assert errors["force_rmse"] == pytest.approx(np.sqrt(np.mean(df**2)), rel=1e-9)
    assert errors["force_mae"] == pytest.approx(np.mean(df), rel=1e-9)
    assert errors["force_max"] == pytest.approx(df.max(), rel=1e-9)
    assert errors["stress_rmse"] == pytest.approx(np.sqrt(np.mean(np.concatenate(ds)**2)),
                                                  rel=1e-9)
    raw = np.sqrt(np.mean(np.concatenate([np.linalg.norm(c.forces, axis=1) for c in refs])
                          ** 2))
    assert errors["force_rmse"] < 0.5 * raw
    rows = trainer.config_errors(root / "train", ["Pb"], cfg_path, tmp_path / "c")
    assert len(rows) == 8
    for c, row, d in zip(refs, rows, dfs, strict=True):
        assert set(row) == {"atoms", "energy_diff", "energy_per_atom_diff", "force_rms",
                            "force_max"}
        assert row["atoms"] == c.natoms
        assert row["force_rms"] == pytest.approx(np.sqrt(np.mean(d**2)), rel=1e-9)
        assert row["force_max"] == pytest.approx(d.max(), rel=1e-9)
        assert row["energy_per_atom_diff"] == pytest.approx(abs(row["energy_diff"]) / c.natoms)


@needs_deepmd
def test_killed_train_leaves_no_model(tmp_path):
    """A fit killed mid-training (deepmd.timeout: SIGTERM then SIGKILL to dp's process
    group) leaves no frozen_model.pb and no scratch."""
    trainer = DeepmdTrainer({**TINY, "steps": 200000, "timeout": 4.0})
    out = tmp_path / "train"
    with pytest.raises(SmallcellError, match="timed out"):
        trainer.train(pb_configs(4, 1), ["Pb"], out)
    assert not (out / MODEL).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
