"""MLIP-3 .cfg reader/writer: conformance on real MLIP-3 files, malformed input, ASE bridge."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from smallcell.formats.cfg import (
    Cfg,
    atoms_to_cfg,
    cfg_to_atoms,
    format_cfg,
    iter_cfgs,
    read_cfgs,
    read_preselected,
    write_cfgs,
)
from smallcell.formats.errors import FormatError

# Files written by MLIP-3's Configuration::Save (mlp, the LAMMPS interface, or the
# MLIP-3 self-tests): reading and writing again must reproduce them byte for byte.
MLIP3_WRITTEN = [
    "mlip/cfg/kmtp/selected.cfg",
    "mlip/cfg/mlip3_examples/calculate_grade_input_train.cfg",
    "mlip/cfg/mlip3_examples/calculated.cfg.0",
    "mlip/cfg/mlip3_examples/graded.cfg.0",
    "mlip/cfg/mlip3_examples/relax_preselected.cfg.0",
    "mlip/cfg/mlip3_examples/spherical.cfg",
    "mlip/cfg/mlip3_selftest/4relax.cfg",
    "mlip/cfg/mlip3_selftest/NaCl_small.cfgs",
    "mlip/cfg/mlip3_selftest/TS61-1.cfgs",
    "mlip/cfg/mlip3_selftest/TS9lotf_check.cfgs_0",
    "mlip/cfg/mlip3_selftest/cfg_no_stresses.cfg",
    "mlip/cfg/motep/mag.cfg",
    "mlip3/generated/OUTCAR_usual.converted.cfg",
    "mlip3/generated/diff_cfg.cfg",
    "mlip3/generated/diff_nbh2.cfg",
    "mlip3/generated/from_lammps_triclinic_dump.cfg",
    "mlip3/generated/graded_cfg.cfg",
    "mlip3/generated/graded_nbh.cfg",
    "mlip3/generated/mpi_calculate_grade_output.cfg.0",
    "mlip3/mlip3_upstream/examples/00_convert/relax.cfg",
    "mlip3/mlip3_upstream/examples/01_train/train.cfg",
    "mlip3/mlip3_upstream/examples/04_calculate_grade/graded.cfg.0",
    "mlip3/mlip3_upstream/examples/04_calculate_grade/train.cfg",
    "mlip3/mlip3_upstream/examples/05_cut_nbh/spherical.cfg",
    "mlip3/mlip3_upstream/examples/06_select_add/preselected.cfg",
    "mlip3/mlip3_upstream/examples/06_select_add/selected.cfg",
    "mlip3/mlip3_upstream/examples/08_relax_preselect/preselected.cfg.0",
    "mlip3/mlip3_upstream/vasp/cfg_no_stresses",
    "mlip3/mlip3_upstream/vasp/cfg_usual",
    "mlip3/smallcell/diff.cfg",
    "mlip3/smallcell/preselected.cfg",
    "vasp/relax_md/vasp541_relax3_32at_mlip3/relax.cfg",
    "vasp/single_point/vasp541_128at_mlip3/cfg_usual.cfg",
]
# Written by MLIP-3 but stored without the final blank line of Save()'s "END_CFG\n\n".
MLIP3_WRITTEN_LAST_BLANK_STRIPPED = [
    "mlip/cfg/mlip3_selftest/al_fe_mag.cfg",
    "mlip3/smallcell/partial.cfg",
]
# Written by other tools (Small-Cell's QE writer: unpadded full-precision numbers
# and "Feature EFS_by Qe"; motep: "Size" padded by 5; a hand-edited example with
# spaces after the feature key): values must survive, bytes need not.
OTHER_WRITERS = [
    "mlip/cfg/motep/molecule_762_training.cfg",
    "mlip3/generated/cand58.cfg",
    "mlip3/generated/train30.cfg",
    "mlip3/mlip3_upstream/examples/06_select_add/train.cfg",
    "mlip3/smallcell/CFG08_2-54_.cfg",
    "mlip3/smallcell/NBH08_2-8_.cfg",
    "mlip3/smallcell/mtpTest.cfg",
]
# Files MLIP-3 itself refuses to load: (path, line, message part).
REJECTED = [
    # no "Size" before "AtomData:" -> Load(): "Reading AtomData without Size given
    # is not implemented."
    ("mlip/cfg/mlip3_selftest/cfg_nosize_test.cfgs", 6, "without Size given"),
    # header "cartes_x cartes_y cartes_y" -> Load(): "Wrong atom position information"
    ("mlip/cfg/mlip3_selftest/errorneous_4.cfg", 8, "Wrong atom position information"),
]
READABLE = MLIP3_WRITTEN + MLIP3_WRITTEN_LAST_BLANK_STRIPPED + OTHER_WRITERS


def _cfg_like_files(root: Path) -> set[str]:
    """Every cfg-like fixture file (what the lists above must classify)."""
    found: set[str] = set()
    for p in root.rglob("*"):
        name = p.name
        if not p.is_file() or name.endswith((".almtp", ".log", ".txt", ".md", ".json")):
            continue
        if "relaxation.log" in name:
            continue
        if ".cfg" in name or name.startswith("cfg_"):
            found.add(p.relative_to(root).as_posix())
    return found


def test_every_cfg_fixture_is_classified(fixtures: Path) -> None:
    listed = set(READABLE) | {r[0] for r in REJECTED}
    assert _cfg_like_files(fixtures) == listed


# ----------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("rel", MLIP3_WRITTEN)
def test_mlip3_written_files_round_trip_byte_for_byte(fixtures: Path, rel: str) -> None:
    path = fixtures / rel
    raw = path.read_text()
    cfgs = read_cfgs(path)
    assert cfgs
    assert "".join(format_cfg(c) for c in cfgs) == raw


@pytest.mark.parametrize("rel", MLIP3_WRITTEN_LAST_BLANK_STRIPPED)
def test_mlip3_written_files_missing_final_blank_line(fixtures: Path, rel: str) -> None:
    raw = (fixtures / rel).read_text()
    assert raw.endswith("END_CFG\n") and not raw.endswith("END_CFG\n\n")
    assert "".join(format_cfg(c) for c in read_cfgs(fixtures / rel)) == raw + "\n"


def _assert_same_values(a: Cfg, b: Cfg) -> None:
    """Equal within the writer's precision (half a unit of its last digit)."""
    assert a.natoms == b.natoms
    assert np.array_equal(a.types, b.types)
    np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=5.1e-7)
    if a.cell is None:
        assert b.cell is None
    else:
        np.testing.assert_allclose(b.cell, a.cell, rtol=0, atol=5.1e-7)
    if a.forces is None:
        assert b.forces is None
    else:
        np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=5.1e-7)
    if a.energy is None:
        assert b.energy is None
    else:
        assert b.energy == pytest.approx(a.energy, abs=5.1e-13 * max(1.0, abs(a.energy)))
    if a.plus_stress is None:
        assert b.plus_stress is None
    else:
        np.testing.assert_allclose(b.plus_stress, a.plus_stress, rtol=0, atol=5.1e-6)
    assert sorted(a.atom_data) == sorted(b.atom_data)
    assert sorted(a.features) == sorted(b.features)


