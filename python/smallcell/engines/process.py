"""Running an external program (VASP, LAMMPS, mlp) the way every engine adapter needs it.

- **No shell for the command**: the argv is executed as given; ``setup`` lines (module
  loads, exports) run in ``bash -c '<lines>\nexec "$@"'`` with the argv passed as the
  positional arguments, so a path with spaces, a ``;`` or a ``$(...)`` is never re-parsed.
- **Its own process group**: the program (an MPI launcher and its ranks, a setup shell and
  what it starts) runs in a new session, so a timeout or an interrupt of smallcell stops
  all of it, by process group, instead of leaving orphans on the node.
- **Logs to files**: stdout and stderr go to files (they can be large and must survive a
  crash); :func:`tail_line` turns their end into the one-line reason of a failure.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["KILL_GRACE", "ProgramNotFound", "archive_outputs", "exit_text", "run_logged",
           "tail_line", "with_setup"]

#: Seconds between SIGTERM and SIGKILL of a timed-out run (MPI launchers forward SIGTERM).
KILL_GRACE = 10.0
#: Seconds to wait for the leader to go after SIGKILL (it cannot refuse; this only bounds a
#: process stuck in uninterruptible I/O).
_KILL_WAIT = 5.0
#: Bytes read from the end of a log file by tail_line.
_TAIL_BYTES = 8192


class ProgramNotFound(Exception):
    """The program of an argv could not be started: missing or not executable.

    Each adapter turns it into its own error type with its own advice (which config key
    names the command)."""

    def __init__(self, program: str, reason: str, *, not_executable: bool = False) -> None:
        self.program = program
        self.reason = reason
        self.not_executable = not_executable
        super().__init__(f"{program!r}: {reason}")


def with_setup(argv: Sequence[str], setup: Sequence[str], name: str) -> list[str]:
    """The argv to execute: `argv` itself without setup lines, else bash running the lines
    and then exec'ing the argv, passed as "$@" (never re-parsed by the shell). `name` is
    the shell's $0, shown in its error messages."""
    argv = [str(a) for a in argv]
    if not setup:
        return argv
    script = "\n".join(str(line) for line in setup) + '\nexec "$@"'
    return ["bash", "-c", script, name, *argv]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def kill_group(proc: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """Stop `proc` (a session leader) and everything in its process group: SIGTERM, up to
    `grace` seconds for it to exit, then SIGKILL (also for members that outlived the leader
    or ignore SIGTERM). An interrupt during the grace period goes straight to SIGKILL."""
    pgid = proc.pid
    try:
        _signal_group(pgid, signal.SIGTERM)
        _wait(proc, grace)
    finally:
        # The group id cannot be reused while any member is alive, so this reaches exactly
        # the stragglers (or nobody: ESRCH, suppressed).
        _signal_group(pgid, signal.SIGKILL)
        _wait(proc, _KILL_WAIT)


def run_logged(argv: Sequence[str], cwd: str | os.PathLike[str],
               stdout_path: str | os.PathLike[str], stderr_path: str | os.PathLike[str],
               timeout: float | None, grace: float = KILL_GRACE,
               env: dict[str, str] | None = None) -> int | None:
    """Run `argv` (no shell) in `cwd`, stdout and stderr to the given files (truncated;
    relative paths are relative to the current directory, not `cwd`), stdin from
    /dev/null, in its own process group.

    Returns the exit status (negative: killed by that signal), or None when it ran longer
    than `timeout` seconds and was killed (SIGTERM to the group, `grace` seconds, SIGKILL).
    Any exception while waiting (Ctrl-C, a walltime signal turned into an exception) kills
    the group the same way and is re-raised. Raises :class:`ProgramNotFound` when the
    program is missing or not executable. `env`: variables set for the program on top of
    this process's environment.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("empty argv")
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=None if env is None else {**os.environ, **env})
        except FileNotFoundError as exc:
            raise ProgramNotFound(argv[0], exc.strerror or "not found") from exc
        except PermissionError as exc:
            raise ProgramNotFound(argv[0], exc.strerror or "not executable",
                                  not_executable=True) from exc
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc, grace)
            return None
        except BaseException:
            kill_group(proc, grace)
            raise


def _read_end(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail_line(text_or_path: str | os.PathLike[str], lines: int = 2, limit: int = 240) -> str:
    """The last `lines` non-empty lines, whitespace collapsed, joined by " | " into one
    line of at most `limit` characters (cut at the front, marked "..."); for failure
    reasons. A ``str`` is the text itself; a path (``os.PathLike``) is read (its last
    8 kB; "" when it cannot be read)."""
    text = (_read_end(Path(text_or_path)) if isinstance(text_or_path, os.PathLike)
            else str(text_or_path))
    kept = [" ".join(line.split()) for line in text.splitlines()]
    kept = [line for line in kept if line]
    tail = " | ".join(kept[-lines:]) if lines > 0 else ""
    return tail if len(tail) <= limit else "..." + tail[-limit:]


def check_positive(value: object, name: str) -> None:
    """A configured setting must be a finite number > 0 (None is the caller's business)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def command_words(command: object, setup: object, section: str) -> tuple[list[str], list[str]]:
    """Validate a configured command (argv) and its setup lines: one rule for every
    adapter's settings, so a string command is never split or run by a shell here."""
    if isinstance(command, str) or not command:
        raise ValueError(
            f"{section}.command must be a non-empty list of words (argv), got {command!r}")
    if isinstance(setup, str):
        raise ValueError(f"{section}.setup must be a list of shell lines, got a string")
    return [str(c) for c in command], [str(s) for s in setup]


def exit_text(rc: int) -> str:
    """How a program ended, for a failure reason: "exited with status 2", "was killed by
    SIGKILL" (a negative status is the signal, as subprocess reports it)."""
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def archive_outputs(task_dir: Path, outputs: Sequence[str], inputs: Sequence[str],
                    folder: str = "attempts") -> Path | None:
    """Move the `outputs` of an earlier attempt (a killed job, a retry) into
    `<folder>/<n>/` (n = 1, 2, ...) with a copy of its `inputs`, so nothing computed is
    lost or overwritten; return that folder, or None when there were no outputs."""
    task_dir = Path(task_dir)
    present = [name for name in outputs if (task_dir / name).exists()]
    if not present:
        return None
    root = task_dir / folder
    root.mkdir(exist_ok=True)
    n = 1
    while True:
        dest = root / str(n)
        try:
            dest.mkdir()
            break
        except FileExistsError:
            n += 1
    for name in inputs:
        if (task_dir / name).is_file():
            shutil.copy2(task_dir / name, dest / name)
    for name in present:
        os.replace(task_dir / name, dest / name)
    return dest
