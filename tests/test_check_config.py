"""`smallcell check-config` (issue 17.3): every problem in one report, programs looked up
word by word and after the setup lines, placeholders and fake inputs refused, settings
that cannot deliver flagged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smallcell import cli
from smallcell.commands import parse_command
from smallcell.config import load_config, parse_config
from smallcell.engines import preflight
from smallcell.engines.base import check_engines
from smallcell.engines.mtp_basis import write_template
from smallcell.errors import SmallcellError

STANDINS = Path(__file__).resolve().parent / "standins"


def _exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _potcar(lib: Path, name: str, element: str | None = None, text: str | None = None) -> Path:
    """A POTCAR with the header lines of the PAW library (title, VRHFIN, TITEL)."""
    element = element or name.split("_")[0]
    path = lib / name / "POTCAR"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else
                    f"  PAW_PBE {name} 06Sep2000\n 14.0\n parameters from PSCTR are:\n"
                    f"   VRHFIN ={element}: 5d6s6p\n   LEXCH  = PE\n"
                    f"   TITEL  = PAW_PBE {name} 06Sep2000\n   POMASS =  207.200; "
                    "ZVAL   =   14.000\n   END of PSCTR-controll parameters\n End of Dataset\n")
    return path


@pytest.fixture
def path_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only tmp/bin (with the program `myvasp`): no mpirun there."""
    bindir = tmp_path / "bin"
    _exe(bindir / "myvasp")
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def _vasp_config(tmp_path: Path, command: str, extra: str = "") -> Path:
    lib = tmp_path / "potcars"
    if not (lib / "Pb_d" / "POTCAR").exists():
        _potcar(lib, "Pb_d")
    path = tmp_path / "c.yaml"
    path.write_text(f"engines: {{labeler: vasp}}\nvasp:\n  command: {command}\n"
                    f"  potcar_dir: {lib}\n  potcars: {{Pb: Pb_d}}\n{extra}")
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------ one report


