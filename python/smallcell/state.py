"""The filesystem is the state: paths, markers, atomic writes, the run lock, summaries.

Every stage writes its outputs under a temporary name in the same folder and renames them
into place (rename is atomic on POSIX), then writes its `done` marker last. A process killed
at any moment therefore leaves either a complete file or a stray temporary, never a partial
file under the real name, and a folder without its marker is simply done again.

Durability is against process death (Ctrl-C, kill -9, walltime), which is what HPC runs
meet; files are not fsync'ed, so a power loss on the node may still lose recent writes.

This module imports only the standard library so that `smallcell status` stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallcell.errors import SmallcellError, reraise_disk_full

DONE = "done"
FAILED = "failed"
SUMMARY = "summary.json"
LOCK = ".lock"
STOPPED = "stopped"  # iter/<i>/stopped: why a SLURM chain stopped in this iteration


# Fault injection (tests/test_faults.py): SMALLCELL_FAULT_LOG=<file> records every write
# event, SMALLCELL_KILL_AT=<phase>:<path suffix> SIGKILLs the process at that one. Read
# once; unset (always, outside those tests) they cost one falsy test per write.
_FAULT_LOG = os.environ.get("SMALLCELL_FAULT_LOG")
_KILL_AT = os.environ.get("SMALLCELL_KILL_AT")
PHASES = ("half", "written", "renamed")  # tmp half written / complete / renamed into place


def _fault_point(phase: str, path: Path, tmp: Path | None = None) -> None:
    """A write event: `half` (the temporary file cut to half its size, as a process killed
    mid-write leaves it), `written` (complete, not yet renamed) or `renamed`."""
    where = re.sub(r"\.(tmp|work)\.\d+", r".\1", str(path))  # scratch names: no pid
    if _FAULT_LOG:
        with open(_FAULT_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{phase}:{where}\n")
    want_phase, _, suffix = (_KILL_AT or "").partition(":")
    if _KILL_AT and phase == want_phase and where.endswith("/" + suffix):
        if phase == "half" and tmp is not None:
            with open(tmp, "r+b") as fh:
                fh.truncate(os.fstat(fh.fileno()).st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)


def _before_rename(path: Path, tmp: Path) -> None:
    if _FAULT_LOG or _KILL_AT:
        _fault_point("half", path, tmp)
        _fault_point("written", path, tmp)


def _after_rename(path: Path) -> None:
    if _FAULT_LOG or _KILL_AT:
        _fault_point("renamed", path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        _before_rename(path, tmp)
        os.replace(tmp, path)
        _after_rename(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reraise_disk_full(exc, path)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (sorted keys, indented: the files are read by people too)."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; it is renamed to `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        yield tmp
        _before_rename(path, tmp)
        os.replace(tmp, path)
        _after_rename(path)
    except OSError as exc:
        reraise_disk_full(exc, path)
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def is_debris(name: str) -> bool:
    """Scratch names of writes and tasks cut short: `.<name>.tmp.<pid>`, `.work.<pid>`."""
    return name.startswith(".") and (".tmp." in name or name.startswith(".work."))


def sweep_debris(folder: str | os.PathLike, skip: Collection[str] = ()) -> int:
    """Remove the scratch left by killed processes under `folder`, but in its entries
    named in `skip` (folders whose scratch a process running beside the caller owns: the
    error sample's on SLURM). Only safe while no other writer can own the rest (the run or
    chain lock); returns how many were removed."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        if skip and dirpath == os.fspath(folder):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in [d for d in dirnames if is_debris(d)]:
            shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
            dirnames.remove(name)
            removed += 1
        for name in filenames:
            if is_debris(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by smallcell, with a clear error when it is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SmallcellError(
            f"{path}:{exc.lineno}: corrupt JSON ({exc.msg}); delete the file to redo its stage"
        ) from exc


def mark_done(folder: str | os.PathLike, info: dict[str, Any] | None = None) -> None:
    """Write the `done` marker of a stage or task folder (always the last write)."""
    atomic_write_json(Path(folder) / DONE, {"time": time.time(), **(info or {})})


def mark_failed(folder: str | os.PathLike, reason: str, **info: Any) -> None:
    """Record a failed task: failures are data, the reason is kept beside the task."""
    atomic_write_json(Path(folder) / FAILED, {"time": time.time(), "reason": reason, **info})


def is_done(folder: str | os.PathLike) -> bool:
    """A stage or task is complete exactly when its marker exists."""
    return os.path.exists(os.path.join(folder, DONE))


def is_failed(folder: str | os.PathLike) -> bool:
    """A task gave up after its retries."""
    return os.path.exists(os.path.join(folder, FAILED))


def mark_stopped(it_dir: str | os.PathLike, reason: str, **info: Any) -> None:
    """Record why a chain of jobs stopped in this iteration: nobody watches a batch job's
    log, so the reason stays beside the iteration for `status` and the next `submit`."""
    atomic_write_json(Path(it_dir) / STOPPED, {"time": time.time(), "reason": reason, **info})


def clear_stopped(it_dir: str | os.PathLike) -> None:
    """A new attempt on the iteration starts: the earlier stop is history."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(it_dir, STOPPED))


def clear_markers(folder: str | os.PathLike) -> None:
    """Forget a task's outcome so that it runs again (used by explicit retries only)."""
    for name in (DONE, FAILED):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(folder, name))


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives: `<root>/iter/<i>/...` (DESIGN.md section 2)."""

    root: Path

    @property
    def iter_root(self) -> Path:
        return self.root / "iter"

    def it(self, i: int) -> Path:
        return self.iter_root / str(i)

    def stage(self, i: int, stage: str) -> Path:
        return self.it(i) / stage

    def task(self, i: int, k: int, kind: str = "vasp") -> Path:
        return self.it(i) / kind / str(k)

    def summary(self, i: int) -> Path:
        return self.it(i) / SUMMARY

    def iterations(self) -> list[int]:
        """Existing iteration numbers, in order (folders whose name is an integer)."""
        try:
            names = os.listdir(self.iter_root)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isascii() and n.isdigit())


def _flock(fh: Any, mode: int, wait: float) -> bool:
    """Take flock `mode` on the open file `fh`, polling for up to `wait` seconds; False
    when it stays taken."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


