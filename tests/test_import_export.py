"""Initial data from several labeled sets (cfg, extended XYZ, OUTCAR folders), with
deduplication and a held-out test split tested every iteration; and `smallcell export`,
the run's data sets as extended XYZ and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from smallcell import cli
from smallcell.config import load_config, parse_config
from smallcell.engines.eam_labeler import EAMLabeler
from smallcell.engines.motep_mtp import MotepPotential, errors_of
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg, atoms_to_cfg, cfg_to_atoms, read_cfgs, write_cfgs
from smallcell.formats.extxyz import read_extxyz, write_extxyz
from smallcell.stages import initial
from smallcell.stages.common import Iteration
from smallcell.state import read_json
from smallcell.structures import initial_structures

SPECIES = ["Pb"]


def _labeled(n: int, seed: int, tmp: Path) -> list[Cfg]:
    cfg = parse_config(f"initial: {{n_configs: {n}}}\nrun: {{seed: {seed}}}\n")
    lab = EAMLabeler()
    return [atoms_to_cfg(lab.label(tmp, a), SPECIES) for a in initial_structures(cfg)]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """a.cfg: 10 labeled configurations; b.extxyz: 6, of which 3 repeat a.cfg's first 3."""
    a = _labeled(10, 1, tmp_path)
    b = a[:3] + _labeled(3, 2, tmp_path)
    write_cfgs(tmp_path / "a.cfg", a)
    write_extxyz(tmp_path / "b.extxyz", b, SPECIES)
    return tmp_path


def _iteration0(folder: Path, text: str) -> Iteration:
    (folder / "c.yaml").write_text(text)
    return Iteration.open(folder / "run", 0, load_config(folder / "c.yaml"))


def _same_sets(xs: list[Cfg], ys: list[Cfg]) -> bool:
    """xs and ys hold the same configurations (positions within 1e-5 Å), each once."""
    left = list(ys)
    for x in xs:
        k = next((k for k, y in enumerate(left)
                  if np.allclose(x.positions, y.positions, rtol=0, atol=1e-5)), None)
        if k is None:
            return False
        left.pop(k)
    return not left


def test_import_several_sets_dedup_and_hold_out(data: Path) -> None:
    it = _iteration0(data, "initial:\n  source: import\n  paths: [a.cfg, b.extxyz]\n"
                           "  test_fraction: 0.25\nrun: {seed: 5}\n")
    folder = it.stage("select")
    assert initial.select(it, folder) == 0  # nothing to label: the data are labeled
    train = read_cfgs(folder / initial.IMPORTED)
    test = read_cfgs(folder / initial.TEST)
    assert (len(train), len(test)) == (10, 3)  # 16 - 3 duplicates = 13; round(0.25 * 13)
    every = read_cfgs(data / "a.cfg") + read_extxyz(data / "b.extxyz", SPECIES)[0][3:]
    assert _same_sets(train + test, every)  # each once, none lost, none in both
    rec = read_json(folder / "selection.json")["imported"]
    assert rec["n_duplicates"] == 3 and rec["n_test"] == 3 and rec["n_train"] == 10
    assert [s["n"] for s in rec["sources"]] == [10, 6]
    assert all(c.feature("origin") for c in train + test)
    # the same seed holds out the same configurations
    (data / "x").mkdir()
    (data / "y").mkdir()
    again = _iteration0(data / "x",
                        "initial:\n  source: import\n  paths: [../a.cfg, ../b.extxyz]\n"
                        "  test_fraction: 0.25\nrun: {seed: 5}\n")
    initial.select(again, again.stage("select"))
    again_test = read_cfgs(again.stage("select") / initial.TEST)
    assert all(np.array_equal(a.positions, b.positions)
               for a, b in zip(again_test, test, strict=True))
    # dedup off keeps the repeats
    off = _iteration0(data / "y",
                      "initial:\n  source: import\n  paths: [../a.cfg, ../b.extxyz]\n"
                      "  dedup: false\n")
    initial.select(off, off.stage("select"))
    assert len(read_cfgs(off.stage("select") / initial.IMPORTED)) == 16


