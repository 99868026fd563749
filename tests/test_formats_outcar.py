"""VASP OUTCAR reader: every fixture OUTCAR against ASE 3.29.0 / text-scan expected values,
the classification of every run, `mlp convert` conformance, malformed and cut files."""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path

import numpy as np
import pytest

from smallcell.formats import outcar as outcar_mod
from smallcell.formats.cfg import format_cfg
from smallcell.formats.errors import FormatError
from smallcell.formats.outcar import (
    KBAR_A3_PER_EV,
    IonicStep,
    iter_outcar,
    outcar_to_cfgs,
    read_outcar,
    step_to_cfg,
)

GPA = 1 / 160.21766208  # eV/Å^3 per GPa (ase.units.GPa)
TOL = 1e-6

# Every OUTCAR of fixtures/vasp with its classification and the start of its reason.
STATUS = {
    "relax_md/vasp541_relax3_32at_mlip3": ("complete", ""),
    "relax_md/vasp544_h2o_md3": ("complete", ""),
    # NELM=2 and both steps ran 2 electronic iterations; the last energy change of step 2 is
    # -0.30 eV against EDIFF = 1e-4, so they really are unconverged although VASP 5.4.4
    # printed "aborting loop because EDIFF is reached" for both.
    "relax_md/vasp544_relax2_3at": ("unconverged",
                                    "ionic steps 1, 2 reached NELM=2 electronic steps"),
    "relax_md/vasp630_Ti32_aimd_nwrite0": ("complete", ""),
    "relax_md/vasp630_ch4_mlff_md": ("complete", ""),
    "single_point/vasp522_fccAg32H_US": ("complete", ""),
    "single_point/vasp541_128at_mlip3": ("complete", ""),
    "single_point/vasp544_Al2": ("complete", ""),
    "single_point/vasp544_Ge8_vdw": ("complete", ""),
    "single_point/vasp621_CO_gamma": ("complete", ""),
    "single_point/vasp630_TiO_8at": ("complete", ""),
    "single_point/vasp632_fccAl4_strained": ("complete", ""),
    "unconverged/vasp544_ch4_md3_NELM15": ("unconverged",
                                           "ionic steps 1, 2 reached NELM=15 electronic steps"),
    "unfinished/vasp541_relax3_no_footer_mlip3": (
        "unfinished", "no timing footer: killed or cut (after 3 complete ionic steps)"),
    "unfinished/vasp544_aborted_ZHEGV": (
        "unfinished", "VASP error: Error EDDDAV: Call to ZHEGV failed. Returncode =  14 1  15"),
    "unfinished/vasp544_crashed_before_NIONS": ("unfinished", "stopped before NIONS was printed"),
    "unfinished/vasp641_Ba2Pb2O6_killed_midSCF": (
        "unfinished", "no timing footer: killed or cut (during electronic step 2 of ionic step 1)"),
}
# Where ASE 3.29.0 cannot read the OUTCAR, the vasprun.xml of the same run says the same.
VASPRUN = {
    "relax_md/vasp630_Ti32_aimd_nwrite0": "vasprun.xml",
    "single_point/vasp544_Ge8_vdw": "vasprun.xml",
}
# SOURCES.md "Extra text facts" (the text-scan regex missed the vdW energy line).
GE_VDW_TEXT = {"energy_no_entropy": -33.36876999, "energy_sigma0": -33.36836054}
REL = "vasp/relax_md/vasp541_relax3_32at_mlip3/OUTCAR"


@pytest.fixture(scope="module")
def expected(fixtures: Path) -> tuple[dict, dict]:
    ase = json.loads((fixtures / "expected" / "vasp_ase_3.29.0.json").read_text())["results"]
    text = json.loads((fixtures / "expected" / "vasp_outcar_text_scan.json").read_text())
    return ase, text


def ase_stress(kb: np.ndarray) -> np.ndarray:
    """OUTCAR 'in kB' (XX YY ZZ XY YZ ZX) -> ASE stress (eV/Å^3, xx yy zz yz xz xy)."""
    return -np.asarray(kb)[[0, 1, 2, 4, 5, 3]] * 0.1 * GPA


