"""MLIP-3: the .almtp reader, the log parsers on real `mlp` outputs, and the `mlp` adapter
against the stand-in (tests/standins/mlp), which replays the real outputs in the fixtures."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smallcell.engines import mlip3
from smallcell.engines.mlip3 import (
    POT,
    TAG,
    Mlip3Error,
    Mlip3Potential,
    Mlip3Settings,
    Mlip3Trainer,
    calculate_grade,
    call_mlp,
    check_errors,
    check_template,
    errors_from_report,
    match_selected,
    parse_errors_log,
    parse_errors_report,
    parse_grade_log,
    parse_select_add_log,
    parse_train_log,
    read_graded,
    select_add,
    train,
)
from smallcell.engines.motep_mtp import TrainSettings
from smallcell.formats.almtp import (
    KNOWN_LEVELS,
    read_almtp_header,
    read_selection_state,
    set_template_fields,
)
from smallcell.formats.cfg import cfg_to_atoms, read_cfgs, write_cfgs
from smallcell.formats.errors import FormatError

STANDIN = Path(__file__).resolve().parent / "standins" / "mlp"
MLP = [sys.executable, str(STANDIN)]
SPECIES = ["K"]  # the Small-Cell fixtures are potassium
RFC = {6: 2, 8: 2, 10: 3, 12: 3, 14: 4, 16: 4}
# cand58.cfg indices that the real `mlp select_add trained_cfg.almtp train30.cfg cand58.cfg`
# wrote to generated/diff_cfg.cfg (matched by coordinates, see test_match_selected_real)
REAL_SELECTED = [31, 38, 40, 41, 43, 45, 46, 47, 48, 49, 50, 51, 52, 56, 57]


@pytest.fixture
def m3(fixtures: Path) -> Path:
    return fixtures / "mlip3"


@pytest.fixture
def gen(m3: Path) -> Path:
    return m3 / "generated"


@pytest.fixture
def standin_env(fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in finds the fixtures through SMALLCELL_FIXTURES; no failure switches."""
    monkeypatch.setenv("SMALLCELL_FIXTURES", str(fixtures))
    for var in ("SMALLCELL_MLP_FAIL", "SMALLCELL_MLP_NP", "SMALLCELL_MLP_SLEEP",
                "SMALLCELL_MLP_ARGV_LOG"):
        monkeypatch.delenv(var, raising=False)


def _argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "argv.log"
    monkeypatch.setenv("SMALLCELL_MLP_ARGV_LOG", str(path))
    return path


# --------------------------------------------------------------------------- .almtp header


@pytest.mark.parametrize("level", [lv for lv in sorted(KNOWN_LEVELS) if lv <= 16])
def test_upstream_templates_are_untrained_crlf(m3: Path, level: int) -> None:
    path = m3 / "mlip3_upstream" / "MTP_templates" / f"{level:02d}.almtp"
    assert b"\r\n" in path.read_bytes()  # upstream templates are CRLF
    h = read_almtp_header(path)
    assert (h.level, h.trained, h.al_mode, h.has_active_set) == (level, False, None, False)
    assert (h.species_count, h.min_dist, h.max_dist) == (1, 2.0, 5.0)
    assert (h.radial_basis_type, h.radial_basis_size) == ("RBChebyshev", 8)
    assert h.radial_funcs_count == RFC[level]
    assert (h.alpha_moments_count, h.alpha_scalar_moments) == KNOWN_LEVELS[level]
    assert h.scaling is None and h.species_pairs == [] and h.selection_weights == {}
    assert read_selection_state(path) is None


@pytest.mark.parametrize("name,level,max_dist", [
    ("smallcell/untrained_maxdist7_06.almtp", 6, 7.0),
    ("smallcell/untrained_maxdist7_08.almtp", 8, 7.0),
    ("mlip3_upstream/examples/01_train/06.almtp", 6, 5.0),
])
def test_other_untrained_templates(m3: Path, name: str, level: int, max_dist: float) -> None:
    h = read_almtp_header(m3 / name)
    assert (h.level, h.max_dist, h.trained, h.has_active_set) == (level, max_dist, False, False)


@pytest.mark.parametrize("name,mode,level,min_dist,size,filled,n_cfgs", [
    ("generated/trained_cfg.almtp", "cfg", 8, 3.399142641487338, 26, 23, 23),
    ("generated/trained_nbh.almtp", "nbh", 8, 3.399142641487338, 26, 23, 23),
    ("smallcell/CFG08_2-54_.almtp", "cfg", 8, 2.660230880266277, 26, 23, 23),
    ("smallcell/NBH08_2-8_.almtp", "nbh", 8, 2.726561272334119, 26, 23, 21),
    ("mlip3_upstream/examples/04_calculate_grade/pot.almtp", "nbh", 6, 2.368526946091849,
     22, 19, 2),
    ("mlip3_upstream/examples/06_select_add/pot.almtp", "nbh", 16, 2.5131187342704, 125, 6, 1),
])
def test_trained_potentials(m3: Path, name: str, mode: str, level: int, min_dist: float,
                            size: int, filled: int, n_cfgs: int) -> None:
    h = read_almtp_header(m3 / name)
    assert (h.trained, h.has_active_set, h.al_mode, h.level) == (True, True, mode, level)
    assert h.species_count == 1 and h.species_pairs == [(0, 0)]
    assert h.min_dist == min_dist and h.scaling is not None
    w = h.selection_weights
    assert w["weight_scaling"] == 2 and w["force_weight"] == w["stress_weight"] == 0
    assert (w["energy_weight"], w["site_en_weight"]) == ((1, 0) if mode == "cfg" else (0, 1))
    s = read_selection_state(m3 / name)
    assert s is not None and (s.size, s.filled, s.n_configs) == (size, filled, n_cfgs)
    # the active set has one row per fitted coefficient: radial + species + moment coeffs
    assert s.size == h.radial_funcs_count * h.radial_basis_size + 1 + h.alpha_scalar_moments


def test_header_never_reads_the_binary_section(gen: Path, tmp_path: Path) -> None:
    """Everything after the '#' that follows the weights is binary: junk there (even text
    that would be a format error, or megabytes without a newline) changes nothing."""
    data = (gen / "trained_cfg.almtp").read_bytes()
    head = data[: data.index(b"\nweight_scaling 2\n") + len(b"\nweight_scaling 2\n")]
    junk = tmp_path / "junk.almtp"
    junk.write_bytes(head + b"#" + b"\xff\xfe\x00 = not a header line" * 200_000)
    crlf = tmp_path / "crlf.almtp"
    crlf.write_bytes(head.replace(b"\n", b"\r\n") + b"#\x00\x01")
    ref = read_almtp_header(gen / "trained_cfg.almtp")
    for p in (junk, crlf):
        h = read_almtp_header(p)
        h.path = ref.path
        assert h == ref


def _edit(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    data = src.read_bytes()
    assert old in data
    dst.write_bytes(data.replace(old, new, 1))
    return dst


@pytest.mark.parametrize("old,new,line,words", [
    (b"MTP\r\n", b"MTX\r\n", 1, "expected 'MTP'"),
    (b"version = 1.1.0", b"version = 1.0.0", 2, "version"),
    (b"radial_basis_size = 8", b"radial_basis_size = eight", 9, "integer"),
    (b"\tmax_dist = 5\r\n", b"", None, "max_dist"),
    (b"alpha_moment_mapping = {0, 10,", b"alpha_moment_mapping = {10,", 17, "entries"),
    (b"potential_tag = \r\n", b"potential_tag\r\n", 5, "key = value"),
])
def test_malformed_headers_name_file_and_line(m3: Path, tmp_path: Path, old: bytes,
                                              new: bytes, line: int | None,
                                              words: str) -> None:
    bad = _edit(m3 / "mlip3_upstream/MTP_templates/08.almtp", tmp_path / "bad.almtp", old, new)
    with pytest.raises(FormatError) as err:
        read_almtp_header(bad)
    assert err.value.path == str(bad) and err.value.line == line
    assert words in err.value.reason


def test_malformed_trained_parts(gen: Path, tmp_path: Path) -> None:
    src = gen / "trained_cfg.almtp"
    row = _edit(src, tmp_path / "row.almtp", b"\t\t\t{9.453526091476787e-01, ",
                b"\t\t\t{")
    with pytest.raises(FormatError, match="radial_basis_size = 8") as err:
        read_almtp_header(row)
    assert err.value.line == 14
    mvs = _edit(src, tmp_path / "mvs.almtp", b"force_weight 0.0", b"forceweight 0.0")
    with pytest.raises(FormatError, match="#MVS") as err:
        read_almtp_header(mvs)
    assert err.value.line == 27


def test_level_unknown_or_hinted(m3: Path, tmp_path: Path) -> None:
    src = m3 / "mlip3_upstream/MTP_templates/08.almtp"
    odd = _edit(src, tmp_path / "odd.almtp", b"alpha_moments_count = 18",
                b"alpha_moments_count = 19")
    assert read_almtp_header(odd).level is None
    tagged = _edit(odd, tmp_path / "tag.almtp", b"potential_tag = ", b"potential_tag = level18")
    assert read_almtp_header(tagged).level == 18


# --------------------------------------------------------------------------- templates


def test_set_template_fields_keeps_everything_else(m3: Path, tmp_path: Path) -> None:
    src = m3 / "mlip3_upstream/MTP_templates/08.almtp"
    text = src.read_bytes().decode()
    new = set_template_fields(text, species_count=2, min_dist=2.5, max_dist=6.75,
                              radial_basis_size=10)
    old_lines, new_lines = text.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines) and new.count("\r\n") == text.count("\r\n")
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [("species_count = 1\r\n", "species_count = 2\r\n"),
                       ("\tmin_dist = 2\r\n", "\tmin_dist = 2.5\r\n"),
                       ("\tmax_dist = 5\r\n", "\tmax_dist = 6.75\r\n"),
                       ("\tradial_basis_size = 8\r\n", "\tradial_basis_size = 10\r\n")]
    out = tmp_path / "prepared.almtp"
    out.write_bytes(new.encode())
    h = read_almtp_header(out)
    assert (h.species_count, h.min_dist, h.max_dist, h.radial_basis_size, h.level) == (
        2, 2.5, 6.75, 10, 8)