@pytest.mark.parametrize("rel", OTHER_WRITERS)
def test_other_writers_keep_values(fixtures: Path, rel: str, tmp_path: Path) -> None:
    path = fixtures / rel
    first = read_cfgs(path)
    out = tmp_path / "out.cfg"
    assert write_cfgs(out, first) == len(first)
    assert out.read_text() != path.read_text()  # really another layout
    second = read_cfgs(out)
    assert len(second) == len(first)
    for a, b in zip(first, second, strict=True):
        _assert_same_values(a, b)


@pytest.mark.parametrize("rel", READABLE)
def test_write_read_write_is_stable(fixtures: Path, rel: str, tmp_path: Path) -> None:
    once = "".join(format_cfg(c) for c in read_cfgs(fixtures / rel))
    (tmp_path / "once.cfg").write_text(once)
    twice = "".join(format_cfg(c) for c in read_cfgs(tmp_path / "once.cfg"))
    assert twice == once


@pytest.fixture(scope="module")
def scan() -> dict:
    from conftest import _fixtures_root

    path = _fixtures_root() / "expected" / "mlip_cfg_scan.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


def _scan_keys() -> list[str]:
    from conftest import _fixtures_root

    path = _fixtures_root() / "expected" / "mlip_cfg_scan.json"
    return sorted(json.loads(path.read_text())) if path.is_file() else []


