"""collect: the new training set = the previous one + this iteration's labels, once each.

The previous `train.cfg` is never edited: a new file is assembled under a temporary name
and renamed into place, then the marker is written. Re-running collect rebuilds the same
file from the same inputs, so no configuration can be duplicated or half-written.
"""

from __future__ import annotations

import shutil

from smallcell.errors import SmallcellError
from smallcell.stages import label
from smallcell.stages.common import Iteration, progress
from smallcell.stages.initial import IMPORTED
from smallcell.state import atomic_output, is_done, is_failed, mark_done, read_json

STAGE = "collect"
TRAIN = "train.cfg"


def failure_policy(it: Iteration, n: int) -> tuple[int, int]:
    """(labeled, failed); stop with the failed tasks listed when too few succeeded."""
    labeled = [k for k in range(n) if is_done(label.selected_dir(it, k))]
    failed = [k for k in range(n) if is_failed(label.selected_dir(it, k))]
    missing = n - len(labeled) - len(failed)
    if missing:
        raise SmallcellError(f"iteration {it.i}: {missing} label task(s) have no marker yet")
    ratio = it.cfg["label"]["min_success_ratio"]
    if n and len(labeled) < ratio * n:
        lines = [f"  {label.selected_dir(it, k)}: "
                 f"{read_json(label.selected_dir(it, k) / 'failed')['reason']}"
                 for k in failed[:20]]
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        raise SmallcellError(
            f"iteration {it.i}: only {len(labeled)} of {n} label tasks succeeded "
            f"(label.min_success_ratio = {ratio:g}); failed tasks:\n" + "\n".join(lines) + more
            + f"\nFix the cause, then `make retry I={it.i}` runs them again (their "
            "earlier attempts are kept).")
    return len(labeled), len(failed)


def run(it: Iteration) -> tuple[int, int]:
    """Write collect/train.cfg and its marker; return (new configurations, total)."""
    n = label.n_selected(it)  # the error sample's labels never train
    failure_policy(it, n)
    folder = it.stage(STAGE)
    sources = []
    if it.i > 0:
        sources.append(it.paths.stage(it.i - 1, STAGE) / TRAIN)
    imported = it.stage("select") / IMPORTED
    if imported.exists():
        sources.append(imported)
    sources += [label.selected_dir(it, k) / "labeled.cfg" for k in range(n)
                if is_done(label.selected_dir(it, k))]
    with atomic_output(folder / TRAIN) as tmp, open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as fh:
                shutil.copyfileobj(fh, out)
    total = _count(folder / TRAIN)
    new = total - (_count(sources[0]) if it.i > 0 else 0)
    progress(it, STAGE, f"train.cfg: {total} configurations ({new} new)")
    mark_done(folder, {"n_new": new, "n_train": total})
    return new, total


def _count(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.startswith(b"BEGIN_CFG"))