def test_every_fixture_outcar_is_covered(fixtures: Path) -> None:
    found = {str(p.parent.relative_to(fixtures / "vasp")) for p in
             (fixtures / "vasp").rglob("OUTCAR")}
    assert found == set(STATUS)


@pytest.mark.parametrize("name", sorted(STATUS))
def test_matches_expected_values(fixtures: Path, expected: tuple[dict, dict], name: str) -> None:
    ase_all, text_all = expected
    key = f"vasp/{name}/OUTCAR"
    ase, text = ase_all[key], text_all[key]
    info, steps = read_outcar(fixtures / key)
    status, reason = STATUS[name]
    assert (info.status, info.reason) == (status, reason)
    assert info.has_footer == ase["has_timing_footer"]
    assert info.version_line == ase["version_line"]
    assert info.nions == text["NIONS"]
    assert info.ions_per_type == (text["ions_per_type"] or [])
    assert info.nelm == (int(text["NELM"]) if text["NELM"] else None)
    assert info.nwrite == (int(text["NWRITE"]) if text["NWRITE"] else None)
    if text["TITEL"]:  # element of every TITEL ("PAW_PBE Nb_sv 25May2007", "US H")
        assert info.species == [t.split()[1].split("_")[0] for t in text["TITEL"]]
    # One step per "free  energy   TOTEN" block; electronic steps per ionic step.
    assert len(steps) == info.n_steps == ase["n_TOTEN"]
    assert {str(s.index + 1): s.n_electronic for s in steps} == {
        k: v for k, v in text["max_scf_iterations_per_ionic_step"].items()
        if status != "unfinished" or int(k) <= len(steps)}
    with_ml = read_outcar(fixtures / key, include_ml=True)[1]
    assert sum(s.forces is not None for s in with_ml) == ase["n_TOTAL_FORCE"]
    assert sum(s.stress_kb is not None for s in with_ml) == ase["n_in_kB"]
    if not steps:
        assert ase.get("ase_nframes", 0) == 0
        return
    last = steps[-1]
    assert last.natoms == info.nions
    assert last.energy_free == pytest.approx(float(ase["last_TOTEN_text"]), abs=TOL)
    if name == "single_point/vasp544_Ge8_vdw":
        assert last.energy_no_entropy == pytest.approx(GE_VDW_TEXT["energy_no_entropy"], abs=TOL)
        assert last.energy_sigma0 == pytest.approx(GE_VDW_TEXT["energy_sigma0"], abs=TOL)
    else:
        assert last.energy_no_entropy == pytest.approx(
            float(ase["last_without_entropy_text"]), abs=TOL)
        assert last.energy_sigma0 == pytest.approx(float(ase["last_sigma0_text"]), abs=TOL)
    printed = with_ml[-1]  # the last block printed (an ML step in the ML run)
    kb = np.array([float(x) for x in text["last_in_kB_raw"].split()[2:]])
    np.testing.assert_allclose(printed.stress_kb, kb, atol=TOL)
    row0 = text["last_force_block_atom0_pos_force"][:6]
    row_n = text["last_force_block_atomN_pos_force"][:6]  # vdW rows: total force first
    np.testing.assert_allclose(printed.positions[0], row0[:3], atol=TOL)
    np.testing.assert_allclose(printed.forces[0], row0[3:], atol=TOL)
    np.testing.assert_allclose(printed.positions[-1], row_n[:3], atol=TOL)
    np.testing.assert_allclose(printed.forces[-1], row_n[3:], atol=TOL)
    # PlusStress = "in kB" * V / 1602.1766 to print precision (the 'Total' line is taken).
    volume = abs(np.linalg.det(printed.cell))
    np.testing.assert_allclose(printed.plus_stress, kb[[0, 1, 2, 4, 5, 3]] * volume /
                               KBAR_A3_PER_EV, atol=5e-5)
    ref = ase if "ase_read_error" not in ase else ase_all.get(
        f"vasp/{name}/{VASPRUN.get(name, '')}")
    if ref is None:  # ASE reads neither: the text-scan values above are the reference
        return
    xml = "ase_read_error" in ase
    tol = 1e-6 if xml else 1e-8  # vasprun.xml prints more digits than the OUTCAR
    assert len(steps) == ref["ase_nframes"] and last.natoms == ref["natoms"]
    symbols = [info.species[t] for t in last.types]
    assert symbols[:10] == ref["symbols_first10"]
    assert [[s, symbols.count(s)] for s in dict.fromkeys(symbols)] == [
        list(x) for x in ref["symbols_count_order"]]
    assert last.energy_free == pytest.approx(ref["ase_free_energy"], abs=1e-8)
    assert last.energy_sigma0 == pytest.approx(ref["ase_energy"], abs=1e-8)
    np.testing.assert_allclose(last.forces[0], ref["ase_forces_atom0"], atol=tol)
    np.testing.assert_allclose(last.forces[-1], ref["ase_forces_atom_last"], atol=tol)
    np.testing.assert_allclose(ase_stress(last.stress_kb),
                               ref["ase_stress_eV_A3_voigt_xx_yy_zz_yz_xz_xy"], atol=1e-6)
    np.testing.assert_allclose(-last.stress_kb[[0, 1, 2, 4, 5, 3]], ref["ase_stress_kB"],
                               atol=1e-4 if xml else 1e-8)
    np.testing.assert_allclose(last.cell, ref["cell"], atol=1e-8)
    # OUTCAR positions have 5 decimals: within half a unit of the vasprun.xml values.
    np.testing.assert_allclose(last.positions[0], ref["pos_atom0"], atol=5e-6 if xml else 1e-8)
    if "ase_free_energy_all_frames" in ref:
        assert [s.energy_free for s in steps] == pytest.approx(
            ref["ase_free_energy_all_frames"], abs=1e-8)