def test_every_problem_in_one_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A schema error, a broken rule between keys and a FILL IN line: all three at once,
    each with the file, its line and its key, in file order; exit status 1."""
    path = tmp_path / "c.yaml"
    path.write_text("# Fill in every line marked FILL IN (a whole-line comment: not config)\n"
                    "md:\n  steps: 0\n"
                    "masses: [207.2, 1.0]\n"
                    "run:\n  jobs: 2      # FILL IN: your core count\n")
    rc, out, err = _check(path, capsys)
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"smallcell: check-config: 3 problem(s) in {path}:"
    assert lines[1].startswith(f"{path}:3: ") and "md.steps must be >= 1" in lines[1]
    assert lines[2] == f"{path}:4: masses has 2 values but species has 1"
    assert lines[3] == (f"{path}:6: run.jobs: still marked FILL IN: put your value on this "
                        "line and delete the marker")


def test_loader_collects_problems_and_keeps_going(tmp_path: Path) -> None:
    """load_config raises once with every problem; a refused key does not drag in the
    rules that involve it (gamma_save refused: no gamma_break complaint)."""
    text = ("md: {steps: 0, timestep: -1}\nextrapolation: {gamma_save: x, gamma_break: 1.5}\n"
            "masses: [1.0, 2.0]\n")
    with pytest.raises(SmallcellError) as info:
        parse_config(text, tmp_path / "c.yaml")
    msgs = str(info.value).splitlines()
    assert len(msgs) == 4, msgs
    assert [m.split(": ", 1)[1].split()[0] for m in msgs] == [
        "md.steps", "md.timestep", "extrapolation.gamma_save", "masses"]
    found: list[str] = []
    cfg = parse_config(text, tmp_path / "c.yaml", problems=found)
    assert found == msgs and cfg["md"]["steps"] == 1000  # the default in its place


def test_success_prints_the_effective_config(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parents[1]
    rc, out, _ = _check(repo / "examples" / "tiny.yaml", capsys)
    assert rc == 0 and out.startswith("# effective configuration") and "species:" in out


# ------------------------------------------------------------------ commands


@pytest.mark.parametrize(("command", "programs", "ranks"), [
    ("mpirun -np 16 vasp_std", ["mpirun", "vasp_std"], 16),
    ("vasp_std", ["vasp_std"], 1),
    ("srun vasp_std", ["srun", "vasp_std"], None),
    ("srun --ntasks=8 --mpi=pmi2 lmp -in in.lammps", ["srun", "lmp"], 8),
    ("mpirun --oversubscribe -n 4 lmp -sf omp", ["mpirun", "lmp"], 4),
    ("mpirun --mca btl self,vader -np 2 env OMP_NUM_THREADS=1 mlp train",
     ["mpirun", "env", "mlp"], 2),
    ("mpiexec --map-by ppr:2:node /opt/bin/lmp_mpi", ["mpiexec", "/opt/bin/lmp_mpi"], None),
    ("time -p nice -n 5 vasp_gam", ["time", "nice", "vasp_gam"], 1),
])
def test_command_words(command: str, programs: list[str], ranks: int | None) -> None:
    line = parse_command(command.split())
    assert line.programs == programs and line.ranks == ranks


def test_the_launcher_must_exist_too(tmp_path: Path, path_bin: Path) -> None:
    """`mpirun -np 1 myvasp` with myvasp on PATH and no mpirun: refused (the last word
    alone used to pass)."""
    path = _vasp_config(tmp_path, "mpirun -np 1 myvasp")
    with pytest.raises(SmallcellError, match=r"c.yaml:3: vasp.command: program 'mpirun' not "
                       r"found on PATH"):
        load_config(path)
    assert load_config(_vasp_config(tmp_path, "myvasp"))["vasp"]["command"] == ["myvasp"]


def test_programs_are_looked_up_after_the_setup_lines(tmp_path: Path, path_bin: Path) -> None:
    """With setup lines the programs are looked up in bash after them, as the job runs
    them: a line that puts mpirun on PATH makes the command pass; without it, or with a
    failing line, check_engines refuses with every problem in one message."""
    mpi = tmp_path / "mpi"
    _exe(mpi / "mpirun")
    good = _vasp_config(tmp_path, "mpirun -np 1 myvasp",
                        f"  setup: ['export PATH={mpi}:$PATH']\n")
    check_engines(load_config(good))

    bad = _vasp_config(tmp_path, "mpirun -np 1 myvasp",
                       "  setup: ['module load vasp/6.4', 'export X=1', 'false']\n")
    cfg = load_config(bad)  # the loader leaves programs behind setup lines alone
    with pytest.raises(SmallcellError) as info:
        check_engines(cfg)
    msgs = str(info.value).splitlines()
    assert len(msgs) == 3, msgs
    assert msgs[0] == (f"{bad}:6: vasp.setup[0]: setup line 'module load vasp/6.4' failed "
                       "(exit status 127: module: command not found) when run in bash as "
                       "the job runs it")
    assert msgs[1] == (f"{bad}:6: vasp.setup[2]: setup line 'false' failed (exit status 1) "
                       "when run in bash as the job runs it")
    assert msgs[2] == (f"{bad}:3: vasp.command: program 'mpirun' not found on PATH after "
                       "the setup lines (vasp.setup) ran in bash: load its module there or "
                       "give its full path")


def test_setup_lines_of_the_slurm_job_count(tmp_path: Path, path_bin: Path) -> None:
    """engines.scheduler slurm: slurm.setup and slurm.label.setup run before vasp.setup."""
    mpi = tmp_path / "mpi"
    _exe(mpi / "srun")
    path = _vasp_config(tmp_path, "srun myvasp",
                        f"engines: {{labeler: vasp, scheduler: slurm}}\n"
                        f"slurm:\n  label: {{setup: ['export PATH={mpi}:$PATH']}}\n")
    text = path.read_text().replace("engines: {labeler: vasp}\n", "", 1)
    path.write_text(text)
    check_engines(load_config(path))
    path.write_text(text.replace("label:", "explore:")  # the wrong job's setup
                    .replace("slurm:\n", "slurm:\n  setup: ['export X=1']\n"))
    with pytest.raises(SmallcellError, match=r"program 'srun' not found on PATH after the "
                       r"setup lines \(slurm.setup, slurm.label.setup, vasp.setup\)"):
        check_engines(load_config(path))


def test_a_hanging_setup_line_times_out(tmp_path: Path, path_bin: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "SETUP_TIMEOUT", 0.5)
    path = _vasp_config(tmp_path, "myvasp", "  setup: ['while :; do :; done']\n")
    with pytest.raises(SmallcellError, match=r"vasp.setup: the setup lines did not finish "
                       r"in 0.5 s"):
        check_engines(load_config(path))


def test_a_program_path_must_be_executable(tmp_path: Path, path_bin: Path) -> None:
    prog = tmp_path / "vasp_std"
    prog.write_text("#!/bin/sh\n")
    path = _vasp_config(tmp_path, str(prog))
    with pytest.raises(SmallcellError, match=r"vasp.command: '.*vasp_std' is not executable"):
        check_engines(load_config(path))


# ------------------------------------------------------------------ input contents


@pytest.mark.parametrize(("text", "element", "expected"), [
    ("", None, "not a VASP POTCAR"),
    ("fake POTCAR, replace me\n", None, "not a VASP POTCAR"),
    (None, "Sn", "the POTCAR of Sn (TITEL = PAW_PBE Sn_d 06Sep2000), not of Pb"),
])
def test_fake_potcar_is_refused(tmp_path: Path, path_bin: Path, text: str | None,
                                element: str | None, expected: str) -> None:
    lib = tmp_path / "potcars"
    _potcar(lib, "Pb_d", text=text)
    if element:  # the library folder Pb_d holds another element's POTCAR
        sn = _potcar(tmp_path / "other", "Sn_d")
        shutil.copy(sn, lib / "Pb_d" / "POTCAR")
    path = _vasp_config(tmp_path, "myvasp")
    with pytest.raises(SmallcellError, match=rf"c.yaml:5: vasp.potcars: .*Pb_d/POTCAR: "
                       rf"{expected.replace('(', '[(]').replace(')', '[)]')}"):
        check_engines(load_config(path))


def _mlip3_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("engines: {explorer: lammps, trainer: mlip3}\n"
                    f"mlip3: {{mlp: {STANDINS / 'mlp'}, templates_dir: {tmp_path / 'T'}}}\n"
                    f"lammps: {{command: {STANDINS / 'lmp'}, grade_floor: 0.1}}\n"
                    f"sample: {{size: 0}}\n{extra}")
    return path


def test_fake_almtp_is_refused(tmp_path: Path) -> None:
    (tmp_path / "T").mkdir()
    (tmp_path / "T" / "08.almtp").write_text("MTP\n")
    path = _mlip3_config(tmp_path)
    with pytest.raises(SmallcellError, match=r"c.yaml:2: mlip3.templates_dir: not an MTP "
                       r"potential or template: .*08.almtp"):
        check_engines(load_config(path))
    write_template(tmp_path / "T" / "08.almtp", 6)  # a real template of the wrong level
    with pytest.raises(SmallcellError, match=r"is a level-6 MTP, trainer.level is 8"):
        check_engines(load_config(path))
    write_template(tmp_path / "T" / "08.almtp", 8)
    check_engines(load_config(path))


def _initial(tmp_path: Path, source: str, where: Path, species: str = "[Pb]") -> list[str]:
    text = f"species: {species}\ninitial: {{source: {source}, path: {where}}}\n"
    found: list[str] = []
    cfg = parse_config(text, tmp_path / "c.yaml", problems=found)
    return [p.text for p in preflight.problems(cfg) if "initial.path" in p.text]


def test_empty_or_unreadable_outcar_folder_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "OUTCARs"
    empty.mkdir()
    [msg] = _initial(tmp_path, "outcar", empty)
    assert msg.startswith(f"{tmp_path / 'c.yaml'}:2: initial.path: {empty}: no OUTCAR in "
                          "this folder or below")
    (empty / "run1").mkdir()
    (empty / "run1" / "OUTCAR").write_text("not an OUTCAR at all\n")
    [msg] = _initial(tmp_path, "outcar", empty)
    assert "none of its 1 OUTCAR(s) holds a complete, converged ionic step" in msg


def test_outcar_folder_with_a_finished_run_passes(tmp_path: Path, fixtures: Path) -> None:
    folder = tmp_path / "OUTCARs" / "a"
    folder.mkdir(parents=True)
    shutil.copy(fixtures / "vasp" / "single_point" / "vasp632_fccAl4_strained" / "OUTCAR",
                folder / "OUTCAR")
    assert _initial(tmp_path, "outcar", tmp_path / "OUTCARs", "[Al]") == []
    [msg] = _initial(tmp_path, "outcar", tmp_path / "OUTCARs", "[Pb]")
    assert "species Al not in the config's species ['Pb']" in msg


def test_unlabeled_or_empty_cfg_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.cfg").write_text("")
    [msg] = _initial(tmp_path, "cfg", tmp_path / "empty.cfg")
    assert "no configuration in it" in msg


# ------------------------------------------------------------------ cannot deliver


@pytest.mark.parametrize(("lammps", "sample", "expected", "warning"), [
    ("mpirun -np 2 {lmp}", "sample: {size: 5}", "lammps.command runs 2 MPI ranks", False),
    ("mpirun -np 2 {lmp}", "", "sample.size is 200 (the default)", True),
    ("{lmp}", "sample: {size: 5}", None, None),
    ("mpirun -np 1 {lmp}", "sample: {size: 5}", None, None),
    ("mpirun {lmp}", "sample: {size: 5}", "gives its launcher no rank count", True),
])
def test_error_sample_with_mpi_split_lammps(tmp_path: Path, lammps: str, sample: str,
                                            expected: str | None, warning: bool | None) -> None:
    (tmp_path / "T").mkdir()
    write_template(tmp_path / "T" / "08.almtp", 8)
    path = tmp_path / "c.yaml"
    path.write_text("engines: {explorer: lammps, trainer: mlip3}\n"
                    f"mlip3: {{mlp: {STANDINS / 'mlp'}, templates_dir: {tmp_path / 'T'}}}\n"
                    f"lammps: {{command: '{lammps.format(lmp=STANDINS / 'lmp')}', "
                    f"grade_floor: 0.1}}\n{sample}\n")
    found: list[str] = []
    cfg = load_config(path, problems=found)  # mpirun may be absent: not this test's point
    got = [p for p in preflight.problems(cfg) if "sample.size" in p.text]
    if expected is None:
        assert got == []
    else:
        [p] = got
        assert expected in p.text and p.warning is warning, p


def test_no_grade_floor_no_sample(tmp_path: Path) -> None:
    (tmp_path / "T").mkdir()
    write_template(tmp_path / "T" / "08.almtp", 8)
    path = _mlip3_config(tmp_path).read_text().replace("grade_floor: 0.1", "grade_floor: null")
    cfg = parse_config(path.replace("sample: {size: 0}", "sample: {size: 5}"),
                       tmp_path / "c.yaml")
    [p] = [p for p in preflight.problems(cfg) if "sample.size" in p.text]
    assert "lammps.grade_floor is null" in p.text and not p.warning


@pytest.mark.parametrize(("command", "jobs", "key", "warning"), [
    ("mpirun -np 8 myvasp", 1, "vasp.command: each task starts 8 MPI ranks but this machine "
     "has 4 cores", False),
    ("mpirun --oversubscribe -np 8 myvasp", 1, "each task starts 8 MPI ranks", True),
    ("mpirun -np 2 myvasp", 4, "run.jobs: 4 tasks at once x 2 MPI ranks (vasp.command) = 8 "
     "processes on 4 cores", True),
    ("mpirun -np 2 myvasp", 0, "run.jobs: 4 tasks at once", True),  # 0 = all cores
    ("mpirun -np 2 myvasp", 2, None, None),
])
def test_local_ranks_against_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   command: str, jobs: int, key: str | None,
                                   warning: bool | None) -> None:
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 4)
    path = _vasp_config(tmp_path, command, f"run: {{jobs: {jobs}}}\n")
    cfg = load_config(path, problems=[])
    got = [p for p in preflight.problems(cfg, local_jobs=jobs) if "cores" in p.text]
    if key is None:
        assert got == []
    else:
        [p] = got
        assert key in p.text and p.warning is warning, p
    assert [p for p in preflight.problems(cfg) if "cores" in p.text] == []  # not local


def test_iter_checks_before_running(tmp_path: Path, path_bin: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`smallcell iter` runs the same checks first: nothing starts, all problems shown."""
    _potcar(tmp_path / "potcars", "Pb_d", text="")
    path = _vasp_config(tmp_path, "myvasp", "  setup: ['false']\n")
    rc = cli.main(["--run-dir", str(tmp_path), "iter", "--upto", "0", "--config", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and "setup line 'false' failed" in err and "not a VASP POTCAR" in err
    assert not (tmp_path / "iter").exists()


def test_production_example_reports_every_fill_in(capsys: pytest.CaptureFixture[str]) -> None:
    """The user's starting point: each FILL IN line of examples/pb-vasp-mlip3.yaml in the
    first report (the slurm section is commented out: not config)."""
    repo = Path(__file__).resolve().parents[1]
    example = repo / "examples" / "pb-vasp-mlip3.yaml"
    text = example.read_text()
    marked = [n for n, line in enumerate(text.splitlines(), 1)
              if "FILL IN" in line and not line.lstrip().startswith("#")]
    rc, _, err = _check(example, capsys)
    assert rc == 1
    flagged = [int(x.split(":")[1]) for x in err.splitlines() if "still marked FILL IN" in x]
    assert flagged == marked and len(marked) >= 6



@pytest.mark.parametrize(("text", "warned"), [
    ("md: {timestep: 200.0}\n", True), ("md: {timestep: 5.0}\n", False), ("{}\n", False)])
def test_an_md_timestep_no_integrator_survives_is_flagged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, warned: bool) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    rc, _, err = _check(path, capsys)
    assert rc == 0  # a warning: the run may go on
    said = f"{path}:1: md.timestep: 200 fs is above 10 fs" in err
    assert said is warned, err
