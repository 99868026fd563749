"""The MTP-level sweep (`smallcell sweep`, `make sweep`) on the embedded trainer."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from smallcell import cli
from smallcell.engines.eam_labeler import EAMLabeler
from smallcell.engines.motep_mtp import POT, MotepPotential, TrainResult, TrainSettings
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import atoms_to_cfg, cfg_to_atoms, read_cfgs, write_cfgs
from smallcell.stages import sweep
from smallcell.structures import displace, strain, supercell
from smallcell.study import sweep_report

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "tiny.yaml"  # species [Pb], trainer level 6, max_iter 150


def _labeled_set(path: Path, n: int, seed: int, amp: float) -> Path:
    rng = np.random.default_rng(seed)
    labeler = EAMLabeler()
    cfgs = []
    for k in range(n):
        task = path.parent / f"{path.stem}-label" / str(k)
        task.mkdir(parents=True)
        atoms = displace(strain(supercell("fcc", 4.95, (1, 1, 1), "Pb"), 0.03, rng), amp,
                         "uniform", rng)
        cfgs.append(atoms_to_cfg(labeler.label(task, atoms), ["Pb"]))
    write_cfgs(path, cfgs)
    return path


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep-data")
    return {"data": _labeled_set(root / "train.cfg", 12, 1, 0.15),
            "near": _labeled_set(root / "near.cfg", 5, 2, 0.05),
            "far": _labeled_set(root / "far.cfg", 5, 3, 0.25)}


def _sweep(out: Path, data: Path, tests: list[Path], levels: list[int],
           config: Path = TINY) -> int:
    return cli.main(["sweep", "--levels", *map(str, levels), "--data", str(data),
                     "--test", *map(str, tests), "--out", str(out), "--config", str(config)])


@pytest.fixture(scope="module")
def swept(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    assert _sweep(out, sets["data"], [sets["near"], sets["far"]], [2, 4, 6]) == 0
    return out


def _force_rmse(pot: Path, path: Path) -> float:
    """By hand: RMS over atoms of |F_ref - F_ML|."""
    p = MotepPotential(pot, None, ["Pb"], "nbh")
    d = []
    for c in read_cfgs(path):
        _, f, _ = p.evaluate(cfg_to_atoms(c, ["Pb"]))
        d.append(np.linalg.norm(f - c.forces, axis=1))
    return float(np.sqrt(np.mean(np.concatenate(d) ** 2)))


def test_every_level_trained_and_tested(swept: Path, sets: dict[str, Path]) -> None:
    results = json.loads((swept / "results.json").read_text())
    assert [r["level"] for r in results] == [2, 4, 6]
    for r in results:
        folder = swept / f"level{r['level']:02d}"
        assert (folder / "done").exists() and (folder / "train" / POT).exists()
        assert r["n_train"] == 12 and r["trainer"] == "motep"
        assert r["train_wall_seconds"] > 0 and r["train_cpu_seconds"] > 0
        assert set(r["tests"]) == {"near", "far"}
        # fitted to convergence, or said not to be (5 rounds of max_iter spent)
        assert r["converged"] or len(r["rounds"]) == sweep.MAX_ROUNDS
        assert r["iterations"] == sum(x["iterations"] for x in r["rounds"])
        for name in ("near", "far"):
            got = r["tests"][name]["force_rmse"]
            assert got == pytest.approx(_force_rmse(folder / "train" / POT, sets[name]),
                                        rel=1e-9)
    # a larger basis fits its own training set better
    train_f = [r["train_errors"]["force_rmse"] for r in results]
    assert train_f[2] < train_f[0]


def test_table_and_figures_show_the_result_files(swept: Path) -> None:
    results = {r["level"]: r for r in json.loads((swept / "results.json").read_text())}
    md = (swept / "sweep.md").read_text()
    for png in ("rmse_vs_level.png", "train_time_vs_level.png"):
        assert (swept / png).stat().st_size > 10_000 and f"({png})" in md
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 3
    header = [h.strip() for h in md.split("\n| level")[1].split("\n")[0].split("|")[1:-1]]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        r = results[int(cells[0])]
        by = dict(zip(["level", *header], cells, strict=True))
        assert float(by["far F"]) == pytest.approx(1000 * r["tests"]["far"]["force_rmse"],
                                                   abs=0.006)
        assert float(by["near E"]) == pytest.approx(
            1000 * r["tests"]["near"]["energy_rmse"], abs=0.0006)
        assert float(by["train wall s"]) == pytest.approx(r["train_wall_seconds"], abs=0.06)


def test_rerun_keeps_finished_levels_and_adds_tests(swept: Path, sets: dict[str, Path],
                                                    tmp_path: Path) -> None:
    before = {lv: (swept / f"level{lv:02d}" / "train" / POT).read_bytes() for lv in (2, 4)}
    walls = {r["level"]: r["train_wall_seconds"]
             for r in json.loads((swept / "results.json").read_text())}
    extra = sets["far"].parent / "extra" / "far.cfg"  # same stem, other folder
    extra.parent.mkdir(exist_ok=True)
    extra.write_bytes(sets["near"].read_bytes())
    far_before = {r["level"]: r["tests"]["far"]["force_rmse"]
                  for r in json.loads((swept / "results.json").read_text())}
    assert _sweep(swept, sets["data"], [sets["near"], sets["far"], extra], [2, 4]) == 0
    results = {r["level"]: r for r in json.loads((swept / "results.json").read_text())}
    # two files named far.cfg: both named by their folder, on every level (6 included)
    far = f"{sets['far'].parent.name}/far"
    for lv in (2, 4, 6):
        assert set(results[lv]["tests"]) == ({"near", far, "extra/far"} if lv != 6
                                             else {"near", far})
        assert results[lv]["tests"][far]["force_rmse"] == far_before[lv]  # renamed only
    for lv in (2, 4):
        assert (swept / f"level{lv:02d}" / "train" / POT).read_bytes() == before[lv]
        assert results[lv]["train_wall_seconds"] == walls[lv]  # not trained again
        assert results[lv]["tests"]["extra/far"]["force_rmse"] == pytest.approx(
            results[lv]["tests"]["near"]["force_rmse"], rel=1e-12)
    assert 6 in results  # levels not asked for this time stay in the table
    header = (swept / "sweep.md").read_text().split("\n| level")[1].split("\n")[0]
    assert f"| {far} F |" in header and "| extra/far F |" in header


def test_other_data_is_refused(swept: Path, sets: dict[str, Path], capsys) -> None:
    assert _sweep(swept, sets["near"], [sets["far"]], [2]) == 2
    err = capsys.readouterr().err
    assert "level02 was trained on" in err and "train.cfg" in err and "--out" in err


@pytest.mark.parametrize("case", ["missing data", "unlabeled test", "bad level", "bad type"])
def test_bad_input_names_the_file(case: str, sets: dict[str, Path], tmp_path: Path,
                                  capsys) -> None:
    data, tests, levels = sets["data"], [sets["near"]], [2]
    if case == "missing data":
        data = tmp_path / "nope.cfg"
        want = "nope.cfg: no such file"
    elif case == "unlabeled test":
        cfgs = read_cfgs(sets["near"])
        cfgs[2].energy = None
        tests = [tmp_path / "unlabeled.cfg"]
        write_cfgs(tests[0], cfgs)
        want = "unlabeled.cfg: configuration 3 has no Energy"
    elif case == "bad type":
        cfgs = read_cfgs(sets["near"])
        cfgs[0].types[1] = 1
        tests = [tmp_path / "twotypes.cfg"]
        write_cfgs(tests[0], cfgs)
        want = "twotypes.cfg: configuration 1 has type 1 but the config's species are ['Pb']"
    else:
        levels = [30]
        want = "level 30: expected an MTP level from 2 to 28"
    assert _sweep(tmp_path / "out", data, tests, levels) == 2
    assert want in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("level*/done"))


def test_make_sweep_without_data_prints_its_usage() -> None:
    res = subprocess.run(["make", "-s", "sweep"], cwd=REPO, capture_output=True, text=True,
                         check=False, timeout=60)
    assert res.returncode == 2 and "usage: make sweep DATA=" in res.stdout


def test_test_sets_of_one_name_are_told_apart_by_their_folders(tmp_path: Path) -> None:
    """Issue 17: two files named labeled.cfg were 'labeled' and 'sample/labeled'."""
    vasp, sample = tmp_path / "iter/3/vasp/labeled.cfg", tmp_path / "iter/3/sample/labeled.cfg"
    near = tmp_path / "near.cfg"
    assert sweep.test_names([vasp, sample, near]) == {
        "vasp/labeled": vasp, "sample/labeled": sample, "near": near}
    a, b = tmp_path / "a/x/labeled.cfg", tmp_path / "b/x/labeled.cfg"
    assert sweep.test_names([a, b]) == {"a/x/labeled": a, "b/x/labeled": b}
    with pytest.raises(SmallcellError, match="given twice"):
        sweep.test_names([near, tmp_path / "x" / ".." / "near.cfg"])


class _FakeTrainer:
    """Converges at its `converge_at`-th call; records every call."""

    name = "fake"

    def __init__(self, converge_at: int) -> None:
        self.converge_at = converge_at
        self.calls: list[tuple[TrainSettings, Path | None]] = []

    def train(self, images, species, out_dir: Path, settings: TrainSettings,
              start: Path | None) -> TrainResult:
        self.calls.append((settings, start))
        k = len(self.calls)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train.log").write_text(f"log of fit {k}\n")
        return TrainResult(0.0, settings.max_iter, k >= self.converge_at, [], {}, 0, 0,
                           f"fit {k}")

    def start_file(self, train_dir: Path) -> Path:
        return train_dir / POT


@pytest.mark.parametrize("converge_at", [3, 99])
def test_a_level_goes_on_from_its_fit_until_converged(converge_at: int,
                                                      tmp_path: Path) -> None:
    trainer = _FakeTrainer(converge_at)
    settings = TrainSettings(level=6, max_iter=40, restarts=2)
    res, rounds = sweep.fit_level(trainer, [], ["Pb"], tmp_path, settings, 6, max_rounds=4,
                                  say=lambda _: None)
    n = min(converge_at, 4)
    assert len(trainer.calls) == len(rounds) == n and res.converged == (converge_at <= 4)
    assert trainer.calls[0] == (settings, None)  # the configured fit, restarts included
    for s, start in trainer.calls[1:]:  # then warm from its own potential, no restarts
        assert start == tmp_path / POT and s.restarts == 0 and s.max_iter == 40
    assert [r["converged"] for r in rounds] == [False] * (n - 1) + [res.converged]
    log = (tmp_path / "train.log").read_text()
    assert all(f"# sweep round {k}:" in log and f"log of fit {k}" in log
               for k in range(1, n + 1))


def test_a_level_that_does_not_converge_is_marked_loudly(
        sets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: unfinished fits read as 'higher levels are worse'. A fit that cannot
    converge (2 iterations a round) is NOT converged in the table, warned about above it
    and drawn hollow with a 'not converged' legend entry."""
    config = tmp_path / "short.yaml"
    config.write_text(TINY.read_text().replace(
        "trainer: {level: 6, max_iter: 150}",
        "trainer: {level: 6, max_iter: 2, restarts: 0, tolerance: 1.0e-9}"))
    out = tmp_path / "sweep"
    assert _sweep(out, sets["data"], [sets["near"]], [2], config) == 0
    (r,) = json.loads((out / "results.json").read_text())
    assert not r["converged"] and len(r["rounds"]) == sweep.MAX_ROUNDS
    assert r["iterations"] <= 2 * sweep.MAX_ROUNDS
    md = (out / "sweep.md").read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| 2 |")]
    assert "**NO** (not converged)" in row
    assert "**WARNING: level 2 (" in md and "did NOT converge" in md

    figs = []
    monkeypatch.setattr(sweep_report, "save", lambda fig, path: figs.append(fig) or path)
    sweep_report.figures([r], tmp_path)
    for fig in figs:
        axes = [ax for ax in fig.axes if ax.lines]
        assert axes
        for ax in axes:
            hollow = [line for line in ax.lines if line.get_markerfacecolor() == "white"]
            assert hollow and all(list(line.get_xdata()) == [2] for line in hollow)
            assert any("not converged" in t.get_text() for t in ax.get_legend().get_texts())
            assert any(t.get_text() == "not converged" for t in ax.texts)
