"""Benchmark `smallcell status` on a synthetic 60-iteration x 1,500-task run folder.

Target (DESIGN.md section 2): `make status` answers in under 1 s "even with 100,000 task
folders". What is timed is the real command in a fresh process, `bin/smallcell --run-dir
<tree> status`, as a user or a batch script runs it, plus `make -s status` pointed at the
same tree (SMALLCELL_RUN_DIR), which adds make's own start-up to the same command.

For contrast it also times a naive status that opens every marker of every iteration
(what a status without summaries would have to do), and breaks the real command down into
interpreter start-up, imports and the scan itself, so a regression can be located.

    .venv/bin/python bench/bench_status.py           # print the markdown section
    .venv/bin/python bench/bench_status.py --naive-scan TREE   # one naive scan (internal)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    REPO,
    SMALLCELL,
    VENV_PY,
    Machine,
    machine,
    median,
    timed_run,
    utc_now,
    verdict,
)
from synthetic_tree import TreeSpec, cached_tree, tree_info

TARGET_S = 1.0
REPEATS = 5

# Run inside the venv's interpreter to split the command's time into imports and scan.
_BREAKDOWN = """
import json, sys, time
t0 = time.perf_counter()
from smallcell import cli
from smallcell.status import status_lines
t1 = time.perf_counter()
calls = []
for _ in range(int(sys.argv[2])):
    s = time.perf_counter()
    lines = status_lines(__import__('pathlib').Path(sys.argv[1]))
    calls.append(time.perf_counter() - s)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'ase', 'yaml', 'motep',
                                                              'scipy', 'jinja2'))
print(json.dumps({"import": t1 - t0, "calls": calls, "lines": len(lines),
                  "modules": len(sys.modules), "heavy": heavy}))
"""


@dataclass
class StatusResult:
    """Everything the markdown section reports (seconds unless named otherwise)."""

    date: str
    machine: Machine
    tree: Path
    tree_info: dict[str, object]
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    make: list[float] = field(default_factory=list)
    make_skipped: str = ""
    python_floor: list[float] = field(default_factory=list)
    import_s: float = 0.0
    scan: list[float] = field(default_factory=list)
    heavy_modules: list[str] = field(default_factory=list)
    naive: list[float] = field(default_factory=list)
    naive_inproc: list[float] = field(default_factory=list)
    naive_markers: int = 0
    output_lines: int = 0
    output_ok: bool = False

    @property
    def worst(self) -> float:
        return max(self.cold + self.warm + self.make)

    @property
    def passed(self) -> bool:
        return self.output_ok and self.worst < TARGET_S


def naive_scan(tree: Path) -> dict[str, int]:
    """Status the slow way: open and parse every marker of every iteration.

    Kept honest (os.scandir, no exists-then-open double syscalls) so the contrast with the
    summary-based status is the design's, not a strawman's."""
    counts = {"markers": 0, "done": 0, "failed": 0, "iterations": 0}
    iter_root = tree / "iter"
    for it in sorted((e for e in os.scandir(iter_root) if e.name.isdigit()),
                     key=lambda e: int(e.name)):
        counts["iterations"] += 1
        folders = [os.path.join(it.path, s) for s in ("explore", "select", "collect", "train")]
        for sub in ("explore", "vasp"):
            with contextlib.suppress(FileNotFoundError):
                folders += [e.path for e in os.scandir(os.path.join(it.path, sub))
                            if e.is_dir()]
        for folder in folders:
            for name in ("done", "failed"):
                try:
                    with open(os.path.join(folder, name), encoding="utf-8") as fh:
                        json.load(fh)
                except FileNotFoundError:
                    continue
                counts["markers"] += 1
                counts[name] += 1
                break
    return counts


def _evict(tree: Path) -> None:
    """Drop from the page cache the files `status` reads (summaries, explore.json) and
    smallcell's sources and bytecode, with posix_fadvise: no root needed and no effect
    on anything else on the machine (unlike /proc/sys/vm/drop_caches). Directory entries
    and inodes stay cached, hence "cold-ish"."""
    files = [p for i in (tree / "iter").iterdir() if i.name.isdigit()
             for p in (i / "summary.json", i / "explore" / "explore.json") if p.exists()]
    files += list((REPO / "python" / "smallcell").rglob("*.py"))
    files += list((REPO / "python" / "smallcell").rglob("*.pyc"))
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _output_ok(out: str, info: dict[str, object]) -> bool:
    """The status of the synthetic tree: a header, one line per iteration, the last one in
    progress. Checked so that a timing is never of a command that printed something else."""
    lines = out.rstrip("\n").splitlines()
    return len(lines) == int(info["iterations"]) + 1 and "(in progress)" in lines[-1]


def _make_up_to_date() -> str:
    """Why `make status` cannot be timed, or '' when it can: make would first (re)build the
    venv if its stamp were stale, and a pip install is not what this measures."""
    try:
        rc = subprocess.run(["make", "-q", ".venv/.installed"], cwd=REPO,
                            capture_output=True, check=False).returncode
    except OSError:
        return "make not installed"
    return "" if rc == 0 else "the venv stamp is out of date (make would run pip first)"


def run(repeats: int = REPEATS, rebuild: bool = False) -> StatusResult:
    """Build or reuse the tree, then time every variant `repeats` times."""
    tree = cached_tree(TreeSpec(), rebuild=rebuild)
    res = StatusResult(utc_now(), machine(), tree, tree_info(tree))
    cmd = [str(SMALLCELL), "--run-dir", str(tree), "status"]

    _t, rc, out = timed_run(cmd)  # also a correctness check of what is being timed
    res.output_lines = len(out.rstrip("\n").splitlines())
    res.output_ok = rc == 0 and _output_ok(out, res.tree_info)
    for _ in range(repeats):
        _evict(tree)
        res.cold.append(timed_run(cmd)[0])
    for _ in range(repeats):
        res.warm.append(timed_run(cmd)[0])
    res.make_skipped = _make_up_to_date()
    if not res.make_skipped:
        # RUN_DIR for the Makefile's variable, SMALLCELL_RUN_DIR for a Makefile without it
        make_cmd = ["make", "-s", "status", f"RUN_DIR={tree}"]
        make_env = {"SMALLCELL_RUN_DIR": str(tree)}
        _t, rc, out = timed_run(make_cmd, env=make_env)
        if rc != 0 or not _output_ok(out, res.tree_info):
            res.make_skipped = "its output is not the tree's status (does it honour RUN_DIR?)"
        else:
            for _ in range(repeats):
                res.make.append(timed_run(make_cmd, env=make_env)[0])
    for _ in range(repeats):
        res.python_floor.append(timed_run([str(VENV_PY), "-c", "pass"])[0])
    _t, rc, out = timed_run([str(VENV_PY), "-c", _BREAKDOWN, str(tree), str(repeats)],
                            env={"PYTHONPATH": str(REPO / "python")})
    if rc == 0:
        d = json.loads(out.strip().splitlines()[-1])
        res.import_s, res.scan, res.heavy_modules = d["import"], d["calls"], d["heavy"]
    for _ in range(max(3, repeats // 2)):
        t, rc, out = timed_run([str(VENV_PY), __file__, "--naive-scan", str(tree)])
        if rc == 0:
            d = json.loads(out.strip().splitlines()[-1])
            res.naive.append(t)
            res.naive_inproc.append(d["seconds"])
            res.naive_markers = d["markers"]
    return res


def _row(what: str, xs: list[float]) -> str:
    if not xs:
        return f"| {what} | 0 | - | - |"
    return f"| {what} | {len(xs)} | {median(xs):.3f} | {max(xs):.3f} |"


def markdown(r: StatusResult) -> str:
    """The BENCHMARKS.md section (between the bench:status markers)."""
    info = r.tree_info
    n_tasks = int(info["iterations"]) * int(info["tasks"])
    make_row = (_row("`make -s status RUN_DIR=<tree>`, warm", r.make) if r.make
                else f"| `make -s status`: not timed ({r.make_skipped}) | 0 | - | - |")
    ratio = median(r.naive) / median(r.warm) if r.naive and r.warm else float("nan")
    heavy = ", ".join(r.heavy_modules) if r.heavy_modules else "none"
    last = int(info["iterations"]) - 1
    return f"""
