"""Config schema: defaults, the repo's configs, every kind of bad input, dump, reference."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from smallcell.config import (
    SCHEMA,
    Config,
    Key,
    Section,
    Seq,
    defaults,
    load_config,
    parse_config,
    reference_markdown,
)
from smallcell.errors import SmallcellError

REPO = Path(__file__).resolve().parents[1]


def _all_keys(section: Section = SCHEMA, path: tuple[str, ...] = ()) -> list[str]:
    """Every key's dotted path; a list's item keys as `stages[k].cell`."""
    out = []
    for name, spec in section.keys.items():
        if isinstance(spec, Section):
            out += _all_keys(spec, (*path, name))
        elif isinstance(spec, Seq):
            out += _all_keys(spec.item, (*path, f"{name}[k]"))
        else:
            assert isinstance(spec, Key)
            out.append(".".join((*path, name)))
    return out


def _error(tmp_path: Path, text: str, name: str = "run.yaml") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SmallcellError) as info:
        load_config(path)
    return path, str(info.value)


# ---------------------------------------------------------------- valid configurations


def test_defaults_validate() -> None:
    cfg = parse_config("{}")
    assert cfg.data == defaults()
    assert load_config(None).data == defaults()
    # an empty file is the defaults too
    assert parse_config("").data == defaults()
    assert cfg.gamma_max == cfg["extrapolation"]["gamma_break"]


def test_every_schema_key_has_a_default_that_validates() -> None:
    keys = _all_keys()
    assert len(keys) > 30
    cfg = parse_config("{}")
    for dotted in keys:
        if "[k]" not in dotted:
            cfg.get(dotted)  # KeyError if a key were missing from the defaults
    # a list item given as {} takes every item key's default, and they validate
    [item] = parse_config("stages: [{}]\n")["stages"]
    assert sorted(f"stages[k].{k}" for k in item) == sorted(k for k in keys if "[k]" in k)


@pytest.mark.parametrize("rel", ["config.yaml", "examples/tiny.yaml"])
def test_repo_configs_validate(rel: str) -> None:
    path = REPO / rel
    cfg = load_config(path)
    assert cfg.source == path.resolve()
    text = path.read_text(encoding="utf-8")
    # spot-check that the file's own values were taken, not the defaults
    if rel == "examples/tiny.yaml":
        assert cfg["trainer"]["level"] == 6
        assert cfg["select"]["max_selected"] == 8
        assert cfg["run"]["seed"] == 7
    else:
        # the default problem: fcc Pb 1x1x1, a = 4.95 Å, mass 207.2, 2.1 / 10
        assert cfg["species"] == ["Pb"] and cfg["masses"] == [207.2]
        assert cfg["structure"]["lattice"] == "fcc" and cfg["structure"]["cell"] == [1, 1, 1]
        assert cfg["structure"]["a"] == 4.95 and cfg["structure"]["displacement"] > 0
        assert cfg["extrapolation"] == {"gamma_save": 2.1, "gamma_break": 10.0}
        assert 300.0 in cfg["grid"]["temperatures"] and cfg["grid"]["pressures"] == [1.0]
    assert "species" in text


def test_values_are_normalised() -> None:
    cfg = parse_config("structure: {a: 5}\ngrid: {temperatures: [300, 400]}\n")
    assert cfg["structure"]["a"] == 5.0 and isinstance(cfg["structure"]["a"], float)
    assert all(isinstance(t, float) for t in cfg["grid"]["temperatures"])
    # untouched keys of a partly given section keep their defaults
    assert cfg["structure"]["lattice"] == "fcc"
    assert cfg["grid"]["pressures"] == defaults()["grid"]["pressures"]


def test_null_section_means_defaults() -> None:
    assert parse_config("extrapolation:\n").data == defaults()


# ---------------------------------------------------------------- bad input

# (yaml text, line, key named in the message, what was expected / the hint)
BAD = [
    pytest.param("species: [Pb]\nextrapolation:\n  gama_save: 3.0\n", 3,
                 "extrapolation.gama_save", "did you mean 'extrapolation.gamma_save'",
                 id="unknown-key-suggestion"),
    pytest.param("species: [Pb]\nextrapolaton:\n  gamma_save: 3.0\n", 2,
                 "extrapolaton", "did you mean 'extrapolation'", id="unknown-section-suggestion"),
    pytest.param("species: [Pb]\nzzzqqq:\n  a: 1\n", 2, "zzzqqq", "unknown key",
                 id="unknown-section"),
    pytest.param("structure:\n  lattice: fcc\n  a: four\n", 3, "structure.a",
                 "must be a number", id="string-for-number"),
    pytest.param('structure:\n  a: "4.95"\n', 2, "structure.a", "must be a number",
                 id="quoted-number"),
    pytest.param("grid:\n  seeds_per_point: true\n", 2, "grid.seeds_per_point",
                 "must be an integer", id="bool-for-int"),
    pytest.param("trainer:\n  level: 6.5\n", 2, "trainer.level", "must be an integer",
                 id="float-for-int"),
    pytest.param("trainer:\n  warm_start: 1\n", 2, "trainer.warm_start", "true or false",
                 id="int-for-bool"),
    pytest.param("structure:\n  cell: [1, 1]\n", 2, "structure.cell", "exactly 3 items",
                 id="cell-length"),
    pytest.param("grid:\n  temperatures: 300\n", 2, "grid.temperatures", "a list of numbers",
                 id="scalar-for-list"),
    pytest.param("grid:\n  temperatures: []\n", 2, "grid.temperatures", "at least 1",
                 id="empty-list"),
    pytest.param("species: [Pb]\ngrid:\n  temperatures: [300, -5]\n", 3,
                 "grid.temperatures[1]", "must be > 0", id="negative-temperature"),
    pytest.param("grid:\n  temperatures: [0]\n", 2, "grid.temperatures[0]", "must be > 0",
                 id="zero-temperature"),
    pytest.param("structure:\n  displacement: -0.1\n", 2, "structure.displacement",
                 "must be >= 0", id="negative-displacement"),
    pytest.param("trainer:\n  level: 1\n", 2, "trainer.level", "must be >= 2", id="level-low"),
    pytest.param("trainer:\n  level: 30\n", 2, "trainer.level", "must be <= 28",
                 id="level-high"),
    pytest.param("label:\n  min_success_ratio: 1.5\n", 2, "label.min_success_ratio",
                 "must be <= 1", id="ratio-above-1"),
    pytest.param("structure:\n  a: .nan\n", 2, "structure.a", "finite", id="nan"),
    pytest.param("extrapolation:\n  gamma_save: 5\n  gamma_break: 5\n", 3,
                 "extrapolation.gamma_break", "must be greater than extrapolation.gamma_save",
                 id="break-equal-save"),
    pytest.param("extrapolation:\n  gamma_save: 5\n  gamma_break: 3\n", 3,
                 "extrapolation.gamma_break", "must be greater than", id="break-below-save"),
    pytest.param("extrapolation:\n  gamma_save: 3\nselect:\n  gamma_max: 2.5\n", 4,
                 "select.gamma_max", "must be greater than extrapolation.gamma_save",
                 id="gamma-max-below-save"),
    pytest.param("sample:\n  gamma_min: 2.0\n  gamma_max: 1.0\n", 3, "sample.gamma_max",
                 "must be greater than sample.gamma_min", id="sample-bounds"),
    pytest.param("sample:\n  size: -1\n", 2, "sample.size", "must be >= 0",
                 id="sample-size"),
    pytest.param("select:\n  policy: dopt2\n", 2, "select.policy",
                 "did you mean 'dopt'", id="unknown-choice"),
    pytest.param("md:\n  ensemble: nve\n", 2, "md.ensemble", "one of nvt, npt",
                 id="choice-without-suggestion"),
    pytest.param("species: [Pb]\nmasses: [207.2, 1.0]\n", 2, "masses",
                 "2 values but species has 1", id="masses-length"),
    pytest.param("masses: [-1.0]\n", 1, "masses[0]", "must be > 0", id="negative-mass"),
    pytest.param("species: [Qq]\n", 1, "species", "not a chemical symbol", id="bad-symbol"),
    pytest.param("species: [Pb, Pb]\n", 1, "species", "twice", id="duplicate-species"),
    pytest.param("trainer:\n  min_dist: 5.0\n  max_dist: 4.0\n", 2, "trainer.min_dist",
                 "smaller than trainer.max_dist", id="min-dist-above-max"),
    pytest.param("initial:\n  n_configs: 4\n  source: cfg\n", 3, "initial.path",
                 "set initial.path", id="cfg-without-path"),
    pytest.param("initial:\n  source: cfg\n  path: nothere.cfg\n", 3, "initial.path",
                 "no such file", id="cfg-missing-file"),
    pytest.param("initial:\n  source: outcar\n  path: nothere\n", 3, "initial.path",
                 "no such folder", id="outcar-missing-folder"),
    pytest.param("structure: 5\n", 1, "structure", "must be a mapping", id="section-scalar"),
    pytest.param("engines: {explorer: lammps, trainer: mlip3}\nselect: {policy: dopt_batch}\n",
                 2, "select.policy", "needs the embedded grader", id="batch-with-mlip3"),
    pytest.param("select:\n  swap_threshold: 1.0\n", 2, "select.swap_threshold",
                 "must be > 1", id="swap-threshold-1"),
    pytest.param("run:\n  converged_iterations: 0\n", 2, "run.converged_iterations",
                 "must be >= 1", id="converged-iterations-0"),
    pytest.param("trainer:\n  tolerance: 0\n", 2, "trainer.tolerance", "must be > 0",
                 id="tolerance-0"),
]


@pytest.mark.parametrize(("text", "line", "key", "expected"), BAD)
def test_bad_input_names_file_line_key_and_expectation(
        tmp_path: Path, text: str, line: int, key: str, expected: str) -> None:
    path, msg = _error(tmp_path, text)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert key in msg, msg
    assert expected in msg, msg


def test_unknown_key_lists_the_known_keys(tmp_path: Path) -> None:
    _, msg = _error(tmp_path, "extrapolation:\n  gama_save: 3.0\n")
    assert "known here: gamma_save, gamma_break" in msg


def test_unknown_choice_lists_the_choices(tmp_path: Path) -> None:
    _, msg = _error(tmp_path, "select:\n  policy: dopt2\n")
    assert "must be one of threshold, dopt" in msg
    assert "'dopt2'" in msg


def test_missing_cfg_names_the_resolved_path(tmp_path: Path) -> None:
    _, msg = _error(tmp_path, "initial:\n  source: cfg\n  path: data/nothere.cfg\n")
    assert str(tmp_path / "data" / "nothere.cfg") in msg


def test_existing_initial_cfg_is_accepted_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.cfg").write_text("", encoding="utf-8")
    path = tmp_path / "run.yaml"
    path.write_text("initial:\n  source: cfg\n  path: data/train.cfg\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.resolve(cfg["initial"]["path"]) == (tmp_path / "data" / "train.cfg").resolve()


@pytest.mark.parametrize(("text", "line"), [
    ("species: [Pb]\nstructure:\n  a: 4.95\n   lattice: fcc\n", 4),
    ("species: [Pb\nstructure:\n  a: 1\n", 2),
    ("species: [Pb]\n\tmd: 1\n", 2),
])
def test_invalid_yaml_gives_the_line(tmp_path: Path, text: str, line: int) -> None:
    path, msg = _error(tmp_path, text)
    assert msg.startswith(f"{path}:{line}: not valid YAML"), msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path, msg = _error(tmp_path, text)
    assert msg.startswith(f"{path}:1: "), msg
    assert "top level must be a mapping" in msg


@pytest.mark.parametrize(("value", "number"), [("1e-3", 1e-3), ("1E-3", 1e-3), ("1.0e5", 1e5),
                                               ("5e+2", 500.0)])
def test_scientific_notation_is_a_number(value: str, number: float) -> None:
    cfg = parse_config(f"trainer:\n  stress_weight: {value}\n")
    assert cfg["trainer"]["stress_weight"] == pytest.approx(number)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    # the second block silently replaces the first: gamma_save 3 would be lost
    path, msg = _error(tmp_path, "extrapolation: {gamma_save: 3}\n"
                                 "extrapolation: {gamma_break: 20}\n")
    assert msg.startswith(f"{path}:2: "), msg
    assert "extrapolation" in msg


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SmallcellError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- dump, reference


@pytest.mark.parametrize("text", [
    "{}",
    (REPO / "config.yaml").read_text(encoding="utf-8"),
    (REPO / "examples" / "tiny.yaml").read_text(encoding="utf-8"),
    "species: [Pb]\nmasses: [207.2]\nstructure: {lattice: bcc, a: 3.5, cell: [2, 1, 3],"
    " displacement_kind: gaussian}\nselect: {policy: dopt, gamma_max: 7.5, max_selected: 3}\n"
    "trainer: {stress_weight: 1.0e-5, warm_start: false, al_mode: cfg}\n"
    "grid: {pressures: [-1000.0, 0.0, 1.0e+5]}\n",
])
def test_dump_round_trips(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path)
    dumped = cfg.dump()
    assert dumped.startswith(f"# effective configuration (from {path.resolve()})")
    again = parse_config(dumped, tmp_path / "frozen.yaml")
    assert again.data == cfg.data
    # and a config without a source dumps without the header
    assert not Config(cfg.data).dump().startswith("#")


def test_reference_mentions_every_key() -> None:
    ref = reference_markdown()
    keys = _all_keys()
    missing = [k for k in keys if f"`{k}`" not in ref]
    assert not missing, missing
    # one table row per key
    rows = re.findall(r"^\| `([a-z0-9_.\[\]]+)` \|", ref, flags=re.M)
    assert sorted(rows) == sorted(keys)


def test_docs_config_md_is_generated() -> None:
    doc = REPO / "docs" / "config.md"
    if not doc.exists():
        pytest.skip("docs/config.md does not exist yet (make config-doc)")
    out = subprocess.run([str(REPO / "bin" / "smallcell"), "config-doc"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert out == reference_markdown()
    assert doc.read_text(encoding="utf-8") == out, "docs/config.md is stale: run make config-doc"