def test_matches_ase_on_every_frame(fixtures: Path) -> None:
    """Where ASE reads the OUTCAR, every frame agrees exactly (same decimal text)."""
    from ase.io import read

    for name in ("relax_md/vasp541_relax3_32at_mlip3", "unconverged/vasp544_ch4_md3_NELM15",
                 "relax_md/vasp544_h2o_md3"):
        path = fixtures / "vasp" / name / "OUTCAR"
        frames = read(path, index=":", format="vasp-out")
        info, steps = read_outcar(path)
        assert len(frames) == len(steps) > 1
        for atoms, s in zip(frames, steps, strict=True):
            assert s.energy_free == atoms.get_potential_energy(force_consistent=True)
            assert s.energy_sigma0 == atoms.get_potential_energy()
            assert np.array_equal(s.forces, atoms.get_forces())
            assert np.array_equal(s.positions, atoms.positions)
            assert np.array_equal(s.cell, atoms.cell[:])
            np.testing.assert_allclose(ase_stress(s.stress_kb), atoms.get_stress(), atol=1e-15)
            assert [info.species[t] for t in s.types] == atoms.get_chemical_symbols()


# ------------------------------------------------------------------ MLIP-3 conformance


@pytest.mark.parametrize(("outcar", "cfg"), [
    ("vasp/single_point/vasp541_128at_mlip3/OUTCAR", "mlip3/generated/OUTCAR_usual.converted.cfg"),
    (REL, "vasp/relax_md/vasp541_relax3_32at_mlip3/relax.cfg"),
])
def test_outcar_to_cfgs_writes_what_mlp_convert_writes(fixtures: Path, outcar: str,
                                                       cfg: str) -> None:
    text = "".join(format_cfg(c) for c in outcar_to_cfgs(fixtures / outcar))
    assert text == (fixtures / cfg).read_text()


def test_cfg_usual_of_mlip3_selftest(fixtures: Path) -> None:
    """cfg_usual (LoadFromOUTCAR + Save, no feature): same values, same text."""
    (cfg,) = outcar_to_cfgs(fixtures / "vasp/single_point/vasp541_128at_mlip3/OUTCAR")
    cfg.features = []
    ref = (fixtures / "vasp/single_point/vasp541_128at_mlip3/cfg_usual.cfg").read_text()
    assert format_cfg(cfg) == ref


