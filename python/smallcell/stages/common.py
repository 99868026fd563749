"""What every stage shares: the iteration it works on, and how it hands tasks to a runner.

A stage has three verbs, as in ArcaNN: `plan` (which tasks, from the folders), `run_task`
(one task, in any process: it only needs the run folder, the iteration and the task id)
and `finish` (check the tasks, write the stage's outputs and its `done` marker).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from smallcell import runconfig
from smallcell.config import Config, dumped_source, load_config
from smallcell.errors import SmallcellError
from smallcell.formats.cfg import Cfg
from smallcell.state import RunPaths, atomic_write_text

CONFIG = "config.yaml"


def require_labeled(path: Path, cfgs: Iterable[Cfg], why: str,
                    species: Sequence[str] | None = None) -> int:
    """The number of configurations; SmallcellError naming `path` and the first (1-based)
    configuration without an energy or forces, or (with `species`) with a type beyond
    the species list. `why` says who needs labeled data."""
    n = 0
    for n, c in enumerate(cfgs, 1):
        if c.energy is None or c.forces is None:
            raise SmallcellError(f"{path}: configuration {n} has no Energy or forces; {why}")
        if species is not None and len(c.types) and int(c.types.max()) >= len(species):
            raise SmallcellError(f"{path}: configuration {n} has type {int(c.types.max())} "
                                 f"but the config's species are {list(species)}")
    return n


@dataclass
class Iteration:
    """One iteration of one run: its folders and its frozen configuration."""

    paths: RunPaths
    i: int
    cfg: Config

    @property
    def dir(self) -> Path:
        return self.paths.it(self.i)

    def stage(self, name: str) -> Path:
        return self.paths.stage(self.i, name)

    @property
    def species(self) -> list[str]:
        return list(self.cfg["species"])

    @property
    def previous_train(self) -> Path | None:
        """The train folder of the iteration before (None for iteration 0)."""
        return self.paths.stage(self.i - 1, "train") if self.i > 0 else None

    @classmethod
    def open(cls, root: Path, i: int, cfg: Config | None = None) -> Iteration:
        """The iteration with its frozen config; freeze `cfg` on first use."""
        paths = RunPaths(root)
        frozen = paths.it(i) / CONFIG
        if not frozen.exists():
            if cfg is None:
                raise SmallcellError(f"{frozen}: missing (iteration {i} was never started)")
            head, _, body = cfg.dump().partition("\n")  # the first line names the source
            atomic_write_text(frozen, f"{head}\n{runconfig.frozen_note(paths, i)}{body}")
        loaded = load_frozen(frozen)
        # Paths inside the frozen copy stay relative to the user's config file.
        if cfg is not None and cfg.source is not None:
            loaded.source = cfg.source
        else:
            loaded.source = dumped_source(frozen) or loaded.source
        return cls(paths, i, loaded)


_FROZEN: dict[Path, tuple[tuple[int, int, int], Config]] = {}


def load_frozen(frozen: Path) -> Config:
    """A frozen config (an iteration's, the validation's), parsed once per process while
    the file is unchanged: a worker opens it for every task, and parsing was most of a
    small task's time. A copy is returned, so a caller's changes never reach the cache."""
    st = frozen.stat()
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _FROZEN.get(frozen)
    if hit is None or hit[0] != key:
        hit = _FROZEN[frozen] = (key, load_config(frozen))
    return copy.deepcopy(hit[1])


TaskFn = Callable[[Path, int, int], Any]


class Runner(Protocol):
    """Runs one function over many task ids, in parallel where it can (sched/local.py,
    later sched/slurm.py). `fn(root, iteration, task)` must be a module-level function."""

    def map(self, fn: TaskFn, it: Iteration, tasks: Sequence[int], label: str,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]: ...


def progress(it: Iteration, stage: str, message: str) -> None:
    """One progress line (stderr), e.g. `[iter 2 | explore] 3/6 runs`."""
    import sys

    print(f"[iter {it.i} | {stage}] {message}", file=sys.stderr, flush=True)