- Date: {r.date}
- Machine: {r.machine.line()}
- Tree: built by `bench/synthetic_tree.py`, cached at `{r.tree}`: {info['iterations']} \
iterations x {int(info['tasks']):,} label tasks = {n_tasks:,} task folders \
({int(info['folders']):,} folders and {int(info['files']):,} files in all), \
{info['runs']} explore runs per iteration, ~{float(info['fail_ratio']):.0%} failed tasks; \
iterations 0..{last - 1} complete with `summary.json`, iteration {last} stopped half-way \
through its label stage.
- Command: `bin/smallcell --run-dir <tree> status`, a fresh process each run, output to a \
pipe. Output checked ({r.output_lines} lines, the last one in progress): \
{'ok' if r.output_ok else 'WRONG'}.

| measurement | runs | median s | max s |
| --- | ---: | ---: | ---: |
{_row("`bin/smallcell status`, cold-ish (page cache of the summaries and of smallcell's "
      "sources dropped with posix_fadvise before each run)", r.cold)}
{_row("`bin/smallcell status`, warm", r.warm)}
{make_row}
{_row("floor: `.venv/bin/python -c pass`", r.python_floor)}
{_row("in-process: import smallcell.cli + smallcell.status", [r.import_s] if r.scan else [])}
{_row(f"in-process: `status_lines()` ({last} summaries + scan of iteration {last})", r.scan)}
{_row(f"naive scan: open and parse every marker of every iteration ({r.naive_markers:,} "
      "markers), whole process", r.naive)}
{_row("naive scan, in-process part only", r.naive_inproc)}

Heavy modules imported by `status` (numpy, ase, yaml, motep, scipy, jinja2): {heavy}. \
The naive scan is {ratio:.0f}x slower than the real command (warm medians), and it grows \
with every task folder, whereas the summary-based status grows only with the iterations \
(one small JSON each) and the tasks of the iteration in progress.

**Target**: `status` under {TARGET_S:g} s on this tree, worst run of every variant of the \
real command above (max {r.worst:.3f} s): {verdict(r.passed)}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--naive-scan", metavar="TREE", type=Path,
                   help="run one naive scan of TREE and print its counts (internal)")
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--rebuild-tree", action="store_true")
    args = p.parse_args(argv)
    if args.naive_scan:
        t0 = time.perf_counter()
        counts = naive_scan(args.naive_scan)
        print(json.dumps({**counts, "seconds": time.perf_counter() - t0}))
        return 0
    print(markdown(run(args.repeats, args.rebuild_tree)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