def test_plus_stress_is_the_total_line_as_mlp_copies_it(fixtures: Path) -> None:
    """kB * V / 1602.1766 differs in the 5th decimal (-8.12446); the 'Total' line is exact."""
    _, (step,) = read_outcar(fixtures / "vasp/single_point/vasp541_128at_mlip3/OUTCAR")
    np.testing.assert_array_equal(step.plus_stress,
                                  [-8.12447, -7.98919, -7.98830, -1.00815, -1.52818, 1.82273])
    computed = step.stress_kb[[0, 1, 2, 4, 5, 3]] * abs(np.linalg.det(step.cell)) / \
        KBAR_A3_PER_EV
    assert f"{computed[0]:11.5f}" != f"{step.plus_stress[0]:11.5f}"


def test_zero_atom_species_keeps_its_type_index(fixtures: Path) -> None:
    info, steps = read_outcar(fixtures / REL)
    assert info.species == ["Pd", "Ag"] and info.ions_per_type == [0, 32]
    assert all(set(s.types.tolist()) == {1} for s in steps)


def test_repeated_species_keep_potcar_indices(fixtures: Path) -> None:
    info, (step,) = read_outcar(fixtures / "vasp/single_point/vasp630_TiO_8at/OUTCAR")
    assert info.species == ["Ti", "O", "Ti"] and info.nwrite == 0
    assert step.types.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


# ------------------------------------------------------------------ classification


def test_unfinished_run_raises_unless_converged_steps_are_wanted(fixtures: Path) -> None:
    path = fixtures / "vasp/unfinished/vasp541_relax3_no_footer_mlip3/OUTCAR"
    with pytest.raises(FormatError, match="unfinished run: no timing footer") as exc:
        outcar_to_cfgs(path)
    assert exc.value.path == str(path) and exc.value.line == 2855  # its last line of text
    kept = "".join(format_cfg(c) for c in outcar_to_cfgs(path, keep_converged_steps=True))
    # The file is the relaxation's OUTCAR without its end: the same three configurations.
    assert kept == (fixtures / "vasp/relax_md/vasp541_relax3_32at_mlip3/relax.cfg").read_text()


def test_unconverged_steps_are_reported_and_dropped(fixtures: Path) -> None:
    path = fixtures / "vasp/unconverged/vasp544_ch4_md3_NELM15/OUTCAR"
    with pytest.raises(FormatError, match=r"unconverged run: ionic steps 1, 2 reached NELM=15") \
            as exc:
        outcar_to_cfgs(path)
    assert exc.value.line == 1103  # "Iteration 1( 15)"
    info, steps = read_outcar(path)
    assert [s.converged for s in steps] == [False, False, True]
    assert step_to_cfg(steps[0], info).feature("EFS_by") == "VASP_not_converged"
    assert step_to_cfg(steps[2], info).feature("EFS_by") == "VASP"
    (cfg,) = outcar_to_cfgs(path, keep_converged_steps=True)
    assert cfg.energy == -23.94708651
    nelm2 = fixtures / "vasp/relax_md/vasp544_relax2_3at/OUTCAR"
    with pytest.raises(FormatError, match="no complete, converged DFT ionic step"):
        outcar_to_cfgs(nelm2, keep_converged_steps=True)
    assert read_outcar(nelm2)[0].notes == ["relaxation stopped at NSW=2 before reaching EDIFFG"]


def test_step_without_stress_block_takes_the_header_cell(fixtures: Path, tmp_path: Path) -> None:
    """ISIF=0 prints no stress (and no lattice after it): the cell cannot have changed."""
    data = (fixtures / "vasp/single_point/vasp544_Al2/OUTCAR").read_bytes()
    a = data.rindex(b"\n", 0, data.index(b"FORCE on cell")) + 1
    b = data.index(b"length of vectors", a)
    path = tmp_path / "OUTCAR"
    path.write_bytes(data[:a] + data[b:])
    (cfg,) = outcar_to_cfgs(path)
    (ref,) = outcar_to_cfgs(fixtures / "vasp/single_point/vasp544_Al2/OUTCAR")
    assert cfg.plus_stress is None and ref.plus_stress is not None
    np.testing.assert_array_equal(cfg.cell, ref.cell)
    np.testing.assert_array_equal(cfg.forces, ref.forces)


