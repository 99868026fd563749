"""The local scheduler: tasks of a stage in a pool of worker processes on this machine.

Workers are forked with a parent-death signal, so a killed driver (Ctrl-C, kill -9) takes
its workers with it and a resumed run never races an orphan on the same task folder.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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


class LocalRunner:
    """Runs task functions serially (jobs=1) or in `jobs` worker processes."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._pool is None:
            return
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: stop at once. Killing a task is safe: it has no marker yet and its
            # outputs are only renamed into place when complete.
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("fork"),
                                             initializer=_die_with_parent)
        return self._pool

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
        results: dict[int, Any] = {}
        pending = set(futures)
        error: BaseException | None = None
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                k = futures[fut]
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
