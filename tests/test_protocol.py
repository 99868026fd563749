"""The small-cell protocol (Algorithm 3): `stages` of larger cells, their config, the
stage of every iteration, transitions by convergence or cap, and what status and the
report say of them."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from smallcell import cli, protocol
from smallcell.config import load_config, parse_config
from smallcell.engines.motep_mtp import MotepPotential
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import cfg_to_atoms, read_cfgs
from smallcell.loop import verdict
from smallcell.stages.common import Iteration
from smallcell.state import RunPaths, atomic_write_json, read_json
from smallcell.status import finished, status_lines
from smallcell.structures import md_runs

REPO = Path(__file__).resolve().parents[1]

THREE = """\
species: [Pb]
structure: {lattice: fcc, a: 4.95, displacement: 0.1}
grid: {temperatures: [300.0, 600.0], pressures: [1.0]}
md: {steps: 80, timestep: 2.0}
initial: {n_configs: 8}
trainer: {level: 4, max_iter: 60, radial_basis_size: 4}
select: {max_selected: 4}
sample: {size: 6}
run: {seed: 3, jobs: 2, max_iterations: 20}
stages:
  - {cell: [1, 1, 1], max_iterations: 2}
  - {cell: [1, 1, 2], max_iterations: 1, md_steps: 50}
  - name: big
    cell: [2, 2, 2]
    max_iterations: 1
    md_steps: 30
    temperatures: {start: 300, stop: 500, step: 100}
validation: {cell: [3, 3, 3], steps: 40, sample: 4, stage_steps: 30, stage_sample: 3,
             test_set: 5}