def test_vasp6_not_reached_text_marks_the_step(fixtures: Path, tmp_path: Path) -> None:
    """VASP 6 says it when the loop stopped at NELM; the count alone would miss it here."""
    data = (fixtures / "vasp/relax_md/vasp544_h2o_md3/OUTCAR").read_bytes()
    text = b"aborting loop because EDIFF is reached"
    at = data.index(text, data.index(text) + 1)  # ionic step 2 (12 of NELM=60 steps)
    path = tmp_path / "OUTCAR"
    path.write_bytes(data[:at] + b"aborting loop EDIFF was not reached (unconverged)"
                     + data[at + len(text):])
    info, steps = read_outcar(path)
    assert [s.converged for s in steps] == [True, False, True]
    assert (info.status, info.reason) == (
        "unconverged", "ionic step 2: electronic loop not converged (VASP says so)")


@pytest.mark.parametrize("name", [n for n, (s, _) in STATUS.items() if s == "unfinished"])
def test_crashed_and_killed_runs_give_one_clear_error(fixtures: Path, name: str) -> None:
    path = fixtures / "vasp" / name / "OUTCAR"
    info, _ = read_outcar(path)
    with pytest.raises(FormatError) as exc:
        outcar_to_cfgs(path)
    assert str(path) in str(exc.value) and info.reason in str(exc.value)
    assert "\n" not in info.reason


def test_ml_force_field_steps(fixtures: Path) -> None:
    path = fixtures / "vasp/relax_md/vasp630_ch4_mlff_md/OUTCAR"
    info, steps = read_outcar(path)
    assert [s.index for s in steps] == [0, 1, 2, 5] and not any(s.ml for s in steps)
    assert [s.energy_free for s in steps] == [-24.12709802, -24.12724275, -24.12737148,
                                              -24.12697674]
    assert info.notes == ["10 ML force-field steps skipped"] and info.n_ml_steps == 10
    every = read_outcar(path, include_ml=True)[1]
    ml = [s for s in every if s.ml]
    assert len(every) == 14 and [s.index for s in ml] == list(range(10))
    assert ml[2].energy_free == -24.12738815 and ml[2].n_electronic == 0
    assert ml[2].stress_kb.tolist() == [-0.03635, -0.00145, -0.03601, 0.01682, 0.00687, -0.00513]
    with pytest.raises(ValueError, match="ML force-field step"):
        step_to_cfg(ml[0], info)
    assert len(outcar_to_cfgs(path)) == 4


def test_nwrite0_steps_without_force_block(fixtures: Path) -> None:
    path = fixtures / "vasp/relax_md/vasp630_Ti32_aimd_nwrite0/OUTCAR"
    info, steps = read_outcar(path)
    assert [s.forces is not None for s in steps] == [True] + [False] * 8 + [True]
    assert steps[4].positions is None and steps[4].cell.shape == (3, 3)
    assert steps[4].plus_stress is not None and steps[4].energy_free == -252.96333393
    assert info.notes == ["NWRITE=0: positions and forces only for ionic steps 1, 10 (of 10)"]
    with pytest.raises(FormatError, match="no positions and forces"):
        step_to_cfg(steps[4], info)
    assert [c.energy for c in outcar_to_cfgs(path)] == [-253.15557734, -252.38626263]


def test_energy_choice(fixtures: Path) -> None:
    path = fixtures / "vasp/single_point/vasp544_Al2/OUTCAR"
    assert outcar_to_cfgs(path)[0].energy == -1.90811235  # TOTEN (sigma->0 is -1.66)
    assert outcar_to_cfgs(path, energy="sigma0")[0].energy == -1.66088321
    with pytest.raises(ValueError, match="energy must be"):
        outcar_to_cfgs(path, energy="sigma")


