"""Config of the production engines: commands, POTCARs, templates, pairings."""

from __future__ import annotations

from pathlib import Path

import pytest

from smallcell.config import parse_config
from smallcell.errors import SmallcellError


def _potcars(tmp_path: Path, *names: str) -> Path:
    lib = tmp_path / "potcars"
    for n in names:
        (lib / n).mkdir(parents=True)
        (lib / n / "POTCAR").write_text(  # the lines check_engines reads (check_potcar)
            f"  PAW_PBE {n} 06Sep2000\n 4.0\n parameters from PSCTR are:\n"
            f"   VRHFIN ={n.split('_')[0]}: s2p2\n   TITEL  = PAW_PBE {n} 06Sep2000\n")
    return lib


def _vasp_yaml(lib: Path, extra: str = "") -> str:
    return ("engines: {labeler: vasp}\n"
            f"vasp:\n  command: \"'{lib}/my vasp;rm' -x\"\n  potcar_dir: {lib}\n"
            f"  potcars: {{Pb: Pb_d}}\n{extra}")


def test_command_is_split_into_words_never_run_by_a_shell(tmp_path: Path) -> None:
    lib = _potcars(tmp_path, "Pb_d")
    prog = lib / "my vasp;rm"
    prog.write_text("#!/bin/sh\n")
    cfg = parse_config(_vasp_yaml(lib), tmp_path / "c.yaml")
    assert cfg["vasp"]["command"] == [str(prog), "-x"]  # one word with the space and `;`


def test_missing_potcar_names_the_file(tmp_path: Path) -> None:
    lib = _potcars(tmp_path, "Pb")  # Pb_d is asked for
    (lib / "my vasp;rm").write_text("")
    with pytest.raises(SmallcellError, match=r"c.yaml:5: vasp.potcars: no POTCAR for Pb: .*"
                       r"potcars/Pb_d/POTCAR"):
        parse_config(_vasp_yaml(lib), tmp_path / "c.yaml")


def test_missing_potcar_library(tmp_path: Path) -> None:
    with pytest.raises(SmallcellError, match=r"vasp.potcar_dir: no such folder"):
        parse_config("engines: {labeler: vasp}\n", tmp_path / "c.yaml")


def test_exactly_one_kpoint_rule(tmp_path: Path) -> None:
    lib = _potcars(tmp_path, "Pb_d")
    (lib / "my vasp;rm").write_text("")
    with pytest.raises(SmallcellError, match=r"exactly one of vasp.kspacing and vasp.kppra"):
        parse_config(_vasp_yaml(lib, "  kppra: 1000\n"), tmp_path / "c.yaml")
    cfg = parse_config(_vasp_yaml(lib, "  kppra: 1000\n  kspacing: null\n"), tmp_path / "c.yaml")
    assert cfg["vasp"]["kppra"] == 1000


def test_program_not_found_unless_setup_loads_it(tmp_path: Path) -> None:
    lib = _potcars(tmp_path, "Pb")
    text = (f"engines: {{labeler: vasp}}\n"
            f"vasp: {{potcar_dir: {lib}, command: 'mpirun -np 4 nope_vasp'}}\n")
    with pytest.raises(SmallcellError, match=r"program 'nope_vasp' not found on PATH"):
        parse_config(text, tmp_path / "c.yaml")
    ok = text.replace("nope_vasp'}", "nope_vasp', setup: ['module load vasp']}")
    assert parse_config(ok, tmp_path / "c.yaml")["vasp"]["setup"] == ["module load vasp"]


def test_incar_mapping_values(tmp_path: Path) -> None:
    cfg = parse_config("vasp: {incar: {ENCUT: 500, NCORE: 4, LREAL: Auto, ISYM: null}}\n")
    assert cfg["vasp"]["incar"] == {"ENCUT": 500, "NCORE": 4, "LREAL": "Auto", "ISYM": None}
    with pytest.raises(SmallcellError, match=r"vasp.incar.MAGMOM must be a number"):
        parse_config("vasp: {incar: {MAGMOM: [1, 2]}}\n")


