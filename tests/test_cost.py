"""The DFT cost model (smallcell.cost): the shipped coefficients are the fit of the shipped
timings, the law behaves, each labeler is charged by its rule, a bad data file is named."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from smallcell import cost
from smallcell.errors import SmallcellError

RAW = Path(__file__).resolve().parents[1] / "bench" / "data" / "dft_cost.json"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test reads the data file itself, and leaves no patched model cached."""
    cost._model.cache_clear()
    yield
    cost._model.cache_clear()


def _raw() -> list[dict]:
    return json.loads(RAW.read_text(encoding="utf-8"))["measurements"]


def _shipped() -> dict:
    return json.loads(cost.DATA_FILE.read_text(encoding="utf-8"))


def test_shipped_coefficients_are_the_fit_of_the_shipped_timings() -> None:
    """Edited timings or coefficients without `bench/dft_cost.py --fit-only` fail here."""
    refit, shipped = cost.fit(_raw()), _shipped()
    for key in ("sizes", "repeats", "kpoints", "max_measured_atoms"):
        assert shipped[key] == refit[key], key
    for key in ("c", "p"):
        assert shipped[key] == pytest.approx(refit[key], rel=1e-9), key
    assert shipped["medians_seconds"] == pytest.approx(refit["medians_seconds"], rel=1e-12)
    assert shipped["residuals_log"] == pytest.approx(refit["residuals_log"], abs=1e-9)


def test_fit_is_least_squares_in_log_log_over_the_medians() -> None:
    """An independent fit (numpy's polyfit on the per-size medians) gives the same c and p."""
    rows = _raw()
    sizes = sorted({r["atoms"] for r in rows})
    medians = [float(np.median([r["cpu_seconds"] for r in rows if r["atoms"] == n]))
               for n in sizes]
    p, log_c = np.polyfit(np.log(sizes), np.log(medians), 1)
    m = _shipped()
    assert m["p"] == pytest.approx(p, rel=1e-9)
    assert m["c"] == pytest.approx(math.exp(log_c), rel=1e-9)
    assert m["max_measured_atoms"] == max(sizes)
    assert all(m["repeats"][i] >= 2 for i, n in enumerate(sizes) if n <= 8)


def test_fit_weighs_sizes_by_median_not_by_repeats() -> None:
    rows = [{"atoms": 4, "cpu_seconds": 10.0}, {"atoms": 4, "cpu_seconds": 10.0},
            {"atoms": 4, "cpu_seconds": 1000.0}, {"atoms": 8, "cpu_seconds": 40.0}]
    m = cost.fit(rows)
    assert m["p"] == pytest.approx(2.0)
    assert m["c"] == pytest.approx(10.0 / 16)
    with pytest.raises(SmallcellError, match="at least 2 cell sizes"):
        cost.fit(rows[:3])


def test_power_law_reproduces_the_measured_medians_within_the_stored_residuals() -> None:
    m = _shipped()
    for n, median, res in zip(m["sizes"], m["medians_seconds"], m["residuals_log"],
                              strict=True):
        assert abs(math.log(median / cost.model_seconds(n))) <= abs(res) + 1e-9
    assert m["max_abs_residual_log"] == pytest.approx(max(map(abs, m["residuals_log"])))


def test_cost_grows_with_the_cell() -> None:
    secs = [cost.model_seconds(n) for n in range(1, 256)]
    assert all(b > a > 0 for a, b in itertools.pairwise(secs))
    assert cost.model_seconds(108) > cost.model_seconds(32) > cost.model_seconds(4)
    with pytest.raises(ValueError, match="positive integer"):
        cost.model_seconds(0)


def test_extrapolation_is_flagged_beyond_the_largest_measured_cell() -> None:
    largest = _shipped()["max_measured_atoms"]
    assert not cost.extrapolated(4)
    assert not cost.extrapolated(largest)
    assert cost.extrapolated(largest + 1)
    assert cost.extrapolated(108)


def test_task_cost_per_labeler() -> None:
    assert cost.task_cost("eam", 4, 0.002) == cost.model_seconds(4)
    assert cost.task_cost("eam", 32, None) == cost.model_seconds(32)
    assert cost.task_cost("gpaw", 4, 153.5) == 153.5
    assert cost.task_cost("vasp", 108, 3600) == 3600.0
    assert cost.task_cost("gpaw", 4, None) == 0.0
    assert cost.task_cost("vasp", 4, None) == 0.0
    assert cost.is_modeled("eam")
    assert not cost.is_modeled("gpaw") and not cost.is_modeled("vasp")
    with pytest.raises(ValueError, match="no DFT cost rule for labeler 'lj'"):
        cost.task_cost("lj", 4, 1.0)


def test_unit_and_description_name_the_model() -> None:
    assert "DFT s" in cost.COST_UNIT
    line = cost.describe()
    m = _shipped()
    assert f"{m['c']:.3g}" in line and f"N^{m['p']:.2f}" in line
    assert "\n" not in line


@pytest.mark.parametrize("text, expected", [
    (None, "cannot read"),
    ("{not json", "cannot read"),
    ("[1, 2]", "expected a JSON object"),
    ('{"c": 1.0, "p": 2.0, "sizes": [4, 8]}', "'max_measured_atoms'"),
    ('{"c": "1", "p": 2.0, "sizes": [4, 8], "max_measured_atoms": 8}', "'c'"),
    ('{"c": -1.0, "p": 2.0, "sizes": [4, 8], "max_measured_atoms": 8}', "c > 0"),
])
def test_a_bad_data_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  text: str | None, expected: str) -> None:
    bad = tmp_path / "dft_cost.json"
    if text is not None:
        bad.write_text(text, encoding="utf-8")
    monkeypatch.setattr(cost, "DATA_FILE", bad)
    with pytest.raises(SmallcellError, match=expected) as exc:
        cost.model_seconds(4)
    assert str(bad) in str(exc.value)
    assert cost.task_cost("gpaw", 4, 1.0) == 1.0  # measured labels need no model


def test_the_data_file_is_found_beside_the_module() -> None:
    assert Path(cost.__file__).parent / "data" / "dft_cost.json" == cost.DATA_FILE
    assert cost.DATA_FILE.is_file()
