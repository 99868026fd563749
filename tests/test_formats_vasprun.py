"""vasprun.xml reader: ASE 3.29.0 conformance on real VASP files, killed/unconverged runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from smallcell.formats.errors import FormatError
from smallcell.formats.vasprun import (
    KBAR_TO_EV_PER_A3,
    read_vasprun,
    usable_steps,
    vasprun_step_to_cfg,
    vasprun_to_cfgs,
)

VASPRUNS = [
    "vasp/relax_md/vasp630_Ti32_aimd_nwrite0/vasprun.xml",
    "vasp/single_point/vasp544_Ge8_vdw/vasprun.xml",
    "vasp/single_point/vasp630_TiO_8at/vasprun.xml",
    "vasp/single_point/vasp632_fccAl4_strained/vasprun.xml",
]
TI32 = "vasp/relax_md/vasp630_Ti32_aimd_nwrite0/vasprun.xml"


@pytest.fixture(scope="module")
def expected(fixtures: Path) -> dict:
    return json.loads((fixtures / "expected" / "vasp_ase_3.29.0.json").read_text())["results"]


def test_every_fixture_vasprun_is_covered(fixtures: Path) -> None:
    found = sorted(str(p.relative_to(fixtures)) for p in (fixtures / "vasp").rglob("vasprun*.xml"))
    assert found == sorted(VASPRUNS), "a new vasprun.xml fixture: add it to VASPRUNS"


@pytest.mark.parametrize("rel", VASPRUNS)
def test_matches_ase_3_29(fixtures: Path, expected: dict, rel: str) -> None:
    """Frames, atoms, species, energies, forces, stress, cell: ASE's values to 1e-6."""
    exp = expected[rel]
    info, steps = read_vasprun(fixtures / rel)
    assert info.status == "complete" and info.reason == ""
    assert len(steps) == exp["ase_nframes"]
    last = steps[-1]
    assert len(info.types) == exp["natoms"] == last.positions.shape[0]
    assert info.symbols[:10] == exp["symbols_first10"]
    counts: list[list] = []
    for s in info.symbols:  # run-length encoding of the symbols, as ASE's formula order
        if counts and counts[-1][0] == s:
            counts[-1][1] += 1
        else:
            counts.append([s, 1])
    merged: dict[str, int] = {}
    for s, n in counts:
        merged[s] = merged.get(s, 0) + n
    assert [[s, n] for s, n in merged.items()] == exp["symbols_count_order"]
    assert last.free_energy == pytest.approx(exp["ase_free_energy"], abs=1e-6)
    assert last.energy_sigma0 == pytest.approx(exp["ase_energy"], abs=1e-6)
    np.testing.assert_allclose(last.forces[0], exp["ase_forces_atom0"], atol=1e-6)
    np.testing.assert_allclose(last.forces[-1], exp["ase_forces_atom_last"], atol=1e-6)
    np.testing.assert_allclose(last.stress_ase, exp["ase_stress_eV_A3_voigt_xx_yy_zz_yz_xz_xy"],
                               atol=1e-9)
    np.testing.assert_allclose(last.stress_kb[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
                               -np.array(exp["ase_stress_kB"]), atol=1e-6)
    np.testing.assert_allclose(last.cell, exp["cell"], atol=1e-8)
    np.testing.assert_allclose(last.positions[0], exp["pos_atom0"], atol=1e-6)
    if "ase_free_energy_all_frames" in exp:
        np.testing.assert_allclose([s.free_energy for s in steps],
                                   exp["ase_free_energy_all_frames"], atol=1e-6)


def test_species_and_types_follow_the_potcar(fixtures: Path) -> None:
    """Ti, O, Ti POTCARs: three types, as mlp convert numbers them."""
    info, _ = read_vasprun(fixtures / "vasp/single_point/vasp630_TiO_8at/vasprun.xml")
    assert info.species == ["Ti", "O", "Ti"]
    assert info.types.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_scf_counts_and_nelm(fixtures: Path) -> None:
    """Electronic steps per ionic step = the OUTCAR's Iteration count; NELM of the SCF section."""
    info, steps = read_vasprun(fixtures / TI32)
    assert info.nelm == 100
    assert [s.n_scf for s in steps] == [17, 11, 8, 6, 6, 6, 6, 6, 6, 6]
    assert all(s.converged and not s.ml for s in steps)
    # Ge8 lists NELM = 1 in its GW section too; the electronic one is 60.
    info, steps = read_vasprun(fixtures / "vasp/single_point/vasp544_Ge8_vdw/vasprun.xml")
    assert info.nelm == 60 and steps[0].n_scf == 10
    assert info.version.startswith("5.4.4")


def test_vasp544_energy_bug_is_worked_around(fixtures: Path) -> None:
    """VASP 5.4.4 prints eentropy as e_0_energy of calculation/energy; sigma->0 must not be it."""
    _, steps = read_vasprun(fixtures / "vasp/single_point/vasp544_Ge8_vdw/vasprun.xml")
    assert steps[0].energy_sigma0 == pytest.approx(-33.36836054, abs=1e-8)
    assert steps[0].energy_wo_entropy == pytest.approx(-33.36876999, abs=1e-8)


def test_cfg_conventions(fixtures: Path) -> None:
    """PlusStress = -stress_ASE * V (eV); EFS_by VASP; species remapping by element."""
    path = fixtures / "vasp/single_point/vasp630_TiO_8at/vasprun.xml"
    info, steps = read_vasprun(path)
    cfg = vasprun_step_to_cfg(steps[0], info)
    volume = abs(np.linalg.det(steps[0].cell))
    np.testing.assert_allclose(cfg.plus_stress, -steps[0].stress_ase * volume, rtol=1e-12)
    # ASE's +199.00013635 kB is VASP's -199.00013635 kB; PlusStress has VASP's sign.
    assert cfg.plus_stress[0] == pytest.approx(-199.00013635 * volume * KBAR_TO_EV_PER_A3)
    assert cfg.energy == steps[0].free_energy
    assert cfg.features == [("EFS_by", "VASP")]
    assert cfg.types.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    remapped = vasprun_step_to_cfg(steps[0], info, species=["O", "Ti"])
    assert remapped.types.tolist() == [1, 1, 1, 0, 0, 1, 1, 1]
    sigma0 = vasprun_step_to_cfg(steps[0], info, energy="sigma0")
    assert sigma0.energy == steps[0].energy_sigma0
    with pytest.raises(FormatError, match="not in species"):
        vasprun_step_to_cfg(steps[0], info, species=["Ti"])
    with pytest.raises(ValueError, match="free"):
        vasprun_to_cfgs(path, energy="toten")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bad runs


def _truncate(src: Path, dst: Path, marker: str, occurrence: int) -> Path:
    """Copy of ``src`` cut just after the ``occurrence``-th (1-based) ``marker``."""
    text = src.read_bytes()
    at = -1
    for _ in range(occurrence):
        at = text.index(marker.encode(), at + 1)
    dst.write_bytes(text[: at + len(marker)])
    return dst


def test_truncated_inside_a_step_is_unfinished(fixtures: Path, tmp_path: Path) -> None:
    """A killed MD: complete steps are read, the run is unfinished, the reason is one line."""
    cut = _truncate(fixtures / TI32, tmp_path / "vasprun.xml", "<scstep>", 45)
    info, steps = read_vasprun(cut)
    assert info.status == "unfinished"
    assert len(steps) == 4  # 17 + 11 + 8 + 6 = 42 < 45 scsteps: cut inside step 5
    assert "inside ionic step 5" in info.reason and "4 complete DFT steps" in info.reason
    assert "\n" not in info.reason and info.reason_line is not None
    with pytest.raises(FormatError, match=r"vasprun.xml:\d+: unfinished run: the XML ends"):
        vasprun_to_cfgs(cut)
    kept = vasprun_to_cfgs(cut, keep_converged_steps=True)
    full = vasprun_to_cfgs(fixtures / TI32)
    assert len(kept) == 4
    for a, b in zip(kept, full[:4], strict=True):
        assert a.energy == b.energy and np.array_equal(a.forces, b.forces)


@pytest.mark.parametrize(("marker", "occurrence", "n_steps", "where"), [
    ("</calculation>", 10, 10, "after ionic step 10"),  # cut in the final structure
    ("<atominfo>", 1, 0, "before the first ionic step"),  # killed during setup
    ("<calculation>", 1, 0, "inside ionic step 1"),
])
def test_truncated_elsewhere(fixtures: Path, tmp_path: Path, marker: str, occurrence: int,
                             n_steps: int, where: str) -> None:
    cut = _truncate(fixtures / TI32, tmp_path / "vasprun.xml", marker, occurrence)
    info, steps = read_vasprun(cut)
    assert (info.status, len(steps)) == ("unfinished", n_steps)
    assert where in info.reason
    if n_steps == 0:
        with pytest.raises(FormatError, match="no complete, converged DFT ionic step"):
            vasprun_to_cfgs(cut, keep_converged_steps=True)


def test_nelm_reached_is_unconverged(fixtures: Path, tmp_path: Path) -> None:
    """With NELM = 11 the first two steps (17 and 11 electronic steps) did not converge."""
    text = (fixtures / TI32).read_text(encoding="latin-1")
    text, n = re.subn(r'(<separator name="electronic convergence" >\s*<i type="int" '
                      r'name="NELM">)\s*100', r"\1    11", text)
    assert n == 1
    path = tmp_path / "vasprun.xml"
    path.write_text(text, encoding="latin-1")
    info, steps = read_vasprun(path)
    assert info.nelm == 11
    assert (info.status, info.reason) == (
        "unconverged", "ionic steps 1, 2 reached NELM=11 electronic steps")
    assert [s.converged for s in steps] == [False, False] + [True] * 8
    with pytest.raises(FormatError, match="unconverged run: ionic steps 1, 2 reached NELM=11"):
        vasprun_to_cfgs(path)
    kept = vasprun_to_cfgs(path, keep_converged_steps=True)
    assert len(kept) == 8
    assert kept[0].energy == pytest.approx(-253.1006952, abs=1e-8)
    assert vasprun_step_to_cfg(steps[0], info).features == [("EFS_by", "VASP_not_converged")]


def test_ml_force_field_steps_are_not_training_data(fixtures: Path, tmp_path: Path) -> None:
    """A <calculation> without <scstep> (VASP's ML force field) is skipped, not held against
    the run."""
    text = (fixtures / TI32).read_text(encoding="latin-1")
    calcs = text.split("<calculation>")
    calcs[2] = re.sub(r"<scstep>.*?</scstep>\s*", "", calcs[2], flags=re.S)
    path = tmp_path / "vasprun.xml"
    path.write_text("<calculation>".join(calcs), encoding="latin-1")
    info, steps = read_vasprun(path)
    assert info.status == "complete"
    assert [s.ml for s in steps] == [False, True] + [False] * 8
    assert len(usable_steps(info, steps)) == 9
    with pytest.raises(ValueError, match="ML force-field"):
        vasprun_step_to_cfg(steps[1], info)


def test_pstress_is_removed_from_the_enthalpy(fixtures: Path, tmp_path: Path) -> None:
    """calculation/energy holds H = E + PV under PSTRESS; the free energy is E (ASE does the
    same)."""
    import ase.io

    text = (fixtures / TI32).read_text(encoding="latin-1")
    text, n = re.subn(r'(<i name="PSTRESS">)\s*0\.00000000', r"\1     25.00000000", text)
    assert n >= 1
    path = tmp_path / "vasprun.xml"
    path.write_text(text, encoding="latin-1")
    info, steps = read_vasprun(path)
    assert info.pstress == 25.0
    ref = ase.io.read(path, index=":", format="vasp-xml")
    got = [s.free_energy for s in steps]
    np.testing.assert_allclose(got, [a.get_potential_energy(force_consistent=True) for a in ref],
                               atol=1e-9)
    assert got[0] == pytest.approx(-253.15557734 - 25 * KBAR_TO_EV_PER_A3 * steps[0].volume)


@pytest.mark.parametrize(("content", "match"), [
    ("", r"not a vasprun.xml"),
    ("<root><a/></root>", r":1: root element <root>, expected <modeling>"),
    ("<modeling><generator/></modeling>", r"no <atominfo>"),
    ("POSCAR\n1.0\n", r"not a vasprun.xml"),
])
def test_not_a_vasprun(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "vasprun.xml"
    path.write_text(content)
    with pytest.raises(FormatError, match=match):
        read_vasprun(path)


def test_garbled_numbers_name_the_step(fixtures: Path, tmp_path: Path) -> None:
    """VASP prints ***** for overflowing fields: a FormatError, not NaN in the training set."""
    text = (fixtures / "vasp/single_point/vasp632_fccAl4_strained/vasprun.xml").read_text(
        encoding="latin-1")
    head, tail = text.split('<varray name="forces" >', 1)
    tail = tail.replace("0.00000000", "**********", 1)
    path = tmp_path / "vasprun.xml"
    path.write_text(head + '<varray name="forces" >' + tail, encoding="latin-1")
    with pytest.raises(FormatError, match="ionic step 1 forces: not a number"):
        read_vasprun(path)
