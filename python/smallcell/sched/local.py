"""The local scheduler: tasks of a stage in a pool of worker processes on this machine.

Workers are forked with a parent-death signal, so a killed driver (Ctrl-C, kill -9) takes
its workers with it and a resumed run never races an orphan on the same task folder.

`start` runs tasks beside the driver (the error sample's labels while the driver trains)
in a side pool of jobs - 1 workers, so that together they stay within run.jobs.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from smallcell.stages.common import Iteration, TaskFn

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: orphans finish their task and exit
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's workers at once. Safe: a killed task has no marker yet and its
    outputs are only renamed into place when complete."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.kill()


def _gather(futures: dict[Future, int], tasks: Sequence[int],
            on_result: Callable[[int, Any], None] | None) -> list[Any]:
    """Results of `futures` ({future: task}) in task order, `on_result` as each arrives.
    The first exception re-raises after the running tasks finish (each task is atomic on
    disk); the tasks not started yet are cancelled."""
    results: dict[int, Any] = {}
    pending = set(futures)
    error: BaseException | None = None
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            k = futures[fut]
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None:
                error = error or exc
                for other in pending:
                    other.cancel()
                continue
            results[k] = fut.result()
            if on_result:
                on_result(k, results[k])
    if error is not None:
        raise error
    return [results[k] for k in tasks]


class Pending:
    """Tasks started by LocalRunner.start: `wait` returns their results in task order."""

    def __init__(self, futures: dict[Future, int], tasks: Sequence[int],
                 on_result: Callable[[int, Any], None] | None) -> None:
        self.futures = futures
        self.tasks = list(tasks)
        self.on_result = on_result

    def wait(self) -> list[Any]:
        return _gather(self.futures, self.tasks, self.on_result)


class LocalRunner:
    """Runs task functions serially (jobs=1) or in `jobs` worker processes."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None
        self._side: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        for pool in (self._side, self._pool):
            if pool is None:
                continue
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                _kill(pool)  # Ctrl-C: stop at once
            pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._side = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("fork"),
                                             initializer=_die_with_parent)
        return self._pool

    @property
    def spare(self) -> int:
        """Workers that can run tasks beside the driver within `jobs` (start)."""
        return self.jobs - 1

    def start(self, fn: TaskFn, it: Iteration, tasks: Sequence[int], label: str,
              on_result: Callable[[int, Any], None] | None = None) -> Pending:
        """Start fn(root, i, k) for every k in a side pool of `spare` workers and return
        at once: the driver works meanwhile (it is the jobs-th process), then waits."""
        if self.spare < 1:
            raise ValueError("LocalRunner.start needs jobs >= 2: one process is the driver")
        if self._side is None:
            self._side = ProcessPoolExecutor(self.spare, mp_context=mp.get_context("fork"),
                                             initializer=_die_with_parent)
        futures = {self._side.submit(fn, it.paths.root, it.i, k): k for k in tasks}
        return Pending(futures, tasks, on_result)

    def map(self, fn: TaskFn, it: Iteration, tasks: Sequence[int], label: str,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Run fn(root, i, k) for every k; results in task order. The first exception
        re-raises after the running tasks finish (each task is atomic on disk)."""
        if self.jobs == 1 or len(tasks) <= 1:
            out = []
            for k in tasks:
                res = fn(it.paths.root, it.i, k)
                if on_result:
                    on_result(k, res)
                out.append(res)
            return out
        pool = self._get_pool()
        futures = {pool.submit(fn, it.paths.root, it.i, k): k for k in tasks}
        return _gather(futures, tasks, on_result)
