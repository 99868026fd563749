"""The filesystem state: atomic writes, markers, run paths, the run lock, corrupt JSON."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from smallcell import state
from smallcell.errors import SmallcellError
from smallcell.state import (
    RunLock,
    RunPaths,
    atomic_output,
    atomic_write_json,
    atomic_write_text,
    clear_markers,
    is_done,
    is_failed,
    mark_done,
    mark_failed,
    read_json,
)

PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_text_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    assert atomic_write_text(target, "one\n") == target
    assert target.read_text() == "one\n"
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert _names(target.parent) == ["out.txt"]


def test_atomic_write_text_failed_rename_keeps_old_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    seen: list[Path] = []

    def broken_replace(src, dst):
        seen.append(Path(src))
        assert Path(src).read_text() == "new\n"  # the full text was in the temporary
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(state.os, "replace", broken_replace)
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "new\n")
    assert info.value.errno == errno.EIO
    assert seen and seen[0].parent == tmp_path and seen[0].name != "out.txt"
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["out.txt"]  # no temporary left behind


class _FullDisk:
    """A file whose writes fail with ENOSPC after a few bytes reached the disk."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, text: str) -> int:
        self.fh.write(text[:3])
        self.fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_enospc_raises_smallcell_error_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    target.write_text('{"old": 1}\n')
    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return _FullDisk(fh) if "w" in mode else fh

    monkeypatch.setattr(state, "open", full_open, raising=False)
    with pytest.raises(SmallcellError) as info:
        atomic_write_json(target, {"new": 2})
    msg = str(info.value)
    assert str(target) in msg
    assert "no space left" in msg
    assert isinstance(info.value.__cause__, OSError)
    assert json.loads(target.read_text()) == {"old": 1}
    assert _names(tmp_path) == ["summary.json"]


def test_atomic_output_renames_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "train.cfg"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_output(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["train.cfg"]
    with atomic_output(target) as tmp:
        tmp.write_text("new\n")
        assert target.read_text() == "old\n"  # not visible before the block ends
    assert target.read_text() == "new\n"
    assert _names(tmp_path) == ["train.cfg"]


def test_atomic_output_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.cfg"
    with atomic_output(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_json_round_trip_is_sorted_and_readable(tmp_path: Path) -> None:
    data = {"b": [1, 2.5, None], "a": {"z": "ü", "y": True}}
    path = atomic_write_json(tmp_path / "d.json", data)
    assert read_json(path) == data
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') and text.endswith("\n")


@pytest.mark.parametrize("text", ['{"a": 1', "", "{'a': 1}", '{"a": 1}\n{"b": 2}'])
def test_read_json_of_a_corrupt_file_names_the_path(tmp_path: Path, text: str) -> None:
    path = tmp_path / "iter" / "3" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(SmallcellError) as info:
        read_json(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:")
    assert "corrupt JSON" in msg


# ---------------------------------------------------------------- markers


def test_markers(tmp_path: Path) -> None:
    task = tmp_path / "vasp" / "7"
    assert not is_done(task) and not is_failed(task)
    task.mkdir(parents=True)
    mark_failed(task, "SCF not converged", attempts=2)
    assert is_failed(task) and not is_done(task)
    rec = read_json(task / "failed")
    assert rec["reason"] == "SCF not converged" and rec["attempts"] == 2 and rec["time"] > 0
    clear_markers(task)
    assert not is_failed(task) and not is_done(task)
    mark_done(task, {"attempts": 1})
    assert is_done(task)
    assert read_json(task / "done")["attempts"] == 1
    clear_markers(task)
    clear_markers(task)  # idempotent
    assert not is_done(task)
    assert _names(task) == []


def test_mark_done_creates_the_folder(tmp_path: Path) -> None:
    mark_done(tmp_path / "new" / "stage")
    assert is_done(tmp_path / "new" / "stage")
    assert set(read_json(tmp_path / "new" / "stage" / "done")) == {"time"}


# ---------------------------------------------------------------- paths


def test_run_paths_layout(tmp_path: Path) -> None:
    p = RunPaths(tmp_path)
    assert p.it(3) == tmp_path / "iter" / "3"
    assert p.stage(3, "explore") == tmp_path / "iter" / "3" / "explore"
    assert p.task(3, 12) == tmp_path / "iter" / "3" / "vasp" / "12"
    assert p.task(3, 12, "sample") == tmp_path / "iter" / "3" / "sample" / "12"
    assert p.summary(0) == tmp_path / "iter" / "0" / "summary.json"


def test_iterations_ignores_non_integer_names(tmp_path: Path) -> None:
    p = RunPaths(tmp_path)
    assert p.iterations() == []  # no iter/ at all
    for name in ("0", "1", "10", "2", "abc", ".trash.3.123", "1.5", "-1", "4a", "²", "٣", "٣x"):
        (p.iter_root / name).mkdir(parents=True)
    (p.iter_root / ".lock").write_text("")
    assert p.iterations() == [0, 1, 2, 10]


# ---------------------------------------------------------------- the run lock

_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from smallcell.state import RunLock, RunPaths
    with RunLock(RunPaths(Path(sys.argv[1])), "holder-under-test"):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_run_lock_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), str(PYTHON_DIR)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(SmallcellError) as info, RunLock(paths, "second"):
            pass
        msg = str(info.value)
        assert f"pid {proc.pid} " in msg
        assert "holder-under-test" in msg
        assert str(paths.iter_root / ".lock") in msg
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # the kernel released the flock with the process: no stale lock
        with RunLock(paths, "after-kill"):
            text = (paths.iter_root / ".lock").read_text()
            assert f"pid {os.getpid()} " in text and "after-kill" in text
            assert "holder-under-test" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_lock_is_released_on_exit(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    with (RunLock(paths, "first"), pytest.raises(SmallcellError, match="in use by pid"),
          RunLock(paths, "nested")):
        pass
    with RunLock(paths, "again"):
        pass


def test_sweep_debris_removes_only_scratch(tmp_path: Path) -> None:
    from smallcell.state import sweep_debris

    (tmp_path / "explore" / ".000_T300.tmp.123").mkdir(parents=True)
    (tmp_path / "explore" / "000_T300").mkdir()
    (tmp_path / "explore" / "000_T300" / ".gamma.json.tmp.99").write_text("{")
    (tmp_path / "explore" / "000_T300" / "gamma.json").write_text("{}")
    (tmp_path / "train" / ".work.77").mkdir(parents=True)
    (tmp_path / ".hidden_note").write_text("kept")
    assert sweep_debris(tmp_path) == 3
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [".hidden_note", "explore", "explore/000_T300",
                    "explore/000_T300/gamma.json", "train"]


def test_sweep_debris_leaves_skipped_entries_alone(tmp_path: Path) -> None:
    """`skip`: top-level entries whose scratch a process beside the caller owns (the error
    sample's elements on SLURM) are left whole; the rest is swept, deeper names alike."""
    from smallcell.state import sweep_debris

    (tmp_path / "sample" / "3" / ".work.12").mkdir(parents=True)
    (tmp_path / "sample" / ".x.tmp.5").write_text("")
    (tmp_path / "vasp" / "1" / ".work.13").mkdir(parents=True)
    (tmp_path / "vasp" / "sample" / ".work.14").mkdir(parents=True)  # not top level
    (tmp_path / ".summary.json.tmp.9").write_text("{")
    assert sweep_debris(tmp_path, skip=("sample",)) == 3
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["sample", "sample/.x.tmp.5", "sample/3", "sample/3/.work.12", "vasp",
                    "vasp/1", "vasp/sample"]
