"""`smallcell convert`: OUTCAR/vasprun -> cfg against `mlp convert`, bad runs, round trips."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smallcell import convert
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg, format_cfg, read_cfgs, write_cfgs
from smallcell.formats.errors import FormatError
from smallcell.formats.extxyz import read_extxyz, write_extxyz
from smallcell.formats.poscar import (
    format_poscar,
    poscar_order,
    read_poscar,
    read_poscar_species,
    write_poscar,
)

REPO = Path(__file__).resolve().parents[1]
RELAX = "vasp/relax_md/vasp541_relax3_32at_mlip3"
USUAL = "vasp/single_point/vasp541_128at_mlip3/OUTCAR"
CH4_NELM15 = "vasp/unconverged/vasp544_ch4_md3_NELM15/OUTCAR"
AL4 = "vasp/single_point/vasp632_fccAl4_strained"


def cli(argv: list[str]) -> int:
    """What `smallcell convert ...` does once cli.py registers add_parser (same handling)."""
    parser = argparse.ArgumentParser(prog="smallcell")
    convert.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *argv])
    try:
        return args.fn(args)
    except (SmallcellError, FormatError) as exc:
        print(f"smallcell: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture(params=["main", "cli"])
def run(request: pytest.FixtureRequest):
    """Both entry points: convert.main(argv) and a parser built with add_parser."""
    return convert.main if request.param == "main" else cli


def assert_same_cfgs(got: list[Cfg], want: list[Cfg], *, pos: float = 0.0, force: float = 0.0,
                     stress: float = 0.0, features: bool = True) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.types.tolist() == b.types.tolist()
        np.testing.assert_allclose(a.cell, b.cell, atol=max(pos, 1e-12))
        np.testing.assert_allclose(a.positions, b.positions, atol=max(pos, 1e-12))
        np.testing.assert_allclose(a.forces, b.forces, atol=max(force, 1e-12))
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        np.testing.assert_allclose(a.plus_stress, b.plus_stress, rtol=1e-6 if stress else 0,
                                   atol=max(stress, 1e-12))
        if features:
            assert a.features == b.features


# --------------------------------------------------------------------------- OUTCAR / vasprun


@pytest.mark.parametrize(("outcar", "reference"), [
    (USUAL, "mlip3/generated/OUTCAR_usual.converted.cfg"),
    (f"{RELAX}/OUTCAR", f"{RELAX}/relax.cfg"),
])
def test_outcar_to_cfg_equals_mlp_convert(fixtures: Path, tmp_path: Path, run, outcar: str,
                                          reference: str) -> None:
    """Value for value (and byte for byte) what `mlp convert --input_format=outcar` wrote."""
    out = tmp_path / "out.cfg"
    assert run([str(fixtures / outcar), str(out)]) == 0
    ref = fixtures / reference
    assert_same_cfgs(read_cfgs(out), read_cfgs(ref))
    assert out.read_text() == ref.read_text()


def test_convert_uses_the_rule_of_outcar_to_cfgs(fixtures: Path, tmp_path: Path) -> None:
    """convert reads OUTCARs in one pass itself; it must select what outcar_to_cfgs selects."""
    from smallcell.formats.outcar import outcar_to_cfgs

    for rel, keep in [(f"{RELAX}/OUTCAR", False), (CH4_NELM15, True),
                      ("vasp/relax_md/vasp630_Ti32_aimd_nwrite0/OUTCAR", False)]:
        got, species = convert.read_any(str(fixtures / rel), "outcar", keep_converged_steps=keep)
        assert_same_cfgs(got, outcar_to_cfgs(fixtures / rel, keep_converged_steps=keep))
    assert species == ["Ti"]


@pytest.mark.parametrize(("rel", "status"), [
    (CH4_NELM15, "unconverged run: ionic steps 1, 2 reached NELM=15"),
    ("vasp/unfinished/vasp541_relax3_no_footer_mlip3/OUTCAR", "unfinished run: no timing footer"),
    ("vasp/unfinished/vasp544_aborted_ZHEGV/OUTCAR", "unfinished run: VASP error: Error EDDDAV"),
    ("vasp/unfinished/vasp544_crashed_before_NIONS/OUTCAR", "unfinished run: stopped before NIONS"),
    ("vasp/unfinished/vasp641_Ba2Pb2O6_killed_midSCF/OUTCAR", "unfinished run: no timing footer"),
])
def test_bad_outcar_fails_with_one_line(fixtures: Path, tmp_path: Path, capsys, run, rel: str,
                                        status: str) -> None:
    out = tmp_path / "out.cfg"
    assert run([str(fixtures / rel), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smallcell: error: {fixtures / rel}:")
    assert status in err and err.count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_keep_converged_steps_keeps_step_3_of_the_nelm15_md(fixtures: Path, tmp_path: Path,
                                                            run) -> None:
    out = tmp_path / "ch4.cfg"
    assert run([str(fixtures / CH4_NELM15), str(out), "--keep-converged-steps"]) == 0
    (cfg,) = read_cfgs(out)
    assert cfg.energy == pytest.approx(-23.94708651, abs=1e-8)  # TOTEN of ionic step 3
    assert cfg.natoms == 5 and cfg.types.tolist() == [0, 0, 0, 0, 1]  # H x4, C (POTCAR order)
    np.testing.assert_allclose(cfg.forces[0], [0.03336, -0.393549, -0.684725])
    assert cfg.feature("EFS_by") == "VASP"


def test_keep_converged_steps_with_nothing_to_keep(fixtures: Path, tmp_path: Path, capsys,
                                                   run) -> None:
    rel = "vasp/unfinished/vasp641_Ba2Pb2O6_killed_midSCF/OUTCAR"
    assert run([str(fixtures / rel), str(tmp_path / "x.cfg"), "--keep-converged-steps"]) == 2
    assert "no complete, converged DFT ionic step" in capsys.readouterr().err


# The runs with both files; Ti32 (NWRITE=0) has forces in the OUTCAR only for steps 1 and 10.
BOTH = [
    ("vasp/single_point/vasp544_Ge8_vdw", [0]),
    ("vasp/single_point/vasp630_TiO_8at", [0]),
    (AL4, [0]),
    ("vasp/relax_md/vasp630_Ti32_aimd_nwrite0", [0, 9]),
]


@pytest.mark.parametrize(("run_dir", "steps"), BOTH)
@pytest.mark.parametrize("energy", ["free", "sigma0"])
def test_vasprun_to_cfg_equals_outcar_to_cfg(fixtures: Path, tmp_path: Path, run, run_dir: str,
                                             steps: list[int], energy: str) -> None:
    """Same cfgs from both files, to the precision the OUTCAR prints (5-6 decimals)."""
    a, b = tmp_path / "outcar.cfg", tmp_path / "vasprun.cfg"
    assert run([str(fixtures / run_dir / "OUTCAR"), str(a), "--energy", energy]) == 0
    assert run([str(fixtures / run_dir / "vasprun.xml"), str(b), "--energy", energy]) == 0
    from_outcar = read_cfgs(a)
    from_vasprun = read_cfgs(b)
    assert len(from_vasprun) == (10 if "Ti32" in run_dir else 1)
    # Both files written through the cfg format: compare what the cfg holds.
    assert_same_cfgs(from_outcar, [from_vasprun[i] for i in steps], pos=1.1e-5, force=1.1e-6,
                     stress=1e-5)


def test_species_option_remaps_potcar_types(fixtures: Path, tmp_path: Path, run) -> None:
    """Ti, O, Ti POTCARs: types 0 1 2 by default (mlp convert), by element with --species."""
    src = str(fixtures / "vasp/single_point/vasp630_TiO_8at/vasprun.xml")
    assert run([src, str(tmp_path / "a.cfg")]) == 0
    assert read_cfgs(tmp_path / "a.cfg")[0].types.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert run([src, str(tmp_path / "b.cfg"), "--species", "O,Ti"]) == 0
    assert read_cfgs(tmp_path / "b.cfg")[0].types.tolist() == [1, 1, 1, 0, 0, 1, 1, 1]
    # POSCAR keeps the POTCAR grouping, so the POTCAR of the run still fits it.
    assert run([src, str(tmp_path / "POSCAR")]) == 0
    lines = (tmp_path / "POSCAR").read_text().splitlines()
    assert lines[5].split() == ["Ti", "O", "Ti"] and lines[6].split() == ["3", "2", "3"]


def test_species_errors(fixtures: Path, tmp_path: Path, capsys, run) -> None:
    src = str(fixtures / "vasp/single_point/vasp630_TiO_8at/vasprun.xml")
    assert run([src, str(tmp_path / "a.cfg"), "--species", "Ti"]) == 2
    assert "element(s) O not in --species Ti" in capsys.readouterr().err
    assert run([src, str(tmp_path / "a.cfg"), "--species", "Ti,,O"]) == 2
    assert "expected element symbols separated by commas" in capsys.readouterr().err
    assert run([src, str(tmp_path / "a.cfg"), "--species", "Ti,O,Ti"]) == 2
    assert "Ti appears twice" in capsys.readouterr().err
    relax = str(fixtures / RELAX / "relax.cfg")
    assert run([relax, str(tmp_path / "b.cfg"), "--species", "Ag"]) == 2
    assert "has type 1 but --species names only 1 element(s): Ag" in capsys.readouterr().err


def test_last_and_energy_options(fixtures: Path, tmp_path: Path, run, capsys) -> None:
    out = tmp_path / "last.cfg"
    assert run([str(fixtures / RELAX / "OUTCAR"), str(out), "--last"]) == 0
    assert_same_cfgs(read_cfgs(out), read_cfgs(fixtures / RELAX / "relax.cfg")[-1:])
    assert run([str(fixtures / RELAX / "OUTCAR"), str(out), "--energy", "sigma0", "--last"]) == 0
    assert read_cfgs(out)[0].energy == pytest.approx(-88.79792171, abs=1e-8)
    assert run([str(fixtures / RELAX / "relax.cfg"), str(out), "--energy", "sigma0"]) == 2
    assert "--energy applies to OUTCAR/vasprun input only" in capsys.readouterr().err


# --------------------------------------------------------------------------- extxyz


ROUND_TRIP = [
    (f"{RELAX}/relax.cfg", ["Pd", "Ag"]),
    ("mlip/cfg/mlip3_selftest/NaCl_small.cfgs", ["Na", "Cl"]),  # charge column
    ("mlip/cfg/motep/mag.cfg", ["Fe"]),  # magmom columns
    ("mlip/cfg/motep/molecule_762_training.cfg", ["H"]),  # no cell
    ("mlip3/mlip3_upstream/examples/06_select_add/preselected.cfg", ["K"]),  # ghost, no cell
    ("mlip/cfg/kmtp/selected.cfg", ["K"]),  # mixed features, some cfgs without labels
    ("mlip3/generated/graded_nbh.cfg", ["K"]),  # nbh_grades, MV_grade
]


@pytest.mark.parametrize(("rel", "species"), ROUND_TRIP)
def test_cfg_extxyz_cfg_round_trip(fixtures: Path, tmp_path: Path, run, rel: str,
                                   species: list[str]) -> None:
    """Every value the cfg holds survives; numeric features may be respelled, not changed."""
    src = fixtures / rel
    xyz, back = tmp_path / "set.xyz", tmp_path / "back.cfg"
    sp = ",".join(species)
    assert run([str(src), str(xyz), "--species", sp]) == 0
    assert run([str(xyz), str(back), "--species", sp]) == 0
    want, got = read_cfgs(src), read_cfgs(back)
    assert len(got) == len(want)

    def numeric(features: list[tuple[str, str]]) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for k, v in features:
            try:
                out.append((k, float(v)))
            except ValueError:
                out.append((k, v))
        return out

    for a, b in zip(got, want, strict=True):
        assert numeric(a.features) == numeric(b.features)
        a.features, b.features = [], []
    assert "".join(map(format_cfg, got)) == "".join(map(format_cfg, want))


def test_extxyz_is_what_other_mlips_read(fixtures: Path, tmp_path: Path) -> None:
    """ASE reads energy, forces, stress (ASE sign, eV/Å^3) and symbols back."""
    import ase.io

    (cfg,) = read_cfgs(fixtures / USUAL.replace("OUTCAR", "cfg_usual.cfg"))
    write_extxyz(tmp_path / "a.xyz", [cfg], ["Li"])
    atoms = ase.io.read(tmp_path / "a.xyz")
    assert atoms.get_chemical_symbols() == ["Li"] * 128 and all(atoms.pbc)
    assert atoms.get_potential_energy() == pytest.approx(-236.45587962)
    np.testing.assert_allclose(atoms.get_forces()[0], [0.077722, 0.084688, -0.036006])
    # ASE stress of this OUTCAR per the fixture notes (eV/Å^3): 5 printed decimals of eV.
    np.testing.assert_allclose(atoms.get_stress(),
                               [0.00291063, 0.00286217, 0.00286185, 0.00036118, 0.00054748,
                                -0.000653], atol=2e-8)
    cfgs, order = read_extxyz(tmp_path / "a.xyz")
    assert order == ["Li"] and cfgs[0].feature("EFS_by") is None


def test_extxyz_species_from_file_and_reserved_feature_keys(tmp_path: Path) -> None:
    cfg = Cfg(cell=np.eye(3) * 5, types=[1, 0], positions=[[0, 0, 0], [1, 1, 1]],
              features=[("energy", "x"), ("note", "two words"), ("multi", "a"), ("multi", "b"),
                        ("multi", "c")])
    write_extxyz(tmp_path / "a.xyz", [cfg], ["Cu", "Au"])
    (back,), order = read_extxyz(tmp_path / "a.xyz")
    assert order == ["Au", "Cu"] and back.types.tolist() == [0, 1]
    assert back.features == cfg.features
    assert back.energy is None and back.forces is None
    with pytest.raises(FormatError, match="not in species"):
        read_extxyz(tmp_path / "a.xyz", ["Au"])


# --------------------------------------------------------------------------- POSCAR


def test_cfg_poscar_cfg_round_trip(fixtures: Path, tmp_path: Path, run) -> None:
    """Positions and cell survive to 1e-12 Å; atoms come back grouped by type."""
    src = fixtures / "mlip/cfg/mlip3_selftest/NaCl_small.cfgs"
    (cfg,) = read_cfgs(src)[:1]
    one = tmp_path / "one.cfg"
    write_cfgs(one, [cfg])
    assert run([str(one), str(tmp_path / "POSCAR"), "--species", "Na,Cl"]) == 0
    assert read_poscar_species(tmp_path / "POSCAR") == ["Na", "Cl"]
    assert run([str(tmp_path / "POSCAR"), str(tmp_path / "back.cfg"), "--species", "Na,Cl"]) == 0
    (back,) = read_cfgs(tmp_path / "back.cfg")
    order = poscar_order(cfg)
    assert back.types.tolist() == cfg.types[order].tolist() == sorted(cfg.types.tolist())
    np.testing.assert_allclose(back.cell, cfg.cell, atol=1e-12)
    # In memory (not through the 6-decimal cfg text): exact to double precision.
    direct = read_poscar(tmp_path / "POSCAR", ["Na", "Cl"])
    np.testing.assert_allclose(direct.positions, cfg.positions[order], atol=1e-12)
    np.testing.assert_allclose(direct.cell, cfg.cell, atol=0)


def test_poscar_of_several_configurations_needs_last(fixtures: Path, tmp_path: Path, capsys,
                                                     run) -> None:
    src = str(fixtures / RELAX / "relax.cfg")
    assert run([src, str(tmp_path / "POSCAR"), "--species", "Pd,Ag"]) == 2
    err = capsys.readouterr().err
    assert "holds 3 configurations and a POSCAR holds one; pass --last" in err
    assert not (tmp_path / "POSCAR").exists()
    assert run([src, str(tmp_path / "POSCAR"), "--species", "Pd,Ag", "--last"]) == 0
    back = read_poscar(tmp_path / "POSCAR", ["Pd", "Ag"])
    last = read_cfgs(src)[-1]
    assert back.types.tolist() == [1] * 32  # Pd has no atoms: left out of the POSCAR
    assert (tmp_path / "POSCAR").read_text().splitlines()[5].split() == ["Ag"]
    np.testing.assert_allclose(back.positions, last.positions, atol=1e-12)


def test_poscar_needs_a_cell_and_species(tmp_path: Path, capsys, run) -> None:
    cfg = Cfg(cell=None, types=[0], positions=[[0, 0, 0]])
    write_cfgs(tmp_path / "mol.cfg", [cfg])
    (tmp_path / "POSCAR").write_text("old\n")
    assert run([str(tmp_path / "mol.cfg"), str(tmp_path / "POSCAR"), "--species", "H"]) == 2
    assert "cannot write poscar: a POSCAR needs a periodic cell" in capsys.readouterr().err
    assert (tmp_path / "POSCAR").read_text() == "old\n"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["POSCAR", "mol.cfg"]  # no debris
    assert run([str(tmp_path / "mol.cfg"), str(tmp_path / "POSCAR")]) == 2
    assert "give the element of type 0, 1, ... with --species" in capsys.readouterr().err


def test_read_vasp5_poscar_with_scale(fixtures: Path) -> None:
    """Al4 POSCAR with scale 1.02: what ASE reads, to the last bit."""
    import ase.io

    for name in ("POSCAR", "CONTCAR"):
        path = fixtures / AL4 / name
        cfg = read_poscar(path)
        atoms = ase.io.read(path, format="vasp")
        np.testing.assert_allclose(cfg.cell, atoms.cell[:], atol=1e-14)
        np.testing.assert_allclose(cfg.positions, atoms.positions, atol=1e-14)
        assert read_poscar_species(path) == ["Al"] and cfg.types.tolist() == [0] * 4
    assert cfg.cell[0, 0] == pytest.approx(4.0387989866236227 * 1.02)


@pytest.mark.parametrize(("poscar", "cfg_file", "species"), [
    ("mlip3/generated/POSCAR_from_mlp_convert", "mlip3/generated/train30.cfg", ["K"]),
    ("mlip3/generated/POSCAR_from_preselected", "mlip3/smallcell/preselected.cfg", ["K"]),
])
def test_read_mlp_convert_poscar_without_species_line(fixtures: Path, poscar: str,
                                                      cfg_file: str, species: list[str]) -> None:
    """`mlp convert --output_format=poscar` writes no species line and 6 significant digits."""
    got = read_poscar(fixtures / poscar, species)
    want = read_cfgs(fixtures / cfg_file)[0]
    assert got.types.tolist() == want.types.tolist()
    np.testing.assert_allclose(got.cell, want.cell, atol=5e-5)
    np.testing.assert_allclose(got.positions, want.positions, atol=5e-5)
    assert read_poscar_species(fixtures / poscar) is None
    with pytest.raises(FormatError, match=r":6: no species line"):
        read_poscar(fixtures / poscar)


def test_poscar_without_species_line_through_convert(fixtures: Path, tmp_path: Path, capsys,
                                                     run) -> None:
    src = str(fixtures / "mlip3/generated/POSCAR_from_preselected")
    assert run([src, str(tmp_path / "a.cfg")]) == 2
    assert "no species line" in capsys.readouterr().err
    assert run([src, str(tmp_path / "a.cfg"), "--species", "K"]) == 0
    assert read_cfgs(tmp_path / "a.cfg")[0].natoms == 12


def test_poscar_variants(tmp_path: Path) -> None:
    """Repeated species, VASP 6 species tags, selective dynamics, Cartesian with a negative
    (volume) scale, three scale factors, velocities after the positions."""
    path = tmp_path / "POSCAR"
    path.write_text(
        "comment\n-64.0\n2 0 0\n0 2 0\n0 0 2\nB_h/abc12 O B\n1 1 1\nSelective dynamics\n"
        "Cartesian\n0 0 0 T T T\n0.5 0 0 F F F\n0 0.5 0 T F T\n\n0 0 0\n0 0 0\n0 0 0\n")
    cfg = read_poscar(path)
    assert read_poscar_species(path) == ["B", "O"] and cfg.types.tolist() == [0, 1, 0]
    np.testing.assert_allclose(cfg.cell, np.eye(3) * 4)  # volume 64 -> scale 2
    np.testing.assert_allclose(cfg.positions[1], [1.0, 0, 0])
    path.write_text("c\n1 2 3\n1 0 0\n0 1 0\n0 0 1\nAl\n1\nDirect\n0.5 0.5 0.5\n")
    cfg = read_poscar(path)
    np.testing.assert_allclose(cfg.cell, np.diag([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(cfg.positions, [[0.5, 1.0, 1.5]])


@pytest.mark.parametrize(("text", "match"), [
    ("", r":1: empty file"),
    ("c\n", r":2: end of file, expected the scale factor"),
    ("c\nx\n", r":2: expected the scale factor"),
    ("c\n1\n1 0 0\n0 1\n0 0 1\nAl\n1\nD\n0 0 0\n", r":4: expected a lattice vector"),
    ("c\n1\n1 0 0\n2 0 0\n0 0 1\nAl\n1\nD\n0 0 0\n", r":5: the lattice vectors are singular"),
    ("c\n1\n1 0 0\n0 1 0\n0 0 1\nAl Cu\n1\nD\n0 0 0\n", r":7: 1 atom counts for 2 species"),
    ("c\n1\n1 0 0\n0 1 0\n0 0 1\nAl\none\nD\n0 0 0\n", r":7: expected atom counts"),
    ("c\n1\n1 0 0\n0 1 0\n0 0 1\nXx1\n1\nD\n0 0 0\n", r":6: 'Xx1' is not an element symbol"),
    ("c\n1\n1 0 0\n0 1 0\n0 0 1\nAl\n2\nD\n0 0 0\n", r":10: end of file, expected the position "
                                                     r"of atom 2 of 2"),
    ("c\n1\n1 0 0\n0 1 0\n0 0 1\nAl\n1\nD\n0 0 nan\n", r":9: expected the position of atom 1"),
])
def test_malformed_poscar(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "POSCAR"
    path.write_text(text)
    with pytest.raises(FormatError, match=match):
        read_poscar(path)


def test_format_poscar_layout() -> None:
    cfg = Cfg(cell=np.eye(3) * 3.5, types=[1, 0, 1], positions=[[0, 0, 0], [1.75, 1.75, 0],
                                                                 [0, 1.75, 1.75]])
    lines = format_poscar(cfg, ["Pb", "Ag"]).splitlines()
    assert lines[0] == "Pb1 Ag2" and lines[1].strip() == "1.0"
    assert lines[5].split() == ["Pb", "Ag"] and lines[6].split() == ["1", "2"]
    assert lines[7] == "Direct"
    assert [float(x) for x in lines[8].split()] == [0.5, 0.5, 0.0]  # the type-0 atom first
    assert len(lines) == 11
    assert cfg.positions[poscar_order(cfg)].tolist()[0] == [1.75, 1.75, 0.0]
    with pytest.raises(ValueError, match="type 1 has no species"):
        write_poscar("/nonexistent/never", cfg, ["Pb"])


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "fmt"), [
    ("OUTCAR", "outcar"), ("OUTCAR_relax", "outcar"), ("outcar", "outcar"),
    ("run.outcar", "outcar"),
    ("vasprun.xml", "vasprun"), ("vasprun_3.xml", "vasprun"),
    ("train.cfg", "cfg"), ("TS61-1.cfgs", "cfg"), ("graded.cfg.0", "cfg"),
    ("OUTCAR_relax.cfg", "cfg"),
    ("POSCAR", "poscar"), ("POSCAR0", "poscar"), ("CONTCAR", "poscar"), ("Pb.vasp", "poscar"),
    ("set.xyz", "extxyz"), ("set.extxyz", "extxyz"),
])
def test_detect_format(name: str, fmt: str) -> None:
    assert convert.detect_format(Path("/some/dir") / name) == fmt


@pytest.mark.parametrize("name", ["data.txt", "vasprun.json", "INCAR", "structure.cif"])
def test_unknown_name_is_a_clear_error(tmp_path: Path, capsys, run, name: str) -> None:
    with pytest.raises(SmallcellError, match="cannot tell the format from the name"):
        convert.detect_format(name)
    src = tmp_path / name
    src.write_text("x\n")
    assert run([str(src), str(tmp_path / "out.cfg")]) == 2
    err = capsys.readouterr().err
    assert f"{src}: cannot tell the format from the name" in err and "--from/--to" in err


def test_from_to_override_names(fixtures: Path, tmp_path: Path, run, capsys) -> None:
    src = tmp_path / "run1.dat"
    src.write_bytes((fixtures / RELAX / "OUTCAR").read_bytes())
    out = tmp_path / "train.data"
    assert run([str(src), str(out), "--from", "outcar", "--to", "cfg"]) == 0
    assert out.read_text() == (fixtures / RELAX / "relax.cfg").read_text()
    assert run([str(src), str(tmp_path / "x.cfg"), "--from", "vasprun"]) == 2
    assert "not a vasprun.xml" in capsys.readouterr().err
    assert run([str(out), str(tmp_path / "OUTCAR"), "--from", "cfg"]) == 2
    assert "outcar is an input format only" in capsys.readouterr().err
    assert run([str(tmp_path / "missing.cfg"), str(tmp_path / "x.cfg")]) == 2
    assert "missing.cfg: no such file" in capsys.readouterr().err


def test_bin_smallcell_convert(fixtures: Path, tmp_path: Path) -> None:
    """The real command, once cli.py registers convert.add_parser."""
    from smallcell import cli

    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "convert" not in sub.choices:
        pytest.skip("cli.py does not register `convert` yet")
    out = tmp_path / "relax.cfg"
    ok = subprocess.run([str(REPO / "bin" / "smallcell"), "convert",
                         str(fixtures / RELAX / "OUTCAR"), str(out)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert out.read_text() == (fixtures / RELAX / "relax.cfg").read_text()
    bad = subprocess.run([str(REPO / "bin" / "smallcell"), "convert",
                          str(fixtures / CH4_NELM15), str(tmp_path / "x.cfg")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "unconverged run" in bad.stderr
