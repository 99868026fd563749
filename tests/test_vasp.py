"""The VASP labeler: inputs (INCAR, KPOINTS, POSCAR grouping, POTCAR), the command line, the
archive of earlier attempts, and end to end with tests/standins/vasp replaying real OUTCARs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read

from smallcell.engines.base import LabelError
from smallcell.engines.vasp import (
    VaspLabeler,
    VaspSettings,
    archive_previous,
    command_argv,
    format_incar_value,
    group_by_species,
    kpoint_mesh,
    render_incar,
    run_command,
    stress_kb_to_ase,
    write_inputs,
)

STANDIN = Path(__file__).resolve().parent / "standins" / "vasp"
A_PB = 4.95


def pb(rep: tuple[int, int, int] = (1, 1, 1)) -> Atoms:
    return bulk("Pb", "fcc", a=A_PB, cubic=True).repeat(rep)


def make_library(root: Path, names: dict[str, str]) -> Path:
    """A fake POTCAR library: <root>/<name>/POTCAR with the lines VASP and parsers look at."""
    for sym, name in names.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "POTCAR").write_text(
            f"  PAW_PBE {name} 06Sep2000\n 4.00000000000000000\n parameters from PSCTR are:\n"
            f"   VRHFIN ={sym}: fake\n   TITEL  = PAW_PBE {name} 06Sep2000\n End of Dataset\n")
    return root


def settings(tmp_path: Path, names: dict[str, str] | None = None, **kw) -> VaspSettings:
    names = names or {"Pb": "Pb_d"}
    lib = make_library(tmp_path / "potcars", names)
    kw.setdefault("command", [str(STANDIN)])
    kw.setdefault("potcars", names)
    return VaspSettings(potcar_dir=lib, **kw)


def incar_dict(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            key, value = (w.strip() for w in line.split("=", 1))
            assert key not in out, f"{key} written twice"
            out[key] = value
    return out


# --------------------------------------------------------------------------- INCAR


@pytest.mark.parametrize(("value", "text"), [
    (True, ".TRUE."), (False, ".FALSE."), (np.bool_(True), ".TRUE."), (400, "400"),
    (400.0, "400"), (1e-6, "1E-06"), (1e-5, "1E-05"), (0.1, "0.1"), (0.05, "0.05"),
    (np.float64(1e-7), "1E-07"), ("Accurate", "Accurate"), ([4, 4, 0.5], "4 4 0.5"),
])
def test_incar_value_format(value, text):
    assert format_incar_value(value) == text


def test_incar_single_point_forced_and_values():
    text = render_incar({"ENCUT": 400, "EDIFF": 1e-6, "LREAL": False, "NCORE": None,
                         "algo": "Fast", "MAGMOM": [1, 1]}, system="smallcell Pb4")
    assert text.startswith("# INCAR written by smallcell")
    tags = incar_dict(text)
    assert tags["IBRION"] == "-1" and tags["NSW"] == "0"
    assert tags["ENCUT"] == "400" and tags["EDIFF"] == "1E-06" and tags["LREAL"] == ".FALSE."
    assert tags["ALGO"] == "Fast" and tags["MAGMOM"] == "1 1"
    assert tags["SYSTEM"] == "smallcell Pb4"
    assert "NCORE" not in tags and "KPAR" not in tags  # None = omitted
    assert tags["PREC"] == "Accurate" and tags["ISMEAR"] == "1" and tags["ISYM"] == "0"
    # An explicit IBRION = -1 / NSW = 0 is accepted and not written twice.
    assert incar_dict(render_incar({"IBRION": -1, "NSW": 0}))["IBRION"] == "-1"


@pytest.mark.parametrize(("incar", "match"), [
    ({"IBRION": 2}, "IBRION"), ({"NSW": 10}, "NSW"), ({"KSPACING": 0.2}, "kspacing"),
    ({"KGAMMA": True}, "gamma_centered"), ({"ISIF": 0}, "stress"), ({"EN CUT": 3}, "tag"),
    ({"SYSTEM": "a\nIBRION = 2"}, "contains"), ({"ALGO": "Fast; NSW = 5"}, "contains"),
    ({"EDIFF": float("nan")}, "finite"), ({"LDAUL": {}}, "unsupported"),
])
def test_incar_refuses(incar, match):
    with pytest.raises(ValueError, match=match):
        render_incar(incar)


def test_settings_validation(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        VaspSettings(kspacing=0.2, kppra=1000)
    with pytest.raises(ValueError, match="exactly one"):
        VaspSettings(kspacing=None)
    with pytest.raises(ValueError, match="energy"):
        VaspSettings(energy="total")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="argv"):
        VaspSettings(command="mpirun -np 4 vasp_std")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IBRION"):
        VaspSettings(incar={"IBRION": 1})
    with pytest.raises(ValueError, match="unknown vasp settings: kspaceing"):
        VaspSettings.from_mapping({"kspaceing": 0.2})
    s = VaspSettings.from_mapping({"command": ["srun", "vasp_std"], "kppra": 1000,
                                   "kspacing": None, "potcar_dir": str(tmp_path)})
    assert s.kppra == 1000 and s.potcar_dir == tmp_path and s.potcar_name("Pb") == "Pb"


# --------------------------------------------------------------------------- KPOINTS


def test_kspacing_mesh_scales_with_the_cell():
    meshes = [kpoint_mesh(pb(r).cell, len(pb(r)), kspacing=0.25)
              for r in [(1, 1, 1), (1, 1, 2), (2, 2, 2)]]
    assert meshes == [(6, 6, 6), (6, 6, 3), (3, 3, 3)]
    # VASP's rule: the smallest n with n * kspacing >= 2π|b| (never coarser than asked).
    for r, mesh in zip([(1, 1, 1), (1, 1, 2), (2, 2, 2)], meshes, strict=True):
        b = 2 * math.pi / (A_PB * np.array(r))
        assert np.all(np.array(mesh) * 0.25 >= b) and np.all((np.array(mesh) - 1) * 0.25 < b)


def test_kppra_mesh_scales_with_the_cell():
    meshes = [kpoint_mesh(pb(r).cell, len(pb(r)), kppra=864)
              for r in [(1, 1, 1), (1, 1, 2), (2, 2, 2)]]
    assert meshes == [(6, 6, 6), (6, 6, 3), (3, 3, 3)]  # 864 k-points x atoms in each
    for r in [(1, 1, 1), (1, 1, 2), (2, 2, 2), (1, 2, 3)]:
        atoms = pb(r)
        mesh = kpoint_mesh(atoms.cell, len(atoms), kppra=1000)
        assert len(atoms) * np.prod(mesh) >= 1000
    assert kpoint_mesh(pb((6, 6, 6)).cell, 864, kppra=100) == (1, 1, 1)


def test_kpoints_file(tmp_path):
    s = settings(tmp_path, kspacing=0.25)
    write_inputs(tmp_path / "t", pb((1, 1, 2)), ["Pb"], s)
    lines = (tmp_path / "t" / "KPOINTS").read_text().splitlines()
    assert "smallcell" in lines[0] and "0.25" in lines[0]
    assert lines[1:] == ["0", "Gamma", "6 6 3", "0 0 0"]
    s = settings(tmp_path, kppra=864, kspacing=None, gamma_centered=False)
    write_inputs(tmp_path / "u", pb((2, 2, 2)), ["Pb"], s)
    assert (tmp_path / "u" / "KPOINTS").read_text().splitlines()[2:4] == ["Monkhorst-Pack",
                                                                          "3 3 3"]


# --------------------------------------------------------------------------- POSCAR, POTCAR


def mixed() -> Atoms:
    atoms = bulk("Pb", "fcc", a=A_PB, cubic=True).repeat((1, 1, 2))
    atoms.symbols[[1, 4, 6]] = "Al"  # Pb Al Pb Pb Al Pb Al Pb: not grouped
    atoms.rattle(0.05, seed=1)
    return atoms


def test_poscar_grouped_and_permutation_round_trip(tmp_path):
    atoms = mixed()
    s = settings(tmp_path, {"Al": "Al", "Cu": "Cu_pv", "Pb": "Pb_d"})
    inputs = write_inputs(tmp_path / "t", atoms, ["Al", "Cu", "Pb"], s)
    lines = (tmp_path / "t" / "POSCAR").read_text().splitlines()
    assert lines[5].split() == ["Al", "Pb"] and lines[6].split() == ["3", "5"]  # no Cu
    assert lines[7].strip().lower().startswith("direct")
    back = read(tmp_path / "t" / "POSCAR", format="vasp")
    assert back.get_chemical_symbols() == ["Al"] * 3 + ["Pb"] * 5
    assert inputs.poscar_species == ["Al", "Pb"] and inputs.counts == [3, 5]
    # POSCAR atom j is input atom order[j]; stable within a species.
    assert inputs.order.tolist() == [1, 4, 6, 0, 2, 3, 5, 7]
    np.testing.assert_allclose(back.positions, atoms.positions[inputs.order], atol=1e-9)
    np.testing.assert_allclose(back.cell[:], atoms.cell[:], atol=1e-12)
    undo = np.empty_like(inputs.order)
    undo[inputs.order] = np.arange(len(atoms))
    np.testing.assert_allclose(back.positions[undo], atoms.positions, atol=1e-9)
    # POTCAR in the POSCAR species order, built from the library.
    potcar = (tmp_path / "t" / "POTCAR").read_text()
    titles = [line.split("=")[1].strip() for line in potcar.splitlines() if "TITEL" in line]
    assert titles == ["PAW_PBE Al 06Sep2000", "PAW_PBE Pb_d 06Sep2000"]
    assert "VRHFIN =Pb:" in potcar


def test_group_by_species_rejects_unknown():
    with pytest.raises(ValueError, match=r"\['Al'\] not in"):
        group_by_species(mixed(), ["Pb"])


def test_missing_potcar_names_the_file(tmp_path):
    s = settings(tmp_path, {"Pb": "Pb_d"}, potcars={"Pb": "Pb_d", "Al": "Al_GW"})
    missing = tmp_path / "potcars" / "Al_GW" / "POTCAR"
    with pytest.raises(ValueError, match=str(missing)):
        write_inputs(tmp_path / "t", mixed(), ["Al", "Pb"], s)
    assert not (tmp_path / "t" / "INCAR").exists()  # no half set of inputs
    with pytest.raises(LabelError, match=str(missing)) as exc:
        VaspLabeler(s, ["Al", "Pb"]).label(tmp_path / "t", mixed())
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- the command


ARGV_LOGGER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["ARGV_LOG"], "w") as fh:
    json.dump({"argv": sys.argv, "mark": os.environ.get("SETUP_MARK")}, fh)
"""


