"""Run the benchmarks and rewrite their sections of BENCHMARKS.md (`make bench`).

Each benchmark owns the text between its marker comments in BENCHMARKS.md
(`<!-- bench:status -->` ... `<!-- /bench:status -->`, likewise `iter` and `outcar`); everything
outside the markers is hand-written and kept. A section is only rewritten after its
benchmark finished, so an interrupted run leaves the previous numbers in place.

    .venv/bin/python bench/run_all.py                # every benchmark but gpaw
    .venv/bin/python bench/run_all.py --only status  # just one (status: ~20 s)
    .venv/bin/python bench/run_all.py --only outcar  # OUTCAR parser vs ASE (~40 s)
    .venv/bin/python bench/run_all.py --only slurm   # SLURM: arrays sized by time
                                                     # (a local Slurm; ~15 min on 2 cores)
    .venv/bin/python bench/run_all.py --only gpaw    # examples/pb-gpaw.yaml, real DFT
                                                     # (needs GPAW; ~25 min on 2 cores)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpaw
import bench_iter
import bench_outcar
import bench_slurm
import bench_status
from benchlib import BENCHMARKS_MD, write_sections


def _status(args: argparse.Namespace) -> tuple[str, bool]:
    res = bench_status.run(rebuild=args.rebuild_tree)
    return bench_status.markdown(res), res.passed


def _iter(args: argparse.Namespace) -> tuple[str, bool]:
    m, date, results = bench_iter.run(keep=args.keep)
    return bench_iter.markdown(m, date, results), all(r.passed for r in results)


def _outcar(args: argparse.Namespace) -> tuple[str, bool]:
    res = bench_outcar.run()
    return bench_outcar.markdown(res), res.passed


def _gpaw(args: argparse.Namespace) -> tuple[str, bool]:
    m, date, res, rows, why = bench_gpaw.run(keep=args.keep)
    return bench_gpaw.markdown(m, date, res, rows, why), res is not None and res.passed


def _slurm(args: argparse.Namespace) -> tuple[str, bool]:
    res = bench_slurm.run(keep=args.keep)
    return bench_slurm.markdown(res), res.passed


# name -> (heading used when the markers are missing, runner)
BENCHMARKS: dict[str, tuple[str, Callable[[argparse.Namespace], tuple[str, bool]]]] = {
    "status": ("`smallcell status` on 90,000 task folders", _status),
    "iter": ("The embedded loop end to end (`smallcell iter`)", _iter),
    "outcar": ("OUTCAR reading: smallcell vs `ase.io.read`", _outcar),
    "slurm": ("SLURM: label arrays sized by time, the error sample beside the chain", _slurm),
    "gpaw": ("Real DFT labels: GPAW end to end (`examples/pb-gpaw.yaml`)", _gpaw),
}


# Run only when asked (--only): ~25 minutes and GPAW installed.
OPT_IN = ("gpaw",)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=list(BENCHMARKS), action="append",
                   help="run only this benchmark (repeatable; default: all but "
                   f"{', '.join(OPT_IN)})")
    p.add_argument("--rebuild-tree", action="store_true",
                   help="rebuild the cached synthetic tree of the status benchmark")
    p.add_argument("--keep", action="store_true",
                   help="keep the iter and slurm benchmarks' run folders")
    p.add_argument("--output", type=Path, default=BENCHMARKS_MD,
                   help="the markdown file to update (default: BENCHMARKS.md)")
    args = p.parse_args(argv)
    failed = []
    for name in args.only or [n for n in BENCHMARKS if n not in OPT_IN]:
        title, fn = BENCHMARKS[name]
        print(f"run_all: {name} ...", file=sys.stderr, flush=True)
        body, ok = fn(args)
        write_sections({name: (title, body)}, args.output)
        print(f"run_all: {name}: {'PASS' if ok else 'FAIL'} (section written to "
              f"{args.output})", file=sys.stderr, flush=True)
        if not ok:
            failed.append(name)
    # A missed target is reported, not hidden: the exit code lets CI or a person notice.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