def test_lammps_goes_with_mlip3(tmp_path: Path) -> None:
    with pytest.raises(SmallcellError, match=r"lammps and engines.trainer mlip3 go together"):
        parse_config("engines: {explorer: lammps}\n")
    with pytest.raises(SmallcellError, match=r"lammps and engines.trainer mlip3 go together"):
        parse_config("engines: {trainer: mlip3}\n")


def test_mlip3_needs_a_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "none": no `make setup EXTRAS=mlip3` build fills the keys in, whatever this clone has
    monkeypatch.setenv("SMALLCELL_MLIP3_PREFIX", "none")
    base = "engines: {explorer: lammps, trainer: mlip3}\n"
    with pytest.raises(SmallcellError, match=r"needs mlip3.templates_dir"):
        parse_config(base, tmp_path / "c.yaml")
    (tmp_path / "MTP_templates").mkdir()
    with pytest.raises(SmallcellError, match=r"MTP template not found: .*MTP_templates/08.almtp"):
        parse_config(base + "mlip3: {templates_dir: MTP_templates}\n", tmp_path / "c.yaml")
    (tmp_path / "MTP_templates" / "08.almtp").write_text("MTP\n")
    (tmp_path / "mlp").write_text("")
    (tmp_path / "lmp").write_text("")
    cfg = parse_config(base + f"mlip3: {{templates_dir: MTP_templates, mlp: {tmp_path}/mlp}}\n"
                       f"lammps: {{command: {tmp_path}/lmp}}\n", tmp_path / "c.yaml")
    assert cfg["mlip3"]["mlp"] == [f"{tmp_path}/mlp"]


def test_unbalanced_quotes_in_a_command() -> None:
    with pytest.raises(SmallcellError, match=r"lammps.command: cannot split"):
        parse_config("lammps: {command: \"lmp 'oops\"}\n")


def test_production_example_validates_once_filled_in(tmp_path: Path) -> None:
    """examples/pb-vasp-mlip3.yaml is complete: filling its FILL IN paths is all it takes."""
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "examples" / "pb-vasp-mlip3.yaml").read_text(encoding="utf-8")
    assert text.count("FILL IN") >= 6
    lib = _potcars(tmp_path, "Pb_d")
    (tmp_path / "OUTCARs").mkdir()
    (tmp_path / "MTP_templates").mkdir()
    (tmp_path / "MTP_templates" / "18.almtp").write_text("MTP\n")
    text = (text.replace("/path/to/initial/OUTCARs", str(tmp_path / "OUTCARs"))
                .replace("/path/to/potpaw_PBE", str(lib))
                .replace("/path/to/mlip-3/MTP_templates", str(tmp_path / "MTP_templates"))
                .replace("setup: []", "setup: [module load it]"))
    cfg = parse_config(text, tmp_path / "prod.yaml")
    assert cfg["engines"] == {"explorer": "lammps", "labeler": "vasp", "trainer": "mlip3",
                              "scheduler": "local"}
    assert cfg["trainer"]["level"] == 18 and cfg["grid"]["temperatures"] == [300.0]
    assert cfg["extrapolation"] == {"gamma_save": 2.1, "gamma_break": 10.0}
    assert cfg["vasp"]["command"] == ["mpirun", "-np", "16", "vasp_std"]


def test_adapter_settings_are_checked_before_any_task(tmp_path: Path) -> None:
    """An INCAR tag that would turn the single point into a relaxation stops the run at once."""
    from smallcell.engines.base import check_engines

    lib = _potcars(tmp_path, "Pb_d")
    (lib / "my vasp;rm").write_text("")
    (lib / "my vasp;rm").chmod(0o755)  # check_engines refuses a program it cannot execute
    cfg = parse_config(_vasp_yaml(lib, "  incar: {IBRION: 2}\n"), tmp_path / "c.yaml")
    with pytest.raises(SmallcellError, match=r"c.yaml: vasp: .*IBRION"):
        check_engines(cfg)
    check_engines(parse_config(_vasp_yaml(lib), tmp_path / "c.yaml"))