def test_iter_outcar_is_a_lazy_generator(fixtures: Path) -> None:
    gen = iter_outcar(fixtures / REL)
    assert inspect.isgenerator(gen)
    first = next(gen)
    assert isinstance(first, IonicStep) and first.energy_free == -88.79099344
    gen.close()
    assert [s.index for s in iter_outcar(fixtures / REL)] == [0, 1, 2]


def test_block_boundaries_do_not_matter(fixtures: Path) -> None:
    """The file is read in blocks; tiny blocks put every marker on a boundary somewhere."""
    for name in ("relax_md/vasp630_ch4_mlff_md", "single_point/vasp522_fccAg32H_US",
                 "unfinished/vasp641_Ba2Pb2O6_killed_midSCF"):
        path = str(fixtures / "vasp" / name / "OUTCAR")
        ref_info, ref = read_outcar(path, include_ml=True)
        for chunk in (61, 997, 4096):
            p = outcar_mod._Parser(path, include_ml=True, strict=False, chunk=chunk)
            steps = list(p.steps())
            assert vars(outcar_mod._classify(p)) == vars(ref_info)
            assert len(steps) == len(ref)
            for a, b in zip(steps, ref, strict=True):
                assert (a.index, a.ml, a.energy_free, a.n_electronic) == (
                    b.index, b.ml, b.energy_free, b.n_electronic)
                assert np.array_equal(a.forces, b.forces) and np.array_equal(a.cell, b.cell)


def test_crlf_file_reads_the_same(fixtures: Path, tmp_path: Path) -> None:
    src = fixtures / REL
    crlf = tmp_path / "OUTCAR"
    crlf.write_bytes(src.read_bytes().replace(b"\n", b"\r\n"))
    a = "".join(format_cfg(c) for c in outcar_to_cfgs(crlf))
    assert a == "".join(format_cfg(c) for c in outcar_to_cfgs(src))


# ------------------------------------------------------------------ malformed input


def _lines(fixtures: Path) -> list[bytes]:
    return (fixtures / REL).read_bytes().splitlines(keepends=True)


def _find(lines: list[bytes], text: bytes, nth: int = 0) -> int:
    return [i for i, ln in enumerate(lines) if text in ln][nth]


def test_truncated_inside_force_block(fixtures: Path, tmp_path: Path) -> None:
    lines = _lines(fixtures)
    at = _find(lines, b"TOTAL-FORCE", 1) + 10  # inside the block of ionic step 2
    path = tmp_path / "OUTCAR"
    path.write_bytes(b"".join(lines[:at]) + lines[at][:20])
    gen = iter_outcar(path)
    assert next(gen).index == 0  # the complete step comes first
    with pytest.raises(FormatError, match="ends inside the TOTAL-FORCE block of ionic step 2"
                       ) as exc:
        next(gen)
    assert exc.value.path == str(path) and exc.value.line == at + 1
    info, steps = read_outcar(path)  # the run was killed: a classification, not an error
    assert info.status == "unfinished" and len(steps) == 1
    assert info.reason == ("no timing footer: killed or cut (file ends inside the "
                           "TOTAL-FORCE block of ionic step 2)")
    with pytest.raises(FormatError, match="unfinished run"):
        outcar_to_cfgs(path)