"""


# ------------------------------------------------------------------------------ config


def test_the_protocol_example() -> None:
    """examples/pb-protocol-3stages.yaml: the three stages the issue names, then 3x3x3
    (its run time is the bench `protocol` case in BENCHMARKS.md)."""
    cfg = load_config(REPO / "examples" / "pb-protocol-3stages.yaml")
    cells = [protocol.effective(cfg, k)["structure"]["cell"] for k in range(3)]
    assert cells == [[1, 1, 1], [1, 1, 2], [2, 2, 2]] and protocol.n_stages(cfg) == 3
    assert all(protocol.cap(cfg, k) for k in range(3))
    assert cfg["validation"]["cell"] == [3, 3, 3]
    assert cfg["run"]["max_iterations"] >= 1 + sum(protocol.cap(cfg, k) for k in range(3))


def test_stages_are_overrides_of_the_top_level() -> None:
    cfg = parse_config(THREE)
    assert protocol.n_stages(cfg) == 3
    assert [protocol.name(cfg, k) for k in range(3)] == ["1x1x1", "1x1x2", "big"]
    assert [protocol.cap(cfg, k) for k in range(3)] == [2, 1, 1]
    big = protocol.effective(cfg, 2)
    assert big["stage"] == 2 and big["structure"]["cell"] == [2, 2, 2]
    assert big["grid"]["temperatures"] == [300.0, 400.0, 500.0] and big["md"]["steps"] == 30
    assert big["grid"]["pressures"] == [1.0] and big["structure"]["a"] == 4.95  # inherited
    assert protocol.effective(cfg, 1)["md"]["steps"] == 50
    assert cfg["md"]["steps"] == 80 and cfg["structure"]["cell"] == [1, 1, 1]  # untouched
    # the frozen copy of an effective config loads back to the same values
    again = parse_config(big.dump())
    assert again.data == big.data
    # without stages: one stage, the top level
    plain = parse_config("{}")
    assert protocol.n_stages(plain) == 1 and protocol.effective(plain, 0).data == plain.data
    with pytest.raises(ValueError, match="stage 3 of a protocol with 3"):
        protocol.effective(cfg, 3)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("stages: 3\n", 1, "stages must be a list of mappings"),
    ("stages:\n  - {cell: [1, 1, 1]}\n  - {cel: [1, 1, 2]}\n", 3,
     "unknown key 'stages[1].cel'; did you mean 'stages[1].cell'?"),
    ("stages:\n  - {cell: [1, 1]}\n", 2, "stages[0].cell must have exactly 3 items"),
    ("stages:\n  - cell: [1, 1, 1]\n    max_iterations: 0\n", 3,
     "stages[0].max_iterations must be >= 1"),
    ("grid:\n  temperatures: {start: 300, stop: 100, step: 100}\n", 2,
     "grid.temperatures: a range needs step > 0 and stop >= start"),
    ("grid:\n  temperatures: {start: 300, stop: 500}\n", 2,
     "needs exactly the keys start, stop, step"),
    ("grid:\n  temperatures: {start: 0, stop: 500, step: 100}\n", 2,
     "grid.temperatures[0] must be > 0"),
    ("engines: {explorer: lammps, trainer: mlip3}\nstages:\n  - {}\n"
     "  - {policy: dopt_batch}\n", 4, "stages[1].policy dopt_batch needs the embedded grader"),
])
def test_bad_stages_name_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SmallcellError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and words in str(info.value)


def test_ranges_include_their_stop() -> None:
    g = parse_config("grid:\n  temperatures: {start: 100, stop: 400, step: 150}\n"
                     "  pressures: {start: 0, stop: 1, step: 0.1}\n")["grid"]
    assert g["temperatures"] == [100.0, 250.0, 400.0]
    assert g["pressures"] == [round(0.1 * k, 10) for k in range(11)]


def test_random_tp_draws_per_iteration() -> None:
    cfg = parse_config("grid: {temperatures: [200, 800], pressures: [0, 5000], draws: 5, "
                       "seeds_per_point: 2}\nrun: {seed: 4}\n")
    runs = md_runs(cfg, 1)
    assert len(runs) == 10 and [r.replica for r in runs[:2]] == [0, 1]
    points = {(r.temperature, r.pressure) for r in runs}
    assert len(points) == 5
    assert all(200 <= t <= 800 and 0 <= p <= 5000 for t, p in points)
    assert md_runs(cfg, 1) == runs  # the same iteration draws the same points
    assert {(r.temperature, r.pressure) for r in md_runs(cfg, 2)} != points
    assert len({r.name for r in runs}) == 10


# ------------------------------------------------------------------ stage bookkeeping


def _summaries(root: Path) -> list[dict]:
    paths = RunPaths(root)
    return [read_json(paths.summary(i)) for i in paths.iterations()
            if paths.summary(i).exists()]


def _fake(root: Path, cfg, conv: list[bool], new: list[int] | None = None,
          errors: list[float | None] | None = None,
          refit: list[bool] | None = None) -> list[dict]:
    """Summaries of iterations 0..len(conv)-1 by the protocol's rules, without running
    anything: open each iteration with its stage's config, record its protocol fields
    (`new`: labels each iteration added, default none; `errors`: the stop rule's force
    error of each)."""
    out = []
    for i, c in enumerate(conv):
        it = protocol.open_iteration(root, i, cfg)
        fields = protocol.summary_fields(it, c and i > 0, (new or [0] * len(conv))[i],
                                         (errors or [None] * len(conv))[i],
                                         (refit or [False] * len(conv))[i])
        s = {"iteration": i, "converged": c and i > 0, **fields}
        atomic_write_json(it.paths.summary(i), s)
        out.append(s)
    return out


def test_stage_ends_by_convergence_or_cap(tmp_path: Path) -> None:
    cfg = parse_config("run: {converged_iterations: 2}\nstages:\n"
                       "  - {cell: [1, 1, 1], max_iterations: 3}\n"
                       "  - {cell: [1, 1, 2], max_iterations: 2}\n")
    #            0      1     2      3     4     5
    s = _fake(tmp_path, cfg, [False, True, False, True, True, False])
    assert [x["stage"] for x in s] == [0, 0, 0, 0, 1, 1]
    assert [x["stage_iteration"] for x in s] == [0, 1, 2, 3, 1, 2]
    assert [x["converged_streak"] for x in s] == [0, 1, 0, 1, 1, 0]  # reset by the new stage
    assert [x["stage_end"] for x in s] == [None, None, None, "iteration cap", None,
                                           "iteration cap"]
    assert [finished(x) for x in s] == [False] * 5 + [True]
    assert verdict(s[-1]).startswith("stopped: the iteration cap of 2 was reached")
    frozen = [Iteration.open(tmp_path, i).cfg["structure"]["cell"] for i in range(6)]
    assert frozen == [[1, 1, 1]] * 4 + [[1, 1, 2]] * 2
    # two converged iterations in a row end a stage before its cap
    s = _fake(tmp_path / "b", cfg, [False, True, True, True, True])
    assert [x["stage_end"] for x in s] == [None, None, "converged", None, "converged"]
    assert [x["stage"] for x in s] == [0, 0, 0, 1, 1] and finished(s[-1])
    assert verdict(s[-1]) == ("converged: no MD run broke in 2 consecutive iterations (the "
                              "last of 2 stages, 1x1x2)")


def test_a_refit_must_pass_its_own_md_before_the_stage_ends(tmp_path: Path) -> None:
    """The stop rule met by an iteration that added labels: its refitted potential has not
    run the stage's MD, so the next iteration checks it; passing ends the stage."""
    cfg = parse_config("{}")
    #                               0      1     2     3
    s = _fake(tmp_path, cfg, [False, True, False, True], new=[24, 5, 3, 0])
    assert [x["check_due"] for x in s] == [False, True, False, False]
    assert [x["check"] for x in s] == [False, False, True, False]
    # the check broke (iteration 2): the stage goes on; iteration 3 met the rule with
    # nothing added (its MD ran the potential it hands on): the stage ends there
    assert [x["stage_end"] for x in s] == [None, None, None, "converged"]
    assert "check MD broke" in s[2]["stop_note"]
    s = _fake(tmp_path / "b", cfg, [False, True, True], new=[24, 5, 0])
    assert s[2]["check"] and s[2]["stage_end"] == "converged" and finished(s[2])
    assert verdict(s[2]) == ("converged: no MD run broke (the refitted potential passed its "
                             "check MD)")