def test_dedup_tolerance_and_types() -> None:
    base = Cfg(cell=np.eye(3) * 5, types=np.zeros(2, int),
               positions=np.array([[0.0, 0, 0], [1, 1, 1]]))

    def moved(dx: float, types: list[int] | None = None) -> Cfg:
        return Cfg(cell=base.cell.copy(), types=np.array(types or [0, 0]),
                   positions=base.positions + dx)

    kept, dropped = initial.dedup([base, moved(2e-7), moved(1e-3), moved(0.0, [0, 1])])
    assert dropped == 1 and len(kept) == 3


def test_outcar_folder_as_an_import_entry(fixtures: Path, tmp_path: Path) -> None:
    src = fixtures / "vasp" / "single_point" / "vasp632_fccAl4_strained" / "OUTCAR"
    (tmp_path / "eq" / "r1").mkdir(parents=True)
    shutil.copyfile(src, tmp_path / "eq" / "r1" / "OUTCAR")
    got = initial.read_set(tmp_path / "eq", ["Al"])
    assert len(got) == 1 and got[0].natoms == 4 and got[0].energy is not None
    assert got[0].feature("origin").endswith("r1/OUTCAR")


def test_outcar_folder_to_extxyz_and_back(fixtures: Path, tmp_path: Path) -> None:
    """A real OUTCAR folder imported, exported as extended XYZ and read back: the values
    of MLIP-3's own `mlp convert` of that OUTCAR, to the cfg file's precision."""
    src = fixtures / "vasp" / "relax_md" / "vasp541_relax3_32at_mlip3"
    (tmp_path / "eq" / "run1").mkdir(parents=True)
    shutil.copyfile(src / "OUTCAR", tmp_path / "eq" / "run1" / "OUTCAR")
    imported = initial.read_set(tmp_path / "eq", ["Pd", "Ag"])
    write_extxyz(tmp_path / "eq.extxyz", imported, ["Pd", "Ag"])
    back, order = read_extxyz(tmp_path / "eq.extxyz", ["Pd", "Ag"])
    ref = read_cfgs(src / "relax.cfg")
    assert order == ["Pd", "Ag"] and len(back) == len(ref) == 3
    for a, b in zip(back, ref, strict=True):
        assert a.types.tolist() == b.types.tolist() == [1] * 32
        np.testing.assert_allclose(a.positions, b.positions, atol=2e-6)
        np.testing.assert_allclose(a.forces, b.forces, atol=2e-6)
        assert a.energy == pytest.approx(b.energy, abs=1e-8)
        np.testing.assert_allclose(a.plus_stress, b.plus_stress, atol=2e-4)
    # and it imports again as initial data of a run of that system
    again = initial.read_set(tmp_path / "eq.extxyz", ["Pd", "Ag"])
    assert [c.energy for c in again] == [c.energy for c in back]