def test_setup_lines_and_argv_passed_verbatim(tmp_path, monkeypatch):
    bindir = tmp_path / "my bin; touch PWNED"
    bindir.mkdir()
    prog = bindir / "vasp std"
    prog.write_text(ARGV_LOGGER)
    prog.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "argv.json"
    monkeypatch.setenv("ARGV_LOG", str(log))
    args = ["a b", "$HOME", "x;touch PWNED2", "`touch PWNED3`", "'q'", '"dq"', ""]
    for setup in ([], ["export SETUP_MARK='set up ok'  # a comment", "true"]):
        s = VaspSettings(command=[str(prog), *args], setup=setup)
        argv = command_argv(s)
        if setup:
            assert argv[:2] == ["bash", "-c"] and argv[3] == "smallcell-vasp"
            assert argv[4:] == [str(prog), *args]
        else:
            assert argv == [str(prog), *args]
        assert run_command(argv, work, timeout=20) == 0
        got = json.loads(log.read_text())
        assert got["argv"] == [str(prog), *args]
        assert got["mark"] == ("set up ok" if setup else None)
    assert not list(work.glob("PWNED*")) and not list(tmp_path.glob("PWNED*"))


def test_command_not_found_is_a_label_error(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        run_command([str(tmp_path / "no-such-vasp")], tmp_path, timeout=5)


def test_previous_attempt_moved_to_attempts(tmp_path):
    task = tmp_path / "t"
    task.mkdir()
    assert archive_previous(task) is None  # fresh folder: nothing to keep
    for name, text in [("OUTCAR", "first"), ("vasp.out", "out1"), ("INCAR", "incar1"),
                       ("input.cfg", "cfg")]:
        (task / name).write_text(text)
    dest = archive_previous(task)
    assert dest == task / "attempts" / "1"
    assert (dest / "OUTCAR").read_text() == "first" and (dest / "vasp.out").read_text() == "out1"
    assert (dest / "INCAR").read_text() == "incar1"  # inputs copied beside the outputs
    assert not (task / "OUTCAR").exists() and (task / "INCAR").exists()
    assert (task / "input.cfg").exists() and not (dest / "input.cfg").exists()
    (task / "OUTCAR").write_text("second")
    assert archive_previous(task) == task / "attempts" / "2"
    assert (task / "attempts" / "1" / "OUTCAR").read_text() == "first"
    assert (task / "attempts" / "2" / "OUTCAR").read_text() == "second"


def test_stress_mapping():
    # OUTCAR "in kB" XX YY ZZ XY YZ ZX of the Li128 fixture -> ASE (SOURCES.md)
    kb = [-4.66334, -4.58570, -4.58519, 1.04622, -0.57867, -0.87716]
    np.testing.assert_allclose(
        stress_kb_to_ase(kb),
        [0.00291063, 0.00286217, 0.00286185, 0.00036118, 0.00054748, -0.000653], atol=2e-8)


# --------------------------------------------------------------------------- the stand-in


def test_standin_fails_like_vasp_without_inputs(tmp_path, fixtures):
    run = subprocess.run([str(STANDIN)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "SMALLCELL_FIXTURES": str(fixtures)}, timeout=30)
    assert run.returncode == 1 and "INCAR was not found" in run.stdout
    write_inputs(tmp_path, pb(), ["Pb"], settings(tmp_path))
    (tmp_path / "KPOINTS").unlink()
    run = subprocess.run([str(STANDIN)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "SMALLCELL_FIXTURES": str(fixtures)}, timeout=30)
    assert run.returncode == 1 and "KPOINTS was not found" in run.stdout


@pytest.fixture
def standin_env(monkeypatch, fixtures):
    """The stand-in needs the outcar parser of smallcell to be useful end to end."""
    pytest.importorskip("smallcell.formats.outcar")
    monkeypatch.setenv("SMALLCELL_FIXTURES", str(fixtures))
    for key in ("SMALLCELL_VASP_MODE", "SMALLCELL_VASP_OUTCAR", "SMALLCELL_VASP_SLEEP",
                "SMALLCELL_VASP_EXIT"):
        monkeypatch.delenv(key, raising=False)
    return fixtures


def al4(fixtures: Path) -> Atoms:
    return read(fixtures / "vasp/single_point/vasp632_fccAl4_strained/POSCAR", format="vasp")


def test_complete_label_al4(tmp_path, standin_env):
    from smallcell.formats.cfg import atoms_to_cfg

    s = settings(tmp_path, {"Al": "Al"})
    task = tmp_path / "iter" / "0" / "vasp" / "0"
    task.mkdir(parents=True)
    atoms = al4(standin_env)
    labeled = VaspLabeler(s, ["Al"]).label(task, atoms)
    assert labeled.get_potential_energy() == pytest.approx(-14.91903652, abs=1e-8)
    np.testing.assert_allclose(labeled.get_forces(), np.zeros((4, 3)), atol=1e-9)
    np.testing.assert_allclose(labeled.get_stress(), [0.02516012] * 3 + [0, 0, 0], atol=2e-8)
    np.testing.assert_allclose(labeled.positions, atoms.positions)
    assert atoms.calc is None  # the input is not modified
    cfg = atoms_to_cfg(labeled, ["Al"])
    assert cfg.energy == pytest.approx(-14.91903652, abs=1e-8)
    assert not (task / "POTCAR").exists()  # never left behind (keep_potcar=False)
    assert {"INCAR", "KPOINTS", "POSCAR", "OUTCAR", "vasp.out", "vasp.err"} <= {
        p.name for p in task.iterdir()}
    info = json.loads((task / "label.json").read_text())
    assert info["labeler"] == "vasp" and info["energy_kind"] == "free"
    assert info["energy_sigma0"] == pytest.approx(-14.91897348, abs=1e-8)
    assert info["previous_attempt"] is None
    # A retry in the same folder keeps the first attempt's outputs.
    s.energy = "sigma0"
    s.keep_potcar = True
    again = VaspLabeler(s, ["Al"]).label(task, atoms)
    assert again.get_potential_energy() == pytest.approx(-14.91897348, abs=1e-8)
    assert atoms_to_cfg(again, ["Al"]).energy == pytest.approx(-14.91897348, abs=1e-8)
    assert (task / "attempts" / "1" / "OUTCAR").is_file()
    assert (task / "attempts" / "1" / "label.json").is_file()
    assert (task / "POTCAR").is_file()
    assert json.loads((task / "label.json").read_text())["previous_attempt"] == "attempts/1"


def test_complete_label_maps_forces_back_to_input_order(tmp_path, standin_env, monkeypatch):
    """CO: POTCAR order O, C; the input lists C first, so forces must be swapped back."""
    outcar = standin_env / "vasp/single_point/vasp621_CO_gamma/OUTCAR"
    monkeypatch.setenv("SMALLCELL_VASP_OUTCAR", str(outcar))
    ref = read(outcar, format="vasp-out")
    assert ref.get_chemical_symbols() == ["O", "C"]
    atoms = ref[[1, 0]]
    atoms.calc = None
    s = settings(tmp_path, {"O": "O", "C": "C"}, kspacing=None, kppra=1)
    labeled = VaspLabeler(s, ["O", "C"]).label(tmp_path / "t", atoms)
    assert labeled.get_chemical_symbols() == ["C", "O"]
    np.testing.assert_allclose(labeled.get_forces(), [[0, 0, 0.498868], [0, 0, -0.498868]],
                               atol=1e-9)
    assert labeled.get_potential_energy() == pytest.approx(-14.78895187, abs=1e-8)
    np.testing.assert_allclose(labeled.get_stress(), [8.899e-05, 8.899e-05, 0.00015407, 0, 0, 0],
                               atol=2e-8)


def test_complete_label_shear_stress_sigma0(tmp_path, standin_env, monkeypatch):
    outcar = standin_env / "vasp/single_point/vasp541_128at_mlip3/OUTCAR"
    monkeypatch.setenv("SMALLCELL_VASP_OUTCAR", str(outcar))
    ref = read(outcar, format="vasp-out")
    atoms = Atoms(ref.get_chemical_symbols(), positions=ref.positions, cell=ref.cell, pbc=True)
    s = settings(tmp_path, {"Li": "Li_sv"}, energy="sigma0")
    labeled = VaspLabeler(s, ["Li"]).label(tmp_path / "t", atoms)
    assert labeled.get_potential_energy() == pytest.approx(-236.44673745, abs=1e-8)
    np.testing.assert_allclose(labeled.get_forces()[0], [0.077722, 0.084688, -0.036006])
    np.testing.assert_allclose(
        labeled.get_stress(),
        [0.00291063, 0.00286217, 0.00286185, 0.00036118, 0.00054748, -0.000653], atol=2e-8)


def test_stale_or_foreign_outcar_is_refused(tmp_path, standin_env):
    moved = al4(standin_env)
    moved.positions[1] += [0.1, 0, 0]
    with pytest.raises(LabelError, match="positions differ") as exc:
        VaspLabeler(settings(tmp_path, {"Al": "Al"}), ["Al"]).label(tmp_path / "a", moved)
    assert "\n" not in str(exc.value)
    lead = al4(standin_env)
    lead.symbols[:] = "Pb"
    with pytest.raises(LabelError, match="species"):
        VaspLabeler(settings(tmp_path), ["Pb"]).label(tmp_path / "b", lead)


def failure(tmp_path: Path, monkeypatch, mode: str, **env: str) -> str:
    monkeypatch.setenv("SMALLCELL_VASP_MODE", mode)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LabelError) as exc:
        VaspLabeler(settings(tmp_path), ["Pb"]).label(
            tmp_path / mode, pb())
    reason = str(exc.value)
    assert "\n" not in reason and reason.strip() == reason
    return reason