def test_a_final_refit_must_pass_its_own_md_too(tmp_path: Path) -> None:
    """The stop rule met with nothing new, but the potential was refitted (the final
    refit): not the end yet, the next iteration checks the refit."""
    cfg = parse_config("{}")
    s = _fake(tmp_path, cfg, [False, True, True], new=[24, 0, 0], refit=[False, True, False])
    assert [x["stage_end"] for x in s] == [None, None, "converged"]
    assert s[1]["check_due"] and s[1]["final_fit"] and s[2]["check"]


def test_a_check_due_at_the_cap_still_runs(tmp_path: Path) -> None:
    cfg = parse_config("stages:\n  - {cell: [1, 1, 1], max_iterations: 2}\n")
    s = _fake(tmp_path, cfg, [False, False, True, True], new=[24, 4, 2, 0])
    assert [x["stage_end"] for x in s] == [None, None, None, "converged"]
    assert s[2]["check_due"] and s[3]["stage_iteration"] == 3  # one past the cap of 2
    s = _fake(tmp_path / "b", cfg, [False, False, True, False], new=[24, 4, 2, 3])
    assert s[3]["stage_end"] == "iteration cap"  # the check broke past the cap: capped


def test_the_accuracy_rule_waits_for_the_force_error_to_stop_falling(tmp_path: Path) -> None:
    cfg = parse_config("stop: {rule: accuracy, window: 2}\n")
    errs = [None, 0.060, 0.040, 0.030, 0.0295, 0.0301]
    s = _fake(tmp_path, cfg, [False, True, True, True, True, True], errors=errs)
    # 1-2: not enough history; 3: 30 < 0.95 x 40 (still falling); 4: 29.5 > 0.95 x 30
    assert [x["stage_end"] for x in s] == [None, None, None, None, "converged", None]
    assert "still falling" in s[3]["stop_note"] and "stopped falling" in s[4]["stop_note"]
    assert "2 earlier measurements" in s[2]["stop_note"]
    assert verdict(s[4]).startswith("converged: no MD run broke (accuracy rule: MD-sample "
                                    "mean force error 29.5 meV/Å has stopped falling")
    # a target reached ends it at once; a broken MD never does
    cfg = parse_config("stop: {rule: accuracy, force_target: 0.05}\n")
    s = _fake(tmp_path / "b", cfg, [False, False, True], errors=[None, 0.04, 0.045])
    assert [x["stage_end"] for x in s] == [None, None, "converged"]
    assert "at or below the target 50.0" in s[2]["stop_note"]