# (marker line, its n-th occurrence, line to damage after it, old, new, message, line of
# the error after the marker line). Ionic step 1 of this file has 11 electronic steps.
@pytest.mark.parametrize(("marker", "nth", "offset", "old", "new", "message", "line"), [
    (b"TOTAL-FORCE", 0, 5, b".", b"x", "cannot read the TOTAL-FORCE row", 5),
    (b"TOTAL-FORCE", 0, 2, b"5", b"N", "cannot read the TOTAL-FORCE row", 2),
    (b"direct lattice vectors", 2, 2, b"1", b"#", "cannot read the lattice vectors", 2),
    (b"in kB", 1, 0, b"0.", b"0.*", "cannot read the 'in kB' line", 0),
    (b"free  energy   TOTEN", 0, 0, b"-", b"--", "cannot read the energy", 0),
    (b"- Iteration", 10, 0, b"(", b"[", "cannot read the Iteration line", 0),
    (b"ions per type", 0, 0, b"32", b"31", "does not add up to NIONS = 32", 0),
    # One row too many: found where the closing '-----' line should be (32 rows later).
    (b"TOTAL-FORCE", 1, 9, b"\n", b"\n   1.0 2.0 3.0 4.0 5.0 6.0\n", "closes the TOTAL-FORCE",
     34),
])
def test_garbled_numbers_give_format_error_with_line(
        fixtures: Path, tmp_path: Path, marker: bytes, nth: int, offset: int, old: bytes,
        new: bytes, message: str, line: int) -> None:
    lines = _lines(fixtures)
    at = _find(lines, marker, nth)
    lines[at + offset] = lines[at + offset].replace(old, new, 1)
    path = tmp_path / "OUTCAR"
    path.write_bytes(b"".join(lines))
    for read in (read_outcar, lambda p: list(iter_outcar(p)), outcar_to_cfgs):
        with pytest.raises(FormatError, match=message) as exc:
            read(path)
        assert (exc.value.path, exc.value.line) == (str(path), at + line + 1)


def test_touching_fortran_fields_are_split(fixtures: Path, tmp_path: Path) -> None:
    lines = _lines(fixtures)
    at = _find(lines, b"TOTAL-FORCE") + 2
    lines[at] = b"   -100.05725-1000.78995      5.76002     -0.005424      0.019649     -0.007160\n"
    kb = _find(lines, b"in kB")
    lines[kb] = (b"  in kB   -1234.56789-1234.56789    -2.04054     0.46038    -0.48562"
                 b"     0.04699\n")
    path = tmp_path / "OUTCAR"
    path.write_bytes(b"".join(lines))
    step = read_outcar(path)[1][0]
    assert step.positions[0].tolist() == [-100.05725, -1000.78995, 5.76002]
    assert step.stress_kb[:3].tolist() == [-1234.56789, -1234.56789, -2.04054]


def test_fuzz_truncations_and_corruptions(fixtures: Path, tmp_path: Path) -> None:
    """Whatever the damage: steps, a classification or a FormatError - nothing else."""
    data = (fixtures / REL).read_bytes()
    rng = random.Random(2026)
    path = tmp_path / "OUTCAR"
    footer = data.index(b"General timing")
    cuts = sorted(rng.sample(range(footer), 60))  # every cut before the timing footer
    cases = [data[:c] for c in cuts]
    for _ in range(90):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i:i + rng.randint(1, 3)] = rng.choice([b"x", b"", b"\n", b"-", b"9\n9", b"*"])
        cases.append(bytes(b))
    cases += [b"", b"\x00\xff" * 50, b"garbage\n" * 10, data[:-1]]
    outcomes = set()
    for case in cases:
        path.write_bytes(case)
        try:
            info, _ = read_outcar(path)
            outcomes.add(info.status)
            list(iter_outcar(path))
        except FormatError as exc:
            assert exc.path == str(path)
            outcomes.add("error")
    assert {"unfinished", "error", "complete"} <= outcomes
    for case in cases[:60]:  # every truncation is unfinished, never complete
        path.write_bytes(case)
        try:
            assert read_outcar(path)[0].status == "unfinished"
        except FormatError as exc:
            assert exc.line is not None


def test_not_an_outcar(tmp_path: Path, fixtures: Path) -> None:
    path = tmp_path / "OUTCAR"
    path.write_text("")
    info, steps = read_outcar(path)
    assert (info.status, info.reason, steps) == ("unfinished",
                                                 "stopped before NIONS was printed", [])
    cfg = fixtures / "vasp/relax_md/vasp541_relax3_32at_mlip3/relax.cfg"
    assert read_outcar(cfg)[0].reason == "stopped before NIONS was printed"
    path.write_text(" POSITION                                       TOTAL-FORCE (eV/Angst)\n")
    with pytest.raises(FormatError, match="before NIONS"):
        read_outcar(path)