@pytest.mark.parametrize("rel", _scan_keys())
def test_values_match_the_text_scan(fixtures: Path, scan: dict, rel: str) -> None:
    exp = scan[rel]
    rejected = {r[0]: r for r in REJECTED}
    if rel in rejected:
        with pytest.raises(FormatError):
            read_cfgs(fixtures / rel)
        return
    cfgs = read_cfgs(fixtures / rel)
    assert len(cfgs) == exp["n_cfg"]
    assert [c.natoms for c in cfgs[:5]] == exp["sizes_first5"]
    c0 = cfgs[0]
    assert c0.columns == exp["atomdata_header_cfg0"]
    assert (c0.cell is not None) == exp["has_cell_cfg0"]
    assert c0.natoms == exp["n_atoms_rows_cfg0"]
    for got, want in ((c0.energy, exp["energy_cfg0"]), (cfgs[-1].energy, exp["energy_last"])):
        assert got == (None if want is None else float(want))
    if exp["stress_cfg0"] is None:
        assert c0.plus_stress is None
    else:
        assert c0.plus_stress.tolist() == [float(s) for s in exp["stress_cfg0"]]
    # atom 1 of cfg 0, column by column as in the header
    row = exp["atom0_cfg0"]
    values = {"id": 1, "type": c0.types[0]}
    values.update(zip(("cartes_x", "cartes_y", "cartes_z"), c0.positions[0], strict=True))
    if c0.forces is not None:
        values.update(zip(("fx", "fy", "fz"), c0.forces[0], strict=True))
    values.update({k: v[0] for k, v in c0.atom_data.items()})
    assert [values[c] for c in c0.columns] == [float(t) for t in row]
    raw = exp["features_cfg0_raw"]
    assert [f" Feature   {k}\t{v}" for k, v in c0.features] == (raw or [])
    grades = [c.mv_grade for c in cfgs]
    assert sum(g is not None for g in grades) == exp["n_with_MV_grade"]
    want = [None if g is None else float(g) for g in exp["MV_grade_first3"]]
    assert grades[:3] == want


@pytest.mark.parametrize(("rel", "line", "part"), REJECTED)
def test_files_mlip3_rejects_give_a_clear_error(
    fixtures: Path, rel: str, line: int, part: str
) -> None:
    with pytest.raises(FormatError) as ei:
        read_cfgs(fixtures / rel)
    assert ei.value.line == line
    assert part in str(ei.value)
    assert f"{fixtures / rel}:{line}:" in str(ei.value)


def test_fixture_variants_are_understood(fixtures: Path) -> None:
    # MPI-split LAMMPS output: no Supercell, ghost + nbh_grades columns
    split = read_cfgs(fixtures / "mlip3/mlip3_upstream/examples/06_select_add/preselected.cfg")
    g = split[0].atom_data["ghost"]
    assert split[0].cell is None and g.dtype == bool and g.any() and not g.all()
    assert split[0].atom_data["nbh_grades"][4] == 180123.91855
    # charge / magmom columns
    nacl = read_cfgs(fixtures / "mlip/cfg/mlip3_selftest/NaCl_small.cfgs")[0]
    assert nacl.atom_data["charge"][:2].tolist() == [0.8692, 0.8643]
    mag = read_cfgs(fixtures / "mlip/cfg/mlip3_selftest/al_fe_mag.cfg")[0]
    assert mag.atom_data["magmom_x"][0] == 1.925980 and mag.feature("COLLINEAR") == "YES"
    # Small-Cell writer: one space between key and value
    sc = read_cfgs(fixtures / "mlip3/smallcell/mtpTest.cfg")[0]
    assert sc.feature("EFS_by") == "Qe" and sc.positions[0, 0] == 5.021929574589283
    # MLIP-3 keeps everything after the ONE separator char (hand-edited file)
    assert (
        read_cfgs(fixtures / "mlip3/mlip3_upstream/examples/06_select_add/train.cfg")[0].feature(
            "EFS_by"
        )
        == "      VASP"
    )
    # Feature ind after MV_grade (LAMMPS preselected.cfg), grade found regardless
    pre = read_cfgs(fixtures / "mlip3/smallcell/preselected.cfg")[0]
    assert pre.mv_grade == 18.255111 and pre.feature("ind") == "1" and pre.energy is None


def test_read_preselected_on_fixtures(fixtures: Path) -> None:
    serial = read_preselected(fixtures / "mlip3/smallcell/preselected.cfg")
    assert [c.mv_grade for c in serial] == [18.255111]
    # MPI build: only preselected.cfg.0 exists
    ranks = read_preselected(
        fixtures / "mlip3/mlip3_upstream/examples/08_relax_preselect/preselected.cfg"
    )
    assert len(ranks) == 25 and all(c.mv_grade is not None for c in ranks)


# ----------------------------------------------------------------------------- variants

GOOD = """BEGIN_CFG
 Size
    2
 Supercell
         4.000000      0.000000      0.000000
         0.000000      4.000000      0.000000
         0.000000      0.000000      4.000000
 AtomData:  id type       cartes_x      cartes_y      cartes_z           fx          fy          fz
             1    0       0.000000      0.000000      0.000000     0.100000   -0.200000    0.300000
             2    1       2.000000      2.000000      2.000000    -0.100000    0.200000   -0.300000
 Energy
         -7.123456789012
 PlusStress:  xx          yy          zz          yz          xz          xy
         0.10000     0.20000     0.30000     0.04000     0.05000     0.06000
 Feature   EFS_by\tVASP
 Feature   MV_grade\t3.500000
END_CFG

"""


def _read_text(tmp_path: Path, text: str, newline: str = "\n") -> list[Cfg]:
    p = tmp_path / "in.cfg"
    p.write_bytes(text.replace("\n", newline).encode())
    return read_cfgs(p)


