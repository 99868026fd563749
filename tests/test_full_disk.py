"""A full disk, for real: a small embedded run inside a tmpfs too small for it, at a dozen
sizes so that the disk fills up in every stage. Each stops with one line naming the file
it could not write (no traceback, no task marked failed), and once the filesystem is
enlarged the same command finishes with the uninterrupted run's files, nothing finished
redone. Needs root (mount); the same handling is checked without it in test_state.py and
test_stages.py (injected ENOSPC)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from small_run import assert_same_run, finished_files, iterate, new_run
from smallcell.state import is_debris

pytestmark = pytest.mark.slow

UPTO = 2
N_SIZES = 12
ROOMY_KB = 8192
MESSAGE = re.compile(r"^smallcell: error: (/\S+): no space left on device while writing; "
                     r"free some space and run the same command again \(finished work is "
                     r"kept\)$")


def _mount(where: Path, kb: int, remount: bool = False) -> subprocess.CompletedProcess:
    where.mkdir(parents=True, exist_ok=True)
    opts = f"{'remount,' if remount else ''}size={kb}k"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The uninterrupted run, in a roomy tmpfs: its files and the space it used (kB)."""
    base = tmp_path_factory.mktemp("fulldisk")
    mnt = base / "reference"
    res = _mount(mnt, ROOMY_KB)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    root = new_run(mnt / "run")
    run = iterate(root, UPTO)
    used_kb = shutil.disk_usage(mnt).used // 1024
    copy = base / "reference-files"
    shutil.copytree(root, copy)
    _umount(mnt)
    assert run.returncode == 0, run.stderr[-2000:]
    return copy, used_kb


def test_a_full_disk_stops_with_one_line_and_resumes_to_the_same_run(
        reference: tuple[Path, int], tmp_path: Path) -> None:
    ref, used_kb = reference
    sizes = sorted({max(8, used_kb * n // (N_SIZES + 1)) for n in range(1, N_SIZES + 1)})
    stopped_at: dict[int, str] = {}
    for kb in sizes:
        mnt = tmp_path / f"fs{kb}"
        assert _mount(mnt, kb).returncode == 0
        try:
            root = new_run(mnt / "run")
            full = iterate(root, UPTO)
            if full.returncode != 0:
                last = full.stderr.strip().splitlines()[-1]
                m = MESSAGE.match(last)
                assert m, f"{kb} kB: unclear message: {last!r}\n{full.stderr[-2000:]}"
                assert m.group(1).startswith(f"{root}/"), f"{kb} kB: names {m.group(1)}"
                assert "Traceback" not in full.stderr, f"{kb} kB:\n{full.stderr[-3000:]}"
                assert not list(root.rglob("failed")), f"{kb} kB: a task was marked failed"
                stopped_at[kb] = m.group(1).removeprefix(f"{root}/")
            before = finished_files(root)
            assert _mount(mnt, ROOMY_KB, remount=True).returncode == 0
            resumed = iterate(root, UPTO)
            assert resumed.returncode == 0, f"{kb} kB: resume failed\n{resumed.stderr[-3000:]}"
            after = finished_files(root)
            redone = [p for p, v in before.items() if after.get(p) != v]
            assert not redone, f"{kb} kB: finished work redone: {redone[:5]}"
            assert not [p for p in root.rglob("*") if is_debris(p.name)], f"{kb} kB: scratch"
            assert_same_run(root, ref, f"{kb} kB")
        finally:
            _umount(mnt)
    stages = {re.sub(r"^iter/\d+/([a-z]+).*", r"\1", p) for p in stopped_at.values()}
    print("\nfull disk:", json.dumps({"used_kb": used_kb, "stopped_at": stopped_at}))
    # the sizes spread the failures over the run: most of them stop it, in several stages
    assert len(stopped_at) >= N_SIZES - 2, stopped_at
    # (which stages a size lands in shifts with every file a run writes: ask for spread,
    # not for particular stages)
    assert len(stages) >= 4 and {"vasp", "explore"} <= stages, stopped_at