def test_set_template_fields_inserts_species_count(m3: Path) -> None:
    text = (m3 / "mlip3_upstream/MTP_templates/06.almtp").read_bytes().decode()
    text = text.replace("species_count = 1\r\n", "")
    new = set_template_fields(text, species_count=3, min_dist=2, max_dist=5,
                              radial_basis_size=8)
    assert "potential_name = MTP1m\r\nspecies_count = 3\r\npotential_tag" in new


def test_set_template_fields_refuses(m3: Path) -> None:
    trained = (m3 / "generated/trained_cfg.almtp").read_bytes()
    head = trained[: trained.index(b"#MVS")].decode()
    with pytest.raises(ValueError, match="trained potential"):
        set_template_fields(head, species_count=1, min_dist=2, max_dist=5,
                            radial_basis_size=8)
    tpl = (m3 / "mlip3_upstream/MTP_templates/08.almtp").read_bytes().decode()
    for kw in ({"min_dist": 5.0, "max_dist": 5.0}, {"species_count": 0},
               {"radial_basis_size": 1}):
        args = {"species_count": 1, "min_dist": 2.0, "max_dist": 5.0,
                "radial_basis_size": 8, **kw}
        with pytest.raises(ValueError):
            set_template_fields(tpl, **args)  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="max_dist"):
        set_template_fields(tpl.replace("\tmax_dist = 5\r\n", ""), species_count=1,
                            min_dist=2, max_dist=5, radial_basis_size=8)


# --------------------------------------------------------------------------- parsers


TRAIN_ERRORS = {  # the numbers of generated/train_cfg.log's errors report
    "n_configs": 30.0, "energy_rmse": 0.00146593, "energy_mae": 0.00103371,
    "energy_max": 0.00365196, "force_rmse": 0.00189304, "force_mae": 0.000959537,
    "force_max": 0.00545773, "n_atoms": 39.0, "stress_rmse": 0.0554857,
    "stress_mae": 0.0414653, "stress_max": 0.16202,
}


def test_parse_train_log_real(gen: Path) -> None:
    log = parse_train_log((gen / "train_cfg.log").read_text())
    assert [len(p) for p in log.phases] == [75, 200] and log.hit_limit == [True, True]
    assert log.loss_history[0] == 3.312938e-06 and log.loss_history[-1] == 3.1456845e-06
    assert log.phases[0][0] == 9.3116278e-06
    assert (log.iterations, log.converged, log.complete, log.n_configs) == (200, False, True, 30)
    assert log.report is not None
    assert log.report["energy"] == {"count": 30, "max": 0.00365196, "mean": 0.00135515,
                                    "rms": 0.00179979}
    assert log.report["forces"] == {"count": 39, "max": 0.00545773, "mean": 0.000959537,
                                    "rms": 0.00189304, "max_rel": 0.138109,
                                    "rms_rel": 0.139961}
    assert log.report["stresses"]["rms"] == 0.0283714
    assert log.report["virial"]["rms_rel"] == 0.00808389
    assert errors_from_report(log.report) == TRAIN_ERRORS


def test_parse_check_errors_real(gen: Path) -> None:
    report = parse_errors_report((gen / "errors_report.txt").read_text())
    assert report is not None and set(report) == {"energy", "energy_per_atom", "forces",
                                                  "stresses", "virial"}
    assert report["energy_per_atom"] == {"count": 58, "max": 440.445, "mean": 8.87338,
                                         "rms": 58.3618}
    assert report["virial"]["max"] == 41086.2 and report["forces"]["count"] == 138
    rows = parse_errors_log((gen / "errors_percfg.log").read_text())
    assert len(rows) == 58 and [r["cfg"] for r in rows] == list(range(1, 59))
    assert rows[0] == {"cfg": 1, "atoms": 2, "energy_diff": 0.00109369,
                       "energy_per_atom_diff": 0.000546844, "force_rms": 0.0125436,
                       "force_max": 0.0125436, "force_rel": 0.242185,
                       "stress_diff": 0.0245836, "stress_rel": 0.0384344}
    assert rows[4]["energy_diff"] == -0.000291313  # signed, while Diff(epa) is absolute
    # the per-configuration lines and the report describe the same numbers
    epa = np.array([r["energy_per_atom_diff"] for r in rows])
    assert math.isclose(epa.mean(), 8.87338, rel_tol=1e-4)
    assert math.isclose(epa.max(), 440.445, rel_tol=1e-5)
    assert sum(r["atoms"] for r in rows) == report["forces"]["count"]
    assert math.isclose(max(r["stress_diff"] for r in rows), 41086.2, rel_tol=1e-5)


def test_parse_grade_and_select_logs_real(gen: Path) -> None:
    grades = parse_grade_log((gen / "grade_cfg.log").read_text())
    ref = [c.mv_grade for c in read_cfgs(gen / "graded_cfg.cfg")]
    assert len(grades) == 58 and grades[0] == 7.36151 and grades[-1] == 1.15098e08
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(grades, ref, strict=True))
    assert parse_select_add_log((gen / "selectadd_cfg.log").read_text()) == 15
    assert len(read_cfgs(gen / "diff_cfg.cfg")) == 15
    assert parse_select_add_log((gen / "select.log").read_text()) is None
    assert parse_train_log("").report is None and parse_errors_report("x") is None


def test_match_selected_real(gen: Path) -> None:
    """select_add's real output matched back to its candidates by coordinates (mlp rounds
    them to 6 decimals; candidate 52 differs from its source in the 7th)."""
    cands = read_cfgs(gen / "cand58.cfg")
    assert match_selected(read_cfgs(gen / "diff_cfg.cfg"), cands) == REAL_SELECTED
    # by tag first: a tagged copy is found even when its coordinates moved
    sel = read_cfgs(gen / "diff_cfg.cfg")[:2]
    sel[0].set_feature(TAG, "7")
    sel[0].positions += 0.5
    assert match_selected(sel, cands) == [7, 38]
    with pytest.raises(ValueError, match="matches no candidate"):
        match_selected(read_cfgs(gen / "diff_cfg.cfg"), cands[:40])
    sel[0].set_feature(TAG, "99")
    with pytest.raises(ValueError, match="not one of the 58"):
        match_selected(sel, cands)


def test_read_graded_merges_rank_files(gen: Path, tmp_path: Path) -> None:
    """An MPI calculate_grade writes graded.cfg.<rank> round-robin; rank 0 is the real MPI
    output, rank 1 the odd IDs of the real serial output."""
    shutil.copyfile(gen / "mpi_calculate_grade_output.cfg.0", tmp_path / "graded.cfg.0")
    serial = read_cfgs(gen / "graded_cfg.cfg")
    write_cfgs(tmp_path / "graded.cfg.1", serial[1::2])
    merged = read_graded(tmp_path / "graded.cfg", 58)
    rank0 = read_cfgs(gen / "mpi_calculate_grade_output.cfg.0")
    assert [c.feature("ID") for c in merged] == [str(k) for k in range(58)]
    assert [c.mv_grade for c in merged[0::2]] == [c.mv_grade for c in rank0]
    assert [c.mv_grade for c in merged[1::2]] == [c.mv_grade for c in serial[1::2]]
    (tmp_path / "graded.cfg.1").unlink()
    with pytest.raises(ValueError, match=r"29 of 58 .*missing IDs 1, 3, 5"):
        read_graded(tmp_path / "graded.cfg", 58)


# --------------------------------------------------------------------------- adapter: train


def _images(gen: Path, name: str = "train30.cfg") -> list:
    return [cfg_to_atoms(c, SPECIES) for c in read_cfgs(gen / name)]