@pytest.mark.parametrize(("text", "key"), [
    ("stop: {rule: accuracy}\nsample: {size: 0}\n", "sample.size > 0"),
    ("stop: {rule: accuracy, metric: test}\n", "initial.test_fraction > 0"),
    ("stop: {rule: accurate}\n", "stop.rule"),
    ("stop: {rule: accuracy, window: 0}\n", "stop.window"),
    ("stop: {min_improvement: 2}\n", "stop.min_improvement"),
])
def test_stop_rule_settings_are_checked(text: str, key: str) -> None:
    with pytest.raises(SmallcellError, match=key.replace(".", r"\.").replace("+", r"\+")):
        parse_config(text)


def test_a_frozen_iteration_keeps_its_stage(tmp_path: Path) -> None:
    cfg = parse_config("stages:\n  - {cell: [1, 1, 1]}\n  - {cell: [1, 1, 2]}\n")
    it = protocol.open_iteration(tmp_path, 0, cfg)
    assert it.cfg["stage"] == 0
    later = parse_config("stages:\n  - {cell: [2, 2, 2]}\n  - {cell: [1, 1, 2]}\n")
    assert protocol.open_iteration(tmp_path, 0, later).cfg["structure"]["cell"] == [1, 1, 1]


def test_runs_without_stages_behave_as_before(tmp_path: Path) -> None:
    cfg = parse_config("{}")
    s = _fake(tmp_path, cfg, [False, False, True])
    assert [x["stage"] for x in s] == [0, 0, 0] and [x["n_stages"] for x in s] == [1, 1, 1]
    assert [x["stage_end"] for x in s] == [None, None, "converged"] and finished(s[-1])
    assert verdict(s[-1]) == "converged: no MD run broke"
    # a summary written before the protocol existed keeps its old meaning
    assert finished({"converged": True, "converged_streak": 1, "converged_needed": 1})
    assert not finished({"converged": True, "converged_streak": 1, "converged_needed": 2})