def test_good_example_values_and_exact_round_trip(tmp_path: Path) -> None:
    (c,) = _read_text(tmp_path, GOOD)
    assert c.natoms == 2 and c.types.tolist() == [0, 1]
    assert c.positions[1].tolist() == [2.0, 2.0, 2.0]
    assert c.forces[0].tolist() == [0.1, -0.2, 0.3]
    assert c.energy == -7.123456789012
    assert c.plus_stress.tolist() == [0.1, 0.2, 0.3, 0.04, 0.05, 0.06]
    assert c.mv_grade == 3.5 and c.feature("EFS_by") == "VASP" and c.feature("nope") is None
    assert format_cfg(c) == GOOD


def test_crlf_line_endings(tmp_path: Path) -> None:
    (c,) = _read_text(tmp_path, GOOD, newline="\r\n")
    assert c.feature("EFS_by") == "VASP"  # no stray \r in values
    assert format_cfg(c) == GOOD


def test_blocks_in_any_order_and_loose_whitespace(tmp_path: Path) -> None:
    text = (
        "\n\n  BEGIN_CFG\n Feature EFS_by VASP\n Energy -1.5\nSize 1\n\n"
        " AtomData: type id cartes_z cartes_y cartes_x\n\n  0 1 3.0 2.0 1.0\n"
        " SuperCell\n 5 0 0\n 0 5 0\n 0 0 5\nEND_CFG\nBEGIN_CFG\n Size\n 1\n"
        " AtomData: id cartes_x cartes_y cartes_z\n 1 0 0 0\nEND_CFG"  # no final newline
    )
    a, b = _read_text(tmp_path, text)
    assert a.positions.tolist() == [[1.0, 2.0, 3.0]] and a.energy == -1.5
    assert a.cell.tolist() == (5 * np.eye(3)).tolist() and a.feature("EFS_by") == "VASP"
    assert a.columns == ["type", "id", "cartes_z", "cartes_y", "cartes_x"]
    assert b.types.tolist() == [0] and b.cell is None  # type absent -> 0, no cell
    # the remembered column order is reused
    assert " AtomData: type  id      cartes_z      cartes_y       cartes_x\n" in format_cfg(a)


def test_legacy_aliases(tmp_path: Path) -> None:
    # "Atomic_data:" = "AtomData:"; legacy "Features:" line of keys + line of values
    text = (
        "BEGIN_CFG\n Size 1\n Atomic_data: id cartes_x cartes_y cartes_z\n 1 0.5 0 0\n"
        " Features: EFS_by MV_grade\n VASP 2.5\nEND_CFG\n"
    )
    (c,) = _read_text(tmp_path, text)
    assert c.positions[0, 0] == 0.5
    assert c.features == [("EFS_by", "VASP"), ("MV_grade", "2.5")] and c.mv_grade == 2.5


def test_nonperiodic_and_partial_supercell(tmp_path: Path) -> None:
    text = GOOD.replace("         0.000000      0.000000      4.000000\n", "")
    (c,) = _read_text(tmp_path, text)
    assert c.cell.shape == (2, 3)
    assert format_cfg(c) == text
    lines = GOOD.splitlines(keepends=True)
    nocell = "".join(lines[:3] + lines[7:])
    (m,) = _read_text(tmp_path, nocell)
    assert m.cell is None and format_cfg(m) == nocell


def test_direct_coordinates(tmp_path: Path) -> None:
    text = """BEGIN_CFG
 Size
    2
 Supercell
         4.000000      0.000000      0.000000
         1.000000      4.000000      0.000000
         0.000000      0.000000      5.000000
 AtomData:  id type       direct_x      direct_y      direct_z
             1    0       0.000000      0.000000      0.000000
             2    0       0.500000      0.250000      0.100000
END_CFG

"""
    (c,) = _read_text(tmp_path, text)
    assert c.direct
    np.testing.assert_allclose(c.positions[1], [0.5 * 4 + 0.25 * 1, 0.25 * 4, 0.5], atol=1e-12)
    assert format_cfg(c) == text
    c.direct = False
    assert "cartes_x" in format_cfg(c) and "    2.250000" in format_cfg(c)


def test_legacy_virial_is_divided_by_volume(tmp_path: Path) -> None:
    text = GOOD.replace("PlusStress:", "Virial:")
    (c,) = _read_text(tmp_path, text)
    np.testing.assert_allclose(c.plus_stress, np.array([0.1, 0.2, 0.3, 0.04, 0.05, 0.06]) / 64)


