"""Iteration 0's initial data: generated, imported from a cfg file, or from OUTCARs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from smallcell.config import parse_config
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import atoms_to_cfg, read_cfgs, write_cfgs
from smallcell.stages import initial
from smallcell.stages.common import Iteration
from smallcell.structures import initial_structures


def test_outcar_import_matches_mlp_convert(fixtures: Path, tmp_path: Path) -> None:
    """Every ionic step of a real OUTCAR becomes a configuration with the values MLIP-3's
    `mlp convert --input_format=outcar` writes (POTCAR order Pd, Ag: Ag is type 1)."""
    src = fixtures / "vasp" / "relax_md" / "vasp541_relax3_32at_mlip3"
    folder = tmp_path / "outcars" / "run1"
    folder.mkdir(parents=True)
    shutil.copyfile(src / "OUTCAR", folder / "OUTCAR")
    ours = initial._import_outcars(tmp_path / "outcars", ["Pd", "Ag"])
    ref = read_cfgs(src / "relax.cfg")
    assert len(ours) == len(ref) == 3
    for a, b in zip(ours, ref, strict=True):
        assert a.types.tolist() == b.types.tolist() == [1] * 32
        np.testing.assert_allclose(a.positions, b.positions, atol=2e-6)
        np.testing.assert_allclose(a.cell, b.cell, atol=2e-6)
        np.testing.assert_allclose(a.forces, b.forces, atol=2e-6)
        assert a.energy == pytest.approx(b.energy, abs=1e-8)
        np.testing.assert_allclose(a.plus_stress, b.plus_stress, atol=2e-4)
        assert a.feature("EFS_by") == "VASP"


def test_crashed_outcar_is_one_clear_error(fixtures: Path, tmp_path: Path) -> None:
    src = fixtures / "vasp" / "unfinished" / "vasp544_crashed_before_NIONS" / "OUTCAR"
    (tmp_path / "x").mkdir()
    shutil.copyfile(src, tmp_path / "x" / "OUTCAR")
    with pytest.raises(SmallcellError, match=r"x/OUTCAR:\d+: no complete, converged DFT"):
        initial._import_outcars(tmp_path, ["Mg"])


def test_empty_outcar_folder(tmp_path: Path) -> None:
    with pytest.raises(SmallcellError, match="no OUTCAR"):
        initial._import_outcars(tmp_path, ["Pb"])


def _iteration0(tmp_path: Path, yaml_text: str) -> Iteration:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml_text)
    cfg = parse_config(yaml_text, cfg_file)
    return Iteration.open(tmp_path / "run", 0, cfg)


def test_cfg_import_needs_labels_and_is_copied(tmp_path: Path) -> None:
    from smallcell.engines.eam_labeler import EAMLabeler

    cfg = parse_config("initial: {n_configs: 3}\n")
    lab = EAMLabeler()
    labeled = [atoms_to_cfg(lab.label(tmp_path, a), ["Pb"]) for a in initial_structures(cfg)]
    write_cfgs(tmp_path / "data.cfg", labeled)
    it = _iteration0(tmp_path, "initial: {source: cfg, path: data.cfg}\n")
    folder = it.stage("select")
    assert initial.select(it, folder) == 0  # nothing to label
    got = read_cfgs(folder / initial.IMPORTED)
    assert [c.energy for c in got] == pytest.approx([c.energy for c in labeled], abs=1e-11)

    unlabeled = [atoms_to_cfg(a, ["Pb"]) for a in initial_structures(cfg)]
    write_cfgs(tmp_path / "raw.cfg", unlabeled)
    (tmp_path / "b").mkdir()
    it2 = _iteration0(tmp_path / "b", "initial: {source: cfg, path: ../raw.cfg}\n")
    with pytest.raises(SmallcellError, match="configuration 1 has no Energy"):
        initial.select(it2, it2.stage("select"))


def test_generated_initial_set_is_seeded(tmp_path: Path) -> None:
    it = _iteration0(tmp_path, "initial: {n_configs: 5}\n")
    assert initial.select(it, it.stage("select")) == 5
    first = (it.stage("select") / "selected.cfg").read_text()
    (tmp_path / "again").mkdir()
    it2 = _iteration0(tmp_path / "again", "initial: {n_configs: 5}\n")
    initial.select(it2, it2.stage("select"))
    assert (it2.stage("select") / "selected.cfg").read_text() == first


def test_outcar_import_keeps_only_converged_steps(fixtures: Path, tmp_path: Path) -> None:
    """An MD whose first two ionic steps reached NELM: only the converged step is data."""
    src = fixtures / "vasp" / "unconverged" / "vasp544_ch4_md3_NELM15" / "OUTCAR"
    (tmp_path / "md").mkdir()
    shutil.copyfile(src, tmp_path / "md" / "OUTCAR")
    cfgs = initial._import_outcars(tmp_path, ["C", "H"])  # POTCAR order is H, C
    assert len(cfgs) == 1
    assert cfgs[0].energy == pytest.approx(-23.94708651, abs=1e-8)
    assert sorted(cfgs[0].types.tolist()) == [0, 1, 1, 1, 1]  # C first in the run's species
    with pytest.raises(SmallcellError, match=r"species C not in the config"):
        initial._import_outcars(tmp_path, ["H"])