# ------------------------------------------------------------ a three-stage embedded run


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("three")
    (root / "p.yaml").write_text(THREE)
    res = subprocess.run([str(REPO / "bin" / "smallcell"), "--run-dir", str(root), "iter",
                          "--config", str(root / "p.yaml")], capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, res.stdout + res.stderr


def test_three_stages_run_in_order(three: tuple[Path, str]) -> None:
    root, out = three
    s = _summaries(root)
    stages = [x["stage"] for x in s]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    assert finished(s[-1]) and s[-1]["stage"] == 2
    for x in s:
        want = protocol.effective(parse_config(THREE), x["stage"])
        assert x["cell"] == want["structure"]["cell"]  # the summary records the stage's cell
        assert x["stage_name"] == ["1x1x1", "1x1x2", "big"][x["stage"]]
    # each stage ended (converged or at its cap) where the next begins
    for a, b in itertools.pairwise(s):
        assert (b["stage"] == a["stage"] + 1) == bool(a["stage_end"])
    # explore ran the stage's cell: 4, 8 and 32 atoms
    for x in s[1:]:
        run = sorted((root / "iter" / str(x["iteration"]) / "explore").glob("*/md.log"))[0]
        n_atoms = {0: 4, 1: 8, 2: 32}[x["stage"]]
        data = (run.parent / "data.lmp").read_text()
        assert f"{n_atoms} atoms" in data
    # the last stage's range of temperatures, the middle stage's MD length
    last = s[-1]["iteration"]
    assert sorted({r.temperature for r in md_runs(Iteration.open(root, last).cfg, last)}) == [
        300.0, 400.0, 500.0]
    assert "stage 1/3 (1x1x1)" in out and "stage 2/3 starts with iteration" in out


def test_each_stage_hands_on_a_final_refit_that_passed_its_md(three: tuple[Path, str]
                                                               ) -> None:
    """Where a stage met its stop rule, its potential was refitted from the previous one
    and from trainer.final_restarts fresh templates, each to convergence (no screen), the
    lowest loss kept; the next iteration explored it; the stage ended with it. A stage
    whose data did not change keeps the earlier final refit instead of repeating it."""
    root, _ = three
    s = _summaries(root)
    finals = [x for x in s if x["final_fit"]]
    assert finals
    for x in finals:
        i = x["iteration"]
        info = read_json(root / "iter" / str(i) / "train" / "errors.json")
        starts = info["extra"]["attempts"]
        assert starts[0]["start"] == "warm start" and len(starts) == 4
        assert all(a["converged"] for a in starts) and not info["extra"]["continued"]
        assert info["extra"]["screen_iterations"] == 3000  # unscreened: the whole limit
        assert min(a["loss"] for a in starts) == pytest.approx(info["loss_history"][-1])
        nxt = s[i + 1]
        assert x["check_due"] and nxt["check"] and nxt["potential_fit"] == i
    ends = [x for x in s if x["stage_end"]]
    for x in ends:  # every stage hands on a final refit that ran the stage's MD itself
        info = read_json(root / "iter" / str(x["potential_fit"]) / "train" / "errors.json")
        assert info["final_quality"] and x["potential_checked"]


def test_data_and_potential_carry_forward(three: tuple[Path, str]) -> None:
    root, _ = three
    s = _summaries(root)
    first = next(x for x in s if x["stage"] == 1)["iteration"]
    prev = root / "iter" / str(first - 1)
    cur = root / "iter" / str(first)
    before = (prev / "collect" / "train.cfg").read_bytes()
    assert (cur / "collect" / "train.cfg").read_bytes().startswith(before)
    errors = read_json(cur / "train" / "errors.json")
    assert errors.get("warm_start") or errors.get("skipped")
    plan = json.loads((cur / "explore" / "plan.json").read_text())
    assert plan["runs"]
    text = (cur / "explore" / sorted(plan["runs"])[0] / "in.lammps").read_text()
    assert f'"load_from=../../../{first - 1}/train/pot.almtp"' in text  # the previous fit
    assert len(read_cfgs(cur / "collect" / "train.cfg")) == s[first]["n_train"]


def test_status_and_report_show_the_transitions(three: tuple[Path, str]) -> None:
    root, _ = three
    lines = status_lines(root)
    s = _summaries(root)
    ended = [x for x in s if x["stage_end"] and x["stage"] < 2]
    assert len(ended) == 2
    for x in ended:
        k = x["stage"]
        line = next(ln for ln in lines if ln.strip().startswith(f"stage {k + 1}/3 ("))
        assert line.endswith(f"-> stage {k + 2}/3")
    rows = [ln.split() for ln in lines[1:] if ln.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == [f"{x['stage'] + 1}/3" for x in s]
    assert cli.main(["--run-dir", str(root), "report"]) == 0
    md = (root / "report" / "report.md").read_text()
    for k, name in enumerate(("1x1x1", "1x1x2", "big, 2x2x2")):
        assert f"- stage {k + 1}/3 ({name}): iterations" in md
    assert md.count("| 1/3 | 1x1x1 |") == sum(x["stage"] == 0 for x in s)
    assert md.count("| 3/3 | 2x2x2 |") == sum(x["stage"] == 2 for x in s)


# --------------------------------------------------------------- large-cell validation


def test_validation_after_the_last_stage(three: tuple[Path, str]) -> None:
    """The final potential on 3x3x3 (108 atoms) at the last stage's temperatures: gamma
    statistics of its MD and its errors on labeled configurations, computed by hand."""
    root, out = three
    vdir = root / "validation"
    v = read_json(vdir / "summary.json")
    last = _summaries(root)[-1]["iteration"]
    assert (vdir / "done").exists() and v["iteration"] == last
    assert v["cell"] == [3, 3, 3] and v["n_atoms"] == 108 and v["steps"] == 40
    assert sorted(r["temperature"] for r in v["runs"]) == [300.0, 400.0, 500.0]
    for r in v["runs"]:
        g = read_json(vdir / "explore" / r["run"] / "gamma.json")
        assert g["max"] == r["gamma_max"] and "108 atoms" in (
            vdir / "explore" / r["run"] / "data.lmp").read_text()
    assert v["gamma_max"] == max(r["gamma_max"] for r in v["runs"])
    rows = read_json(vdir / "sample" / "errors.json")["configs"]
    assert v["sample_n"] == len(rows) == 4
    pot = MotepPotential.load(root / "iter" / str(last) / "train", ["Pb"], "nbh")
    row = rows[0]
    [lab] = read_cfgs(vdir / "label" / str(row["task"]) / "labeled.cfg")
    ref = cfg_to_atoms(lab, ["Pb"])
    _, f, _ = pot.evaluate(ref.copy())
    df = np.linalg.norm(f - ref.get_forces(), axis=1)
    assert row["force_error"] == pytest.approx(np.sqrt(np.mean(df**2)), rel=1e-9)
    assert v["sample_force_error_mean"] == pytest.approx(np.mean([r["force_error"]
                                                                   for r in rows]))
    said = "validation 3x3x3 (108 atoms, 3 MD runs of 40 steps)"
    assert said in out and any(ln.startswith(said) for ln in status_lines(root))
    assert cli.main(["--run-dir", str(root), "report"]) == 0
    md = (root / "report" / "report.md").read_text()
    assert f"iteration {last}'s potential on the 3x3x3 cell (108 atoms)" in md
    assert f"force {1000 * v['sample_force_error_mean']:.1f} meV/Å" in md
    # the headline says what the validation found, beside the loop's verdict
    headline = md.split("\n")[2]
    assert headline.startswith("**Converged at iteration")
    assert (f"FAILED: {v['n_broke']} of 3 MD runs on the 3x3x3 cell broke" if v["n_broke"]
            else "The large-cell validation passed: none of 3 MD runs") in headline


def test_a_broken_validation_is_in_the_headline(three: tuple[Path, str],
                                                tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(three[0], root)
    v = read_json(root / "validation" / "summary.json")
    atomic_write_json(root / "validation" / "summary.json", {**v, "n_broke": 2})
    assert cli.main(["--run-dir", str(root), "report"]) == 0
    headline = (root / "report" / "report.md").read_text().split("\n")[2]
    assert "But the large-cell validation FAILED: 2 of 3 MD runs on the 3x3x3 cell broke" \
        in headline


def test_clean_iter_retires_the_validation_of_a_removed_iteration(
        three: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(three[0], root)
    last = _summaries(root)[-1]["iteration"]
    before = (root / "validation" / "summary.json").read_bytes()
    assert cli.main(["--run-dir", str(root), "clean-iter", str(last), "--force"]) == 0
    assert not (root / "validation").exists()
    assert (root / f"validation.iter{last}" / "summary.json").read_bytes() == before  # kept
    assert not any(ln.startswith("validation ") for ln in status_lines(root))
    assert cli.main(["--run-dir", str(root), "report"]) == 0
    md = (root / "report" / "report.md").read_text()
    assert "3x3x3" not in md.split("## Large-cell validation")[1].split("##")[0]


def test_validation_reruns_nothing_and_keeps_an_older_one(three: tuple[Path, str],
                                                           tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(three[0], root)
    summary = root / "validation" / "summary.json"
    before = summary.stat().st_mtime_ns
    config = str(root / "p.yaml")
    assert cli.main(["--run-dir", str(root), "validate", "--config", config]) == 0
    assert summary.stat().st_mtime_ns == before
    # a validation of another potential is moved aside, not overwritten
    atomic_write_json(root / "validation" / "potential.json", {"iteration": 1})
    assert cli.main(["--run-dir", str(root), "validate", "--config", config]) == 0
    assert (root / "validation.iter1" / "summary.json").read_bytes() == (
        three[0] / "validation" / "summary.json").read_bytes()
    assert (root / "validation" / "done").exists()
    # other settings (a longer MD): a new validation, the earlier one kept
    text = (root / "p.yaml").read_text().replace("steps: 40, sample: 4", "steps: 50, sample: 4")
    (root / "p.yaml").write_text(text)
    assert cli.main(["--run-dir", str(root), "validate", "--config", config]) == 0
    last = read_json(root / "validation" / "summary.json")
    assert last["steps"] == 50 and (root / "validation.iter{}".format(last["iteration"])
                                    / "done").exists()


def test_validate_needs_a_cell(tmp_path: Path, capsys) -> None:
    (tmp_path / "c.yaml").write_text("{}\n")
    assert cli.main(["--run-dir", str(tmp_path), "validate", "--config",
                     str(tmp_path / "c.yaml")]) == 2
    assert "validation.cell is not set" in capsys.readouterr().err


# ------------------------------------------------------------ per-stage validation


def test_each_stage_end_is_validated_on_the_target_cell(three: tuple[Path, str]) -> None:
    """Issue 19: the potential ending each stage but the last runs the validation MD on
    3x3x3 and is measured on one fixed test set (drawn once, never trained on) and on its
    own MD sample, with the labels and DFT cost spent so far; the final validation is
    measured on the same test set."""
    root, out = three
    s = _summaries(root)
    ends = [x["iteration"] for x in s if x.get("stage_end") and not finished(x)]
    assert len(ends) == 2
    sources = set()
    for i in ends:
        cdir = root / "iter" / str(i) / "validate"
        c = read_json(cdir / "summary.json")
        assert (cdir / "done").exists() and c["iteration"] == i and c["n_atoms"] == 108
        assert c["steps"] == 30 and c["stage"] == s[i]["stage"] and c["stage_end"]
        assert c["sample_n"] == 3 and c["testset"]["n"] == c["testset"]["n_labeled"] == 5
        sources.add(c["testset"]["source"])
        upto = [x for x in s if x["iteration"] <= i]
        assert c["labels_so_far"] == sum(x["n_labeled"] for x in upto)
        assert c["dft_seconds_so_far"] == pytest.approx(sum(x["dft_seconds_train"]
                                                            for x in upto))
        # the test set's errors are the potential's own, recomputed here
        pot = MotepPotential.load(root / "iter" / str(i) / "train", ["Pb"], "nbh")
        src = root / c["testset"]["source"]
        sq = []
        for k in range(5):
            [lab] = read_cfgs(src / "testset" / str(k) / "labeled.cfg")
            ref = cfg_to_atoms(lab, ["Pb"])
            _, f, _ = pot.evaluate(ref.copy())
            sq.append(np.sum((f - ref.get_forces()) ** 2, axis=1))
        assert c["testset"]["force_rmse"] == pytest.approx(np.sqrt(np.mean(sq)), rel=1e-6)
        assert f"[iter {i} | validate] per-stage validation" in out
    assert sources == {f"iter/{ends[0]}/validate"}  # drawn once, by the first one
    final = read_json(root / "validation" / "summary.json")
    assert final["testset"]["source"] == f"iter/{ends[0]}/validate"
    # never trained on: no test-set configuration is in any training set
    last = s[-1]["iteration"]
    train = {c.positions.tobytes() for c in read_cfgs(root / "iter" / str(last) / "collect"
                                                       / "train.cfg")}
    test = read_cfgs(root / "iter" / str(ends[0]) / "validate" / "select" / "testset.cfg")
    assert len(test) == 5 and not any(c.positions.tobytes() in train for c in test)


def test_dft_cost_is_recorded_per_iteration(three: tuple[Path, str]) -> None:
    """Every iteration's summary prices each reference calculation (training labels,
    failed ones, the error sample) by the cost model; status shows the running total."""
    from smallcell import cost

    root, _ = three
    s = _summaries(root)
    for x in s:
        d = root / "iter" / str(x["iteration"])
        train = [read_json(m)["atoms"] for m in sorted(d.glob("vasp/*/done"))]
        smp = [read_json(m)["atoms"] for m in sorted(d.glob("sample/*/done"))]
        assert x["dft_seconds_train"] == pytest.approx(sum(map(cost.model_seconds, train)))
        assert x["dft_seconds"] == pytest.approx(sum(map(cost.model_seconds, train + smp)))
        assert x["dft_modeled"] is True
    lines = status_lines(root)
    assert lines[0].endswith("DFT h")
    total = sum(x["dft_seconds"] for x in s) / 3600
    last = next(ln for ln in lines if ln.lstrip().startswith(f"{s[-1]['iteration']} "))
    assert last.split()[-1] == f"{total:.3g}"
    assert any("per-stage validation 3x3x3 (108 atoms" in ln for ln in lines)
    assert "DFT core-hours (GPAW cost model)" in next(ln for ln in lines
                                                  if ln.startswith("cost: "))


def test_the_report_answers_the_cell_size_question(three: tuple[Path, str],
                                                   tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(three[0], root)
    assert cli.main(["--run-dir", str(root), "report"]) == 0
    md = (root / "report" / "report.md").read_text()
    section = md.split("## Cell size")[1].split("\n## ")[0]
    s = _summaries(root)
    ends = [x["iteration"] for x in s if x.get("stage_end") and not finished(x)]
    for i in ends:
        c = read_json(root / "iter" / str(i) / "validate" / "summary.json")
        assert (f"iteration {i}: {c['n_broke']}/3 MD runs on 3x3x3 (108 atoms)" in section)
        assert f"force RMSE {1000 * c['testset']['force_rmse']:.1f} meV/Å" in section
    assert "final validation, iteration" in section and "cost per stage" in section
    assert "1x1x1: " in section and "the large-cell validations themselves" in section
    assert (root / "report" / "large_cell_error_vs_cost.png").stat().st_size > 1000
    assert "large_cell_error_vs_cost" in (root / "report" / "index.html").read_text()


def test_a_per_stage_validation_reruns_nothing_and_keeps_other_settings(
        three: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(three[0], root)
    i = next(x["iteration"] for x in _summaries(root) if x.get("stage_end"))
    cdir = root / "iter" / str(i) / "validate"
    before = (cdir / "summary.json").read_bytes()
    config = str(root / "p.yaml")
    args = ["--run-dir", str(root), "validate", "--iter", str(i), "--config", config]
    assert cli.main(args) == 0
    assert (cdir / "summary.json").read_bytes() == before
    text = (root / "p.yaml").read_text().replace("stage_steps: 30", "stage_steps: 20")
    (root / "p.yaml").write_text(text)
    assert cli.main(args) == 0
    assert (cdir.with_name("validate.old1") / "summary.json").read_bytes() == before  # kept
    assert read_json(cdir / "summary.json")["steps"] == 20
    # the fixed test set moved aside with it: this one drew a new one
    assert read_json(cdir / "summary.json")["testset"]["source"] == f"iter/{i}/validate"


def test_when_a_per_stage_validation_is_due() -> None:
    from smallcell.stages.checkpoint import due

    cfg = parse_config(THREE)
    end = {"iteration": 3, "stage": 0, "n_stages": 3, "stage_end": "converged"}
    mid = {"iteration": 4, "stage": 1, "n_stages": 3, "stage_end": None}
    last = {"iteration": 6, "stage": 2, "n_stages": 3, "stage_end": "converged"}
    assert due(cfg, end) and not due(cfg, mid) and not due(cfg, last)
    every = parse_config(THREE.replace("test_set: 5}", "test_set: 5, every: 2}"))
    assert due(every, mid) and not due(every, {**mid, "iteration": 5})
    off = parse_config(THREE.replace("test_set: 5}", "test_set: 5, every_stage: false}"))
    assert not due(off, end)
    assert not due(parse_config(THREE.split("validation:")[0]), end)