def test_unconverged_scf(tmp_path, standin_env, monkeypatch):
    reason = failure(tmp_path, monkeypatch, "unconverged")
    assert reason.startswith("OUTCAR unconverged") and "reached NELM=15" in reason


def test_crash_reports_the_error_line(tmp_path, standin_env, monkeypatch):
    reason = failure(tmp_path, monkeypatch, "crash")
    assert reason.startswith("vasp exited with status 1")
    assert "Error EDDDAV: Call to ZHEGV failed" in reason and "MPI_Abort" in reason


def test_killed(tmp_path, standin_env, monkeypatch):
    reason = failure(tmp_path, monkeypatch, "killed")
    assert reason.startswith("vasp was killed by SIGKILL")
    # The same truncated OUTCAR with exit status 0 (a launcher hiding the kill): the parser
    # says unfinished.
    reason = failure(tmp_path / "zero", monkeypatch, "killed", SMALLCELL_VASP_EXIT="0")
    assert reason.startswith("OUTCAR unfinished") and "no timing footer" in reason


def test_nonzero_exit_reports_the_tail(tmp_path, standin_env, monkeypatch):
    reason = failure(tmp_path, monkeypatch, "complete", SMALLCELL_VASP_EXIT="3")
    assert reason.startswith("vasp exited with status 3")
    assert "vasp.out:" in reason and "writing wavefunctions" in reason


def test_timeout(tmp_path, standin_env, monkeypatch):
    monkeypatch.setenv("SMALLCELL_VASP_SLEEP", "60")
    t0 = time.perf_counter()
    with pytest.raises(LabelError, match=r"timed out after 0.5 s") as exc:
        VaspLabeler(settings(tmp_path, timeout=0.5), ["Pb"]).label(tmp_path / "t", pb())
    assert time.perf_counter() - t0 < 10
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "t" / "OUTCAR").exists()


def test_standin_is_a_plain_executable():
    """The stand-in plays an external program: executable, stdlib only, no smallcell."""
    text = STANDIN.read_text()
    assert text.startswith("#!/usr/bin/env python3") and os.access(STANDIN, os.X_OK)
    assert "import smallcell" not in text and "from smallcell" not in text