def _settings(m3: Path, **kw: object) -> Mlip3Settings:
    base: dict[str, object] = {
        "mlp": MLP, "template": m3 / "smallcell/untrained_maxdist7_08.almtp", "level": 8,
        "min_dist": 2.0, "max_dist": 6.5, "iteration_limit": 200, "al_mode": "cfg"}
    return Mlip3Settings(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.usefixtures("standin_env")
def test_train_from_template(m3: Path, gen: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    argv_log = _argv_log(tmp_path, monkeypatch)
    out = tmp_path / "train"
    res = train(_images(gen), SPECIES, out, _settings(m3), None)
    assert sorted(p.name for p in out.iterdir()) == [POT, "train.err", "train.log"]
    real = parse_train_log((gen / "train_cfg.log").read_text())
    assert res.loss_history == real.loss_history and res.iterations == 200
    assert (res.converged, res.message) == (False, "iteration limit reached")
    assert res.errors == TRAIN_ERRORS
    assert (res.active_set_size, res.active_set_configs) == (26, 26)
    assert res.extra["al_mode"] == "cfg" and res.extra["start"] == "template"
    assert res.extra["pretrain_history"] == real.phases[0]
    h = read_almtp_header(out / POT)
    assert (h.trained, h.al_mode, h.level, h.max_dist) == (True, "cfg", 8, 6.5)
    assert math.isclose(h.min_dist, 0.99 * 3.433477, rel_tol=1e-6)  # training-set mindist
    argv = argv_log.read_text().rstrip("\n").split("\t")
    assert argv[0] == "train" and argv[1].endswith("template.almtp") and argv[2] == "train.cfg"
    assert argv[3:] == ["--save_to=pot.almtp", "--iteration_limit=200", "--tolerance=0.001",
                        "--energy_weight=1", "--force_weight=0.01", "--stress_weight=0.001",
                        "--al_mode=cfg"]


@pytest.mark.usefixtures("standin_env")
def test_train_warm_start(m3: Path, gen: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "iter0"
    train(_images(gen), SPECIES, first, _settings(m3), None)
    argv_log = _argv_log(tmp_path, monkeypatch)
    second = tmp_path / "iter1"
    trainer = Mlip3Trainer(_settings(m3, iteration_limit=50, weight_scaling=2))
    res = trainer.train(_images(gen), SPECIES, second, None, trainer.start_file(first))
    argv = argv_log.read_text().rstrip("\n").split("\t")
    assert argv[1] == str((first / POT).resolve()) and "--weight_scaling=2" in argv
    assert not any(a.startswith("--al_mode") for a in argv)  # the file keeps its mode
    assert "Selection data found" in (second / "train.log").read_text()
    real = parse_train_log((gen / "train_cfg.log").read_text())
    assert res.loss_history == real.loss_history[:50] and not res.converged
    assert res.extra["start"] == "warm" and res.extra["pretrain_history"] == []
    # more iterations allowed than the optimiser needs: converged
    res = trainer.train(_images(gen), SPECIES, second, _settings(m3, iteration_limit=500),
                        first / POT)
    assert res.converged and res.message.startswith("converged")
    # "template": a fresh fit every iteration, even with a previous potential
    fresh = trainer.train(_images(gen), SPECIES, second, _settings(m3, start="template"),
                          first / POT)
    assert fresh.extra["start"] == "template"
    assert argv_log.read_text().splitlines()[-1].endswith("--al_mode=cfg")


@pytest.mark.usefixtures("standin_env")
def test_train_settings_from_the_stage(m3: Path, gen: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The train stage passes motep's TrainSettings; the trainer's own settings keep the
    program paths and templates."""
    argv_log = _argv_log(tmp_path, monkeypatch)
    trainer = Mlip3Trainer(Mlip3Settings(
        mlp=MLP, templates_dir=m3 / "mlip3_upstream/MTP_templates"))
    ts = TrainSettings(level=6, min_dist=2.2, max_dist=5.5, max_iter=7, al_mode="nbh",
                       stress_weight=0.0)
    res = trainer.train(_images(gen), SPECIES, tmp_path / "t", ts, None)
    argv = argv_log.read_text().rstrip("\n").split("\t")
    assert "--iteration_limit=7" in argv and "--al_mode=nbh" in argv
    assert "--stress_weight=0" in argv and res.iterations == 7
    h = read_almtp_header(tmp_path / "t" / POT)
    assert (h.level, h.al_mode, h.max_dist) == (6, "nbh", 5.5)


@pytest.mark.usefixtures("standin_env")
def test_train_configuration_errors(m3: Path, gen: Path, tmp_path: Path) -> None:
    images = _images(gen)
    with pytest.raises(Mlip3Error, match="no MTP template"):
        train(images, SPECIES, tmp_path / "a", _settings(m3, template=None), None)
    with pytest.raises(Mlip3Error, match="is level 6, the config asks for level 8"):
        train(images, SPECIES, tmp_path / "a",
              _settings(m3, template=m3 / "smallcell/untrained_maxdist7_06.almtp"), None)
    with pytest.raises(Mlip3Error, match="is a trained potential"):
        train(images, SPECIES, tmp_path / "a",
              _settings(m3, template=m3 / "generated/trained_cfg.almtp"), None)
    with pytest.raises(Mlip3Error, match="selects in cfg mode, but al_mode is nbh"):
        train(images, SPECIES, tmp_path / "a", _settings(m3, al_mode="nbh"),
              m3 / "generated/trained_cfg.almtp")
    with pytest.raises(Mlip3Error, match="no training configurations"):
        train([], SPECIES, tmp_path / "a", _settings(m3), None)
    hashed = _edit(m3 / "smallcell/untrained_maxdist7_08.almtp", tmp_path / "hash.almtp",
                   b"potential_tag = ", b"potential_tag = run#2")
    with pytest.raises(Mlip3Error, match="contains '#'"):
        train(images, SPECIES, tmp_path / "a", _settings(m3, template=hashed), None)
    assert not list((tmp_path / "a").glob(".mlp.*"))


# --------------------------------------------------------------------------- train: restarts


def _radial(pot: Path) -> list[str]:
    """The radial coefficient lines of a trained .almtp (its text part)."""
    head = pot.read_bytes().split(b"\n#", 1)[0].decode()
    return [x for x in head.splitlines() if x.startswith("\t\t\t{")]


def _calls(argv_log: Path) -> list[list[str]]:
    return [x.split("\t") for x in argv_log.read_text().splitlines()]


@pytest.mark.usefixtures("standin_env")
def test_train_restarts_screen_then_continue(m3: Path, gen: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """restarts=2: the template and two random-initialised templates run 100 iterations
    each; the lowest loss continues from its own pot.almtp for the other 200."""
    plain = tmp_path / "plain"  # the same fit without restarts (no random initialisation)
    train(_images(gen), SPECIES, plain, _settings(m3, iteration_limit=100), None)
    argv_log = _argv_log(tmp_path, monkeypatch)
    out = tmp_path / "train"
    res = train(_images(gen), SPECIES, out, _settings(m3, iteration_limit=300, restarts=2),
                None)
    calls = _calls(argv_log)
    assert len(calls) == 4 and all(c[0] == "train" for c in calls)
    for k, c in enumerate(calls[:3]):
        assert c[1].endswith("template.almtp") and "--iteration_limit=100" in c
        assert "--al_mode=cfg" in c
        assert ("--init_random=true" in c) == (k > 0)
    attempts = res.extra["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 3
    losses = [a["loss"] for a in attempts]
    assert len(set(losses)) == 3  # a random initialisation ends elsewhere
    kept = losses.index(min(losses))
    assert [a["start"] for a in attempts] == [
        "template", "template, random initialisation 1", "template, random initialisation 2"]
    assert res.message == ("iteration limit reached; best of 3 fits: "
                           f"{attempts[kept]['start']}")
    cont = calls[3]  # a warm start from the kept attempt's potential
    assert cont[1].endswith(f"attempt{kept}/{POT}") and "--iteration_limit=200" in cont
    assert not any(a.startswith(("--al_mode", "--init_random")) for a in cont)
    assert res.extra["continued"] is True and res.extra["screen_iterations"] == 100
    assert res.iterations == 300 and len(res.loss_history) == 300
    assert res.loss_history[99] == losses[kept] and not res.converged
    assert res.extra["start"] == "template"
    # train.log: every attempt under its header, the continuation after the kept one
    log = (out / "train.log").read_text()
    heads = [x for x in log.splitlines() if x.startswith("# ")]
    assert len(heads) == 4 and heads[kept + 1] == "# continued"
    for k, a in enumerate(attempts):
        line = heads[k if k <= kept else k + 1]
        assert line == (f"# attempt {k}: {a['start']}: loss {a['loss']:.6g} after 100 "
                        "iterations" + (" (kept)" if k == kept else ""))
    assert log.count("Random initialization of radial coefficients") == 2
    assert log.count("training complete") == 4
    assert sorted(p.name for p in out.iterdir()) == [POT, "train.err", "train.log"]
    # the potential is the kept fit's (continued): its radial coefficients are the random
    # initialisation's when a random start won, the plain fit's otherwise
    assert (_radial(out / POT) == _radial(plain / POT)) == (kept == 0)


@pytest.mark.usefixtures("standin_env")
def test_train_restarts_warm_start_and_short_limit(m3: Path, gen: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm start is attempt 0; the restarts fit the template. An iteration limit below
    100 screens at that limit and continues nothing; the kept potential is renamed in."""
    first = tmp_path / "iter0"
    train(_images(gen), SPECIES, first, _settings(m3), None)
    argv_log = _argv_log(tmp_path, monkeypatch)
    out = tmp_path / "iter1"
    res = train(_images(gen), SPECIES, out, _settings(m3, iteration_limit=50, restarts=1),
                first / POT)
    calls = _calls(argv_log)
    assert len(calls) == 2
    assert calls[0][1] == str((first / POT).resolve())
    assert not any(a.startswith(("--al_mode", "--init_random")) for a in calls[0])
    assert calls[1][1].endswith("template.almtp")
    assert calls[1][-2:] == ["--al_mode=cfg", "--init_random=true"]
    assert all("--iteration_limit=50" in c for c in calls)
    attempts = res.extra["attempts"]
    assert isinstance(attempts, list)
    assert [a["start"] for a in attempts] == ["warm start", "template, random initialisation 1"]
    assert res.extra["screen_iterations"] == 50 and res.extra["continued"] is False
    assert res.iterations == 50
    kept = 0 if attempts[0]["loss"] < attempts[1]["loss"] else 1
    assert res.extra["start"] == ("warm", "template")[kept]
    assert res.message.endswith(f"best of 2 fits: {attempts[kept]['start']}")
    assert "# continued" not in (out / "train.log").read_text()
    h = read_almtp_header(out / POT)
    assert h.trained and h.al_mode == "cfg"
    assert (_radial(out / POT) == _radial(first / POT)) == (kept == 0)


@pytest.mark.usefixtures("standin_env")
def test_train_restart_failures(m3: Path, gen: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed attempt loses and the others go on; when every attempt fails, the first
    error is raised with the log of all of them kept beside the stage; a failed
    continuation fails the fit and leaves the previous potential in place."""
    out = tmp_path / "train"
    out.mkdir()
    (out / POT).write_text("previous potential")
    fail_in = 'case "$PWD" in */{}) echo "no licence here" >&2; exit 3;; esac'
    res = train(_images(gen), SPECIES, out,
                _settings(m3, iteration_limit=100, restarts=2,
                          setup=[fail_in.format("attempt1")]), None)
    attempts = res.extra["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 3
    assert attempts[1]["loss"] is None and "exit status 3: no licence here" in str(
        attempts[1]["error"])
    assert attempts[0]["loss"] is not None and attempts[2]["loss"] is not None
    assert read_almtp_header(out / POT).trained
    log = (out / "train.log").read_text()
    assert "# attempt 1: template, random initialisation 1: failed: exit status 3" in log
    assert "no licence here" in (out / "train.err").read_text()
    assert not list(out.glob(".mlp.*"))
    # the continuation fails: the fit fails, the previous potential stays
    (out / POT).write_text("previous potential")
    with pytest.raises(Mlip3Error) as err:
        train(_images(gen), SPECIES, out,
              _settings(m3, iteration_limit=300, restarts=1,
                        setup=[fail_in.format("continued")]), None)
    assert err.value.reason.startswith("exit status 3") and "continued" in str(err.value.cwd)
    assert err.value.log == out / "train.err" and "# continued" in err.value.log.read_text()
    assert (out / POT).read_text() == "previous potential"
    # every attempt fails: the first error, as without restarts
    monkeypatch.setenv("SMALLCELL_MLP_FAIL", "train:exception")
    with pytest.raises(Mlip3Error) as err:
        train(_images(gen), SPECIES, out, _settings(m3, restarts=2), None)
    assert err.value.reason.startswith("MLIP-3 error (exit status 9): ERROR: injected")
    assert str(err.value.cwd).endswith("attempt0")
    assert err.value.log is not None and err.value.log.parent == out
    text = err.value.log.read_text()
    assert [x.split(":")[0] for x in text.splitlines() if x.startswith("# attempt")] == [
        "# attempt 0", "# attempt 1", "# attempt 2"] and text.count("Thrown by function") == 3
    assert (out / POT).read_text() == "previous potential"
    assert not list(out.glob(".mlp.*"))


def test_restarts_settings_and_config(tmp_path: Path) -> None:
    """Mlip3Settings.restarts is validated, taken from the stage's TrainSettings and from
    the config's trainer.restarts."""
    from smallcell.config import Config, defaults
    from smallcell.engines.base import trainer_for

    assert Mlip3Settings().restarts == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="restarts"):
            Mlip3Settings(restarts=bad)  # type: ignore[arg-type]
    assert Mlip3Settings(mlp=MLP).with_fit(TrainSettings(restarts=3)).restarts == 3
    assert Mlip3Settings(restarts=2).with_fit(TrainSettings()).restarts == 0
    cfg = Config(defaults())
    cfg.data["engines"]["trainer"] = "mlip3"
    cfg.data["trainer"]["restarts"] = 4
    trainer = trainer_for(cfg)
    assert isinstance(trainer, Mlip3Trainer) and trainer.settings.restarts == 4


@pytest.mark.usefixtures("standin_env")
def test_train_restarts_zero_is_one_call(m3: Path, gen: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage's TrainSettings with restarts 0: one mlp call, argv as ever, no attempt
    headers."""
    argv_log = _argv_log(tmp_path, monkeypatch)
    trainer = Mlip3Trainer(_settings(m3))
    res = trainer.train(_images(gen), SPECIES, tmp_path / "t",
                        TrainSettings(level=8, max_dist=6.5, max_iter=150, al_mode="cfg"),
                        None)
    (call,) = _calls(argv_log)
    assert call[3:] == ["--save_to=pot.almtp", "--iteration_limit=150", "--tolerance=0.001",
                        "--energy_weight=1", "--force_weight=0.01", "--stress_weight=0.001",
                        "--al_mode=cfg"]
    assert "attempts" not in res.extra and res.message == "iteration limit reached"
    assert "# attempt" not in (tmp_path / "t" / "train.log").read_text()


# --------------------------------------------------------------------------- adapter: grade


@pytest.mark.usefixtures("standin_env")
def test_calculate_grade_serial_and_rank_split(gen: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = [c.mv_grade for c in read_cfgs(gen / "graded_cfg.cfg")]
    pot = gen / "trained_cfg.almtp"
    grades = calculate_grade(pot, gen / "cand58.cfg", tmp_path / "s" / "graded.cfg", mlp=MLP)
    assert grades == real
    assert (tmp_path / "s" / "calculate_grade.log").is_file()
    monkeypatch.setenv("SMALLCELL_MLP_NP", "2")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "graded.cfg.5").write_text("stale output of an earlier run")
    grades = calculate_grade(pot, gen / "cand58.cfg", tmp_path / "m" / "graded.cfg", mlp=MLP)
    assert grades == real
    assert sorted(p.name for p in (tmp_path / "m").glob("graded.cfg*")) == [
        "graded.cfg.0", "graded.cfg.1"]


@pytest.mark.usefixtures("standin_env")
def test_select_add_indices(gen: Path, tmp_path: Path) -> None:
    pot = gen / "trained_cfg.almtp"
    out = tmp_path / "sel" / "new.cfg"
    picked = select_add(pot, gen / "train30.cfg", gen / "cand58.cfg", out, mlp=MLP)
    assert picked == REAL_SELECTED
    written = read_cfgs(out)
    assert len(written) == 15 and all(c.feature("selected_eqn_inds") == "0" for c in written)
    assert all(c.feature(TAG) is None for c in written)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "new.cfg", "select_add.err", "select_add.log"]
    # derived selection (not cand58): the candidates whose grade exceeds the threshold
    grades = calculate_grade(pot, gen / "train30.cfg", tmp_path / "g.cfg", mlp=MLP)
    picked = select_add(pot, None, gen / "train30.cfg", tmp_path / "sel2" / "new.cfg",
                        mlp=MLP, threshold=3.0)
    assert picked == [k for k, g in enumerate(grades) if g > 3.0] and picked
    assert sorted(p.name for p in (tmp_path / "sel2").iterdir()) == [
        "new.cfg", "select_add.err", "select_add.log"]


@pytest.mark.usefixtures("standin_env")
def test_check_errors_numbers(gen: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    res = check_errors(gen / "trained_cfg.almtp", gen / "cand58.cfg", mlp=MLP,
                       out_dir=tmp_path / "ce")
    assert res["report"] == parse_errors_report((gen / "errors_report.txt").read_text())
    assert res["per_config"] == parse_errors_log((gen / "errors_percfg.log").read_text())
    assert (res["energy_rmse"], res["energy_mae"], res["force_rmse"], res["stress_rmse"]) == (
        58.3618, 8.87338, 5806.48, 5487.51)
    monkeypatch.setenv("SMALLCELL_MLP_NP", "2")
    res = check_errors(gen / "trained_cfg.almtp", gen / "cand58.cfg", mlp=MLP,
                       out_dir=tmp_path / "mpi")
    assert len(res["per_config"]) == 58
    assert sorted(p.name for p in (tmp_path / "mpi").glob("check_errors.percfg*")) == [
        "check_errors.percfg.0", "check_errors.percfg.1"]


@pytest.mark.usefixtures("standin_env")
def test_trainer_errors_are_check_errors(gen: Path, tmp_path: Path) -> None:
    """The Trainer interface's errors (used by the level sweep): mlp check_errors on the
    train folder's potential, its files kept under train/check_errors/<set>/."""
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    shutil.copyfile(gen / "trained_cfg.almtp", train_dir / "pot.almtp")
    got = Mlip3Trainer(Mlip3Settings(mlp=MLP)).errors(train_dir, SPECIES, gen / "cand58.cfg")
    assert (got["energy_rmse"], got["force_rmse"], got["stress_rmse"]) == (
        58.3618, 5806.48, 5487.51)
    assert all(isinstance(v, float) for v in got.values())
    assert (train_dir / "check_errors" / "cand58" / "check_errors.report").exists()


@pytest.mark.usefixtures("standin_env")
def test_trainer_config_errors_are_the_per_configuration_log(
        gen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error study's per-configuration errors: check_errors' log lines in file order
    (the keys motep_mtp.config_errors_of also returns), files under `work`. Under MPI the
    rank files number their own share of MLIP-3's round-robin and a rank short of one
    configuration logs a padding line: merged in input order in one call, the same
    numbers. Should the share not fit, every configuration is checked alone (the padding
    line of a one-configuration check dropped)."""
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    shutil.copyfile(gen / "trained_cfg.almtp", train_dir / "pot.almtp")
    trainer = Mlip3Trainer(Mlip3Settings(mlp=MLP))
    rows = trainer.config_errors(train_dir, SPECIES, gen / "cand58.cfg", tmp_path / "w")
    want = parse_errors_log((gen / "errors_percfg.log").read_text())
    assert rows == [{k: v for k, v in r.items() if k != "cfg"} for r in want]
    assert {"atoms", "energy_diff", "energy_per_atom_diff", "force_rms",
            "force_max"} <= set(rows[0])
    assert (tmp_path / "w" / "check_errors.percfg").exists()
    some = tmp_path / "some.cfg"
    write_cfgs(some, read_cfgs(gen / "cand58.cfg")[:5])
    serial = trainer.config_errors(train_dir, SPECIES, some, tmp_path / "s")
    monkeypatch.setenv("SMALLCELL_MLP_NP", "2")
    mpi = trainer.config_errors(train_dir, SPECIES, some, tmp_path / "mpi")
    assert mpi == serial and len(mpi) == 5
    assert sorted(p.name for p in (tmp_path / "mpi").glob("check_errors.percfg*")) == [
        "check_errors.percfg.0", "check_errors.percfg.1"]
    assert "#atoms: 0" in (tmp_path / "mpi" / "check_errors.percfg.1").read_text()
    assert not (tmp_path / "mpi" / "one").exists()
    monkeypatch.setattr(mlip3, "_round_robin", lambda by_rank, natoms: None)
    alone = trainer.config_errors(train_dir, SPECIES, some, tmp_path / "alone")
    assert alone == serial
    assert sorted(p.name for p in (tmp_path / "alone" / "one").iterdir()) == list("01234")


@pytest.mark.usefixtures("standin_env")
def test_potential_select_and_grade(gen: Path, tmp_path: Path) -> None:
    """What stages/select.py uses: load(train_dir).select(atoms) -> .selected,
    .initial_grades; the training set is the iteration's collect/train.cfg."""
    train_dir = tmp_path / "iter" / "1" / "train"
    train_dir.mkdir(parents=True)
    shutil.copyfile(gen / "trained_cfg.almtp", train_dir / POT)
    (tmp_path / "iter" / "1" / "collect").mkdir()
    shutil.copyfile(gen / "train30.cfg", tmp_path / "iter" / "1" / "collect" / "train.cfg")
    pot = Mlip3Trainer(Mlip3Settings(mlp=MLP)).load(train_dir, SPECIES, "cfg")
    assert pot.train_cfg == (tmp_path / "iter/1/collect/train.cfg").resolve()
    assert pot.al_mode == "cfg"
    pot.work_dir = tmp_path / "work"
    sel = pot.select(_images(gen, "cand58.cfg"))
    real = np.array([c.mv_grade for c in read_cfgs(gen / "graded_cfg.cfg")])
    assert np.array_equal(sel.initial_grades, real)
    assert sorted(sel.selected) == REAL_SELECTED
    assert list(real[sel.selected]) == sorted(real[REAL_SELECTED], reverse=True)
    assert len(sel.cfgs) == 15 and list(pot.work_dir.iterdir()) == []
    assert pot.select([]).selected == []
    with pytest.raises(NotImplementedError, match="LAMMPS"):
        _ = pot.calc
    nbh = Mlip3Potential(gen / "trained_nbh.almtp", SPECIES, "nbh", mlp=MLP,
                         work_dir=tmp_path / "work")
    atoms = _images(gen, "cand58.cfg")[12]
    gamma, per_atom = nbh.grade(atoms)
    assert per_atom is not None and per_atom.shape == (len(atoms),)
    assert math.isclose(per_atom.max(), gamma, rel_tol=1e-5)
    gamma_cfg, none = pot.grade(atoms)
    assert none is None and gamma_cfg == real[12]
    with pytest.raises(Mlip3Error, match="no active-learning state"):
        Mlip3Potential(gen.parent / "mlip3_upstream/MTP_templates/08.almtp", SPECIES)


# --------------------------------------------------------------------------- failures


def _one_line(err: pytest.ExceptionInfo[Mlip3Error]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.usefixtures("standin_env")
def test_mlp_text_errors_with_exit_status_0(m3: Path, gen: Path, tmp_path: Path) -> None:
    with pytest.raises(Mlip3Error) as err:
        call_mlp(MLP, ["calculate-grade", "a", "b", "c"], tmp_path)
    assert err.value.reason.startswith("this mlp has no command 'calculate-grade'")
    assert err.value.returncode == 0 and "calculate-grade" in _one_line(err)
    with pytest.raises(Mlip3Error) as err:
        call_mlp(MLP, ["train", "only_one.almtp"], tmp_path)
    assert "wrong number of arguments (mlp train: 2 arguments are required)" in (
        err.value.reason)
    # the classic trap: "--key value" turns value into a third positional argument
    tpl = m3 / "smallcell/untrained_maxdist7_08.almtp"
    with pytest.raises(Mlip3Error, match="wrong number of arguments"):
        call_mlp(MLP, ["train", str(tpl), str(gen / "train30.cfg"), "--iteration_limit",
                       "5"], tmp_path)
    with pytest.raises(Mlip3Error, match="Error: 4 arguments required"):
        call_mlp(MLP, ["select_add", "a", "b", "c"], tmp_path)
    with pytest.raises(Mlip3Error) as err:
        check_errors(gen / "trained_cfg.almtp", tmp_path / "missing.cfg", mlp=MLP,
                     out_dir=tmp_path / "ce")
    assert err.value.reason.startswith("Can not open a file with configurations")
    run = call_mlp(MLP, ["list"], tmp_path, expect="List of available commands")
    assert run.returncode == 0 and run.log == tmp_path / "list.log"


@pytest.mark.usefixtures("standin_env")
@pytest.mark.parametrize("mode,reason", [
    ("exception", "MLIP-3 error (exit status 9): ERROR: injected failure of train"),
    ("crash", "killed by SIGKILL"),
    ("silent", "'training complete' missing from its output"),
    ("nooutput", "exit status 0 but no output file pot.almtp"),
])
def test_train_failures(m3: Path, gen: Path, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch, mode: str, reason: str) -> None:
    out = tmp_path / "train"
    out.mkdir()
    (out / POT).write_text("previous potential")
    monkeypatch.setenv("SMALLCELL_MLP_FAIL", f"train:{mode}")
    with pytest.raises(Mlip3Error) as err:
        train(_images(gen), SPECIES, out, _settings(m3), None)
    text = _one_line(err)
    assert err.value.reason.startswith(reason) and text.startswith("mlp train: ")
    assert err.value.log is not None and err.value.log.parent == out
    assert err.value.log.is_file()  # the log named in the error is kept beside the stage
    assert (out / POT).read_text() == "previous potential"  # untouched
    assert not list(out.glob(".mlp.*"))


@pytest.mark.usefixtures("standin_env")
def test_grading_failures(gen: Path, m3: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    pot = gen / "trained_cfg.almtp"
    with pytest.raises(Mlip3Error, match=r"MLIP-3 error \(exit status 9\): No selection "
                       "data provided with MLIP"):
        calculate_grade(m3 / "mlip3_upstream/MTP_templates/08.almtp", gen / "cand58.cfg",
                        tmp_path / "g.cfg", mlp=MLP)
    monkeypatch.setenv("SMALLCELL_MLP_FAIL", "calculate_grade:nooutput,select_add:silent")
    with pytest.raises(Mlip3Error, match="grades for 0 of 58 configurations in no output"):
        calculate_grade(pot, gen / "cand58.cfg", tmp_path / "g.cfg", mlp=MLP)
    with pytest.raises(Mlip3Error, match="'Training set was increased by' missing"):
        select_add(pot, gen / "train30.cfg", gen / "cand58.cfg", tmp_path / "s.cfg", mlp=MLP)
    monkeypatch.setenv("SMALLCELL_MLP_FAIL", "check_errors:exception")
    with pytest.raises(Mlip3Error, match="exit status 9"):
        check_errors(pot, gen / "cand58.cfg", mlp=MLP, out_dir=tmp_path / "ce")


@pytest.mark.usefixtures("standin_env")
def test_process_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Mlip3Error, match="executable not found: '/nonexistent/mlp'"):
        call_mlp(["/nonexistent/mlp"], ["train", "a", "b"], tmp_path)
    with pytest.raises(Mlip3Error, match=r"exit status 3: boom"):
        call_mlp([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"],
                 ["train"], tmp_path)
    monkeypatch.setenv("SMALLCELL_MLP_SLEEP", "30")
    with pytest.raises(Mlip3Error, match=r"timed out after 0.5 s"):
        call_mlp(MLP, ["list"], tmp_path, timeout=0.5)


@pytest.mark.usefixtures("standin_env")
def test_train_timeout_keeps_the_log(m3: Path, gen: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMALLCELL_MLP_SLEEP", "30")
    out = tmp_path / "train"
    with pytest.raises(Mlip3Error) as err:
        train(_images(gen), SPECIES, out, _settings(m3, timeout=0.5), None)
    assert err.value.reason == "timed out after 0.5 s (killed)"
    assert err.value.log == out / "train.log" and err.value.log.is_file()
    assert not (out / POT).exists() and not list(out.glob(".mlp.*"))


def test_settings_validation() -> None:
    s = Mlip3Settings(mlp="mpirun -np 4 mlp", templates_dir="/opt/mlip-3/MTP_templates",
                      level=10)  # type: ignore[arg-type]
    assert s.mlp == ["mpirun", "-np", "4", "mlp"]
    assert s.template_path() == Path("/opt/mlip-3/MTP_templates/10.almtp")
    for bad in ({"al_mode": "atoms"}, {"start": "cold"}, {"mlp": []}):
        with pytest.raises(ValueError):
            Mlip3Settings(**bad)  # type: ignore[arg-type]


def test_standin_runs_by_its_shebang(tmp_path: Path) -> None:
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH for the stand-in's shebang")
    assert os.access(STANDIN, os.X_OK)
    res = subprocess.run([str(STANDIN), "calc-grade"], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert (res.returncode, res.stdout) == (0, "Error: command calc-grade does not exist.\n")


@pytest.mark.usefixtures("standin_env")
def test_standin_init_random(m3: Path, gen: Path, tmp_path: Path) -> None:
    """--init_random=true on a template: mlp's message before the rescaling, the setting
    echoed, another final loss (repeatable in the same folder, different in another);
    on a trained input it changes nothing; a bad value is mlp's ApplySettings error."""
    tpl = m3 / "smallcell/untrained_maxdist7_08.almtp"
    cfgs = gen / "train30.cfg"

    def fit(folder: str, src: Path, *opts: str) -> str:  # --save_to: never over the input
        run = call_mlp(MLP, ["train", str(src), str(cfgs), "--save_to=pot.almtp",
                             "--iteration_limit=100", *opts],
                       tmp_path / folder, expect="training complete")
        return run.stdout

    plain = fit("a", tpl)
    rand = fit("a", tpl, "--init_random=true")
    again = fit("a", tpl, "--init_random=True")
    other = fit("b", tpl, "--init_random=true")
    assert fit("a", tpl, "--init_random=false") == plain
    assert "\tinit_random = false" in plain and "\tinit_random = true" in rand
    assert "Random initialization" not in plain
    lines = rand.splitlines()
    k = lines.index("Random initialization of radial coefficients")
    assert lines[k - 1].startswith("Minimal interatomic distance")
    assert lines[k + 1] == "Rescaling..."

    def last(text: str) -> float:
        return parse_train_log(text).loss_history[-1]

    assert last(rand) == last(again) and len({last(plain), last(rand), last(other)}) == 3
    assert len(parse_train_log(rand).loss_history) == 100
    trained = gen / "trained_cfg.almtp"
    assert fit("c", trained, "--init_random=true").replace("init_random = true",
                                                            "init_random = false") == (
        fit("c", trained))
    with pytest.raises(Mlip3Error, match=r'settings\["init_random"\]="yes" but it is not'):
        fit("d", tpl, "--init_random=yes")


# --------------------------------------------------------------------------- MPI and edges
# What the real mlp showed (issue 18.3), played by the stand-in; the same tests run against
# the real program below.


def test_parse_train_log_of_an_mpi_build() -> None:
    """mlp_mpi heads each optimisation "MTPR training started on N core(s)" (the serial
    build "MTPR serial(?!?) training started"): the pre-training and the fit stay apart."""
    text = ("Pre-training started\nMTPR training started on 2 core(s)\n"
            "BFGS iter 0: f=3.0\nBFGS iter 1: f=2.0\nstep limit reached\nMTPR training ended\n"
            "Pre-training ended\nIteration limit is 3\nMTPR training started on 2 core(s)\n"
            "BFGS iter 0: f=1.5\nBFGS iter 1: f=1.25\nBFGS iter 2: f=1.0\nstep limit reached\n"
            "MTPR training ended\ntraining complete\n")
    log = parse_train_log(text)
    assert log.phases == [[3.0, 2.0], [1.5, 1.25, 1.0]] and log.hit_limit == [True, True]
    assert log.iterations == 3 and not log.converged and log.complete


@pytest.mark.usefixtures("standin_env")
def test_standin_empty_training_set_trains_as_mlp_does(m3: Path, tmp_path: Path) -> None:
    """mlp trains on an empty set without complaint (losses -nan, a report of zeros): the
    adapter refuses one itself, before calling mlp."""
    (tmp_path / "empty.cfg").write_text("")
    run = call_mlp(MLP, ["train", str(m3 / "mlip3_upstream/MTP_templates/08.almtp"),
                         "empty.cfg", "--save_to=pot.almtp", "--iteration_limit=5"],
                   tmp_path, expect="training complete", outputs=["pot.almtp"])
    log = parse_train_log(run.stdout)
    assert log.n_configs == 0 and log.loss_history and all(math.isnan(x)
                                                            for x in log.loss_history)
    assert log.report is not None and errors_from_report(log.report) == {}
    assert "Following atomic numbers" not in run.stdout
    assert read_almtp_header(tmp_path / "pot.almtp").species_count == 0
    with pytest.raises(Mlip3Error, match="no training configurations"):
        train([], SPECIES, tmp_path / "t", _settings(m3), None)


@pytest.mark.usefixtures("standin_env")
def test_standin_mpi_outputs(gen: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """As mlp_mpi on 2 ranks: grade log lines numbered per rank, no output file for a
    rank that graded nothing, check_errors' padding line and diluted report, every rank's
    "Rank r, " error message."""
    monkeypatch.setenv("SMALLCELL_MLP_NP", "2")
    pot = gen / "trained_cfg.almtp"
    write_cfgs(tmp_path / "five.cfg", read_cfgs(gen / "cand58.cfg")[:5])
    write_cfgs(tmp_path / "one.cfg", read_cfgs(gen / "cand58.cfg")[:1])
    run = call_mlp(MLP, ["calculate_grade", str(pot), "five.cfg", "g.cfg"], tmp_path)
    assert [x.split("\t")[0] for x in run.stdout.splitlines() if x.startswith("Sampling")] \
        == ["Sampling: cfg# 1", "Sampling: cfg# 2", "Sampling: cfg# 3", "Sampling: cfg# 1",
            "Sampling: cfg# 2"]
    call_mlp(MLP, ["calculate_grade", str(pot), "one.cfg", "h.cfg"], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("h.cfg*")) == ["h.cfg.0"]
    call_mlp(MLP, ["check_errors", str(pot), "five.cfg", "--report_to=rep", "--log=per"],
             tmp_path)
    rows = [parse_errors_log((tmp_path / f"per.{r}").read_text()) for r in (0, 1)]
    assert [len(x) for x in rows] == [3, 3] and rows[1][2]["atoms"] == 0
    assert math.isnan(rows[1][2]["energy_per_atom_diff"])
    report = parse_errors_report((tmp_path / "rep").read_text())
    assert report is not None and report["energy"]["count"] == 6
    assert report["forces"]["count"] == 10
    with pytest.raises(Mlip3Error) as err:
        call_mlp(MLP, ["calculate_grade", str(pot), "missing.cfg", "x.cfg"], tmp_path)
    assert err.value.reason.startswith("MLIP-3 error (exit status 9): Rank 0, ERROR: Can't "
                                       "open file \"missing.cfg\"")
    assert "Rank 1, ERROR" in (tmp_path / "calculate_grade.err").read_text()


def test_unpad_report_and_round_robin() -> None:
    """The padding comparisons of an MPI check_errors taken out of its report (counts,
    means, RMS; maxima and forces kept), and rank lines merged in input order only when
    they fit MLIP-3's share."""
    report = {"energy": {"count": 6.0, "max": 3.0, "mean": 1.0, "rms": 2.0},
              "forces": {"count": 10.0, "max": 1.0, "mean": 0.5, "rms": 0.7},
              "virial": {"count": 6.0, "max": 3.0, "mean": 1.0, "rms": 2.0, "max_rel": 0.1,
                         "rms_rel": 0.2}}
    out = mlip3._unpad_report(report, 1)
    assert out["energy"] == {"count": 5.0, "max": 3.0, "mean": 1.2,
                             "rms": pytest.approx(2.0 * math.sqrt(6 / 5))}
    assert out["forces"] == report["forces"] and report["energy"]["count"] == 6.0
    assert "rms_rel" not in out["virial"] and out["virial"]["max_rel"] == 0.1
    rows = [[{"cfg": 1.0, "atoms": 2.0}, {"cfg": 2.0, "atoms": 4.0}],
            [{"cfg": 1.0, "atoms": 3.0}]]
    assert mlip3._round_robin(rows, [2, 3, 4]) == [
        {"cfg": 1.0, "atoms": 2.0}, {"cfg": 2.0, "atoms": 3.0}, {"cfg": 3.0, "atoms": 4.0}]
    assert mlip3._round_robin(rows, [2, 3, 5]) is None  # atoms differ: another share
    assert mlip3._round_robin(rows, [2, 3]) is None


# --------------------------------------------------------------------------- both programs
# The same calls against the stand-in and the real mlp (conftest.py: real_mlp, built once
# per machine from ../shared/vendor). Assertions are about what the adapter relies on, not
# about replayed numbers.


def _real_trained(real_mlp: Any, fixtures: Path, out: Path, al_mode: str) -> Path:
    """A level-8 potential the real mlp fitted on train30.cfg (30 iterations)."""
    gen = fixtures / "mlip3" / "generated"
    train(_images(gen), SPECIES, out, Mlip3Settings(
        mlp=[str(real_mlp.mlp)], templates_dir=real_mlp.templates_dir, level=8,
        max_dist=6.5, iteration_limit=30, al_mode=al_mode), None)
    return out / POT


@pytest.fixture(scope="module")
def real_pots(real_mlp: Any, fixtures: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Potentials trained by the real mlp in cfg and nbh mode, once per module."""
    root = tmp_path_factory.mktemp("real_pots")
    return {mode: _real_trained(real_mlp, fixtures, root / mode, mode)
            for mode in ("cfg", "nbh")}


@dataclass
class Program:
    """An mlp to test against: its argv, its templates and potentials it trained (the
    stand-in: the fixtures the real one wrote)."""

    name: str
    mlp: list[str]
    templates_dir: Path
    pots: dict[str, Path]

    def mpi(self, request: pytest.FixtureRequest) -> list[str]:
        """The argv on 2 MPI ranks: the stand-in as an MPI build, the real mlp_mpi under
        mpirun (conftest.py's real_mpirun, which skips without it)."""
        if self.name == "standin":
            return ["env", "SMALLCELL_MLP_NP=2", *self.mlp]
        return request.getfixturevalue("real_mpirun")


@pytest.fixture(params=["standin", "real"])
def program(request: pytest.FixtureRequest, fixtures: Path,
            monkeypatch: pytest.MonkeyPatch) -> Program:
    monkeypatch.setenv("SMALLCELL_FIXTURES", str(fixtures))
    for var in ("SMALLCELL_MLP_FAIL", "SMALLCELL_MLP_NP", "SMALLCELL_MLP_SLEEP",
                "SMALLCELL_MLP_ARGV_LOG"):
        monkeypatch.delenv(var, raising=False)
    if request.param == "standin":
        gen = fixtures / "mlip3" / "generated"
        return Program("standin", MLP,
                       fixtures / "mlip3" / "mlip3_upstream" / "MTP_templates",
                       {"cfg": gen / "trained_cfg.almtp", "nbh": gen / "trained_nbh.almtp"})
    real = request.getfixturevalue("real_mlp")
    return Program("real", [str(real.mlp)], real.templates_dir,
                   request.getfixturevalue("real_pots"))


def test_mpi_rank_files_merge_as_serial(program: Program, gen: Path, tmp_path: Path,
                                        request: pytest.FixtureRequest) -> None:
    """mlp_mpi on 2 ranks (5 configurations: one rank short of one): grades from
    graded.cfg.<rank>, errors and per-configuration lines from the rank files come out as
    the serial build's, in one call each; a fit on 2 ranks keeps its pre-training apart."""
    mpi = program.mpi(request)
    pot = program.pots["cfg"]
    write_cfgs(tmp_path / "five.cfg", read_cfgs(gen / "cand58.cfg")[:5])
    write_cfgs(tmp_path / "one.cfg", read_cfgs(gen / "cand58.cfg")[:1])
    serial = calculate_grade(pot, tmp_path / "five.cfg", tmp_path / "s" / "g.cfg",
                             mlp=program.mlp)
    ranked = calculate_grade(pot, tmp_path / "five.cfg", tmp_path / "m" / "g.cfg", mlp=mpi)
    assert ranked == pytest.approx(serial, rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "m").glob("g.cfg*")) == ["g.cfg.0", "g.cfg.1"]
    assert len(calculate_grade(pot, tmp_path / "one.cfg", tmp_path / "o" / "g.cfg",
                               mlp=mpi)) == 1
    s = check_errors(pot, tmp_path / "five.cfg", mlp=program.mlp, out_dir=tmp_path / "se")
    m = check_errors(pot, tmp_path / "five.cfg", mlp=mpi, out_dir=tmp_path / "me")
    assert sorted(p.name for p in (tmp_path / "me").glob("check_errors.percfg*")) == [
        "check_errors.percfg.0", "check_errors.percfg.1"]
    assert m["n_configs"] == s["n_configs"] == 5
    for key in ("energy_rmse", "energy_mae", "energy_max", "force_rmse", "stress_rmse",
                "stress_mae"):
        assert m[key] == pytest.approx(s[key], rel=1e-4), key
    assert len(m["per_config"]) == 5
    for a, b in zip(m["per_config"], s["per_config"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    shutil.copyfile(pot, train_dir / POT)
    rows = Mlip3Trainer(Mlip3Settings(mlp=mpi)).config_errors(
        train_dir, SPECIES, tmp_path / "five.cfg", tmp_path / "ce")
    assert len(rows) == 5 and not (tmp_path / "ce" / "one").exists()
    res = train(_images(gen), SPECIES, tmp_path / "fit", Mlip3Settings(
        mlp=mpi, templates_dir=program.templates_dir, level=8, max_dist=6.5,
        iteration_limit=10, al_mode="cfg"), None)
    assert res.iterations == 10 and len(res.loss_history) == 10
    assert res.extra["pretrain_history"] and read_almtp_header(tmp_path / "fit" / POT).trained


def test_failures_the_program_reports(program: Program, gen: Path, tmp_path: Path) -> None:
    """Failures mlp reports, each one Mlip3Error line: an MlipException (exit status 9),
    a file it cannot open (exit status 0, a message on stdout), a misspelt command, a
    wrong argument count (the `--key value` trap)."""
    tpl = program.templates_dir / "08.almtp"
    with pytest.raises(Mlip3Error) as err:
        calculate_grade(tpl, gen / "cand58.cfg", tmp_path / "g.cfg", mlp=program.mlp)
    assert err.value.reason == ("MLIP-3 error (exit status 9): No selection data provided "
                                "with MLIP") and err.value.returncode == 9
    with pytest.raises(Mlip3Error) as err:
        check_errors(program.pots["cfg"], tmp_path / "missing.cfg", mlp=program.mlp,
                     out_dir=tmp_path / "ce")
    assert err.value.reason.startswith("Can not open a file with configurations")
    with pytest.raises(Mlip3Error) as err:
        call_mlp(program.mlp, ["calculate-grade", "a", "b", "c"], tmp_path)
    assert err.value.reason.startswith("this mlp has no command 'calculate-grade'")
    with pytest.raises(Mlip3Error, match=r"wrong number of arguments \(mlp train: 2 "
                       "arguments are required\\)"):
        call_mlp(program.mlp, ["train", str(tpl), str(gen / "train30.cfg"),
                               "--iteration_limit", "5"], tmp_path)
    with pytest.raises(Mlip3Error) as err:
        call_mlp(program.mlp, ["train", str(tpl), "missing.cfg", "--save_to=p.almtp"],
                 tmp_path)
    assert err.value.reason.startswith("MLIP-3 error (exit status 9): ERROR: Can't open "
                                       "file \"missing.cfg\" for reading configurations")
    assert err.value.log == tmp_path / "train.err"


# --------------------------------------------------------------------------- the real mlp


def test_real_templates_load_and_train(real_mlp: Any, gen: Path, tmp_path: Path) -> None:
    """Every <level>.almtp of the build's MTP_templates is an untrained template the
    adapter reads, every level (6..28) recognised by its moment counts; one prepared by
    the adapter (species, cutoffs, basis size set) trains at levels 6 and 10."""
    found = {int(p.name[:2]): p for p in real_mlp.templates_dir.glob("[0-9][0-9].almtp")}
    assert set(found) == set(KNOWN_LEVELS)
    for level, path in sorted(found.items()):
        h = read_almtp_header(path)
        assert not h.trained and not h.has_active_set and h.level == level, path
        assert (h.alpha_moments_count, h.alpha_scalar_moments) == KNOWN_LEVELS[level]
        check_template(path, level)
    for level, mode in ((6, "nbh"), (10, "cfg")):
        res = train(_images(gen), SPECIES, tmp_path / str(level), Mlip3Settings(
            mlp=[str(real_mlp.mlp)], templates_dir=real_mlp.templates_dir, level=level,
            min_dist=2.2, max_dist=5.5, radial_basis_size=10, iteration_limit=5,
            al_mode=mode), None)
        h = read_almtp_header(tmp_path / str(level) / POT)
        assert (h.level, h.al_mode, h.max_dist, h.radial_basis_size) == (level, mode, 5.5, 10)
        assert res.iterations == 5 and all(math.isfinite(v) for v in res.errors.values())


def test_real_train_template_warm_and_restart(real_mlp: Any, gen: Path,
                                              tmp_path: Path) -> None:
    """A fit from the template: the limit reached, a pre-training, a falling finite loss,
    finite training errors on every configuration and atom, min_dist moved to 0.99 x the
    training set's shortest distance, an active set of one row per coefficient; a warm
    start goes on from where it ended; a random restart ends elsewhere."""
    settings = Mlip3Settings(mlp=[str(real_mlp.mlp)], templates_dir=real_mlp.templates_dir,
                             level=8, max_dist=6.5, iteration_limit=30, al_mode="cfg")
    out = tmp_path / "t0"
    res = train(_images(gen), SPECIES, out, settings, None)
    assert sorted(p.name for p in out.iterdir()) == [POT, "train.err", "train.log"]
    assert (res.iterations, res.converged, res.message) == (30, False,
                                                            "iteration limit reached")
    assert res.extra["pretrain_history"] and res.extra["start"] == "template"
    loss = res.loss_history
    assert all(math.isfinite(x) and x > 0 for x in loss) and loss[-1] < loss[0]
    assert (res.errors["n_configs"], res.errors["n_atoms"]) == (30, 39)
    assert all(math.isfinite(v) and v >= 0 for v in res.errors.values())
    h = read_almtp_header(out / POT)
    assert (h.trained, h.al_mode, h.level, h.max_dist) == (True, "cfg", 8, 6.5)
    assert h.min_dist == pytest.approx(0.99 * 3.43348, rel=1e-5)
    assert res.active_set_size == h.radial_funcs_count * h.radial_basis_size + 1 + \
        h.alpha_scalar_moments == 26
    assert 1 <= res.active_set_configs <= 30
    warm = train(_images(gen), SPECIES, tmp_path / "t1",
                 Mlip3Settings(**{**vars(settings), "iteration_limit": 20}), out / POT)
    assert warm.extra["start"] == "warm" and warm.extra["pretrain_history"] == []
    assert warm.loss_history[0] <= loss[-1] * (1 + 1e-6)
    assert warm.loss_history[-1] <= warm.loss_history[0]
    assert "Selection data found" in (tmp_path / "t1" / "train.log").read_text()
    again = train(_images(gen), SPECIES, tmp_path / "t2",
                  Mlip3Settings(**{**vars(settings), "restarts": 1}), None)
    attempts = again.extra["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 2
    assert all(math.isfinite(a["loss"]) for a in attempts)
    assert attempts[0]["loss"] != attempts[1]["loss"]
    assert "Random initialization of radial coefficients" in (
        tmp_path / "t2" / "train.log").read_text()


def test_real_grades_and_selection(real_mlp: Any, real_pots: dict[str, Path], gen: Path,
                                   tmp_path: Path) -> None:
    """Grades: the training set within the selection threshold, its active set at 1;
    candidates beyond it. select_add: valid candidates, each beyond the threshold (not
    always the most extrapolative one: a near-twin of a selected one adds nothing), no
    more than the active set has rows, ordered by grade. nbh mode: per-atom grades whose
    maximum is gamma."""
    mlp = [str(real_mlp.mlp)]
    pot = real_pots["cfg"]
    state = read_selection_state(pot)
    assert state is not None
    own = calculate_grade(pot, gen / "train30.cfg", tmp_path / "own" / "g.cfg", mlp=mlp)
    assert len(own) == 30 and max(own) <= 1.001 + 1e-6
    assert sum(g >= 0.9999 for g in own) >= state.n_configs
    train_dir = tmp_path / "iter" / "1" / "train"
    train_dir.mkdir(parents=True)
    shutil.copyfile(pot, train_dir / POT)
    (tmp_path / "iter" / "1" / "collect").mkdir()
    shutil.copyfile(gen / "train30.cfg", tmp_path / "iter" / "1" / "collect" / "train.cfg")
    potential = Mlip3Trainer(Mlip3Settings(mlp=mlp)).load(train_dir, SPECIES, "cfg")
    potential.work_dir = tmp_path / "work"
    sel = potential.select(_images(gen, "cand58.cfg"))
    grades = sel.initial_grades
    assert len(grades) == 58 and np.all(np.isfinite(grades)) and grades.max() > 1.001
    assert sel.selected and len(set(sel.selected)) == len(sel.selected) <= state.size
    assert all(0 <= k < 58 and grades[k] > 1.001 for k in sel.selected)
    assert list(grades[sel.selected]) == sorted(grades[sel.selected], reverse=True)
    assert len(sel.cfgs) == len(sel.selected) and list(potential.work_dir.iterdir()) == []
    alone = select_add(pot, None, gen / "cand58.cfg", tmp_path / "s" / "new.cfg", mlp=mlp)
    assert alone and all(0 <= k < 58 and grades[k] > 1.001 for k in alone)
    nbh = Mlip3Potential(real_pots["nbh"], SPECIES, mlp=mlp, work_dir=tmp_path / "w")
    assert nbh.al_mode == "nbh"
    for gamma, per_atom in nbh.grade_many(_images(gen, "cand58.cfg")[:6]):
        assert per_atom is not None and per_atom.max() == pytest.approx(gamma, rel=1e-5,
                                                                         abs=1e-5)


def test_real_check_errors_and_the_per_configuration_log(
        real_mlp: Any, real_pots: dict[str, Path], gen: Path, tmp_path: Path) -> None:
    """check_errors' report and its per-configuration lines describe the same errors (one
    line per configuration in file order, atoms adding up to the report's); on the
    training set they are the errors train reported; the Trainer interface returns both."""
    mlp = [str(real_mlp.mlp)]
    pot = real_pots["cfg"]
    res = check_errors(pot, gen / "cand58.cfg", mlp=mlp, out_dir=tmp_path / "ce")
    assert (res["n_configs"], res["n_atoms"]) == (58, 138)
    rows = res["per_config"]
    assert [r["cfg"] for r in rows] == list(range(1, 59))
    assert [r["atoms"] for r in rows] == [c.natoms for c in read_cfgs(gen / "cand58.cfg")]
    epa = np.array([r["energy_per_atom_diff"] for r in rows])
    assert epa.max() == pytest.approx(res["energy_max"], rel=1e-4)
    assert epa.mean() == pytest.approx(res["energy_mae"], rel=1e-3)
    assert max(r["force_max"] for r in rows) == pytest.approx(res["force_max"], rel=1e-4)
    assert max(r["stress_diff"] for r in rows) == pytest.approx(res["stress_max"], rel=1e-4)
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    shutil.copyfile(pot, train_dir / POT)
    trainer = Mlip3Trainer(Mlip3Settings(mlp=mlp))
    fitted = parse_train_log((pot.parent / "train.log").read_text())
    assert fitted.report is not None
    assert trainer.errors(train_dir, SPECIES, gen / "train30.cfg") == pytest.approx(
        errors_from_report(fitted.report), rel=1e-3)
    per = trainer.config_errors(train_dir, SPECIES, gen / "cand58.cfg", tmp_path / "w")
    assert per == [{k: v for k, v in r.items() if k != "cfg"} for r in rows]