@pytest.mark.parametrize(("text", "words"), [
    ("initial: {source: import}\n", "list the data sets in initial.paths"),
    ("initial: {source: import, paths: [nothere.cfg]}\n",
     "initial.paths[0]: no such file or folder"),
])
def test_bad_import_config(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(SmallcellError, match=r"c\.yaml:1: .*" + words.replace("[", r"\[")
                       .replace("]", r"\]")):
        load_config(tmp_path / "c.yaml")


def test_unlabeled_or_foreign_sets_are_refused(tmp_path: Path) -> None:
    raw = [atoms_to_cfg(a, SPECIES) for a in initial_structures(parse_config("{}"))[:2]]
    write_extxyz(tmp_path / "raw.extxyz", raw, SPECIES)
    with pytest.raises(SmallcellError, match=r"raw.extxyz: configuration 1 has no Energy"):
        initial.read_set(tmp_path / "raw.extxyz", SPECIES)
    cu = _labeled(1, 3, tmp_path)
    write_extxyz(tmp_path / "cu.extxyz", cu, ["Cu"])
    with pytest.raises(SmallcellError, match=r"cu.extxyz.*Cu"):
        initial.read_set(tmp_path / "cu.extxyz", SPECIES)


# --------------------------------------------------- a run on imported data, exported


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imported_run")
    write_cfgs(root / "a.cfg", _labeled(16, 1, root))
    (root / "c.yaml").write_text(
        "species: [Pb]\ngrid: {temperatures: [300.0, 600.0]}\nmd: {steps: 60}\n"
        "initial:\n  source: import\n  paths: [a.cfg]\n  test_fraction: 0.25\n"
        "trainer: {level: 4, max_iter: 60, radial_basis_size: 4}\n"
        "select: {max_selected: 4}\nsample: {size: 5}\nrun: {seed: 3, jobs: 1}\n")
    assert cli.main(["--run-dir", str(root), "iter", "--upto", "1", "--config",
                     str(root / "c.yaml")]) == 0
    return root


def test_every_potential_is_tested_on_the_held_out_set(run: Path) -> None:
    test = read_cfgs(run / "iter" / "0" / "select" / initial.TEST)
    assert len(test) == 4
    images = [cfg_to_atoms(c, SPECIES) for c in test]
    for i in (0, 1):
        s = json.loads((run / "iter" / str(i) / "summary.json").read_text())
        pot = MotepPotential.load(run / "iter" / str(i) / "train", SPECIES, "nbh")
        want = errors_of(pot, images)
        assert s["test_errors"]["force_rmse"] == pytest.approx(want["force_rmse"], rel=1e-9)
        assert s["test_errors"]["energy_rmse"] == pytest.approx(want["energy_rmse"], rel=1e-9)
    # never trained on
    train = read_cfgs(run / "iter" / "1" / "collect" / "train.cfg")
    assert not any(np.allclose(a.positions, b.positions, atol=1e-5)
                   for a in test for b in train)
    assert cli.main(["--run-dir", str(run), "report"]) == 0
    md = (run / "report" / "report.md").read_text()
    s1 = json.loads((run / "iter" / "1" / "summary.json").read_text())
    assert f"| {1000 * s1['test_errors']['force_rmse']:.2f} |" in md


def test_export_and_back(run: Path, tmp_path: Path) -> None:
    assert cli.main(["--run-dir", str(run), "export", "--out", str(tmp_path / "x")]) == 0
    files = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert files == ["sample.extxyz", "test.extxyz", "train.extxyz"]
    pairs = {"train": [run / "iter" / "1" / "collect" / "train.cfg"],
             "test": [run / "iter" / "0" / "select" / initial.TEST],
             "sample": [run / "iter" / "1" / "sample" / "labeled.cfg"]}
    for name, sources in pairs.items():
        want = [c for f in sources for c in read_cfgs(f)]
        got, order = read_extxyz(tmp_path / "x" / f"{name}.extxyz")
        assert order == SPECIES and len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
            np.testing.assert_allclose(a.forces, b.forces, atol=1e-6)
            assert a.energy == pytest.approx(b.energy, abs=1e-9)
            np.testing.assert_allclose(a.plus_stress, b.plus_stress, atol=1e-4)
            assert a.feature("origin") == b.feature("origin")
    # back: an exported set imports as initial data of a new run
    new = tmp_path / "new"
    new.mkdir()
    (new / "c.yaml").write_text(
        f"initial: {{source: import, paths: [{tmp_path}/x/train.extxyz]}}\n")
    it = Iteration.open(new / "run", 0, load_config(new / "c.yaml"))
    initial.select(it, it.stage("select"))
    assert len(read_cfgs(it.stage("select") / initial.IMPORTED)) == len(
        read_cfgs(pairs["train"][0]))


def test_export_of_an_empty_run_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["--run-dir", str(tmp_path), "export"]) == 2
    assert "no iterations to export" in capsys.readouterr().err