@contextlib.contextmanager
def flocked(path: Path, what: str, wait: float) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created when missing) for the block, waiting up to
    `wait` s; released by the kernel when the holder dies. SmallcellError naming `what`
    when it stays taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        if not _flock(fh, fcntl.LOCK_EX, wait):
            raise SmallcellError(f"{path}: {what} still busy after {wait:.0f} s")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lock_holder(paths: RunPaths) -> str | None:
    """Who holds the run lock exclusively right now (`make iter`, `make retry`), as its
    lock file names it; None when nobody does (SLURM jobs hold it shared: `status` finds
    them through squeue). A shared probe:
    it never blocks a holder, and a writer that starts meanwhile waits microseconds."""
    if not (paths.iter_root / LOCK).exists():
        return None
    with open(paths.iter_root / LOCK, encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "another process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


class RunLock:
    """One writer per run folder: an flock on `iter/.lock`, released by the kernel when the
    holder dies (kill -9 included), so a stale lock never blocks a resume.

    SLURM jobs share the folder: every job holds it `shared` (array elements: each task
    atomic, behind its marker; the checking jobs, select and collect+train, are kept one
    at a time by the chain lock, jobs.py), `make iter` holds it exclusively, so a local
    loop can never run beside a chain's jobs. Jobs `wait` for it (an element may start
    while the job that submitted it is still exiting)."""

    def __init__(self, paths: RunPaths, command: str, *, shared: bool = False,
                 wait: float = 0.0) -> None:
        self.path = paths.iter_root / LOCK
        self.command = command
        self.shared = shared
        self.wait = wait
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # held open for the whole run
        if not _flock(fh, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX, self.wait):
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise SmallcellError(
                f"{self.path}: this run folder is in use by {holder}; wait for it to "
                "finish or stop it (its lock is released automatically when it exits)")
        if not self.shared:  # shared holders are many: the file names the last sole one
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.command})\n")
            fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
