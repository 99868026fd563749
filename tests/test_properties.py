"""Property tests (hypothesis): the cfg writer and reader round-trip any configuration, and
the cfg and OUTCAR readers, fed damaged files, answer with data or the project's own
FormatError, never another exception. Hypothesis searches the inputs and shrinks a
failure to the smallest file that shows it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smallcell.formats.cfg import Cfg, _iter_stream, format_cfg
from smallcell.formats.errors import FormatError
from smallcell.formats.outcar import read_outcar

# CI: the same 150 examples every run (derandomized), so a failure is reproducible and
# never flaky; SMALLCELL_HYPOTHESIS=explore searches at random, 2000 examples a test.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", max_examples=150, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("SMALLCELL_HYPOTHESIS", "ci"))

_coord = st.floats(-40.0, 40.0, allow_nan=False, width=64)
_force = st.floats(-50.0, 50.0, allow_nan=False, width=64)
_key = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ_0123456789", min_size=1, max_size=12)
_value = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@st.composite
def configurations(draw: st.DrawFn) -> Cfg:
    n = draw(st.integers(1, 6))
    cell = draw(st.one_of(st.none(), st.lists(_coord, min_size=9, max_size=9)))
    labeled = draw(st.booleans())
    return Cfg(
        cell=None if cell is None else np.array(cell).reshape(3, 3),
        types=np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))),
        positions=np.array(draw(st.lists(_coord, min_size=3 * n, max_size=3 * n))),
        forces=(np.array(draw(st.lists(_force, min_size=3 * n, max_size=3 * n)))
                if labeled else None),
        energy=draw(st.floats(-1e4, 1e4, allow_nan=False)) if labeled else None,
        plus_stress=(np.array(draw(st.lists(_force, min_size=6, max_size=6)))
                     if labeled and draw(st.booleans()) else None),
        features=draw(st.lists(st.tuples(_key, _value), max_size=3)),
    )


def _read(text: str, name: str = "<test>") -> list[Cfg]:
    return list(_iter_stream(io.StringIO(text), name))


@given(st.lists(configurations(), min_size=1, max_size=3))
def test_cfg_round_trip(cfgs: list[Cfg]) -> None:
    """write -> read gives every value back to the writer's precision (6 decimals for
    positions, cell and forces, 12 for the energy, 5 for the stress), and writing what was
    read gives the same text."""
    text = "".join(format_cfg(c) for c in cfgs)
    back = _read(text)
    assert len(back) == len(cfgs)
    for a, b in zip(cfgs, back, strict=True):
        assert b.types.tolist() == a.types.tolist()
        np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=6e-7)
        # MLIP-3's Supercell lists the periodic directions: trailing rows of zeros (as
        # written, 6 decimals) are not written, and a cell of zeros is no cell
        rows = 0 if a.cell is None else max(
            (k + 1 for k in range(3) if any(f"{x:.6f}".strip("-0.") for x in a.cell[k])),
            default=0)
        if rows == 0:
            assert b.cell is None
        else:
            np.testing.assert_allclose(b.cell, a.cell[:rows], rtol=0, atol=6e-7)
        if a.forces is None:
            assert b.forces is None and b.energy is None
        else:
            np.testing.assert_allclose(b.forces, a.forces, rtol=0, atol=6e-7)
            assert b.energy == pytest.approx(a.energy, abs=6e-13 * max(1.0, abs(a.energy)))
        if a.plus_stress is not None:
            np.testing.assert_allclose(b.plus_stress, a.plus_stress, rtol=0, atol=6e-6)
        assert sorted(b.features) == sorted(a.features)
    assert "".join(format_cfg(c) for c in back) == text


_edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 4),
                            st.sampled_from(["", "x", "\n", "-", "nan", "9\n9", "END_CFG\n",
                                             "BEGIN_CFG\n", " Size\n", "1e999", "\t"])),
                  min_size=1, max_size=5)


def _damage(text: str, edits: list[tuple[float, int, str]]) -> str:
    for where, cut, insert in edits:
        i = int(where * len(text))
        text = text[:i] + insert + text[i + cut:]
    return text


@given(st.lists(configurations(), min_size=1, max_size=2), _edits, st.floats(0, 1))
def test_cfg_reader_on_damaged_files(cfgs: list[Cfg], edits: list, keep: float) -> None:
    """Cut anywhere, characters replaced, blocks duplicated: configurations or a
    FormatError naming the file, nothing else."""
    text = "".join(format_cfg(c) for c in cfgs)
    damaged = _damage(text, edits)[: max(1, int(keep * len(text) * 1.2))]
    try:
        for cfg in _read(damaged, "damaged.cfg"):
            assert cfg.positions.shape == (cfg.natoms, 3)
    except FormatError as exc:
        assert str(exc).startswith("damaged.cfg")


OUTCAR = Path("vasp") / "single_point" / "vasp544_Al2" / "OUTCAR"


@pytest.fixture(scope="module")
def outcar_bytes(fixtures: Path) -> bytes:
    return (fixtures / OUTCAR).read_bytes()


@given(st.floats(0, 1), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 6),
                                           st.sampled_from([b"", b"x", b"\n", b"-", b"*",
                                                            b"9\n9", b"NaN", b"\x00"])),
                                 max_size=6))
def test_outcar_reader_on_damaged_files(outcar_bytes: bytes, tmp_path_factory,
                                        keep: float, edits: list) -> None:
    data = bytearray(outcar_bytes[: max(1, int(keep * len(outcar_bytes)))])
    for where, cut, insert in edits:
        i = int(where * len(data))
        data[i:i + cut] = insert
    path = tmp_path_factory.mktemp("outcar") / "OUTCAR"
    path.write_bytes(bytes(data))
    try:
        info, _steps = read_outcar(path)
        assert info.status
    except FormatError as exc:
        assert exc.path == str(path)
