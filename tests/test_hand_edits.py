"""A run folder edited or damaged by hand: each case stops with one clear message naming
the file and what to do, and following that advice completes the run with the result an
untouched run has."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from small_run import iterate, new_run


def _iter(root: Path) -> subprocess.CompletedProcess:
    return iterate(root, 1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = new_run(tmp_path_factory.mktemp("hand") / "run")
    res = _iter(root)
    assert res.returncode == 0, res.stderr[-2000:]
    return root


@pytest.fixture()
def run(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    [line] = [x for x in res.stderr.splitlines() if x.startswith("smallcell: error:")]
    return line


def test_deleted_output_of_a_marked_stage(run: Path, finished: Path) -> None:
    it1 = run / "iter" / "1"
    (it1 / "summary.json").unlink()
    (it1 / "train" / "done").unlink()  # the fit redone, but its input is gone
    (it1 / "collect" / "train.cfg").unlink()
    line = _one_line_error(_iter(run))
    assert f"{it1 / 'collect' / 'train.cfg'}: missing although its stage was marked done" \
        in line and "delete that stage's `done` marker" in line
    (it1 / "collect" / "done").unlink()  # the advice
    assert _iter(run).returncode == 0
    for rel in ("iter/1/collect/train.cfg", "iter/1/train/pot.mtp"):
        assert (run / rel).read_bytes() == (finished / rel).read_bytes(), rel


def test_corrupt_summary(run: Path) -> None:
    path = run / "iter" / "0" / "summary.json"
    path.write_text(path.read_text()[:40])
    line = _one_line_error(_iter(run))
    assert f"{path}:" in line and "corrupt JSON" in line and "delete the file" in line


def test_hand_edited_label_with_nan(run: Path) -> None:
    """A labeled.cfg edited to NaN after its task finished: the training set that holds it
    is refused with the file and line, never trained on."""
    it1 = run / "iter" / "1"
    lab = sorted(it1.glob("vasp/*/labeled.cfg"))[0]
    text = lab.read_text().splitlines()
    k = text.index(" Energy") + 1
    text[k] = "        nan"
    lab.write_text("\n".join(text) + "\n")
    for name in ("summary.json", "train/done", "collect/done"):
        (it1 / name).unlink()
    line = _one_line_error(_iter(run))
    assert f"{it1 / 'collect' / 'train.cfg'}:" in line
    assert "expected a finite number after 'Energy', got 'nan'" in line


def test_deleted_iteration_is_redone_identically(run: Path, finished: Path) -> None:
    """iter/1 removed by hand (make clean-iter is the tool for it): the next run redoes it
    from the same seeds, file for file."""
    shutil.rmtree(run / "iter" / "1")
    assert _iter(run).returncode == 0
    for rel in ("iter/1/collect/train.cfg", "iter/1/train/pot.mtp",
                "iter/1/select/selected.cfg"):
        assert (run / rel).read_bytes() == (finished / rel).read_bytes(), rel