def test_multiline_and_escaped_features(tmp_path: Path) -> None:
    text = GOOD.replace(
        " Feature   MV_grade\t3.500000\n",
        " Feature   MV_grade\t3.500000\n Feature   note\tline one\n Feature   a\\_b\t x\n"
        " Feature   note\tline two\n",
    )
    (c,) = _read_text(tmp_path, text)
    assert c.feature("note") == "line one"
    assert [v for k, v in c.features if k == "note"] == ["line one", "line two"]
    assert c.feature("a b") == " x"
    out = format_cfg(c)
    # std::map order: "EFS_by" < "MV_grade" < "a b" < "note"; lines of a key in order
    assert out.endswith(
        " Feature   EFS_by\tVASP\n Feature   MV_grade\t3.500000\n Feature   a\\_b\t x\n"
        " Feature   note\tline one\n Feature   note\tline two\nEND_CFG\n\n"
    )
    c.set_feature("note", "only")
    c.set_feature("ind", "7")
    assert [k for k, _ in c.features] == ["EFS_by", "MV_grade", "note", "a b", "ind"]
    assert c.feature("note") == "only"
    c.set_feature("MV_grade", "9.25")
    assert c.mv_grade == 9.25 and [k for k, _ in c.features][1] == "MV_grade"


def test_empty_configuration(tmp_path: Path) -> None:
    text = "BEGIN_CFG\n Size\n    0\nEND_CFG\n\n"
    (c,) = _read_text(tmp_path, text)
    assert c.natoms == 0 and c.positions.shape == (0, 3)
    assert format_cfg(c) == text


# ----------------------------------------------------------------------------- malformed


def _rows(*rows: str) -> str:
    return "".join(f"             {r}\n" for r in rows)


HEAD = (
    "BEGIN_CFG\n Size\n    2\n AtomData:  id type       cartes_x      cartes_y      cartes_z"
    "           fx          fy          fz\n"
)  # atom rows start on line 5
ROW1 = "1    0       0.000000      0.000000      0.000000     0.100000   -0.200000    0.300000"
ROW2 = "2    0       2.000000      2.000000      2.000000    -0.100000    0.200000   -0.300000"
TAIL = " Energy\n        -1.000000000000\nEND_CFG\n"

MALFORMED = [
    # (id, text, line, message part)
    ("fewer rows than Size", HEAD + _rows(ROW1) + TAIL, 6, "fewer atom rows than Size"),
    (
        "more rows than Size",
        HEAD + _rows(ROW1, ROW2, ROW2.replace("2", "3", 1)) + TAIL,
        7,
        "more AtomData rows than Size",
    ),
    (
        "missing END_CFG at EOF",
        HEAD + _rows(ROW1, ROW2) + " Energy\n -1.0\n",
        8,
        "expected END_CFG",
    ),
    (
        "unknown column",
        HEAD.replace(" fz\n", " fz xyz\n") + _rows(ROW1 + " 1", ROW2 + " 1") + TAIL,
        4,
        "Unknown AtomData field 'xyz'; known fields: id, type, cartes_x",
    ),
    (
        "non-numeric value",
        HEAD + _rows(ROW1, ROW2.replace("2.000000", "abc", 1)) + TAIL,
        6,
        "expected a finite number for 'cartes_x', got 'abc'",
    ),
    ("NaN force", HEAD + _rows(ROW1.replace("0.300000", "nan"), ROW2) + TAIL, 5, "got 'nan'"),
    ("inf energy", HEAD + _rows(ROW1, ROW2) + " Energy\n inf\nEND_CFG\n", 8, "got 'inf'"),
    (
        "ids not 1..N",
        HEAD + _rows(ROW1, ROW2.replace("2", "3", 1)) + TAIL,
        6,
        "expected id 2, got 3",
    ),
    (
        "Energy without value",
        HEAD + _rows(ROW1, ROW2) + " Energy\nEND_CFG\n",
        8,
        "after 'Energy', got 'END_CFG'",
    ),
    (
        "legacy Stress",
        HEAD + _rows(ROW1, ROW2) + " Stress: xx yy zz yz xz xy\n 1 1 1 0 0 0\nEND_CFG\n",
        7,
        "legacy 'Stress:'",
    ),
    (
        "AtomData without Size",
        HEAD.replace(" Size\n    2\n", "") + _rows(ROW1, ROW2) + TAIL,
        2,
        "without Size given",
    ),
    ("negative Size", HEAD.replace("    2\n", "   -2\n") + TAIL, 3, "non-negative integer"),
    ("Size without AtomData", "BEGIN_CFG\n Size\n 2\nEND_CFG\n", 4, "no AtomData block"),
    (
        "Size mismatch",
        HEAD + _rows(ROW1, ROW2) + " Size\n 3\n" + TAIL,
        7,
        "does not match the earlier Size 2",
    ),
    ("unknown field", HEAD + _rows(ROW1, ROW2) + " Foo\n" + TAIL, 7, "Unknown field 'Foo'"),
    ("nested BEGIN_CFG", HEAD + _rows(ROW1, ROW2) + "BEGIN_CFG\n", 7, "expected END_CFG first"),
    ("junk between configs", HEAD + _rows(ROW1, ROW2) + TAIL + "hello\n", 10, "expected BEGIN_CFG"),
    (
        "partial force triple",
        HEAD.replace("          fz\n", "\n") + _rows(ROW1[:-12], ROW2[:-12]) + TAIL,
        4,
        "all or none of fx fy fz",
    ),
    (
        "duplicate column",
        HEAD.replace(" fz\n", " fz fx\n") + _rows(ROW1 + " 1", ROW2 + " 1") + TAIL,
        4,
        "'fx' appears twice",
    ),
    (
        "no positions",
        "BEGIN_CFG\n Size 1\n AtomData: id type\n 1 0\nEND_CFG\n",
        3,
        "no position columns",
    ),
    ("negative type", HEAD + _rows(ROW1, ROW2.replace("    0", "   -1", 1)) + TAIL, 6, "type >= 0"),
    (
        "fractional type",
        HEAD + _rows(ROW1, ROW2.replace("    0", "  0.5", 1)) + TAIL,
        6,
        "integer type",
    ),
    (
        "bad ghost flag",
        "BEGIN_CFG\n Size 1\n AtomData: id cartes_x cartes_y cartes_z ghost\n"
        " 1 0 0 0 maybe\nEND_CFG\n",
        4,
        "'true' or 'false'",
    ),
    (
        "bad stress component",
        HEAD + _rows(ROW1, ROW2) + " PlusStress: xx yy ab\n 1 2 3\nEND_CFG\n",
        7,
        "component 'ab'",
    ),
    (
        "too few stress values",
        HEAD + _rows(ROW1, ROW2) + " PlusStress: xx yy zz yz xz xy\n 1 2 3\nEND_CFG\n",
        8,
        "expected 6 finite PlusStress: values",
    ),
    (
        "NaN in Supercell",
        "BEGIN_CFG\n Size 0\n Supercell\n 1 0 0\n nan 1 0\nEND_CFG\n",
        5,
        "Supercell row of 3 finite numbers",
    ),
    (
        "short Supercell row",
        "BEGIN_CFG\n Size 0\n Supercell\n 1 0 0\n 0 1\nEND_CFG\n",
        5,
        "Supercell row of 3 finite numbers",
    ),
    (
        "direct without cell",
        "BEGIN_CFG\n Size 1\n AtomData: id direct_x direct_y direct_z\n 1 0 0 0\nEND_CFG\n",
        3,
        "periodic 3-row Supercell",
    ),
    (
        "virial without cell",
        HEAD + _rows(ROW1, ROW2) + " Virial: xx yy zz yz xz xy\n 1 2 3 0 0 0\nEND_CFG\n",
        7,
        "divided by the cell volume",
    ),
    ("old MLIP-1 format", "BEGIN\n Size 1\nEND\n", 1, "old MLIP-1"),
]


