"""Real DFT end to end: `examples/pb-gpaw.yaml` (1x1x1 Pb, 2 iterations, every label a GPAW
plane-wave single point run by Debian's Python). Target: under 30 minutes on 2 cores. Also
reported: seconds per label (from each task's label.json), by iteration and kind.

Needs GPAW (`make setup EXTRAS=gpaw`); the run folder is temporary, as in bench_iter.

    .venv/bin/python bench/bench_gpaw.py [--keep]    (or: bench/run_all.py --only gpaw)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_iter
from benchlib import Machine, machine, utc_now

CASE = bench_iter.Case("gpaw", "examples/pb-gpaw.yaml", None, 1800.0)


def gpaw_missing() -> str | None:
    """Why the benchmark cannot run here, or None."""
    res = subprocess.run(["/usr/bin/python3", "-c", "import gpaw"], capture_output=True,
                         check=False)
    return None if res.returncode == 0 else "GPAW is not installed (make setup EXTRAS=gpaw)"


def label_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per finished label task: iteration, kind (training or error sample),
    atoms, k-points, SCF iterations and seconds, from its label.json."""
    rows = []
    for info in sorted(run_dir.glob("iter/*/*/*/label.json")):
        task = info.parent
        data = json.loads(info.read_text(encoding="utf-8"))
        rows.append({"iteration": int(task.parts[-3]),
                     "kind": "sample" if task.parts[-2] == "sample" else "training",
                     "atoms": data["natoms"], "kpoints": "x".join(map(str, data["kpoints"])),
                     "scf": data.get("scf_iterations"), "seconds": float(data["seconds"])})
    return rows


def run(keep: bool = False) -> tuple[Machine, str, bench_iter.IterResult | None,
                                     list[dict[str, Any]], str | None]:
    why = gpaw_missing()
    if why:
        return machine(), utc_now(), None, [], why
    res = bench_iter.run_case(CASE, keep=True)
    rows = label_rows(res.run_dir) if res.run_dir else []
    if res.run_dir and not keep and res.rc == 0:
        shutil.rmtree(res.run_dir, ignore_errors=True)
    return machine(), utc_now(), res, rows, None


def _labels_table(rows: list[dict[str, Any]]) -> str:
    out = ["| iteration | kind | labels | atoms | k-points | SCF iterations (median) | "
           "s per label: median | min | max | total s |", "|" + "---:|" * 10]
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["iteration"], r["kind"]), []).append(r)
    for (i, kind), g in sorted(groups.items()):
        secs = [r["seconds"] for r in g]
        scf = [r["scf"] for r in g if r["scf"] is not None]
        out.append(f"| {i} | {kind} | {len(g)} | {g[0]['atoms']} | {g[0]['kpoints']} | "
                   f"{statistics.median(scf) if scf else '-'} | {statistics.median(secs):.1f}"
                   f" | {min(secs):.1f} | {max(secs):.1f} | {sum(secs):.0f} |")
    return "\n".join(out)


def markdown(m: Machine, date: str, res: bench_iter.IterResult | None,
             rows: list[dict[str, Any]], why: str | None) -> str:
    """The BENCHMARKS.md section (between the bench:gpaw markers)."""
    if res is None:
        return f"- Date: {date}\n- Not measured: {why}.\n"
    body = bench_iter.markdown(m, date, [res])
    if not rows:
        return body
    secs = [r["seconds"] for r in rows]
    return body + f"""
Seconds per label (each task's `label.json`: GPAW's process from start to result, 2 at a \
time on the 2 cores, so each ran on one core): median **{statistics.median(secs):.0f} s**, \
mean {statistics.mean(secs):.0f} s, over {len(secs)} labels; {sum(secs) / 60:.1f} core-minutes \
of DFT in all.

{_labels_table(rows)}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="keep the run folder")
    args = p.parse_args(argv)
    print(markdown(*run(args.keep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
