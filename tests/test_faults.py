"""Fault injection: a small embedded run SIGKILLed at chosen write events (half-written
temporaries, complete ones not yet renamed, just renamed: train.cfg, summary.json, every
kind of marker, label and explore outputs), then resumed to the end. After each kill:
nothing finished is redone, every labeled configuration is in the training set exactly
once, no scratch file is left, and the result is byte for byte the uninterrupted run's.

The write events come from state.py's fault hooks (SMALLCELL_FAULT_LOG lists them in a
reference run, SMALLCELL_KILL_AT kills at one). RELIABILITY.md reports the figures."""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from small_run import assert_same_run, finished_files, iterate, new_run
from smallcell.state import PHASES, is_debris

UPTO = 2
N_KILLS = 54


def _run(root: Path, **env: str) -> subprocess.CompletedProcess:
    return iterate(root, UPTO, **env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = new_run(tmp_path_factory.mktemp("faults") / "reference")
    log = root.parent / "events.log"
    res = _run(root, SMALLCELL_FAULT_LOG=str(log))
    assert res.returncode == 0, res.stderr[-2000:]
    prefix = f"{root}/"
    events = []
    for line in log.read_text().splitlines():
        phase, path = line.split(":", 1)
        rel = path.removeprefix(prefix)
        if rel.startswith("iter/") and f"{phase}:{rel}" not in events:
            events.append(f"{phase}:{rel}")
    return root, events


def kill_points(events: list[str], n: int) -> list[str]:
    """n write events spread over the run: every write of train.cfg and summary.json and
    every stage marker first, then evenly spaced others, in each of the three phases."""
    must = [e for e in events
            if e.endswith(("collect/train.cfg", "summary.json")) or
            any(e.endswith(f"{s}/done") for s in ("explore", "select", "collect", "train"))]
    rest = [e for e in events if e not in must]
    step = max(1, len(rest) // max(1, n - len(must)))
    return (must + rest[::step])[:n]


def _trial(base: Path, k: int, event: str, reference: Path) -> dict[str, object]:
    root = new_run(base / f"kill{k:02d}")
    killed = _run(root, SMALLCELL_KILL_AT=event)
    hit = killed.returncode == -signal.SIGKILL
    before = finished_files(root)
    resumed = _run(root)
    assert resumed.returncode == 0, f"{event}: resume failed\n{resumed.stderr[-3000:]}"
    after = finished_files(root)
    redone = [p for p, v in before.items() if after.get(p) != v]
    assert not redone, f"{event}: finished work redone: {redone[:5]}"
    assert_same_run(root, reference, event)
    debris = [p for p in root.rglob("*") if is_debris(p.name)]
    assert not debris, f"{event}: scratch left: {debris[:5]}"
    # every labeled configuration of every iteration is in the final training set once
    last = max(int(p.name) for p in (root / "iter").iterdir() if p.name.isdigit())
    final = (root / "iter" / str(last) / "collect" / "train.cfg").read_bytes()
    for lab in (root / "iter").glob("*/vasp/*/labeled.cfg"):
        assert final.count(lab.read_bytes()) == 1, f"{event}: {lab}"
    return {"event": event, "hit": hit}


@pytest.mark.slow
def test_killed_anywhere_resumes_to_the_same_result(reference: tuple[Path, list[str]],
                                                    tmp_path: Path) -> None:
    ref, events = reference
    assert any(e.endswith("collect/train.cfg") for e in events)
    assert {e.split(":", 1)[0] for e in events} == set(PHASES)
    points = kill_points(events, N_KILLS)
    assert len(points) >= 50
    with ThreadPoolExecutor(2) as pool:  # two trials at a time: two cores
        results = list(pool.map(lambda kp: _trial(tmp_path, *kp, ref), enumerate(points)))
    hits = [r for r in results if r["hit"]]
    # every chosen event is met by a fresh run, so every trial was a real kill
    assert len(hits) == len(points), [r["event"] for r in results if not r["hit"]]
    summary = {"kill_points": len(points), "write_events_in_run": len(events),
               "phases": sorted({e.split(':', 1)[0] for e in points}),
               "data_lost": 0}
    print("\nfault injection:", json.dumps(summary))