@pytest.mark.parametrize(
    ("text", "line", "part"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_names_file_and_line(
    tmp_path: Path, text: str, line: int, part: str
) -> None:
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(FormatError) as ei:
        read_cfgs(path)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.line == line, str(err)
    assert str(err).startswith(f"{path}:{line}: ")
    assert part in str(err)


def test_malformed_cases_differ_from_a_good_file(tmp_path: Path) -> None:
    # the malformed cases are built from these pieces, which are valid together
    (tmp_path / "ok.cfg").write_text(HEAD + _rows(ROW1, ROW2) + TAIL)
    (c,) = read_cfgs(tmp_path / "ok.cfg")
    assert c.natoms == 2 and c.energy == -1.0


# ----------------------------------------------------------------------------- writer


def test_writer_layout_for_every_column_kind() -> None:
    c = Cfg(
        cell=np.diag([10.0, 11.0, 12.0]),
        types=[0, 2],
        positions=[[1.0, 2.0, 3.0], [-0.5, 0.25, 9.125]],
        forces=[[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]],
        energy=-12.5,
        plus_stress=[1, 2, 3, 4, 5, 6],
        atom_data={
            "nbh_grades": np.array([1.5, 200000.25]),
            "ghost": np.array([False, True]),
            "en_der_mz": np.array([0.0, 3.0]),
            "en_der_my": np.array([0.0, 2.0]),
            "en_der_mx": np.array([0.0, 1.0]),
            "magmom_z": np.array([0.5, 0.0]),
            "magmom_y": np.array([0.0, 0.0]),
            "magmom_x": np.array([0.0, -2.0]),
            "charge": np.array([0.8692, -0.8712]),
            "site_en": np.array([-3.25, -4.5]),
        },
        features=[("ind", "1"), ("MV_grade", "2.5"), ("EFS_by", "VASP")],
    )
    expected = (
        "BEGIN_CFG\n Size\n    2\n Supercell\n"
        "        10.000000      0.000000      0.000000\n"
        "         0.000000     11.000000      0.000000\n"
        "         0.000000      0.000000     12.000000\n"
        " AtomData:  id type       cartes_x      cartes_y      cartes_z            site_en"
        "           fx          fy          fz      charge      magmom_x     magmom_y     magmom_z"
        "      en_der_mx     en_der_my     en_der_mz     ghost       nbh_grades\n"
        "             1    0       1.000000      2.000000      3.000000    -3.250000000000"
        "     0.100000    0.200000    0.300000      0.8692      0.000000     0.000000     0.500000"
        "        0.00000       0.00000       0.00000     false          1.50000\n"
        "             2    2      -0.500000      0.250000      9.125000    -4.500000000000"
        "    -0.100000   -0.200000   -0.300000     -0.8712     -2.000000     0.000000     0.000000"
        "        1.00000       2.00000       3.00000     true      200000.25000\n"
        " Energy\n        -12.500000000000\n"
        " PlusStress:  xx          yy          zz          yz          xz          xy\n"
        "         1.00000     2.00000     3.00000     4.00000     5.00000     6.00000\n"
        " Feature   EFS_by\tVASP\n Feature   MV_grade\t2.5\n Feature   ind\t1\n"
        "END_CFG\n\n"
    )
    assert format_cfg(c) == expected


def test_writer_refuses_what_cannot_be_read_back() -> None:
    base = {"cell": np.eye(3), "types": [0], "positions": [[0.0, 0.0, 0.0]]}
    with pytest.raises(ValueError, match="non-finite energy"):
        format_cfg(Cfg(**base, energy=float("nan")))
    with pytest.raises(ValueError, match="non-finite forces"):
        format_cfg(Cfg(**base, forces=[[np.inf, 0, 0]]))
    with pytest.raises(ValueError, match="cannot be written"):
        format_cfg(Cfg(**base, atom_data={"spin": np.zeros(1)}))


def test_write_cfgs_append_and_textio(tmp_path: Path) -> None:
    import io

    (c,) = _read_text(tmp_path, GOOD)
    out = tmp_path / "o.cfg"
    assert write_cfgs(out, [c]) == 1
    assert write_cfgs(out, (x for x in [c, c]), append=True) == 2
    assert out.read_text() == GOOD * 3
    assert write_cfgs(out, [c]) == 1 and out.read_text() == GOOD  # "w" truncates
    buf = io.StringIO()
    assert write_cfgs(buf, [c, c]) == 2 and buf.getvalue() == GOOD * 2


# ----------------------------------------------------------------------------- streaming


def test_iter_cfgs_streams_ten_thousand_configs(tmp_path: Path) -> None:
    block = (
        "BEGIN_CFG\n Size\n    1\n AtomData:  id type       cartes_x      cartes_y      cartes_z\n"
        "             1    0       {x:.6f}      0.000000      0.000000\nEND_CFG\n\n"
    )
    path = tmp_path / "many.cfg"
    path.write_text("".join(block.format(x=i * 0.001) for i in range(10_000)))
    it = iter_cfgs(path)
    assert inspect.isgenerator(it)
    count, last = 0, None
    for cfg in it:
        count, last = count + 1, cfg
    assert count == 10_000 and last.positions[0, 0] == pytest.approx(9.999)


def test_write_cfgs_consumes_a_generator(tmp_path: Path) -> None:
    def gen():
        for i in range(3):
            yield Cfg(cell=None, types=[0], positions=[[i, 0.0, 0.0]])

    assert write_cfgs(tmp_path / "g.cfg", gen()) == 3
    assert [c.positions[0, 0] for c in read_cfgs(tmp_path / "g.cfg")] == [0.0, 1.0, 2.0]


def test_iter_cfgs_yields_before_reading_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "half.cfg"
    path.write_text(GOOD + "BEGIN_CFG\n Size\n  x\n")
    it = iter_cfgs(path)
    first = next(it)  # the broken second config has not been parsed yet
    assert first.energy == -7.123456789012
    with pytest.raises(FormatError, match=":21: expected a non-negative integer"):
        next(it)


def test_read_preselected_rank_order(tmp_path: Path) -> None:
    def cfg(grade: float) -> Cfg:
        c = Cfg(cell=np.eye(3) * 5, types=[0], positions=[[0.0, 0.0, 0.0]])
        c.set_feature("MV_grade", f"{grade:f}")
        return c

    prefix = tmp_path / "preselected.cfg"
    assert read_preselected(prefix) == []
    for rank in (10, 2, 0, 1):
        write_cfgs(f"{prefix}.{rank}", [cfg(rank + 100.0)])
    write_cfgs(f"{prefix}.bak", [cfg(-1.0)])
    write_cfgs(tmp_path / "preselected.cfgx.3", [cfg(-2.0)])
    assert [c.mv_grade for c in read_preselected(prefix)] == [100.0, 101.0, 102.0, 110.0]
    write_cfgs(prefix, [cfg(7.0), cfg(8.0)])
    assert [c.mv_grade for c in read_preselected(str(prefix))][:3] == [7.0, 8.0, 100.0]


# ----------------------------------------------------------------------------- ASE


@pytest.fixture()
def cu_emt():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.55, cubic=True).repeat((2, 1, 1))  # compressed
    cell = atoms.cell[:]
    cell[1, 0] = 0.3  # a little shear so that the off-diagonal stress is non-zero
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    return atoms


def test_atoms_to_cfg_stress_sign_convention(cu_emt) -> None:
    from ase.calculators.emt import EMT

    atoms = cu_emt
    cfg = atoms_to_cfg(atoms, ["Cu"])
    volume = atoms.get_volume()
    np.testing.assert_allclose(cfg.plus_stress, -atoms.get_stress() * volume, rtol=1e-12)
    assert (cfg.plus_stress[:3] > 0).all()  # compressed cell: MLIP-3 virial positive
    # independent check: PlusStress_k = -dE/d(strain_k), Voigt strain (xx and the xy shear)
    h = 1e-5
    for k, (i, j) in ((0, (0, 0)), (5, (0, 1))):
        e = []
        for d in (h, -h):
            eps = np.zeros((3, 3))
            eps[i, j] += d / 2
            eps[j, i] += d / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
            strained.calc = EMT()
            e.append(strained.get_potential_energy())
        assert cfg.plus_stress[k] == pytest.approx(-(e[0] - e[1]) / (2 * h), rel=1e-4, abs=1e-6)
    assert cfg.energy == atoms.get_potential_energy()
    np.testing.assert_array_equal(cfg.forces, atoms.get_forces())
    assert cfg.types.tolist() == [0] * len(atoms)


def test_cfg_atoms_round_trip_through_file(cu_emt, tmp_path: Path) -> None:
    atoms = cu_emt
    species = ["Ag", "Cu"]
    cfg = atoms_to_cfg(atoms, species)
    assert set(cfg.types.tolist()) == {1}
    cfg.set_feature("MV_grade", "4.25")
    write_cfgs(tmp_path / "cu.cfg", [cfg])
    (back,) = read_cfgs(tmp_path / "cu.cfg")
    new = cfg_to_atoms(back, species)
    assert new.get_chemical_symbols() == atoms.get_chemical_symbols()
    assert new.pbc.all()
    np.testing.assert_allclose(new.positions, atoms.positions, atol=5.1e-7)
    np.testing.assert_allclose(new.get_forces(), atoms.get_forces(), atol=5.1e-7)
    np.testing.assert_allclose(
        new.get_stress(), atoms.get_stress(), atol=5.1e-6 / atoms.get_volume() + 1e-9
    )
    assert new.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    assert new.info["MV_grade"] == 4.25
    assert ("MV_grade", "4.25") in new.info["features"]
    again = atoms_to_cfg(new, species)
    assert format_cfg(again) == format_cfg(back)


def test_explicit_labels_and_errors(cu_emt) -> None:
    atoms = cu_emt.copy()  # no calculator
    cfg = atoms_to_cfg(atoms, ["Cu"])
    assert cfg.energy is None and cfg.forces is None and cfg.plus_stress is None
    s = np.array([1.0, 2.0, 3.0, 0.4, 0.5, 0.6])
    full = np.array([[1.0, 0.6, 0.5], [0.6, 2.0, 0.4], [0.5, 0.4, 3.0]])
    a = atoms_to_cfg(atoms, ["Cu"], energy=-1.0, stress=s)
    b = atoms_to_cfg(atoms, ["Cu"], energy=-1.0, stress=full)
    np.testing.assert_allclose(a.plus_stress, -s * atoms.get_volume())
    np.testing.assert_allclose(b.plus_stress, a.plus_stress)
    with pytest.raises(ValueError, match=r"'Cu'.*not in species"):
        atoms_to_cfg(atoms, ["Ag"])
    with pytest.raises(ValueError, match="type 3"):
        cfg_to_atoms(Cfg(cell=None, types=[3], positions=[[0, 0, 0]]), ["Cu"])


def test_nonperiodic_cfg_to_atoms(fixtures: Path) -> None:
    from ase.calculators.calculator import PropertyNotImplementedError

    mol = read_cfgs(fixtures / "mlip/cfg/motep/molecule_762_training.cfg")[0]
    atoms = cfg_to_atoms(mol, ["H"])
    assert not atoms.pbc.any()
    assert atoms.get_potential_energy() == mol.energy
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    back = atoms_to_cfg(atoms, ["H"])
    assert back.cell is None and format_cfg(back) == format_cfg(mol)
